"""Building the linked mart from staging with set-based SQL (one transaction per build).

``mart_residents`` holds one row per ERK of the registry with the facts services need (age on
the build date, ward, status, household, immunization history, check-ups, NHI membership,
active subscriptions); ``mart_doses`` the counted doses; ``linkage`` which departments
contributed records for which ERK; ``link_flags`` department copies of birth date or sex that
disagree with the registry, or ERKs no registry row explains. The integrity audit
(renkei.linkage.audit) runs in the same transaction and keeps the review queue.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.keys.rotation import hold_link_key
from renkei.linkage.audit import audit_links
from renkei.linkage.subjects import assign_subjects
from renkei.warehouse import (
    engine,
    ensure_schema,
    link_flags,
    linkage,
    mart_doses,
    mart_residents,
    staging_key,
    staging_table,
    yyyymmdd,
)

log = logging.getLogger(__name__)
ATTRIBUTE_SOURCES = ("immunization", "child_health", "nhi")  # carry a copy of birth date/sex


def _day_bounds(on: date) -> tuple[str, str]:
    nxt = on + timedelta(days=1)
    return f"{on.isoformat()}T00:00:00+09:00", f"{nxt.isoformat()}T00:00:00+09:00"


def _ordered_agg(conn: sa.Connection, pieces: sa.Select, label: str, count: bool = False) -> sa.Subquery:
    """Per-ERK comma-joined ``piece``, sorted by piece (deterministic on every engine).

    PostgreSQL gets ``string_agg(… ORDER BY …)``; SQLite before 3.44 has no ordered aggregates,
    and its group_concat follows the order of an ordered FROM-subquery.
    """
    inner = pieces.subquery()
    agg = sa.func.aggregate_strings(inner.c.piece, ",")
    if conn.dialect.name != "sqlite":
        agg = agg.aggregate_order_by(inner.c.piece)
    cols = [inner.c.erk, agg.label(label)]
    if count:
        cols.append(sa.func.count().label("n"))
    return sa.select(*cols).group_by(inner.c.erk).subquery()


def build_mart(warehouse_url: str, as_of: date, run_id: str) -> dict:
    """Rebuild the mart for evaluation date ``as_of``; returns counts."""
    srcs = load_sources()
    eng = engine(warehouse_url)
    ensure_schema(eng)
    reg = staging_table(srcs["registry"])
    imm = staging_table(srcs["immunization"])
    chk = staging_table(srcs["child_health"])
    nhi = staging_table(srcs["nhi"])
    sub = staging_table(srcs["subscriptions"])
    _, next_day = _day_bounds(as_of)
    d_plus_1 = int((as_of + timedelta(days=1)).strftime("%Y%m%d"))

    with eng.begin() as conn:
        hold_link_key(conn)  # no build while ERKs are re-sealed (renkei.keys.rotation)
        for t in (mart_doses, mart_residents, linkage, link_flags):
            conn.execute(t.delete())

        # Counted doses: one per (ERK, vaccine, dose number), the earliest record if repeated.
        dose_q = sa.select(
            imm.c.erk, imm.c.vaccine_code, imm.c.dose_number,
            sa.func.min(imm.c.administered_on), sa.func.min(imm.c.record_id),
        ).where(imm.c.administered_on <= as_of).group_by(imm.c.erk, imm.c.vaccine_code, imm.c.dose_number)
        conn.execute(sa.insert(mart_doses).from_select(
            ["erk", "vaccine_code", "dose_number", "administered_on", "record_id"], dose_q))

        # Which departments contributed, per ERK.
        personal = [s for s in srcs.values() if s.ingest and s.personal]
        reg_erks = sa.select(reg.c.erk)
        for s in personal:
            st = staging_table(s)
            q = sa.select(
                st.c.erk, sa.literal(s.name), sa.func.count(), st.c.erk.in_(reg_erks), sa.literal(run_id)
            ).where(st.c.erk.is_not(None)).group_by(st.c.erk)
            conn.execute(sa.insert(linkage).from_select(["erk", "source", "records", "in_registry", "built_run_id"], q))

        # Department copies that disagree with the registry, or records of no registered resident.
        for name in ATTRIBUTE_SOURCES:
            st = staging_table(srcs[name])
            key_col = st.c[staging_key(srcs[name])]
            for attr in ("birth_date", "sex"):
                q = (
                    sa.select(sa.literal(name), key_col, sa.literal(f"{attr}_mismatch"), st.c.erk, sa.literal(run_id))
                    .join(reg, reg.c.erk == st.c.erk)
                    .where(st.c[attr].is_not(None), reg.c[attr].is_not(None), st.c[attr] != reg.c[attr])
                )
                conn.execute(sa.insert(link_flags).from_select(["source", "record_key", "reason", "erk", "built_run_id"], q))
            q = (
                sa.select(sa.literal(name), key_col, sa.literal("not_in_registry"), st.c.erk, sa.literal(run_id))
                .where(st.c.erk.not_in(reg_erks))
            )
            conn.execute(sa.insert(link_flags).from_select(["source", "record_key", "reason", "erk", "built_run_id"], q))
        audit = audit_links(conn, as_of, run_id)

        dose_piece = (
            mart_doses.c.vaccine_code + "#" + sa.cast(mart_doses.c.dose_number, sa.String)
            + "@" + sa.cast(mart_doses.c.administered_on, sa.String)
        )
        doses = _ordered_agg(
            conn, sa.select(mart_doses.c.erk, dose_piece.label("piece"))
            .order_by(mart_doses.c.erk, dose_piece), "history", count=True,
        )
        checks = _ordered_agg(
            conn, sa.select(chk.c.erk, (chk.c.checkup_code + "@" + sa.cast(chk.c.examined_on, sa.String)).label("piece"))
            .where(chk.c.examined_on <= as_of).order_by(chk.c.erk, "piece"),
            "codes",
        )
        subs = _ordered_agg(
            conn, sa.select(sub.c.erk, sub.c.topic.label("piece"))
            .where(sub.c.opted_in_at < next_day, sa.or_(sub.c.opted_out_at.is_(None), sub.c.opted_out_at >= next_day))
            .distinct().order_by(sub.c.erk, sub.c.topic),
            "topics",
        )
        depts = sa.select(linkage.c.erk, sa.func.count().label("n")).group_by(linkage.c.erk).subquery()
        age = (sa.literal(d_plus_1) - yyyymmdd(reg.c.birth_date)) / 10000
        q = (
            sa.select(
                reg.c.erk, reg.c.birth_date, reg.c.sex, reg.c.ward_code, reg.c.status, reg.c.status_date,
                reg.c.household_key,
                sa.case((reg.c.birth_date.is_(None), None), else_=age),
                sa.literal(as_of, sa.Date),
                sa.func.coalesce(doses.c.n, 0), doses.c.history, checks.c.codes,
                nhi.c.qualified_on, nhi.c.disqualified_on, nhi.c.last_checkup_on,
                subs.c.topics, sa.func.coalesce(depts.c.n, 0), sa.literal(run_id),
            )
            .select_from(reg)
            .outerjoin(doses, doses.c.erk == reg.c.erk)
            .outerjoin(checks, checks.c.erk == reg.c.erk)
            .outerjoin(nhi, nhi.c.erk == reg.c.erk)
            .outerjoin(subs, subs.c.erk == reg.c.erk)
            .outerjoin(depts, depts.c.erk == reg.c.erk)
        )
        conn.execute(sa.insert(mart_residents).from_select([
            "erk", "birth_date", "sex", "ward_code", "status", "status_date", "household_key", "age_years",
            "as_of", "dose_count", "immunization_history", "checkups", "nhi_qualified_on",
            "nhi_disqualified_on", "nhi_last_checkup_on", "subscription_topics", "departments", "built_run_id",
        ], q))

        assign_subjects(conn, run_id)  # stable notice identity for ERKs new to the mart
        residents = conn.execute(sa.select(sa.func.count()).select_from(mart_residents)).scalar_one()
        linked = conn.execute(
            sa.select(sa.func.count()).select_from(mart_residents).where(mart_residents.c.departments > 1)
        ).scalar_one()
        flags = dict(conn.execute(sa.select(link_flags.c.reason, sa.func.count()).group_by(link_flags.c.reason)).all())
        unlinked = conn.execute(
            sa.select(sa.func.count(sa.distinct(linkage.c.erk))).where(linkage.c.in_registry.is_(False))
        ).scalar_one()
    eng.dispose()
    counts = {"residents": residents, "linked": linked, "unregistered_erks": unlinked, "flags": flags, "audit": audit}
    log.info("link_residents: %s", counts)
    return counts
