"""Evaluating the service rules over the mart and writing notices to the outbox.

A notice's id is deterministic (rule, ERK, period, kind), and the outbox insert ignores an id
it already holds: a re-run, a retry or a duplicate event never publishes a notice twice.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timezone

import sqlalchemy as sa

from renkei.services.immunization import Dose, evaluate_child, load_immunization_rules, notice_id
from renkei.sources.values import format_timestamp
from renkei.warehouse import engine, ensure_schema, mart_doses, mart_residents, notices, upsert

log = logging.getLogger(__name__)
CHILD_AGE_LIMIT_YEARS = 13  # beyond every infant/child series window


def _children(conn: sa.Connection, as_of: date, batch: int = 5000) -> Iterator[tuple[str, date, str, list[Dose]]]:
    """(erk, birth_date, status, doses) for every registered child, streamed in ERK order."""
    oldest = date(as_of.year - CHILD_AGE_LIMIT_YEARS - 1, as_of.month, 1)
    kids = (
        sa.select(mart_residents.c.erk, mart_residents.c.birth_date, mart_residents.c.status)
        .where(mart_residents.c.birth_date > oldest, mart_residents.c.birth_date <= as_of)
        .order_by(mart_residents.c.erk)
    )
    doses = (
        sa.select(mart_doses.c.erk, mart_doses.c.vaccine_code, mart_doses.c.dose_number, mart_doses.c.administered_on)
        .join(mart_residents, mart_residents.c.erk == mart_doses.c.erk)
        .where(mart_residents.c.birth_date > oldest, mart_residents.c.birth_date <= as_of)
        .order_by(mart_doses.c.erk)
    )
    by_erk: dict[str, list[Dose]] = {}
    for erk, code, n, on in conn.execute(doses):
        by_erk.setdefault(erk, []).append(Dose(code, n, on))
    for erk, born, status in conn.execute(kids):
        yield erk, born, status, by_erk.get(erk, [])


def run_services(warehouse_url: str, as_of: date, run_id: str) -> dict:
    """Evaluate the rules on ``as_of`` and write new notices; returns counts.

    {"evaluated": children, "open": notices open on the date, "new": inserted now,
     "by_service_kind": {"immunization/due": n, …}}
    """
    rules = load_immunization_rules()
    eng = engine(warehouse_url)
    ensure_schema(eng)
    created_at = format_timestamp(datetime.now(timezone.utc))
    rows: list[dict] = []
    evaluated = 0
    with eng.connect() as conn:
        for erk, born, status, doses in _children(conn, as_of):
            evaluated += 1
            for draft in evaluate_child(born, status, doses, as_of, rules):
                rows.append({
                    "notice_id": notice_id(draft.rule_id, erk, draft.period_key, draft.kind),
                    "service": draft.service, "kind": draft.kind, "erk": erk,
                    "rule_id": draft.rule_id, "rule_version": draft.rule_version,
                    "subject": draft.vaccine_code, "dose_number": draft.dose_number,
                    "window_start": draft.window_start, "window_end": draft.window_end,
                    "evaluated_on": as_of, "facts": json.dumps(draft.facts, sort_keys=True, ensure_ascii=False),
                    "created_run_id": run_id, "created_at": created_at,
                })
    with eng.begin() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(notices)).scalar_one()
        for i in range(0, len(rows), 5000):
            upsert(conn, notices, rows[i:i + 5000], update=False)
        after = conn.execute(sa.select(sa.func.count()).select_from(notices)).scalar_one()
    eng.dispose()
    by_kind = Counter(f"{r['service']}/{r['kind']}" for r in rows)
    counts = {"evaluated": evaluated, "open": len(rows), "new": after - before, "by_service_kind": dict(sorted(by_kind.items()))}
    log.info("proactive_services on %s: %s", as_of, counts)
    return counts
