"""The integrity audit (紐付け点検) and its review workflow on a synthetic city.

One real chain run (Airflow DAG runs, SQLite warehouse) finds every seeded mislink; then the
next link and service runs are called directly to follow decisions: held ERKs get no notice,
an approved hold is evaluated, a rejected one stays out until the department changes its
record, which re-opens the item.
"""

from __future__ import annotations

import json
from datetime import date

import pytest
import sqlalchemy as sa

from renkei.cli import main
from renkei.config import load_sources
from renkei.linkage.audit import HOLD, PENDING
from renkei.linkage.mart import build_mart
from renkei.linkage.review import held_erks, list_items
from renkei.outputs.outbox import SERVICES, run_services
from renkei.warehouse import engine, ingest_runs, notices, review_queue, staging_key, staging_table

AS_OF = date(2025, 6, 1)
pytestmark = [pytest.mark.airflow]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from renkei.keys.ring import KeyRing
    from renkei.runner import run_chain
    from renkei.synth import generate

    raw = tmp_path_factory.mktemp("city") / "raw"
    generate(3000, 11, AS_OF, raw, fmt="sqlite", defect_rate=0.01)
    work = tmp_path_factory.mktemp("work")
    ring_path = KeyRing.generate().save(work / "keyring.json")
    url = f"sqlite:///{work / 'warehouse.db'}"
    report = run_chain(raw, AS_OF, work, warehouse_url=url, keyring_path=ring_path, say=lambda m: None)
    return report, url, work


def _notice_erks(url: str) -> set[str]:
    eng = engine(url)
    with eng.connect() as conn:
        found = set(conn.execute(sa.select(notices.c.erk).distinct()).scalars())
    eng.dispose()
    return found


def _held(url: str) -> set[str]:
    eng = engine(url)
    with eng.connect() as conn:
        found = held_erks(conn)
    eng.dispose()
    return found


def _item(url: str, item_id: str) -> dict:
    eng = engine(url)
    with eng.connect() as conn:
        row = dict(conn.execute(sa.select(review_queue).where(review_queue.c.item_id == item_id)).mappings().one())
    eng.dispose()
    return row


def _assert_decisions_in_trail(url: str, work, items: list[dict]) -> None:
    """Each decision is an audit-trail entry of ids only, when the trail module exists."""
    trail = pytest.importorskip("renkei.audit.trail")
    from renkei.keys.ring import KeyRing

    assert trail.verify(url, KeyRing.load(work / "keyring.json")).ok
    eng = engine(url)
    with eng.connect() as conn:
        rows = conn.execute(sa.text("SELECT payload FROM audit_log WHERE kind = 'review_decision' ORDER BY seq")).scalars().all()
    eng.dispose()
    payloads = [json.loads(p) for p in rows]
    assert [p["item_id"] for p in payloads] == [i["item_id"] for i in items]
    assert all(set(p) == {"item_id", "decision", "reviewer", "reason"} for p in payloads)


def _department_sends(url: str, src, key_value: str, run_id: str, **values) -> None:
    """What an ingest run's load leaves for a resent record: the staged row under the run's id,
    and the run logged as loaded (the link step rebuilds the residents of runs it has not seen)."""
    st = staging_table(src)
    eng = engine(url)
    with eng.begin() as conn:
        conn.execute(sa.update(st).where(st.c[staging_key(src)] == key_value).values(loaded_run_id=run_id, **values))
        conn.execute(sa.insert(ingest_runs).values(run_id=run_id, source=src.name, read=1, loaded=1, state="loaded",
                                                   updated_at="2025-06-01T12:00:00+09:00"))
    eng.dispose()


def _relink_and_serve(url: str, step: str) -> None:
    build_mart(url, AS_OF, f"link_residents/test__{step}")
    run_services(url, AS_OF, f"proactive_services/test__{step}")


def test_every_seeded_mislink_is_found(chain):
    report, _, work = chain
    audit = json.loads((work / "run_report.json").read_text(encoding="utf-8"))["integrity_audit"]
    assert audit == report["integrity_audit"]
    assert audit["seeded_mislinks"] > 0
    assert audit["recall"] == 1.0, audit
    assert 0 < audit["precision"] <= 1 and audit["flagged"] >= audit["seeded_found"]
    assert audit["held_erks"] > 0


def test_held_erks_get_no_notices(chain):
    _, url, _ = chain
    held = _held(url)
    assert held and not held & _notice_erks(url)


def test_a_rebuild_neither_duplicates_nor_forgets(chain):
    _, url, _ = chain
    before = list_items(url, include_resolved=True)
    build_mart(url, AS_OF, "link_residents/test__rebuild")
    after = list_items(url, include_resolved=True)
    assert after == before  # same ids, same first_seen_run, same states


def test_review_workflow(chain, capsys):
    _, url, work = chain
    eng = engine(url)
    with eng.connect() as conn:
        drafted = {erk for name in SERVICES for erk, _ in SERVICES[name](conn, AS_OF)}
    eng.dispose()
    holds = [i for i in list_items(url, state=PENDING) if i["severity"] == HOLD]
    per_erk: dict[str, list[dict]] = {}
    for it in holds:
        per_erk.setdefault(it["erk"], []).append(it)
    # Held residents a service would notify, each held by exactly one record of its own.
    candidates = sorted((items[0] for erk, items in per_erk.items() if len(items) == 1 and erk in drafted),
                        key=lambda i: i["item_id"])
    assert len(candidates) >= 3, f"too few held residents with due notices: {len(candidates)}"
    approve, reject, correct = candidates[0], candidates[1], candidates[2]

    assert main(["review", "list", "--warehouse", url, "--state", "pending"]) == 0
    listed = capsys.readouterr().out
    assert approve["item_id"] in listed and f"{len(list_items(url, state=PENDING))} item(s)" in listed

    for it, verb in ((approve, "approve"), (reject, "reject"), (correct, "reject")):
        assert main(["review", verb, it["item_id"], "--warehouse", url, "--keyring", str(work / "keyring.json"),
                     "--reviewer", "kensa-01", "--comment", "checked with the department"]) == 0
    decided = _item(url, approve["item_id"])
    assert decided["state"] == "approved" and decided["decided_by"] == "kensa-01"
    assert decided["decided_at"] and decided["comment"] == "checked with the department"
    assert decided["decided_row_hash"] == approve["row_hash"]
    assert main(["review", "approve", "0" * 16, "--warehouse", url, "--keyring", str(work / "keyring.json"),
                 "--reviewer", "x", "--comment", "y"]) == 2
    _assert_decisions_in_trail(url, work, [approve, reject, correct])

    # The next run: the approved resident is evaluated, the rejected ones stay out.
    _relink_and_serve(url, "after_decisions")
    erks = _notice_erks(url)
    assert approve["erk"] in erks
    assert reject["erk"] not in erks and correct["erk"] not in erks
    assert _item(url, reject["item_id"])["state"] == "rejected"
    assert _item(url, approve["item_id"])["state"] == "approved"

    # The department sends a changed record, still disagreeing: the item is pending again.
    src = load_sources()[correct["source"]]
    reg = staging_table(load_sources()["registry"])
    _department_sends(url, src, correct["record_key"], "ingest/test__resent", row_hash="f" * 64)
    _relink_and_serve(url, "department_resent")
    reopened = _item(url, correct["item_id"])
    assert reopened["state"] == PENDING and reopened["decided_by"] is None and reopened["active"]
    assert correct["erk"] in _held(url) and correct["erk"] not in _notice_erks(url)

    # The department corrects the record to agree with the registry: the finding clears.
    eng = engine(url)
    with eng.connect() as conn:
        truth = conn.execute(sa.select(reg.c.birth_date, reg.c.sex).where(reg.c.erk == correct["erk"])).one()
    eng.dispose()
    _department_sends(url, src, correct["record_key"], "ingest/test__corrected",
                      birth_date=truth.birth_date, sex=truth.sex, row_hash="e" * 64)
    _relink_and_serve(url, "department_corrected")
    assert not _item(url, correct["item_id"])["active"]
    assert correct["erk"] not in _held(url) and correct["erk"] in _notice_erks(url)
    assert reject["erk"] in _held(url)

    assert main(["review", "list", "--warehouse", url, "--state", "approved"]) == 0
    assert approve["item_id"] in capsys.readouterr().out
