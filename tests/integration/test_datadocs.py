"""GX Data Docs per ingest run (renkei.quality.datadocs): built by the ingest steps, offline, no values.

A small synthetic city (with seeded defects) goes through the real export adapter and the
ingest steps (extract → validate → load) of every ingest source, in small chunks so that each
run's result is merged from several GX results. Then: one page per (run, source), the index
and the suites' pages exist; no page loads anything from outside the site and every asset a
page names is a file of the site, bootstrap-table (which fills the index's table) included;
every CDN asset of GX's templates has a local copy of a matching version; a build without the
npm install warns and leaves those tags out; no raw name, resident code, address or household
code is in any file of the store (the leak scan); and a hand-made batch gives hand-counted numbers.
"""

from __future__ import annotations

import csv
import json
import logging
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

REPO = Path(__file__).resolve().parents[2]
AS_OF = date(2025, 6, 1)
RESIDENTS = 300
IDENTIFYING = ("resident_code", "name_kana", "name_kanji", "address", "household_code")
# a tag that would make the browser fetch something: script/link/img with an absolute or protocol-relative URL
EXTERNAL = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)\s*=\s*[\"'](?:https?:)?//", re.I)
ASSET = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)\s*=\s*[\"']([^\"'#]+)[\"']", re.I)
# what GX's index needs to fill its table, and its dark theme: npm packages (tools/offline-assets)
BOOTSTRAP_TABLE = ("bootstrap-table/bootstrap-table.min.js", "bootstrap-table/bootstrap-table.min.css",
                   "bootstrap-table/bootstrap-table-filter-control.min.js",
                   "bootstrap-table/bootstrap-table-filter-control.min.css",
                   "bootstrap-dark/bootstrap-prefers-dark.css")


def _need_npm_assets() -> None:
    """Skip (a failure under RENKEI_REQUIRE_SERVICES=1) when `make venv` has not run npm ci."""
    if not (REPO / "tools" / "offline-assets" / "node_modules" / "bootstrap-table" / "dist").is_dir():
        pytest.skip("tools/offline-assets/node_modules is missing: run `make venv` "
                    "(npm ci --prefix tools/offline-assets --ignore-scripts)")


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


def test_the_index_loads_bootstrap_table_from_the_site(city_docs):
    _need_npm_assets()
    site = city_docs[2] / "site"
    index = (site / "index.html").read_text(encoding="utf-8")
    assets = site / "static" / "offline"
    for name in BOOTSTRAP_TABLE:
        assert f'"static/offline/{name}"' in index, f"the index does not load {name}"
        assert (assets / name).stat().st_size > 100, name
    assert "not installed" not in index
    head = (assets / "bootstrap-table" / "bootstrap-table.min.js").read_text(encoding="utf-8")[:400]
    assert "@version v1.19.1" in head  # the version tools/offline-assets/package-lock.json pins
    # a validation page (four folders down) loads the same files, by a relative path
    page = (site / datadocs.pages_of("immunization", str(city_docs[2]))[0]["path"]).read_text(encoding="utf-8")
    assert '"../../../../static/offline/bootstrap-table/bootstrap-table.min.js"' in page


def test_every_cdn_asset_of_the_gx_templates_has_a_local_copy_of_its_version():
    """GX upgraded with new asset URLs or versions: this fails, naming what to pin."""
    import great_expectations

    templates = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
    tag_url = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(https://[^\"]+)\"")
    urls = {u for t in templates.glob("*.j2") for u in tag_url.findall(t.read_text(encoding="utf-8"))}
    assert any("bootstrap-table@" in u for u in urls)  # the scan sees GX's asset tags
    dropped = {u for u in urls if datadocs._local_asset(u) is None}
    # Popper is inside XStatic-Bootstrap's bootstrap.bundle; nothing else may be dropped.
    assert {u.split("/ajax/libs/")[-1].split("/")[0] for u in dropped} == {"popper.js"}, dropped
    locked = json.loads((REPO / "tools" / "offline-assets" / "package-lock.json").read_text(encoding="utf-8"))
    npm_url = re.compile(r"https://(?:unpkg\.com|cdn\.jsdelivr\.net/npm)/(@?[^@]+)@(\d+\.\d+)")
    checked = set()
    for url in urls:
        found = npm_url.match(url)
        if found and f"node_modules/{found[1]}" in locked["packages"]:
            version = locked["packages"][f"node_modules/{found[1]}"]["version"]
            assert version.startswith(found[2] + "."), f"{url}: tools/offline-assets locks {found[1]} {version}"
            checked.add(found[1])
    assert checked == {"bootstrap-table", "@forevolve/bootstrap-dark"}
    for package in checked:  # npm ci installs exactly these, checked against their integrity hashes
        assert locked["packages"][f"node_modules/{package}"]["integrity"].startswith("sha512-")


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


def test_without_the_npm_install_pages_build_and_a_later_build_adds_it(tmp_path, monkeypatch, ring, caplog):
    """No tools/offline-assets/node_modules: a warning, the tags removed (never a CDN), no crash;
    after `make venv` the next build copies the files and the index loads them."""
    _need_npm_assets()
    store = tmp_path / "dd"
    monkeypatch.setenv(datadocs.ENV, str(store))
    settings = _settings(tmp_path)
    pseudonymize(IMM, _imm_csv(tmp_path / "imm.csv", [_imm(i) for i in range(5)]), settings.extracts_url, ring)
    index, assets = store / "site" / "index.html", store / "site" / "static" / "offline"
    with monkeypatch.context() as mp, caplog.at_level(logging.WARNING, logger=datadocs.__name__):
        mp.setattr(datadocs, "NODE_MODULES", tmp_path / "not-installed")
        extract(IMM, "ingest_immunization/manual__bare", settings)
    warned = [r.getMessage() for r in caplog.records if r.name == datadocs.__name__]
    assert any("bootstrap-table/bootstrap-table.min.js" in m and "make venv" in m for m in warned), warned
    html = index.read_text(encoding="utf-8")
    assert "unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js not installed" in html
    assert not EXTERNAL.search(html) and "static/offline/bootstrap-table/" not in html
    assert '"static/offline/jquery/jquery.min.js"' in html  # the Python packages' assets are there
    assert not (assets / "bootstrap-table").exists()

    extract(IMM, "ingest_immunization/manual__installed", settings)
    html = index.read_text(encoding="utf-8")
    assert all(f'"static/offline/{name}"' in html and (assets / name).is_file() for name in BOOTSTRAP_TABLE)
    assert not EXTERNAL.search(html) and "not installed" not in html
    assert set(BOOTSTRAP_TABLE) <= set(json.loads((assets / "assets.json").read_text(encoding="utf-8")))


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
    # bootstrap-table: GX names the filter-control CSS unminified (and at 1.19.0); the site has 1.19.1's .min
    table = ('<link rel="stylesheet" type="text/css" '
             'href="https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css">'
             '<script src="https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js"></script>')
    assert datadocs.offline_html(table, depth=0) == (
        '<link rel="stylesheet" type="text/css" href="static/offline/bootstrap-table/bootstrap-table-filter-control.min.css">'
        '<script src="static/offline/bootstrap-table/bootstrap-table.min.js"></script>')
    assert datadocs.offline_html(table, depth=0, available={"bootstrap-table/bootstrap-table.min.js"}) == (
        '<!-- renkei: https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/'
        'bootstrap-table-filter-control.css not installed (make venv: tools/offline-assets) -->'
        '<script src="static/offline/bootstrap-table/bootstrap-table.min.js"></script>')
    assert datadocs._backend("s3://docs-bucket/renkei", "site") == {
        "class_name": "TupleS3StoreBackend", "bucket": "docs-bucket", "prefix": "renkei/site"}
    assert datadocs._backend("/srv/docs", "results") == {
        "class_name": "TupleFilesystemStoreBackend", "base_directory": "/srv/docs/results"}
    assert datadocs.local_site("s3://docs-bucket/renkei") is None
    assert datadocs.location({"RENKEI_HOME": "/w"}) == "/w/data_docs"
    assert datadocs.location({datadocs.ENV: "off", "RENKEI_HOME": "/w"}) is None
