"""The review queue in figures, for the city's report: counts and waiting times per department.

The figures the national review of 紐付け (linkage) published per system: how many findings, of
which reason and severity, in which state, and how long they waited. Counts are of active items
(what the latest audit still finds) by state, plus ``resolved``: items the audit no longer finds
(the department corrected its record). Waiting is measured from when an item was first seen
(the ``built_at`` of the link build that first queued it): for pending items until ``now``, for
decided items (active or resolved) until their decision. Items whose first build is not recorded
are counted in ``unknown_start`` and left out of the waiting figures. p90 is the nearest-rank
90th percentile (the ⌈0.9·n⌉-th smallest). Ids and counts only: nothing here names a record.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from datetime import datetime, timezone

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.linkage.audit import APPROVED, PENDING, REJECTED
from renkei.sources.values import format_timestamp
from renkei.warehouse import engine, ensure_schema, link_builds, review_queue

RESOLVED = "resolved"
COLUMNS = (PENDING, APPROVED, REJECTED, RESOLVED)


def _days(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() / 86400


def waiting(days: list[float]) -> dict:
    """count, median, p90 (nearest rank) and max of a list of day counts, rounded to 0.1 day."""
    if not days:
        return {"count": 0, "median_days": None, "p90_days": None, "max_days": None}
    ordered = sorted(days)
    p90 = ordered[max(1, math.ceil(0.9 * len(ordered))) - 1]
    return {"count": len(ordered), "median_days": round(statistics.median(ordered), 1),
            "p90_days": round(p90, 1), "max_days": round(ordered[-1], 1)}


def _all(by_department: dict[str, list[float]]) -> list[float]:
    return [x for days in by_department.values() for x in days]


def _counts() -> dict[str, int]:
    return dict.fromkeys(COLUMNS, 0)


def summary(warehouse_url: str, now: datetime | None = None) -> dict:
    """Counts by department, reason, severity and state, and waiting times (see the module doc)."""
    at = format_timestamp(now or datetime.now(timezone.utc))
    srcs = load_sources()
    q, b = review_queue.c, link_builds.c
    eng = engine(warehouse_url)
    try:
        ensure_schema(eng)
        with eng.connect() as conn:
            started = dict(conn.execute(sa.select(b.run_id, sa.func.min(b.built_at)).group_by(b.run_id)).all())
            items = conn.execute(sa.select(q.source, q.reason, q.severity, q.state, q.active, q.first_seen_run,
                                           q.decided_at)).all()
    finally:
        eng.dispose()
    by_department: dict[str, dict] = defaultdict(_counts)
    by_reason: dict[str, dict] = defaultdict(_counts)
    by_severity: dict[str, dict] = defaultdict(_counts)
    by_state = _counts()
    pending_days: dict[str, list[float]] = defaultdict(list)
    decided_days: dict[str, list[float]] = defaultdict(list)
    unknown: dict[str, int] = defaultdict(int)
    for it in items:
        dept = srcs[it.source].department if it.source in srcs else it.source
        column = it.state if it.active else RESOLVED
        for row in (by_department[dept], by_reason[it.reason], by_severity[it.severity], by_state):
            row[column] = row.get(column, 0) + 1  # a state this module does not know still counts
        if it.active and it.state == PENDING:
            end, into = at, pending_days
        elif it.state in (APPROVED, REJECTED) and it.decided_at:
            end, into = it.decided_at, decided_days
        else:
            continue  # resolved without a decision: it waited for no one
        start = started.get(it.first_seen_run)
        if start is None:
            unknown[dept] += 1
            continue
        into[dept].append(max(0.0, _days(start, end)))
    departments = {}
    for dept in sorted(by_department):
        departments[dept] = {**by_department[dept], "total": sum(by_department[dept].values()),
                             "waiting_pending": waiting(pending_days[dept]),
                             "days_to_decision": waiting(decided_days[dept]), "unknown_start": unknown[dept]}
    return {
        "as_of": at,
        "items": len(items),
        "by_state": by_state,
        "by_department": departments,
        "by_reason": {k: {**v, "total": sum(v.values())} for k, v in sorted(by_reason.items())},
        "by_severity": {k: {**v, "total": sum(v.values())} for k, v in sorted(by_severity.items())},
        "waiting_pending": waiting(_all(pending_days)),
        "days_to_decision": waiting(_all(decided_days)),
        "unknown_start": sum(unknown.values()),
    }
