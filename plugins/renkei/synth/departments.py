"""The other departmental tables: check-ups, NHI, app subscriptions, contact points, events."""

from __future__ import annotations

import numpy as np

from renkei.synth import pools
from renkei.synth.city import DECEASED, RESIDENT, City, updated_timestamps
from renkei.synth.dates import (
    DAY, NAT, SECOND, anniv, days, fiscal_year_start, iso_dates, iso_timestamps, reach,
)
from renkei.synth.table import Table

CHECKUPS = ("M4", "M7", "Y1M6", "Y3")
# (planned anniversary in months, earliest offset days, latest offset days, window start/end months)
_CHECKUP_PLAN = (
    (4, -25, 45, ("reach", 3), ("reach", 6)),
    (7, -20, 60, ("reach", 6), ("reach", 11)),
    (18, 0, 120, ("anniv", 18), ("reach", 24)),
    (36, 0, 200, ("anniv", 36), ("reach", 48)),
)
CHECKUP_ATTENDANCE = (0.96, 0.95, 0.95, 0.93)
CHANNELS = ("email", "line", "post")
EVENTS_PER_RESIDENT = 2 / 1000
EVENTS_MIN, EVENTS_MAX = 20, 400
APP_LAUNCH = np.datetime64("2021-04-01", "D")


def _cutoff(city: City) -> np.ndarray:
    """Last day a department records anything for each resident: as_of, or the day they left."""
    return np.where(city.status == RESIDENT, city.as_of, np.fmin(city.status_date, city.as_of))


def _window(b: np.ndarray, bound: tuple[str, int]) -> np.ndarray:
    kind, months = bound
    return anniv(b, months) if kind == "anniv" else reach(b, months)


def build_child_health(city: City, rng: np.random.Generator) -> Table:
    """乳幼児健康診査: M4, M7, Y1M6 and Y3 at their ages, with about 95% attendance."""
    kids = np.flatnonzero(city.age() < 6)
    b = city.birth[kids]
    cutoff = _cutoff(city)[kids]
    parts = []
    for code, (months, early, late, start, end), attend in zip(CHECKUPS, _CHECKUP_PLAN, CHECKUP_ATTENDANCE):
        on = anniv(b, months) + days(rng.integers(early, late + 1, kids.size))
        on = np.clip(on, _window(b, start), _window(b, end))
        keep = (rng.random(kids.size) < attend) & (on <= cutoff)
        parts.append((kids[keep], np.full(int(keep.sum()), CHECKUPS.index(code)), on[keep]))
    resident = np.concatenate([p[0] for p in parts])
    checkup = np.concatenate([p[1] for p in parts])
    examined = np.concatenate([p[2] for p in parts]).astype(DAY)
    order = np.lexsort((checkup, resident, examined))
    resident, checkup, examined = resident[order], checkup[order], examined[order]
    updated = updated_timestamps(city.as_of, examined, rng)
    other_space = rng.random(resident.size) < 0.05

    def render(rows: np.ndarray) -> dict[str, list]:
        who = resident[rows]
        return {
            "record_id": [f"CH{r + 1:09d}" for r in rows.tolist()],
            **city.department_copy(who, other_space[rows]),
            "checkup_code": [CHECKUPS[c] for c in checkup[rows].tolist()],
            "examined_on": iso_dates(examined[rows]),
            "updated_at": iso_timestamps(updated[rows]),
        }

    return Table("child_health", int(resident.size), render, resident)


def build_nhi(city: City, rng: np.random.Generator) -> Table:
    """国民健康保険 memberships: most 65–74, some younger; ended at 75 (後期高齢者) or otherwise."""
    today = city.as_of
    age = city.age()
    n = city.size
    b = city.birth
    turned_75 = anniv(b, 75 * 12)
    recently_75 = (age >= 75) & (turned_75 > today - np.timedelta64(3 * 365, "D"))
    share = np.select(
        [age < 20, age < 40, age < 60, age < 65, age < 75, recently_75],
        [0.05, 0.08, 0.10, 0.45, 0.90, 0.90], 0.0,
    )
    member = np.flatnonzero(rng.random(n) < share)
    b, age_m = b[member], age[member]

    # Joined at retirement (60 or 65) for the older members, otherwise at a random past day.
    retire = anniv(b, np.where(rng.random(member.size) < 0.5, 60, 65) * 12) + days(rng.integers(0, 60, member.size))
    lookback = np.minimum((today - b).astype(np.int64), 10 * 365)
    joined_any = today - days(np.floor(rng.random(member.size) * (lookback + 1)).astype(np.int64))
    qualified = np.where((age_m >= 60) & (retire <= today), retire, joined_any)

    disqualified = np.full(member.size, NAT)
    aged_out = turned_75[member] <= today
    disqualified[aged_out] = turned_75[member][aged_out]
    span = (today - qualified).astype(np.int64) + 1
    other_end = ~aged_out & (rng.random(member.size) < 0.06)
    disqualified[other_end] = (qualified + days(np.floor(rng.random(member.size) * span).astype(np.int64)))[other_end]
    left = city.status[member] != RESIDENT
    left_on = city.status_date[member] + days(np.where(city.status[member] == DECEASED, 1, 0))
    qualified = np.where(left, np.fmax(np.fmin(qualified, left_on - np.timedelta64(30, "D")), b), qualified)
    disqualified = np.where(left, np.fmin(np.where(np.isnat(disqualified), left_on, disqualified), left_on), disqualified)

    last_checkup = _last_checkups(today, b, qualified, disqualified, rng)
    updated = updated_timestamps(today, np.fmax(np.fmax(qualified, disqualified), last_checkup), rng)
    other_space = rng.random(member.size) < 0.05

    def render(rows: np.ndarray) -> dict[str, list]:
        who = member[rows]
        return {
            **city.department_copy(who, other_space[rows]),
            "qualified_on": iso_dates(qualified[rows]),
            "disqualified_on": iso_dates(disqualified[rows]),
            "last_checkup_on": iso_dates(last_checkup[rows]),
            "updated_at": iso_timestamps(updated[rows]),
        }

    return Table("nhi", int(member.size), render, member)


def _last_checkups(today: np.datetime64, b: np.ndarray, qualified: np.ndarray,
                   disqualified: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """特定健診 dates of members aged 40+: ~35% in the last fiscal year, some this year or earlier."""
    n = b.size
    this_fy = fiscal_year_start(np.array([today]))[0]
    last_fy = fiscal_year_start(np.array([this_fy - np.timedelta64(1, "D")]))[0]
    pick = rng.random(n)
    offset = rng.random(n)
    this_year_span = (today - this_fy).astype(np.int64) + 1
    on = np.select(
        [pick < 0.35, pick < 0.41, pick < 0.61],
        [last_fy + days(np.floor(offset * 365).astype(np.int64)),
         this_fy + days(np.floor(offset * this_year_span).astype(np.int64)),
         last_fy - days(np.floor(offset * 4 * 365).astype(np.int64) + 1)],
        NAT,
    )
    end = np.where(np.isnat(disqualified), today, np.fmin(disqualified, today))
    valid = (on >= qualified) & (on <= end) & (on >= anniv(b, 40 * 12))
    return np.where(valid, on, NAT)


def build_subscriptions(city: City, rng: np.random.Generator) -> Table:
    """City-app opt-ins of about 15% of adults: one row per topic, some with a ward filter or opt-out."""
    age = city.age()
    adults = np.flatnonzero((age >= 18) & (rng.random(city.size) < 0.15))
    has_young_child = np.zeros(city.household.max() + 1, dtype=bool)
    has_young_child[city.household[age < 7]] = True
    young_family = has_young_child[city.household[adults]]
    senior = age[adults] >= 60
    topic_p = np.stack([
        np.full(adults.size, 0.55),
        np.where(young_family, 0.70, 0.04),
        np.where(senior, 0.50, 0.25),
        np.full(adults.size, 0.25),
    ], axis=1)
    chosen = rng.random(topic_p.shape) < topic_p
    chosen[~chosen.any(axis=1), 0] = True
    who_i, topic = np.nonzero(chosen)
    resident = adults[who_i]
    n = resident.size

    ward_pick = rng.random(n)
    other_ward = rng.integers(0, len(pools.WARDS), n)
    ward = np.select([ward_pick < 0.45, ward_pick < 0.95], [-1, city.ward(resident)], other_ward)
    opted_in = _timestamps_between(np.full(n, APP_LAUNCH), np.full(n, city.as_of), rng)
    out = rng.random(n) < 0.10
    opted_out_all = _timestamps_between(opted_in.astype(DAY), np.full(n, city.as_of), rng)
    opted_out = np.where(out & (opted_out_all > opted_in), opted_out_all, np.datetime64("NaT", "s"))
    last_change = np.fmax(opted_in, opted_out)
    updated = last_change + (rng.integers(0, 3600, n)).astype("timedelta64[s]")
    updated = np.fmin(updated, (city.as_of + np.timedelta64(1, "D")).astype(SECOND) - np.timedelta64(1, "s"))

    def render(rows: np.ndarray) -> dict[str, list]:
        return {
            "subscription_id": [f"SB{r + 1:09d}" for r in rows.tolist()],
            "resident_code": city.resident_codes(resident[rows]),
            "topic": [pools.TOPICS[t] for t in topic[rows].tolist()],
            "ward_code": [None if w < 0 else pools.WARDS[w][0] for w in ward[rows].tolist()],
            "opted_in_at": iso_timestamps(opted_in[rows]),
            "opted_out_at": iso_timestamps(opted_out[rows]),
            "updated_at": iso_timestamps(updated[rows]),
        }

    return Table("subscriptions", n, render, resident)


def _timestamps_between(low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A JST timestamp on a day in [low, high] (days), between 07:00 and 23:00."""
    span = (high - low).astype(np.int64) + 1
    on = low + days(np.floor(rng.random(low.size) * span).astype(np.int64))
    return on.astype(SECOND) + rng.integers(7 * 3600, 23 * 3600, low.size).astype("timedelta64[s]")


def build_contacts(city: City, rng: np.random.Generator) -> Table:
    """Contact points of residents 16+: 0–3 rows (email, line, post); ~10% unverified."""
    age = city.age()
    grown = age >= 16
    young = age < 60
    p = np.stack([
        np.where(young, 0.55, 0.30),
        np.where(young, 0.50, 0.25),
        np.full(city.size, 0.75),
    ], axis=1) * grown[:, None]
    resident, channel = np.nonzero(rng.random(p.shape) < p)
    n = resident.size
    verified = _timestamps_between(np.full(n, APP_LAUNCH), np.full(n, city.as_of), rng)
    verified = np.where(rng.random(n) < 0.10, np.datetime64("NaT", "s"), verified)
    updated = updated_timestamps(city.as_of, verified.astype(DAY), rng)
    updated = np.where(np.isnat(verified), updated, np.fmax(updated, verified))
    handle = rng.integers(0, 2**62, (n, 2), dtype=np.int64)

    def render(rows: np.ndarray) -> dict[str, list]:
        who = resident[rows]
        postal = city.address(who)
        addresses = []
        for k, (c, (h1, h2)) in enumerate(zip(channel[rows].tolist(), handle[rows].tolist())):
            if c == 0:
                addresses.append(f"r{h1 >> 20:011x}@example.com")
            elif c == 1:
                addresses.append(f"U{h1:016x}{h2:016x}")
            else:
                addresses.append(postal[k])
        return {
            "resident_code": city.resident_codes(who),
            "channel": [CHANNELS[c] for c in channel[rows].tolist()],
            "address": addresses,
            "verified_at": iso_timestamps(verified[rows]),
            "updated_at": iso_timestamps(updated[rows]),
        }

    return Table("registry_contact", n, render, resident)


def build_events(city: City, rng: np.random.Generator) -> Table:
    """The event calendar: ~2 per 1,000 residents, from as_of − 30 to as_of + 60 days."""
    n = int(min(max(round(city.size * EVENTS_PER_RESIDENT), EVENTS_MIN), EVENTS_MAX))
    population = np.array([w[2] for w in pools.WARDS], dtype=float)
    ward = rng.choice(len(pools.WARDS), size=n, p=population / population.sum())
    topic = rng.choice(len(pools.TOPICS), size=n, p=pools.TOPIC_WEIGHTS)
    start_day = city.as_of + days(rng.integers(-30, 61, n))
    month = start_day.astype("datetime64[M]").astype(np.int64) % 12 + 1
    season = (month % 12) // 3  # 0 winter (12–2), 1 spring, 2 summer, 3 autumn
    titles, venues, long_running = [], [], []
    for w, t, s in zip(ward.tolist(), topic.tolist(), season.tolist()):
        venue = pools.VENUES[w][int(rng.integers(len(pools.VENUES[w])))]
        names = pools.EVENT_NAMES[pools.TOPICS[t]]
        if pools.TOPICS[t] == "events":
            names = names + pools.SEASONAL_EVENT_NAMES[s] * 2
        name = names[int(rng.integers(len(names)))]
        titles.append(f"{venue} {name}")
        venues.append(venue)
        long_running.append(name == "冬のイルミネーション")
    hour = rng.choice(np.array([10, 13, 18]), size=n, p=(0.5, 0.35, 0.15))
    starts = start_day.astype(SECOND) + (hour * 3600).astype("timedelta64[s]")
    same_day_end = starts + (rng.integers(2, 5, n) * 3600).astype("timedelta64[s]")
    multi_day_end = (start_day + days(rng.integers(2, 45, n))).astype(SECOND) + np.timedelta64(21 * 3600, "s")
    ends = np.where(np.array(long_running), multi_day_end, same_day_end)
    order = np.lexsort((ward, starts))
    updated = updated_timestamps(city.as_of, np.full(n, city.as_of - np.timedelta64(90, "D")), rng)

    def render(rows: np.ndarray) -> dict[str, list]:
        picked = order[rows]
        return {
            "event_id": [f"EV{r + 1:06d}" for r in rows.tolist()],
            "title": [titles[i] for i in picked.tolist()],
            "topic": [pools.TOPICS[t] for t in topic[picked].tolist()],
            "ward_code": [pools.WARDS[w][0] for w in ward[picked].tolist()],
            "venue": [venues[i] for i in picked.tolist()],
            "starts_at": iso_timestamps(starts[picked]),
            "ends_at": iso_timestamps(ends[picked]),
            "updated_at": iso_timestamps(updated[picked]),
        }

    return Table("events", n, render, None)
