"""Output formats of the synthetic sources: one SQLite file or one CSV file per source, streamed."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import numpy as np

from renkei.synth.defects import KEEP, Defect
from renkei.synth.eras import STYLES, to_era
from renkei.synth.table import SCHEMAS, Table

FORMATS = ("sqlite", "csv", "csv-cp932")
CHUNK_ROWS = 50_000
ERA_SHARE = 0.03  # of CSV date cells written in Japanese era form (valid; must load)
# 外字 outside CP932: a CP932 export carries the standard form instead.
_CP932_FOLD = str.maketrans({"𠮷": "吉"})


def write_table(table: Table, fmt: str, out: Path, defects: dict[int, Defect],
                rng: np.random.Generator) -> list[dict]:
    """Write `table` to `out` in `fmt` with its defects applied; return the era-date manifest entries."""
    if fmt == "sqlite":
        _write_sqlite(table, out / f"{table.source}.db", defects)
        return []
    if fmt in ("csv", "csv-cp932"):
        return _write_csv(table, out / f"{table.source}.csv", fmt, defects, rng)
    raise ValueError(f"format {fmt!r}: use one of {FORMATS}")


def _chunks(table: Table, defects: dict[int, Defect]):
    """Rendered chunks (start row, column → values) with the defects' cell replacements applied."""
    for start in range(0, table.n_rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, table.n_rows)
        values = table.render(np.arange(start, stop, dtype=np.int64))
        for row in (r for r in defects if start <= r < stop):
            defect = defects[row]
            if defect.column is not None and defect.value is not KEEP:
                values[defect.column][row - start] = defect.value
        yield start, stop, values


def _write_sqlite(table: Table, path: Path, defects: dict[int, Defect]) -> None:
    path.unlink(missing_ok=True)
    schema = SCHEMAS[table.source]
    columns = ", ".join(f'"{name}" {"INTEGER" if type_ == "int" else "TEXT"}' for name, type_ in schema)
    placeholders = ", ".join("?" for _ in schema)
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute(f'CREATE TABLE "{table.source}" ({columns})')
        insert = f'INSERT INTO "{table.source}" VALUES ({placeholders})'
        for _, _, values in _chunks(table, defects):
            connection.executemany(insert, zip(*(values[name] for name in table.columns)))
        if any(name == "updated_at" for name, _ in schema):
            # as a department system indexes its change column: the export adapter's incremental read
            connection.execute(f'CREATE INDEX "ix_{table.source}_updated_at" ON "{table.source}" (updated_at)')
        connection.commit()
    finally:
        connection.close()


def _write_csv(table: Table, path: Path, fmt: str, defects: dict[int, Defect],
               rng: np.random.Generator) -> list[dict]:
    # The registry carries a UTF-8 BOM and the others none, so readers meet both.
    encoding = "cp932" if fmt == "csv-cp932" else ("utf-8-sig" if table.source == "registry" else "utf-8")
    date_columns = table.columns_of_type("date")
    era_entries: list[dict] = []
    with path.open("w", encoding=encoding, newline="") as handle:
        csv.writer(handle).writerow(table.columns)
        for start, stop, values in _chunks(table, defects):
            if fmt == "csv-cp932" and "name_kanji" in values:
                values["name_kanji"] = [v.translate(_CP932_FOLD) for v in values["name_kanji"]]
            era_entries += _era_dates(table.source, start, stop, values, date_columns, defects, rng)
            rows: list = list(zip(*(values[name] for name in table.columns)))  # csv writes None as ""
            for row in (r for r in defects if start <= r < stop and defects[r].shape):
                fields = list(rows[row - start])
                rows[row - start] = fields + fields[-1:] if defects[row].shape == "extra" else fields[:-1]
            # One write per chunk: encoding row by row through the text layer is the bottleneck.
            buffer = io.StringIO(newline="")
            csv.writer(buffer).writerows(rows)
            handle.write(buffer.getvalue())
    return era_entries


def _era_dates(source: str, start: int, stop: int, values: dict[str, list], date_columns: tuple[str, ...],
               defects: dict[int, Defect], rng: np.random.Generator) -> list[dict]:
    """Rewrite about ERA_SHARE of the chunk's date cells in era form (at most one per row)."""
    entries = []
    taken = {r - start for r in defects if start <= r < stop}
    for column in date_columns:
        cells = values[column]
        draws = rng.random(stop - start)
        styles = rng.integers(len(STYLES), size=stop - start)
        for k in np.flatnonzero(draws < ERA_SHARE).tolist():
            if k in taken or cells[k] is None:
                continue
            cells[k] = to_era(cells[k], STYLES[styles[k]])
            taken.add(k)
            entries.append({"source": source, "row": start + k, "defect": "era_date", "column": column,
                            "expect": "load"})
    return entries
