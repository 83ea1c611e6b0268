"""Department-key rotation through the real ingest steps (SQLite and PostgreSQL), without Airflow.

A department's new key changes its pseudonyms, never the ERKs; during the grace period both
versions load; after it (or after `renkei keys retire`) the old version's rows are quarantined
with `pseudonym_key_retired:<column>`, and every run conserves read = loaded + quarantined.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from renkei.config import load_sources
from renkei.errors import KeyRingError
from renkei.ingest import extract, load, validate
from renkei.keys.adapter import pseudonymize
from renkei.keys.ring import KeyRing
from renkei.settings import Settings

REG = load_sources()["registry"]
ROTATED_ON = date(2025, 6, 1)
CODES = [f"{20000000000 + i}" for i in range(30)]


def _rows(ts: str, which: range = range(30), older: str = "2025-01-01T09:00:00+09:00") -> list[dict]:
    return [{
        "resident_code": code, "name_kana": "ヤマダ タロウ", "name_kanji": "山田 太郎", "birth_date": "1980-04-01",
        "sex": "1", "ward_code": "401064", "address": f"北九州市小倉北区城内{i + 1}番1号", "household_code": f"H{i // 2}",
        "status": "resident", "status_date": "1980-04-01", "updated_at": ts if i in which else older,
    } for i, code in enumerate(CODES)]


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_factory")()
    else:
        url = f"sqlite:///{tmp_path / 'wh.db'}"
    env = Settings.from_env()
    return Settings(warehouse_url=url, extracts_url=f"sqlite:///{tmp_path / 'ex.db'}",
                    config_dir=env.config_dir, expectations_dir=env.expectations_dir)


def _export(settings: Settings, tmp_path: Path, rows: list[dict], seal_ring: KeyRing, run: str):
    """The department's adapter: the raw CSV as it now is → the extract's change log."""
    path = tmp_path / f"{run}.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=REG.raw_columns)
        w.writeheader()
        w.writerows(rows)
    return pseudonymize(REG, str(path), settings.extracts_url, seal_ring)


def _ingest(settings: Settings, tmp_path: Path, rows: list[dict], seal_ring: KeyRing, ring: KeyRing, run: str,
            source=REG) -> dict:
    _export(settings, tmp_path, rows, seal_ring, run)
    run_id = f"ingest_registry/{run}"
    extract(source, run_id, settings)
    validate(source, run_id, settings)
    return load(source, run_id, ring, settings)


def _query(url: str, sql: str) -> list[tuple]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(sql))]
    eng.dispose()
    return rows


def _export_tokens(url: str, export_id: int | None = None) -> list[str]:
    """The dept_pseudonyms of one export (default: the latest) of the registry change log."""
    last = "(SELECT max(export_id) FROM extract_registry)" if export_id is None else str(export_id)
    return [t for (t,) in _query(url, f"SELECT dept_pseudonym FROM extract_registry WHERE export_id = {last}")]


def test_department_rotation_keeps_erks_accepts_grace_and_quarantines_retired(settings, tmp_path):
    url = settings.warehouse_url
    ring = KeyRing.generate()
    old_ring = KeyRing.from_dict(json.loads(json.dumps(ring.to_dict())))  # the department before it switched
    v1_rows = _rows("2025-05-01T09:00:00+09:00")
    first = _ingest(settings, tmp_path, v1_rows, ring, ring, "v1")
    assert (first["loaded"], first["quarantined"]) == (30, 0)
    staged = set(_query(url, "SELECT erk, household_key FROM staging_registry"))
    assert {e for e, _ in staged} == {ring.seal("link", c) for c in CODES}

    # The department's key rotates: v2 is current, v1 opens until the grace date. Nothing changed
    # at the department, yet every record is re-exported once under its new pseudonym (the
    # adapter re-keys its state) and none is tombstoned for having a new one.
    assert ring.rotate("dept:ward_office", grace_days=30, today=ROTATED_ON) == 2
    ring.clock = lambda: date(2025, 6, 15)
    rekeyed = _export(settings, tmp_path, v1_rows, ring, "v2")
    assert (rekeyed.written, rekeyed.upserts, rekeyed.deletes) == (30, 30, 0)
    tokens = _export_tokens(settings.extracts_url)
    assert len(tokens) == 30 and all(t.startswith("v2.") for t in tokens)
    assert all(t.startswith("v1.") for t in _export_tokens(settings.extracts_url, export_id=1))  # the log keeps v1
    run_id = "ingest_registry/v2"
    extract(REG, run_id, settings)
    validate(REG, run_id, settings)
    second = load(REG, run_id, ring, settings)
    assert (second["read"], second["loaded"], second["quarantined"], second["deleted"]) == (30, 30, 0, 0)
    assert set(_query(url, "SELECT erk, household_key FROM staging_registry")) == staged, "ERKs changed with the dept key"

    # Grace: an export still sealed under v1 (a department adapter with the old keyring) loads,
    # to the same ERKs.
    grace_rows = _rows("2025-06-03T09:00:00+09:00")
    grace = _ingest(settings, tmp_path, grace_rows, old_ring, ring, "grace")
    assert (grace["read"], grace["loaded"], grace["quarantined"]) == (30, 30, 0)
    assert all(t.startswith("v1.") for t in _export_tokens(settings.extracts_url))
    assert set(_query(url, "SELECT erk, household_key FROM staging_registry")) == staged

    # After the grace date v1 is retired. A few stragglers under it (the old adapter exports only
    # the 3 rows that changed) are quarantined with the precise reason.
    ring.clock = lambda: date(2025, 7, 2)
    assert ring.state("dept:ward_office", 1) == "retired"
    few = _ingest(settings, tmp_path, _rows("2025-07-03T09:00:00+09:00", which=range(3), older="2025-06-03T09:00:00+09:00"),
                  old_ring, ring, "retired-few")
    assert few == {**few, "read": 3, "loaded": 0, "quarantined": 3}
    reasons = _query(url, "SELECT reason FROM quarantine WHERE source = 'registry'")
    assert sorted(reasons) == [("pseudonym_key_retired:dept_pseudonym",)] * 3

    # A whole batch under the retired version halts with the cause named: nothing loaded or
    # quarantined, the watermark stays (the batch is read again).
    watermark = _query(url, "SELECT change_seq FROM watermarks WHERE source = 'registry'")
    assert watermark == [(30 + 30 + 30 + 3,)]
    retired_rows = _rows("2025-07-04T09:00:00+09:00")
    with pytest.raises(KeyRingError, match="30 of them are sealed with a retired key version"):
        _ingest(settings, tmp_path, retired_rows, old_ring, ring, "retired-all")
    assert _query(url, "SELECT change_seq FROM watermarks WHERE source = 'registry'") == watermark
    assert _query(url, "SELECT count(*) FROM quarantine") == [(3,)]

    # The department moves to the current keyring and exports again: every record under v2, no
    # tombstone. The halted rows stay in the log before them, so the next batch holds both (60):
    # the retired 30 are quarantined and the 30 re-exported load to the same ERKs. (Half of such a
    # batch fails to open, above max_failure_rate: the operator raises the limit for this run.)
    again = _export(settings, tmp_path, retired_rows, ring, "current")
    assert (again.written, again.upserts, again.deletes) == (30, 30, 0)
    assert all(t.startswith("v2.") for t in _export_tokens(settings.extracts_url))
    out = _ingest(settings, tmp_path, retired_rows, ring, ring, "recovered", source=replace(REG, max_failure_rate=1.0))
    assert out == {**out, "read": 60, "loaded": 30, "quarantined": 30, "deleted": 0}
    assert _query(url, "SELECT reason, count(*) FROM quarantine WHERE source = 'registry' GROUP BY reason") == [
        ("pseudonym_key_retired:dept_pseudonym", 33)]
    runs = _query(url, "SELECT read, loaded, quarantined FROM ingest_runs WHERE state = 'loaded'")
    assert len(runs) == 5 and all(r == lo + q for r, lo, q in runs)
    assert set(_query(url, "SELECT erk, household_key FROM staging_registry")) == staged
