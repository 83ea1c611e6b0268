"""Ingesting one source in three idempotent steps: extract → validate → load.

1. :func:`extract` copies the extract rows changed since the persisted watermark into
   ``landing_<source>`` under the run id (rows stay under the department pseudonym).
2. :func:`validate` runs the source's GX suite (and a set-based duplicate-key check over the
   whole batch) and marks each failing landing row with its quarantine reason. Above the
   source's ``max_failure_rate`` it raises :class:`ValidationFailed`: nothing is loaded.
3. :func:`load` converts department pseudonyms to ERKs in memory, upserts passing rows into
   ``staging_<source>``, upserts failing rows into ``quarantine``, advances the watermark and
   clears the landing rows — all in one transaction, so a crash leaves no half state.

Each step returns counts only; rows never leave the databases.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from datetime import date, datetime, timezone

import sqlalchemy as sa

from renkei.config import Source
from renkei.errors import KeyRetired, KeyRingError, SourceError, ValidationFailed
from renkei.keys.ring import KeyRing
from renkei.keys.rotation import hold_link_key
from renkei.settings import Settings, redact_url
from renkei.sources.values import format_timestamp
from renkei.warehouse import (
    engine,
    ensure_schema,
    extract_table,
    ingest_runs,
    landing_table,
    quarantine,
    staging_key,
    staging_table,
    upsert,
    watermarks,
)

log = logging.getLogger(__name__)
BOOKKEEPING = ("run_id", "quarantine_reason")  # source_row stays in: two malformed rows differ by position


def _now() -> str:
    return format_timestamp(datetime.now(timezone.utc))


def row_hash(row: dict) -> str:
    """Digest of a pseudonymized row's content (bookkeeping columns excluded)."""
    content = {k: v for k, v in row.items() if k not in BOOKKEEPING}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _record_run(conn: sa.Connection, source: str, run_id: str, **fields) -> None:
    upsert(conn, ingest_runs, [{"run_id": run_id, "source": source, "updated_at": _now(), **fields}])


def extract(source: Source, run_id: str, settings: Settings | None = None) -> dict:
    """Land the rows changed since the watermark; returns {"read", "watermark_from", "watermark_to"}."""
    settings = settings or Settings.from_env()
    wh = engine(settings.warehouse_url)
    ensure_schema(wh)
    land = landing_table(source)
    src_eng = engine(settings.extracts_url)
    xt = extract_table(source, sa.MetaData())
    with wh.connect() as conn:
        wm = conn.execute(sa.select(watermarks.c.updated_at).where(watermarks.c.source == source.name)).scalar()
    # `>=`: a row written later with the watermark's own timestamp is not lost; the rows
    # re-read at the boundary upsert to the same state.
    query = sa.select(xt).order_by(xt.c.source_row)
    if wm is not None:
        query = query.where(sa.or_(xt.c.updated_at >= wm, xt.c.updated_at.is_(None)))
    read, newest = 0, wm
    with wh.begin() as wconn:
        wconn.execute(land.delete().where(land.c.run_id == run_id))
        if not sa.inspect(src_eng).has_table(xt.name):
            raise SourceError(
                f"{source.name}: no extract table {xt.name} at {redact_url(settings.extracts_url)}: "
                f"run `renkei pseudonymize --source {source.name} …` first"
            )
        with src_eng.connect() as sconn:
            result = sconn.execute(query, execution_options={"yield_per": source.chunk_rows})
            for part in result.mappings().partitions():
                rows = [{**r, "run_id": run_id} for r in part]
                wconn.execute(land.insert(), rows)
                read += len(rows)
                for r in rows:
                    ts = r.get("updated_at")
                    if ts is not None and (newest is None or ts > newest):
                        newest = ts
        _record_run(wconn, source.name, run_id, read=read, watermark_from=wm, watermark_to=newest, state="extracted")
    src_eng.dispose()
    wh.dispose()
    log.info("extract %s: %d rows since watermark %s", source.name, read, wm)
    return {"read": read, "watermark_from": wm, "watermark_to": newest}


def _duplicate_rows(conn: sa.Connection, land: sa.Table, key: str, run_id: str) -> set[int]:
    """source_rows whose key occurs more than once in this run's batch (set-based)."""
    dup_keys = (
        sa.select(land.c[key])
        .where(land.c.run_id == run_id, land.c[key].is_not(None))
        .group_by(land.c[key])
        .having(sa.func.count() > 1)
    )
    q = sa.select(land.c.source_row).where(land.c.run_id == run_id, land.c[key].in_(dup_keys))
    return set(conn.execute(q).scalars())


def validate(source: Source, run_id: str, settings: Settings | None = None) -> dict:
    """Validate this run's landed rows; returns {"evaluated", "failed", "reasons"}.

    Raises :class:`ValidationFailed` when the failing share exceeds the source's limit.
    """
    import pandas as pd  # noqa: PLC0415 - heavy, only inside the task

    from renkei.quality.gx_runner import RowFailure, quarantine_reason, validate_frame  # noqa: PLC0415

    settings = settings or Settings.from_env()
    wh = engine(settings.warehouse_url)
    land = landing_table(source)
    data_cols = [c.name for c in land.columns if c.name not in ("run_id", "quarantine_reason")]
    failures: dict[int, list] = {}
    evaluated = 0
    with wh.connect() as conn:
        query = sa.select(*[land.c[c] for c in data_cols]).where(land.c.run_id == run_id).order_by(land.c.source_row)
        result = conn.execute(query, execution_options={"yield_per": source.chunk_rows})
        for part in result.partitions():
            frame = pd.DataFrame([tuple(r) for r in part], columns=data_cols, dtype=object)
            outcome = validate_frame(source.name, frame, settings.expectations_dir)
            evaluated += outcome.evaluated
            for row, fails in outcome.failures.items():
                failures.setdefault(int(row), []).extend(fails)
        # Uniqueness across chunk boundaries: GX sees one chunk at a time.
        for row in _duplicate_rows(conn, land, source.key, run_id):
            failures.setdefault(row, []).append(RowFailure("expect_column_values_to_be_unique", source.key))
    reasons = {row: quarantine_reason(f) for row, f in failures.items()}
    by_reason = Counter(r for reason in reasons.values() for r in reason.split("; "))
    with wh.connect() as conn:
        known = _already_quarantined(conn, source, land, run_id, set(reasons))
    new_failures = len(reasons) - len(known)
    halt = _halts(source, new_failures, evaluated - len(known))
    with wh.begin() as conn:
        conn.execute(land.update().where(land.c.run_id == run_id).values(quarantine_reason=None))
        if reasons:
            stmt = (
                land.update()
                .where(land.c.run_id == run_id, land.c.source_row == sa.bindparam("b_row"))
                .values(quarantine_reason=sa.bindparam("b_reason"))
            )
            conn.execute(stmt, [{"b_row": row, "b_reason": reason} for row, reason in reasons.items()])
        state = "failed" if halt else "validated"
        _record_run(conn, source.name, run_id, read=evaluated, failed=len(reasons), state=state)
    wh.dispose()
    summary = {"evaluated": evaluated, "failed": len(reasons), "already_quarantined": len(known),
               "reasons": dict(by_reason.most_common())}
    log.info("validate %s: %d of %d rows fail, %d of them already quarantined (%s)",
             source.name, len(reasons), evaluated, len(known), summary["reasons"])
    if halt:
        fresh = evaluated - len(known)
        raise ValidationFailed(
            f"{source.name}: {new_failures} of {fresh} new rows ({new_failures / fresh:.1%}) fail validation, above "
            f"the limit {source.max_failure_rate:.1%}; nothing was loaded. Reasons: {summary['reasons']}. "
            f"Fix the extract at the department and re-run, or raise max_failure_rate for "
            f"{source.name} in config/sources.yaml if this is expected."
        )
    return summary


def _halts(source: Source, new_failures: int, fresh_rows: int) -> bool:
    """Whether a batch's new failures mean something is systematically wrong with the source.

    A tiny incremental batch with one typo must not block the source: the rate applies only
    once at least ``min_failures_to_halt`` new rows fail.
    """
    if fresh_rows <= 0 or new_failures < source.min_failures_to_halt:
        return False
    return new_failures / fresh_rows > source.max_failure_rate


def _already_quarantined(conn: sa.Connection, source: Source, land: sa.Table, run_id: str, rows: set[int]) -> set[int]:
    """Failing rows identical to a row quarantined before (e.g. re-read because their
    timestamp is missing): known failures, not evidence of a new problem."""
    if not rows:
        return set()
    cols = [c for c in land.columns if c.name != "quarantine_reason"]
    hashes: dict[str, int] = {}
    for part in _chunks(sorted(rows), 1000):
        q = sa.select(*cols).where(land.c.run_id == run_id, land.c.source_row.in_(part))
        for r in conn.execute(q).mappings():
            hashes[row_hash(dict(r))] = r["source_row"]
    known: set[int] = set()
    for part in _chunks(list(hashes), 1000):
        q = sa.select(quarantine.c.row_hash).where(quarantine.c.source == source.name, quarantine.c.row_hash.in_(part))
        known.update(hashes[h] for h in conn.execute(q).scalars())
    return known


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _to_date(value: str | None) -> date | None:
    return None if value is None else date.fromisoformat(value)


def load(source: Source, run_id: str, ring: KeyRing, settings: Settings | None = None) -> dict:
    """Load validated rows into staging and rejected rows into quarantine, atomically.

    Returns {"read", "loaded", "quarantined", "watermark"}; read = loaded + quarantined.
    """
    settings = settings or Settings.from_env()
    wh = engine(settings.warehouse_url)
    land = landing_table(source)
    stage = staging_table(source)
    date_cols = {source.extract_column(c) for c, t in source.columns.items() if t == "date"}
    key = staging_key(source)
    loaded = quarantined = unopened = retired = 0
    now = _now()
    with wh.begin() as conn:
        hold_link_key(conn, ring)  # refuses while the warehouse's ERKs are re-sealed (renkei.keys.rotation)
        state = conn.execute(
            sa.select(ingest_runs.c.state, ingest_runs.c.watermark_to).where(
                ingest_runs.c.run_id == run_id, ingest_runs.c.source == source.name
            )
        ).first()
        if state is None or state.state not in ("validated", "loaded"):
            raise ValidationFailed(
                f"{source.name}: run {run_id} is not validated (state {state.state if state else 'missing'}): "
                f"run the validate step first"
            )
        query = sa.select(land).where(land.c.run_id == run_id).order_by(land.c.source_row)
        result = conn.execute(query, execution_options={"yield_per": source.chunk_rows})
        for part in result.mappings().partitions():
            good: list[dict] = []
            bad: list[dict] = []
            for r in part:
                row = dict(r)
                reason = row.pop("quarantine_reason")
                digest = row_hash(row)
                staged: dict | None = None
                if reason is None:
                    try:
                        staged = _stage_row(source, ring, row, date_cols)
                    except _BadPseudonym as exc:
                        reason = f"{exc.reason}:{exc.column}"
                        unopened += 1
                        retired += exc.reason == "pseudonym_key_retired"
                if staged is not None:
                    staged.update(row_hash=digest, loaded_run_id=run_id)
                    good.append(staged)
                else:
                    record_key = row.get(source.key) if source.key != "dept_pseudonym" else None
                    bad.append({
                        "source": source.name, "row_hash": digest, "source_row": row["source_row"],
                        "record_key": record_key, "reason": reason, "first_run_id": run_id,
                        "last_run_id": run_id, "quarantined_at": now,
                    })
            _upsert_staging(conn, stage, key, good)
            if bad:
                _upsert_quarantine(conn, bad)
                _fail_safe(conn, source, stage, bad, now)
            loaded += len(good)
            quarantined += len(bad)
        if _halts(source, unopened, loaded + quarantined):
            # A wrong keyring fails every row alike: quarantining them all and advancing the
            # watermark would lose the batch. Raising rolls the whole load back.
            raise KeyRingError(
                f"{source.name}: {unopened} of {loaded + quarantined} pseudonyms of run {run_id} do not open "
                f"under {source.key_purpose}; nothing was loaded. The keyring is not the one the department "
                f"sealed with: point RENKEI_KEYRING at the right file and re-run the load step. {retired} of them are "
                f"sealed with a retired key version: for those the department re-exports with `renkei pseudonymize` "
                f"under the current version (`renkei keys status`)."
            )
        watermark = state.watermark_to
        if watermark is not None:
            upsert(conn, watermarks, [{"source": source.name, "updated_at": watermark, "run_id": run_id}])
        conn.execute(land.delete().where(land.c.run_id == run_id))
        _record_run(conn, source.name, run_id, loaded=loaded, quarantined=quarantined, state="loaded")
    wh.dispose()
    log.info("load %s: %d loaded, %d quarantined, watermark %s", source.name, loaded, quarantined, watermark)
    return {"read": loaded + quarantined, "loaded": loaded, "quarantined": quarantined, "watermark": watermark}


class _BadPseudonym(Exception):
    """A pseudonym of a row does not open; `column` names which one (for the quarantine reason)."""

    def __init__(self, column: str, reason: str = "pseudonym_does_not_authenticate") -> None:
        super().__init__(column)
        self.column = column
        self.reason = reason


def _reseal(source: Source, ring: KeyRing, column: str, token: str) -> str:
    try:
        return ring.reseal(source.key_purpose, token, "link")
    except KeyRetired:
        raise _BadPseudonym(column, "pseudonym_key_retired") from None
    except KeyRingError:
        raise _BadPseudonym(column) from None


def _stage_row(source: Source, ring: KeyRing, row: dict, date_cols: set[str]) -> dict:
    out: dict = {}
    for col, value in row.items():
        if col in ("run_id", "source_row", "parse_errors"):
            continue
        if col == "dept_pseudonym":
            out["erk"] = _reseal(source, ring, col, value)
        elif col == "household_pseudonym":
            out["household_key"] = None if value is None else _reseal(source, ring, col, value)
        elif col in date_cols:
            out[col] = _to_date(value)
        else:
            out[col] = value
    return out


def _upsert_staging(conn: sa.Connection, stage: sa.Table, key: str, rows: list[dict]) -> None:
    # Two rows of one batch may name the same staging key only if they passed uniqueness on
    # different keys (e.g. two dept pseudonyms of one resident after a key rotation): the
    # later row wins, as it would across runs.
    deduped = {r[key]: r for r in rows}
    upsert(conn, stage, list(deduped.values()))


def _fail_safe(conn: sa.Connection, source: Source, stage: sa.Table, bad: list[dict], now: str) -> None:
    """Apply the source's ``quarantine_fail_safe``: a rejected update of a known record sets a
    column on its staged row (e.g. subscriptions: opted_out_at) — an unreadable opt-out must stop
    notices, not leave the old opt-in active until the department fixes the row."""
    column = source.quarantine_fail_safe
    keys = [r["record_key"] for r in bad if r["record_key"] is not None]
    if not column or not keys:
        return
    conn.execute(
        stage.update()
        .where(stage.c[source.key].in_(keys), stage.c[column].is_(None))
        .values({column: now})
    )


def _upsert_quarantine(conn: sa.Connection, rows: list[dict]) -> None:
    """Insert new quarantine rows; a row seen again only records the latest run."""
    deduped = {(r["source"], r["row_hash"]): r for r in rows}
    rows = list(deduped.values())
    upsert(conn, quarantine, rows, update=False)
    stmt = (
        quarantine.update()
        .where(quarantine.c.source == sa.bindparam("b_source"), quarantine.c.row_hash == sa.bindparam("b_hash"))
        .values(last_run_id=sa.bindparam("b_run"))
    )
    conn.execute(stmt, [{"b_source": r["source"], "b_hash": r["row_hash"], "b_run": r["last_run_id"]} for r in rows])
