"""The notice lifecycle's decisions, hand-computed: is an event notice still current, which
transition an open notice takes, why it lapsed, and the stream's state message.

D = 2025-06-01 throughout; an event notice generated earlier announced its event for the date
given as ``announced``.
"""

from datetime import date, datetime, timedelta, timezone

import pytest

from renkei.outputs.lifecycle import OpenNotice, Transition, decide, withdrawal_reason
from renkei.outputs.notice import Notice, NoticeError, NoticeState, decode
from renkei.services.event_notices import Event, Subscription, event_notice_lapse

JST = timezone(timedelta(hours=9))
ON = date(2025, 6, 1)
WARD, OTHER_WARD = "401064", "401099"


def at(day: date, hour: int = 10, tz=JST) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=tz)


def event(day: date, hour: int = 18, topic: str = "events", ward: str = WARD, tz=JST) -> Event:
    return Event("E1", topic, ward, "勝山公園", at(day, hour, tz))


def sub(topic: str = "events", ward: str | None = None, opted_out: datetime | None = None) -> Subscription:
    return Subscription(topic, ward, at(date(2025, 1, 1)), opted_out)


# -- event_notice_lapse --------------------------------------------------------------------------


def test_an_event_notice_stays_current_while_event_and_a_matching_subscription_last() -> None:
    e = event(date(2025, 6, 4))
    assert event_notice_lapse([sub()], e, ON, date(2025, 6, 4)) is None
    assert event_notice_lapse([sub(ward=WARD)], e, ON, date(2025, 6, 4)) is None
    # one matching subscription among others is enough
    assert event_notice_lapse([sub("health"), sub(ward=OTHER_WARD), sub()], e, ON, date(2025, 6, 4)) is None
    # moved to a later date: still current (it starts after D)
    assert event_notice_lapse([sub()], event(date(2025, 6, 20)), ON, date(2025, 6, 4)) is None


def test_an_event_notice_lapses_when_the_event_is_gone_or_begun() -> None:
    assert event_notice_lapse([sub()], None, ON, date(2025, 6, 4)) == "event_removed"
    # starts on D itself, as announced: no longer ahead
    assert event_notice_lapse([sub()], event(ON), ON, ON) == "event_started"
    assert event_notice_lapse([sub()], event(date(2025, 5, 30)), ON, date(2025, 5, 30)) == "event_started"
    # brought forward from 06-04 to D
    assert event_notice_lapse([sub()], event(ON), ON, date(2025, 6, 4)) == "event_rescheduled"
    # 2025-06-01 16:00 UTC is 06-02 01:00 in Tokyo: after D, current
    assert event_notice_lapse([sub()], event(ON, 16, tz=timezone.utc), ON, date(2025, 6, 2)) is None
    # 2025-06-01 14:00 UTC is 23:00 on D in Tokyo
    assert event_notice_lapse([sub()], event(ON, 14, tz=timezone.utc), ON, date(2025, 6, 2)) == "event_rescheduled"


def test_an_event_notice_lapses_when_no_active_subscription_matches() -> None:
    e = event(date(2025, 6, 4))
    assert event_notice_lapse([], e, ON, date(2025, 6, 4)) == "opted_out"
    assert event_notice_lapse([sub(opted_out=at(ON, 9))], e, ON, date(2025, 6, 4)) == "opted_out"  # out on D
    assert event_notice_lapse([sub(opted_out=at(date(2025, 6, 2), 9))], e, ON, date(2025, 6, 4)) is None  # out later
    assert event_notice_lapse([sub("health")], e, ON, date(2025, 6, 4)) == "opted_out"
    assert event_notice_lapse([sub(ward=OTHER_WARD)], e, ON, date(2025, 6, 4)) == "opted_out"
    # the event moved to another ward than the one subscribed to
    assert event_notice_lapse([sub(ward=WARD)], event(date(2025, 6, 4), ward=OTHER_WARD), ON, date(2025, 6, 4)) == "opted_out"
    # the calendar is checked before the subscription
    assert event_notice_lapse([], None, ON, date(2025, 6, 4)) == "event_removed"


# -- decide --------------------------------------------------------------------------------------


def notice(nid: str, state: str = "pending", subject: str = "ROTA5", dose: int = 2, service: str = "immunization",
           erk: str = "v1.J") -> OpenNotice:
    return OpenNotice(nid, erk, service, subject, dose, "imm.rota5", date(2025, 8, 27), state)


def run(notices: list[OpenNotice], current: set[str], successors: dict | None = None,
        reasons: dict | None = None) -> list[Transition]:
    successors, reasons = successors or {}, reasons or {}
    return decide(notices, lambda n: n.notice_id in current, lambda n: successors.get(n.notice_id),
                  lambda n: reasons.get(n.notice_id, "no_longer_due"))


def test_a_current_live_notice_and_a_lapsed_closed_one_do_not_move() -> None:
    notices = [notice("a"), notice("b", "reinstated"), notice("c", "withdrawn"), notice("d", "superseded")]
    assert run(notices, current={"a", "b"}) == []


def test_a_lapsed_notice_is_withdrawn_with_its_reason_or_superseded_by_a_current_one() -> None:
    notices = [notice("dose2"), notice("je2", subject="JE"), notice("back", "reinstated", subject="HEPB", dose=1)]
    got = run(notices, current=set(), successors={"dose2": "dose3"},
              reasons={"je2": "dose_recorded", "back": "status_moved_out"})
    assert got == [
        Transition("back", "withdrawn", "status_moved_out", None, "reinstated"),
        Transition("dose2", "superseded", "rule_asks_other", "dose3", "pending"),
        Transition("je2", "withdrawn", "dose_recorded", None, "pending"),
    ]


def test_a_closed_notice_current_again_is_reinstated_before_any_supersession_names_it() -> None:
    # dose 3 lapses for dose 2, which is current again: dose 2 comes back first.
    got = run([notice("dose3", dose=3), notice("dose2", "superseded")], current={"dose2"},
              successors={"dose3": "dose2"})
    assert got == [Transition("dose2", "reinstated", "basis_restored", None, "superseded"),
                   Transition("dose3", "superseded", "rule_asks_other", "dose2", "pending")]
    assert run([notice("w", "withdrawn")], current={"w"}) == [
        Transition("w", "reinstated", "basis_restored", None, "withdrawn")]


def test_a_notice_is_never_superseded_by_itself() -> None:
    assert run([notice("a")], current=set(), successors={"a": "a"}) == [
        Transition("a", "withdrawn", "no_longer_due", None, "pending")]


# -- withdrawal_reason ---------------------------------------------------------------------------


def resident(status: str | None = "resident", history: str | None = None, checkups: str | None = None,
             qualified: date | None = None, disqualified: date | None = None, last: date | None = None) -> dict:
    return {"status": status, "immunization_history": history, "checkups": checkups, "nhi_qualified_on": qualified,
            "nhi_disqualified_on": disqualified, "nhi_last_checkup_on": last}


def test_registry_reasons_come_first() -> None:
    n = notice("a")
    assert withdrawal_reason(n, None, ON) == "not_in_registry"
    assert withdrawal_reason(n, resident("moved_out", history="ROTA5#2@2025-04-20"), ON) == "status_moved_out"
    assert withdrawal_reason(n, resident("deceased"), ON) == "status_deceased"
    assert withdrawal_reason(n, resident(None), ON) == "status_unknown"
    assert withdrawal_reason(n, resident("Moved Out!"), ON) == "status_moved_out_"  # snake_case, no data


def test_immunization_reasons() -> None:
    je2 = notice("je2", subject="JE", dose=2)
    assert withdrawal_reason(je2, resident(history="JE#1@2025-05-20,JE#2@2025-05-31"), ON) == "dose_recorded"
    assert withdrawal_reason(je2, resident(history="JE#1@2025-05-20"), ON) == "no_longer_due"
    # ROTA dose 1 is counted by a ROTA1 or ROTA5 record (the series' `counts`)
    rota = notice("rota1", subject="ROTA", dose=1)
    assert withdrawal_reason(rota, resident(history="ROTA5#1@2025-05-20"), ON, ("ROTA1", "ROTA5")) == "dose_recorded"
    assert withdrawal_reason(rota, resident(history="ROTA5#1@2025-05-20"), ON) == "no_longer_due"


def test_checkup_nhi_and_event_reasons() -> None:
    m4 = notice("m4", subject="M4", dose=1, service="checkup")
    assert withdrawal_reason(m4, resident(checkups="M4@2025-05-21"), ON) == "checkup_recorded"
    assert withdrawal_reason(m4, resident(checkups="M7@2025-05-21"), ON) == "no_longer_due"
    nhi = notice("nhi", subject="NHI_CHECKUP", dose=2025, service="nhi_checkup")
    assert withdrawal_reason(nhi, resident(), ON) == "nhi_membership_ended"  # never a member
    assert withdrawal_reason(nhi, resident(qualified=date(2020, 4, 1), disqualified=ON), ON) == "nhi_membership_ended"
    # checked on or after FY2025's April 1
    assert withdrawal_reason(nhi, resident(qualified=date(2020, 4, 1), last=date(2025, 4, 1)), ON) == "checkup_recorded"
    assert withdrawal_reason(nhi, resident(qualified=date(2020, 4, 1), last=date(2025, 3, 31)), ON) == "no_longer_due"
    ev = notice("e1", subject="E1", dose=1, service="event")
    assert withdrawal_reason(ev, resident(), ON, event_reason="opted_out") == "opted_out"
    assert withdrawal_reason(ev, resident("moved_out"), ON, event_reason="opted_out") == "status_moved_out"


# -- the stream's messages -----------------------------------------------------------------------

NOTICE = {
    "notice_id": "b" * 32, "service": "immunization", "kind": "due", "erk": "v1.x", "rule_id": "imm.rota5",
    "rule_version": 1, "subject": "ROTA5", "dose_number": 3, "window_start": "2025-05-18", "window_end": "2025-08-27",
    "evaluated_on": "2025-06-01", "facts": {}, "created_run_id": "services/r", "created_at": "2025-06-01T06:00:00+09:00",
}
STATE = {"type": "notice_state", "seq": 7, "notice_id": "a" * 32, "state": "superseded", "reason": "rule_asks_other",
         "superseded_by": "b" * 32, "at": "2025-06-01T06:00:04+09:00", "run_id": "services/r"}


def test_replaces_is_optional_on_a_notice_message() -> None:
    import json

    plain = decode(json.dumps(NOTICE), "1-0")
    assert isinstance(plain, Notice) and plain.replaces is None and "replaces" not in json.loads(plain.to_json())
    newer = decode(json.dumps({**NOTICE, "replaces": "a" * 32}), "2-0")
    assert newer.replaces == "a" * 32 and json.loads(newer.to_json())["replaces"] == "a" * 32
    with pytest.raises(NoticeError, match="'replaces'"):
        decode(json.dumps({**NOTICE, "replaces": 5}))


def test_a_state_message_decodes_to_a_notice_state_and_back() -> None:
    import json

    got = decode(json.dumps(STATE), "3-0")
    assert got == NoticeState(7, "a" * 32, "superseded", "rule_asks_other", "b" * 32, "2025-06-01T06:00:04+09:00",
                              "services/r")
    assert got.message_id == "3-0" and json.loads(got.to_json()) == STATE
    with pytest.raises(NoticeError, match="'seq' must be an integer"):
        decode(json.dumps({**STATE, "seq": "7"}))
    with pytest.raises(NoticeError, match=r"\['reason'\] missing"):
        decode(json.dumps({k: v for k, v in STATE.items() if k != "reason"}))
    with pytest.raises(NoticeError, match="type 'other' is unknown"):
        decode(json.dumps({**STATE, "type": "other"}))
