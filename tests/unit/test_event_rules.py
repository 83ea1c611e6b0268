"""Hand-computed event notices (SERVICES.md "Event notices"): lead time, subscriptions, the cap.

D = 2025-12-01 throughout unless a test says otherwise; lead_days 7 → events starting (in
Asia/Tokyo) 2025-12-02 … 2025-12-08 qualify. Cap: 3 notices in any 7 consecutive days, counted
by the day a notice was generated, earliest-starting events first.
"""

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from renkei.errors import ConfigError
from renkei.services.event_notices import Event, Subscription, evaluate_events, load_event_rules
from renkei.services.immunization import NoticeDraft

JST = timezone(timedelta(hours=9))
UTC = timezone.utc
D = date
ON = D(2025, 12, 1)
RULES = load_event_rules()
KOKURAKITA, YAHATANISHI = "401064", "401099"


def at(day: date, hour: int = 10, minute: int = 0, tz=JST) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)


def ev(event_id: str, day: date, hour: int = 10, *, topic: str = "events", ward: str = KOKURAKITA) -> Event:
    return Event(event_id, topic, ward, f"venue of {event_id}", at(day, hour))


def sub(topic: str = "events", ward: str | None = None, opted_in: datetime = at(D(2025, 1, 1)), opted_out=None) -> Subscription:
    return Subscription(topic, ward, opted_in, opted_out)


def ids(subs, events, on: date = ON, sent=(), rules=RULES) -> list[str]:
    return [x.vaccine_code for x in evaluate_events(subs, events, on, rules, sent)]


# --- lead time ----------------------------------------------------------------------------------


def test_events_from_d_plus_1_to_d_plus_7() -> None:
    events = [
        ev("today", D(2025, 12, 1)),   # D: excluded (D < start date fails)
        ev("d1", D(2025, 12, 2)),      # D+1
        ev("d7", D(2025, 12, 8), 23),  # D+7 = 12/8, late evening still that day
        ev("d8", D(2025, 12, 9), 0),   # D+8 = 12/9 00:00: excluded
    ]
    assert ids([sub()], events) == ["d1", "d7"]


def test_the_start_date_is_taken_in_tokyo() -> None:
    events = [
        # 2025-12-01 15:30 UTC = 12-02 00:30 JST → D+1, included although its UTC date is D.
        Event("utc_d1", "events", KOKURAKITA, "v", at(D(2025, 12, 1), 15, 30, tz=UTC)),
        # 2025-12-08 23:30 UTC = 12-09 08:30 JST → D+8, excluded although its UTC date is D+7.
        Event("utc_d8", "events", KOKURAKITA, "v", at(D(2025, 12, 8), 23, 30, tz=UTC)),
        # A naive timestamp is JST: 12-08 23:59 → D+7.
        Event("naive_d7", "events", KOKURAKITA, "v", datetime(2025, 12, 8, 23, 59)),
    ]
    assert ids([sub()], events) == ["utc_d1", "naive_d7"]


def test_an_event_is_announced_on_every_day_of_its_lead_time() -> None:
    event = [ev("e", D(2025, 12, 8))]
    assert ids([sub()], event, on=D(2025, 11, 30)) == []  # 12/8 = D+8
    assert ids([sub()], event, on=D(2025, 12, 1)) == ["e"]  # D+7
    assert ids([sub()], event, on=D(2025, 12, 7)) == ["e"]  # D+1
    assert ids([sub()], event, on=D(2025, 12, 8)) == []  # the day itself


# --- subscriptions ------------------------------------------------------------------------------


def test_opted_out_on_d_gets_nothing_opted_out_on_d_plus_1_still_does() -> None:
    events = [ev("e", D(2025, 12, 5))]
    assert ids([sub(opted_out=at(D(2025, 12, 1), 8))], events) == []
    assert ids([sub(opted_out=at(D(2025, 12, 1), 23, 59))], events) == []
    assert ids([sub(opted_out=at(D(2025, 12, 2), 0, 0))], events) == ["e"]


def test_opt_out_time_is_taken_in_tokyo() -> None:
    # 2025-11-30 16:00 UTC = 12-01 01:00 JST → opted out on D.
    assert ids([sub(opted_out=at(D(2025, 11, 30), 16, tz=UTC))], [ev("e", D(2025, 12, 5))]) == []


def test_opted_in_on_d_counts_opted_in_on_d_plus_1_not() -> None:
    events = [ev("e", D(2025, 12, 5))]
    assert ids([sub(opted_in=at(D(2025, 12, 1), 23))], events) == ["e"]
    assert ids([sub(opted_in=at(D(2025, 12, 2), 0))], events) == []


def test_a_lapsed_subscription_does_not_count_a_new_one_does() -> None:
    events = [ev("e", D(2025, 12, 5))]
    lapsed = sub(opted_in=at(D(2024, 1, 1)), opted_out=at(D(2024, 6, 1)))
    assert ids([lapsed], events) == []
    assert ids([lapsed, sub(opted_in=at(D(2025, 3, 1)))], events) == ["e"]


def test_ward_filter() -> None:
    events = [ev("kita", D(2025, 12, 3), ward=KOKURAKITA), ev("nishi", D(2025, 12, 4), ward=YAHATANISHI)]
    assert ids([sub(ward=KOKURAKITA)], events) == ["kita"]
    assert ids([sub(ward=YAHATANISHI)], events) == ["nishi"]
    assert ids([sub(ward=None)], events) == ["kita", "nishi"]


def test_topic_must_match() -> None:
    events = [ev("fest", D(2025, 12, 3), topic="events"), ev("clinic", D(2025, 12, 4), topic="health")]
    assert ids([sub(topic="health")], events) == ["clinic"]
    assert ids([sub(topic="disaster")], events) == []
    assert ids([], events) == []


def test_two_matching_subscriptions_give_one_notice() -> None:
    assert ids([sub(ward=None), sub(ward=KOKURAKITA)], [ev("e", D(2025, 12, 3))]) == ["e"]


# --- the cap: 3 in any 7 days -------------------------------------------------------------------

FIVE = [  # listed out of order: the cap picks by start time, then event_id
    ev("e5", D(2025, 12, 8)),
    ev("e2", D(2025, 12, 3), 9),
    ev("e4", D(2025, 12, 6)),
    ev("e1", D(2025, 12, 2)),
    ev("e3", D(2025, 12, 3), 18),
]


def test_cap_keeps_the_three_earliest_events() -> None:
    assert ids([sub()], FIVE) == ["e1", "e2", "e3"]


def test_ties_in_start_time_go_by_event_id() -> None:
    same = [ev(i, D(2025, 12, 4)) for i in ("c", "a", "d", "b")]
    assert ids([sub()], same) == ["a", "b", "c"]


def test_notices_generated_in_the_last_six_days_count() -> None:
    # 2 sent on D−6 = 11/25: the run 11/25 … 12/1 holds them → room 1.
    sent = [("old1", D(2025, 11, 25)), ("old2", D(2025, 11, 25))]
    assert ids([sub()], FIVE, sent=sent) == ["e1"]
    # 2 sent on D−7 = 11/24: no 7-day run holds both them and D → room 3.
    sent = [("old1", D(2025, 11, 24)), ("old2", D(2025, 11, 24))]
    assert ids([sub()], FIVE, sent=sent) == ["e1", "e2", "e3"]


def test_a_full_week_leaves_no_room() -> None:
    sent = [("a", D(2025, 11, 26)), ("b", D(2025, 11, 28)), ("c", D(2025, 11, 30))]
    assert ids([sub()], FIVE, sent=sent) == []


def test_already_generated_events_are_not_drafted_again() -> None:
    # e1 was generated 10 days ago (outside every run with D): not again, and no room used.
    assert ids([sub()], FIVE, sent=[("e1", D(2025, 11, 21))]) == ["e2", "e3", "e4"]


def test_a_rerun_on_the_same_day_adds_nothing() -> None:
    sent = [("e1", ON), ("e2", ON), ("e3", ON)]
    assert ids([sub()], FIVE, sent=sent) == []
    # With one of D's notices recorded, the rerun tops up to 3 with the next events.
    assert ids([sub()], FIVE, sent=[("e1", ON)]) == ["e2", "e3"]


def test_day_by_day_the_cap_holds_in_every_7_day_run() -> None:
    # Events start 12/2 … 12/14, one a day at 10:00; lead 7.
    events = [ev(f"x{n:02d}", D(2025, 12, 1) + timedelta(days=n)) for n in range(1, 14)]
    sent: list[tuple[str, date]] = []
    per_day: dict[date, list[str]] = {}
    for shift in range(9):
        day = ON + timedelta(days=shift)
        new = ids([sub()], events, on=day, sent=sent)
        per_day[day] = new
        sent += [(i, day) for i in new]
    # 12/1: x01 x02 x03 (starts 12/2–12/4). 12/2 … 12/7: the run back to 12/1 holds 3 → none.
    # 12/8: the run 12/2 … 12/8 is empty → 3 more; earliest still qualifying start 12/9: x08 x09 x10
    # (x04 … x07 started by 12/8). 12/9: run 12/3 … 12/9 holds x08–x10 → none.
    assert per_day[D(2025, 12, 1)] == ["x01", "x02", "x03"]
    assert all(per_day[D(2025, 12, d)] == [] for d in range(2, 8))
    assert per_day[D(2025, 12, 8)] == ["x08", "x09", "x10"]
    assert per_day[D(2025, 12, 9)] == []


def test_notices_dated_after_d_count_too_in_a_backfill() -> None:
    # Re-evaluating D after notices were generated on D+6: the run D … D+6 already holds 3.
    later = [("a", D(2025, 12, 7)), ("b", D(2025, 12, 7)), ("c", D(2025, 12, 7))]
    assert ids([sub()], FIVE, sent=later) == []
    # On D+7 = 12/8 they fall outside every run containing D.
    later = [("a", D(2025, 12, 8)), ("b", D(2025, 12, 8)), ("c", D(2025, 12, 8))]
    assert ids([sub()], FIVE, sent=later) == ["e1", "e2", "e3"]


# --- the draft ----------------------------------------------------------------------------------


def test_the_draft_carries_window_and_facts() -> None:
    event = Event("EV-2025-0042", "events", KOKURAKITA, "勝山公園", at(D(2025, 12, 6), 17, 30))
    (draft,) = evaluate_events([sub()], [event], ON, RULES)
    assert draft == NoticeDraft(
        service="event",
        kind="event",
        rule_id="evt.notice",
        rule_version=1,
        vaccine_code="EV-2025-0042",
        dose_number=1,
        window_start=ON,
        window_end=D(2025, 12, 6),
        facts={
            "event_id": "EV-2025-0042",
            "starts_at": "2025-12-06T17:30:00+09:00",
            "venue": "勝山公園",
            "topic": "events",
            "ward_code": KOKURAKITA,
            "evaluated_on": "2025-12-01",
        },
    )
    assert draft.period_key == "EV-2025-0042#1"


def test_starts_at_is_written_in_tokyo_time() -> None:
    event = Event("e", "events", KOKURAKITA, "v", at(D(2025, 12, 5), 1, 0, tz=UTC))
    (draft,) = evaluate_events([sub()], [event], ON, RULES)
    assert draft.facts["starts_at"] == "2025-12-05T10:00:00+09:00"  # 01:00 UTC + 9 h


# --- rule file ----------------------------------------------------------------------------------

MINIMAL = """\
rule_id: evt.notice
version: 1
lead_days: 7
cap: {notices: 3, days: 7}
"""


def test_default_rule() -> None:
    assert (RULES.rule_id, RULES.version, RULES.lead_days, RULES.cap_notices, RULES.cap_days) == (
        "evt.notice", 1, 7, 3, 7,
    )


def test_a_city_edit_changes_lead_time_and_cap(tmp_path: Path) -> None:
    path = tmp_path / "event.yaml"
    path.write_text(MINIMAL.replace("lead_days: 7", "lead_days: 3").replace("notices: 3", "notices: 1"), encoding="utf-8")
    rules = load_event_rules(path)
    # lead 3 → starts 12/2 … 12/4 only (e4 on 12/6, e5 on 12/8 out); cap 1 → the earliest, e1.
    assert ids([sub()], FIVE, rules=rules) == ["e1"]


@pytest.mark.parametrize(
    ("text", "keypath", "hint"),
    [
        (MINIMAL.replace("lead_days: 7", "lead_days: 0"), "lead_days", "whole number ≥ 1"),
        (MINIMAL.replace("{notices: 3, days: 7}", "{notices: 3}"), "cap.days", "add `days:`"),
        (MINIMAL.replace("{notices: 3, days: 7}", "3"), "cap", "key: value"),
        (MINIMAL.replace("rule_id: evt.notice", "rule_id: evt|notice"), "rule_id", "remove the '|'"),
        (MINIMAL.replace("version: 1\n", ""), "version", "add `version:`"),
    ],
)
def test_rule_file_errors_name_file_key_and_fix(tmp_path: Path, text: str, keypath: str, hint: str) -> None:
    path = tmp_path / "event.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_event_rules(path)
    message = str(caught.value)
    assert str(path) in message and f": {keypath}:" in message
    assert "Fix:" in message and hint in message
