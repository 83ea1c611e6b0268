"""Delivery end to end against a real SMTP server (aiosmtpd on 127.0.0.1) and a real warehouse.

A tiny raw drop (registry, registry_contact as CSV) and a SQLite warehouse holding a few
notices and subscriptions are written directly; `deliver` then runs at chosen clock readings.

Household H1: G (born 1950, unverified e-mail only), P (1985, verified e-mail), Q (1990,
verified e-mail) and the child C (2025-01-10). C's notices go to P: the oldest adult with a
verified contact. A (1970) has an unverified e-mail only; S (1990) and T (1980) subscribe to
events; L (1975) has a verified LINE id only.
"""

from __future__ import annotations

import csv
import dataclasses
import email
import email.policy
import json
import re
import socket
from datetime import date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from renkei.cli import main
from renkei.config import load_sources
from renkei.delivery import receipts
from renkei.delivery.channels import SmtpEmail
from renkei.delivery.config import load_delivery_config
from renkei.delivery.deliver import deliver
from renkei.delivery.settings import DeliverySettings
from renkei.keys.ring import KeyRing
from renkei.sources.values import JST
from renkei.warehouse import engine, ensure_schema, notice_events, notices, staging_table

CODES = {"G": "10000000001", "P": "10000000002", "Q": "10000000003", "C": "10000000004",
         "A": "10000000005", "S": "10000000006", "T": "10000000007", "L": "10000000008"}
REGISTRY = {  # who: (birth_date, household, status)
    "G": ("1950-02-01", "H1", "resident"), "P": ("1985-04-10", "H1", "resident"),
    "Q": ("1990-07-07", "H1", "resident"), "C": ("2025-01-10", "H1", "resident"),
    "A": ("1970-05-05", "H2", "resident"), "S": ("1990-03-03", "H3", "resident"),
    "T": ("1980-08-08", "H4", "resident"), "L": ("1975-09-09", "H5", "resident"),
}
CONTACTS = [  # who, channel, address, verified_at
    ("G", "email", "g@example.com", ""),
    ("P", "post", "北九州市小倉北区城内1番1号", "2024-01-01T09:00:00+09:00"),
    ("P", "email", "p@example.com", "2024-02-01T09:00:00+09:00"),
    ("Q", "email", "q@example.com", "2024-03-01T09:00:00+09:00"),
    ("A", "email", "a@example.com", ""),
    ("S", "email", "s@example.com", "2024-01-01T09:00:00+09:00"),
    ("T", "email", "t@example.com", "2024-01-01T09:00:00+09:00"),
    ("L", "line", "U0123456789abcdef", "2024-01-01T09:00:00+09:00"),
]
EVENT = {"event_id": "EV000001", "title": "小倉城 夏まつり", "topic": "events", "ward_code": "401064",
         "venue": "小倉城", "starts_at": "2025-06-07T18:00:00+09:00", "ends_at": "2025-06-07T21:00:00+09:00"}
D = date(2025, 6, 1)
MORNING = datetime(2025, 6, 2, 10, 0, tzinfo=JST)


def _notice(nid: str, who: str, ring: KeyRing, service: str, kind: str, subject: str, dose: int | None,
            start: str, end: str, facts: dict) -> dict:
    return {"notice_id": nid, "service": service, "kind": kind, "erk": ring.seal("link", CODES[who]),
            "rule_id": f"rule.{service}", "rule_version": 1, "subject": subject, "dose_number": dose,
            "window_start": date.fromisoformat(start), "window_end": date.fromisoformat(end), "evaluated_on": D,
            "facts": json.dumps(facts, ensure_ascii=False), "created_run_id": "proactive_services/test",
            "created_at": "2025-06-01T06:00:00+09:00"}


def _event_facts() -> dict:
    return {k: EVENT[k] for k in ("event_id", "starts_at", "venue", "topic", "ward_code")} | {"evaluated_on": "2025-06-01"}


NOTICES = {
    "child_hepb": ("C", "immunization", "due", "HEPB", 2, "2025-05-20", "2025-09-09", {"birth_date": "2025-01-10"}),
    "child_m4": ("C", "checkup", "due", "M4", 1, "2025-05-09", "2025-07-09", {"checkup_code": "M4"}),
    "nhi_unverified": ("A", "nhi_checkup", "invitation", "NHI_CHECKUP", 2025, "2025-05-15", "2026-03-31",
                       {"fiscal_year": 2025}),
    "event_optout": ("S", "event", "event", "EV000001", 1, "2025-06-01", "2025-06-07", _event_facts()),
    "event_ok": ("T", "event", "event", "EV000001", 1, "2025-06-01", "2025-06-07", _event_facts()),
    "line_only": ("L", "nhi_checkup", "invitation", "NHI_CHECKUP", 2025, "2025-05-15", "2026-03-31",
                  {"fiscal_year": 2025}),
}
SUBSCRIPTIONS = [  # id, who, topic, opted_in_at, opted_out_at
    ("SUB1", "S", "events", "2025-01-01T12:00:00+09:00", "2025-06-01T20:00:00+09:00"),  # out after generation
    ("SUB2", "T", "events", "2025-01-01T12:00:00+09:00", None),
]


class Inbox:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, N802 - aiosmtpd hook
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"

    def by_recipient(self) -> dict[str, list[email.message.EmailMessage]]:
        out: dict[str, list] = {}
        for rcpts, msg in self.messages:
            for r in rcpts:
                out.setdefault(r, []).append(msg)
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real SMTP server on a fixed free port that a test can stop and start again."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox, self.port, self._ctl = inbox, _free_port(), None

    def start(self) -> None:
        # A stopped Controller cannot restart (its loop is closed): a new one takes the port.
        self._ctl = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self._ctl.start()

    def stop(self) -> None:
        if self._ctl is not None:
            self._ctl.stop()
            self._ctl = None


@pytest.fixture
def smtp():
    inbox = Inbox()
    server = Server(inbox)
    server.start()
    yield server, inbox
    server.stop()


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def world(tmp_path, smtp):
    return _build_world(tmp_path, smtp[0].port, f"sqlite:///{tmp_path / 'warehouse.db'}",
                        f"sqlite:///{tmp_path / 'delivery.db'}")


def _build_world(tmp_path: Path, smtp_port: int, wh_url: str, dl_url: str) -> dict:
    """Raw drop, keyring, warehouse with notices/subscriptions/events, settings and config."""
    raw = tmp_path / "raw"
    raw.mkdir()
    _write_csv(raw / "registry.csv", list(load_sources()["registry"].columns), [
        [CODES[w], "テスト", "試験", born, "1", "401064", "北九州市小倉北区城内1番1号", hh, status, "", "2025-01-01T00:00:00+09:00"]
        for w, (born, hh, status) in REGISTRY.items()])
    _write_csv(raw / "registry_contact.csv", list(load_sources()["registry_contact"].columns), [
        [CODES[w], ch, addr, verified, "2025-01-01T00:00:00+09:00"] for w, ch, addr, verified in CONTACTS])
    ring = KeyRing.generate()
    ring.save(tmp_path / "keyring.json")
    eng = engine(wh_url)
    ensure_schema(eng)
    subs, events = staging_table(load_sources()["subscriptions"]), staging_table(load_sources()["events"])
    with eng.begin() as conn:
        conn.execute(notices.insert(), [_notice(nid, *spec[:1], ring, *spec[1:]) for nid, spec in NOTICES.items()])
        conn.execute(subs.insert(), [
            {"subscription_id": sid, "erk": ring.seal("link", CODES[w]), "topic": topic, "ward_code": None,
             "opted_in_at": on, "opted_out_at": off, "updated_at": on, "row_hash": sid, "loaded_run_id": "t"}
            for sid, w, topic, on, off in SUBSCRIPTIONS])
        conn.execute(events.insert(), [EVENT | {"updated_at": "2025-05-01T00:00:00+09:00", "row_hash": "e", "loaded_run_id": "t"}])
    eng.dispose()
    # The pipeline's step after services: a contact token per notified resident. Delivery then
    # works with its own keyring, the contact key only (`renkei keys export --for delivery`).
    from renkei.outputs.contacts import seal_contacts

    assert seal_contacts(wh_url, ring) == {"sealed": len({n[0] for n in NOTICES.values()}), "unopened": 0}
    ring.subset(["contact"]).save(tmp_path / "delivery-keyring.json")
    settings = DeliverySettings(wh_url, dl_url, raw, tmp_path / "delivery-keyring.json")
    cfg = load_delivery_config(env={"RENKEI_SMTP_HOST": "127.0.0.1", "RENKEI_SMTP_PORT": str(smtp_port)})
    cfg = dataclasses.replace(cfg, rate_per_second=1000.0)
    return {"settings": settings, "config": cfg, "ring": ring, "work": tmp_path}


def _run(world, now: datetime, **kw):
    return deliver(world["settings"], now, config=world["config"], ring=KeyRing.load(world["settings"].keyring_path), **kw)


def _receipts(world) -> dict[str, list[tuple]]:
    eng = engine(world["settings"].delivery_url)
    with eng.connect() as conn:
        rows = receipts.receipts_of(conn, NOTICES)
    eng.dispose()
    out: dict[str, list[tuple]] = {}
    for r in rows:
        out.setdefault(r["notice_id"], []).append((r["status"], r["reason"], r["channel"]))
    return out


def test_messages_arrive_with_recipient_subject_body_and_a_second_run_sends_nothing(world, smtp):
    _, inbox = smtp
    first = _run(world, MORNING).counts()
    got = inbox.by_recipient()
    assert sorted(got) == ["p@example.com", "t@example.com"]
    subjects = sorted(m["Subject"] for m in got["p@example.com"])
    assert subjects == ["【北九州市】4か月児健康診査のご案内", "【北九州市】予防接種のお知らせ（B型肝炎 2回目）"]
    hepb = next(m for m in got["p@example.com"] if "B型肝炎" in m["Subject"])
    body = hepb.get_content()
    assert "2025年5月20日（火）から2025年9月9日（火）まで" in body
    assert "child_hepb" in body and hepb["X-Renkei-Notice"] == "child_hepb"
    assert "2025-01-10" not in body and "2025年1月10日" not in body  # no linked facts (birth date)
    assert hepb["From"].addresses[0].addr_spec == "noreply@city.kitakyushu.example"
    event = got["t@example.com"][0]
    assert event["Subject"] == "【北九州市】イベントのお知らせ：小倉城 夏まつり"
    ev_body = event.get_content()
    assert "2025年6月7日（土） 18:00から" in ev_body and "会場：小倉城" in ev_body and "配信を停止するには" in ev_body
    assert first["sent"] == 3

    second = _run(world, MORNING.replace(hour=11)).counts()
    assert len(inbox.messages) == 3
    assert second["considered"] == 0
    sent = [nid for nid, rs in _receipts(world).items() if ("sent", None, "email") in rs]
    assert sorted(sent) == ["child_hepb", "child_m4", "event_ok"]


def test_suppressions_are_final_receipts_and_never_send(world, smtp):
    _, inbox = smtp
    counts = _run(world, MORNING).counts()
    rec = _receipts(world)
    assert rec["nhi_unverified"] == [("suppressed", "no_verified_contact", None)]
    assert rec["event_optout"] == [("suppressed", "opted_out", None)]  # opted out after generation
    assert rec["line_only"] == [("suppressed", "unsupported_channel", "line")]
    assert counts["suppressed:no_verified_contact"] == 1 and counts["suppressed:opted_out"] == 1
    _run(world, MORNING.replace(hour=12))
    assert _receipts(world)["event_optout"] == [("suppressed", "opted_out", None)]
    assert "s@example.com" not in inbox.by_recipient() and "a@example.com" not in inbox.by_recipient()


def test_child_notice_goes_to_the_oldest_household_adult_with_a_verified_contact(world, smtp):
    _, inbox = smtp
    _run(world, MORNING)
    got = inbox.by_recipient()
    assert len(got["p@example.com"]) == 2  # G is older but unverified; Q is younger
    assert "g@example.com" not in got and "q@example.com" not in got


def test_quiet_hours_defer_then_send(world, smtp):
    _, inbox = smtp
    night = datetime(2025, 6, 1, 22, 30, tzinfo=JST)
    counts = _run(world, night).counts()
    assert inbox.messages == []
    assert counts["suppressed:quiet_hours"] == 3
    _run(world, MORNING)
    assert len(inbox.messages) == 3
    assert _receipts(world)["child_hepb"] == [("suppressed", "quiet_hours", "email"), ("sent", None, "email")]


def test_smtp_failure_is_recorded_retried_with_backoff_and_sent_exactly_once(world, smtp):
    ctl, inbox = smtp
    ctl.stop()
    first = _run(world, MORNING).counts()
    assert first["failed"] == 1 and first["held"] == 2  # the server is down: the rest wait
    assert _receipts(world)["child_hepb"] == [("failed", "ConnectionRefusedError", "email")]

    soon = _run(world, MORNING.replace(minute=1)).counts()  # backoff (300 s) not elapsed
    assert soon["waiting_backoff"] == 1  # child_hepb waits; the next held notice is tried (and fails)
    assert _receipts(world)["child_hepb"] == [("failed", "ConnectionRefusedError", "email")]

    ctl.start()
    later = _run(world, MORNING.replace(minute=10)).counts()
    assert later["sent"] == 3
    _run(world, MORNING.replace(hour=15))
    rec = _receipts(world)
    assert rec["child_hepb"] == [("failed", "ConnectionRefusedError", "email"), ("sent", None, "email")]
    assert sum(1 for rs in rec.values() for r in rs if r[0] == "sent") == 3
    assert sorted(r for rcpts, _ in inbox.messages for r in rcpts).count("t@example.com") == 1


def test_sent_receipt_is_unique_per_notice(world, smtp):
    _run(world, MORNING)
    eng = engine(world["settings"].delivery_url)
    with pytest.raises(sa.exc.IntegrityError), eng.begin() as conn:
        conn.execute(receipts.delivery_receipts.insert().values(
            notice_id="child_hepb", attempt=99, status="sent", reason=None, channel="email", at="2025-06-02T10:00:00+09:00"))
    eng.dispose()


@pytest.mark.postgres
def test_on_postgresql_a_notice_is_sent_once(tmp_path, smtp, pg_factory):
    server, inbox = smtp
    world = _build_world(tmp_path, server.port, pg_factory(), pg_factory())
    server.stop()
    assert _run(world, MORNING).counts()["failed"] == 1
    server.start()
    assert _run(world, MORNING.replace(hour=11)).counts()["sent"] == 3
    assert _run(world, MORNING.replace(hour=12)).counts()["considered"] == 0
    assert len(inbox.messages) == 3
    assert _receipts(world)["child_hepb"] == [("failed", "ConnectionRefusedError", "email"), ("sent", None, "email")]
    eng = engine(world["settings"].delivery_url)
    with pytest.raises(sa.exc.IntegrityError), eng.begin() as conn:
        conn.execute(receipts.delivery_receipts.insert().values(
            notice_id="child_hepb", attempt=99, status="sent", reason=None, channel="email", at="2025-06-02T12:00:00+09:00"))
    eng.dispose()


def _transition(world, notice_id: str, state: str, reason: str, superseded_by: str | None = None) -> None:
    """Append a lifecycle event to the warehouse, as a services run does."""
    eng = engine(world["settings"].warehouse_url)
    with eng.begin() as conn:
        conn.execute(notice_events.insert().values(
            notice_id=notice_id, state=state, reason=reason, superseded_by=superseded_by,
            run_id="proactive_services/test", at="2025-06-02T09:00:00+09:00"))
    eng.dispose()


def test_withdrawn_and_superseded_notices_are_suppressed_and_a_reinstated_one_is_sent_once(world, smtp):
    _, inbox = smtp
    _transition(world, "child_hepb", "withdrawn", "dose_recorded")
    _transition(world, "child_m4", "superseded", "rule_asks_other", "child_m4_last_chance")
    first = _run(world, MORNING).counts()
    assert (first["suppressed:withdrawn"], first["sent"]) == (2, 1)
    rec = _receipts(world)
    assert rec["child_hepb"] == rec["child_m4"] == [("suppressed", "withdrawn", None)]
    assert sorted(inbox.by_recipient()) == ["t@example.com"]
    assert _run(world, MORNING.replace(hour=11)).counts()["considered"] == 0  # final while withdrawn

    _transition(world, "child_hepb", "reinstated", "basis_restored")
    again = _run(world, MORNING.replace(hour=12)).counts()
    assert (again["considered"], again["sent"]) == (1, 1)
    assert _receipts(world)["child_hepb"] == [("suppressed", "withdrawn", None), ("sent", None, "email")]
    [hepb] = inbox.by_recipient()["p@example.com"]
    assert hepb["X-Renkei-Notice"] == "child_hepb"

    # Withdrawn after it was sent, then reinstated: nothing sent is ever sent again.
    _transition(world, "child_hepb", "withdrawn", "status_moved_out")
    assert _run(world, MORNING.replace(hour=13)).counts()["considered"] == 0
    _transition(world, "child_hepb", "reinstated", "basis_restored")
    assert _run(world, MORNING.replace(hour=14)).counts()["considered"] == 0
    assert len(inbox.messages) == 2
    assert _receipts(world)["child_hepb"] == [("suppressed", "withdrawn", None), ("sent", None, "email")]


class WithdrawsWhileSending:
    """The real SMTP channel; while it sends its first message, a services run withdraws
    another notice (committed after delivery read the outbox)."""

    name = "email"

    def __init__(self, world, victim: str) -> None:
        self.inner, self.world, self.victim, self.sent = SmtpEmail(world["config"].smtp), world, victim, []

    def send(self, message) -> None:
        if not self.sent:
            _transition(self.world, self.victim, "withdrawn", "opted_out")
        self.inner.send(message)
        self.sent.append(message.notice_id)

    def close(self) -> None:
        self.inner.close()


def _recheck(world, inbox) -> None:
    # Sendable in created order, then by id: child_hepb, child_m4, event_ok.
    channel = WithdrawsWhileSending(world, "child_m4")
    counts = _run(world, MORNING, channels={"email": channel}).counts()
    assert channel.sent == ["child_hepb", "event_ok"]
    assert (counts["sent"], counts["suppressed:withdrawn"]) == (2, 1)
    assert _receipts(world)["child_m4"] == [("suppressed", "withdrawn", "email")]
    assert [m["X-Renkei-Notice"] for _, m in inbox.messages] == ["child_hepb", "event_ok"]
    assert _run(world, MORNING.replace(hour=11)).counts()["considered"] == 0


def test_a_withdrawal_committed_after_the_read_stops_the_send(world, smtp):
    _recheck(world, smtp[1])


@pytest.mark.postgres
def test_on_postgresql_a_withdrawal_committed_after_the_read_stops_the_send(tmp_path, smtp, pg_factory):
    server, inbox = smtp
    _recheck(_build_world(tmp_path, server.port, pg_factory(), pg_factory()), inbox)


def test_dry_run_cli_writes_jsonl_and_sends_nothing(world, smtp, monkeypatch, capsys):
    _, inbox = smtp
    work = world["work"]
    (work / "run_report.json").write_text(json.dumps({
        "as_of": "2025-06-01", "warehouse_url": world["settings"].warehouse_url,
        "raw_sources": {"registry": str(world["settings"].raw_dir / "registry.csv")}}), encoding="utf-8")
    for var in ("RENKEI_KEYRING", "RENKEI_DELIVERY_URL", "RENKEI_WAREHOUSE_URL"):
        monkeypatch.delenv(var, raising=False)
    out = work / "preview" / "messages.jsonl"
    rc = main(["deliver", "--work", str(work), "--dry-run", "--out", str(out), "--now", "2025-06-02T10:00"])
    assert rc == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_id = {line["notice_id"]: line for line in lines}
    assert sorted(by_id) == ["child_hepb", "child_m4", "event_ok"]
    keys = {"notice_id", "service", "kind", "channel", "recipient", "subject", "body", "vaccine_code", "dose_number",
            "checkup_code", "fiscal_year", "event_id", "window"}
    assert all(set(line) == keys for line in lines)
    assert by_id["child_hepb"] | {"body": None} == {
        "notice_id": "child_hepb", "service": "immunization", "kind": "due", "channel": "email",
        "recipient": "p@example.com", "subject": "【北九州市】予防接種のお知らせ（B型肝炎 2回目）", "body": None,
        "vaccine_code": "HEPB", "dose_number": 2, "checkup_code": None, "fiscal_year": None, "event_id": None,
        "window": {"start": "2025-05-20", "end": "2025-09-09"}}
    assert by_id["child_m4"]["checkup_code"] == "M4" and by_id["child_m4"]["dose_number"] is None
    assert by_id["event_ok"]["event_id"] == "EV000001" and by_id["event_ok"]["window"]["end"] == "2025-06-07"
    assert (out.stat().st_mode & 0o777) == 0o600
    printed = capsys.readouterr().out
    assert "immunization" in printed and "would_send 1" in printed and "件名:" in printed
    assert "p@example.com" not in printed  # the terminal gets a masked recipient
    assert inbox.messages == [] and not (work / "delivery.db").exists()


def test_dry_run_lists_nhi_fiscal_year(world, tmp_path):
    # A's contact becomes verified in a copy of the drop: the invitation would now go out.
    raw = world["settings"].raw_dir
    text = (raw / "registry_contact.csv").read_text(encoding="utf-8")
    (raw / "registry_contact.csv").write_text(text.replace("a@example.com,", "a@example.com,2024-01-01T09:00:00+09:00"),
                                             encoding="utf-8")
    out = tmp_path / "dry.jsonl"
    with out.open("w", encoding="utf-8") as fh:
        _run(world, MORNING, dry_run_out=fh)
    line = next(json.loads(x) for x in out.read_text(encoding="utf-8").splitlines() if "nhi_unverified" in x)
    assert line["fiscal_year"] == 2025 and line["dose_number"] is None and line["vaccine_code"] is None
    assert "令和7年度" in line["subject"]


def test_explain_prints_rule_window_facts_without_identity(world, capsys, monkeypatch):
    monkeypatch.delenv("RENKEI_DELIVERY_URL", raising=False)
    work = world["work"]
    (work / "run_report.json").write_text(json.dumps({"warehouse_url": world["settings"].warehouse_url}), encoding="utf-8")
    _run(world, MORNING)
    assert main(["explain", "child_hepb", "--work", str(work)]) == 0
    out = capsys.readouterr().out
    assert "rule.immunization version 1" in out and "2025-05-20 … 2025-09-09" in out and "(due)" in out
    assert '"birth_date": "2025-01-10"' in out and "sent" in out
    assert world["ring"].seal("link", CODES["C"]) not in out and CODES["C"] not in out and "@" not in out
    assert main(["explain", "nope", "--work", str(work)]) == 2


def test_explain_shows_the_lifecycle_and_what_a_notice_replaces(world, capsys, monkeypatch):
    monkeypatch.delenv("RENKEI_DELIVERY_URL", raising=False)
    work = world["work"]
    (work / "run_report.json").write_text(json.dumps({"warehouse_url": world["settings"].warehouse_url}), encoding="utf-8")
    eng = engine(world["settings"].warehouse_url)
    with eng.begin() as conn:
        conn.execute(notices.update().where(notices.c.notice_id == "child_m4").values(replaces="child_m4_before"))
    eng.dispose()
    _transition(world, "child_hepb", "superseded", "rule_asks_other", "child_hepb_3")
    _transition(world, "child_hepb", "reinstated", "basis_restored")

    assert main(["explain", "child_hepb", "--work", str(work)]) == 0
    out = capsys.readouterr().out
    assert "state      reinstated\n" in out and "replaces" not in out
    assert ("  #1 2025-06-02T09:00:00+09:00 superseded (rule_asks_other) by child_hepb_3, run proactive_services/test\n"
            "  #2 2025-06-02T09:00:00+09:00 reinstated (basis_restored), run proactive_services/test\n") in out
    assert main(["explain", "child_m4", "--work", str(work)]) == 0
    out = capsys.readouterr().out
    assert "replaces   child_m4_before\nstate      pending\nfacts used\n" in out


@pytest.mark.parametrize("env, says", [
    ({"RENKEI_SMTP_USER": "city", "RENKEI_SMTP_PASSWORD": "pw"}, "the password would cross the network in clear"),
    ({"RENKEI_SMTP_STARTTLS": "true", "RENKEI_SMTP_USER": "city"}, "only one of RENKEI_SMTP_USER and RENKEI_SMTP_PASSWORD"),
    ({"RENKEI_SMTP_STARTTLS": "yes please"}, "RENKEI_SMTP_STARTTLS is 'yes please'"),
    ({"RENKEI_SMTP_CA_FILE": "/nonexistent/ca.pem"}, "a CA file is set but STARTTLS is off"),
    ({"RENKEI_SMTP_STARTTLS": "true", "RENKEI_SMTP_CA_FILE": "/nonexistent/ca.pem"}, "/nonexistent/ca.pem is not a readable file"),
])
def test_smtp_settings_refuse_clear_text_credentials_and_half_set_tls(env, says):
    from renkei.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(says)) as raised:
        load_delivery_config(env=env)
    assert "pw" not in str(raised.value).replace("password", "")


def test_smtp_settings_from_env_turn_on_starttls_with_a_ca_file_and_login(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    smtp = load_delivery_config(env={"RENKEI_SMTP_STARTTLS": "true", "RENKEI_SMTP_CA_FILE": str(ca),
                                     "RENKEI_SMTP_USER": "city", "RENKEI_SMTP_PASSWORD": "pw"}).smtp
    assert (smtp.starttls, smtp.ca_file, smtp.user, smtp.password) == (True, str(ca), "city", "pw")
    assert "pw" not in repr(smtp)
    assert load_delivery_config(env={}).smtp.starttls is False  # the shipped default: a local relay on port 25


def test_a_notice_without_its_contact_token_waits_for_the_pipeline(world, smtp):
    """Delivery holds only the contact key: until the pipeline sealed a resident's contact token
    (seal_contacts after services), the notice waits — no receipt, no retry spent — and goes
    out on the run after the token appears."""
    from renkei.outputs.contacts import seal_contacts
    from renkei.warehouse import notice_contacts

    _, inbox = smtp
    eng = engine(world["settings"].warehouse_url)
    with eng.begin() as conn:
        conn.execute(notice_contacts.delete().where(notice_contacts.c.erk == world["ring"].seal("link", CODES["T"])))
    eng.dispose()
    first = _run(world, MORNING)
    assert first.counts()["by_service"]["event"]["awaiting_contact_token"] == 1
    assert "event_ok" not in _receipts(world) and "t@example.com" not in inbox.by_recipient()
    assert seal_contacts(world["settings"].warehouse_url, world["ring"]) == {"sealed": 1, "unopened": 0}
    _run(world, MORNING.replace(hour=11))
    assert len(inbox.by_recipient()["t@example.com"]) == 1
    assert ("sent", None, "email") in _receipts(world)["event_ok"]
