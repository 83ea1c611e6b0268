"""Link-key rotation: re-seal every ERK of the warehouse under the link key's new version.

``renkei keys rotate --purpose link`` adds the version to the keyring; this module then moves
the warehouse onto it (the DAG ``renkei_rotate_link_key``, or ``renkei keys reseal``):

1. :func:`start` takes the link-key lock exclusively (it waits for ERK writers in flight), sets
   ``key_state.rotating_to`` and records a ``running`` row in ``key_rotations``.
2. :func:`reseal` walks every ERK column (:func:`erk_columns`) table by table in primary-key
   order, one transaction per batch: open under the old version, seal under the new, in memory;
   the batch's cursor is committed with its rows, so a re-run after a kill resumes where the last
   commit left off. A token already under the new version is skipped (its ``v<N>.`` prefix
   says so), so the end state equals an uninterrupted run.
3. :func:`finish` checks that no ERK under another version is left, appends a ``key_rotation``
   entry to the audit trail (the chain itself is never rewritten) and releases the lock.

While ``rotating_to`` is set — and whenever the keyring's current link version differs from the
warehouse's — :func:`hold_link_key` refuses the ERK writers (ingest load, link, services) with
:class:`RotationInProgress`: a warehouse with ERKs of two versions would not join. Notice ids do
not change: they hash the subject key (renkei.linkage.subjects), which the rotation leaves alone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.errors import KeyRingError, RotationInProgress
from renkei.keys.ring import KeyRing
from renkei.sources.values import format_timestamp
from renkei.warehouse import (
    engine,
    ensure_schema,
    key_rotations,
    key_state,
    mart_residents,
    metadata,
    notices,
    source_tables,
    staging_key,
    staging_table,
    upsert,
)

log = logging.getLogger(__name__)
LINK = "link"
DEFAULT_BATCH = 10_000
RUNNING, COMPLETED = "running", "completed"
ERK_NAMES = ("erk", "household_key")  # column names that hold link tokens wherever they appear


@dataclass(frozen=True)
class ErkColumns:
    """A table's link-token columns; ``by_source`` columns hold an ERK only on rows whose
    ``source`` is keyed by the ERK (``record_key`` of link_flags and review_queue for nhi)."""

    table: sa.Table
    columns: tuple[str, ...]
    by_source: tuple[str, ...] = ()
    erk_sources: frozenset[str] = frozenset()


def erk_columns() -> list[ErkColumns]:
    """Every column of the warehouse schema that holds a link token, by table name.

    Found by name (``erk``, ``household_key``) in the declared schema, so a table added later
    is re-sealed without a change here; ``record_key`` beside a ``source`` column is an ERK on
    the rows of sources keyed by the ERK.
    """
    srcs = [s for s in load_sources().values() if s.ingest]
    source_tables()
    erk_keyed = frozenset(s.name for s in srcs if staging_key(s) == "erk")
    out = []
    for name, t in sorted(metadata.tables.items()):
        cols = tuple(c for c in ERK_NAMES if c in t.c)
        if not cols:
            continue
        by_source = ("record_key",) if "record_key" in t.c and "source" in t.c else ()
        out.append(ErkColumns(t, cols, by_source, erk_keyed if by_source else frozenset()))
    return out


def _now() -> str:
    return format_timestamp(datetime.now(timezone.utc))


def _prefix(version: int) -> str:
    return f"v{version}."


# -- the lock ---------------------------------------------------------------------------------
def _begin_write(conn: sa.Connection) -> None:
    """SQLite: take the database write lock now (BEGIN IMMEDIATE), so the check below and the
    writes after it are one serialized transaction. Must be a transaction's first statement."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _infer_version(conn: sa.Connection) -> int | None:
    """The link version of the warehouse's existing ERKs (for a warehouse older than key_state)."""
    for table in (mart_residents, staging_table(load_sources()["registry"]), notices):
        if sa.inspect(conn).has_table(table.name):
            token = conn.execute(sa.select(table.c.erk).where(table.c.erk.is_not(None)).limit(1)).scalar()
            if token is not None:
                return KeyRing.version_of(token)
    return None


def _state_row(conn: sa.Connection, ring: KeyRing | None, lock: str | None) -> sa.Row | None:
    q = sa.select(key_state).where(key_state.c.purpose == LINK)
    if lock and conn.dialect.name != "sqlite":
        q = q.with_for_update(read=(lock == "share"))
    row = conn.execute(q).first()
    if row is None and (ring is not None or lock == "exclusive"):
        version = _infer_version(conn) or (ring.current(LINK) if ring is not None else None)
        upsert(conn, key_state, [{"purpose": LINK, "version": version, "updated_at": _now()}], update=False)
        row = conn.execute(q).first()
    return row


def hold_link_key(conn: sa.Connection, ring: KeyRing | None = None, expect: int | None = None) -> int | None:
    """Share the link-key lock for this transaction (its first statement) and check that ERKs may
    be written: no rotation running, and ``ring`` (if given) seals under the warehouse's version.

    Returns the warehouse's link version; ``expect`` refuses if it changed since an earlier call.
    """
    _begin_write(conn)
    row = _state_row(conn, ring, "share")
    if row is None:
        return None
    if row.rotating_to is not None:
        raise RotationInProgress(
            f"the warehouse's ERKs are being re-sealed from link key v{row.version} to v{row.rotating_to} "
            f"(rotation {row.rotation_id}): ingest, link and services must wait. Let the DAG renkei_rotate_link_key "
            "(or `renkei keys reseal --purpose link`) finish, then re-run this task"
        )
    if ring is not None and row.version is not None and ring.current(LINK) != row.version:
        if ring.current(LINK) > row.version:
            raise RotationInProgress(
                f"the keyring's link key is at v{ring.current(LINK)} but the warehouse's ERKs are under v{row.version}: "
                "re-seal the warehouse first (trigger the DAG renkei_rotate_link_key or run `renkei keys reseal --purpose link`), "
                "then re-run this task"
            )
        raise KeyRingError(
            f"the warehouse's ERKs are under link key v{row.version} but this keyring seals with v{ring.current(LINK)}: "
            "deploy the rotated keyring to this host (RENKEI_KEYRING) and re-run"
        )
    if expect is not None and row.version != expect:
        raise RotationInProgress(f"the link key was rotated (v{expect} → v{row.version}) while this run read the mart: re-run it")
    return row.version


# -- the rotation -----------------------------------------------------------------------------
def _rotation(conn: sa.Connection, rotation_id: str, lock: bool = False) -> sa.RowMapping:
    q = sa.select(key_rotations).where(key_rotations.c.rotation_id == rotation_id)
    if lock and conn.dialect.name != "sqlite":
        q = q.with_for_update()
    return conn.execute(q).mappings().one()


def _uncovered(conn: sa.Connection, plan: list[ErkColumns]) -> list[str]:
    """Warehouse columns named like ERK columns that the plan does not re-seal."""
    covered = {(p.table.name, c) for p in plan for c in p.columns}
    insp = sa.inspect(conn)
    return sorted(f"{t}.{c['name']}" for t in insp.get_table_names() for c in insp.get_columns(t)
                  if c["name"] in ERK_NAMES and (t, c["name"]) not in covered)


def start(warehouse_url: str, ring: KeyRing) -> dict | None:
    """Begin (or find the unfinished) rotation of the warehouse's ERKs to the keyring's current
    link version; None when the warehouse is already under it. Waits for ERK writers in flight."""
    to = ring.current(LINK)
    eng = engine(warehouse_url)
    ensure_schema(eng)
    plan = erk_columns()
    try:
        with eng.begin() as conn:
            missing = _uncovered(conn, plan)
            if missing:
                raise KeyRingError(f"columns {missing} look like ERK columns but no rotation step re-seals them: "
                                   "add them to renkei.keys.rotation.erk_columns before rotating")
        with eng.begin() as conn:
            _begin_write(conn)
            row = _state_row(conn, ring, "exclusive")
            if row.rotating_to is not None:
                if row.rotating_to != to:
                    raise KeyRingError(
                        f"rotation {row.rotation_id} to link v{row.rotating_to} is unfinished but this keyring's current "
                        f"link version is v{to}: finish it with the keyring it was started with"
                    )
                return dict(_rotation(conn, row.rotation_id))
            if row.version == to:
                return None
            if row.version is None:  # no ERK written yet: nothing to re-seal
                conn.execute(sa.update(key_state).where(key_state.c.purpose == LINK).values(version=to, updated_at=_now()))
                return None
            rid = f"link-v{row.version}-v{to}"
            progress = {p.table.name: {"total": None, "done": 0, "resealed": 0, "cursor": None, "finished": False} for p in plan}
            upsert(conn, key_rotations, [{
                "rotation_id": rid, "purpose": LINK, "from_version": row.version, "to_version": to, "state": RUNNING,
                "progress": json.dumps(progress), "started_at": _now(), "finished_at": None, "audit_seq": None,
            }])
            conn.execute(sa.update(key_state).where(key_state.c.purpose == LINK)
                         .values(rotating_to=to, rotation_id=rid, updated_at=_now()))
            log.info("link rotation v%s→v%s started (%s)", row.version, to, rid)
            return dict(_rotation(conn, rid))
    finally:
        eng.dispose()


def _pending(p: ErkColumns, prefix: str) -> sa.ColumnElement:
    cols = [p.table.c[c] for c in p.columns]
    return sa.or_(*[sa.and_(c.is_not(None), sa.not_(c.startswith(prefix, autoescape=True))) for c in cols])


def _after(pk: list[sa.Column], cursor: list) -> sa.ColumnElement:
    if len(pk) == 1:
        return pk[0] > cursor[0]
    return sa.tuple_(*pk) > sa.tuple_(*[sa.literal(v) for v in cursor])


def _batch(conn: sa.Connection, ring: KeyRing, p: ErkColumns, to: int, cursor: list | None, size: int) -> tuple[int, list | None]:
    """Re-seal one batch of ``p.table``; returns (rows read, the new cursor)."""
    t = p.table
    pk = list(t.primary_key.columns)
    token_cols = list(p.columns) + list(p.by_source)
    extra = ["source"] if p.by_source else []
    cols = list(dict.fromkeys([c.name for c in pk] + token_cols + extra))
    q = sa.select(*[t.c[c] for c in cols]).where(_pending(p, _prefix(to))).order_by(*pk).limit(size)
    if cursor is not None:
        q = q.where(_after(pk, cursor))
    rows = conn.execute(q).mappings().all()
    if not rows:
        return 0, cursor
    memo: dict[str, str] = {}

    def reseal(column: str, token: str | None) -> str | None:
        if token is None or KeyRing.version_of(token) == to:
            return token
        if token not in memo:
            try:
                memo[token] = ring.seal(LINK, ring.open(LINK, token))
            except KeyRingError as exc:
                raise KeyRingError(f"{t.name}.{column}: a token under link v{KeyRing.version_of(token)} does not open "
                                   f"({type(exc).__name__}); nothing of this batch was written: {exc}") from None
        return memo[token]

    stmt = t.update().where(sa.and_(*[c == sa.bindparam(f"k_{c.name}") for c in pk])).values(
        {c: sa.bindparam(f"n_{c}") for c in token_cols})
    params = []
    for r in rows:
        new = {c: reseal(c, r[c]) for c in p.columns}
        for c in p.by_source:
            new[c] = reseal(c, r[c]) if r["source"] in p.erk_sources else r[c]
        params.append({**{f"k_{c.name}": r[c.name] for c in pk}, **{f"n_{c}": v for c, v in new.items()}})
    conn.execute(stmt, params)
    return len(rows), [rows[-1][c.name] for c in pk]


def reseal(warehouse_url: str, ring: KeyRing, rotation_id: str, batch_size: int = DEFAULT_BATCH,
           max_batches: int | None = None, say: Callable[[str], None] | None = None) -> dict:
    """Re-seal batches until every table is done (or ``max_batches`` ran); returns
    {"complete": bool, "batches": n, "rows": n, "seconds": s}. Each batch commits on its own."""
    say = say or log.info
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    eng = engine(warehouse_url)
    plan = erk_columns()
    batches = rows_total = 0
    t0 = time.perf_counter()
    try:
        with eng.connect() as conn:
            rot = _rotation(conn, rotation_id)
        frm, to = rot["from_version"], rot["to_version"]
        if rot["state"] == COMPLETED:
            return {"complete": True, "batches": 0, "rows": 0, "seconds": 0.0}
        if ring.current(LINK) != to:
            raise KeyRingError(f"rotation {rotation_id} re-seals to link v{to} but this keyring's current link version is "
                               f"v{ring.current(LINK)}: use the keyring the rotation was started with")
        for p in plan:
            name = p.table.name
            while True:
                if max_batches is not None and batches >= max_batches:
                    return {"complete": False, "batches": batches, "rows": rows_total,
                            "seconds": round(time.perf_counter() - t0, 2)}
                with eng.begin() as conn:
                    _begin_write(conn)
                    progress = json.loads(_rotation(conn, rotation_id, lock=True)["progress"])
                    step = progress.setdefault(name, {"total": None, "done": 0, "resealed": 0, "cursor": None, "finished": False})
                    if step["finished"]:
                        break
                    if step["total"] is None:
                        step["total"] = conn.execute(sa.select(sa.func.count()).select_from(p.table)).scalar_one()
                    n, step["cursor"] = _batch(conn, ring, p, to, step["cursor"], batch_size)
                    step["done"] += n
                    step["resealed"] += n
                    if n < batch_size:
                        step["finished"], step["cursor"], step["done"] = True, None, step["total"]
                    conn.execute(sa.update(key_rotations).where(key_rotations.c.rotation_id == rotation_id)
                                 .values(progress=json.dumps(progress)))
                batches += 1
                rows_total += n
                say(f"link rotation v{frm}→v{to}: {name} {step['done']:,}/{step['total']:,}")
                if step["finished"]:
                    break
        return {"complete": True, "batches": batches, "rows": rows_total, "seconds": round(time.perf_counter() - t0, 2)}
    finally:
        eng.dispose()


def finish(warehouse_url: str, ring: KeyRing, rotation_id: str) -> dict:
    """Check that every ERK column is under the new version, record the rotation in the audit
    trail and release the lock; returns the rotation's summary."""
    from renkei.audit.trail import append  # noqa: PLC0415 - the audit package imports the keyring

    eng = engine(warehouse_url)
    plan = erk_columns()
    try:
        with eng.connect() as conn:
            rot = dict(_rotation(conn, rotation_id))
            if rot["state"] == COMPLETED:
                return _summary(rot)
            to = rot["to_version"]
            progress = json.loads(rot["progress"])
            left = {}
            for p in plan:
                checks = [p] + ([ErkColumns(p.table, p.by_source)] if p.by_source else [])
                n = 0
                for c in checks:
                    q = sa.select(sa.func.count()).select_from(p.table).where(_pending(c, _prefix(to)))
                    if c is not p:
                        q = q.where(p.table.c.source.in_(sorted(p.erk_sources)))
                    n += conn.execute(q).scalar_one()
                if n:
                    left[p.table.name] = n
            unfinished = sorted(name for name, step in progress.items() if not step["finished"])
        if left or unfinished:
            raise RotationInProgress(f"rotation {rotation_id} is not done: tables {unfinished or sorted(left)} still hold "
                                     f"ERKs under another version ({left}); run `renkei keys reseal --purpose link` to resume")
        resealed = {name: step["resealed"] for name, step in sorted(progress.items())}
        payload = {"rotation_id": rotation_id, "purpose": LINK, "from_version": rot["from_version"], "to_version": to,
                   "rows_resealed": resealed, "rows_total": sum(resealed.values())}
        seq = append(warehouse_url, "key_rotation", payload, ring=ring)
        with eng.begin() as conn:
            _begin_write(conn)
            for step in progress.values():
                step["cursor"] = None
            conn.execute(sa.update(key_rotations).where(key_rotations.c.rotation_id == rotation_id).values(
                state=COMPLETED, finished_at=_now(), audit_seq=seq, progress=json.dumps(progress)))
            conn.execute(sa.update(key_state).where(key_state.c.purpose == LINK).values(
                version=to, rotating_to=None, rotation_id=None, updated_at=_now()))
            rot = dict(_rotation(conn, rotation_id))
        log.info("link rotation %s completed: %s rows re-sealed; audit entry %s", rotation_id, payload["rows_total"], seq)
        return _summary(rot)
    finally:
        eng.dispose()


def _summary(rot: dict) -> dict:
    progress = json.loads(rot["progress"])
    return {"rotation_id": rot["rotation_id"], "from_version": rot["from_version"], "to_version": rot["to_version"],
            "state": rot["state"], "audit_seq": rot["audit_seq"],
            "rows_resealed": sum(s["resealed"] for s in progress.values())}


def rotate_link(warehouse_url: str, ring: KeyRing, batch_size: int = DEFAULT_BATCH, max_batches: int | None = None,
                say: Callable[[str], None] | None = None) -> dict:
    """start → reseal → finish in this process (``renkei keys reseal``); resumes an unfinished one."""
    say = say or log.info
    rot = start(warehouse_url, ring)
    if rot is None:
        say(f"link rotation: the warehouse is already under link v{ring.current(LINK)}; nothing to re-seal")
        return {"state": "up_to_date", "to_version": ring.current(LINK)}
    run = reseal(warehouse_url, ring, rot["rotation_id"], batch_size, max_batches, say)
    if not run["complete"]:
        say(f"link rotation {rot['rotation_id']}: stopped after {run['batches']} batches; resume with `renkei keys reseal --purpose link`")
        return {**_summary(rot), **run, "state": RUNNING}
    out = finish(warehouse_url, ring, rot["rotation_id"])
    rate = run["rows"] / run["seconds"] if run["seconds"] else 0.0
    say(f"link rotation {rot['rotation_id']}: completed, {out['rows_resealed']:,} rows re-sealed "
        f"({run['rows']:,} in this run, {rate:,.0f} rows/s); audit entry {out['audit_seq']}")
    return {**out, **run, "rows_per_second": round(rate)}


def status(warehouse_url: str) -> dict:
    """The warehouse's link version and its rotations (no tokens)."""
    eng = engine(warehouse_url)
    try:
        with eng.connect() as conn:
            if not sa.inspect(conn).has_table(key_state.name):
                return {"version": None, "rotating_to": None, "rotations": []}
            row = conn.execute(sa.select(key_state).where(key_state.c.purpose == LINK)).mappings().first()
            rots = [_summary(dict(r)) | {"progress": {k: {"done": v["done"], "total": v["total"]}
                                                    for k, v in json.loads(r["progress"]).items()}}
                    for r in conn.execute(sa.select(key_rotations).order_by(key_rotations.c.started_at)).mappings()]
    finally:
        eng.dispose()
    return {"version": row["version"] if row else None, "rotating_to": row["rotating_to"] if row else None, "rotations": rots}
