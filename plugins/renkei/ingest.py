"""Ingesting one source in three idempotent steps: extract → validate → load.

1. :func:`extract` copies the extract rows after the persisted watermark — the export
   adapter's change sequence, never a department timestamp — into ``landing_<source>`` under
   the run id (rows stay under the department pseudonym). The source's GX suite runs on each
   chunk's upserts while they are in memory, an ``updated_at`` later than the export time (plus
   the allowed skew) fails too, and each landing row carries the quarantine reason it found.
2. :func:`validate` completes that with a set-based duplicate-key check over the whole batch
   (re-running the suite over the landed rows if it changed since the extract). Above the
   source's ``max_failure_rate`` it raises :class:`ValidationFailed`: nothing is loaded.
3. :func:`load` converts the batch's distinct department pseudonyms to ERKs in memory (into a
   temporary table); per natural key the batch's latest passing change applies: a tombstone
   moves the staged row to ``staging_deleted``, an upsert is upserted into ``staging_<source>``;
   failing rows go to ``quarantine`` with INSERT … SELECT. It advances the watermark and clears
   the landing rows — all in one transaction, so a crash leaves no half state.

Each step returns counts only; rows never leave the databases.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from renkei.config import SEALED_COLUMNS, Source
from renkei.bulk import analyze, insert_rows, refilled
from renkei.errors import KeyRetired, KeyRingError, SourceError, ValidationFailed
from renkei.keys.ring import KeyRing
from renkei.keys.rotation import hold_link_key
from renkei.settings import Settings, redact_url
from renkei.sources.values import format_timestamp
from renkei.warehouse import (
    CHANGE_COLUMNS,
    DELETE,
    UPSERT,
    as_date,
    dialect_insert,
    engine,
    ensure_schema,
    extract_table,
    ingest_runs,
    landing_checks,
    landing_table,
    quarantine,
    row_digest,
    staging_deleted,
    staging_key,
    staging_moved,
    staging_table,
    upsert,
    watermarks,
)

log = logging.getLogger(__name__)
# Not part of a row's digest: where it sits in the change stream and the run (source_row stays in:
# two malformed rows of one export differ by position).
BOOKKEEPING = ("run_id", "quarantine_reason", "change_seq", "export_id", "op", "exported_at")
FUTURE = "updated_at_after_export:updated_at"  # the quarantine reason of a timestamp from the future


def _now() -> str:
    return format_timestamp(datetime.now(timezone.utc))


def content_columns(source: Source) -> list[str]:
    """The landing columns a row's digest covers (bookkeeping columns excluded), in table order."""
    return [c.name for c in landing_table(source).columns if c.name not in BOOKKEEPING]


def _record_run(conn: sa.Connection, source: str, run_id: str, **fields) -> None:
    upsert(conn, ingest_runs, [{"run_id": run_id, "source": source, "updated_at": _now(), **fields}])


def extract(source: Source, run_id: str, settings: Settings | None = None) -> dict:
    """Land the extract rows after the watermark (change_seq), each with the quarantine reason
    the source's GX suite gives it; returns {"read", "failed", "deletes", "watermark_from",
    "watermark_to", "validate_s"}.

    The suite runs on every chunk's upserts while they are in memory (reading the batch back out
    of the warehouse to validate it cost as much as validating it); tombstones carry only their
    key. :func:`validate` then adds the checks that need the whole batch and decides whether it
    halts. ``validate_s`` is the part of the step's time spent in the suite.
    """
    from renkei.quality import datadocs  # noqa: PLC0415
    from renkei.quality.gx_runner import suite_fingerprint  # noqa: PLC0415 - cheap; GX itself loads on first chunk

    settings = settings or Settings.from_env()
    wh = engine(settings.warehouse_url)
    ensure_schema(wh)
    land = landing_table(source)
    docs = datadocs.for_run(source.name, run_id)  # the run's GX results, for its Data Docs page
    src_eng = engine(settings.extracts_url)
    xt = extract_table(source, sa.MetaData())
    with wh.connect() as conn:
        wm = conn.execute(sa.select(watermarks.c.change_seq).where(watermarks.c.source == source.name)).scalar()
    # The position is the adapter's sequence: no department value (a timestamp from the future,
    # a clock hours off) can move it past a row not yet read.
    query = sa.select(xt).order_by(xt.c.change_seq)
    if wm is not None:
        query = query.where(xt.c.change_seq > wm)
    read = failed = deletes = 0
    newest = wm
    validate_s = 0.0
    columns = [c.name for c in xt.columns]
    suite = suite_fingerprint(source.name, settings.expectations_dir)
    with wh.begin() as wconn:
        wconn.execute(land.delete().where(land.c.run_id == run_id))
        if not sa.inspect(src_eng).has_table(xt.name):
            raise SourceError(
                f"{source.name}: no extract table {xt.name} at {redact_url(settings.extracts_url)}: "
                f"run `renkei pseudonymize --source {source.name} …` first"
            )
        with src_eng.connect() as sconn:
            _check_extract(sconn, source, xt)
            for part in _chunks(sconn, query, xt, source.validate_chunk_rows):
                t = time.perf_counter()
                reasons = _chunk_reasons(source, columns, part, settings, docs)
                validate_s += time.perf_counter() - t
                failed += len(reasons)
                deletes += sum(1 for r in part if r[2] == DELETE)
                read += insert_rows(wconn, land, ["run_id", *columns, "quarantine_reason"],
                                    [(run_id, *r, reasons.get(r[0])) for r in part])
                newest = max(newest or 0, part[-1][0])
        upsert(wconn, landing_checks, [{"run_id": run_id, "source": source.name, "suite": suite, "rows": read}])
        _record_run(wconn, source.name, run_id, read=read, watermark_from=wm, watermark_to=newest, state="extracted")
    src_eng.dispose()
    wh.dispose()
    datadocs.publish_run(docs, settings.expectations_dir)
    log.info("extract %s: %d changes after change_seq %s (%d tombstones), %d failing its suite (%.1fs in the suite)",
             source.name, read, wm, deletes, failed, validate_s)
    return {"read": read, "failed": failed, "deletes": deletes, "watermark_from": wm, "watermark_to": newest,
            "validate_s": round(validate_s, 3)}


def _check_extract(conn: sa.Connection, source: Source, xt: sa.Table) -> None:
    """The extract is a change log of this Renkei version (not an older full snapshot)."""
    cols = {c["name"] for c in sa.inspect(conn).get_columns(xt.name)}
    missing = [c.name for c in xt.columns if c.name not in cols]
    if missing:
        raise SourceError(
            f"{source.name}: {xt.name} lacks {missing}: it was written by an older export adapter (a full "
            f"snapshot, or shared-key digests). The department drops {xt.name} and exports again with `renkei pseudonymize --source "
            f"{source.name} --full`; ingest then reads every row once"
        )


def _chunks(conn: sa.Connection, query: sa.Select, table: sa.Table, size: int) -> Iterator[Sequence[tuple]]:
    """The query's rows in lists of ``size`` tuples. When no column type converts values (the
    extract tables hold integers and text), straight from a driver cursor (server-side on
    PostgreSQL): SQLAlchemy's per-row Row objects cost as much as copying the rows into the
    warehouse."""
    if not all(isinstance(c.type, (sa.Integer, sa.String)) for c in table.columns):
        yield from conn.execute(query, execution_options={"yield_per": size}).partitions()
        return
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    driver = conn.connection.driver_connection
    cursor = driver.cursor(name="renkei_extract") if conn.dialect.name == "postgresql" else driver.cursor()
    try:
        cursor.execute(sql)
        while part := cursor.fetchmany(size):
            yield part
    finally:
        cursor.close()


def _chunk_reasons(source: Source, columns: list[str], part, settings: Settings, docs=None) -> dict[int, str]:
    """change_seq -> quarantine reason for the chunk's upserts that fail the suite or carry an
    ``updated_at`` later than their export time plus the source's allowed clock skew
    (``columns[0]`` is change_seq). Tombstones carry only their key: nothing to validate.
    ``docs`` (a datadocs.RunValidation) collects the GX results for the run's Data Docs."""
    if not part:
        return {}
    import pandas as pd  # noqa: PLC0415 - heavy, only inside the task

    from renkei.quality.gx_runner import RowFailure, quarantine_reason, validate_frame  # noqa: PLC0415

    at = {c: i for i, c in enumerate(columns)}
    rows = [r if isinstance(r, tuple) else tuple(r) for r in part if r[at["op"]] == UPSERT]
    if not rows:
        return {}
    data = [c for c in columns if c not in CHANGE_COLUMNS and c != "source_row"]
    # The suite sees the extract's layout, with the change_seq as the batch's row identity.
    frame = pd.DataFrame(rows, columns=columns, dtype=object)[[columns[0], *data]]
    frame.columns = ["source_row", *data]
    outcome = validate_frame(source.name, frame, settings.expectations_dir, on_result=docs.add if docs else None)
    out: dict[int, list] = {}
    for row, fails in outcome.failures.items():
        # Uniqueness is validate's batch check, per export: one key changed in two exports of
        # one batch is two changes, not a duplicate.
        kept = [f for f in fails if f.expectation != UNIQUE]
        if kept:
            out[row] = kept
    if "updated_at" in at:
        skew = timedelta(minutes=source.max_clock_skew_minutes)
        ceilings: dict[str, str] = {}
        for r in rows:
            stamp, exported = r[at["updated_at"]], r[at["exported_at"]]
            if stamp is None:
                continue
            ceiling = ceilings.get(exported)
            if ceiling is None:
                ceiling = ceilings[exported] = format_timestamp(datetime.fromisoformat(exported) + skew)
            if stamp > ceiling:  # canonical JST text: string order is time order
                out.setdefault(r[0], []).append(RowFailure(*FUTURE.split(":")))
    return {row: quarantine_reason(fails) for row, fails in out.items()}


UNIQUE = "expect_column_values_to_be_unique"


def _duplicate_rows(conn: sa.Connection, land: sa.Table, key: str, run_id: str) -> set[int]:
    """change_seqs of upserts whose key occurs more than once in one export of this run's batch
    (set-based; the same key in two exports is two successive changes)."""
    mine = sa.and_(land.c.run_id == run_id, land.c.op == UPSERT, land.c[key].is_not(None))
    dup_keys = (
        sa.select(land.c.export_id, land.c[key]).where(mine)
        .group_by(land.c.export_id, land.c[key]).having(sa.func.count() > 1)
    ).subquery()
    q = sa.select(land.c.change_seq).select_from(
        land.join(dup_keys, sa.and_(dup_keys.c.export_id == land.c.export_id, dup_keys.c[key] == land.c[key]))
    ).where(mine)
    return set(conn.execute(q).scalars())


def validate(source: Source, run_id: str, settings: Settings | None = None) -> dict:
    """Complete the validation of this run's landed rows; returns {"evaluated", "failed",
    "already_quarantined", "reasons", "suite_rerun"}.

    Extract ran the suite chunk by chunk; this adds the key-uniqueness check over the whole batch
    (GX saw one chunk at a time) and decides. When the suite changed since the extract (or the
    batch was landed without it), the suite runs again here over the landed rows
    (``suite_rerun``). Raises :class:`ValidationFailed` when the failing share exceeds the
    source's limit.
    """
    from renkei.quality.gx_runner import RowFailure, quarantine_reason, suite_fingerprint  # noqa: PLC0415

    settings = settings or Settings.from_env()
    wh = engine(settings.warehouse_url)
    ensure_schema(wh)
    land = landing_table(source)
    this_run = land.c.run_id == run_id
    suite = suite_fingerprint(source.name, settings.expectations_dir)
    with wh.begin() as conn:
        # Extract filled landing with COPY; without statistics PostgreSQL plans the batch-wide
        # duplicate check (and load's latest-change anti-join) as a nested loop over the batch:
        # 13 minutes for 121k rows at 1M residents through Airflow. ANALYZE samples, in ~0.1 s.
        analyze(conn, [land])
        landed = conn.execute(sa.select(sa.func.count()).where(this_run)).scalar_one()
        _check_landed(conn, source, run_id, landed)
        checked = conn.execute(sa.select(landing_checks).where(
            landing_checks.c.run_id == run_id, landing_checks.c.source == source.name)).first()
        rerun = checked is None or checked.suite != suite or checked.rows != landed
        if rerun:
            _rerun_suite(conn, source, land, run_id, settings)
        # Uniqueness across chunk boundaries: GX sees one chunk at a time.
        dups = _duplicate_rows(conn, land, source.key, run_id)
        if dups:
            unique = [RowFailure("expect_column_values_to_be_unique", source.key)]
            _set_reasons(conn, land, this_run, {
                row: quarantine_reason(unique, landed=reason)
                for row, reason in conn.execute(
                    sa.select(land.c.change_seq, land.c.quarantine_reason).where(this_run, land.c.change_seq.in_(dups)))
            })
        by_reason: Counter = Counter()
        failed = 0
        for reason, n in conn.execute(
            sa.select(land.c.quarantine_reason, sa.func.count())
            .where(this_run, land.c.quarantine_reason.is_not(None)).group_by(land.c.quarantine_reason)
        ):
            failed += n
            for part in reason.split("; "):
                by_reason[part] += n
        upsert(conn, landing_checks, [{"run_id": run_id, "source": source.name, "suite": suite, "rows": landed}])
        known = _already_quarantined(conn, source, land, run_id) if failed else 0
        # A failing change the department corrected by a later change of the same key in this
        # batch is history (quarantined at load), not evidence against the batch: else a halted
        # batch could never pass, its failing rows staying ahead of every correction.
        fixed = _fixed_later(conn, source, land, run_id) if failed - known else 0
        new_failures = failed - known - fixed
        halt = _halts(source, new_failures, landed - known - fixed)
        state = "failed" if halt else "validated"
        _record_run(conn, source.name, run_id, read=landed, failed=failed, state=state)
    wh.dispose()
    summary = {"evaluated": landed, "failed": failed, "already_quarantined": known,
               "reasons": dict(by_reason.most_common()), "suite_rerun": rerun}
    log.info("validate %s: %d of %d rows fail, %d of them already quarantined (%s)%s",
             source.name, failed, landed, known, summary["reasons"],
             "; the suite ran again (changed since the extract)" if rerun else "")
    if halt:
        fresh = landed - known - fixed
        raise ValidationFailed(
            f"{source.name}: {new_failures} of {fresh} new rows ({new_failures / fresh:.1%}) fail validation, above "
            f"the limit {source.max_failure_rate:.1%}; nothing was loaded. Reasons: {summary['reasons']}. "
            f"Fix the extract at the department and re-run, or raise max_failure_rate for "
            f"{source.name} in config/sources.yaml if this is expected."
        )
    return summary


def _rerun_suite(conn: sa.Connection, source: Source, land: sa.Table, run_id: str, settings: Settings) -> None:
    """Run the suite again over the landed batch, chunk by chunk, replacing its landed reasons
    (and the run's Data Docs page)."""
    from renkei.quality import datadocs  # noqa: PLC0415

    docs = datadocs.for_run(source.name, run_id)
    cols = [c.name for c in extract_table(source, sa.MetaData()).columns]
    this_run = land.c.run_id == run_id
    reasons: dict[int, str] = {}
    query = sa.select(*[land.c[c] for c in cols]).where(this_run).order_by(land.c.change_seq)
    for part in conn.execute(query, execution_options={"yield_per": source.validate_chunk_rows}).partitions():
        reasons.update(_chunk_reasons(source, cols, part, settings, docs))
    # A re-run starts clean (rewriting every row would cost a full pass).
    conn.execute(land.update().where(this_run, land.c.quarantine_reason.is_not(None)).values(quarantine_reason=None))
    _set_reasons(conn, land, this_run, reasons)
    datadocs.publish_run(docs, settings.expectations_dir)


def _set_reasons(conn: sa.Connection, land: sa.Table, this_run, reasons: dict[int, str]) -> None:
    """Write these landing rows' quarantine reasons (change_seq -> reason)."""
    if reasons:
        conn.execute(
            land.update().where(this_run, land.c.change_seq == sa.bindparam("b_row"))
            .values(quarantine_reason=sa.bindparam("b_reason")),
            [{"b_row": row, "b_reason": reason} for row, reason in reasons.items()],
        )


def _check_landed(conn: sa.Connection, source: Source, run_id: str, landed: int) -> None:
    """The batch is still whole: as many landing rows as the extract step recorded (landing is an
    unlogged table on PostgreSQL, emptied by a server crash; loading a partial batch would advance
    the watermark past rows never loaded)."""
    recorded = conn.execute(
        sa.select(ingest_runs.c.read, ingest_runs.c.state).where(
            ingest_runs.c.run_id == run_id, ingest_runs.c.source == source.name)
    ).first()
    if recorded is not None and recorded.state in ("extracted", "validated") and recorded.read != landed:
        raise SourceError(
            f"{source.name}: run {run_id} landed {recorded.read} rows but {landed} are in landing_{source.name} "
            f"(the warehouse restarted?): re-run the extract step of this run"
        )


def _halts(source: Source, new_failures: int, fresh_rows: int) -> bool:
    """Whether a batch's new failures mean something is systematically wrong with the source.

    A tiny incremental batch with one typo must not block the source: the rate applies only
    once at least ``min_failures_to_halt`` new rows fail.
    """
    if fresh_rows <= 0 or new_failures < source.min_failures_to_halt:
        return False
    return new_failures / fresh_rows > source.max_failure_rate


def _already_quarantined(conn: sa.Connection, source: Source, land: sa.Table, run_id: str) -> int:
    """How many of the batch's failing rows are identical to a row quarantined before (e.g.
    re-read because their timestamp is missing): known failures, not evidence of a new problem."""
    seen = sa.exists().where(quarantine.c.source == source.name, quarantine.c.row_hash == _digest(land, source))
    return conn.execute(
        sa.select(sa.func.count()).where(land.c.run_id == run_id, land.c.quarantine_reason.is_not(None), seen)
    ).scalar_one()


def _fixed_later(conn: sa.Connection, source: Source, land: sa.Table, run_id: str) -> int:
    """How many of the batch's failing rows, not quarantined before, have a later passing change
    of the same key in the batch (the department corrected them)."""
    later = land.alias("later")
    fixed = sa.exists().where(
        later.c.run_id == run_id, later.c[source.key] == land.c[source.key],
        later.c.change_seq > land.c.change_seq, later.c.quarantine_reason.is_(None))
    seen = sa.exists().where(quarantine.c.source == source.name, quarantine.c.row_hash == _digest(land, source))
    return conn.execute(
        sa.select(sa.func.count()).where(land.c.run_id == run_id, land.c.quarantine_reason.is_not(None), fixed, ~seen)
    ).scalar_one()


def load(source: Source, run_id: str, ring: KeyRing, settings: Settings | None = None) -> dict:
    """Load validated rows into staging and rejected rows into quarantine, atomically.

    Set-based: only the batch's distinct pseudonyms pass through Python (to be re-sealed as
    ERKs, in memory); staging and quarantine are filled by INSERT … SELECT from landing.
    Returns {"read", "loaded", "quarantined", "watermark", "convert_s"}; read = loaded +
    quarantined; convert_s = seconds spent converting pseudonyms, the rest is database work.
    """
    settings = settings or Settings.from_env()
    wh = engine(settings.warehouse_url)
    land = landing_table(source)
    stage = staging_table(source)
    now = _now()
    with wh.begin() as conn:
        # On a fresh warehouse this records its link-key version (reading existing ERKs) in a short
        # transaction of its own: inside the load's, those reads would hold locks for the whole
        # load and deadlock with another source's load rebuilding its staging table's indexes.
        hold_link_key(conn, ring)
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
        this_run = land.c.run_id == run_id
        erks = _erk_map(conn, source)
        t = time.perf_counter()
        opened = _convert_pseudonyms(conn, source, ring, land, this_run, erks)
        convert_s = time.perf_counter() - t
        unopened, retired = _reject_unopened(conn, land, this_run, erks)
        passing = sa.and_(this_run, land.c.quarantine_reason.is_(None))
        failing = sa.and_(this_run, land.c.quarantine_reason.is_not(None))
        loaded = conn.execute(sa.select(sa.func.count()).where(passing)).scalar_one()
        quarantined = conn.execute(sa.select(sa.func.count()).where(failing)).scalar_one()
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
        # Per natural key the batch's latest passing change applies (a key may change in several
        # exports of one batch: an update, a delete, a re-insert).
        later = land.alias("later")
        superseded = sa.exists().where(
            later.c.run_id == run_id, later.c[source.key] == land.c[source.key],
            later.c.change_seq > land.c.change_seq, later.c.quarantine_reason.is_(None))
        latest = sa.and_(passing, ~superseded)
        deleted = _retire(conn, source, land, stage, erks, sa.and_(latest, land.c.op == DELETE), run_id, now)
        _insert_staging(conn, source, land, stage, erks, sa.and_(latest, land.c.op == UPSERT), run_id, loaded)
        if quarantined:
            _insert_quarantine(conn, source, land, failing, run_id, now)
            _fail_safe(conn, source, stage, land, failing, now)
        erks.drop(conn)
        watermark = state.watermark_to
        if watermark is not None:
            upsert(conn, watermarks, [{"source": source.name, "change_seq": watermark, "run_id": run_id}])
        _clear_landing(conn, land, run_id)
        conn.execute(landing_checks.delete().where(
            landing_checks.c.run_id == run_id, landing_checks.c.source == source.name))
        _record_run(conn, source.name, run_id, loaded=loaded, quarantined=quarantined, deleted=deleted, state="loaded")
    wh.dispose()
    log.info("load %s: %d loaded (%d staged rows retired by tombstones), %d quarantined (%d pseudonyms converted "
             "in %.1fs), watermark change_seq %s", source.name, loaded, deleted, quarantined, opened, convert_s, watermark)
    return {"read": loaded + quarantined, "loaded": loaded, "quarantined": quarantined, "deleted": deleted,
            "watermark": watermark, "convert_s": round(convert_s, 3)}


def _retire(conn: sa.Connection, source: Source, land: sa.Table, stage: sa.Table, erks: sa.Table, tombstones,
            run_id: str, now: str) -> int:
    """Move the staged rows the batch's tombstones name into ``staging_deleted`` (with the
    tombstone's change_seq and the deletion time); returns how many were retired."""
    if conn.execute(sa.select(land.c.change_seq).where(land.c.run_id == run_id, land.c.op == DELETE).limit(1)).first() is None:
        return 0  # (cheap) most batches carry no tombstone: skip the per-key anti-join below
    key = staging_key(source)
    if key == "erk":  # keyed by resident: the tombstone's pseudonym, converted like any other
        tomb = (sa.select(erks.c.erk.label("k"), land.c.change_seq.label("seq"))
                .select_from(land.join(erks, erks.c.token == land.c.dept_pseudonym)).where(tombstones))
    else:
        tomb = sa.select(land.c[key].label("k"), land.c.change_seq.label("seq")).where(tombstones)
    tomb = tomb.subquery()
    if conn.execute(sa.select(tomb.c.k).limit(1)).first() is None:
        return 0
    q = sa.select(
        sa.literal(source.name, sa.String(64)), sa.null() if key == "erk" else stage.c[key],
        stage.c.erk if "erk" in stage.c else sa.null(), stage.c.row_hash, stage.c.loaded_run_id, tomb.c.seq,
        sa.literal(run_id, sa.String(250)), sa.literal(now, sa.String(32)),
    ).select_from(stage.join(tomb, tomb.c.k == stage.c[key]))
    conn.execute(sa.insert(staging_deleted).from_select(
        ["source", "record_key", "erk", "row_hash", "loaded_run_id", "change_seq", "deleted_run_id", "deleted_at"], q))
    return conn.execute(stage.delete().where(stage.c[key].in_(sa.select(tomb.c.k)))).rowcount


def _clear_landing(conn: sa.Connection, land: sa.Table, run_id: str) -> None:
    """Remove this run's landing rows (TRUNCATE on PostgreSQL when they are all there is)."""
    others = conn.execute(sa.select(land.c.run_id).where(land.c.run_id != run_id).limit(1)).first()
    if conn.dialect.name == "postgresql" and others is None:
        conn.exec_driver_sql(f"TRUNCATE {conn.dialect.identifier_preparer.quote(land.name)}")
    else:
        conn.execute(land.delete().where(land.c.run_id == run_id))


ANALYZE_AFTER_ROWS = 100_000  # a bulk load; small incremental batches leave the statistics as they are
PSEUDONYM_COLUMNS = ("dept_pseudonym", "household_pseudonym")  # department-sealed, re-sealed as ERKs
UNOPENED = "pseudonym_does_not_authenticate"
UNOPENED_RETIRED = "pseudonym_key_retired"


def _erk_map(conn: sa.Connection, source: Source) -> sa.Table:
    """A temporary table: department pseudonym → ERK, or the reason it does not open."""
    table = sa.Table(
        f"tmp_erks_{source.name}", sa.MetaData(),
        # No key: the tokens arrive distinct, and the joins below hash the whole table anyway
        # (a b-tree of a million random tokens cost more than the AES-SIV calls themselves).
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("erk", sa.String(120)),
        sa.Column("reason", sa.String(64)),  # pseudonym_does_not_authenticate | pseudonym_key_retired
        prefixes=["TEMPORARY"],
    )
    table.drop(conn, checkfirst=True)
    table.create(conn)
    return table


def _convert_pseudonyms(conn, source: Source, ring: KeyRing, land: sa.Table, this_run, erks: sa.Table) -> int:
    """Re-seal each distinct pseudonym of the batch's passing rows under the link key, and turn
    each sealed quasi-identifier into its match digest (the plaintext exists only inside the
    keyring's batch calls); returns how many were converted. The map holds both: their tokens
    never coincide (each sealed plaintext carries its domain)."""
    columns = [land.c[c] for c in PSEUDONYM_COLUMNS if c in land.c]
    if not columns:  # a source without personal data
        return 0
    selects = [
        sa.select(col.label("token")).where(this_run, land.c.quarantine_reason.is_(None), col.is_not(None)).distinct()
        for col in columns
    ]
    tokens = (sa.union(*selects) if len(selects) > 1 else selects[0]).subquery()
    result = conn.execute(sa.select(tokens.c.token), execution_options={"yield_per": source.chunk_rows})
    n = 0
    for part in result.scalars().partitions():
        rows = [
            (token, erk, None if err is None else UNOPENED_RETIRED if isinstance(err, KeyRetired) else UNOPENED)
            for token, (erk, err) in zip(part, ring.reseal_many(source.key_purpose, part, "link"))
        ]
        n += insert_rows(conn, erks, ["token", "erk", "reason"], rows)
    for column, (domain, _) in SEALED_COLUMNS.items():
        if column not in land.c:
            continue
        col = land.c[column]
        query = sa.select(col).where(this_run, land.c.quarantine_reason.is_(None), col.is_not(None)).distinct()
        result = conn.execute(query, execution_options={"yield_per": source.chunk_rows})
        for part in result.scalars().partitions():
            rows = [
                (token, digest, None if err is None else UNOPENED_RETIRED if isinstance(err, KeyRetired) else UNOPENED)
                for token, (digest, err) in zip(part, ring.digest_sealed_many(source.key_purpose, part, domain))
            ]
            n += insert_rows(conn, erks, ["token", "erk", "reason"], rows)
    analyze(conn, [erks])  # the planner sizes the joins by it
    return n


def _reject_unopened(conn: sa.Connection, land: sa.Table, this_run, erks: sa.Table) -> tuple[int, int]:
    """Give passing rows whose pseudonym did not open (or is missing) their quarantine reason;
    returns (rows rejected, of which sealed with a retired key version)."""
    unopened = retired = 0
    # Each UPDATE is a pass over the batch: only for the reasons some pseudonym actually has.
    found = set(conn.execute(sa.select(erks.c.reason).where(erks.c.reason.is_not(None)).distinct()).scalars())
    for column in (*PSEUDONYM_COLUMNS, *SEALED_COLUMNS):
        if column not in land.c:
            continue
        col = land.c[column]
        for reason in (UNOPENED_RETIRED, UNOPENED):
            bad = col.in_(sa.select(erks.c.token).where(erks.c.reason == reason)) if reason in found else None
            if column == "dept_pseudonym" and reason == UNOPENED:
                # a missing pseudonym on an upsert; a tombstone of a record-keyed source has none
                missing = sa.and_(col.is_(None), land.c.op == UPSERT)
                bad = missing if bad is None else sa.or_(bad, missing)
            if bad is None:
                continue
            n = conn.execute(
                land.update().where(this_run, land.c.quarantine_reason.is_(None), bad)
                .values(quarantine_reason=f"{reason}:{column}")
            ).rowcount
            unopened += n
            retired += n if reason == UNOPENED_RETIRED else 0
    return unopened, retired


def _digest(land: sa.Table, source: Source):
    return row_digest(*[land.c[c] for c in content_columns(source)])


def _insert_staging(conn, source: Source, land: sa.Table, stage: sa.Table, erks: sa.Table, passing, run_id: str,
                    loaded: int) -> None:
    """Upsert the passing rows into staging with their ERKs, typed dates and digests."""
    date_cols = {source.extract_column(c) for c, t in source.columns.items() if t == "date"}
    dept = erks.alias("dept_erk") if "dept_pseudonym" in land.c else None
    household = erks.alias("household_erk") if "household_pseudonym" in land.c else None
    # staging digest column -> (its map alias, the landing column of sealed values)
    sealed_from = {digest: column for column, (_, digest) in SEALED_COLUMNS.items() if column in land.c}
    sealed = {digest: erks.alias(f"{digest}_map") for digest in sealed_from}
    values: dict[str, sa.ColumnElement] = {}
    for c in stage.columns:
        if c.name == "erk":
            values[c.name] = dept.c.erk
        elif c.name == "household_key":
            values[c.name] = household.c.erk
        elif c.name in sealed:
            values[c.name] = sealed[c.name].c.erk
        elif c.name == "row_hash":
            values[c.name] = _digest(land, source)
        elif c.name == "loaded_run_id":
            values[c.name] = sa.literal(run_id, sa.String(250))
        elif c.name in date_cols:
            values[c.name] = as_date(land.c[c.name])
        else:
            values[c.name] = land.c[c.name]
    joined = land if dept is None else land.join(dept, dept.c.token == land.c.dept_pseudonym)
    if household is not None:
        joined = joined.outerjoin(household, household.c.token == land.c.household_pseudonym)
    for digest, alias in sealed.items():
        joined = joined.outerjoin(alias, alias.c.token == land.c[sealed_from[digest]])
    key = values[staging_key(source)]
    query = sa.select(*[v.label(k) for k, v in values.items()]).select_from(joined).where(passing)
    # Two passing rows of one batch may share a staging key only if they passed uniqueness on
    # different keys (e.g. two department pseudonyms of one resident during a key's grace
    # period): the later row wins, as it would across runs.
    if conn.dialect.name != "postgresql":  # SQLite applies the rows in order: the later row's update wins
        query = query.order_by(land.c.change_seq)
    elif staging_key(source) == "erk":  # (a department key column: validation quarantined repeats)
        from sqlalchemy.dialects.postgresql import distinct_on  # noqa: PLC0415

        query = query.ext(distinct_on(key)).order_by(key, land.c.change_seq.desc())
    insert = dialect_insert(conn)(stage).from_select(list(values), query)
    if conn.dialect.name == "postgresql" and conn.execute(sa.select(sa.literal(1)).select_from(stage).limit(1)).first() is None:
        # A first (or full re-)load into an empty table: keys and indexes are built after the
        # insert in one sorted pass instead of millions of random b-tree inserts; the rows' keys
        # are unique (validation quarantines repeated keys; DISTINCT ON above for ERKs), and
        # were one not, adding the primary key would fail and roll the load back.
        with refilled(conn, [stage]):
            conn.execute(insert)
        return
    _record_moves(conn, source, stage, query, run_id)
    pk = [c.name for c in stage.primary_key.columns]
    conn.execute(insert.on_conflict_do_update(
        index_elements=pk, set_={k: insert.excluded[k] for k in values if k not in pk}))
    if loaded >= ANALYZE_AFTER_ROWS:
        analyze(conn, [stage])  # fresh statistics for the link step's joins (autovacuum comes too late)


def _record_moves(conn, source: Source, stage: sa.Table, incoming: sa.Select, run_id: str) -> None:
    """Before the upsert: the staged records this batch re-links to another ERK, with the ERK
    they leave (``staging_moved``: the link rebuilds that resident too)."""
    key = staging_key(source)
    if key == "erk" or "erk" not in stage.c:
        return  # keyed by the resident (a record cannot move), or no resident at all (events)
    new = incoming.subquery()
    conn.execute(sa.insert(staging_moved).from_select(
        ["source", "record_key", "erk", "moved_run_id"],
        sa.select(sa.literal(source.name, sa.String(64)), stage.c[key], stage.c.erk, sa.literal(run_id, sa.String(250)))
        .select_from(stage.join(new, new.c[key] == stage.c[key]))
        .where(stage.c.erk.is_not(None), stage.c.erk.is_distinct_from(new.c.erk))
        .distinct(),
    ))


def _insert_quarantine(conn, source: Source, land: sa.Table, failing, run_id: str, now: str) -> None:
    """Insert the failing rows into quarantine; a row seen before only records this run."""
    digest = _digest(land, source)
    record_key = land.c[source.key] if source.key != "dept_pseudonym" else sa.null()
    query = sa.select(
        sa.literal(source.name, sa.String(64)), digest, land.c.source_row, record_key, land.c.quarantine_reason,
        sa.literal(run_id, sa.String(250)), sa.literal(run_id, sa.String(250)), sa.literal(now, sa.String(32)),
    ).where(failing)
    cols = ["source", "row_hash", "source_row", "record_key", "reason", "first_run_id", "last_run_id", "quarantined_at"]
    insert = dialect_insert(conn)(quarantine).from_select(cols, query)
    conn.execute(insert.on_conflict_do_nothing(index_elements=["source", "row_hash"]))
    conn.execute(
        quarantine.update()
        .where(quarantine.c.source == source.name, quarantine.c.row_hash.in_(sa.select(digest).where(failing)))
        .values(last_run_id=run_id)
    )


def _fail_safe(conn: sa.Connection, source: Source, stage: sa.Table, land: sa.Table, failing, now: str) -> None:
    """Apply the source's ``quarantine_fail_safe``: a rejected update of a known record sets a
    column on its staged row (e.g. subscriptions: opted_out_at) — an unreadable opt-out must stop
    notices, not leave the old opt-in active until the department fixes the row."""
    column = source.quarantine_fail_safe
    if not column or source.key == "dept_pseudonym":
        return
    keys = sa.select(land.c[source.key]).where(failing, land.c[source.key].is_not(None))
    conn.execute(
        stage.update()
        .where(stage.c[source.key].in_(keys), stage.c[column].is_(None))
        .values({column: now})
    )
