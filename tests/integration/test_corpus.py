"""The bad-input corpus (tests/corpus/cases.yaml) through the export adapter and the ingest steps.

Each case's rows are mixed into valid filler rows (half before, half after) and run through
pseudonymize → extract → validate → load on a SQLite warehouse, without Airflow. Every case
ends where cases.yaml says — quarantined with its reason, loaded, or a SourceError that writes
nothing — and no row appears or disappears on the way.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from renkei.config import load_sources
from renkei.errors import SourceError
from renkei.ingest import extract, load, validate
from renkei.keys.adapter import pseudonymize
from renkei.settings import Settings

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))["cases"]
SOURCES = load_sources()
FILLER_BEFORE = FILLER_AFTER = 20
TS = "2025-05-01T09:00:00+09:00"
FILLER = {
    "registry": {"name_kana": "スズキ イチロウ", "name_kanji": "鈴木 一郎", "birth_date": "1975-03-03", "sex": "1",
                 "ward_code": "401099", "address": "北九州市八幡西区黒崎1丁目1番1号", "status": "resident",
                 "status_date": "1975-03-03"},
    "immunization": {"name_kana": "スズキ ジロウ", "birth_date": "2024-02-01", "sex": "1",
                     "address": "北九州市門司区老松町1番1号", "vaccine_code": "HIB", "dose_number": "1",
                     "administered_on": "2024-04-01"},
    "child_health": {"name_kana": "スズキ ジロウ", "birth_date": "2024-02-01", "sex": "1",
                     "address": "北九州市門司区老松町1番1号", "checkup_code": "M7", "examined_on": "2024-09-01"},
    "nhi": {"name_kana": "スズキ イチロウ", "birth_date": "1955-05-05", "sex": "1", "address": "北九州市若松区本町1番1号",
            "qualified_on": "2015-04-01", "disqualified_on": "", "last_checkup_on": ""},
    "subscriptions": {"topic": "health", "ward_code": "", "opted_in_at": "2024-02-02T08:00:00+09:00",
                      "opted_out_at": ""},
    "events": {"title": "小倉城 春の茶会", "topic": "events", "ward_code": "401064", "venue": "小倉城",
               "starts_at": "2025-04-01T10:00:00+09:00", "ends_at": "2025-04-01T15:00:00+09:00"},
}


def _filler_row(source: str, i: int) -> dict:
    row = {**FILLER[source], "updated_at": TS, "resident_code": f"{10000000000 + i}", "household_code": f"HF{i:05d}"}
    key = SOURCES[source].key
    if key != "dept_pseudonym":
        row[key] = f"F{i:05d}"
    return row


def _header_columns(header_line: bytes) -> list[str]:
    text = header_line.removeprefix(b"\xef\xbb\xbf")
    for encoding in ("utf-8", "cp932"):
        try:
            return [c.strip() for c in next(csv.reader([text.decode(encoding)]))]
        except UnicodeDecodeError:
            continue
    raise AssertionError("filler needs a readable header")


def _filler(source: str, columns: list[str], numbers: range) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for i in numbers:
        row = _filler_row(source, i)
        writer.writerow([row.get(c, "") for c in columns])
    return buf.getvalue().encode()


def build_file(case: dict, path: Path) -> int:
    """Write the case's raw file with filler mixed in; returns the number of filler rows."""
    data = (CORPUS / case["file"]).read_bytes()
    for token, length in (case.get("expand") or {}).items():
        data = data.replace(token.encode(), b"A" * length)
    if case.get("filler", True):
        header, _, rest = data.partition(b"\n")
        columns = _header_columns(header)
        data = (header + b"\n" + _filler(case["source"], columns, range(FILLER_BEFORE)) + rest
                + _filler(case["source"], columns, range(FILLER_BEFORE, FILLER_BEFORE + FILLER_AFTER)))
        filler = FILLER_BEFORE + FILLER_AFTER
    else:
        filler = 0
    path.write_bytes(data)
    return filler


@pytest.fixture
def settings(tmp_path) -> Settings:
    env = Settings.from_env()
    return Settings(warehouse_url=f"sqlite:///{tmp_path / 'wh.db'}", extracts_url=f"sqlite:///{tmp_path / 'ex.db'}",
                    config_dir=env.config_dir, expectations_dir=env.expectations_dir)


def _rows(url: str, query: str, **params) -> list:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        rows = conn.execute(sa.text(query), params).all()
    eng.dispose()
    return rows


def _craft(settings: Settings, source: str, craft: str, ring) -> None:
    """Alter the pseudonym of the first case row in the extract, as an attacker or a bug would."""
    column = "household_pseudonym" if craft == "tampered_household" else "dept_pseudonym"
    (token,) = _rows(settings.extracts_url, f"SELECT {column} FROM extract_{source} WHERE source_row = :r",
                     r=FILLER_BEFORE)[0]
    version, _, body = token.partition(".")
    crafted = {
        "tampered": f"{version}.{body[:10]}{'A' if body[10] != 'A' else 'B'}{body[11:]}",
        "tampered_household": f"{version}.{body[:10]}{'A' if body[10] != 'A' else 'B'}{body[11:]}",
        "truncated": token[:-6],
        "unknown_key_version": f"v9.{body}",
        "other_department": ring.seal("dept:ward_office", "20000000001"),
        "not_a_token": "garbage",
    }[craft]
    eng = sa.create_engine(settings.extracts_url)
    with eng.begin() as conn:
        conn.execute(sa.text(f"UPDATE extract_{source} SET {column} = :t WHERE source_row = :r"),
                     {"t": crafted, "r": FILLER_BEFORE})
    eng.dispose()


def test_corpus_has_the_kinds_the_issue_asks_for():
    kinds = {c["kind"] for c in CASES}
    assert len(kinds) == len(CASES) >= 40
    assert {c["source"] for c in CASES} == {s for s, src in SOURCES.items() if src.ingest}
    for case in CASES:
        assert (CORPUS / case["file"]).is_file(), case["file"]
        assert case.get("expect", "quarantined") in ("quarantined", "loaded", "source_error"), case["kind"]


@pytest.mark.parametrize("case", CASES, ids=[f"{c['source']}/{c['kind']}" for c in CASES])
def test_case(case, tmp_path, settings, ring):
    source = SOURCES[case["source"]]
    expect = case.get("expect", "quarantined")
    raw = tmp_path / f"{source.name}.csv"

    if expect == "source_error":
        sentinel = tmp_path / "sentinel.csv"
        sentinel.write_bytes((",".join(source.raw_columns) + "\n").encode()
                             + _filler(source.name, source.raw_columns, range(5)))
        pseudonymize(source, str(sentinel), settings.extracts_url, ring)
        build_file(case, raw)
        with pytest.raises(SourceError, match=None) as exc:
            pseudonymize(source, str(raw), settings.extracts_url, ring)
        assert case["expected_reason"] in str(exc.value)
        # nothing written: the change log holds the sentinel's export only (change_seq 1..5)…
        assert _rows(settings.extracts_url, f"SELECT count(*), min(change_seq), max(change_seq), max(export_id) "
                                            f"FROM extract_{source.name}")[0] == (5, 1, 5, 1)
        # …and the adapter's state is the sentinel's: the unchanged sentinel exports nothing again
        again = pseudonymize(source, str(sentinel), settings.extracts_url, ring)
        assert (again.read, again.written, again.unchanged) == (5, 0, 5)
        return

    filler = build_file(case, raw)
    case_rows = case.get("rows", 1)
    expected_read = filler + case_rows
    result = pseudonymize(source, str(raw), settings.extracts_url, ring)
    assert result.read == result.written == expected_read  # the adapter never drops a row
    if case.get("craft"):
        _craft(settings, source.name, case["craft"], ring)
    if case.get("parse_error"):
        flagged = _rows(settings.extracts_url,
                        f"SELECT parse_errors FROM extract_{source.name} WHERE parse_errors IS NOT NULL")
        assert any(case["parse_error"] in p for (p,) in flagged), flagged
    if case.get("absent"):
        for row in _rows(settings.extracts_url, f"SELECT * FROM extract_{source.name}"):
            assert not any(case["absent"] in str(v) for v in row)

    run = f"ingest_{source.name}/corpus"
    assert extract(source, run, settings)["read"] == expected_read
    validate(source, run, settings)
    out = load(source, run, ring, settings)
    assert out["read"] == out["loaded"] + out["quarantined"] == expected_read  # conservation

    quarantined = _rows(settings.warehouse_url, "SELECT source_row, reason FROM quarantine WHERE source = :s",
                        s=source.name)
    case_positions = set(range(FILLER_BEFORE, FILLER_BEFORE + case_rows)) if filler else set(range(case_rows))
    if expect == "loaded":
        assert quarantined == []
        assert out["loaded"] == expected_read
    else:
        assert len(quarantined) == case.get("quarantined", 1), quarantined
        for position, reason in quarantined:
            assert position in case_positions, (position, reason)  # no filler row is hurt
            assert case["expected_reason"] in reason, reason
    if case.get("lands"):
        lands = case["lands"]
        hits = _rows(settings.warehouse_url, f"SELECT count(*) FROM {lands['table']} WHERE {lands['column']} = :v",
                     v=lands["value"])
        assert hits[0][0] == 1
    # hostile content is data: every warehouse table is still there
    tables = set(sa.inspect(sa.create_engine(settings.warehouse_url)).get_table_names())
    assert {f"staging_{s}" for s, src in SOURCES.items() if src.ingest} <= tables
    assert {"quarantine", "watermarks", "ingest_runs"} <= tables
