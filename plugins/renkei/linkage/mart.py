"""Building the linked mart from staging with set-based SQL (one transaction per build).

``mart_residents`` holds one row per ERK of the registry with the facts services need (age on
the build date, ward, status, household, immunization history, check-ups, NHI membership,
active subscriptions); ``mart_doses`` the counted doses; ``linkage`` which departments
contributed records for which ERK; ``link_flags`` department copies of birth date or sex that
disagree with the registry, or ERKs no registry row explains. The integrity audit
(renkei.linkage.audit) runs in the same transaction and keeps the review queue.

A build is *full* (every table emptied and refilled) or *incremental*: when the previous build
evaluated the same date with the same audit settings, only the ERKs that ingest runs touched
since (renkei.linkage.changes) are deleted and selected again — by the same query builders,
restricted to those ERKs, so the two cannot drift. The rebuilt ERKs go to ``mart_changes`` for
the services step; ``link_builds`` records each build.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa

from renkei import bulk
from renkei.config import load_sources
from renkei.keys.rotation import hold_link_key
from renkei.linkage import audit, changes
from renkei.linkage.audit import move_grace_days
from renkei.linkage.subjects import assign_subjects
from renkei.sources.values import format_timestamp
from renkei.warehouse import (
    engine,
    ensure_schema,
    ingest_runs,
    MART_TABLES,
    link_builds,
    link_consumed,
    link_flags,
    linkage,
    mart_changes,
    mart_doses,
    mart_residents,
    snapshot_options,
    staging_table,
    subjects,
    yyyymmdd,
)

log = logging.getLogger(__name__)
ATTRIBUTE_SOURCES = ("immunization", "child_health", "nhi")  # carry a copy of birth date/sex
FULL, INCREMENTAL, UNCHANGED = "full", "incremental", "unchanged"


def _day_bounds(on: date) -> tuple[str, str]:
    nxt = on + timedelta(days=1)
    return f"{on.isoformat()}T00:00:00+09:00", f"{nxt.isoformat()}T00:00:00+09:00"


def _ordered_agg(conn: sa.Connection, pieces: sa.Select, label: str, count: bool = False) -> sa.Subquery:
    """Per-ERK comma-joined ``piece``, sorted by piece (deterministic on every engine).

    PostgreSQL gets ``string_agg(… ORDER BY …)``; SQLite before 3.44 has no ordered aggregates,
    and its group_concat follows the order of an ordered FROM-subquery.
    """
    sqlite = conn.dialect.name == "sqlite"
    # The subquery's ORDER BY is for SQLite; PostgreSQL would sort every piece once more for it.
    inner = (pieces if sqlite else pieces.order_by(None)).subquery()
    agg = sa.func.aggregate_strings(inner.c.piece, ",")
    erk = inner.c.erk
    if not sqlite:
        # Byte order ("C"), as SQLite's BINARY: the pieces are ASCII, so under the C.UTF-8 or C
        # database collation it is the order PostgreSQL used before — and byte comparisons let
        # its sort use abbreviated keys, about a third faster over a city's doses.
        agg = agg.aggregate_order_by(sa.collate(inner.c.piece, "C"))
        erk = sa.collate(inner.c.erk, "C").label("erk")
    cols = [erk, agg.label(label)]
    if count:
        cols.append(sa.func.count().label("n"))
    return sa.select(*cols).group_by(erk).subquery()


class _Scope:
    """Restricts the build's queries to the ERKs of ``mart_changes`` for one build (None: all)."""

    def __init__(self, build_seq: int | None) -> None:
        self.build_seq = build_seq

    def erks(self) -> sa.Select:
        return sa.select(mart_changes.c.erk).where(mart_changes.c.build_seq == self.build_seq)

    def on(self, col: sa.ColumnElement) -> sa.ColumnElement:
        return sa.true() if self.build_seq is None else col.in_(self.erks())


def _fill(conn: sa.Connection, srcs: dict, as_of: date, run_id: str, scope: _Scope) -> None:
    """Insert the mart rows (of the scope's ERKs) for ``as_of``; the caller emptied them."""
    reg = staging_table(srcs["registry"])
    imm = staging_table(srcs["immunization"])
    chk = staging_table(srcs["child_health"])
    nhi = staging_table(srcs["nhi"])
    sub = staging_table(srcs["subscriptions"])
    _, next_day = _day_bounds(as_of)
    d_plus_1 = int((as_of + timedelta(days=1)).strftime("%Y%m%d"))

    # Counted doses: one per (ERK, vaccine, dose number), the earliest record if repeated.
    dose_q = sa.select(
        imm.c.erk, imm.c.vaccine_code, imm.c.dose_number,
        sa.func.min(imm.c.administered_on), sa.func.min(imm.c.record_id),
    ).where(imm.c.administered_on <= as_of, scope.on(imm.c.erk)).group_by(imm.c.erk, imm.c.vaccine_code, imm.c.dose_number)
    conn.execute(sa.insert(mart_doses).from_select(
        ["erk", "vaccine_code", "dose_number", "administered_on", "record_id"], dose_q))

    # Which departments contributed, per ERK: one pass per source, one registry lookup for all.
    personal = [s for s in srcs.values() if s.ingest and s.personal]
    per_source = []
    for s in personal:
        st = staging_table(s)
        per_source.append(
            sa.select(st.c.erk.label("erk"), sa.literal(s.name).label("source"), sa.func.count().label("n"))
            .where(st.c.erk.is_not(None), scope.on(st.c.erk)).group_by(st.c.erk)
        )
    u = sa.union_all(*per_source).subquery()
    q = sa.select(u.c.erk, u.c.source, u.c.n, reg.c.erk.is_not(None), sa.literal(run_id)).select_from(
        u.outerjoin(reg, reg.c.erk == u.c.erk))
    conn.execute(sa.insert(linkage).from_select(["erk", "source", "records", "in_registry", "built_run_id"], q))

    dose_piece = (
        mart_doses.c.vaccine_code + "#" + sa.cast(mart_doses.c.dose_number, sa.String)
        + "@" + sa.cast(mart_doses.c.administered_on, sa.String)
    )
    doses = _ordered_agg(
        conn, sa.select(mart_doses.c.erk, dose_piece.label("piece")).where(scope.on(mart_doses.c.erk))
        .order_by(mart_doses.c.erk, dose_piece), "history", count=True,
    )
    checks = _ordered_agg(
        conn, sa.select(chk.c.erk, (chk.c.checkup_code + "@" + sa.cast(chk.c.examined_on, sa.String)).label("piece"))
        .where(chk.c.examined_on <= as_of, scope.on(chk.c.erk)).order_by(chk.c.erk, "piece"),
        "codes",
    )
    subs = _ordered_agg(
        conn, sa.select(sub.c.erk, sub.c.topic.label("piece"))
        .where(sub.c.opted_in_at < next_day, sa.or_(sub.c.opted_out_at.is_(None), sub.c.opted_out_at >= next_day),
               scope.on(sub.c.erk))
        .distinct().order_by(sub.c.erk, sub.c.topic),
        "topics",
    )
    depts = (
        sa.select(linkage.c.erk, sa.func.count().label("n")).where(scope.on(linkage.c.erk))
        .group_by(linkage.c.erk).subquery()
    )
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
        .where(scope.on(reg.c.erk))
    )
    conn.execute(sa.insert(mart_residents).from_select([
        "erk", "birth_date", "sex", "ward_code", "status", "status_date", "household_key", "age_years",
        "as_of", "dose_count", "immunization_history", "checkups", "nhi_qualified_on",
        "nhi_disqualified_on", "nhi_last_checkup_on", "subscription_topics", "departments", "built_run_id",
    ], q))


def _audit_and_flag(conn: sa.Connection, as_of: date, run_id: str, grace: int, scope: sa.Select | None) -> dict:
    """The integrity audit, and ``link_flags`` from the same pass over the department copies
    (birth date or sex differs from the registry's, or no registry row for the ERK)."""
    findings = audit.find(conn, as_of, grace, scope)
    conn.execute(sa.insert(link_flags).from_select(audit.FLAG_COLUMNS, findings.flags(run_id)))
    return audit.audit_links(conn, as_of, run_id, grace, scope=scope, findings=findings)


def _previous_build(conn: sa.Connection) -> sa.Row | None:
    return conn.execute(sa.select(link_builds).order_by(link_builds.c.seq.desc()).limit(1)).first()


def lock_for_read(conn: sa.Connection) -> None:
    """The first statement of a transaction that reads the mart in one snapshot (services):
    a full build's TRUNCATE is not MVCC-safe, so an older snapshot would read its tables as
    empty once it committed. Locked first (renkei.bulk.read_lock), the snapshot sees the whole
    mart of the build before a running full build or after it; a full build waits meanwhile.
    ``subjects`` too: a first build refills it the same way."""
    bulk.read_lock(conn, (*MART_TABLES, subjects))


def mart_lost(conn: sa.Connection) -> bool:
    """The mart is empty while the registry's staging holds residents that a build has already
    linked: a server crash emptied its unlogged tables (or someone truncated them) since. A
    registry loaded after the last build (a new city's sources arrive in any order), or only
    empty registry runs linked so far (sweeps before its first export), is not a loss: the
    next build links it."""
    reg = staging_table(load_sources()["registry"])
    empty = conn.execute(sa.select(mart_residents.c.erk).limit(1)).first() is None
    if not empty:
        return False
    c, r = link_consumed.c, ingest_runs.c
    linked = conn.execute(sa.select(c.build_seq).join(ingest_runs, (r.run_id == c.run_id) & (r.source == c.source))
                          .where(c.source == "registry", audit.LOADED_ROWS).limit(1))
    return (linked.first() is not None
            and conn.execute(sa.select(reg.c.erk).where(reg.c.erk.is_not(None)).limit(1)).first() is not None)


def build_mart(warehouse_url: str, as_of: date, run_id: str, full: bool | None = None,
               skip_unchanged: bool = False) -> dict:
    """Build the mart for evaluation date ``as_of``; returns counts.

    Incremental when the previous build had the same ``as_of`` and audit grace (``full=True``
    forces a full build); ``mode`` and ``residents_touched`` in the counts say which it was.
    ``skip_unchanged``: when such a build would have no ingest run to consume (the build before
    took them all: a run queued by a staging event of a wave the build before settled for), build
    nothing and return ``{"mode": "unchanged", "build_seq": <the previous build>}``.
    """
    srcs = load_sources()
    eng = engine(warehouse_url)
    ensure_schema(eng)
    grace = move_grace_days()
    # One snapshot on PostgreSQL: the ingest runs read first are exactly those whose rows the
    # build sees, so a run committing meanwhile is left whole to the next build.
    try:
        with eng.connect().execution_options(**snapshot_options(eng)) as conn, conn.begin():
            hold_link_key(conn)  # first statement: no build while ERKs are re-sealed (renkei.keys.rotation)
            bulk.tune(conn)
            prev = _previous_build(conn)
            seq = (prev.seq if prev else 0) + 1
            runs = changes.new_ingest_runs(conn)
            incremental = (
                full is not True and prev is not None and prev.as_of == as_of and prev.grace_days == grace
                # a source's first load: audited and evaluated for everyone (renkei.linkage.audit)
                and not audit.first_loads(conn, runs)
            )
            if incremental and mart_lost(conn):
                log.warning("link_residents: the mart is empty but staging is not (the warehouse restarted since "
                            "build %d?): building in full", prev.seq)
                incremental = False
            if incremental and skip_unchanged and not runs:
                log.info("link_residents: no ingest run since build %d: the mart is unchanged", prev.seq)
                return {"mode": UNCHANGED, "build_seq": prev.seq, "residents_touched": 0}
            if incremental:
                scope = _Scope(seq)
                affected = changes.affected_erks(srcs, runs)
                if affected is not None:
                    u = affected.subquery()
                    conn.execute(sa.insert(mart_changes).from_select(
                        ["build_seq", "erk"], sa.select(sa.literal(seq), u.c.erk).where(u.c.erk.is_not(None))))
                bulk.analyze(conn, [mart_changes])  # the restricted queries below plan on its real size
                touched = conn.execute(
                    sa.select(sa.func.count()).select_from(mart_changes).where(mart_changes.c.build_seq == seq)
                ).scalar_one()
                if touched:
                    for t in MART_TABLES:
                        conn.execute(t.delete().where(scope.on(t.c.erk)))
                    _fill(conn, srcs, as_of, run_id, scope)
                audited = _audit_and_flag(conn, as_of, run_id, grace, scope.erks())
            else:
                conn.execute(mart_changes.delete())  # the next services run evaluates everyone anyway
                with bulk.refilled(conn, MART_TABLES):
                    _fill(conn, srcs, as_of, run_id, _Scope(None))
                    audited = _audit_and_flag(conn, as_of, run_id, grace, None)
                touched = None
            mode = INCREMENTAL if incremental else FULL

            # a stable notice identity for ERKs new to the mart (an incremental build: only its own)
            assign_subjects(conn, run_id, among=_Scope(seq).erks() if incremental else None)
            # One pass over the mart for both totals (a million rows at city scale).
            residents, linked = conn.execute(sa.select(
                sa.func.count(), sa.func.count(sa.case((mart_residents.c.departments > 1, 1))),
            ).select_from(mart_residents)).one()
            touched = residents if touched is None else touched
            changes.consume(conn, runs, seq)
            conn.execute(sa.insert(link_builds).values(
                seq=seq, run_id=run_id, as_of=as_of, grace_days=grace, mode=mode, residents_touched=touched,
                built_at=format_timestamp(datetime.now(timezone.utc)),
            ))
            flags = dict(conn.execute(
                sa.select(link_flags.c.reason, sa.func.count()).group_by(link_flags.c.reason)).all())
            unlinked = conn.execute(
                sa.select(sa.func.count(sa.distinct(linkage.c.erk))).where(linkage.c.in_registry.is_(False))
            ).scalar_one()
    finally:
        eng.dispose()
    counts = {"residents": residents, "linked": linked, "unregistered_erks": unlinked, "flags": flags, "audit": audited,
              "mode": mode, "residents_touched": touched, "build_seq": seq}
    log.info("link_residents: %s", counts)
    return counts
