"""Event notices: which upcoming city events one subscribed resident is told about on D.

Readings of SERVICES.md made here (lead time and cap are data, config/services/event.yaml):
- Calendar days are Asia/Tokyo: an aware timestamp is converted, a naive one is JST (as the
  sources contract says). An event qualifies on D when D < its start date ≤ D + lead_days, so
  an event starting on D itself is never announced.
- A subscription is active on D when opted_in_at's date ≤ D and opted_out_at is null or its
  date is after D (opted out on D → inactive on D). It matches an event of its topic whose
  ward is its ward_code, or any ward when that is null. Several matching subscriptions still
  give one notice per event.
- Registry status is the caller's filter: this evaluates one resident's subscriptions only.
- `already_sent` lists this resident's event notices generated before, as (event_id, the date
  D they were generated on). Those events are not drafted again.
- The cap "at most 3 event notices per resident in any 7 days" counts notices by the day they
  were generated: for every run of 7 consecutive days (X … X+6) the notices generated in it
  are at most 3. A notice generated on D lies in the runs starting D−6 … D, so D may add
  3 − (the largest count of already_sent in one of those runs); with history up to D only,
  that is 3 − (notices generated D−6 … D). Runs in date order then keep every run within the
  cap. The earliest-starting events (then event_id) take the room; the others are drafted on
  a later day while they still qualify.
- A notice already generated stays current (event_notice_lapse) while the event is on the
  calendar, starts after D, and a subscription active on D matches it; otherwise the services
  run withdraws it (renkei.outputs.lifecycle) and delivery does not send it.
- The draft reuses NoticeDraft: vaccine_code is the event_id (the subject), dose_number is 1
  (period key "<event_id>#1"), kind "event", window D … the start date. facts: event_id,
  starts_at (ISO, JST), venue, topic, ward_code, evaluated_on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from renkei.runctx import TOKYO
from renkei.services.event_rules import EventRules, load_event_rules
from renkei.services.immunization import NoticeDraft

__all__ = [
    "Calendar",
    "Event",
    "EventRules",
    "Subscription",
    "calendar",
    "evaluate_events",
    "evaluate_on_calendar",
    "event_notice_lapse",
    "load_event_rules",
    "upcoming",
]

SERVICE = "event"
KIND = "event"


@dataclass(frozen=True)
class Subscription:
    """One city-app opt-in of the resident (subscriptions table)."""

    topic: str
    ward_code: str | None  # None: every ward
    opted_in_at: datetime
    opted_out_at: datetime | None = None


@dataclass(frozen=True)
class Event:
    """One entry of the city event calendar (events table)."""

    event_id: str
    topic: str
    ward_code: str
    venue: str
    starts_at: datetime


def evaluate_events(
    subscriptions: list[Subscription],
    events: list[Event],
    on: date,
    rules: EventRules,
    already_sent: Iterable[tuple[str, date]] = (),
) -> list[NoticeDraft]:
    """The event notices generated for one resident on `on`, earliest events first."""
    sent, room, active = _capacity(subscriptions, on, rules, already_sent)
    if room <= 0 or not active:
        return []
    last = on + timedelta(days=rules.lead_days)
    picked: dict[str, tuple[datetime, Event]] = {}
    for event in events:
        if event.event_id in sent or event.event_id in picked:
            continue
        starts = _tokyo(event.starts_at)
        if not on < starts.date() <= last:
            continue
        if any(s.topic == event.topic and s.ward_code in (None, event.ward_code) for s in active):
            picked[event.event_id] = (starts, event)
    chosen = sorted(picked.values(), key=lambda item: (item[0], item[1].event_id))[:room]
    return [_draft(event, starts, on, rules) for starts, event in chosen]


@dataclass(frozen=True)
class Calendar:
    """The events that can qualify on one day, by topic, each with its start in Asia/Tokyo —
    prepared once for evaluating many residents on that day (see evaluate_on_calendar)."""

    on: date
    by_topic: dict[str, list[tuple[datetime, Event]]]
    drafts: dict[tuple, NoticeDraft] = field(default_factory=dict)  # one draft per event and rule, shared


def calendar(events: list[Event], on: date, rules: EventRules) -> Calendar:
    """The Calendar of `events` for day `on` (D < start date ≤ D + lead_days)."""
    by_topic: dict[str, list[tuple[datetime, Event]]] = {}
    for event in upcoming(events, on, rules):
        by_topic.setdefault(event.topic, []).append((_tokyo(event.starts_at), event))
    return Calendar(on, by_topic)


def _capacity(
    subscriptions: list[Subscription], on: date, rules: EventRules, already_sent: Iterable[tuple[str, date]]
) -> tuple[dict[str, date], int, list[Subscription]]:
    """Events already told (earliest date each), notices still allowed under the cap on `on`,
    and the subscriptions active that day."""
    sent: dict[str, date] = {}
    for event_id, sent_on in already_sent:
        sent[event_id] = min(sent_on, sent.get(event_id, sent_on))
    room = rules.cap_notices - _busiest_run(list(sent.values()), on, rules.cap_days)
    return sent, room, [s for s in subscriptions if _active(s, on)]


def evaluate_on_calendar(
    subscriptions: list[Subscription],
    cal: Calendar,
    rules: EventRules,
    already_sent: Iterable[tuple[str, date]] = (),
) -> list[NoticeDraft]:
    """evaluate_events(subscriptions, events, cal.on, rules, already_sent) for the calendar's
    events: the same drafts, without converting every event's start for every resident."""
    on = cal.on
    sent, room, active = _capacity(subscriptions, on, rules, already_sent)
    if room <= 0 or not active:
        return []
    picked: dict[str, tuple[datetime, Event]] = {}
    for s in active:
        for starts, event in cal.by_topic.get(s.topic, ()):
            if event.event_id in sent or event.event_id in picked:
                continue
            if s.ward_code is None or s.ward_code == event.ward_code:
                picked[event.event_id] = (starts, event)
    chosen = sorted(picked.values(), key=lambda item: (item[0], item[1].event_id))[:room]
    out = []
    for starts, event in chosen:
        key = (event.event_id, rules.rule_id, rules.version)
        draft = cal.drafts.get(key)
        if draft is None:
            draft = cal.drafts[key] = _draft(event, starts, on, rules)
        out.append(draft)
    return out


def event_notice_lapse(subscriptions: list[Subscription], event: Event | None, on: date,
                       announced: date) -> str | None:
    """Why an event notice is no longer current on `on`, or None while it is.

    `event` is the notice's event as the calendar holds it now (None: no longer there);
    `announced` the start date the notice gave (its window end). Registry status is the
    caller's check. Reasons: "event_removed"; "event_started" (starts on or before `on` as
    announced) or "event_rescheduled" (moved to a date on or before `on`); "opted_out" (no
    subscription active on `on` matches the event's topic and ward).
    """
    if event is None:
        return "event_removed"
    starts = _tokyo(event.starts_at).date()
    if starts <= on:
        return "event_started" if starts == announced else "event_rescheduled"
    if not any(s.topic == event.topic and s.ward_code in (None, event.ward_code)
               for s in subscriptions if _active(s, on)):
        return "opted_out"
    return None


def upcoming(events: list[Event], on: date, rules: EventRules) -> list[Event]:
    """The events that can qualify on `on` (D < start date ≤ D + lead_days), in the given order.

    evaluate_events gives the same drafts for this shorter list as for the whole calendar, so a
    caller evaluating many residents on one day filters once instead of once per resident.
    """
    last = on + timedelta(days=rules.lead_days)
    return [e for e in events if on < _tokyo(e.starts_at).date() <= last]


def _busiest_run(sent_days: list[date], on: date, days: int) -> int:
    """Most notices already generated in one run of `days` consecutive days that contains `on`."""
    busiest = 0
    for shift in range(days):
        first = on - timedelta(days=shift)
        last = first + timedelta(days=days - 1)
        busiest = max(busiest, sum(1 for d in sent_days if first <= d <= last))
    return busiest


def _active(sub: Subscription, on: date) -> bool:
    if _tokyo(sub.opted_in_at).date() > on:
        return False
    return sub.opted_out_at is None or _tokyo(sub.opted_out_at).date() > on


def _tokyo(moment: datetime) -> datetime:
    """The moment in Asia/Tokyo; a naive timestamp is taken as JST (SOURCES.md)."""
    return moment.replace(tzinfo=TOKYO) if moment.tzinfo is None else moment.astimezone(TOKYO)


def _draft(event: Event, starts: datetime, on: date, rules: EventRules) -> NoticeDraft:
    return NoticeDraft(
        service=SERVICE,
        kind=KIND,
        rule_id=rules.rule_id,
        rule_version=rules.version,
        vaccine_code=event.event_id,
        dose_number=1,
        window_start=on,
        window_end=starts.date(),
        facts={
            "event_id": event.event_id,
            "starts_at": starts.isoformat(),
            "venue": event.venue,
            "topic": event.topic,
            "ward_code": event.ward_code,
            "evaluated_on": on.isoformat(),
        },
    )
