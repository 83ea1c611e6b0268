"""The export adapter (`renkei pseudonymize`): raw departmental rows → pseudonymized extract.

Runs inside the department boundary. It seals the resident code into the department pseudonym,
digests the name reading and the address after normalisation, parses dates (ISO or 和暦) and
timestamps, drops what the pipeline must not see (kanji names), and writes one full snapshot
of the extract. It never drops a row: a value it cannot parse becomes NULL and the row carries
``parse_errors`` ("column:reason;…"), so validation quarantines it with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from renkei.config import Source
from renkei.errors import SourceError
from renkei.keys.normalize import normalize_address, normalize_name
from renkei.keys.ring import KeyRing
from renkei.sources import csvfile, values
from renkei.warehouse import engine, extract_table

RESIDENT_CODE_DIGITS = 11


@dataclass(frozen=True)
class ExtractResult:
    source: str
    read: int
    written: int
    with_parse_errors: int
    seconds: float


def raw_location(raw_dir: Path, source: str) -> str | None:
    """The raw input for a source in a drop folder: ``<source>.csv`` or ``<source>.db``."""
    csv_path, db_path = raw_dir / f"{source}.csv", raw_dir / f"{source}.db"
    if csv_path.exists():
        return str(csv_path)
    if db_path.exists():
        return f"sqlite:///{db_path}"
    return None


def _iter_raw(source: Source, location: str) -> Iterator[tuple[int, dict | None]]:
    if "://" not in location:
        path = Path(location)
        if not path.exists():
            raise SourceError(f"{source.name}: no such file {path}: give a CSV path or a SQLAlchemy URL")
        header, rows = csvfile.read_csv(path)
        missing = [c for c in source.raw_columns if c not in header]
        if missing:
            raise SourceError(f"{source.name}: {path.name} lacks columns {missing}: the header must hold the SOURCES.md columns")
        for idx, fields in rows:
            yield idx, (None if fields is None else dict(zip(header, fields)))
    else:
        yield from csvfile.iter_sql_rows(location, source.name, source.raw_columns, chunk_rows=source.chunk_rows)


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
                out[target] = None if norm is None else ring.digest(norm)
            elif source.personal and col == "address" and target == "address_digest":
                norm = normalize_address(value)
                out[target] = None if norm is None else ring.digest(norm)
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


def pseudonymize(
    source: Source,
    location: str,
    to_url: str,
    ring: KeyRing,
    progress: Callable[[str], None] | None = None,
    batch_rows: int = 20000,
) -> ExtractResult:
    """Read a raw source and replace its extract snapshot at ``to_url`` (one transaction)."""
    started = time.perf_counter()
    md = sa.MetaData()
    table = extract_table(source, md)
    eng = engine(to_url)
    md.create_all(eng)
    read = written = flagged = 0
    with eng.begin() as conn:
        conn.execute(table.delete())
        batch: list[dict] = []
        for idx, raw in _iter_raw(source, location):
            row = convert_row(source, ring, raw)
            row["source_row"] = idx
            read += 1
            flagged += row["parse_errors"] is not None
            batch.append(row)
            if len(batch) >= batch_rows:
                conn.execute(table.insert(), batch)
                written += len(batch)
                batch = []
                if progress:
                    progress(f"{source.name}: {written:,} rows pseudonymized")
        if batch:
            conn.execute(table.insert(), batch)
            written += len(batch)
    eng.dispose()
    return ExtractResult(source.name, read, written, flagged, round(time.perf_counter() - started, 3))


def extract_exists(to_url: str, source: Source) -> bool:
    eng = engine(to_url)
    try:
        return sa.inspect(eng).has_table(f"extract_{source.name}")
    finally:
        eng.dispose()


def now_jst() -> str:
    return values.format_timestamp(datetime.now(timezone.utc))


__all__ = ["pseudonymize", "convert_row", "raw_location", "ExtractResult", "extract_exists"]
