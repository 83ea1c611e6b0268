"""Review decisions from the Renkei pages: requested by the api-server (no keyring), applied by the
pipeline step that holds the chain key (renkei.linkage.review.apply_requests, the
apply_review_decisions Dag), decision and audit-trail entry in one transaction. SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from renkei.audit import verify
from renkei.audit.trail import AuditError
from renkei.cli import main
from renkei.keys.ring import KeyRing
from renkei.linkage.review import (
    REQUEST_APPLIED, REQUEST_REFUSED, apply_requests, decide, list_items, list_requests, request_decision,
)
from renkei.warehouse import audit_log, engine, ensure_schema, review_queue

ITEM = "a1" * 8
T_REQUEST = datetime(2025, 6, 1, 1, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def anchors(tmp_path, monkeypatch):
    d = tmp_path / "anchors"
    monkeypatch.setenv("RENKEI_AUDIT_ANCHOR", str(d))
    return d


@pytest.fixture
def url(engine_url):
    url = engine_url
    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:
        conn.execute(sa.insert(review_queue).values(
            item_id=ITEM, source="immunization", record_key="IM-0001", reason="birth_date_mismatch",
            erk="v1.x", severity="hold", state="pending", active=True, row_hash="h" * 64,
            first_seen_run="link_residents/r1"))
    eng.dispose()
    return url


def _audit(url: str) -> list[dict]:
    eng = engine(url)
    with eng.connect() as conn:
        if not sa.inspect(conn).has_table(audit_log.name):
            return []
        rows = [dict(r) for r in conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings()]
    eng.dispose()
    return rows


def _item(url: str) -> dict:
    return next(i for i in list_items(url) if i["item_id"] == ITEM)


class _User:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_name(self) -> str:
        return self.name


@pytest.fixture
def api_server(url, monkeypatch):
    """The Renkei app as the api-server runs it, without a keyring: RENKEI_KEYRING unset and any
    attempt to load one fails the test. Auth is stubbed to a reviewer with edit access."""
    from fastapi.testclient import TestClient

    from renkei.ui import auth
    from renkei.ui.app import create_app

    async def as_reviewer(request):
        return _User("kensa-01")

    def no_keyring(*a, **k):
        raise AssertionError("the api-server path loaded a keyring")

    monkeypatch.delenv("RENKEI_KEYRING", raising=False)
    monkeypatch.setenv("RENKEI_WAREHOUSE_URL", url)
    monkeypatch.setattr(KeyRing, "load", staticmethod(no_keyring))
    monkeypatch.setattr(auth, "authenticate", as_reviewer)
    monkeypatch.setattr(auth, "allowed", lambda user, method: True)
    monkeypatch.setattr(auth, "sees_health_facts", lambda user: False)
    with TestClient(create_app(), root_path="/renkei") as client:
        yield client
    monkeypatch.undo()  # the pipeline side below loads its keyring again


def test_a_request_from_the_page_is_applied_by_the_pipeline_step(url, api_server, ring, anchors):
    r = api_server.post(f"/review/{ITEM}", headers={"Authorization": "Bearer stub"}, follow_redirects=False,
                        data={"decision": "approved", "comment": "registry copy checked"})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == f"/renkei/review?requested={ITEM}"
    page = api_server.get(f"/review?requested={ITEM}", headers={"Authorization": "Bearer stub"}).text
    assert "pending application" in page and 'data-request="pending"' in page
    # nothing decided, nothing in the trail yet: only the request
    assert (_item(url)["state"], _item(url)["decided_by"]) == ("pending", None)
    assert _audit(url) == []
    [req] = list_requests(url)
    assert (req["item_id"], req["decision"], req["reviewer"], req["state"]) == (ITEM, "approved", "kensa-01", "pending")

    done = apply_requests(url, ring=ring)  # the apply_review_decisions task, with the keyring
    assert done == {REQUEST_APPLIED: [req["request_id"]], REQUEST_REFUSED: []}
    item = _item(url)
    assert (item["state"], item["decided_by"], item["comment"]) == ("approved", "kensa-01", "registry copy checked")
    assert item["decided_at"] == req["requested_at"]  # when the reviewer decided
    [entry] = _audit(url)
    assert entry["kind"] == "review_decision"
    assert json.loads(entry["payload"]) == {"item_id": ITEM, "decision": "approved", "reviewer": "kensa-01",
                                            "reason": "birth_date_mismatch", "request_id": req["request_id"]}
    [req] = list_requests(url)
    assert (req["state"], req["audit_seq"], req["outcome"]) == ("applied", entry["seq"], None)
    res = verify(url, ring)
    assert (res.ok, res.entries, res.anchored) == (True, 1, 1)
    assert apply_requests(url, ring=ring) == {REQUEST_APPLIED: [], REQUEST_REFUSED: []}  # applied once
    assert len(_audit(url)) == 1


def test_a_request_whose_application_fails_leaves_no_decision_and_no_entry(url, ring, anchors, tmp_path, monkeypatch):
    monkeypatch.delenv("RENKEI_KEYRING", raising=False)
    req = request_decision(url, ITEM, "rejected", "kensa-02", "department to correct", now=T_REQUEST)
    no_chain = ring.subset([p for p in ring.purposes() if p != "chain"])
    with pytest.raises(AuditError, match="no chain key"):
        apply_requests(url, ring=no_chain)
    assert (_item(url)["state"], _item(url)["decided_by"]) == ("pending", None)
    assert _audit(url) == []
    assert [r["state"] for r in list_requests(url)] == ["pending"]  # retried by the next run

    # the next run, with the right keyring (here through `renkei review apply-requests`)
    keyring = str(ring.save(tmp_path / "keyring.json"))
    assert main(["review", "apply-requests", "--warehouse", url, "--keyring", keyring]) == 0
    assert (_item(url)["state"], _item(url)["decided_by"]) == ("rejected", "kensa-02")
    assert [json.loads(e["payload"])["request_id"] for e in _audit(url)] == [req["request_id"]]
    assert verify(url, ring).ok


def test_a_request_overtaken_by_a_later_decision_is_refused(url, ring, anchors, monkeypatch):
    from renkei.ui import data

    req = request_decision(url, ITEM, "approved", "kensa-01", "looks right", now=T_REQUEST)
    later = datetime(2025, 6, 1, 2, 0, tzinfo=timezone.utc)
    decide(url, ITEM, "rejected", "kensa-03", "checked with the department", now=later, ring=ring)  # the CLI
    done = apply_requests(url, ring=ring)
    assert done == {REQUEST_APPLIED: [], REQUEST_REFUSED: [req["request_id"]]}
    assert (_item(url)["state"], _item(url)["decided_by"]) == ("rejected", "kensa-03")
    [r] = list_requests(url)
    assert r["state"] == "refused" and "decided again since the request" in r["outcome"]
    assert len(_audit(url)) == 1 and verify(url, ring).ok
    monkeypatch.setenv("RENKEI_WAREHOUSE_URL", url)
    [shown] = data.review_items(include_resolved=False)
    assert (shown["state"], shown["request"]["state"]) == ("rejected", "refused")  # the page says why


def test_two_requests_apply_in_order(url, ring, anchors):
    first = request_decision(url, ITEM, "approved", "kensa-01", "first look", now=T_REQUEST)
    second = request_decision(url, ITEM, "rejected", "kensa-01", "second thoughts", now=T_REQUEST)
    done = apply_requests(url, ring=ring)
    assert done[REQUEST_APPLIED] == [first["request_id"], second["request_id"]]
    assert (_item(url)["state"], _item(url)["comment"]) == ("rejected", "second thoughts")
    assert [json.loads(e["payload"])["decision"] for e in _audit(url)] == ["approved", "rejected"]
    assert verify(url, ring).ok


def test_a_request_is_checked_when_made(url):
    from renkei.errors import RenkeiError

    with pytest.raises(RenkeiError, match="not in the queue"):
        request_decision(url, "f" * 16, "approved", "kensa-01", "x")
    with pytest.raises(RenkeiError, match="unknown decision"):
        request_decision(url, ITEM, "maybe", "kensa-01", "x")
    with pytest.raises(RenkeiError, match="reviewer name and a comment"):
        request_decision(url, ITEM, "approved", "kensa-01", "  ")
    assert list_requests(url) == []
