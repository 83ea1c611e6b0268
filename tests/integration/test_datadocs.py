"""GX Data Docs per ingest run (renkei.quality.datadocs): built by the ingest steps, offline, no values.

A small synthetic city (with seeded defects) goes through the real export adapter and the
ingest steps (extract → validate → load) of every ingest source, in small chunks so that each
run's result is merged from several GX results. Then: one page per (run, source), the index
and the suites' pages exist; no page loads anything from outside the site and every asset a
page names is a file of the site; no raw name, resident code, address or household code is in
any file of the store (the leak scan); and a hand-made batch gives hand-counted numbers.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from dataclasses import replace
from datetime import date
from pathlib import Path
from urllib.parse import unquote

import pytest
import sqlalchemy as sa

from renkei.config import ingest_sources, load_sources
from renkei.ingest import extract, load, validate
from renkei.keys.adapter import pseudonymize
from renkei.quality import datadocs
from renkei.settings import Settings

AS_OF = date(2025, 6, 1)
RESIDENTS = 300
IDENTIFYING = ("resident_code", "name_kana", "name_kanji", "address", "household_code")
# a tag that would make the browser fetch something: script/link/img with an absolute or protocol-relative URL
EXTERNAL = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)\s*=\s*[\"'](?:https?:)?//", re.I)
ASSET = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)\s*=\s*[\"']([^\"'#]+)[\"']", re.I)


def _settings(tmp_path: Path) -> Settings:
    env = Settings.from_env()
    return Settings(warehouse_url=f"sqlite:///{tmp_path / 'wh.db'}", extracts_url=f"sqlite:///{tmp_path / 'ex.db'}",
                    config_dir=env.config_dir, expectations_dir=env.expectations_dir)


def _ingest(source, run_id: str, settings: Settings, ring) -> None:
    extract(source, run_id, settings)
    validate(source, run_id, settings)
    load(source, run_id, ring, settings)


def _raw_identifiers(raw: Path) -> set[str]:
    """Every identifying value of the raw city (SQLite tables): what must never reach the docs."""
    values: set[str] = set()
    for src in load_sources().values():
        if not src.personal or not (raw / f"{src.name}.db").exists():
            continue
        con = sqlite3.connect(raw / f"{src.name}.db")
        con.row_factory = sqlite3.Row
        for row in con.execute(f'SELECT * FROM "{src.name}"'):
            for col in IDENTIFYING:
                v = row[col] if col in row.keys() else None
                if isinstance(v, str) and len(v.strip()) >= 4:
                    values.add(v.strip())
        con.close()
    return values


@pytest.fixture(scope="module")
def city_docs(tmp_path_factory):
    """The city ingested once (chunks of 97 rows), its Data Docs in a store of its own."""
    from renkei.keys.ring import KeyRing
    from renkei.synth import generate

    base = tmp_path_factory.mktemp("datadocs-city")
    raw = base / "raw"
    manifest = generate(RESIDENTS, 5, AS_OF, raw, fmt="sqlite", defect_rate=0.03)
    store = base / "data_docs"
    settings = _settings(base)
    ring = KeyRing.generate()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(datadocs.ENV, str(store))
        for src in ingest_sources():
            pseudonymize(src, f"sqlite:///{raw / f'{src.name}.db'}", settings.extracts_url, ring)
            _ingest(replace(src, validate_chunk_rows=97), f"ingest_{src.name}/manual__2025-06-01", settings, ring)
    return raw, manifest, store, settings


def test_one_page_per_run_and_source_with_the_index_and_suites(city_docs):
    raw, manifest, store, settings = city_docs
    site = store / "site"
    assert (site / "index.html").is_file()
    eng = sa.create_engine(settings.warehouse_url)
    with eng.connect() as conn:
        read = dict(conn.execute(sa.text("SELECT source, read FROM ingest_runs")).all())
    eng.dispose()
    for src in ingest_sources():
        pages = datadocs.pages_of(src.name, str(store))
        assert [p["run_name"] for p in pages] == ["manual__2025-06-01"], src.name
        assert (site / pages[0]["path"]).is_file() and (site / "expectations" / f"{src.name}.html").is_file()
        # The stored result merges every chunk: each column check counted every row the run read
        # (the manifest's row count: a first run reads the whole source, no tombstones).
        stored = json.loads(next((store / "results" / src.name).rglob("*.json")).read_text(encoding="utf-8"))
        counts = {r["result"]["element_count"] for r in stored["results"] if "element_count" in r["result"]}
        assert counts == {manifest["counts"][src.name]} == {read[src.name]}, src.name
        for r in stored["results"]:  # counts only: no values, no row positions, no exception text
            assert not set(r["result"]) & {"unexpected_list", "unexpected_index_list", "partial_unexpected_counts",
                                           "partial_unexpected_index_list", "unexpected_rows"}
            assert r["result"].get("partial_unexpected_list", []) == []
            assert r["exception_info"]["exception_traceback"] is None


def test_pages_load_nothing_from_outside_the_site(city_docs):
    _, _, store, _ = city_docs
    site = store / "site"
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 2 * len(ingest_sources()) + 1
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert not EXTERNAL.search(html), f"{page.relative_to(site)} loads {EXTERNAL.search(html).group(0)}"
        for cdn in ("cdn.jsdelivr.net", "cdnjs.cloudflare.com", "unpkg.com", "bootstrapcdn.com", "code.jquery.com"):
            assert cdn not in html.replace("<!-- renkei: https://" + cdn, ""), f"{page.relative_to(site)}: {cdn}"
        # every asset the page names (other than GX's own favicon, which it links one level off) is in the site
        for ref in ASSET.findall(html):
            target = (page.parent / unquote(ref.split("?")[0])).resolve()
            assert target.is_file() or ref.endswith("favicon.ico"), f"{page.relative_to(site)} names {ref}: missing"
    assets = site / "static" / "offline"
    for name in ("jquery/jquery.min.js", "bootstrap/bootstrap.min.css", "bootstrap/bootstrap.bundle.min.js",
                 "font-awesome/css/all.min.css", "vega/vega.js", "vega/vega-lite.js", "vega/vega-embed.js"):
        assert (assets / name).stat().st_size > 10_000, name
    assert any((assets / "font-awesome" / "webfonts").glob("*.woff2"))


def test_no_personal_value_in_any_data_docs_file(city_docs):
    raw, _, store, _ = city_docs
    identifiers = _raw_identifiers(raw)
    codes = {v for v in identifiers if v.isdigit() and len(v) == 11}
    assert len(codes) >= RESIDENTS * 0.9  # the scan has something to find
    code_re = re.compile(r"(?<!\d)\d{11}(?!\d)")
    others = [v for v in identifiers if not v.isdigit()]
    files = [p for p in store.rglob("*") if p.is_file() and "offline" not in p.parts and p.suffix in (".html", ".json")]
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8", errors="ignore")
        forms = text + json.dumps(text)  # raw, and as JSON escapes would show it
        assert not set(code_re.findall(text)) & codes, f"{path.relative_to(store)} holds a resident code"
        found = [v for v in others if v in text or json.dumps(v)[1:-1] in forms]
        assert not found, f"{path.relative_to(store)} holds {len(found)} raw names/addresses"


IMM = load_sources()["immunization"]
TS = "2025-05-01T09:00:00+09:00"


def _imm_csv(path: Path, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=IMM.raw_columns)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _imm(i: int, **over) -> dict:
    row = {"record_id": f"IM{i:05d}", "resident_code": f"{10000000000 + i}", "name_kana": "ヤマダ ハナコ",
           "birth_date": "2024-04-10", "sex": "2", "address": "北九州市戸畑区中本町1番1号",
           "vaccine_code": "HEPB", "dose_number": "1", "administered_on": "2024-06-10", "updated_at": TS}
    return {**row, **over}


def test_a_hand_made_batch_gives_hand_counted_numbers_and_a_rerun_replaces_its_page(tmp_path, monkeypatch, ring):
    """120 rows in chunks of 50; row 3 has vaccine XYZ, rows 40 and 80 sex 7 (chunks 1 and 2)."""
    store = tmp_path / "dd"
    monkeypatch.setenv(datadocs.ENV, str(store))
    settings = _settings(tmp_path)
    rows = [_imm(i) for i in range(120)]
    rows[3]["vaccine_code"] = "XYZ"
    rows[40]["sex"] = rows[80]["sex"] = "7"
    pseudonymize(IMM, _imm_csv(tmp_path / "imm.csv", rows), settings.extracts_url, ring)
    source = replace(IMM, validate_chunk_rows=50)
    run = "ingest_immunization/manual__hand"
    extract(source, run, settings)
    first = datadocs.pages_of("immunization", str(store))
    stored = json.loads(next((store / "results" / "immunization").rglob("*.json")).read_text(encoding="utf-8"))
    by = {(r["expectation_config"]["type"], r["expectation_config"]["kwargs"].get("column")): r for r in stored["results"]}
    vaccine = by[("expect_column_values_to_be_in_set", "vaccine_code")]
    sex = by[("expect_column_values_to_be_in_set", "sex")]
    assert (vaccine["success"], vaccine["result"]["element_count"], vaccine["result"]["unexpected_count"]) == (False, 120, 1)
    assert (sex["success"], sex["result"]["unexpected_count"]) == (False, 2)
    assert sex["result"]["unexpected_percent"] == pytest.approx(100 * 2 / 120)
    assert by[("expect_column_values_to_not_be_null", "record_id")]["success"] is True
    assert stored["statistics"]["unsuccessful_expectations"] == 2
    html = (store / "site" / first[0]["path"]).read_text(encoding="utf-8")
    assert "XYZ" not in html and "ヤマダ" not in html and "10000000003" not in html
    # The suite changed since the extract: validate runs it again and the run's page is replaced.
    monkeypatch.setattr("renkei.quality.gx_runner.suite_fingerprint", lambda *a, **k: "changed")
    validate(source, run, settings)
    again = datadocs.pages_of("immunization", str(store))
    assert len(again) == 1 and again[0]["run_time"] > first[0]["run_time"]
    assert len(list((store / "results" / "immunization").rglob("*.json"))) == 1


def test_docs_off_builds_nothing(tmp_path, monkeypatch, ring):
    monkeypatch.setenv(datadocs.ENV, "off")
    settings = _settings(tmp_path)
    pseudonymize(IMM, _imm_csv(tmp_path / "imm.csv", [_imm(i) for i in range(5)]), settings.extracts_url, ring)
    extract(IMM, "ingest_immunization/manual__off", settings)
    assert datadocs.location() is None and datadocs.page_for("immunization") is None
    assert not list(tmp_path.rglob("*.html"))


def test_offline_rewrite_and_store_options():
    page = ('<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>'
            '<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js" '
            'integrity="sha384-x" crossorigin="anonymous"></script>'
            '<script src="https://example.org/tracker.js"></script>'
            '<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=1">'
            '<a href="https://greatexpectations.io">GX</a>')
    out = datadocs.offline_html(page, depth=2)
    assert out == ('<link rel="stylesheet" href="../../static/offline/bootstrap/bootstrap.min.css"/>'
                   '<script src="../../static/offline/bootstrap/bootstrap.bundle.min.js"></script>'
                   '<!-- renkei: https://example.org/tracker.js not available offline -->'
                   '<img src="../../static/images/logo-long.png">'
                   '<a href="https://greatexpectations.io">GX</a>')
    assert datadocs._backend("s3://docs-bucket/renkei", "site") == {
        "class_name": "TupleS3StoreBackend", "bucket": "docs-bucket", "prefix": "renkei/site"}
    assert datadocs._backend("/srv/docs", "results") == {
        "class_name": "TupleFilesystemStoreBackend", "base_directory": "/srv/docs/results"}
    assert datadocs.local_site("s3://docs-bucket/renkei") is None
    assert datadocs.location({"RENKEI_HOME": "/w"}) == "/w/data_docs"
    assert datadocs.location({datadocs.ENV: "off", "RENKEI_HOME": "/w"}) is None
