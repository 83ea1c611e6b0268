"""The Renkei pages in the Airflow UI, against `make up`'s real Airflow (SimpleAuthManager).

HTTP tests pin the access rules (anonymous, forged and expired tokens, viewer vs reviewer,
cross-site form posts, the health-facts permission); the browser test logs in through Airflow's
login page in a real headless Chromium, opens every Renkei nav page inside the Airflow UI,
approves one review item and rejects another — requests, shown as pending until the stack's
apply_review_decisions Dag applies them — and checks the warehouse queue and the audit trail.
Screenshots go to $RENKEI_ARTIFACTS (default tests/artifacts/ui/). No page may hold a raw name,
code or address.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time

import pytest

from browser import browser, logged_in, login, open_in_airflow, shot, wait  # noqa: F401 - browser: the fixture
from ui_stack import launch

pytestmark = [pytest.mark.ui, pytest.mark.airflow]

PAGES = ("runs", "quarantine", "review", "notices", "trends")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with launch(tmp_path_factory.mktemp("ui") / "work") as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as client:
        yield client


def _a_notice_id(server) -> str:
    with sqlite3.connect(server.warehouse) as conn:
        return conn.execute("SELECT notice_id FROM notices ORDER BY notice_id LIMIT 1").fetchone()[0]


DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _health_notice(server) -> tuple[str, dict, set[str]]:
    """A notice whose rule used a birth date: its id, its stored facts, and the dates that only
    the facts and the window (derived from them) tell — not the evaluation or creation date."""
    with sqlite3.connect(server.warehouse) as conn:
        notice_id, facts, start, end, evaluated, created = conn.execute(
            "SELECT notice_id, facts, window_start, window_end, evaluated_on, created_at FROM notices "
            "WHERE facts LIKE '%birth_date%' ORDER BY notice_id LIMIT 1").fetchone()
    dates = set(DATE.findall(facts)) | {start, end}
    return notice_id, json.loads(facts), dates - {evaluated, created[:10]}


def _pending(server, n: int) -> list[dict]:
    items = [r for r in server.review_rows() if r["state"] == "pending" and r["active"]]
    assert len(items) >= n, f"the demo needs {n} pending review items, has {len(items)}: check ui_stack._seed_findings"
    return items[:n]


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _routes(server) -> list[str]:
    # (bare "/renkei" is not the app's: Airflow's UI catch-all serves its empty SPA shell there)
    return ["/renkei/", "/renkei/runs", "/renkei/quarantine?page=1", "/renkei/review?all=true",
            "/renkei/notices", f"/renkei/notices/{_a_notice_id(server)}", "/renkei/trends", "/renkei/static/renkei.css",
            "/renkei/no-such-page", "/renkei/docs", "/renkei/openapi.json"]


def test_the_plugin_module_stays_light():
    # Every Airflow component imports it: no FastAPI app, warehouse or renkei.ui.app at import time.
    code = ("import sys, renkei.ui.plugin as p; "
            "print(sorted(m for m in ('fastapi', 'renkei.ui.app', 'renkei.warehouse', 'renkei.linkage.review') "
            "if m in sys.modules)); print(len(p.RenkeiPlugin.external_views))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.split("\n")[:2] == ["[]", str(len(PAGES))]


def test_form_tokens_are_bound_to_user_and_time():
    from renkei.ui.auth import CSRF_TTL_S, csrf_token, csrf_valid

    t0 = 1_750_000_000
    token = csrf_token("reviewer", now=t0)
    assert csrf_valid(token, "reviewer", now=t0 + CSRF_TTL_S)
    assert not csrf_valid(token, "reviewer", now=t0 + CSRF_TTL_S + 1)  # expired
    assert not csrf_valid(token, "reviewer", now=t0 - 1)  # from the future
    assert not csrf_valid(token, "viewer", now=t0)  # another user's
    issued, mac = token.split(".")
    assert not csrf_valid(f"{int(issued) + 1}.{mac}", "reviewer", now=t0 + 1)  # re-dated
    assert not csrf_valid("", "reviewer", now=t0) and not csrf_valid("x.y", "reviewer", now=t0)


def test_nav_entries_and_app_are_registered(server, http):
    r = http.get("/api/v2/plugins", headers=_bearer(server.token("viewer")))
    assert r.status_code == 200, r.text
    plugin = next(p for p in r.json()["plugins"] if p["name"] == "renkei")
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/renkei"]
    assert {v["href"] for v in plugin["external_views"]} == {f"renkei/{p}" for p in PAGES}
    assert {v["destination"] for v in plugin["external_views"]} == {"nav"}


def test_anonymous_requests_are_refused_on_every_route(server, http):
    before, requested = server.review_rows(), server.requests()  # other tests (any order) may have decided
    for route in _routes(server):
        r = http.get(route, headers={"Accept": "application/json"})
        assert r.status_code == 401, (route, r.status_code)
        assert r.json() == {"detail": "Not authenticated"}, route
        page = http.get(route, headers={"Accept": "text/html"})
        assert page.status_code == 303, (route, page.status_code)
        assert page.headers["location"].startswith("/auth/login?next="), route
        assert "<table" not in page.text
    item = before[0]["item_id"]
    r = http.post(f"/renkei/review/{item}", data={"decision": "approved", "comment": "anonymous"})
    assert r.status_code == 401
    assert server.review_rows() == before and server.requests() == requested


def test_forged_and_expired_tokens_are_refused(server, http):
    import jwt

    before, requested = server.review_rows(), server.requests()  # other tests (any order) may have decided
    claims = jwt.decode(server.token("admin"), options={"verify_signature": False})
    expired = jwt.encode({**claims, "iat": int(time.time()) - 7200, "nbf": int(time.time()) - 7200,
                          "exp": int(time.time()) - 3600}, server.jwt_secret, algorithm="HS512")
    forged = jwt.encode({**claims, "role": "admin"}, "not-the-server-secret-" * 3, algorithm="HS512")
    unsigned = jwt.encode(claims, None, algorithm="none")
    # as a cookie, a browser with an expired session is sent to the login page; a forged one is not
    for label, token, code, in_browser in (("expired", expired, 401, 303), ("forged", forged, 403, 403),
                                           ("unsigned", unsigned, 403, 403)):
        for route in ("/renkei/runs", "/renkei/static/renkei.css"):
            r = http.get(route, headers=_bearer(token))
            assert r.status_code == code, (label, route, r.status_code, r.text)
        http.cookies.set("_token", token)
        try:
            r = http.get("/renkei/review", headers={"Accept": "text/html"})
            assert r.status_code == in_browser, label
            assert "<table" not in r.text
            r = http.post(f"/renkei/review/{server.review_rows()[0]['item_id']}", headers={"Origin": server.url},
                          data={"decision": "approved", "comment": label})
            assert r.status_code == code, label
        finally:
            http.cookies.clear()
    assert server.review_rows() == before and server.requests() == requested


def test_a_viewer_reads_every_page_but_cannot_decide(server, http):
    token = server.token("viewer")
    for route in _routes(server)[1:7]:
        r = http.get(route, headers=_bearer(token))
        assert r.status_code == 200, (route, r.status_code)
        assert r.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'self'" in r.headers["content-security-policy"]
        assert not server.leaks(r.text), route
    review = http.get("/renkei/review", headers=_bearer(token)).text
    assert "read only" in review and 'name="decision"' not in review
    before, requested = server.review_rows(), server.requests()  # other tests (any order) may have decided
    r = http.post(f"/renkei/review/{before[0]['item_id']}", headers=_bearer(token),
                  data={"decision": "approved", "comment": "viewer tries"})
    assert r.status_code == 403
    assert "edit access to the link_residents Dag" in r.text
    assert server.review_rows() == before and server.requests() == requested


def test_health_facts_need_their_own_permission(server, http):
    notice_id, facts, dates = _health_notice(server)
    assert dates, "the notice's facts hold no date the page could leak: pick another notice"
    route = f"/renkei/notices/{notice_id}"
    # viewer (read access) and admin (every Airflow permission, but not named for health facts)
    for user in ("viewer", "admin"):
        token = server.token(user)
        page = http.get(route, headers=_bearer(token))
        assert page.status_code == 200, (user, page.status_code)
        assert 'id="facts-restricted"' in page.text and 'id="facts"' not in page.text, user
        body = http.get(route, headers={**_bearer(token), "Accept": "application/json"})
        assert body.headers["content-type"].startswith("application/json"), user
        got = body.json()
        assert (got["facts"], got["with_facts"]) == (None, False), user
        assert "facts" not in got["notice"] and got["notice"]["window_start"] is None, user
        assert got["notice"]["notice_id"] == notice_id and got["notice"]["rule_id"]  # keys still there
        listing = http.get("/renkei/notices?page=1", headers=_bearer(token)).text
        for text, what in ((page.text, "page"), (body.text, "JSON"), (listing, "notices list")):
            shown = sorted(d for d in dates if d in text)
            assert not shown, f"{user}'s {what} shows {len(shown)} fact/window date(s)"
            assert not any(k in text for k in facts if k not in ("evaluated_on",)), (user, what)
    # the user given the permission ([renkei] health_facts_users) sees the facts and the window
    token = server.token("reviewer")
    got = http.get(route, headers={**_bearer(token), "Accept": "application/json"}).json()
    assert got["with_facts"] is True and got["facts"] == facts
    page = http.get(route, headers=_bearer(token)).text
    assert 'id="facts"' in page and all(d in page for d in dates)


def test_a_cookie_post_needs_this_origin_and_the_users_form_token(server, http):
    item = _pending(server, 1)[0]["item_id"]
    http.cookies.set("_token", server.token("reviewer"))
    try:
        page = http.get("/renkei/review", headers={"Accept": "text/html"})
        assert page.status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        form = {"decision": "approved", "comment": "csrf probe", "csrf": csrf}
        same = {"Origin": server.url}
        cases = [
            ({"Origin": "http://evil.example"}, form),              # another site posting the form
            ({}, form),                                             # no Origin, no Referer
            (same, {**form, "csrf": ""}),                           # no token
            (same, {**form, "csrf": csrf.split(".")[0] + ".00"}),   # a made-up token
            (same, {**form, "csrf": "1." + csrf.split(".")[1]}),    # a token re-dated (MAC no longer fits)
        ]
        for headers, data in cases:
            r = http.post(f"/renkei/review/{item}", headers=headers, data=data)
            assert r.status_code == 403, (headers, data.get("csrf"), r.status_code)
        assert next(i for i in server.review_rows() if i["item_id"] == item)["state"] == "pending"
    finally:
        http.cookies.clear()


def test_a_reviewer_decides_with_a_bearer_token_and_the_trail_records_it(server, http):
    item = _pending(server, 1)[0]["item_id"]
    token = server.token("reviewer")
    r = http.post(f"/renkei/review/{item}", headers=_bearer(token),
                  data={"decision": "rejected", "comment": "department to correct the record"})
    assert r.status_code == 303, r.text
    assert r.headers["location"].endswith(f"/review?requested={item}")
    # the api-server only recorded the request: the pipeline's Dag applies it
    [req] = [q for q in server.requests() if q["item_id"] == item]
    assert (req["decision"], req["reviewer"]) == ("rejected", "reviewer")
    if req["state"] == "pending":  # (unless the every-minute Dag was quicker than this line)
        page = http.get("/renkei/review", headers=_bearer(token)).text
        assert re.search(rf'id="item-{item}"[^>]*data-request="pending"', page)
        assert "pending application" in page
    [req] = server.wait_applied([item])
    assert req["state"] == "applied", req["outcome"]
    row = next(i for i in server.review_rows() if i["item_id"] == item)
    assert (row["state"], row["decided_by"], row["comment"]) == ("rejected", "reviewer", "department to correct the record")
    entry = [e for e in server.audit_entries("review_decision") if e["item_id"] == item]
    assert [(e["decision"], e["reviewer"], e["request_id"]) for e in entry] == [("rejected", "reviewer", req["request_id"])]
    assert entry[0]["seq"] == req["audit_seq"]


# --- the browser --------------------------------------------------------------------------------

def _flash_naming(item_id: str):
    """A wait condition: the page's #flash text once it names ``item_id`` (a stale element is
    retried by wait: the page may be reloading)."""
    from selenium.webdriver.common.by import By

    def seen(driver):
        text = driver.find_element(By.ID, "flash").text
        return text if item_id in text else False
    return seen


def test_a_reviewer_works_the_queue_in_the_browser(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = browser
    login(driver, server, "reviewer", screenshot="00-airflow-login")

    sources = [row[0] for row in sqlite3.connect(server.warehouse).execute("SELECT DISTINCT source FROM ingest_runs")]
    html = open_in_airflow(driver, server, "renkei-runs")
    assert all(f"<td>{s}</td>" in html for s in sources)
    shot(driver, "01-runs")
    pages = {"runs": html}

    html = open_in_airflow(driver, server, "renkei-quarantine")
    assert "expect_column_values_to_be_unique:record_id" in html and driver.find_elements(By.CSS_SELECTOR, "#rows tr td")
    shot(driver, "02-quarantine")
    pages["quarantine"] = html

    html = open_in_airflow(driver, server, "renkei-notices")
    assert driver.find_elements(By.CSS_SELECTOR, "a.notice-link")
    shot(driver, "03-notices")
    pages["notices"] = html
    driver.find_element(By.CSS_SELECTOR, "a.notice-link").click()
    facts = wait(driver, ec.presence_of_element_located((By.ID, "facts")), "the notice explanation")
    notice_id = driver.find_element(By.CSS_SELECTOR, "h1 code").text
    with sqlite3.connect(server.warehouse) as conn:
        rule_id, stored = conn.execute("SELECT rule_id, facts FROM notices WHERE notice_id = ?", (notice_id,)).fetchone()
    assert rule_id in driver.find_element(By.ID, "explain").text
    assert {th.text for th in facts.find_elements(By.TAG_NAME, "th")} == set(json.loads(stored))
    shot(driver, "04-notice-explained")
    pages["notice"] = driver.page_source

    approve, reject = _pending(server, 2)
    html = open_in_airflow(driver, server, "renkei-review")
    shot(driver, "05-review-before")
    pages["review"] = html
    for item, button, comment in ((approve, "approve", "UIテスト: 登録情報と一致を確認"),
                                  (reject, "reject", "UI test: department to correct the record")):
        row = wait(driver, ec.presence_of_element_located((By.ID, f"item-{item['item_id']}")), "the item row")
        row.find_element(By.NAME, "comment").send_keys(comment)
        row.find_element(By.CSS_SELECTOR, f"button.{button}").click()
        # The form posts and the page reloads: until it has, #flash may still be the previous
        # item's (or go stale under the reload). Wait for this item's own confirmation.
        flash = wait(driver, _flash_naming(item["item_id"]), f"the {button} confirmation")
        assert item["item_id"] in flash and "pending application" in flash
    shot(driver, "06-review-requested")
    pages["review-requested"] = driver.page_source

    applied = server.wait_applied([approve["item_id"], reject["item_id"]])
    assert [r["state"] for r in applied] == ["applied", "applied"], [r["outcome"] for r in applied]
    html = open_in_airflow(driver, server, "renkei-review")
    for item, state in ((approve, "approved"), (reject, "rejected")):
        row = driver.find_element(By.ID, f"item-{item['item_id']}")
        assert (row.get_attribute("data-state"), row.get_attribute("data-request")) == (state, "")
    shot(driver, "07-review-applied")
    pages["review-after"] = html

    rows = {r["item_id"]: r for r in server.review_rows()}
    assert (rows[approve["item_id"]]["state"], rows[approve["item_id"]]["decided_by"]) == ("approved", "reviewer")
    assert rows[approve["item_id"]]["comment"] == "UIテスト: 登録情報と一致を確認"
    assert (rows[reject["item_id"]]["state"], rows[reject["item_id"]]["decided_by"]) == ("rejected", "reviewer")
    trail = {e["item_id"]: e for e in server.audit_entries("review_decision")}
    assert (trail[approve["item_id"]]["decision"], trail[approve["item_id"]]["reviewer"]) == ("approved", "reviewer")
    assert (trail[reject["item_id"]]["decision"], trail[reject["item_id"]]["reviewer"]) == ("rejected", "reviewer")

    from renkei.audit import verify
    from renkei.keys.ring import KeyRing

    result = verify(f"sqlite:///{server.warehouse}", KeyRing.load(server.work / "keyring.json"))
    assert result.ok, result

    assert len(server.plaintext) >= 600 and server.leaks(server.plaintext[0])  # the scan has teeth
    leaks = {name: server.leaks(html) for name, html in pages.items()}
    assert not any(leaks.values()), leaks
    log = (server.work / "logs" / "airflow-standalone.log").read_text(encoding="utf-8", errors="replace")
    assert not server.leaks(log), "the api-server log holds raw identifiers"


def test_the_trends_page_draws_the_warehouse_counts_in_the_browser(server, browser):
    """The trends page in Chromium: every chart is an inline SVG that is displayed, and its bars
    carry the warehouse's counts (read here with sqlite3, not through renkei.ui.data)."""
    from selenium.webdriver.common.by import By

    driver = browser
    driver.switch_to.default_content()
    logged_in_here = not driver.get_cookie("_token")  # the queue test may have logged in already
    logged_in(driver, server)

    def counts():
        """Per source its last 20 finished runs' (read, rejected); notices per service; active items per state."""
        with sqlite3.connect(server.warehouse) as conn:
            finished = conn.execute("SELECT source, read, CASE state WHEN 'failed' THEN failed ELSE quarantined END "
                                    "FROM ingest_runs WHERE state IN ('loaded', 'failed') ORDER BY updated_at, run_id")
            runs: dict[str, list] = {}
            for source, read, rejected in finished:
                runs[source] = [*runs.get(source, []), (read, rejected)][-20:]
            return (runs, dict(conn.execute("SELECT service, count(*) FROM notices GROUP BY service").fetchall()),
                    dict(conn.execute("SELECT state, count(*) FROM review_queue WHERE active GROUP BY state").fetchall()))

    try:
        # The stack's own ingest sweeps (six sources every 5 minutes) may finish runs while the page
        # loads: read until the warehouse stood still around one page load.
        for _ in range(10):
            before = counts()
            html = open_in_airflow(driver, server, "renkei-trends")
            if counts() == before:
                break
        else:
            pytest.fail("the warehouse's runs changed during each of 10 page loads: no stable moment to compare")
        runs, notices, items = before
        charts = driver.find_elements(By.CSS_SELECTOR, "figure.chart svg")
        assert len(charts) == 3 + 2 * len(runs), len(charts)  # overview, notices, review + 2 per source
        for svg in charts:
            assert svg.is_displayed() and svg.size["width"] > 300 and svg.size["height"] > 100, svg.get_attribute("id")
        shot(driver, "10-trends")

        def values(css: str, series: str | None = None) -> list[float]:
            return [float(e.get_attribute("data-value")) for e in driver.find_elements(By.CSS_SELECTOR, css)
                    if series is None or e.get_attribute("data-series") == series]

        for source, last in runs.items():  # bars oldest first, as the runs
            section = f"#source-{source} rect.bar"
            assert values(section, "読込 read") == [float(read) for read, _ in last], source
            assert values(section, "隔離 quarantined") == [float(rejected) for _, rejected in last], source
        bars = driver.find_elements(By.CSS_SELECTOR, "#notices-per-day rect.bar")
        per_service: dict[str, float] = {}
        for b in bars:  # the demo's notices were all created minutes ago: inside the 30 days
            per_service[b.get_attribute("data-series")] = per_service.get(b.get_attribute("data-series"), 0) + float(
                b.get_attribute("data-value"))
        assert per_service == {s: float(n) for s, n in notices.items()}
        review = driver.find_element(By.ID, "review-by-age")
        driver.execute_script("arguments[0].scrollIntoView()", review)
        shot(driver, "11-trends-notices-review")
        ages = {(b.get_attribute("data-series").split()[-1], b.get_attribute("data-category"))
                for b in review.find_elements(By.CSS_SELECTOR, "rect.bar") if float(b.get_attribute("data-value"))}
        assert {age for _, age in ages} <= {"<1 日 day"}  # the one link build found them all minutes ago
        assert {state for state, _ in ages} == set(items)
        assert sum(values("#review-by-age rect.bar")) == sum(items.values())
        assert "データなし" not in review.get_attribute("innerHTML")
        assert not server.leaks(html)
    finally:
        if logged_in_here:  # leave the browser as the queue test expects to find it
            driver.switch_to.default_content()
            driver.delete_all_cookies()
