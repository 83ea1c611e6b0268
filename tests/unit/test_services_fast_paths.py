"""The services' fast paths give what the plain rule functions give (issue 6: whole-city scale).

- ``upcoming`` (events that can qualify on D, filtered once per run) then ``evaluate_events``,
  and ``evaluate_on_calendar`` (those events by topic, starts converted once) equal
  ``evaluate_events`` over the whole calendar, for every resident, day and cap history;
- ``evaluate_recorded`` (doses as a dict, legal windows cached per birth date, day and sex)
  equals ``evaluate_child`` — for many children sharing birth dates with different histories,
  so a cached window reused for another child's doses would show;
- the outbox reads a child's doses from ``immunization_history``: parsed back they are the
  ``mart_doses`` rows the history was aggregated from.
"""

import random
from datetime import date, datetime, timedelta, timezone

from renkei.outputs.outbox import _recorded
from renkei.services.event_notices import (
    Event,
    Subscription,
    calendar,
    evaluate_events,
    evaluate_on_calendar,
    load_event_rules,
    upcoming,
)
from renkei.services.immunization import Dose, evaluate_child, evaluate_recorded, load_immunization_rules

JST = timezone(timedelta(hours=9))


def test_upcoming_then_evaluate_equals_the_whole_calendar() -> None:
    rules = load_event_rules()
    rnd = random.Random(3)
    wards = ["401064", "401099", "401013"]
    topics = ["events", "health", "childcare"]
    base = datetime(2025, 5, 20, tzinfo=JST)
    events = [
        Event(f"E{i:03d}", rnd.choice(topics), rnd.choice(wards), "v",
              base + timedelta(hours=rnd.randrange(0, 24 * 30)))
        for i in range(200)
    ]
    compared = drafted = 0
    for day in (date(2025, 5, 25), date(2025, 6, 1), date(2025, 6, 10)):
        soon = upcoming(events, day, rules)
        cal = calendar(events, day, rules)
        assert 0 < len(soon) < len(events)
        for _ in range(60):
            subs = [Subscription(rnd.choice(topics), rnd.choice([None, *wards]), base - timedelta(days=30))
                    for _ in range(rnd.randrange(1, 3))]
            sent = [(e.event_id, day - timedelta(days=rnd.randrange(0, 6))) for e in rnd.sample(events, rnd.randrange(0, 4))]
            whole = evaluate_events(subs, events, day, rules, sent)
            assert evaluate_events(subs, soon, day, rules, sent) == whole
            assert evaluate_on_calendar(subs, cal, rules, sent) == whole
            compared += 1
            drafted += len(whole)
    assert compared == 180 and drafted > 50


def _children(n: int, on: date) -> list[tuple[date, int, list[Dose]]]:
    rnd = random.Random(11)
    rules = load_immunization_rules()
    codes = sorted({code for s in rules.series for code in s.counts})
    births = [on - timedelta(days=rnd.randrange(0, 13 * 365)) for _ in range(40)]  # shared birth dates
    out = []
    for _ in range(n):
        born = rnd.choice(births)
        doses = {}
        for _ in range(rnd.randrange(0, 14)):
            code, number = rnd.choice(codes), rnd.randrange(1, 5)
            doses[(code, number)] = Dose(code, number, born + timedelta(days=rnd.randrange(30, max(31, (on - born).days))))
        out.append((born, rnd.choice([1, 2, None]), list(doses.values())))
    return out


def test_evaluate_recorded_equals_evaluate_child() -> None:
    rules = load_immunization_rules()
    on = date(2025, 6, 1)
    drafted = 0
    for born, sex, doses in _children(1500, on):
        recorded: dict = {}
        for d in doses:
            recorded.setdefault((d.vaccine_code, d.dose_number), []).append(d.administered_on)
        expected = evaluate_child(born, "resident", doses, on, rules, sex=sex)
        assert evaluate_recorded(born, recorded, on, rules, sex=sex) == expected
        drafted += len(expected)
    assert drafted > 500


def test_history_parses_back_to_the_doses() -> None:
    doses = [Dose("DPT_IPV_HIB", 1, date(2025, 2, 3)), Dose("DPT_IPV", 2, date(2025, 3, 3)),
             Dose("HIB", 10, date(2025, 4, 1)), Dose("ROTA1", 1, date(2025, 1, 9))]
    history = ",".join(sorted(f"{d.vaccine_code}#{d.dose_number}@{d.administered_on.isoformat()}" for d in doses))
    assert _recorded(history) == {(d.vaccine_code, d.dose_number): [d.administered_on] for d in doses}
    assert _recorded(None) == {} and _recorded("") == {}
