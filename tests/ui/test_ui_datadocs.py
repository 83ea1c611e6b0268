"""GX Data Docs through the Renkei pages, in a browser cut off from every network but the api-server.

Municipal systems holding resident data run on networks without the internet (三層分離). The
stack (ui_stack: `renkei run` on a small city, then `make up`) builds one Data Docs page per
ingest run and source; headless Chromium — every host but 127.0.0.1 unresolvable and every
proxied request sent to a closed port — follows the runs page's link and must get a rendered
page: Bootstrap's styles applied, jQuery and Bootstrap's plugins loaded, Font Awesome's font
loaded, Vega's scripts defined, and no request outside the api-server. From there GX's "Home"
link opens the site's index, whose table bootstrap-table fills (tools/offline-assets): a row per
source's run, searchable, each row opening its page. Screenshots go to $RENKEI_ARTIFACTS
(default tests/artifacts/ui/). No page may hold a raw name, code or address.
"""

from __future__ import annotations

import re
import sqlite3
from urllib.parse import urlsplit

import pytest

from browser import chromium, logged_in, shot, wait
from ui_stack import launch

pytestmark = [pytest.mark.ui, pytest.mark.airflow]

DOCS_LINK = re.compile(r'href="(/renkei/datadocs/validations/([^/"]+)/[^"]+\.html)"')
INDEX_ROWS = "table.ge-index-page-validation-results-table tbody tr.clickable-row"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with launch(tmp_path_factory.mktemp("ui-datadocs") / "work") as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as client:
        client.headers["Authorization"] = f"Bearer {server.token('viewer')}"
        yield client


@pytest.fixture(scope="module")
def offline_browser(tmp_path_factory):
    """Headless Chromium that can reach 127.0.0.1 only: no DNS for any other host, and any
    other request goes to a proxy port where nothing listens."""
    with chromium(tmp_path_factory.mktemp("chromium"), window="1400,1000", offline=True) as driver:
        yield driver


def _open_validation_page(driver, server, source: str) -> None:
    """From the runs page, follow the source's Data Docs link (as a reader would)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(f"{server.url}/renkei/runs")
    link = wait(driver, ec.presence_of_element_located(
        (By.XPATH, f"//table[@id='sources']//tr[td[1]='{source}']//a[contains(@class, 'data-docs')]")),
        f"{source}'s Data Docs link")
    link.click()
    wait(driver, lambda d: "/renkei/datadocs/validations/" in d.current_url
          and d.execute_script("return document.readyState") == "complete", "the Data Docs page")


def _sources(server) -> list[str]:
    with sqlite3.connect(server.warehouse) as conn:
        return sorted(r[0] for r in conn.execute("SELECT DISTINCT source FROM ingest_runs"))


def test_runs_and_quarantine_pages_link_every_sources_data_docs(server, http):
    runs = http.get("/renkei/runs", headers={"Accept": "text/html"})
    assert runs.status_code == 200
    linked = {source for _, source in DOCS_LINK.findall(runs.text)}
    assert linked == set(_sources(server))  # one link per source, to the page of its last run
    quarantine = http.get("/renkei/quarantine", headers={"Accept": "text/html"})
    with sqlite3.connect(server.warehouse) as conn:
        quarantined = {r[0] for r in conn.execute("SELECT DISTINCT source FROM quarantine")}
    assert quarantined and {source for _, source in DOCS_LINK.findall(quarantine.text)} == quarantined
    for path, _ in DOCS_LINK.findall(runs.text):
        page = http.get(path.replace("&amp;", "&"))
        assert page.status_code == 200 and "Expectation Validation Result" in page.text, path
        assert not server.leaks(page.text), f"{path} shows raw values"
        # GX's inline scripts and styles are allowed on Data Docs pages only
        assert "'unsafe-inline'" in page.headers["content-security-policy"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in runs.headers["content-security-policy"]


def test_data_docs_are_behind_the_same_gate_and_stay_in_the_site(server, http):
    import httpx

    path = DOCS_LINK.search(http.get("/renkei/runs", headers={"Accept": "text/html"}).text).group(1)
    anonymous = httpx.get(f"{server.url}{path}", timeout=30, follow_redirects=False)
    assert anonymous.status_code == 401
    assert http.get("/renkei/datadocs/static/offline/jquery/jquery.min.js").status_code == 200
    for escape in ("..%2F..%2Fwarehouse.db", "%2e%2e/%2e%2e/warehouse.db", "static", "no/such/page.html"):
        assert http.get(f"/renkei/datadocs/{escape}").status_code == 404, escape


def test_a_data_docs_page_renders_with_the_network_cut_off(server, offline_browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = offline_browser
    logged_in(driver, server)

    # Positive control: the browser really cannot reach a CDN.
    reached = driver.execute_async_script(
        "const done = arguments[0];"
        "fetch('https://cdn.jsdelivr.net/npm/vega@5', {mode: 'no-cors'}).then(() => done('reached'), () => done('blocked'));")
    assert reached == "blocked"

    driver.get(f"{server.url}/renkei/runs")
    # immunization: the source with the most seeded defects, so its page has failed expectations to show
    link = wait(driver, ec.presence_of_element_located(
        (By.XPATH, "//table[@id='sources']//tr[td[1]='immunization']//a[contains(@class, 'data-docs')]")),
        "immunization's Data Docs link")
    shot(driver, "datadocs-00-runs-link")
    link.click()
    wait(driver, lambda d: "/renkei/datadocs/validations/" in d.current_url
          and d.execute_script("return document.readyState") == "complete", "the Data Docs page")
    wait(driver, lambda d: d.execute_script("return document.fonts.status") == "loaded", "the page's fonts")
    state = driver.execute_script("""
        const style = (sel, prop) => { const el = document.querySelector(sel); return el && getComputedStyle(el)[prop]; };
        const icon = document.querySelector('i.fas, i.fa');
        return {
          title: document.querySelector('h1, h2, h3, h4') && document.body.innerText.includes('Expectation Validation Result'),
          navbar_display: style('nav.navbar', 'display'),          // Bootstrap: flex (no Bootstrap: block)
          badge_radius: style('.badge', 'borderRadius'),          // Bootstrap 4: 0.25rem
          jquery: typeof window.jQuery,
          collapse_plugin: window.jQuery ? typeof window.jQuery.fn.collapse : 'undefined',
          vega: typeof window.vega, vega_lite: typeof window.vegaLite, vega_embed: typeof window.vegaEmbed,
          icon_font: icon ? getComputedStyle(icon, '::before').fontFamily : null,
          fa_loaded: [...document.fonts].some(f => f.family.includes('Font Awesome') && f.status === 'loaded'),
          charts: document.querySelectorAll('.vega-embed svg, .vega-embed canvas').length,
          chart_blocks: document.querySelectorAll('[id$="-graph"], .vega-embed').length,
          resources: performance.getEntriesByType('resource').map(r => r.name),
        };""")
    picture = shot(driver, "datadocs-01-validation-offline")
    assert state["title"], "the page did not render GX's validation result"
    assert state["navbar_display"] == "flex", f"Bootstrap's CSS is not applied ({state['navbar_display']})"
    assert state["badge_radius"] not in (None, "0px"), "Bootstrap's badge style is not applied"
    assert (state["jquery"], state["collapse_plugin"]) == ("function", "function")
    assert (state["vega"], state["vega_lite"], state["vega_embed"]) == ("object", "object", "function")
    assert state["icon_font"] and "Font Awesome" in state["icon_font"] and state["fa_loaded"]
    assert state["charts"] == state["chart_blocks"]  # every chart the page has is drawn (our suites have none)
    origin = urlsplit(server.url).netloc
    outside = [r for r in state["resources"] if urlsplit(r).netloc != origin]
    assert not outside, f"the page requested {outside}"
    assert any("/static/offline/bootstrap/" in r for r in state["resources"])
    assert not server.leaks(driver.page_source)
    assert picture.stat().st_size > 20_000

    # GX's own "Failed Only" filter (its inline script, jQuery's animations) works offline too:
    # the passing expectations' rows fade out, the failing ones stay.
    passing = "$('.hide-succeeded-validation-target-child').parent()"
    assert driver.execute_script(f"return {passing}.filter(':visible').length") > 0
    driver.find_element(By.XPATH, "//label[contains(., 'Failed Only')]").click()
    wait(driver, lambda d: d.execute_script(f"return {passing}.filter(':visible').length") == 0,
          "the passing expectations to be hidden")
    assert driver.execute_script("return $('i.fa-times:visible').length") > 0  # immunization has seeded defects
    shot(driver, "datadocs-02-validation-failed-only")


def test_the_data_docs_index_lists_every_run_with_the_network_cut_off(server, offline_browser):
    """GX's index fills its table with bootstrap-table: served from the site, so the rows show."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = offline_browser
    logged_in(driver, server)
    _open_validation_page(driver, server, "immunization")
    home = wait(driver, ec.element_to_be_clickable(
        (By.XPATH, "//ol[contains(@class, 'ge-breadcrumbs')]//a[normalize-space()='Home']")), "GX's Home link")
    home.click()
    wait(driver, lambda d: urlsplit(d.current_url).path == "/renkei/datadocs/index.html"
          and d.execute_script("return document.readyState") == "complete", "the Data Docs index")
    wait(driver, lambda d: d.execute_script(f"return document.querySelectorAll('{INDEX_ROWS}').length") > 0,
          "the index table's rows")
    state = driver.execute_script(f"""
        const table = jQuery('table.ge-index-page-validation-results-table');
        return {{
          bootstrap_table: typeof jQuery.fn.bootstrapTable,
          filter_control: document.querySelectorAll('.bootstrap-table .filter-control').length,
          rows: [...document.querySelectorAll('{INDEX_ROWS}')].map(r => r.dataset.href),
          all_rows: table.bootstrapTable('getData', {{useCurrentPage: false}}).map(r => r._table_row_link_path),
          empty: document.querySelectorAll('.ge-index-page-validation-results-table .no-records-found').length,
          resources: performance.getEntriesByType('resource').map(r => r.name),
        }};""")
    shot(driver, "datadocs-03-index-offline")
    assert state["bootstrap_table"] == "function" and state["filter_control"] > 0
    assert state["rows"] and not state["empty"]
    # a result per ingest run and source: every source that ran is listed, with a link to its page
    linked = [re.fullmatch(r"validations/([^/]+)/[^/]+/[^/]+/\1\.html", href) for href in state["all_rows"]]
    assert all(linked), state["all_rows"]
    assert {m.group(1) for m in linked} == set(_sources(server))
    origin = urlsplit(server.url).netloc
    outside = [r for r in state["resources"] if urlsplit(r).netloc != origin]
    assert not outside, f"the index requested {outside}"
    assert any("/static/offline/bootstrap-table/bootstrap-table.min.js" in r for r in state["resources"])
    assert not server.leaks(driver.page_source)

    # The table's own search (bootstrap-table) narrows it to one source; a row opens its page.
    search = driver.find_element(By.CSS_SELECTOR, ".bootstrap-table .fixed-table-toolbar input.search-input")
    search.send_keys("immunization")
    wait(driver, lambda d: {h.split("/")[1] for h in d.execute_script(
        f"return [...document.querySelectorAll('{INDEX_ROWS}')].map(r => r.dataset.href)")} == {"immunization"},
          "the search to leave immunization's rows only")
    shot(driver, "datadocs-04-index-searched")
    driver.find_element(By.CSS_SELECTOR, INDEX_ROWS).click()
    wait(driver, lambda d: re.search(r"/renkei/datadocs/validations/immunization/.+/immunization\.html$",
                                      urlsplit(d.current_url).path)
          and "Expectation Validation Result" in d.find_element(By.TAG_NAME, "body").text, "immunization's page")
