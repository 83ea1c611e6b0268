"""The trends of the Renkei pages (renkei.ui.data: run_trend, notices_per_day, review_by_age) on
hand-made warehouse rows with hand-computed answers, on SQLite and PostgreSQL; and the charts
of the trends page drawing those same numbers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from renkei.ui import data, trends
from renkei.warehouse import engine, ensure_schema, ingest_runs, link_builds, notices, review_queue

JST = timezone(timedelta(hours=9))
NOW = datetime(2025, 6, 10, 12, 0, tzinfo=JST)
SVG = "{http://www.w3.org/2000/svg}"

RUNS = [  # (run_id, source, updated_at, state, read, failed, quarantined)
    ("r1", "immunization", "2025-06-01T09:00:00+09:00", "loaded", 100, 5, 5),
    ("r2", "immunization", "2025-06-02T09:00:00+09:00", "loaded", 200, 0, 0),
    ("r3", "immunization", "2025-06-03T09:00:00+09:00", "failed", 50, 10, 0),  # halted by validation
    ("r4", "immunization", "2025-06-04T09:00:00+09:00", "loaded", 0, 0, 0),
    ("r5", "immunization", "2025-06-05T09:00:00+09:00", "extracted", 30, 0, 0),  # still running
    ("r1", "nhi", "2025-06-01T10:00:00+09:00", "loaded", 10, 1, 1),
]
NOTICES = [  # (service, created_at): days 06-08 … 06-10 (JST) count
    ("immunization", "2025-06-10T08:00:00+09:00"), ("immunization", "2025-06-10T23:59:59+09:00"),
    ("immunization", "2025-06-08T00:00:00+09:00"),
    ("immunization", "2025-06-07T23:59:59+09:00"),  # the day before the window
    ("immunization", "2025-06-11T00:00:00+09:00"),  # after today
    ("checkup", "2025-06-09T00:00:00+09:00"),
]
BUILDS = [  # (seq, run_id, built_at): ages at NOW
    (1, "L4", "2025-05-10T12:00:00+09:00"),  # 31 days
    (2, "L3", "2025-06-02T12:00:00+09:00"),  # exactly 8 days
    (3, "L2", "2025-06-02T12:00:01+09:00"),  # a second under 8 days
    (4, "L1", "2025-06-09T12:00:00+09:00"),  # exactly 1 day
    (5, "L0", "2025-06-10T11:00:00+09:00"),  # an hour
    (6, "L0", "2025-06-10T11:30:00+09:00"),  # the same run again: the first build counts
]
ITEMS = [  # (state, active, first_seen_run)
    ("pending", True, "L0"), ("pending", True, "L0"), ("approved", True, "L1"), ("pending", True, "L2"),
    ("rejected", True, "L3"), ("pending", True, "L4"), ("pending", True, "cli-run"),  # no build recorded
    ("pending", False, "L0"),  # resolved: not counted
]


@pytest.fixture
def url(engine_url):
    url = engine_url
    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:
        conn.execute(sa.insert(ingest_runs), [
            {"run_id": r, "source": s, "updated_at": at, "state": st, "read": rd, "failed": f, "quarantined": q}
            for r, s, at, st, rd, f, q in RUNS])
        conn.execute(sa.insert(notices), [
            {"notice_id": f"n{i}", "service": s, "kind": "reminder", "erk": f"v1.e{i}", "rule_id": "rule",
             "rule_version": 1, "subject": "X", "window_start": date(2025, 6, 1), "window_end": date(2025, 7, 1),
             "evaluated_on": date(2025, 6, 1), "facts": "{}", "created_run_id": "s1", "created_at": at}
            for i, (s, at) in enumerate(NOTICES)])
        conn.execute(sa.insert(link_builds), [
            {"seq": seq, "run_id": r, "as_of": date(2025, 6, 1), "grace_days": 0, "mode": "full",
             "residents_touched": 1, "built_at": at} for seq, r, at in BUILDS])
        conn.execute(sa.insert(review_queue), [
            {"item_id": f"{i:016x}", "source": "immunization", "record_key": f"IM-{i}", "reason": "sex_mismatch",
             "erk": f"v1.e{i}", "severity": "hold", "state": st, "active": active, "first_seen_run": run}
            for i, (st, active, run) in enumerate(ITEMS)])
    yield url
    eng.dispose()


def test_the_last_runs_per_source(url):
    eng = engine(url)
    with eng.connect() as conn:
        got = data.run_trend(conn, last_runs=3)
    eng.dispose()
    assert {s: [(r["run_id"], r["read"], r["quarantined"], r["rate"], r["halted"]) for r in rows]
            for s, rows in got.items()} == {
        "immunization": [("r2", 200, 0, 0.0, False), ("r3", 50, 10, 0.2, True), ("r4", 0, 0, None, False)],
        "nhi": [("r1", 10, 1, 0.1, False)],
    }


def test_notices_per_service_per_day(url):
    eng = engine(url)
    with eng.connect() as conn:
        got = data.notices_per_day(conn, NOW.date(), days=3)
    eng.dispose()
    assert got == {"days": ["2025-06-08", "2025-06-09", "2025-06-10"],
                   "services": {"checkup": [0, 1, 0], "immunization": [1, 0, 2]}}


def test_review_items_by_age_and_state(url):
    eng = engine(url)
    with eng.connect() as conn:
        got = data.review_by_age(conn, NOW)
    eng.dispose()
    assert got["buckets"] == ("<1", "1-7", "8-30", ">30", "unknown")
    assert got["states"] == {"approved": [0, 1, 0, 0, 0], "pending": [2, 1, 0, 1, 1], "rejected": [0, 0, 1, 0, 0]}


def test_an_empty_warehouse_has_empty_trends(tmp_path):
    eng = engine(f"sqlite:///{tmp_path / 'empty.db'}")
    ensure_schema(eng)
    with eng.connect() as conn:
        assert data.run_trend(conn) == {}
        assert data.notices_per_day(conn, NOW.date(), days=2) == {"days": ["2025-06-09", "2025-06-10"], "services": {}}
        assert data.review_by_age(conn, NOW)["states"] == {}
    eng.dispose()
    page = trends.page({"runs": {}, "notices": {"days": ["2025-06-10"], "services": {}},
                        "review": {"buckets": data.AGE_BUCKETS, "states": {}}, "last_runs": 20, "days": 1})
    for svg in (page["overview"], page["notices"], page["review"]):
        assert "データなし / no data" in svg
    assert page["sources"] == []


def _values(svg: str, element: str = "rect") -> dict[tuple[str, str], float]:
    root = ET.fromstring(svg)
    return {(e.get("data-series"), e.get("data-category")): float(e.get("data-value"))
            for e in root.iter(f"{SVG}{element}") if e.get("data-value") is not None}


def test_the_trends_page_draws_the_warehouse_numbers(url, monkeypatch):
    monkeypatch.setenv("RENKEI_WAREHOUSE_URL", url)
    page = trends.page(data.trends(NOW, last_runs=3, days=3))
    imm = next(s for s in page["sources"] if s["source"] == "immunization")
    assert _values(imm["counts"]) == {
        ("読込 read", "06-02 09:00"): 200, ("隔離 quarantined", "06-02 09:00"): 0,
        ("読込 read", "06-03 09:00 停止"): 50, ("隔離 quarantined", "06-03 09:00 停止"): 10,
        ("読込 read", "06-04 09:00"): 0, ("隔離 quarantined", "06-04 09:00"): 0}
    assert _values(imm["rate"], "circle") == {("隔離率 quarantine rate", "06-02 09:00"): 0.0,
                                              ("隔離率 quarantine rate", "06-03 09:00 停止"): 20.0}
    assert _values(page["overview"], "circle") == {("immunization", "-2"): 0.0, ("immunization", "-1"): 20.0,
                                                   ("nhi", "最新 latest"): 10.0}
    assert _values(page["notices"]) == {("checkup", "06-08"): 0, ("checkup", "06-09"): 1, ("checkup", "06-10"): 0,
                                        ("immunization", "06-08"): 1, ("immunization", "06-09"): 0,
                                        ("immunization", "06-10"): 2}
    review = _values(page["review"])
    assert review[("未決 pending", "<1 日 day")] == 2 and review[("未決 pending", "不明 unknown")] == 1
    assert review[("承認 approved", "1–7 日 days")] == 1 and review[("却下 rejected", "8–30 日 days")] == 1
    assert sum(review.values()) == 7  # the seven active items
