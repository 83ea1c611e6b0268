"""Opt-outs: whether a resident withdrew from the subscription topic(s) a notice depends on.

The topics come from config (opt_out_topics: service → topics, "{topic}" = the topic in the
notice's facts). A resident is opted out of a topic at `now` when one of their subscriptions
of it was opted out by then (opted_out_at ≤ now) and none of it is active (opted_in_at ≤ now,
opted_out_at null or later). For a notice with a ward in its facts (events), only
subscriptions of that ward or of every ward count. An opt-out after a notice was generated
therefore suppresses it; a later re-subscription lifts the suppression for undelivered ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.sources.values import ValueParseError, parse_timestamp
from renkei.warehouse import staging_table

TOPIC_PLACEHOLDER = "{topic}"


@dataclass(frozen=True)
class Subscription:
    topic: str
    ward_code: str | None
    opted_in_at: datetime | None
    opted_out_at: datetime | None


def _ts(text: str | None) -> datetime | None:
    try:
        return parse_timestamp(text)
    except ValueParseError:
        return None


def load_subscriptions(conn: sa.Connection, erks: Iterable[str]) -> dict[str, list[Subscription]]:
    """The staging subscriptions of these ERKs (none if the warehouse has no such table)."""
    table = staging_table(load_sources()["subscriptions"])
    if not sa.inspect(conn).has_table(table.name):
        return {}
    wanted = sorted(set(erks))
    out: dict[str, list[Subscription]] = defaultdict(list)
    c = table.c
    for i in range(0, len(wanted), 500):
        q = sa.select(c.erk, c.topic, c.ward_code, c.opted_in_at, c.opted_out_at).where(c.erk.in_(wanted[i:i + 500]))
        for erk, topic, ward, opted_in, opted_out in conn.execute(q):
            out[erk].append(Subscription(topic, ward, _ts(opted_in), _ts(opted_out)))
    return out


def notice_topics(service: str, facts: Mapping, mapping: Mapping[str, tuple[str, ...]]) -> set[str]:
    """The topics whose opt-out suppresses this notice."""
    topics = set()
    for t in mapping.get(service, ()):
        if t == TOPIC_PLACEHOLDER:
            if facts.get("topic"):
                topics.add(str(facts["topic"]))
        else:
            topics.add(t)
    return topics


def is_opted_out(subs: Iterable[Subscription], topics: set[str], ward_code: str | None, now: datetime) -> bool:
    """True if the resident is opted out of any of `topics` at `now` (see the module docstring)."""
    if not topics:
        return False
    for topic in topics:
        mine = [s for s in subs if s.topic == topic and (ward_code is None or s.ward_code in (None, ward_code))]
        active = any(s.opted_in_at is not None and s.opted_in_at <= now and (s.opted_out_at is None or s.opted_out_at > now)
                     for s in mine)
        left = any(s.opted_in_at is not None and s.opted_out_at is not None and s.opted_out_at <= now for s in mine)
        if left and not active:
            return True
    return False
