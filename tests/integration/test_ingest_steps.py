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


def _runs(url: str) -> dict[str, tuple]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        got = {r[0]: tuple(r[1:]) for r in conn.execute(sa.text(
            "SELECT run_id, read, loaded, quarantined, deleted, watermark_from, watermark_to FROM ingest_runs"))}
    eng.dispose()
    return got


def _ingest(source, run: str, settings, ring) -> dict:
    extract(source, run, settings)
    validate(source, run, settings)
    return load(source, run, ring, settings)


def test_rerun_reads_only_changes_and_is_idempotent(settings, tmp_path, ring):
    rows = [_imm_row(i) for i in range(10)]
    src = _write(tmp_path / "imm.csv", rows)
    assert pseudonymize(IMM, str(src), settings.extracts_url, ring).last_seq == 10  # change_seq 1..10
    first = extract(IMM, "r1", settings)
    assert (first["read"], first["watermark_from"], first["watermark_to"]) == (10, None, 10)
    validate(IMM, "r1", settings)
    assert load(IMM, "r1", ring, settings)["watermark"] == 10
    # The department adds a row (stamped later) and corrects another (stamped EARLIER than the
    # watermark rows: a department clock is no position): the export writes exactly those two.
    rows.append(_imm_row(10, updated_at="2025-05-02T09:00:00+09:00"))
    rows[3] = _imm_row(3, administered_on="2024-06-11", updated_at="2025-04-01T09:00:00+09:00")
    res = pseudonymize(IMM, str(_write(src, rows)), settings.extracts_url, ring)
    assert (res.written, res.upserts, res.first_seq, res.last_seq) == (2, 2, 11, 12)
    got = extract(IMM, "r2", settings)
    # Only the changes after change_seq 10 are read: no boundary row is read again.
    assert (got["read"], got["watermark_from"], got["watermark_to"]) == (2, 10, 12)
    validate(IMM, "r2", settings)
    out = load(IMM, "r2", ring, settings)
    assert out == {**out, "read": 2, "loaded": 2, "quarantined": 0, "deleted": 0, "watermark": 12}
    again = extract(IMM, "r3", settings)
    assert (again["read"], again["watermark_from"], again["watermark_to"]) == (0, 12, 12)
    validate(IMM, "r3", settings)
    out = load(IMM, "r3", ring, settings)
    assert out == {**out, "read": 0, "loaded": 0, "quarantined": 0, "deleted": 0, "watermark": 12}
    assert _count(settings.warehouse_url, "staging_immunization") == 11
    eng = sa.create_engine(settings.warehouse_url)
    with eng.connect() as conn:
        fixed = conn.execute(sa.text("SELECT administered_on FROM staging_immunization WHERE record_id='IM00003'")).scalar_one()
        wm = conn.execute(sa.text("SELECT change_seq FROM watermarks WHERE source='immunization'")).scalar_one()
    eng.dispose()
    assert str(fixed) == "2024-06-11" and wm == 12
    assert _runs(settings.warehouse_url) == {"r1": (10, 10, 0, 0, None, 10), "r2": (2, 2, 0, 0, 10, 12),
                                             "r3": (0, 0, 0, 0, 12, 12)}


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
    # A record id the department holds twice is exported (both copies) by every export, so
    # every run reads those rows again; they are already quarantined and must not count as a new
    # problem. 12 such rows alone would halt the run (12 >= min_failures_to_halt, 100% failing).
    # Rows without a timestamp are exported once; a full re-export sends them (and all) again.
    good = [_imm_row(i) for i in range(600)]
    no_ts = [_imm_row(600 + i, updated_at="") for i in range(12)]
    twice = [_imm_row(700 + i // 2, administered_on=f"2024-06-{10 + i % 2}") for i in range(12)]  # 6 ids, 2 rows each
    src = _write(tmp_path / "imm.csv", good + no_ts + twice)
    assert pseudonymize(IMM, str(src), settings.extracts_url, ring).written == 624
    extract(IMM, "k1", settings)
    assert validate(IMM, "k1", settings)["failed"] == 24  # 24 of 624 (3.8%): below the limit
    assert load(IMM, "k1", ring, settings)["quarantined"] == 24
    res = pseudonymize(IMM, str(src), settings.extracts_url, ring)  # nothing changed at the department
    assert (res.written, res.unchanged) == (12, 612)  # only the 12 copies of the 6 repeated ids
    assert extract(IMM, "k2", settings)["read"] == 12
    out = validate(IMM, "k2", settings)  # would raise ValidationFailed were they counted as new
    assert out["failed"] == 12 and out["already_quarantined"] == 12
    loaded = load(IMM, "k2", ring, settings)
    assert loaded == {**loaded, "read": 12, "loaded": 0, "quarantined": 12, "deleted": 0, "watermark": 636}
    assert _count(settings.warehouse_url, "quarantine") == 24
    full = pseudonymize(IMM, str(src), settings.extracts_url, ring, mode="full")
    assert (full.written, full.first_seq, full.last_seq) == (624, 637, 1260)
    extract(IMM, "k3", settings)
    out = validate(IMM, "k3", settings)
    assert out["failed"] == 24 and out["already_quarantined"] == 24
    loaded = load(IMM, "k3", ring, settings)
    assert (loaded["loaded"], loaded["quarantined"], loaded["watermark"]) == (600, 24, 1260)
    assert _count(settings.warehouse_url, "quarantine") == 24
    assert _count(settings.warehouse_url, "staging_immunization") == 600


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
    # cursor, chunk by chunk, and the change_seq filter is applied there.
    settings = Settings(warehouse_url=f"sqlite:///{tmp_path / 'wh.db'}", extracts_url=pg_factory(),
                        config_dir=Settings.from_env().config_dir, expectations_dir=Settings.from_env().expectations_dir)
    src = replace(IMM, validate_chunk_rows=7)
    rows = [_imm_row(i) for i in range(30)]
    rows[4]["vaccine_code"] = "XYZ"
    path = _write(tmp_path / "imm.csv", rows)
    pseudonymize(src, str(path), settings.extracts_url, ring)
    first = extract(src, "p1", settings)
    assert (first["read"], first["failed"], first["watermark_to"]) == (30, 1, 30)
    validate(src, "p1", settings)
    assert load(src, "p1", ring, settings)["loaded"] == 29
    # 10 corrected rows and a new one: 11 changes (change_seq 31..41), two chunks of 7 and one of 4
    # after the watermark; row 4 still fails and is not exported again (unchanged).
    for i in range(10, 20):
        rows[i]["administered_on"] = "2024-06-12"
    rows.append(_imm_row(30, updated_at="2025-05-02T09:00:00+09:00"))
    res = pseudonymize(src, str(_write(path, rows)), settings.extracts_url, ring)
    assert (res.written, res.first_seq, res.last_seq) == (11, 31, 41)
    second = extract(src, "p2", settings)
    assert (second["read"], second["failed"], second["watermark_from"], second["watermark_to"]) == (11, 0, 30, 41)
    validate(src, "p2", settings)
    assert load(src, "p2", ring, settings)["loaded"] == 11
    third = extract(src, "p3", settings)
    assert (third["read"], third["watermark_from"], third["watermark_to"]) == (0, 41, 41)
    assert _count(settings.warehouse_url, "staging_immunization") == 30
    eng = sa.create_engine(settings.warehouse_url)
    with eng.connect() as conn:
        dates = dict(conn.execute(sa.text("SELECT record_id, administered_on FROM staging_immunization")).all())
    eng.dispose()
    assert sorted(k for k, v in dates.items() if str(v) == "2024-06-12") == [f"IM{i:05d}" for i in range(10, 20)]
