"""Evaluating the service rules over the mart and writing notices to the outbox.

Services (rules are data under config/services/): immunization and infant check-ups for
children, specific health check-up invitations for NHI members, event notices for residents who
subscribed. Only residents whose registry status is ``resident`` on D get notices. A notice's id
is deterministic (rule, the resident's subject key, period, kind; renkei.linkage.subjects), and the outbox insert ignores an id it already
holds: a re-run, a retry or a duplicate event never publishes a notice twice.

Suspect links are held back: an ERK with an active ``hold`` item of the integrity audit that is
pending or rejected (renkei.linkage.review.held_erks) gets no new notice from any service until
a reviewer approves the item or the department's corrected record clears it. Notices already in
the outbox stay.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import date, datetime, timezone

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.keys.rotation import hold_link_key
from renkei.linkage.review import held_erks
from renkei.linkage.subjects import subject_keys
from renkei.services.checkup import evaluate_checkups, load_checkup_rules
from renkei.services.event_notices import Event, Subscription, evaluate_events, load_event_rules
from renkei.services.immunization import Dose, NoticeDraft, evaluate_child, load_immunization_rules, notice_id
from renkei.services.nhi_checkup import evaluate_nhi_checkup, load_nhi_checkup_rules
from renkei.sources.values import format_timestamp, parse_timestamp
from renkei.warehouse import engine, ensure_schema, mart_doses, mart_residents, notices, staging_table, upsert

log = logging.getLogger(__name__)
CHILD_AGE_LIMIT_YEARS = 17  # beyond every child series window (HPV runs to 高校1年相当)
RESIDENT = "resident"
Draft = tuple[str, NoticeDraft]  # (erk, draft)


def _child_filter(as_of: date):
    oldest = date(as_of.year - CHILD_AGE_LIMIT_YEARS - 1, as_of.month, 1)
    return sa.and_(mart_residents.c.birth_date > oldest, mart_residents.c.birth_date <= as_of,
                   mart_residents.c.status == RESIDENT)


def immunization_drafts(conn: sa.Connection, as_of: date) -> Iterator[Draft]:
    rules = load_immunization_rules()
    doses: dict[str, list[Dose]] = defaultdict(list)
    q = (
        sa.select(mart_doses.c.erk, mart_doses.c.vaccine_code, mart_doses.c.dose_number, mart_doses.c.administered_on)
        .join(mart_residents, mart_residents.c.erk == mart_doses.c.erk).where(_child_filter(as_of))
    )
    for erk, code, n, on in conn.execute(q):
        doses[erk].append(Dose(code, n, on))
    kids = sa.select(mart_residents.c.erk, mart_residents.c.birth_date, mart_residents.c.status,
                     mart_residents.c.sex).where(_child_filter(as_of))
    for erk, born, status, sex in conn.execute(kids):
        for draft in evaluate_child(born, status, doses.get(erk, []), as_of, rules, sex=sex):
            yield erk, draft


def checkup_drafts(conn: sa.Connection, as_of: date) -> Iterator[Draft]:
    rules = load_checkup_rules()
    q = sa.select(mart_residents.c.erk, mart_residents.c.birth_date, mart_residents.c.status,
                  mart_residents.c.checkups).where(_child_filter(as_of), mart_residents.c.age_years < 5)
    for erk, born, status, checkups in conn.execute(q):
        examined = {piece.split("@", 1)[0] for piece in (checkups or "").split(",") if piece}
        for draft in evaluate_checkups(born, status, examined, as_of, rules):
            yield erk, draft


def nhi_checkup_drafts(conn: sa.Connection, as_of: date) -> Iterator[Draft]:
    rules = load_nhi_checkup_rules()
    m = mart_residents.c
    q = sa.select(m.erk, m.birth_date, m.status, m.nhi_qualified_on, m.nhi_disqualified_on, m.nhi_last_checkup_on).where(
        m.nhi_qualified_on.is_not(None), m.status == RESIDENT, m.birth_date.is_not(None))
    for erk, born, status, qualified, disqualified, last in conn.execute(q):
        for draft in evaluate_nhi_checkup(born, status, qualified, disqualified, last, as_of, rules):
            yield erk, draft


def event_drafts(conn: sa.Connection, as_of: date) -> Iterator[Draft]:
    rules = load_event_rules()
    srcs = load_sources()
    ev, sub = staging_table(srcs["events"]), staging_table(srcs["subscriptions"])
    events = [
        Event(r.event_id, r.topic, r.ward_code, r.venue or "", parse_timestamp(r.starts_at))
        for r in conn.execute(sa.select(ev.c.event_id, ev.c.topic, ev.c.ward_code, ev.c.venue, ev.c.starts_at))
        if r.starts_at is not None
    ]
    if not events:
        return
    subs: dict[str, list[Subscription]] = defaultdict(list)
    q = (
        sa.select(sub.c.erk, sub.c.topic, sub.c.ward_code, sub.c.opted_in_at, sub.c.opted_out_at)
        .join(mart_residents, mart_residents.c.erk == sub.c.erk).where(mart_residents.c.status == RESIDENT)
    )
    for erk, topic, ward, opted_in, opted_out in conn.execute(q):
        if opted_in is None:
            continue
        subs[erk].append(Subscription(topic, ward, parse_timestamp(opted_in), parse_timestamp(opted_out) if opted_out else None))
    sent: dict[str, list[tuple[str, date]]] = defaultdict(list)
    for erk, event_id, on in conn.execute(
        sa.select(notices.c.erk, notices.c.subject, notices.c.evaluated_on).where(notices.c.service == "event")
    ):
        sent[erk].append((event_id, on))
    for erk, mine in subs.items():
        for draft in evaluate_events(mine, events, as_of, rules, sent.get(erk, ())):
            yield erk, draft


SERVICES = {
    "immunization": immunization_drafts,
    "checkup": checkup_drafts,
    "nhi_checkup": nhi_checkup_drafts,
    "event": event_drafts,
}


def _row(erk: str, subject: str, draft: NoticeDraft, as_of: date, run_id: str, created_at: str) -> dict:
    return {
        "notice_id": notice_id(draft.rule_id, subject, draft.period_key, draft.kind),
        "service": draft.service, "kind": draft.kind, "erk": erk,
        "rule_id": draft.rule_id, "rule_version": draft.rule_version,
        "subject": draft.vaccine_code, "dose_number": draft.dose_number,
        "window_start": draft.window_start, "window_end": draft.window_end,
        "evaluated_on": as_of, "facts": json.dumps(draft.facts, sort_keys=True, ensure_ascii=False, default=str),
        "created_run_id": run_id, "created_at": created_at,
    }


def run_services(warehouse_url: str, as_of: date, run_id: str, services: list[str] | None = None) -> dict:
    """Evaluate the rules on ``as_of`` and write new notices; returns counts.

    {"open": notices open on the date, "new": inserted now, "held_erks": ERKs held back by the audit,
     "by_service_kind": {"immunization/due": n, …}}
    """
    eng = engine(warehouse_url)
    ensure_schema(eng)
    created_at = format_timestamp(datetime.now(timezone.utc))
    rows: list[dict] = []
    # The link-key version this run reads under, and every mart ERK's subject key (an ERK a
    # concurrent link build adds later gets its notices on the run that build triggers).
    with eng.begin() as conn:
        link_version, subject_of = hold_link_key(conn), subject_keys(conn, run_id)
    with eng.connect() as conn:
        held = held_erks(conn)
        for name in services or list(SERVICES):
            rows.extend(_row(erk, subject_of[erk], d, as_of, run_id, created_at)
                        for erk, d in SERVICES[name](conn, as_of) if erk not in held and erk in subject_of)
    with eng.begin() as conn:
        hold_link_key(conn, expect=link_version)
        before = conn.execute(sa.select(sa.func.count()).select_from(notices)).scalar_one()
        for i in range(0, len(rows), 5000):
            upsert(conn, notices, rows[i:i + 5000], update=False)
        after = conn.execute(sa.select(sa.func.count()).select_from(notices)).scalar_one()
    eng.dispose()
    by_kind = Counter(f"{r['service']}/{r['kind']}" for r in rows)
    counts = {"open": len(rows), "new": after - before, "held_erks": len(held), "by_service_kind": dict(sorted(by_kind.items()))}
    log.info("proactive_services on %s: %s", as_of, counts)
    return counts
