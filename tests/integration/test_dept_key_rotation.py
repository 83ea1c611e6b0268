"""Department-key rotation through the real ingest steps (SQLite and PostgreSQL), without Airflow.

A department's new key changes its pseudonyms, never the ERKs; during the grace period both
versions load; after it (or after `renkei keys retire`) the old version's rows are quarantined
with `pseudonym_key_retired:<column>`, and every run conserves read = loaded + quarantined.
"""

from __future__ import annotations

import csv
import json
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


def _ingest(settings: Settings, tmp_path: Path, rows: list[dict], seal_ring: KeyRing, ring: KeyRing, run: str) -> dict:
    path = tmp_path / f"{run}.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=REG.raw_columns)
        w.writeheader()
        w.writerows(rows)
    pseudonymize(REG, str(path), settings.extracts_url, seal_ring)
    run_id = f"ingest_registry/{run}"
    extract(REG, run_id, settings)
    validate(REG, run_id, settings)
    return load(REG, run_id, ring, settings)


def _query(url: str, sql: str) -> list[tuple]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(sql))]
    eng.dispose()
    return rows


def test_department_rotation_keeps_erks_accepts_grace_and_quarantines_retired(settings, tmp_path):
    url = settings.warehouse_url
    ring = KeyRing.generate()
    old_ring = KeyRing.from_dict(json.loads(json.dumps(ring.to_dict())))  # the department before it switched
    first = _ingest(settings, tmp_path, _rows("2025-05-01T09:00:00+09:00"), ring, ring, "v1")
    assert (first["loaded"], first["quarantined"]) == (30, 0)
    staged = set(_query(url, "SELECT erk, household_key FROM staging_registry"))
    assert {e for e, _ in staged} == {ring.seal("link", c) for c in CODES}

    # The department's key rotates: v2 is current, v1 opens until the grace date.
    assert ring.rotate("dept:ward_office", grace_days=30, today=ROTATED_ON) == 2
    ring.clock = lambda: date(2025, 6, 15)
    second = _ingest(settings, tmp_path, _rows("2025-06-02T09:00:00+09:00"), ring, ring, "v2")
    tokens = _query(settings.extracts_url, "SELECT dept_pseudonym FROM extract_registry")
    assert tokens and all(t.startswith("v2.") for (t,) in tokens)
    assert (second["loaded"], second["quarantined"]) == (30, 0)
    assert set(_query(url, "SELECT erk, household_key FROM staging_registry")) == staged, "ERKs changed with the dept key"

    # Grace: an extract still sealed under v1 loads, to the same ERKs.
    grace = _ingest(settings, tmp_path, _rows("2025-06-03T09:00:00+09:00"), old_ring, ring, "grace")
    assert (grace["loaded"], grace["quarantined"]) == (30, 0)
    assert set(_query(url, "SELECT erk, household_key FROM staging_registry")) == staged

    # After the grace date v1 is retired: a whole batch under it halts (nothing loaded, the
    # watermark stays, so the re-export under v2 is read again) with the cause named.
    ring.clock = lambda: date(2025, 7, 2)
    assert ring.state("dept:ward_office", 1) == "retired"
    watermark = _query(url, "SELECT updated_at FROM watermarks WHERE source = 'registry'")
    with pytest.raises(KeyRingError, match="30 of them are sealed with a retired key version"):
        _ingest(settings, tmp_path, _rows("2025-07-01T09:00:00+09:00"), old_ring, ring, "retired-all")
    assert _query(url, "SELECT updated_at FROM watermarks WHERE source = 'registry'") == watermark
    assert _query(url, "SELECT count(*) FROM quarantine") == [(0,)]

    # A few stragglers under the retired version are quarantined with the precise reason.
    few = _ingest(settings, tmp_path, _rows("2025-07-03T09:00:00+09:00", which=range(3)), old_ring, ring, "retired-few")
    assert few == {**few, "read": 3, "loaded": 0, "quarantined": 3}
    reasons = _query(url, "SELECT reason FROM quarantine WHERE source = 'registry'")
    assert sorted(reasons) == [("pseudonym_key_retired:dept_pseudonym",)] * 3
    runs = _query(url, "SELECT read, loaded, quarantined FROM ingest_runs WHERE state = 'loaded'")
    assert len(runs) == 4 and all(r == lo + q for r, lo, q in runs)
    assert set(_query(url, "SELECT erk, household_key FROM staging_registry")) == staged
