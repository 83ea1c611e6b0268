"""The integrity audit (紐付け点検) and its review workflow on a synthetic city.

One real chain run (Airflow DAG runs; SQLite and PostgreSQL warehouses) over a synthetic city
whose generator wrote a manifest of the defects it seeded. The audit is scored here against that
manifest, not by renkei.linkage.audit's own scoring: every review item is mapped back to the raw
row it is about (record id, or the ERK the test seals from the raw resident code with the
keyring) and the flagged set must equal the seeded mislinks exactly (recall = precision = 1).
The manifest itself is checked against the raw tables first.

Then decisions are followed: held ERKs get no notice, an approved hold is evaluated, a rejected
one stays out until the department changes its record — in its own table, exported by the
adapter and ingested by the ingest DAG — which re-opens the item; a correction clears it.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from department_steps import export_and_run, ingest_run, jst_stamp, raw_sqlite_rows, update_raw_sqlite

from renkei.audit import trail
from renkei.cli import main
from renkei.linkage.audit import HOLD, PENDING
from renkei.linkage.mart import build_mart
from renkei.linkage.review import held_erks, list_items
from renkei.outputs.outbox import SERVICES, run_services
from renkei.warehouse import engine, notices, review_queue

AS_OF = date(2025, 6, 1)
pytestmark = [pytest.mark.airflow]
AUDITED = ("immunization", "child_health", "nhi")
RECORD_ID = {"immunization": "record_id", "child_health": "record_id", "nhi": None}  # nhi: keyed by resident
ATTRIBUTES = ("birth_date", "sex", "name_kana", "address")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def chain(request, tmp_path_factory):
    from renkei.keys.ring import KeyRing
    from renkei.runner import run_chain
    from renkei.synth import generate

    raw = tmp_path_factory.mktemp(f"city-{request.param}") / "raw"
    manifest = generate(3000, 11, AS_OF, raw, fmt="sqlite", defect_rate=0.01)
    work = tmp_path_factory.mktemp(f"work-{request.param}")
    ring_path = KeyRing.generate().save(work / "keyring.json")
    url = (request.getfixturevalue("pg_factory")() if request.param == "postgresql"
           else f"sqlite:///{work / 'warehouse.db'}")
    report = run_chain(raw, AS_OF, work, warehouse_url=url, keyring_path=ring_path, say=lambda m: None)
    # As the chain left them (test_review_workflow changes both; tests may run in any order):
    # the raw tables and the review queue.
    first = {"raw": {s: raw_sqlite_rows(raw, s) for s in ("registry", *AUDITED)},
             "items": list_items(url), "held": _held(url)}
    return report, url, work, raw, manifest, first


def _ring(work):
    from renkei.keys.ring import KeyRing

    return KeyRing.load(work / "keyring.json")


def _record_key(ring, source: str, row: dict) -> str:
    """The key a review item names a department record by: its record id, or for a source keyed
    by resident the ERK (sealed here from the raw resident code)."""
    col = RECORD_ID[source]
    return str(row[col]) if col else ring.seal("link", str(row["resident_code"]))


def _seeded(rows: dict[str, list[dict]], manifest: dict, ring) -> dict[tuple[str, str, str], str]:
    """(source, record key, reason) → ERK of every mislink the manifest lists (``rows``: the raw
    rows by source; reason from the corrupted column: birth_date → birth_date_mismatch, sex →
    sex_mismatch)."""
    out = {}
    for d in manifest["defects"]:
        if d["defect"] == "mislink":
            row = rows[d["source"]][d["row"]]
            out[(d["source"], _record_key(ring, d["source"], row), f"{d['column']}_mismatch")] = \
                ring.seal("link", row["resident_code"])
    return out


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
    """Each decision is an audit-trail entry of ids only, and the chain verifies."""
    assert trail.verify(url, _ring(work)).ok
    eng = engine(url)
    with eng.connect() as conn:
        rows = conn.execute(sa.text("SELECT payload FROM audit_log WHERE kind = 'review_decision' ORDER BY seq")).scalars().all()
    eng.dispose()
    payloads = [json.loads(p) for p in rows]
    assert [p["item_id"] for p in payloads] == [i["item_id"] for i in items]
    assert all(set(p) == {"item_id", "decision", "reviewer", "reason"} for p in payloads)


def _relink_and_serve(url: str, step: str) -> None:
    build_mart(url, AS_OF, f"link_residents/test__{step}")
    run_services(url, AS_OF, f"proactive_services/test__{step}")


def test_the_manifest_tells_the_truth_about_the_raw_tables(chain):
    """The oracle is only as good as the manifest: every department row whose copy of the basic
    attributes disagrees with its registry row is a seeded defect, and each mislink disagrees in
    exactly the column the manifest names (plain string comparison; the two spaces of a kana
    reading are the one variant the generator writes)."""
    *_, manifest, first = chain
    registry = {r["resident_code"]: r for r in first["raw"]["registry"]}
    listed = {(d["source"], d["row"]): d for d in manifest["defects"]}

    def canon(col, value):
        return value.replace("\u3000", " ") if col == "name_kana" and isinstance(value, str) else value

    unlisted, wrong_column = [], []
    for source in AUDITED:
        for i, row in enumerate(first["raw"][source]):
            reg = registry.get(row["resident_code"])
            differs = ["registry"] if reg is None else [
                c for c in ATTRIBUTES if canon(c, row[c]) != canon(c, reg[c])]
            entry = listed.get((source, i))
            if differs and entry is None:
                unlisted.append((source, i, differs))
            if entry is not None and entry["defect"] == "mislink" and differs != [entry["column"]]:
                wrong_column.append((source, i, entry["column"], differs))
    assert not unlisted, f"department rows disagreeing with the registry but not in the manifest: {unlisted[:10]}"
    assert not wrong_column, wrong_column


def test_the_audit_flags_exactly_the_seeded_mislinks(chain):
    report, _, work, _, manifest, first = chain
    seeded = _seeded(first["raw"], manifest, _ring(work))
    assert len(seeded) >= 10 and {r for _, _, r in seeded} == {"birth_date_mismatch", "sex_mismatch"}
    items = first["items"]  # the active queue after the chain
    flagged = {(i["source"], i["record_key"], i["reason"]): i for i in items}
    assert len(flagged) == len(items)
    hit = flagged.keys() & seeded.keys()
    recall, precision = len(hit) / len(seeded), len(hit) / len(flagged)
    missed, spurious = sorted(seeded.keys() - hit), sorted(flagged.keys() - hit)
    assert (recall, precision) == (1.0, 1.0), f"missed {missed}; flagged but not seeded {spurious}"
    # each item sits on the resident the raw row names, and holds it back
    assert all(flagged[k]["erk"] == erk and flagged[k]["severity"] == HOLD for k, erk in seeded.items())
    assert first["held"] == set(seeded.values())
    # the run report (what operators read) agrees with the external score
    audit = json.loads((work / "run_report.json").read_text(encoding="utf-8"))["integrity_audit"]
    assert audit == report["integrity_audit"]
    assert (audit["flagged"], audit["seeded_mislinks"], audit["recall"], audit["precision"]) == \
        (len({(s, k) for s, k, _ in flagged}), len({(s, k) for s, k, _ in seeded}), 1.0, 1.0)
    assert audit["held_erks"] == len(set(seeded.values()))


def test_held_erks_get_no_notices(chain):
    _, url, *_ = chain
    held = _held(url)
    assert held and not held & _notice_erks(url)


def test_a_rebuild_neither_duplicates_nor_forgets(chain):
    _, url, *_ = chain
    before = list_items(url, include_resolved=True)
    build_mart(url, AS_OF, "link_residents/test__rebuild")
    after = list_items(url, include_resolved=True)
    assert after == before  # same ids, same first_seen_run, same states


def _raw_row_of(raw, ring, item: dict) -> tuple[dict, dict]:
    """The department's raw row an item is about (found by its record key) and its WHERE."""
    rows = [r for r in raw_sqlite_rows(raw, item["source"]) if _record_key(ring, item["source"], r) == item["record_key"]]
    assert len(rows) == 1, item
    col = RECORD_ID[item["source"]] or "resident_code"
    return rows[0], {col: rows[0][col]}


def test_review_workflow(chain, capsys):
    _, url, work, raw, *_ = chain
    ring = _ring(work)
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
    # the one the department will change: a wrong birth date if there is one (it can change to
    # another wrong date), else any
    correct = next((i for i in candidates if i["reason"] == "birth_date_mismatch"), candidates[2])
    approve, reject = [i for i in candidates if i is not correct][:2]

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

    # The department changes the record in its own table, still disagreeing with the registry
    # (a wrong birth date becomes another wrong one; a wrong sex is saved again), exports the
    # change, and the ingest, link and services DAGs run: the item is pending again.
    src = correct["source"]
    row, where = _raw_row_of(raw, ring, correct)
    resent = {"updated_at": jst_stamp(3)}
    if correct["reason"] == "birth_date_mismatch":
        resent["birth_date"] = (date.fromisoformat(row["birth_date"]) - timedelta(days=1)).isoformat()
    update_raw_sqlite(raw, src, where, **resent)
    exported, runs = export_and_run(raw, work, url, work / "keyring.json", AS_OF, [src], at="12:00", serve=True)
    assert (exported[src].upserts, exported[src].deletes) == (1, 0)
    assert ingest_run(url, runs[f"ingest_{src}"])["loaded"] == 1
    reopened = _item(url, correct["item_id"])
    assert reopened["state"] == PENDING and reopened["decided_by"] is None and reopened["active"]
    assert reopened["row_hash"] != correct["row_hash"]
    assert correct["erk"] in _held(url) and correct["erk"] not in _notice_erks(url)
    assert _item(url, reject["item_id"])["state"] == "rejected"  # untouched records keep their decision

    # The department corrects the record to what the registry (its raw table) holds: the finding clears.
    truth = next(r for r in raw_sqlite_rows(raw, "registry") if r["resident_code"] == row["resident_code"])
    update_raw_sqlite(raw, src, where, birth_date=truth["birth_date"], sex=truth["sex"], updated_at=jst_stamp(1))
    exported, runs = export_and_run(raw, work, url, work / "keyring.json", AS_OF, [src], at="14:00", serve=True)
    assert (exported[src].upserts, exported[src].deletes) == (1, 0)
    assert ingest_run(url, runs[f"ingest_{src}"])["loaded"] == 1
    assert not _item(url, correct["item_id"])["active"]
    assert correct["erk"] not in _held(url) and correct["erk"] in _notice_erks(url)
    assert reject["erk"] in _held(url)

    assert main(["review", "list", "--warehouse", url, "--state", "approved"]) == 0
    assert approve["item_id"] in capsys.readouterr().out
