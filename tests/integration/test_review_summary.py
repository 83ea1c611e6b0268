"""The review queue in figures (renkei.linkage.review_summary): a hand-built queue with known first
builds and decision times, on SQLite and PostgreSQL, through the function, the CLI and the page's
JSON variant. Every expected figure below is counted by hand from the rows in ``ITEMS``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from renkei.cli import main
from renkei.linkage.review_summary import summary
from renkei.warehouse import engine, ensure_schema, link_builds, review_queue

JST = timezone(timedelta(hours=9))
NOW = datetime(2025, 6, 21, 10, 0, tzinfo=JST)
BUILDS = {"link_residents/r1": "2025-06-01T10:00:00+09:00", "link_residents/r2": "2025-06-11T10:00:00+09:00"}
# (source, reason, severity, state, active, first seen run, decided at); health_bureau keeps
# immunization, children_bureau child_health, nhi nhi
ITEMS = [
    ("immunization", "name_mismatch", "review", "pending", True, "r1", None),  # waiting 20 days
    ("immunization", "birth_date_mismatch", "hold", "pending", True, "r2", None),  # 10 days
    ("immunization", "address_mismatch", "review", "approved", True, "r1", "2025-06-03T10:00:00+09:00"),  # 2 days
    ("immunization", "birth_date_mismatch", "hold", "rejected", False, "r1", "2025-06-06T10:00:00+09:00"),  # 5, resolved
    ("child_health", "sex_mismatch", "hold", "pending", True, "r2", None),  # 10 days
    ("child_health", "name_mismatch", "review", "pending", False, "r1", None),  # resolved, never decided
    ("nhi", "not_in_registry", "hold", "pending", True, "gone", None),  # its build is not recorded
    ("child_health", "sex_mismatch", "hold", "approved", True, "r2", "2025-06-12T22:00:00+09:00"),  # 1.5 days
]


def _w(count, median, p90, top):
    return {"count": count, "median_days": median, "p90_days": p90, "max_days": top}


NONE = _w(0, None, None, None)
EXPECTED = {
    "as_of": "2025-06-21T10:00:00+09:00",
    "items": 8,
    "by_state": {"pending": 4, "approved": 2, "rejected": 0, "resolved": 2},
    "by_department": {
        "children_bureau": {"pending": 1, "approved": 1, "rejected": 0, "resolved": 1, "total": 3,
                            "waiting_pending": _w(1, 10.0, 10.0, 10.0), "days_to_decision": _w(1, 1.5, 1.5, 1.5),
                            "unknown_start": 0},
        "health_bureau": {"pending": 2, "approved": 1, "rejected": 0, "resolved": 1, "total": 4,
                          # [10, 20]: median 15, p90 the 2nd of 2; decisions [2, 5]
                          "waiting_pending": _w(2, 15.0, 20.0, 20.0), "days_to_decision": _w(2, 3.5, 5.0, 5.0),
                          "unknown_start": 0},
        "nhi": {"pending": 1, "approved": 0, "rejected": 0, "resolved": 0, "total": 1,
                "waiting_pending": NONE, "days_to_decision": NONE, "unknown_start": 1},
    },
    "by_reason": {
        "address_mismatch": {"pending": 0, "approved": 1, "rejected": 0, "resolved": 0, "total": 1},
        "birth_date_mismatch": {"pending": 1, "approved": 0, "rejected": 0, "resolved": 1, "total": 2},
        "name_mismatch": {"pending": 1, "approved": 0, "rejected": 0, "resolved": 1, "total": 2},
        "not_in_registry": {"pending": 1, "approved": 0, "rejected": 0, "resolved": 0, "total": 1},
        "sex_mismatch": {"pending": 1, "approved": 1, "rejected": 0, "resolved": 0, "total": 2},
    },
    "by_severity": {
        "hold": {"pending": 3, "approved": 1, "rejected": 0, "resolved": 1, "total": 5},
        "review": {"pending": 1, "approved": 1, "rejected": 0, "resolved": 1, "total": 3},
    },
    # pending [10, 10, 20]: p90 = the ⌈2.7⌉ = 3rd; decisions [1.5, 2, 5]
    "waiting_pending": _w(3, 10.0, 20.0, 20.0),
    "days_to_decision": _w(3, 2.0, 5.0, 5.0),
    "unknown_start": 1,
}


@pytest.fixture
def url(engine_url):
    url = engine_url
    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:
        conn.execute(sa.insert(link_builds), [
            {"seq": n, "run_id": run, "as_of": datetime.fromisoformat(at).date(), "grace_days": 90, "mode": "full",
             "residents_touched": 1, "built_at": at} for n, (run, at) in enumerate(BUILDS.items(), start=1)])
        conn.execute(sa.insert(review_queue), [
            {"item_id": f"{n:016x}", "source": src, "record_key": f"REC-{n}", "reason": reason, "erk": f"v1.e{n}",
             "severity": sev, "state": state, "active": active, "row_hash": "h" * 64,
             "first_seen_run": f"link_residents/{run}", "decided_by": "kensa" if decided else None,
             "decided_at": decided, "comment": "checked" if decided else None}
            for n, (src, reason, sev, state, active, run, decided) in enumerate(ITEMS, start=1)])
    eng.dispose()
    return url


def test_summary_counts_and_waiting_times(url):
    assert summary(url, now=NOW) == EXPECTED


def test_an_empty_queue(tmp_path):
    got = summary(f"sqlite:///{tmp_path / 'w.db'}", now=NOW)
    assert (got["items"], got["by_department"], got["waiting_pending"]) == (0, {}, NONE)


def test_the_cli_prints_the_figures(url, capsys):
    assert main(["review", "summary", "--json", "--warehouse", url]) == 0
    got = json.loads(capsys.readouterr().out)
    # the CLI counts pending waits up to the real clock; everything else is fixed by the rows
    for key in ("items", "by_state", "by_reason", "by_severity", "days_to_decision", "unknown_start"):
        assert got[key] == EXPECTED[key], key
    assert got["waiting_pending"]["count"] == EXPECTED["waiting_pending"]["count"]
    assert {d: {k: v for k, v in row.items() if k != "waiting_pending"} for d, row in got["by_department"].items()} == \
        {d: {k: v for k, v in row.items() if k != "waiting_pending"} for d, row in EXPECTED["by_department"].items()}
    assert main(["review", "summary", "--warehouse", url]) == 0
    text = capsys.readouterr().out
    assert "health_bureau" in text and "to decision, all" in text


def test_the_page_and_its_json(url, monkeypatch):
    from fastapi.testclient import TestClient

    from renkei.ui import auth
    from renkei.ui.app import create_app

    class _User:
        def get_name(self) -> str:
            return "viewer-01"

    async def as_viewer(request):
        return _User()

    monkeypatch.setenv("RENKEI_WAREHOUSE_URL", url)
    monkeypatch.setattr(auth, "authenticate", as_viewer)
    monkeypatch.setattr(auth, "allowed", lambda user, method: method == auth.READ)
    with TestClient(create_app(), root_path="/renkei") as client:
        got = client.get("/review/summary", headers={"Accept": "application/json"}).json()
        page = client.get("/review/summary", headers={"Accept": "text/html"})
        queue = client.get("/review", headers={"Accept": "text/html"}).text
    assert got["by_severity"] == EXPECTED["by_severity"] and got["by_state"] == EXPECTED["by_state"]
    assert page.status_code == 200 and 'id="by-department"' in page.text
    assert '<span id="total-items">8</span>' in page.text
    assert '<tr data-key="health_bureau"><td>health_bureau</td><td class="num" data-col="pending">2</td>' in page.text
    assert 'href="/renkei/review/summary"' in queue
