"""Message templates, Japanese dates and the delivery decisions that need no server."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta

import pytest

from renkei.delivery.config import load_delivery_config
from renkei.delivery.jdates import fiscal_year_label, jdate, wareki
from renkei.delivery.optouts import Subscription, is_opted_out, notice_topics
from renkei.delivery.pacing import RateLimiter, in_quiet_hours, retry_due
from renkei.delivery.payload import template_context
from renkei.delivery.receipts import NoticeState
from renkei.delivery.templates import Templates, template_name
from renkei.errors import ConfigError
from renkei.sources.values import JST

CFG = load_delivery_config(env={})


def _notice(service: str, kind: str, subject: str, dose: int, start: str, end: str, facts: dict) -> dict:
    return {"notice_id": f"n-{service}-{kind}", "service": service, "kind": kind, "subject": subject,
            "dose_number": dose, "window_start": date.fromisoformat(start), "window_end": date.fromisoformat(end),
            "facts": json.dumps(facts, ensure_ascii=False), "rule_id": "r", "rule_version": 1}


EVENT_FACTS = {"event_id": "EV1", "starts_at": "2025-06-07T18:00:00+09:00", "venue": "小倉城", "topic": "events",
               "ward_code": "401064"}
SAMPLES = {  # template → (notice, phrases the message must contain)
    "immunization_due.txt.j2": (
        _notice("immunization", "due", "MR", 2, "2025-04-01", "2026-03-31", {"birth_date": "2019-08-01"}),
        ["予防接種のお知らせ（麻しん風しん混合（MR） 第2期）", "2025年4月1日（火）から2026年3月31日（火）まで"]),
    "immunization_last_chance.txt.j2": (
        _notice("immunization", "last_chance", "VAR", 2, "2024-03-14", "2025-06-13", {}),
        ["期限が近づいています（水痘（みずぼうそう） 2回目）", "2025年6月13日（金）までです"]),
    "checkup_due.txt.j2": (
        _notice("checkup", "due", "Y1M6", 1, "2025-06-10", "2025-12-09", {"checkup_code": "Y1M6"}),
        ["1歳6か月児健康診査のご案内", "2025年6月10日（火）から2025年12月9日（火）まで"]),
    "checkup_last_chance.txt.j2": (
        _notice("checkup", "last_chance", "M4", 1, "2025-04-09", "2025-07-09", {"checkup_code": "M4"}),
        ["4か月児健康診査の受診期限が近づいています", "2025年7月9日（水）まで"]),
    "nhi_checkup_invitation.txt.j2": (
        _notice("nhi_checkup", "invitation", "NHI_CHECKUP", 2025, "2025-05-15", "2026-03-31", {"fiscal_year": 2025}),
        ["令和7年度 特定健康診査", "2025年5月15日（木）から2026年3月31日（火）まで"]),
    "event_event.txt.j2": (
        _notice("event", "event", "EV1", 1, "2025-06-01", "2025-06-07", EVENT_FACTS),
        ["イベントのお知らせ：小倉城 夏まつり", "2025年6月7日（土） 18:00から", "会場：小倉城", "配信を停止するには"]),
}


def test_every_template_has_a_sample():
    assert Templates(CFG.templates_dir).names() == sorted(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_template_renders_its_service_and_kind(name):
    notice, phrases = SAMPLES[name]
    assert template_name(notice["service"], notice["kind"]) == name
    ctx = template_context(notice, CFG, {"EV1": "小倉城 夏まつり"}, via_household=notice["service"] != "event")
    out = Templates(CFG.templates_dir).render(ctx, "r v1")
    text = f"{out.subject}\n{out.body}"
    for phrase in phrases:
        assert phrase in text
    assert out.subject.startswith("【北九州市】") and not out.body.startswith("\n")
    assert notice["notice_id"] in out.body
    assert "2019-08-01" not in text and "2019年8月1日" not in text  # facts beyond the notice stay out


def test_event_without_a_calendar_title_uses_the_venue():
    notice, _ = SAMPLES["event_event.txt.j2"]
    out = Templates(CFG.templates_dir).render(template_context(notice, CFG, {}, False), "r v1")
    assert out.subject == "【北九州市】イベントのお知らせ：小倉城"


def test_strict_undefined_names_notice_rule_and_fix(tmp_path):
    (tmp_path / "checkup_due.txt.j2").write_text("件名: {{ vaccine_name }}\n\nbody\n", encoding="utf-8")
    notice, _ = SAMPLES["checkup_due.txt.j2"]
    with pytest.raises(ConfigError, match=r"notice n-checkup-due \(chk.m4 v1\).*vaccine_name.*Fix"):
        Templates(tmp_path).render(template_context(notice, CFG, {}, True), "chk.m4 v1")


def test_missing_template_and_subject_line_are_config_errors(tmp_path):
    notice, _ = SAMPLES["checkup_due.txt.j2"]
    ctx = template_context(notice, CFG, {}, True)
    with pytest.raises(ConfigError, match="no template checkup_due.txt.j2"):
        Templates(tmp_path).render(ctx, "r v1")
    (tmp_path / "checkup_due.txt.j2").write_text("{{ checkup_name }}\nbody\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must start with '件名:"):
        Templates(tmp_path).render(ctx, "r v1")


def test_japanese_dates():
    assert jdate(date(2025, 6, 1)) == "2025年6月1日（日）"
    assert wareki(date(2019, 5, 1)) == "令和元年5月1日"
    assert wareki(date(2019, 4, 30)) == "平成31年4月30日"
    assert wareki(date(2025, 6, 1)) == "令和7年6月1日"
    assert fiscal_year_label(2019) == "令和元年度"
    assert fiscal_year_label(2018) == "平成30年度"


def test_quiet_hours_cross_midnight_in_tokyo():
    q = CFG.quiet_hours
    assert q.covers(time(21, 0)) and q.covers(time(7, 59)) and q.covers(time(0, 0))
    assert not q.covers(time(8, 0)) and not q.covers(time(20, 59))
    # 12:30 UTC is 21:30 in Tokyo.
    assert in_quiet_hours(datetime.fromisoformat("2025-06-01T12:30:00+00:00"), q)


def test_backoff_grows_exponentially_and_caps():
    r = CFG.retry
    assert [r.wait_s(n) for n in (1, 2, 3)] == [300, 600, 1200]
    assert r.wait_s(20) == r.max_backoff_s
    failed_at = datetime(2025, 6, 2, 10, 0, tzinfo=JST)
    state = NoticeState(attempts=2, sent=False, final_suppression=False, failures=2, last_failure_at=failed_at)
    assert not retry_due(state, failed_at + timedelta(seconds=599), r)
    assert retry_due(state, failed_at + timedelta(seconds=600), r)


def test_rate_limiter_spaces_calls_with_an_injected_clock():
    now, slept = [0.0], []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    rl = RateLimiter(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        rl.wait()
    assert slept == [0.25, 0.25]


def _sub(topic, opted_in, opted_out=None, ward=None):
    ts = lambda s: None if s is None else datetime.fromisoformat(s + "T12:00:00+09:00")  # noqa: E731
    return Subscription(topic, ward, ts(opted_in), ts(opted_out))


def test_opt_out_needs_a_withdrawn_and_no_active_subscription_of_the_topic():
    now = datetime(2025, 6, 2, 10, 0, tzinfo=JST)
    topics = notice_topics("event", {"topic": "events"}, CFG.opt_out_topics)
    assert topics == {"events"}
    assert notice_topics("immunization", {}, CFG.opt_out_topics) == set()
    assert is_opted_out([_sub("events", "2025-01-01", "2025-06-01")], topics, None, now)
    assert not is_opted_out([_sub("events", "2025-01-01", "2025-06-03")], topics, None, now)  # opts out later
    assert not is_opted_out([_sub("events", "2025-01-01", "2025-03-01"), _sub("events", "2025-04-01")], topics, None, now)
    assert not is_opted_out([_sub("health", "2025-01-01", "2025-06-01")], topics, None, now)
    # Only subscriptions of the event's ward (or of every ward) count.
    assert not is_opted_out([_sub("events", "2025-01-01", "2025-06-01", ward="401013")], topics, "401064", now)


def test_config_errors_name_file_key_and_fix(tmp_path):
    bad = tmp_path / "delivery.yaml"
    text = CFG.source.read_text(encoding="utf-8").replace("    line: unsupported\n", "    line: carrier_pigeon\n")
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"delivery.yaml: channels.senders.line: .*Fix"):
        load_delivery_config(bad, env={})
    env_cfg = load_delivery_config(env={"RENKEI_SMTP_HOST": "mail.example", "RENKEI_SMTP_PORT": "2525"})
    assert (env_cfg.smtp.host, env_cfg.smtp.port) == ("mail.example", 2525)
