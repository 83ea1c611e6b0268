"""The three ingest steps on a real warehouse (SQLite and PostgreSQL), without Airflow."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from renkei.config import load_sources
from renkei.errors import ValidationFailed
from renkei.ingest import extract, load, validate
from renkei.keys.adapter import pseudonymize
from renkei.settings import Settings

IMM = load_sources()["immunization"]
TS = "2025-05-01T09:00:00+09:00"


def _imm_row(i: int, **over) -> dict:
    row = {"record_id": f"IM{i:05d}", "resident_code": f"{10000000000 + i}", "name_kana": "ヤマダ ハナコ",
           "birth_date": "2024-04-10", "sex": "2", "address": "北九州市戸畑区中本町1番1号",
           "vaccine_code": "HEPB", "dose_number": "1", "administered_on": "2024-06-10", "updated_at": TS}
    row.update(over)
    return row


def _write(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    with open(path, "w", encoding=encoding, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=IMM.raw_columns)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        eng = sa.create_engine(url)
        with eng.begin() as conn:  # a clean warehouse per test
            md = sa.MetaData()
            md.reflect(conn)
            md.drop_all(conn)
        eng.dispose()
    else:
        url = f"sqlite:///{tmp_path / 'wh.db'}"
    return Settings(warehouse_url=url, extracts_url=f"sqlite:///{tmp_path / 'ex.db'}",
                    config_dir=Settings.from_env().config_dir, expectations_dir=Settings.from_env().expectations_dir)


def _count(url: str, table: str) -> int:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        n = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    eng.dispose()
    return n


def test_bad_rows_are_quarantined_with_reasons_and_counts_conserve(settings, tmp_path, ring):
    rows = [_imm_row(i) for i in range(120)]
    rows[3]["vaccine_code"] = "XYZ"
    rows[7]["administered_on"] = "H31.5.1"  # 平成 ended on 2019-04-30
    rows[9]["resident_code"] = ""
    rows[11]["record_id"] = rows[12]["record_id"]
    rows[15]["administered_on"] = "令和6年6月10日"  # valid era form: loads
    pseudonymize(IMM, str(_write(tmp_path / "imm.csv", rows, "cp932")), settings.extracts_url, ring)
    run = "ingest_immunization/manual__1"
    assert extract(IMM, run, settings)["read"] == 120
    v = validate(IMM, run, settings)
    assert v["failed"] == 5
    out = load(IMM, run, ring, settings)
    assert out == {**out, "read": 120, "loaded": 115, "quarantined": 5}
    eng = sa.create_engine(settings.warehouse_url)
    with eng.connect() as conn:
        reasons = dict(conn.execute(sa.text("SELECT source_row, reason FROM quarantine")).all())
        era = conn.execute(sa.text("SELECT administered_on FROM staging_immunization WHERE record_id='IM00015'")).scalar_one()
        landing_left = conn.execute(sa.text("SELECT count(*) FROM landing_immunization")).scalar_one()
    eng.dispose()
    assert "expect_column_values_to_be_in_set:vaccine_code" in reasons[3]
    assert "parse_error:administered_on" in reasons[7]
    assert "dept_pseudonym" in reasons[9]
    assert "expect_column_values_to_be_unique:record_id" in reasons[11] and 12 in reasons
    assert str(era) == "2024-06-10"
    assert landing_left == 0


def test_rerun_reads_only_changes_and_is_idempotent(settings, tmp_path, ring):
    rows = [_imm_row(i) for i in range(10)]
    src = _write(tmp_path / "imm.csv", rows)
    pseudonymize(IMM, str(src), settings.extracts_url, ring)
    for step in (extract, validate):
        step(IMM, "r1", settings)
    load(IMM, "r1", ring, settings)
    rows.append(_imm_row(10, updated_at="2025-05-02T09:00:00+09:00"))
    pseudonymize(IMM, str(_write(src, rows)), settings.extracts_url, ring)
    got = extract(IMM, "r2", settings)
    # `>=` on the watermark: the boundary rows are re-read (and upsert to the same state).
    assert got["read"] == 11 and got["watermark_to"] == "2025-05-02T09:00:00+09:00"
    validate(IMM, "r2", settings)
    load(IMM, "r2", ring, settings)
    assert extract(IMM, "r3", settings)["read"] == 1
    validate(IMM, "r3", settings)
    load(IMM, "r3", ring, settings)
    assert _count(settings.warehouse_url, "staging_immunization") == 11


def test_failure_above_the_limit_loads_nothing(settings, tmp_path, ring):
    rows = [_imm_row(i, vaccine_code="XYZ" if i % 2 else "HEPB") for i in range(20)]
    pseudonymize(IMM, str(_write(tmp_path / "imm.csv", rows)), settings.extracts_url, ring)
    extract(IMM, "bad", settings)
    with pytest.raises(ValidationFailed, match="10 of 20 new rows") as exc:
        validate(IMM, "bad", settings)
    assert "IM000" not in str(exc.value)  # names no record values
    with pytest.raises(ValidationFailed, match="not validated"):
        load(IMM, "bad", ring, settings)
    assert _count(settings.warehouse_url, "staging_immunization") == 0
    assert _count(settings.warehouse_url, "quarantine") == 0


def test_tampered_pseudonym_is_quarantined_not_loaded(settings, tmp_path, ring):
    rows = [_imm_row(i) for i in range(30)]
    pseudonymize(IMM, str(_write(tmp_path / "imm.csv", rows)), settings.extracts_url, ring)
    eng = sa.create_engine(settings.extracts_url)
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE extract_immunization SET dept_pseudonym = dept_pseudonym || 'x' WHERE source_row = 4"))
    eng.dispose()
    extract(IMM, "t", settings)
    validate(IMM, "t", settings)
    out = load(IMM, "t", ring, settings)
    assert out["quarantined"] == 1 and out["loaded"] == 29


def test_one_typo_in_a_small_batch_does_not_block_the_source(settings, tmp_path, ring):
    rows = [_imm_row(0), _imm_row(1, vaccine_code="XYZ")]
    pseudonymize(IMM, str(_write(tmp_path / "imm.csv", rows)), settings.extracts_url, ring)
    extract(IMM, "small", settings)
    validate(IMM, "small", settings)  # 50% fail, but 1 < min_failures_to_halt
    assert load(IMM, "small", ring, settings)["loaded"] == 1


def test_known_failures_reread_every_run_do_not_halt_the_next_run(settings, tmp_path, ring):
    # Rows without a timestamp cannot be placed after a watermark, so every run re-reads them;
    # they are already quarantined and must not count as a new problem.
    rows = [_imm_row(i) for i in range(300)] + [_imm_row(300 + i, updated_at="") for i in range(12)]
    src = _write(tmp_path / "imm.csv", rows)
    pseudonymize(IMM, str(src), settings.extracts_url, ring)
    extract(IMM, "k1", settings)
    validate(IMM, "k1", settings)
    assert load(IMM, "k1", ring, settings)["quarantined"] == 12
    extract(IMM, "k2", settings)  # re-reads the 12 (and the boundary rows)
    out = validate(IMM, "k2", settings)
    assert out["failed"] == 12 and out["already_quarantined"] == 12
    assert load(IMM, "k2", ring, settings)["quarantined"] == 12
    assert _count(settings.warehouse_url, "quarantine") == 12


def test_a_rejected_update_of_a_subscription_counts_as_an_opt_out(settings, tmp_path, ring):
    # An opt-out the department wrote but we cannot read (here a garbage timestamp) must stop
    # notices: the staged subscription is marked opted out until a valid row arrives.
    subs = load_sources()["subscriptions"]

    def write(rows):
        path = tmp_path / "subscriptions.csv"
        with open(path, "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=subs.raw_columns)
            w.writeheader()
            w.writerows(rows)
        return path

    def row(i, **over):
        r = {"subscription_id": f"S{i}", "resident_code": f"{20000000000 + i}", "topic": "events", "ward_code": "",
             "opted_in_at": "2025-01-01T09:00:00+09:00", "opted_out_at": "", "updated_at": TS}
        r.update(over)
        return r

    pseudonymize(subs, str(write([row(i) for i in range(30)])), settings.extracts_url, ring)
    for step in (extract, validate):
        step(subs, "s1", settings)
    load(subs, "s1", ring, settings)
    later = "2025-05-02T09:00:00+09:00"
    rows = [row(i) for i in range(30)]
    rows[5] = row(5, opted_out_at="昨日の夜", updated_at=later)  # unreadable opt-out
    pseudonymize(subs, str(write(rows)), settings.extracts_url, ring)
    extract(subs, "s2", settings)
    validate(subs, "s2", settings)
    assert load(subs, "s2", ring, settings)["quarantined"] == 1
    eng = sa.create_engine(settings.warehouse_url)
    with eng.connect() as conn:
        out = dict(conn.execute(sa.text("SELECT subscription_id, opted_out_at FROM staging_subscriptions")).all())
    eng.dispose()
    assert out["S5"] is not None, "the unreadable opt-out must count as an opt-out"
    assert sum(v is not None for v in out.values()) == 1


def _reasons(url: str) -> dict[int, str]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        got = dict(conn.execute(sa.text(
            "SELECT source_row, quarantine_reason FROM landing_immunization WHERE quarantine_reason IS NOT NULL")).all())
    eng.dispose()
    return got


def test_duplicates_across_extract_chunks_keep_the_suites_other_reasons(settings, tmp_path, ring):
    # The suite runs on each extract chunk alone (10 rows here): a record id repeated in another
    # chunk is found by validate over the whole batch, and a row failing both keeps both reasons.
    src = replace(IMM, validate_chunk_rows=10)
    rows = [_imm_row(i) for i in range(30)]
    rows[25]["record_id"] = rows[2]["record_id"]
    rows[25]["vaccine_code"] = "XYZ"
    pseudonymize(src, str(_write(tmp_path / "imm.csv", rows)), settings.extracts_url, ring)
    assert extract(src, "d", settings)["failed"] == 1  # chunk-local: only the code
    out = validate(src, "d", settings)
    assert out["failed"] == 2 and not out["suite_rerun"]
    assert _reasons(settings.warehouse_url) == {
        2: "expect_column_values_to_be_unique:record_id",
        25: "expect_column_values_to_be_in_set:vaccine_code; expect_column_values_to_be_unique:record_id",
    }
    again = validate(src, "d", settings)  # idempotent
    assert again["failed"] == 2 and _reasons(settings.warehouse_url)[25].count("unique") == 1
    loaded = load(src, "d", ring, settings)
    assert (loaded["loaded"], loaded["quarantined"]) == (28, 2)


def test_a_suite_changed_after_the_extract_runs_again_at_validate(settings, tmp_path, ring):
    suites = tmp_path / "expectations"
    shutil.copytree(settings.expectations_dir, suites)
    settings = replace(settings, expectations_dir=suites)
    rows = [_imm_row(i) for i in range(40)]
    rows[5]["vaccine_code"] = "XYZ"
    pseudonymize(IMM, str(_write(tmp_path / "imm.csv", rows)), settings.extracts_url, ring)
    assert extract(IMM, "s", settings)["failed"] == 1
    # The city drops the code-list expectation for vaccine_code between extract and validate.
    path = suites / "immunization.json"
    suite = json.loads(path.read_text(encoding="utf-8"))
    suite["expectations"] = [
        e for e in suite["expectations"]
        if not (e["type"] == "expect_column_values_to_be_in_set" and e["kwargs"].get("column") == "vaccine_code")
    ]
    path.write_text(json.dumps(suite, ensure_ascii=False, indent=2), encoding="utf-8")
    out = validate(IMM, "s", settings)
    assert out["suite_rerun"] and out["failed"] == 0 and _reasons(settings.warehouse_url) == {}
    assert load(IMM, "s", ring, settings)["loaded"] == 40


def test_extracts_in_postgresql_are_read_in_chunks_since_the_watermark(tmp_path, ring, pg_factory):
    # The extracts database may be a department's PostgreSQL: rows come through a server-side
    # cursor, chunk by chunk, and the watermark filter is applied there.
    settings = Settings(warehouse_url=f"sqlite:///{tmp_path / 'wh.db'}", extracts_url=pg_factory(),
                        config_dir=Settings.from_env().config_dir, expectations_dir=Settings.from_env().expectations_dir)
    src = replace(IMM, validate_chunk_rows=7)
    rows = [_imm_row(i) for i in range(30)]
    rows[4]["vaccine_code"] = "XYZ"
    path = _write(tmp_path / "imm.csv", rows)
    pseudonymize(src, str(path), settings.extracts_url, ring)
    first = extract(src, "p1", settings)
    assert (first["read"], first["failed"]) == (30, 1)
    validate(src, "p1", settings)
    assert load(src, "p1", ring, settings)["loaded"] == 29
    rows.append(_imm_row(30, updated_at="2025-05-02T09:00:00+09:00"))
    pseudonymize(src, str(_write(path, rows)), settings.extracts_url, ring)
    extract(src, "p2", settings)
    validate(src, "p2", settings)
    load(src, "p2", ring, settings)
    assert extract(src, "p3", settings)["read"] == 1  # only the row at the watermark
