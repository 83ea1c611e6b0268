"""The export adapter (`renkei pseudonymize`): raw departmental rows → pseudonymized extract.

Runs inside the department boundary. It seals the resident code into the department pseudonym,
digests the name reading and the address after normalisation, parses dates (ISO or 和暦) and
timestamps, drops what the pipeline must not see (kanji names), and appends to the extract only
what changed since its last export (SOURCES.md, change capture): upserts of new or changed rows
and tombstones of vanished ones, each with a strictly increasing change sequence. It never drops
a row: a value it cannot parse becomes NULL and the row carries ``parse_errors``
("column:reason;…"), so validation quarantines it with that reason.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from renkei.config import Source
from renkei.errors import SourceError
from renkei.keys.normalize import normalize_address, normalize_name
from renkei.keys.ring import KeyRing
from renkei.sources import csvfile, values
from renkei.warehouse import DELETE, UPSERT, engine, extract_table, record_text, upsert

RESIDENT_CODE_DIGITS = 11


@dataclass(frozen=True)
class ExtractResult:
    source: str
    mode: str  # incremental | reconcile | full (a first export is full)
    read: int  # raw rows read (an incremental SQL read sees only its window)
    written: int  # extract rows appended: upserts + deletes
    upserts: int
    deletes: int  # tombstones
    unchanged: int  # rows read whose digest matched the last export's
    with_parse_errors: int
    first_seq: int | None  # change_seq range written (None when nothing changed)
    last_seq: int | None
    export_id: int | None
    seconds: float


def raw_location(raw_dir: Path, source: str) -> str | None:
    """The raw input for a source in a drop folder: ``<source>.csv`` or ``<source>.db``."""
    csv_path, db_path = raw_dir / f"{source}.csv", raw_dir / f"{source}.db"
    if csv_path.exists():
        return str(csv_path)
    if db_path.exists():
        return f"sqlite:///{db_path}"
    return None


def _iter_csv(source: Source, location: str) -> Iterator[tuple[int, dict | None]]:
    path = Path(location)
    if not path.exists():
        raise SourceError(f"{source.name}: no such file {path}: give a CSV path or a SQLAlchemy URL")
    header, rows = csvfile.read_csv(path)
    missing = [c for c in source.raw_columns if c not in header]
    if missing:
        raise SourceError(f"{source.name}: {path.name} lacks columns {missing}: the header must hold the SOURCES.md columns")
    for idx, fields in rows:
        yield idx, (None if fields is None else dict(zip(header, fields)))


def convert_row(source: Source, ring: KeyRing, raw: dict | None) -> dict:
    """One raw row → one extract row (without source_row). Never raises on a bad value."""
    out: dict = {}
    errors: list[str] = []
    if raw is None:
        for raw_col, t in source.columns.items():
            if t != "drop":
                out[source.extract_column(raw_col)] = None
        out["parse_errors"] = "row:wrong_column_count"
        return out
    for col, t in source.columns.items():
        if t == "drop":
            continue
        value = raw.get(col)
        value = value.strip() if isinstance(value, str) else value
        if value == "":
            value = None
        target = source.extract_column(col)
        if isinstance(value, str) and "\x00" in value:
            # no value holds a NUL, and PostgreSQL text cannot store one
            errors.append(f"{col}:nul_character")
            out[target] = None
            continue
        try:
            if source.personal and col == "resident_code":
                if value is None:
                    errors.append("resident_code:missing")
                    out[target] = None
                    continue
                text = str(value)
                # ASCII only: str.isdigit() accepts full-width digits, which would seal to a
                # pseudonym other than the same code's in ASCII, a silent mislink.
                if not (len(text) == RESIDENT_CODE_DIGITS and text.isascii() and text.isdigit()):
                    errors.append("resident_code:invalid_format")
                out[target] = ring.seal(source.key_purpose, text)
            elif source.personal and col == "household_code":
                out[target] = None if value is None else ring.seal(source.key_purpose, f"household:{value}")
            elif source.personal and col == "name_kana":
                norm = normalize_name(value)
                out[target] = None if norm is None else ring.seal(source.key_purpose, f"name:{norm}")
            elif source.personal and col == "address" and target == "address_sealed":
                norm = normalize_address(value)
                out[target] = None if norm is None else ring.seal(source.key_purpose, f"address:{norm}")
            elif t == "date":
                d = values.parse_date(value)
                out[target] = None if d is None else d.isoformat()
            elif t == "timestamp":
                ts = values.parse_timestamp(value)
                out[target] = None if ts is None else values.format_timestamp(ts)
            elif t == "int":
                out[target] = values.parse_int(value)
            else:
                out[target] = None if value is None else str(value)
        except values.ValueParseError as exc:
            errors.append(f"{col}:{exc.reason}")
            out[target] = None
    out["parse_errors"] = ";".join(errors) or None
    return out


INCREMENTAL, RECONCILE, FULL = "incremental", "reconcile", "full"
MODES = (INCREMENTAL, RECONCILE, FULL)
_NO_KEY = "#"  # state key prefix of a row without a natural key: exported once, never tombstoned
_DUPLICATE = "duplicate"  # state digest of a key the raw source holds twice: re-exported each time


def state_tables(source: Source, md: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The adapter's own department-side state: what it last exported per natural key (the
    extract's key value: a record id or the department pseudonym, never a plaintext code) with
    the row digest, and its position (last export, change-column position, key version)."""
    keys = md.tables.get(f"export_state_{source.name}")
    if keys is None:
        keys = sa.Table(
            f"export_state_{source.name}", md,
            sa.Column("record_key", sa.String(200), primary_key=True),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("change_seq", sa.Integer, nullable=False),
        )
    pos = md.tables.get("export_position")
    if pos is None:
        pos = sa.Table(
            "export_position", md,
            sa.Column("source", sa.String(64), primary_key=True),
            sa.Column("position", sa.String(32)),  # change-column position (canonical JST text)
            sa.Column("key_version", sa.Integer),  # the department key version state keys are under
            sa.Column("export_id", sa.Integer, nullable=False),
            sa.Column("exported_at", sa.String(32), nullable=False),
            sa.Column("reconciled_at", sa.String(32)),
        )
    return keys, pos


def row_digest_of(source: Source, row: dict) -> str:
    """SHA-256 of an extract row's content (every extract column and parse_errors, by column
    name, so the order of the configured columns does not matter; not its position).
    Pseudonyms are deterministic, so an unchanged raw row digests alike each time."""
    names = sorted((*source.extract_columns, "parse_errors"))
    return hashlib.sha256(record_text([x for c in names for x in (c, row.get(c))]).encode()).hexdigest()


def _check_extract_schema(conn: sa.Connection, table: sa.Table) -> None:
    cols = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    missing = [c.name for c in table.columns if c.name not in cols]
    if missing:
        raise SourceError(
            f"{table.name}: an extract table of an older Renkei (no {missing}: a full snapshot, or names and "
            f"addresses digested with a shared key instead of sealed under the department's). Drop {table.name} "
            "(and export_state_* / export_position) and export again: the first export writes every row"
        )


def pseudonymize(
    source: Source,
    location: str,
    to_url: str,
    ring: KeyRing,
    progress: Callable[[str], None] | None = None,
    batch_rows: int = 20000,
    mode: str = INCREMENTAL,
    state_url: str | None = None,
    now: datetime | None = None,
) -> ExtractResult:
    """Append what changed in a raw source since the last export to its extract at ``to_url``.

    ``incremental``: a SQL source is read from the adapter's position on its change column minus
    the overlap; a CSV file (a whole file each time) is diffed in full, vanished keys becoming
    tombstones. ``reconcile``: the complete key set is read and diffed (changed rows and
    tombstones). ``full``: every row is written again, and tombstones. The first export is full.
    Each written row gets the next change_seq, this export's id, its op and the export time; rows
    whose digest did not change are skipped. The state (``state_url``, default ``to_url``) is the
    department's: the extract key and row digest per record, never a plaintext code.
    """
    if mode not in MODES:
        raise SourceError(f"{source.name}: export mode {mode!r}: use one of {MODES}")
    started = time.perf_counter()
    exported_at = values.format_timestamp(now or datetime.now(timezone.utc))
    md = sa.MetaData()
    table = extract_table(source, md)
    keys, pos = state_tables(source, md)
    eng = engine(to_url)
    st_eng = eng if state_url in (None, to_url) else engine(state_url)
    md.create_all(eng, tables=[table])
    md.create_all(st_eng, tables=[keys, pos])
    with st_eng.connect() as sconn:
        position = sconn.execute(sa.select(pos).where(pos.c.source == source.name)).first()
    if position is None:
        mode = FULL
    key_version = ring.current(source.key_purpose) if source.personal else None
    if position is not None and source.key == "dept_pseudonym" and position.key_version not in (None, key_version):
        _rekey_state(st_eng, source, keys, ring, progress)
    csv_input = "://" not in location
    full_read = mode != INCREMENTAL or csv_input or source.change_column is None
    since = None
    if not full_read and position is not None and position.position is not None:
        since = values.format_timestamp(
            datetime.fromisoformat(position.position) - timedelta(minutes=source.change_overlap_minutes))
    ceiling = values.format_timestamp(
        datetime.fromisoformat(exported_at) + timedelta(minutes=source.max_clock_skew_minutes))

    known: dict[str, str] = {}
    if full_read and position is not None:
        with st_eng.connect() as sconn:
            known = dict(sconn.execute(sa.select(keys.c.record_key, keys.c.digest)).all())
    seen: dict[str, str] = {}  # this read: state key -> digest (or _DUPLICATE)
    changed_state: dict[str, str] = {}
    read = flagged = unchanged = upserts = held = 0
    newest = position.position if position is not None else None
    change_col = source.change_column
    with eng.begin() as conn:
        _check_extract_schema(conn, table)
        _lock(conn, table)
        first_seq = seq = (conn.execute(sa.select(sa.func.max(table.c.change_seq))).scalar() or 0) + 1
        export_id = (conn.execute(sa.select(sa.func.max(table.c.export_id))).scalar() or 0) + 1
        head = {"export_id": export_id, "exported_at": exported_at}
        batch: list[dict] = []

        def flush() -> None:
            nonlocal batch
            if batch:
                conn.execute(table.insert(), batch)
                batch = []

        for part in _batched(_iter_raw(source, location, None if full_read else change_col, since), 2000):
            converted = []
            for idx, raw in part:
                row = convert_row(source, ring, raw)
                read += 1
                stamp = raw.get(change_col) if raw is not None and change_col else None
                if stamp:
                    newest = _advance(newest, stamp, ceiling)
                key = row.get(source.key)
                digest = row_digest_of(source, row)
                skey = f"{_NO_KEY}{digest}" if key is None else str(key)
                # a key the raw source holds twice: every copy goes, every time (validation
                # quarantines them together until the department resolves it)
                seen[skey] = _DUPLICATE if skey in seen and key is not None else digest
                converted.append((idx, row, skey, digest))
            if not full_read:
                with st_eng.connect() as sconn:
                    known = dict(sconn.execute(sa.select(keys.c.record_key, keys.c.digest).where(
                        keys.c.record_key.in_(sorted({c[2] for c in converted})))).all())
            for idx, row, skey, digest in converted:
                if mode != FULL and known.get(skey) == digest and seen[skey] != _DUPLICATE:
                    unchanged += 1
                    continue
                if not full_read and known.get(skey) == _DUPLICATE and seen[skey] != _DUPLICATE:
                    # a key held twice of which the window holds one copy: exported alone it would
                    # load as if it were the record; the reconcile reads (and sends) every copy
                    held += 1
                    continue
                flagged += row["parse_errors"] is not None
                batch.append({**row, **head, "change_seq": seq, "op": UPSERT, "source_row": idx})
                changed_state[skey] = seen[skey]
                seq += 1
                upserts += 1
            if len(batch) >= batch_rows:
                flush()
                if progress:
                    progress(f"{source.name}: {read:,} rows read, {upserts:,} changed")
        deletes = 0
        if full_read and position is not None:
            for skey in known.keys() - seen.keys():
                if skey.startswith(_NO_KEY):
                    continue
                batch.append(_tombstone(source, skey, head, seq))
                changed_state[skey] = ""  # removed from the state below
                seq += 1
                deletes += 1
                if len(batch) >= batch_rows:
                    flush()
            gone_unkeyed = [k for k in known.keys() - seen.keys() if k.startswith(_NO_KEY)]
            for k in gone_unkeyed:
                changed_state[k] = ""
        flush()
        new_position = {
            "source": source.name, "position": newest if change_col else None, "key_version": key_version,
            "export_id": export_id, "exported_at": exported_at,
            "reconciled_at": exported_at if full_read else (position.reconciled_at if position is not None else None),
        }
        if st_eng is eng:
            _save_state(conn, source, keys, pos, changed_state, new_position, first_seq)
    if st_eng is not eng:  # after the extract committed: a crash in between re-exports, never loses
        with st_eng.begin() as sconn:
            _save_state(sconn, source, keys, pos, changed_state, new_position, first_seq)
        st_eng.dispose()
    eng.dispose()
    written = upserts + deletes
    if progress:
        progress(f"{source.name}: {mode} export {export_id}: {upserts:,} upserts, {deletes:,} tombstones, "
                 f"{unchanged:,} unchanged of {read:,} read"
                 + (f"; {held:,} copies of keys held twice wait for the reconcile" if held else ""))
    return ExtractResult(
        source.name, mode, read, written, upserts, deletes, unchanged, flagged,
        first_seq if written else None, seq - 1 if written else None, export_id,
        round(time.perf_counter() - started, 3))


def _iter_raw(source: Source, location: str, since_column: str | None = None,
              since: str | None = None) -> Iterator[tuple[int, dict | None]]:
    """(position, raw row or None) of a CSV file or SQL table; a SQL table from ``since`` on
    ``since_column`` when both are given."""
    if "://" not in location:
        yield from _iter_csv(source, location)
    else:
        yield from csvfile.iter_sql_rows(location, source.name, source.raw_columns, chunk_rows=source.chunk_rows,
                                         since_column=since_column if since else None, since=since)


def _lock(conn: sa.Connection, table: sa.Table) -> None:
    """One export of a source at a time, its sequence numbers committed in order (a reader must
    never see seq n+1 before n): EXCLUSIVE on PostgreSQL (readers go on), SQLite's write lock."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f'LOCK TABLE "{table.name}" IN EXCLUSIVE MODE')
    else:
        conn.execute(table.delete().where(sa.false()))


def _advance(newest: str | None, stamp: str, ceiling: str) -> str | None:
    """The change-column position after seeing ``stamp``: the latest stamp not past the export
    time plus the allowed skew (a sentinel such as 9999-12-31 never moves it)."""
    try:
        ts = values.parse_timestamp(stamp)
    except values.ValueParseError:
        return newest
    if ts is None:
        return newest
    canon = values.format_timestamp(ts)
    if canon > ceiling:
        return newest
    return canon if newest is None or canon > newest else newest


def _batched(items: Iterator, size: int) -> Iterator[list]:
    part: list = []
    for item in items:
        part.append(item)
        if len(part) >= size:
            yield part
            part = []
    if part:
        yield part


def _tombstone(source: Source, skey: str, head: dict, seq: int) -> dict:
    row = {c: None for c in source.extract_columns}
    row[source.key] = skey
    return {**row, **head, "parse_errors": None, "change_seq": seq, "op": DELETE, "source_row": 0}


def _save_state(conn: sa.Connection, source: Source, keys: sa.Table, pos: sa.Table, changed: dict[str, str],
                position: dict, first_seq: int) -> None:
    gone = [k for k, d in changed.items() if d == ""]
    for i in range(0, len(gone), 500):
        conn.execute(keys.delete().where(keys.c.record_key.in_(gone[i:i + 500])))
    rows = [{"record_key": k, "digest": d, "change_seq": first_seq} for k, d in changed.items() if d != ""]
    for i in range(0, len(rows), 5000):
        upsert(conn, keys, rows[i:i + 5000])
    upsert(conn, pos, [position])


def _rekey_state(eng: sa.Engine, source: Source, keys: sa.Table, ring: KeyRing, progress) -> None:
    """The department key was rotated since the last export: re-seal the state's pseudonym keys
    under the current version, so the diff still recognises every record (and no record is
    tombstoned for having a new pseudonym)."""
    with eng.begin() as conn:
        rows = conn.execute(sa.select(keys.c.record_key, keys.c.digest, keys.c.change_seq)).all()
        tokens = [r.record_key for r in rows if not r.record_key.startswith(_NO_KEY)]
        resealed = dict(zip(tokens, ring.reseal_many(source.key_purpose, tokens, source.key_purpose)))
        conn.execute(keys.delete())
        out = []
        for r in rows:
            new, err = resealed.get(r.record_key, (r.record_key, None))
            if err is None:
                # the digest covered the old pseudonym: the record is re-exported once under the new one
                out.append({"record_key": new, "digest": "rekeyed", "change_seq": r.change_seq})
        for i in range(0, len(out), 5000):
            conn.execute(keys.insert(), out[i:i + 5000])
    if progress:
        progress(f"{source.name}: export state re-keyed to the current {source.key_purpose} version")


def extract_exists(to_url: str, source: Source) -> bool:
    eng = engine(to_url)
    try:
        return sa.inspect(eng).has_table(f"extract_{source.name}")
    finally:
        eng.dispose()


def now_jst() -> str:
    return values.format_timestamp(datetime.now(timezone.utc))


__all__ = ["pseudonymize", "convert_row", "raw_location", "ExtractResult", "extract_exists", "state_tables",
           "INCREMENTAL", "RECONCILE", "FULL"]
