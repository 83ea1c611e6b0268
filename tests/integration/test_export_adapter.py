"""The export adapter's contract (SOURCES.md, change capture), and ingest of its change log.

The adapter (``renkei pseudonymize``) runs inside the department: it turns the raw table (a SQL
table: SQLite file or PostgreSQL; or a CSV drop) into an append-only change log — upserts of new
or changed rows and tombstones of vanished keys, each with the next change_seq — and keeps its
own department-side state. The department's changes are made here as the department's systems
make them: on the raw table (UPDATE, INSERT, DELETE) or by writing a new CSV file.

Every expected number is computed by hand from the rows below: ten immunization records
IM00000…IM00009 of residents 10000000000…10000000009, record i stamped 2025-05-(i+1) 09:00 JST,
so the adapter's position after the first export is P = 2025-05-10T09:00:00+09:00 (record 9),
and an incremental SQL read starts at P minus the overlap of 120 minutes, 07:00: only record 9
(and any row changed since) is read again. Exports run at NOW = 2025-06-01 10:00 JST and later.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from renkei.cli import main
from renkei.config import load_sources
from renkei.events import ChangeEvent
from renkei.ingest import FUTURE, extract, load, validate
from renkei.keys.adapter import ExtractResult, pseudonymize
from renkei.keys.normalize import normalize_address, normalize_name
from renkei.settings import Settings
from renkei.sources.values import JST

SOURCES = load_sources()
IMM, REG = SOURCES["immunization"], SOURCES["registry"]
RAW_KEY = {"immunization": "record_id", "registry": "resident_code"}
N = 10
KANA, ADDRESS = "ヤマダ ハナコ", "北九州市戸畑区中本町1番1号"
P = "2025-05-10T09:00:00+09:00"  # the position after the first export (record 9's stamp)
NOW = datetime(2025, 6, 1, 10, 0, tzinfo=JST)


def at(hours: float) -> datetime:
    """An export time: NOW plus some hours."""
    return NOW + timedelta(hours=hours)


def jst(dt: datetime) -> str:
    return dt.astimezone(JST).isoformat(timespec="seconds")


def code(i: int) -> str:
    return f"{10000000000 + i}"


def stamp(i: int) -> str:
    return f"2025-05-{i + 1:02d}T09:00:00+09:00"


def imm_row(i: int, **over) -> dict:
    row = {"record_id": f"IM{i:05d}", "resident_code": code(i), "name_kana": KANA, "birth_date": "2024-04-10",
           "sex": "2", "address": ADDRESS, "vaccine_code": "HEPB", "dose_number": "1",
           "administered_on": "2024-06-10", "updated_at": stamp(i)}
    return {**row, **over}


def reg_row(i: int, **over) -> dict:
    row = {"resident_code": code(i), "name_kana": KANA, "name_kanji": "山田 花子", "birth_date": "1980-04-01",
           "sex": "2", "ward_code": "401064", "address": ADDRESS, "household_code": f"H{i}", "status": "resident",
           "status_date": "1980-04-01", "updated_at": stamp(i)}
    return {**row, **over}


# -- the department's raw table -------------------------------------------------------------------


class Raw:
    """A department's raw table of one source: SQLite file, PostgreSQL table or CSV drop file.
    Changes are made the way the department's system makes them."""

    def __init__(self, kind: str, source, where: Path, pg_url: str | None = None) -> None:
        self.kind, self.source, self.key = kind, source, RAW_KEY[source.name]
        self.rows: list[dict] = []  # the CSV file's rows (rewritten as a whole on each change)
        if kind == "csv":
            self.path = where / f"{source.name}.csv"
            self.location = str(self.path)
            return
        self.url = pg_url if kind == "postgresql" else f"sqlite:///{where / (source.name + '.db')}"
        self.location = self.url
        self.eng = sa.create_engine(self.url)
        ts = sa.DateTime(timezone=True) if kind == "postgresql" else sa.Text  # a department's own types
        self.table = sa.Table(
            source.name, sa.MetaData(),
            sa.Column("_id", sa.Integer, primary_key=True, autoincrement=True),  # SQLite: the rowid
            *[sa.Column(c, ts if c == "updated_at" else sa.Text) for c in source.raw_columns],
            sa.Index(f"ix_{source.name}_updated_at", "updated_at"),
        )

    def _values(self, row: dict) -> dict:
        if self.kind == "postgresql" and row.get("updated_at"):
            return {**row, "updated_at": datetime.fromisoformat(row["updated_at"])}
        return row

    def _write(self) -> None:
        with open(self.path, "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.source.raw_columns)
            w.writeheader()
            w.writerows(self.rows)

    def create(self, rows: list[dict]) -> None:
        if self.kind == "csv":
            self.rows = [dict(r) for r in rows]
            self._write()
            return
        self.table.drop(self.eng, checkfirst=True)
        self.table.create(self.eng)
        with self.eng.begin() as conn:
            conn.execute(self.table.insert(), [self._values(r) for r in rows])

    def update(self, key: str, **values) -> None:
        if self.kind == "csv":
            for r in self.rows:
                if r[self.key] == key:
                    r.update(values)
            self._write()
            return
        with self.eng.begin() as conn:
            n = conn.execute(self.table.update().where(self.table.c[self.key] == key).values(self._values(values))).rowcount
        assert n >= 1

    def insert(self, row: dict) -> None:
        if self.kind == "csv":
            self.rows.append(dict(row))
            self._write()
            return
        with self.eng.begin() as conn:
            conn.execute(self.table.insert(), [self._values(row)])

    def delete(self, key: str) -> None:
        if self.kind == "csv":
            self.rows = [r for r in self.rows if r[self.key] != key]
            self._write()
            return
        with self.eng.begin() as conn:
            assert conn.execute(self.table.delete().where(self.table.c[self.key] == key)).rowcount >= 1

    def close(self) -> None:
        if self.kind != "csv":
            self.eng.dispose()


def _clean_pg(url: str) -> None:
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        md = sa.MetaData()
        md.reflect(conn)
        md.drop_all(conn)
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql(request, tmp_path):
    """(raw table factory, extract URL): SQLite raw file and SQLite extracts, or a PostgreSQL raw
    table with the extract and the adapter's state in the same PostgreSQL database."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        _clean_pg(url)
    else:
        url = f"sqlite:///{tmp_path / 'extracts.db'}"
    made: list[Raw] = []

    def raw(source=IMM) -> Raw:
        made.append(Raw(request.param, source, tmp_path, pg_url=url if request.param == "postgresql" else None))
        return made[-1]

    yield raw, url
    for r in made:
        r.close()


@pytest.fixture
def csv_raw(tmp_path):
    def raw(source=IMM) -> Raw:
        return Raw("csv", source, tmp_path)

    return raw, f"sqlite:///{tmp_path / 'csv_extracts.db'}"


def log(url: str, source=IMM, after: int = 0) -> list[dict]:
    """The extract's change log (rows after change_seq ``after``), in change_seq order."""
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text(
            f"SELECT * FROM extract_{source.name} WHERE change_seq > :a ORDER BY change_seq"), {"a": after})]
    eng.dispose()
    return rows


def position(url: str, source=IMM) -> str | None:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        pos = conn.execute(sa.text("SELECT position FROM export_position WHERE source = :s"), {"s": source.name}).scalar()
    eng.dispose()
    return pos


def counts(res: ExtractResult) -> tuple:
    return res.mode, res.read, res.written, res.upserts, res.deletes, res.unchanged, res.first_seq, res.last_seq


def export(raw: Raw, url: str, ring, hours: float = 0, mode: str = "incremental", **kw) -> ExtractResult:
    return pseudonymize(raw.source, raw.location, url, ring, mode=mode, now=at(hours), **kw)


# -- the first export ----------------------------------------------------------------------------


def _assert_first_export(rows: list[dict], ring, exported_at: str) -> None:
    assert [r["change_seq"] for r in rows] == list(range(1, N + 1))
    assert {r["export_id"] for r in rows} == {1} and {r["op"] for r in rows} == {"upsert"}
    assert {r["exported_at"] for r in rows} == {exported_at}
    assert [r["source_row"] for r in rows] == list(range(N))
    assert [r["record_id"] for r in rows] == [f"IM{i:05d}" for i in range(N)]
    for i, r in enumerate(rows):
        assert r["dept_pseudonym"] == ring.seal("dept:health_bureau", code(i))
        # quasi-identifiers leave sealed under the department's key (no match digest: that key is the pipeline's)
        assert (r["name_sealed"], r["address_sealed"]) == (
            ring.seal("dept:health_bureau", "name:" + normalize_name(KANA)),
            ring.seal("dept:health_bureau", "address:" + normalize_address(ADDRESS)))
        assert (r["birth_date"], r["sex"], r["vaccine_code"], r["dose_number"], r["administered_on"]) == (
            "2024-04-10", 2, "HEPB", 1, "2024-06-10")
        assert (r["updated_at"], r["parse_errors"]) == (stamp(i), None)


def test_sql_first_export_writes_every_row_then_nothing_unchanged(sql, ring):
    raw_of, url = sql
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    first = export(raw, url, ring)
    assert counts(first) == ("full", N, N, N, 0, 0, 1, N) and first.export_id == 1
    _assert_first_export(log(url), ring, jst(NOW))
    assert position(url) == P
    # Nothing changed: the incremental read sees record 9 only (P - 120 min); reconcile reads all.
    assert counts(export(raw, url, ring, 1)) == ("incremental", 1, 0, 0, 0, 1, None, None)
    assert counts(export(raw, url, ring, 2, mode="reconcile")) == ("reconcile", N, 0, 0, 0, N, None, None)
    assert counts(export(raw, url, ring, 3)) == ("incremental", 1, 0, 0, 0, 1, None, None)
    assert len(log(url)) == N and position(url) == P


def test_csv_first_export_writes_every_row_then_nothing_unchanged(csv_raw, ring):
    raw_of, url = csv_raw
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    assert counts(export(raw, url, ring)) == ("full", N, N, N, 0, 0, 1, N)
    _assert_first_export(log(url), ring, jst(NOW))
    # A CSV file is read and diffed whole every time.
    assert counts(export(raw, url, ring, 1)) == ("incremental", N, 0, 0, 0, N, None, None)
    assert counts(export(raw, url, ring, 2, mode="reconcile")) == ("reconcile", N, 0, 0, 0, N, None, None)
    assert len(log(url)) == N


# -- updates, deletes, re-inserts ----------------------------------------------------------------


def test_sql_update_writes_exactly_that_row(sql, ring):
    raw_of, url = sql
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    export(raw, url, ring)
    raw.update("IM00003", administered_on="2024-06-11", updated_at=jst(at(0.5)))
    res = export(raw, url, ring, 1)
    # read: records 3 and 9 (table order), record 9 unchanged
    assert counts(res) == ("incremental", 2, 1, 1, 0, 1, N + 1, N + 1) and res.export_id == 2
    [row] = log(url, after=N)
    assert (row["record_id"], row["op"], row["export_id"], row["exported_at"], row["source_row"]) == (
        "IM00003", "upsert", 2, jst(at(1)), 0)
    assert (row["administered_on"], row["updated_at"]) == ("2024-06-11", jst(at(0.5)))
    assert row["dept_pseudonym"] == ring.seal("dept:health_bureau", code(3))
    assert position(url) == jst(at(0.5))
    # from the new position: record 3 is read again (within the overlap) and skipped
    assert counts(export(raw, url, ring, 2)) == ("incremental", 1, 0, 0, 0, 1, None, None)


def test_csv_update_writes_exactly_that_row(csv_raw, ring):
    raw_of, url = csv_raw
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    export(raw, url, ring)
    raw.update("IM00003", administered_on="2024-06-11")  # the department did not even touch updated_at
    assert counts(export(raw, url, ring, 1)) == ("incremental", N, 1, 1, 0, N - 1, N + 1, N + 1)
    [row] = log(url, after=N)
    assert (row["record_id"], row["op"], row["source_row"], row["administered_on"], row["updated_at"]) == (
        "IM00003", "upsert", 3, "2024-06-11", stamp(3))


def _assert_tombstone(row: dict, key_column: str, key: str, seq: int, export_id: int, source=IMM) -> None:
    assert (row["change_seq"], row["op"], row["export_id"], row[key_column]) == (seq, "delete", export_id, key)
    others = [c for c in (*source.extract_columns, "parse_errors") if c != key_column]
    assert all(row[c] is None for c in others), {c: row[c] for c in others if row[c] is not None}


def test_sql_delete_is_a_tombstone_of_the_reconcile_only(sql, ring):
    raw_of, url = sql
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    export(raw, url, ring)
    raw.delete("IM00005")
    # An incremental read cannot see a row that is no longer there.
    assert counts(export(raw, url, ring, 1)) == ("incremental", 1, 0, 0, 0, 1, None, None)
    res = export(raw, url, ring, 2, mode="reconcile")
    assert counts(res) == ("reconcile", N - 1, 1, 0, 1, N - 1, N + 1, N + 1)
    [tomb] = log(url, after=N)
    _assert_tombstone(tomb, "record_id", "IM00005", N + 1, res.export_id)
    assert tomb["exported_at"] == jst(at(2))
    # Exactly one: the next reconcile and incremental find nothing more.
    assert counts(export(raw, url, ring, 3, mode="reconcile"))[2] == 0
    assert counts(export(raw, url, ring, 4))[2] == 0
    # Re-inserted (a new row, stamped now): a plain upsert of the key again.
    raw.insert(imm_row(5, administered_on="2024-06-15", updated_at=jst(at(4.5))))
    res = export(raw, url, ring, 5)
    assert counts(res) == ("incremental", 2, 1, 1, 0, 1, N + 2, N + 2)
    [back] = log(url, after=N + 1)
    assert (back["record_id"], back["op"], back["administered_on"]) == ("IM00005", "upsert", "2024-06-15")
    assert counts(export(raw, url, ring, 6, mode="reconcile"))[2] == 0


def test_csv_delete_is_a_tombstone_of_the_next_export(csv_raw, ring):
    raw_of, url = csv_raw
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    export(raw, url, ring)
    raw.delete("IM00005")
    res = export(raw, url, ring, 1)
    assert counts(res) == ("incremental", N - 1, 1, 0, 1, N - 1, N + 1, N + 1)
    [tomb] = log(url, after=N)
    _assert_tombstone(tomb, "record_id", "IM00005", N + 1, res.export_id)
    assert counts(export(raw, url, ring, 2))[2] == 0
    assert counts(export(raw, url, ring, 3, mode="reconcile"))[2] == 0
    # Re-inserted (at the end of the file now): an upsert, no tombstone.
    raw.insert(imm_row(5, administered_on="2024-06-15"))
    assert counts(export(raw, url, ring, 4)) == ("incremental", N, 1, 1, 0, N - 1, N + 2, N + 2)
    [back] = log(url, after=N + 1)
    assert (back["record_id"], back["op"], back["source_row"], back["administered_on"]) == (
        "IM00005", "upsert", N - 1, "2024-06-15")


def test_delete_then_reinsert_between_two_exports(sql, csv_raw, ring):
    # Deleted and inserted again before the adapter ran: what counts is the row now. The same
    # content again (a CSV row moved to the end of the file): no change at all; changed: one
    # upsert; never a tombstone.
    raw_of, url = csv_raw
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    export(raw, url, ring)
    raw.delete("IM00004")
    raw.insert(imm_row(4))
    assert counts(export(raw, url, ring, 1)) == ("incremental", N, 0, 0, 0, N, None, None)
    raw.delete("IM00004")
    raw.insert(imm_row(4, vaccine_code="HIB"))
    assert counts(export(raw, url, ring, 2)) == ("incremental", N, 1, 1, 0, N - 1, N + 1, N + 1)
    assert [(r["record_id"], r["op"], r["vaccine_code"]) for r in log(url, after=N)] == [("IM00004", "upsert", "HIB")]

    sraw_of, surl = sql
    sraw = sraw_of()
    sraw.create([imm_row(i) for i in range(N)])
    export(sraw, surl, ring)
    sraw.delete("IM00004")
    sraw.insert(imm_row(4, vaccine_code="HIB", updated_at=jst(at(0.5))))
    assert counts(export(sraw, surl, ring, 1)) == ("incremental", 2, 1, 1, 0, 1, N + 1, N + 1)
    assert counts(export(sraw, surl, ring, 2, mode="reconcile")) == ("reconcile", N, 0, 0, 0, N, None, None)
    assert [(r["record_id"], r["op"], r["vaccine_code"]) for r in log(surl, after=N)] == [("IM00004", "upsert", "HIB")]


# -- the department's clock is only a hint ---------------------------------------------------------


def test_a_future_stamp_does_not_move_the_position(sql, ring):
    raw_of, url = sql
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    export(raw, url, ring)
    raw.update("IM00002", administered_on="2024-06-12", updated_at="9999-12-31T00:00:00+09:00")
    # The row is exported (it changed), but its stamp is past the export time: P stays.
    assert counts(export(raw, url, ring, 1)) == ("incremental", 2, 1, 1, 0, 1, N + 1, N + 1)
    assert position(url) == P
    # A later ordinary change is still read and exported.
    raw.update("IM00007", administered_on="2024-06-17", updated_at=jst(at(1.9)))
    res = export(raw, url, ring, 2)
    assert counts(res) == ("incremental", 3, 1, 1, 0, 2, N + 2, N + 2)  # read: 2 (sentinel), 7, 9
    assert position(url) == jst(at(1.9))
    assert [(r["record_id"], r["updated_at"]) for r in log(url, after=N)] == [
        ("IM00002", "9999-12-31T00:00:00+09:00"), ("IM00007", jst(at(1.9)))]
    # A stamp inside the allowed skew (10 minutes) does move it.
    raw.update("IM00008", administered_on="2024-06-18", updated_at=jst(at(3) + timedelta(minutes=5)))
    assert counts(export(raw, url, ring, 3))[2:4] == (1, 1)
    assert position(url) == jst(at(3) + timedelta(minutes=5))


def test_a_late_stamp_within_the_overlap_is_read_one_far_behind_waits_for_the_reconcile(sql, ring):
    raw_of, url = sql
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    export(raw, url, ring)
    raw.update("IM00004", administered_on="2024-06-14", updated_at="2025-05-10T08:00:00+09:00")  # P - 60 min
    raw.update("IM00003", administered_on="2024-06-13", updated_at="1900-01-01T00:00:00+09:00")  # far behind
    assert counts(export(raw, url, ring, 1)) == ("incremental", 2, 1, 1, 0, 1, N + 1, N + 1)  # read: 4, 9
    assert [r["record_id"] for r in log(url, after=N)] == ["IM00004"]
    assert counts(export(raw, url, ring, 2)) == ("incremental", 2, 0, 0, 0, 2, None, None)
    res = export(raw, url, ring, 3, mode="reconcile")
    assert counts(res) == ("reconcile", N, 1, 1, 0, N - 1, N + 2, N + 2)
    [late] = log(url, after=N + 1)
    assert (late["record_id"], late["administered_on"], late["updated_at"]) == (
        "IM00003", "2024-06-13", "1900-01-01T00:00:00+09:00")
    assert position(url) == P  # neither moved it back


# -- a key held twice ----------------------------------------------------------------------------


def test_a_key_held_twice_is_exported_twice_every_time(sql, csv_raw, ring):
    # IM00001 twice: validation must see both copies in every export until the department
    # resolves it (else the one copy read would load as if it were the record).
    rows = [imm_row(i) for i in range(N)] + [imm_row(1, administered_on="2024-07-01")]
    raw_of, url = csv_raw
    raw = raw_of()
    raw.create(rows)
    assert counts(export(raw, url, ring))[:5] == ("full", N + 1, N + 1, N + 1, 0)
    for hours in (1, 2):
        res = export(raw, url, ring, hours)
        assert counts(res) == ("incremental", N + 1, 2, 2, 0, N - 1, res.first_seq, res.first_seq + 1)
        assert [(r["record_id"], r["source_row"]) for r in log(url, after=res.first_seq - 1)] == [
            ("IM00001", 1), ("IM00001", N)]
    # Resolved (the second copy deleted): the remaining row goes once more, then nothing.
    raw.rows.pop()
    raw._write()
    assert counts(export(raw, url, ring, 3))[2:5] == (1, 1, 0)
    assert counts(export(raw, url, ring, 4))[2] == 0

    # SQL: both copies are read by every reconcile, and by every incremental read while their
    # stamps are inside the window (here both stamped P).
    sraw_of, surl = sql
    sraw = sraw_of()
    sraw.create([imm_row(i) for i in range(N)] + [imm_row(1, administered_on="2024-07-01", updated_at=P)])
    sraw.update("IM00001", updated_at=P)
    export(sraw, surl, ring)
    for hours, mode, read in ((1, "incremental", 3), (2, "reconcile", N + 1), (3, "incremental", 3)):
        res = export(sraw, surl, ring, hours, mode=mode)
        assert counts(res)[:6] == (mode, read, 2, 2, 0, read - 2), mode
        assert [r["record_id"] for r in log(surl, after=res.first_seq - 1)] == ["IM00001", "IM00001"]


def test_one_changed_copy_of_a_key_held_twice_waits_for_the_reconcile(sql, ring):
    # Both copies stamped long before the window; the department edits one of them. The
    # incremental read sees that copy alone: exported, it would load as the record. It waits, and
    # the reconcile sends both copies (validation then quarantines them together).
    sraw_of, surl = sql
    sraw = sraw_of()
    sraw.create([imm_row(i) for i in range(N)] + [imm_row(1, administered_on="2024-07-01")])
    assert counts(export(sraw, surl, ring))[:5] == ("full", N + 1, N + 1, N + 1, 0)
    sraw.update("IM00003", updated_at=P)  # an ordinary edit in the window, for contrast
    t = sraw.table
    with sraw.eng.begin() as conn:  # the second copy only
        assert conn.execute(t.update().where(t.c.record_id == "IM00001", t.c.administered_on == "2024-07-01")
                            .values(sraw._values({"dose_number": "2", "updated_at": P}))).rowcount == 1
    res = export(sraw, surl, ring, 1)
    assert (res.upserts, res.deletes) == (1, 0)
    assert [r["record_id"] for r in log(surl, after=res.first_seq - 1)] == ["IM00003"]
    res = export(sraw, surl, ring, 2, mode="reconcile")
    assert [r["record_id"] for r in log(surl, after=res.first_seq - 1)] == ["IM00001", "IM00001"]


# -- full --------------------------------------------------------------------------------------


def test_full_rewrites_every_row_and_tombstones(sql, csv_raw, ring):
    for raw_of, url in (sql, csv_raw):
        raw = raw_of()
        raw.create([imm_row(i) for i in range(N)])
        export(raw, url, ring)
        raw.delete("IM00006")
        res = export(raw, url, ring, 1, mode="full")
        # every row again (the unchanged ones too), and the tombstone of the deleted one
        assert counts(res) == ("full", N - 1, N, N - 1, 1, 0, N + 1, 2 * N)
        rows = log(url, after=N)
        assert [r["change_seq"] for r in rows] == list(range(N + 1, 2 * N + 1))
        assert {r["export_id"] for r in rows} == {res.export_id} and res.export_id == 2
        assert [r["record_id"] for r in rows if r["op"] == "upsert"] == [f"IM{i:05d}" for i in range(N) if i != 6]
        _assert_tombstone(rows[-1], "record_id", "IM00006", 2 * N, 2)
        # and the state is whole: nothing more to write
        assert counts(export(raw, url, ring, 2, mode="reconcile"))[2] == 0


# -- the state is the department's, never plaintext -------------------------------------------------


def _texts(url: str, skip: set[str]) -> list[str]:
    eng = sa.create_engine(url)
    out = []
    with eng.connect() as conn:
        for name in sa.inspect(conn).get_table_names():
            if name in skip:
                continue
            for row in conn.execute(sa.text(f'SELECT * FROM "{name}"')):
                out.extend(str(v) for v in row if v is not None)
    eng.dispose()
    return out


def test_state_and_extract_hold_no_plaintext(sql, tmp_path, ring):
    raw_of, url = sql
    imm, reg = raw_of(IMM), raw_of(REG)
    imm.create([imm_row(i) for i in range(N)])
    reg.create([reg_row(i) for i in range(N)])
    state_url = f"sqlite:///{tmp_path / 'state.db'}"  # the adapter's state in a database of its own
    for raw, changed, deleted in ((imm, "IM00002", "IM00004"), (reg, code(2), code(4))):
        export(raw, url, ring, state_url=state_url)
        raw.update(changed, updated_at=jst(at(0.5)), address="北九州市門司区老松町1番1号")
        raw.delete(deleted)
        assert counts(export(raw, url, ring, 1, state_url=state_url))[2:5] == (1, 1, 0)
        assert counts(export(raw, url, ring, 2, mode="reconcile", state_url=state_url))[2:5] == (1, 0, 1)
    # the state lives where it was told to, not beside the extract
    names = set(sa.inspect(sa.create_engine(url)).get_table_names())
    assert {"extract_immunization", "extract_registry"} <= names
    assert not names & {"export_state_immunization", "export_state_registry", "export_position"}
    assert {"export_state_immunization", "export_state_registry", "export_position"} <= set(
        sa.inspect(sa.create_engine(state_url)).get_table_names())
    # Every text of the state and the extracts: no resident code, reading, kanji name or address.
    texts = _texts(url, skip={"immunization", "registry"}) + _texts(state_url, skip=set())
    plain = [code(i) for i in range(N)] + [KANA, "ヤマダ", "山田", ADDRESS, "北九州市"]
    assert texts and not [t for t in texts for p in plain if p in t]
    # the registry's state keys are its pseudonyms (the extract's key), the immunization's record ids
    eng = sa.create_engine(state_url)
    with eng.connect() as conn:
        reg_keys = set(conn.execute(sa.text("SELECT record_key FROM export_state_registry")).scalars())
        imm_keys = set(conn.execute(sa.text("SELECT record_key FROM export_state_immunization")).scalars())
    eng.dispose()
    assert reg_keys == {ring.seal("dept:ward_office", code(i)) for i in range(N) if i != 4}
    assert imm_keys == {f"IM{i:05d}" for i in range(N) if i != 4}


# -- department key rotation -----------------------------------------------------------------------


def test_dept_key_rotation_re_exports_once_and_tombstones_nothing(sql, csv_raw, ring):
    # registry is keyed by the department pseudonym: after a rotation every key is new, yet it is
    # the same record (the adapter re-keys its state); the immunization record ids stay.
    raw_of, url = csv_raw
    reg = raw_of(REG)
    reg.create([reg_row(i) for i in range(N)])
    imm = raw_of(IMM)
    imm.create([imm_row(i) for i in range(N)])
    for raw in (reg, imm):
        export(raw, url, ring)
    assert ring.rotate("dept:ward_office", grace_days=30) == 2
    assert ring.rotate("dept:health_bureau", grace_days=30) == 2
    for raw, purpose in ((reg, "dept:ward_office"), (imm, "dept:health_bureau")):
        res = export(raw, url, ring, 1)
        assert counts(res) == ("incremental", N, N, N, 0, 0, N + 1, 2 * N), raw.source.name
        rows = log(url, raw.source, after=N)
        assert [r["dept_pseudonym"] for r in rows] == [ring.seal(purpose, code(i)) for i in range(N)]
        assert all(r["dept_pseudonym"].startswith("v2.") and r["op"] == "upsert" for r in rows)
        assert counts(export(raw, url, ring, 2))[2] == 0
        assert counts(export(raw, url, ring, 3, mode="reconcile"))[2] == 0

    # SQL, registry: the incremental read re-keys what it reads (record 9), the reconcile the rest.
    sraw_of, surl = sql
    sreg = sraw_of(REG)
    sreg.create([reg_row(i) for i in range(N)])
    export(sreg, surl, ring)
    assert ring.rotate("dept:ward_office", grace_days=30) == 3
    assert counts(export(sreg, surl, ring, 1)) == ("incremental", 1, 1, 1, 0, 0, N + 1, N + 1)
    assert counts(export(sreg, surl, ring, 2, mode="reconcile")) == ("reconcile", N, N - 1, N - 1, 0, 1, N + 2, 2 * N)
    assert sorted(r["dept_pseudonym"] for r in log(surl, REG, after=N)) == sorted(
        ring.seal("dept:ward_office", code(i)) for i in range(N))
    assert {r["op"] for r in log(surl, REG)} == {"upsert"}
    assert counts(export(sreg, surl, ring, 3, mode="reconcile"))[2] == 0


# -- the CLI ---------------------------------------------------------------------------------------


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_cli_reconcile_prints_the_counts_and_announces_only_changes(sql, tmp_path, ring, capsys, monkeypatch):
    from renkei.commands import emit as emit_module

    published: list[ChangeEvent] = []
    monkeypatch.setattr(emit_module, "publish_event", lambda event, channel=None: published.append(event))
    keyring = str(ring.save(tmp_path / "keyring.json"))
    raw_of, url = sql
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    base = ["pseudonymize", "--source", "immunization", "--from", raw.location, "--to", url, "--keyring", keyring]
    assert main(base) == 0
    first = _last_json(capsys.readouterr().out)
    assert {k: first[k] for k in ("mode", "read", "written", "upserts", "deletes", "first_seq", "last_seq")} == {
        "mode": "full", "read": N, "written": N, "upserts": N, "deletes": 0, "first_seq": 1, "last_seq": N}
    assert [(e.source, e.change_seq, e.row_count) for e in published] == [("immunization", N, N)]

    raw.delete("IM00005")
    assert main([*base, "--reconcile"]) == 0
    out = capsys.readouterr().out
    assert "reconcile export 2: 0 upserts, 1 tombstones, 9 unchanged of 9 read" in out
    got = _last_json(out)
    assert {k: got[k] for k in ("mode", "read", "written", "upserts", "deletes", "unchanged", "first_seq",
                                "last_seq", "with_parse_errors")} == {
        "mode": "reconcile", "read": N - 1, "written": 1, "upserts": 0, "deletes": 1, "unchanged": N - 1,
        "first_seq": N + 1, "last_seq": N + 1, "with_parse_errors": 0}
    assert [(e.change_seq, e.row_count) for e in published[1:]] == [(N + 1, 1)]
    for code_ in (code(i) for i in range(N)):
        assert code_ not in out

    # Nothing changed: the counts are printed, no event is published.
    assert main([*base, "--reconcile"]) == 0
    assert _last_json(capsys.readouterr().out)["written"] == 0 and len(published) == 2
    # `renkei emit` announces the last change_seq and the size of the last export that wrote rows.
    assert main(["emit", "--source", "immunization", "--extracts", url]) == 0
    event = ChangeEvent.from_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert (event.source, event.change_seq, event.row_count) == ("immunization", N + 1, 1) and published[-1] == event
    # --reconcile and --full exclude each other
    with pytest.raises(SystemExit):
        main([*base, "--reconcile", "--full"])


# -- ingest of the change log ----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        _clean_pg(url)
    else:
        url = f"sqlite:///{tmp_path / 'wh.db'}"
    env = Settings.from_env()
    return Settings(warehouse_url=url, extracts_url=f"sqlite:///{tmp_path / 'ex.db'}",
                    config_dir=env.config_dir, expectations_dir=env.expectations_dir)


def ingest(source, run: str, settings: Settings, ring) -> dict:
    got = extract(source, run, settings)
    validate(source, run, settings)
    out = load(source, run, ring, settings)
    assert out["read"] == got["read"] and out["watermark"] == got["watermark_to"]
    return out


def q(url: str, sql_text: str, **params) -> list[tuple]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(sql_text), params)]
    eng.dispose()
    return rows


def staged(url: str, source=IMM) -> dict[str, tuple]:
    key = "record_id" if source is IMM else "erk"
    cols = "erk, administered_on, updated_at, row_hash" if source is IMM else "erk, status, updated_at, row_hash"
    return {r[0]: tuple(map(str, r[1:])) for r in q(url, f"SELECT {key}, {cols} FROM staging_{source.name}")}


def outcome(out: dict) -> tuple:
    return out["read"], out["loaded"], out["quarantined"], out["deleted"], out["watermark"]


def test_ingest_an_export_read_again_changes_nothing(settings, csv_raw, ring):
    raw_of, _ = csv_raw
    raw = raw_of()
    raw.create([imm_row(i, vaccine_code="XYZ" if i == 8 else "HEPB") for i in range(N)])
    ex = settings.extracts_url
    pseudonymize(IMM, raw.location, ex, ring)
    assert outcome(ingest(IMM, "r1", settings, ring)) == (N, N - 1, 1, 0, N)
    wh = settings.warehouse_url
    first, quarantined = staged(wh), q(wh, "SELECT row_hash, source_row, reason FROM quarantine")
    # The same file handed over again: the adapter writes nothing, the run reads nothing.
    assert pseudonymize(IMM, raw.location, ex, ring).written == 0
    assert outcome(ingest(IMM, "r2", settings, ring)) == (0, 0, 0, 0, N)
    # The same rows in a second export (a full re-export, change_seq 11..20): read again, they
    # upsert to the very same staging rows and the same quarantine row.
    assert pseudonymize(IMM, raw.location, ex, ring, mode="full").written == N
    assert outcome(ingest(IMM, "r3", settings, ring)) == (N, N - 1, 1, 0, 2 * N)
    assert staged(wh) == first
    assert q(wh, "SELECT row_hash, source_row, reason FROM quarantine") == quarantined
    assert q(wh, "SELECT count(*) FROM staging_deleted") == [(0,)]
    # An extract step retried before validate (the task ran twice) lands the batch once.
    raw.update("IM00001", administered_on="2024-06-21")
    assert pseudonymize(IMM, raw.location, ex, ring).written == 1
    assert extract(IMM, "r4", settings)["read"] == 1
    assert extract(IMM, "r4", settings)["read"] == 1
    validate(IMM, "r4", settings)
    assert outcome(load(IMM, "r4", ring, settings)) == (1, 1, 0, 0, 2 * N + 1)
    assert staged(wh)["IM00001"][1] == "2024-06-21"
    assert q(wh, "SELECT run_id, read, loaded, quarantined, deleted, watermark_from, watermark_to FROM ingest_runs "
                 "ORDER BY run_id") == [("r1", N, N - 1, 1, 0, None, N), ("r2", 0, 0, 0, 0, N, N),
                                        ("r3", N, N - 1, 1, 0, N, 2 * N), ("r4", 1, 1, 0, 0, 2 * N, 2 * N + 1)]


def test_ingest_a_tombstone_retires_the_staged_row(settings, csv_raw, ring):
    raw_of, _ = csv_raw
    imm, reg = raw_of(IMM), raw_of(REG)
    imm.create([imm_row(i) for i in range(N)])
    reg.create([reg_row(i) for i in range(N)])
    ex, wh = settings.extracts_url, settings.warehouse_url
    for raw in (imm, reg):
        pseudonymize(raw.source, raw.location, ex, ring)
        assert outcome(ingest(raw.source, f"{raw.source.name}/1", settings, ring)) == (N, N, 0, 0, N)
    before_imm, before_reg = staged(wh), staged(wh, REG)
    imm.delete("IM00005")
    reg.delete(code(7))
    for raw in (imm, reg):
        assert counts(pseudonymize(raw.source, raw.location, ex, ring))[2:5] == (1, 0, 1)
    assert outcome(ingest(IMM, "immunization/2", settings, ring)) == (1, 1, 0, 1, N + 1)
    assert outcome(ingest(REG, "registry/2", settings, ring)) == (1, 1, 0, 1, N + 1)
    erk5, erk7 = ring.seal("link", code(5)), ring.seal("link", code(7))
    assert staged(wh) == {k: v for k, v in before_imm.items() if k != "IM00005"}
    assert staged(wh, REG) == {k: v for k, v in before_reg.items() if k != erk7}
    got = q(wh, "SELECT source, record_key, erk, row_hash, loaded_run_id, change_seq, deleted_run_id FROM staging_deleted "
                "ORDER BY source")
    assert got == [
        ("immunization", "IM00005", erk5, before_imm["IM00005"][3], "immunization/1", N + 1, "immunization/2"),
        ("registry", None, erk7, before_reg[erk7][3], "registry/1", N + 1, "registry/2"),
    ]
    assert all(at_ for (at_,) in q(wh, "SELECT deleted_at FROM staging_deleted"))
    assert q(wh, "SELECT count(*) FROM quarantine") == [(0,)]


def test_ingest_delete_then_reinsert_in_one_batch_ends_staged(settings, csv_raw, ring):
    raw_of, _ = csv_raw
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    ex, wh = settings.extracts_url, settings.warehouse_url
    pseudonymize(IMM, raw.location, ex, ring)
    ingest(IMM, "r1", settings, ring)
    raw.delete("IM00005")
    assert counts(pseudonymize(IMM, raw.location, ex, ring))[2:5] == (1, 0, 1)  # change_seq 11: tombstone
    raw.insert(imm_row(5, administered_on="2024-06-25"))
    assert counts(pseudonymize(IMM, raw.location, ex, ring))[2:5] == (1, 1, 0)  # change_seq 12: upsert
    # one batch, both changes: the later (the re-insert) applies
    assert outcome(ingest(IMM, "r2", settings, ring)) == (2, 2, 0, 0, N + 2)
    assert len(staged(wh)) == N and staged(wh)["IM00005"][:2] == (ring.seal("link", code(5)), "2024-06-25")
    assert q(wh, "SELECT loaded_run_id FROM staging_immunization WHERE record_id = 'IM00005'") == [("r2",)]
    assert q(wh, "SELECT count(*) FROM staging_deleted") == [(0,)]


def test_ingest_update_then_delete_in_one_batch_ends_deleted(settings, csv_raw, ring):
    raw_of, _ = csv_raw
    raw = raw_of()
    raw.create([imm_row(i) for i in range(N)])
    ex, wh = settings.extracts_url, settings.warehouse_url
    pseudonymize(IMM, raw.location, ex, ring)
    ingest(IMM, "r1", settings, ring)
    hash6 = staged(wh)["IM00006"][3]
    raw.update("IM00006", administered_on="2024-06-26")
    assert counts(pseudonymize(IMM, raw.location, ex, ring))[2:5] == (1, 1, 0)  # change_seq 11
    raw.delete("IM00006")
    assert counts(pseudonymize(IMM, raw.location, ex, ring))[2:5] == (1, 0, 1)  # change_seq 12
    assert outcome(ingest(IMM, "r2", settings, ring)) == (2, 2, 0, 1, N + 2)
    assert "IM00006" not in staged(wh) and len(staged(wh)) == N - 1
    # the staged row retired is the one loaded by r1: the update never reached staging
    assert q(wh, "SELECT record_key, row_hash, loaded_run_id, change_seq, deleted_run_id FROM staging_deleted") == [
        ("IM00006", hash6, "r1", N + 2, "r2")]


def test_ingest_quarantines_a_future_stamp_without_poisoning_the_watermark(settings, tmp_path, ring):
    raw = Raw("sqlite", IMM, tmp_path)
    raw.create([imm_row(i) for i in range(N)])
    ex, wh = settings.extracts_url, settings.warehouse_url
    pseudonymize(IMM, raw.location, ex, ring, now=at(0))
    assert outcome(ingest(IMM, "r1", settings, ring)) == (N, N, 0, 0, N)
    before = staged(wh)
    raw.update("IM00002", administered_on="2024-06-12", updated_at="9999-12-31T00:00:00+09:00")
    raw.update("IM00007", administered_on="2024-06-17", updated_at=jst(at(1) - timedelta(minutes=1)))
    res = pseudonymize(IMM, raw.location, ex, ring, now=at(1))
    assert counts(res) == ("incremental", 3, 2, 2, 0, 1, N + 1, N + 2)  # record 2 is change 11, record 7 change 12
    # record 2 is quarantined (its stamp is past its export time plus 10 minutes), record 7 loads
    assert outcome(ingest(IMM, "r2", settings, ring)) == (2, 1, 1, 0, N + 2)
    assert q(wh, "SELECT record_key, reason, first_run_id FROM quarantine") == [("IM00002", FUTURE, "r2")]
    assert FUTURE == "updated_at_after_export:updated_at"
    now = staged(wh)
    assert now["IM00002"] == before["IM00002"]  # the staged record stays as it was
    assert now["IM00007"][1:3] == ("2024-06-17", jst(at(1) - timedelta(minutes=1)))
    # a later ordinary change of another record is read after change_seq 12 and loads
    raw.update("IM00008", administered_on="2024-06-18", updated_at=jst(at(2) - timedelta(minutes=1)))
    assert counts(pseudonymize(IMM, raw.location, ex, ring, now=at(2)))[2:5] == (1, 1, 0)
    assert outcome(ingest(IMM, "r3", settings, ring)) == (1, 1, 0, 0, N + 3)
    assert staged(wh)["IM00008"][1] == "2024-06-18"
    assert q(wh, "SELECT change_seq FROM watermarks WHERE source = 'immunization'") == [(N + 3,)]
    # The department fixes the stamp: the row loads.
    raw.update("IM00002", updated_at=jst(at(3) - timedelta(minutes=1)))
    assert counts(pseudonymize(IMM, raw.location, ex, ring, now=at(3)))[2:5] == (1, 1, 0)
    assert outcome(ingest(IMM, "r4", settings, ring)) == (1, 1, 0, 0, N + 4)
    assert staged(wh)["IM00002"][1] == "2024-06-12"
    raw.close()


def test_ingest_loads_an_ancient_stamp(settings, tmp_path, ring):
    raw = Raw("sqlite", IMM, tmp_path)
    raw.create([imm_row(i) for i in range(N)])
    ex, wh = settings.extracts_url, settings.warehouse_url
    pseudonymize(IMM, raw.location, ex, ring, now=at(0))
    ingest(IMM, "r1", settings, ring)
    raw.update("IM00003", administered_on="2024-06-13", updated_at="1900-01-01T00:00:00+09:00")
    # behind the position by far more than the overlap: the reconcile carries it
    assert counts(pseudonymize(IMM, raw.location, ex, ring, now=at(1)))[2] == 0
    assert counts(pseudonymize(IMM, raw.location, ex, ring, now=at(2), mode="reconcile"))[2:5] == (1, 1, 0)
    assert outcome(ingest(IMM, "r2", settings, ring)) == (1, 1, 0, 0, N + 1)
    assert staged(wh)["IM00003"][1:3] == ("2024-06-13", "1900-01-01T00:00:00+09:00")
    assert q(wh, "SELECT count(*) FROM quarantine") == [(0,)]
    raw.close()


def test_a_source_without_a_change_column_is_diffed_in_full(sql, ring):
    # change_column: null — every export of a SQL table reads and diffs it whole (tombstones too)
    raw_of, url = sql
    src = replace(IMM, change_column=None)
    raw = raw_of(src)
    raw.create([imm_row(i) for i in range(N)])
    assert counts(pseudonymize(src, raw.location, url, ring, now=at(0)))[:3] == ("full", N, N)
    raw.update("IM00003", administered_on="2024-06-13", updated_at="1900-01-01T00:00:00+09:00")
    raw.delete("IM00005")
    res = pseudonymize(src, raw.location, url, ring, now=at(1))
    assert counts(res) == ("incremental", N - 1, 2, 1, 1, N - 2, N + 1, N + 2)
    assert [(r["record_id"], r["op"]) for r in log(url, after=N)] == [("IM00003", "upsert"), ("IM00005", "delete")]
    assert position(url) is None


def test_ingest_a_halted_batch_passes_once_the_department_corrects_it(settings, csv_raw, ring):
    # The failing rows stay in the change log ahead of their corrections: a correction (a later
    # passing change of the same key in the batch) settles them, else no batch could ever pass.
    from renkei.errors import ValidationFailed

    raw_of, _ = csv_raw
    raw = raw_of()
    raw.create([imm_row(i, vaccine_code="XYZ" if i % 2 else "HEPB") for i in range(30)])
    ex, wh = settings.extracts_url, settings.warehouse_url
    pseudonymize(IMM, raw.location, ex, ring)
    extract(IMM, "h1", settings)
    with pytest.raises(ValidationFailed, match=r"15 of 30 new rows \(50\.0%\)"):
        validate(IMM, "h1", settings)
    # Two of the fifteen corrected: 13 new failures of 30 (32 rows, 2 settled by their correction),
    # still at least min_failures_to_halt (10) and above the rate.
    for i in (1, 3):
        raw.update(f"IM{i:05d}", vaccine_code="HEPB")
    assert pseudonymize(IMM, raw.location, ex, ring).written == 2
    extract(IMM, "h2", settings)
    with pytest.raises(ValidationFailed, match=r"13 of 30 new rows \(43\.3%\)"):
        validate(IMM, "h2", settings)
    # All corrected: the batch (change_seq 1..45) passes; the 15 failing originals are quarantined.
    for i in range(5, 30, 2):
        raw.update(f"IM{i:05d}", vaccine_code="HEPB")
    assert pseudonymize(IMM, raw.location, ex, ring).written == 13
    extract(IMM, "h3", settings)
    assert validate(IMM, "h3", settings)["failed"] == 15
    assert outcome(load(IMM, "h3", ring, settings)) == (45, 30, 15, 0, 45)
    assert len(staged(wh)) == 30
    assert q(wh, "SELECT count(*), min(reason), max(reason) FROM quarantine") == [
        (15, "expect_column_values_to_be_in_set:vaccine_code", "expect_column_values_to_be_in_set:vaccine_code")]
    assert q(wh, "SELECT DISTINCT vaccine_code FROM staging_immunization") == [("HEPB",)]
