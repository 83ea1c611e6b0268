"""The integrity audit (紐付け点検): each department's copy of a resident against the registry's.

For every record of a department that keeps its own copy of the basic attributes (immunization,
child_health, nhi), the copy is compared with the registry row of the same ERK:

| finding | reason | severity |
|---|---|---|
| no registry row for the ERK | ``not_in_registry`` | hold |
| birth date differs | ``birth_date_mismatch`` | hold |
| sex differs | ``sex_mismatch`` | hold |
| name digest differs (both present) | ``name_mismatch`` | review |
| address digest differs (both present) | ``address_mismatch`` | review |

An address that differs while the build date lies within ``move_grace_days`` after the
registry's ``status_date`` (a recorded move the department has not caught up with) is
*expected*: counted, not queued. A value missing on either side is not compared.

A ``not_in_registry`` finding is judged only once the registry has loaded (an ingest run of
the registry reached ``loaded``): a new city's or a restored warehouse's departments arrive in
their own order, and a department's residents linked before the registry arrived are not
findings — only the order of arrival. The registry's first load makes the next link build a full
one (renkei.linkage.mart, :func:`first_loads`), so every department record is audited against it.

Findings go to ``review_queue`` idempotently: a finding seen again keeps its row and decision;
a finding no longer seen becomes inactive, and an undecided one leaves the pending list as
``resolved`` (pending again if the finding returns); a decided item whose department row has
changed since the decision (``row_hash``) is re-opened as pending. Active ``hold`` items that
are pending or rejected keep their ERK out of the services (renkei.linkage.review.held_erks).

The merge is set-based: the findings are written to a temporary table by INSERT … SELECT and
merged into the queue by UPDATE … FROM and INSERT … SELECT, so memory stays flat with the size
of the city (a Python merge of 361,415 findings grew to 4.7 GB; issue #13).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from renkei import bulk
from renkei.config import load_sources
from renkei.warehouse import ingest_runs, link_consumed, review_queue, staging_key, staging_table

AUDITED_SOURCES = ("immunization", "child_health", "nhi")
HOLD, REVIEW = "hold", "review"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
RESOLVED = "resolved"  # an undecided item whose finding is no longer seen (inactive)
SEVERITY = {
    "not_in_registry": HOLD, "birth_date_mismatch": HOLD, "sex_mismatch": HOLD,
    "name_mismatch": REVIEW, "address_mismatch": REVIEW,
}
DEFAULT_MOVE_GRACE_DAYS = 90
ENV_MOVE_GRACE_DAYS = "RENKEI_AUDIT_MOVE_GRACE_DAYS"
REGISTRY = "registry"


def move_grace_days(env: dict[str, str] | None = None) -> int:
    """Days after a recorded move in which a department's old address is expected (env override)."""
    text = (os.environ if env is None else env).get(ENV_MOVE_GRACE_DAYS, "")
    if not text:
        return DEFAULT_MOVE_GRACE_DAYS
    if not text.isdigit():
        from renkei.errors import ConfigError  # noqa: PLC0415

        raise ConfigError(f"{ENV_MOVE_GRACE_DAYS}={text!r} is not a number of days: set a whole number such as 90")
    return int(text)


def item_id(source: str, record_key: str, reason: str) -> str:
    """The deterministic id of a queue item (stable across rebuilds and engines)."""
    return hashlib.sha256(f"{source}|{record_key}|{reason}".encode()).hexdigest()[:16]


class _item_id_sql(FunctionElement):
    """:func:`item_id` computed by the database (the same digest on every engine)."""

    type = sa.String(16)
    inherit_cache = True


@compiles(_item_id_sql, "postgresql")
def _item_id_pg(element, compiler, **kw):  # noqa: ANN001
    source, key, reason = (compiler.process(c, **kw) for c in element.clauses)
    return (f"substr(encode(sha256(convert_to(CAST({source} AS TEXT) || '|' || {key} || '|' || "
            f"CAST({reason} AS TEXT), 'UTF8')), 'hex'), 1, 16)")


@compiles(_item_id_sql, "sqlite")
def _item_id_sqlite(element, compiler, **kw):  # noqa: ANN001
    return "renkei_item_id(%s)" % compiler.process(element.clauses, **kw)


# A run that loaded rows: a sweep before a department's first export reaches ``loaded`` with none.
LOADED_ROWS = ingest_runs.c.loaded > 0


def has_loaded(conn: sa.Connection, source: str, *, with_rows: bool = False) -> bool:
    """Whether ``source`` has loaded: an ingest run of it reached ``loaded`` (or, in a warehouse
    filled without ingest, its staging holds rows). Before that, its absence says nothing: a new
    city's or a restored warehouse's sources arrive in whatever order their departments finish.

    By default an empty run counts: a source may hold no records (check-ups are due by age
    alone), so the services may evaluate once it has been swept. ``with_rows=True`` asks for a
    run that loaded rows, for what judges records against a source's rows: ``not_in_registry``
    (a city's registry is never empty; counted as loaded, the sweep before its first export made
    every resident of the departments that arrived first a finding, 361,414 at a million
    residents) and the link's wait for a first load (renkei.linkage.settle)."""
    r = ingest_runs.c
    loaded = sa.select(r.run_id).where(r.source == source, r.state == "loaded")
    if conn.execute((loaded.where(LOADED_ROWS) if with_rows else loaded).limit(1)).first():
        return True
    st = staging_table(load_sources()[source])
    return conn.execute(sa.select(st.c.row_hash).limit(1)).first() is not None


def first_loads(conn: sa.Connection, runs: list[tuple[str, str, str]]) -> set[str]:
    """The sources whose first load is among ``runs`` (a link build's new ingest runs): no earlier
    build consumed a run of theirs (runs that loaded rows, :data:`LOADED_ROWS`). Such a build is a full one: the registry's first load is
    audited against every department record (a record whose ERK the registry does not hold is
    in no run of the registry), and a department's first load is evaluated for every resident
    by the services (renkei.outputs.outbox waits for it)."""
    c, r = link_consumed.c, ingest_runs.c
    if not runs:
        return set()
    arriving = set(conn.execute(sa.select(r.source).where(
        sa.tuple_(r.run_id, r.source).in_(sorted({(run, source) for run, source, _ in runs})), LOADED_ROWS)).scalars())
    if not arriving:
        return set()
    seen = set(conn.execute(
        sa.select(c.source).join(ingest_runs, (r.run_id == c.run_id) & (r.source == c.source))
        .where(c.source.in_(sorted(arriving)), LOADED_ROWS).distinct()).scalars())
    return arriving - seen


def _differs(a: sa.ColumnElement, b: sa.ColumnElement) -> sa.ColumnElement:
    return sa.and_(a.is_not(None), b.is_not(None), a != b)


LINK_FLAG_REASONS = ("not_in_registry", "birth_date_mismatch", "sex_mismatch")  # also kept in link_flags
FLAG_COLUMNS = ("source", "record_key", "reason", "erk", "built_run_id")


def _found_table() -> sa.Table:
    return sa.Table(
        "audit_found", sa.MetaData(),
        sa.Column("item_id", sa.String(16), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("record_key", sa.String(120), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("erk", sa.String(120), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("row_hash", sa.String(64)),
        prefixes=["TEMPORARY"],
    )


@dataclass
class Findings:
    """What one pass over the department copies found (see :func:`find`): the findings are rows
    of ``table``, a temporary table of this connection."""

    table: sa.Table  # item_id, source, record_key, reason, erk, severity, row_hash
    count: int  # findings
    expected: int  # address differences explained by a recent move
    scope: sa.Select | None  # the ERKs whose records were audited (None: all)

    def flags(self, run_id: str) -> sa.Select:
        """The ``link_flags`` rows (FLAG_COLUMNS) of these findings, for link build ``run_id``."""
        f = self.table.c
        return sa.select(f.source, f.record_key, f.reason, f.erk, sa.literal(run_id, sa.String(250))).where(
            f.reason.in_(LINK_FLAG_REASONS))


def find(conn: sa.Connection, as_of: date, grace_days: int, scope: sa.Select | None = None) -> Findings:
    """Every finding now (of the records of the ERKs in ``scope``, a SELECT of ERKs; None: all),
    written to a temporary table by one INSERT … SELECT per source.

    One outer join per source gives both the audit's findings and the mart's ``link_flags``
    (a birth date or sex that differs, or no registry row: the same conditions).
    """
    if conn.dialect.name == "sqlite":  # PostgreSQL digests in SQL; SQLite calls Python's
        conn.connection.driver_connection.create_function("renkei_item_id", 3, item_id, deterministic=True)
    found = _found_table()
    conn.execute(sa.schema.DropTable(found, if_exists=True))
    conn.execute(sa.schema.CreateTable(found))
    srcs = load_sources()
    reg = staging_table(srcs[REGISTRY])
    judged = has_loaded(conn, REGISTRY, with_rows=True)
    moved_since = as_of - timedelta(days=grace_days)
    expected = 0
    for name in AUDITED_SOURCES:
        st = staging_table(srcs[name])
        key = st.c[staging_key(srcs[name])]
        differs = {a: _differs(st.c[a], reg.c[a]) for a in ("birth_date", "sex", "name_digest", "address_digest")}
        # a recorded move within the grace: the department's old address is expected
        moved = sa.and_(reg.c.status_date.is_not(None), reg.c.status_date >= moved_since, reg.c.status_date <= as_of)
        in_scope = st.c.erk.is_not(None) if scope is None else sa.and_(st.c.erk.is_not(None), st.c.erk.in_(scope))
        conditions = {
            "birth_date_mismatch": differs["birth_date"], "sex_mismatch": differs["sex"],
            "name_mismatch": differs["name_digest"], "address_mismatch": sa.and_(differs["address_digest"], ~moved),
        }
        if judged:
            conditions = {"not_in_registry": reg.c.erk.is_(None), **conditions}
        compared = (
            sa.select(key.label("record_key"), st.c.erk, st.c.row_hash, reg.c.erk.label("reg_erk"),
                      *[c.label(reason) for reason, c in conditions.items()])
            .select_from(st).outerjoin(reg, reg.c.erk == st.c.erk)
            .where(in_scope, sa.or_(*([reg.c.erk.is_(None)] if judged else []), *differs.values()))
            .cte(f"compared_{name}")
        )
        rows = [
            sa.select(_item_id_sql(sa.literal(name), compared.c.record_key, sa.literal(reason)),
                      sa.literal(name), compared.c.record_key, sa.literal(reason), compared.c.erk,
                      sa.literal(SEVERITY[reason]), compared.c.row_hash)
            .where(compared.c[reason] if reason != "not_in_registry" else compared.c.reg_erk.is_(None))
            for reason in conditions
        ]
        conn.execute(sa.insert(found).from_select(
            ["item_id", "source", "record_key", "reason", "erk", "severity", "row_hash"], sa.union_all(*rows)))
        expected += conn.execute(
            sa.select(sa.func.count()).select_from(st).join(reg, reg.c.erk == st.c.erk)
            .where(in_scope, differs["address_digest"], moved)
        ).scalar_one()
    conn.execute(sa.schema.CreateIndex(sa.Index("ix_audit_found_finding", found.c.source, found.c.record_key,
                                                found.c.reason)))
    bulk.analyze(conn, [found])
    count = conn.execute(sa.select(sa.func.count()).select_from(found)).scalar_one()
    return Findings(found, count, expected, scope)


def _known(scope: sa.Select | None) -> sa.ColumnElement:
    """Queue items about the audited records: all of the audited sources, or the records of the
    ERKs in ``scope``.

    By record, not by the item's ``erk``: an item keeps the ERK it was first seen under, and a
    record that moved since is judged where it is now — as a full audit would.
    """
    q = review_queue.c
    if scope is None:
        return q.source.in_(AUDITED_SOURCES)
    srcs = load_sources()
    by_source = []
    for name in AUDITED_SOURCES:
        st = staging_table(srcs[name])
        records = sa.select(st.c[staging_key(srcs[name])]).where(st.c.erk.in_(scope))
        by_source.append(sa.and_(q.source == name, q.record_key.in_(records)))
    return sa.or_(*by_source)


def audit_links(conn: sa.Connection, as_of: date, run_id: str, grace_days: int | None = None,
                scope: sa.Select | None = None, findings: Findings | None = None) -> dict:
    """Compare department copies with the registry and update the review queue; returns counts.

    ``scope`` (a SELECT of ERKs) limits the audit to the records of those ERKs — an incremental
    build's residents; nothing about other records can have changed. None audits everything.
    ``findings`` (of :func:`find`, whose scope then applies) counts the findings of the audited
    records; the other counts are the queue's. Set-based: no finding passes through Python.
    """
    grace = move_grace_days() if grace_days is None else grace_days
    if findings is None:
        findings = find(conn, as_of, grace, scope)
    found, scope = findings.table, findings.scope
    q, f = review_queue.c, found.c
    # An item is matched by its finding (source, record key, reason), not by its id: it keeps its
    # id when a link-key rotation re-seals its record_key (an nhi ERK).
    same = sa.and_(f.source == q.source, f.record_key == q.record_key, f.reason == q.reason)
    seen = sa.exists().where(same)
    decided = q.state.in_((APPROVED, REJECTED))
    # The department changed its record since the decision: the decision no longer covers it.
    reopened = conn.execute(
        review_queue.update().where(same, decided, q.decided_row_hash.is_distinct_from(f.row_hash))
        .values(state=PENDING, decided_by=None, decided_at=None, comment=None, decided_row_hash=None)
    ).rowcount
    returned = conn.execute(review_queue.update().where(same, q.state == RESOLVED).values(state=PENDING)).rowcount
    conn.execute(
        review_queue.update().where(same, sa.or_(q.active.is_(False), q.row_hash.is_distinct_from(f.row_hash)))
        .values(active=True, row_hash=f.row_hash)
    )
    queued = sa.select(review_queue.c.item_id).where(same).exists()
    new = conn.execute(sa.insert(review_queue).from_select(
        ["item_id", "source", "record_key", "reason", "erk", "severity", "row_hash", "state", "active",
         "first_seen_run"],
        sa.select(f.item_id, f.source, f.record_key, f.reason, f.erk, f.severity, f.row_hash,
                  sa.literal(PENDING), sa.true(), sa.literal(run_id, sa.String(250))).where(~queued),
    ), execution_options={"preserve_rowcount": True}).rowcount
    resolved = conn.execute(
        review_queue.update().where(q.active.is_(True), _known(scope), ~seen)
        .values(active=False, state=sa.case((q.state == PENDING, RESOLVED), else_=q.state))
    ).rowcount
    conn.execute(sa.schema.DropTable(found))

    active = q.active.is_(True)
    by_reason = dict(conn.execute(sa.select(q.reason, sa.func.count()).where(active).group_by(q.reason)).all())
    by_state = dict(conn.execute(sa.select(q.state, sa.func.count()).where(active).group_by(q.state)).all())
    return {
        "findings": findings.count, "new": new, "reopened": reopened, "returned": returned, "resolved": resolved,
        "expected_address_changes": findings.expected, "by_reason": by_reason, "by_state": by_state,
        "held_erks": conn.execute(sa.select(sa.func.count(sa.distinct(q.erk))).where(held_condition())).scalar_one(),
    }


def held_condition() -> sa.ColumnElement:
    """Queue rows that hold their ERK back: active ``hold`` items still pending, or rejected."""
    q = review_queue.c
    return sa.and_(q.active.is_(True), q.severity == HOLD, q.state.in_((PENDING, REJECTED)))


def summary(conn: sa.Connection, seeded: set[tuple[str, str]] | None) -> dict:
    """The report's ``integrity_audit``: flagged records, and against seeded mislinks when known.

    ``flagged`` counts records (source, record_key) with an active item of any reason;
    precision = seeded among flagged / flagged, recall = seeded found / seeded.
    """
    q = review_queue.c
    flagged = {(s, k) for s, k in conn.execute(sa.select(q.source, q.record_key).where(q.active.is_(True)).distinct())}
    rows = conn.execute(sa.select(q.reason, q.state).where(q.active.is_(True))).all()
    out: dict = {
        "flagged": len(flagged),
        "by_reason": dict(sorted(Counter(r for r, _ in rows).items())),
        "by_state": dict(sorted(Counter(s for _, s in rows).items())),
        "held_erks": conn.execute(sa.select(sa.func.count(sa.distinct(q.erk))).where(held_condition())).scalar_one(),
        "seeded_mislinks": None, "seeded_found": None, "precision": None, "recall": None,
    }
    if seeded is not None:
        hit = flagged & seeded
        out.update(
            seeded_mislinks=len(seeded), seeded_found=len(hit),
            precision=round(len(hit) / len(flagged), 4) if flagged else None,
            recall=round(len(hit) / len(seeded), 4) if seeded else None,
        )
    return out


def seeded_mislinks(raw_dir: Path, ring) -> set[tuple[str, str]] | None:  # noqa: ANN001 - KeyRing
    """The (source, record_key) of each ``mislink`` in a synthetic city's manifest.json, or None.

    record_key is the record_id where the source has one, else the ERK sealed from the raw
    row's resident code (needs the keyring; None without it).
    """
    import json  # noqa: PLC0415

    from renkei.keys.adapter import _iter_raw, raw_location  # noqa: PLC0415

    path = Path(raw_dir) / "manifest.json"
    if ring is None or not path.exists():
        return None
    wanted: dict[str, set[int]] = {}
    for d in json.loads(path.read_text(encoding="utf-8")).get("defects", []):
        if d.get("defect") == "mislink":
            wanted.setdefault(d["source"], set()).add(int(d["row"]))
    srcs = load_sources()
    keys: set[tuple[str, str]] = set()
    for name, rows in wanted.items():
        src, loc = srcs[name], raw_location(Path(raw_dir), name)
        if loc is None:
            continue
        for idx, raw in _iter_raw(src, loc):
            if idx in rows and raw is not None:
                if src.key == "dept_pseudonym":
                    keys.add((name, ring.seal("link", str(raw["resident_code"]).strip())))
                else:
                    keys.add((name, str(raw[src.key]).strip()))
    return keys
