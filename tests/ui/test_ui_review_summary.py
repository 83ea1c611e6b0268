"""The review summary page (/renkei/review/summary) in `make up`'s real Airflow: refused without a
login, read by a viewer as JSON and as a page, reached in a real headless Chromium from the review
queue's link inside the Airflow UI (screenshot to $RENKEI_ARTIFACTS). The oracle is the stack's
review_queue read with plain SQL. No page may hold a raw name, code or address."""

from __future__ import annotations

import sqlite3
from collections import Counter

import pytest
from browser import browser, login, open_in_airflow, shot, wait  # noqa: F401 - browser: the fixture
from ui_stack import launch

pytestmark = [pytest.mark.ui, pytest.mark.airflow]
DEPARTMENT_OF = {"immunization": "health_bureau", "child_health": "children_bureau", "nhi": "nhi"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with launch(tmp_path_factory.mktemp("ui-summary") / "work") as s:
        yield s


def _by_sql(server) -> tuple[Counter, Counter]:
    """(items by (department, column), by severity and column) straight from the queue table."""
    with sqlite3.connect(server.warehouse) as conn:
        rows = conn.execute("SELECT source, severity, state, active FROM review_queue").fetchall()
    col = lambda state, active: state if active else "resolved"  # noqa: E731
    return (Counter((DEPARTMENT_OF[s], col(st, a)) for s, _, st, a in rows),
            Counter((sev, col(st, a)) for _, sev, st, a in rows))


def test_the_summary_is_for_logged_in_readers_only(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as http:
        r = http.get("/renkei/review/summary", headers={"Accept": "application/json"})
        assert (r.status_code, r.json()) == (401, {"detail": "Not authenticated"})
        r = http.get("/renkei/review/summary", headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"].startswith("/auth/login?next=")

        token = {"Authorization": f"Bearer {server.token('viewer')}"}
        got = http.get("/renkei/review/summary", headers={**token, "Accept": "application/json"}).json()
        page = http.get("/renkei/review/summary", headers={**token, "Accept": "text/html"})
    by_dept, by_severity = _by_sql(server)
    assert by_dept, "the demo stack should have review items: check ui_stack._seed_findings"
    assert {(d, c): n for d, row in got["by_department"].items() for c, n in row.items()
            if c in ("pending", "approved", "rejected", "resolved") and n} == dict(by_dept)
    assert {(s, c): n for s, row in got["by_severity"].items() for c, n in row.items()
            if c in ("pending", "approved", "rejected", "resolved") and n} == dict(by_severity)
    assert got["items"] == sum(by_dept.values())
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert not server.leaks(page.text)


def test_a_viewer_opens_the_summary_from_the_queue_in_the_browser(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = browser
    login(driver, server)

    open_in_airflow(driver, server, "renkei-review")
    driver.find_element(By.ID, "summary-link").click()
    wait(driver, ec.presence_of_element_located((By.ID, "by-department")), "the summary page")
    assert "Review summary" in driver.find_element(By.CSS_SELECTOR, "main h1").text
    by_dept, _ = _by_sql(server)
    for (dept, col), n in by_dept.items():
        cell = driver.find_element(By.CSS_SELECTOR, f'#by-department tr[data-key="{dept}"] td[data-col="{col}"]')
        assert cell.text == str(n), (dept, col)
    assert driver.find_element(By.ID, "total-items").text == str(sum(by_dept.values()))
    assert driver.find_elements(By.CSS_SELECTOR, '#waiting tr[data-key="all"]')
    shot(driver, "20-review-summary")
    assert not server.leaks(driver.page_source)
