"""A department's 紐付け点検 list as a file: export → resolve (inside the department) → import.

The hand-built near-miss city (tests/integration/test_integrity_near_miss.py) run through the real
chain on SQLite and PostgreSQL; its findings are hand-determined there. Each test works one
department's items, so the tests share a city in any order: health_bureau (the UTF-8 round trip,
with a stale row made by a real department change), children_bureau (CP932), nhi (a
resident-keyed source: its record key is the department's pseudonym, never the ERK).
Oracles: the raw department rows (which resident code each record was filed under).
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat

import pytest
import sqlalchemy as sa
from department_steps import export_and_run, jst_stamp, write_csv
from test_integrity_near_miss import CHILD_HEALTH, D, GHOST, IMMUNIZATION, NHI, PEOPLE, _registry_rows

from renkei.cli import main
from renkei.config import ingest_sources
from renkei.errors import RenkeiError
from renkei.keys.ring import KeyRing
from renkei.linkage.review import decide, list_items
from renkei.linkage.review_files import (
    APPLIED, FIELDS, REFUSED, RESOLVED_FIELDS, SKIPPED, UNCHANGED, export, import_decisions, resolve, strip,
)
from renkei.warehouse import audit_log, engine

pytestmark = pytest.mark.airflow

# (record key, reason) of each department's pending findings, hand-determined in the near-miss module
HEALTH = {("IM-YUI-2", "name_mismatch"), ("IM-REN2-2", "birth_date_mismatch"), ("IM-REN2-2", "address_mismatch"),
          ("IM-MIO-1", "birth_date_mismatch")}
CHILDREN = {("CH-MIKU-Y1M6", "sex_mismatch"), ("CH-MIKU-Y1M6", "name_mismatch"), ("CH-MIO-M4", "birth_date_mismatch")}
ATTRIBUTE = {"name_mismatch": "name", "birth_date_mismatch": "birth_date", "address_mismatch": "address",
             "sex_mismatch": "sex", "not_in_registry": ""}
SEVERITY = {"name_mismatch": "review", "address_mismatch": "review", "birth_date_mismatch": "hold",
            "sex_mismatch": "hold", "not_in_registry": "hold"}
FILED_UNDER = {r["record_id"]: r["resident_code"] for r in IMMUNIZATION + CHILD_HEALTH}  # the raw rows


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def city(request, tmp_path_factory):
    from renkei.runner import run_chain

    base = tmp_path_factory.mktemp(f"review-files-{request.param}")
    raw, work = base / "raw", base / "work"
    drops = {"registry": _registry_rows(corrected=False), "immunization": IMMUNIZATION,
             "child_health": CHILD_HEALTH, "nhi": NHI}
    for src in ingest_sources():
        write_csv(raw, src.name, drops.get(src.name, []))
    ring_path = KeyRing.generate().save(base / "keyring.json")
    url = (request.getfixturevalue("pg_factory")() if request.param == "postgresql"
           else f"sqlite:///{work / 'warehouse.db'}")
    run_chain(raw, D, work, warehouse_url=url, keyring_path=ring_path, say=lambda m: None)
    keyrings = {}
    for dept in ("health_bureau", "children_bureau", "nhi"):  # what each department holds
        keyrings[dept] = base / f"keyring-{dept}.json"
        assert main(["keys", "export", "--keyring", str(ring_path), "--for", f"dept:{dept}",
                     "--out", str(keyrings[dept])]) == 0
    return {"url": url, "raw": raw, "work": work, "base": base, "keyring": ring_path,
            "ring": KeyRing.load(ring_path), "keyrings": keyrings}


def _rows(path, encoding: str = "utf-8-sig") -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode(encoding), newline="")))


def _write(path, rows: list[dict], fields, encoding: str = "utf-8-sig") -> None:
    """What a clerk's spreadsheet saves: the same columns, CRLF rows."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\r\n")
    w.writeheader()
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))


def _items(url: str) -> dict[str, dict]:
    return {i["item_id"]: i for i in list_items(url, include_resolved=True)}


def _trail(url: str) -> list[dict]:
    eng = engine(url)
    with eng.connect() as conn:
        rows = [json.loads(p) for p in conn.execute(
            sa.select(audit_log.c.payload).where(audit_log.c.kind == "review_decision").order_by(audit_log.c.seq)
        ).scalars()]
    eng.dispose()
    return rows


CODES = [p[0] for p in PEOPLE.values()] + [GHOST]  # every raw resident code of the city


def test_health_bureau_round_trip_with_a_stale_row(city, tmp_path):
    url, ring = city["url"], city["ring"]
    items = _items(url)
    out = tmp_path / "health.csv"
    assert export(url, "health_bureau", out, ring=ring) == len(HEALTH)
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")  # UTF-8 with a BOM: spreadsheets read it as UTF-8
    exported = _rows(out)
    assert list(exported[0]) == list(FIELDS)
    # exactly the department's pending items, nothing of another department
    assert {(r["record_key"], r["reason"]) for r in exported} == HEALTH
    for r in exported:
        item = items[r["item_id"]]
        assert (r["department"], item["source"], item["record_key"], item["reason"]) == \
            ("health_bureau", "immunization", r["record_key"], r["reason"])
        assert (r["attribute"], r["severity"], r["state"], r["row_hash"]) == \
            (ATTRIBUTE[r["reason"]], SEVERITY[r["reason"]], "pending", item["row_hash"])
        assert r["first_seen"].startswith("20") and r["first_seen"].endswith("+09:00")
        assert (r["decision"], r["comment"]) == ("", "")
    text = out.read_text(encoding="utf-8-sig")
    assert not [c for c in CODES if c in text]
    assert not [i["erk"] for i in items.values() if i["erk"] in text]  # no ERK leaves the linkage side

    # inside the department: its own keyring opens its pseudonyms to the codes the records were filed under
    resolved = tmp_path / "health-resolved.csv"
    assert main(["review", "resolve", str(out), "--keyring", str(city["keyrings"]["health_bureau"]),
                 "--out", str(resolved)]) == 0
    assert stat.S_IMODE(os.stat(resolved).st_mode) == 0o600
    rows = _rows(resolved)
    assert list(rows[0]) == list(RESOLVED_FIELDS)
    assert {r["record_key"]: r["resident_code"] for r in rows} == {k: FILED_UNDER[k] for k, _ in HEALTH}
    # another department's keyring, and the pipeline's, are refused
    with pytest.raises(RenkeiError, match="holds no dept:health_bureau key"):
        resolve(out, KeyRing.load(city["keyrings"]["children_bureau"]), tmp_path / "x.csv")
    with pytest.raises(RenkeiError, match="not a department's"):
        resolve(out, ring, tmp_path / "y.csv")
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()

    # the clerks decide; a file that still holds the codes is refused whole, before any row is read
    by_key = {(r["record_key"], r["reason"]): r for r in rows}
    by_key[("IM-YUI-2", "name_mismatch")].update(decision="却下", comment="双子の記録の取り違え、台帳を訂正する")
    by_key[("IM-MIO-1", "birth_date_mismatch")].update(decision="approve", comment="registry to correct its date")
    by_key[("IM-REN2-2", "birth_date_mismatch")].update(decision="reject", comment="filed under the neighbour")
    by_key[("IM-REN2-2", "address_mismatch")].update(decision="maybe", comment="unsure")
    _write(resolved, rows, RESOLVED_FIELDS)
    trail_before = len(_trail(url))
    with pytest.raises(RenkeiError, match="still holds the resident_code column"):
        import_decisions(url, resolved, "health_bureau", "kensa-hb", ring=ring)
    assert len(_trail(url)) == trail_before and all(i["state"] == "pending" for i in _items(url).values()
                                                    if i["source"] == "immunization")

    back = tmp_path / "health-back.csv"
    assert strip(resolved, back) == len(HEALTH)
    assert not [c for c in CODES if c in back.read_text(encoding="utf-8-sig")]

    # meanwhile the department corrects IM-REN2-2's dose date in its own register: the export adapter
    # sends the change and the chain re-audits, so the exported rows of that record are stale
    changed = [{**r, "administered_on": "2023-10-06", "updated_at": jst_stamp(1)} if r["record_id"] == "IM-REN2-2"
               else r for r in IMMUNIZATION]
    write_csv(city["raw"], "immunization", changed)
    export_and_run(city["raw"], city["work"], url, city["keyring"], D, ["immunization"], at="12:00")
    # and another reviewer decides ミオ's item from the CLI before the file comes back
    mio = next(r["item_id"] for r in exported if r["record_key"] == "IM-MIO-1")
    decide(url, mio, "approved", "kensa-cli", "checked with the registry", ring=ring)
    # a row of another department slipped into the file
    other = next(i for i in items.values() if i["source"] == "child_health" and i["state"] == "pending")
    back_rows = _rows(back)
    back_rows.append({**back_rows[0], "department": "health_bureau", "item_id": other["item_id"], "decision": "承認",
                      "comment": "not ours"})
    _write(back, back_rows, FIELDS)
    trail_before = len(_trail(url))

    report = {(r.item_id, r.outcome): r.why for r in import_decisions(url, back, "health_bureau", "kensa-hb", ring=ring)}
    yui = by_key[("IM-YUI-2", "name_mismatch")]["item_id"]
    ren_b = by_key[("IM-REN2-2", "birth_date_mismatch")]["item_id"]
    ren_a = by_key[("IM-REN2-2", "address_mismatch")]["item_id"]
    assert set(report) == {(yui, APPLIED), (mio, REFUSED), (ren_b, REFUSED), (ren_a, REFUSED),
                           (other["item_id"], REFUSED)}
    assert "decided since the export" in report[(mio, REFUSED)]
    assert "record changed since the export" in report[(ren_b, REFUSED)]
    assert "unknown decision" in report[(ren_a, REFUSED)]
    assert "not an item of department health_bureau" in report[(other["item_id"], REFUSED)]

    after = _items(url)
    assert (after[yui]["state"], after[yui]["decided_by"], after[yui]["comment"]) == \
        ("rejected", "kensa-hb", "双子の記録の取り違え、台帳を訂正する")
    assert after[yui]["decided_row_hash"] == items[yui]["row_hash"]
    assert (after[mio]["state"], after[mio]["decided_by"]) == ("approved", "kensa-cli")  # untouched by the file
    assert after[ren_b]["state"] == after[ren_a]["state"] == after[other["item_id"]]["state"] == "pending"
    new = _trail(url)[trail_before:]
    assert new == [{"item_id": yui, "decision": "rejected", "reviewer": "kensa-hb", "reason": "name_mismatch",
                    "via": "department_file", "department": "health_bureau"}]
    from renkei.audit import verify

    assert verify(url, ring).ok

    # importing the same file again changes nothing; a fresh export carries REN2-2's current record
    again = {r.item_id: r.outcome for r in import_decisions(url, back, "health_bureau", "kensa-hb", ring=ring)}
    assert again[yui] == UNCHANGED and len(_trail(url)) == trail_before + 1
    fresh = tmp_path / "health-2.csv"
    assert export(url, "health_bureau", fresh, ring=ring) == 2
    rows2 = _rows(fresh)
    assert {r["item_id"] for r in rows2} == {ren_b, ren_a}
    assert all(r["row_hash"] != items[r["item_id"]]["row_hash"] for r in rows2)
    rows2[0].update(decision="rejected", comment="filed under the neighbour")
    _write(fresh, rows2, FIELDS)
    outcomes = {r.item_id: r.outcome for r in import_decisions(url, fresh, "health_bureau", "kensa-hb", ring=ring)}
    assert outcomes == {rows2[0]["item_id"]: APPLIED, rows2[1]["item_id"]: SKIPPED}
    assert _items(url)[rows2[0]["item_id"]]["state"] == "rejected"
    assert verify(url, ring).ok


def test_children_bureau_round_trip_in_cp932(city, tmp_path):
    url = city["url"]
    out, resolved, back = tmp_path / "ch.csv", tmp_path / "ch-resolved.csv", tmp_path / "ch-back.csv"
    assert main(["review", "export", "--department", "children_bureau", "--encoding", "cp932", "--out", str(out),
                 "--warehouse", url, "--keyring", str(city["keyring"])]) == 0
    data = out.read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf")
    rows = _rows(out, "cp932")
    assert {(r["record_key"], r["reason"]) for r in rows} == CHILDREN
    assert {r["department"] for r in rows} == {"children_bureau"}

    assert resolve(out, KeyRing.load(city["keyrings"]["children_bureau"]), resolved) == len(CHILDREN)
    rows = _rows(resolved, "cp932")  # resolve writes back in the encoding it read
    assert {r["record_key"]: r["resident_code"] for r in rows} == {k: FILED_UNDER[k] for k, _ in CHILDREN}
    comment = "双子の兄の番号で登録①、台帳を訂正"  # ① is one of CP932's NEC characters
    for r in rows:
        if r["reason"] == "sex_mismatch":
            r.update(decision="rejected", comment=comment)
    _write(resolved, rows, RESOLVED_FIELDS, "cp932")
    assert main(["review", "strip", str(resolved), "--out", str(back)]) == 0
    with pytest.raises(UnicodeDecodeError):
        back.read_bytes().decode("utf-8")  # still CP932
    assert main(["review", "import", str(back), "--department", "children_bureau", "--reviewer", "kensa-cb",
                 "--warehouse", url, "--keyring", str(city["keyring"])]) == 0
    decided = [i for i in list_items(url) if i["decided_by"] == "kensa-cb"]
    assert [(i["record_key"], i["reason"], i["state"], i["comment"]) for i in decided] == \
        [("CH-MIKU-Y1M6", "sex_mismatch", "rejected", comment)]
    assert [e for e in _trail(url) if e["reviewer"] == "kensa-cb"] == [
        {"item_id": decided[0]["item_id"], "decision": "rejected", "reviewer": "kensa-cb", "reason": "sex_mismatch",
         "via": "department_file", "department": "children_bureau"}]


def test_nhi_list_names_records_by_pseudonym_never_by_erk(city, tmp_path):
    url, ring = city["url"], city["ring"]
    out = tmp_path / "nhi.csv"
    assert export(url, "nhi", out, ring=ring) == 1
    [row] = _rows(out)
    ghost_erk = ring.seal("link", GHOST)
    assert row["reason"] == "not_in_registry" and row["attribute"] == ""
    assert row["record_key"] == row["dept_pseudonym"] == ring.seal("dept:nhi", GHOST)
    assert ghost_erk not in out.read_text(encoding="utf-8-sig")
    resolved = tmp_path / "nhi-resolved.csv"
    resolve(out, KeyRing.load(city["keyrings"]["nhi"]), resolved)
    assert [r["resident_code"] for r in _rows(resolved)] == [GHOST]  # the mistyped code, as the raw row has it
    with pytest.raises(RenkeiError, match="holds no dept:nhi key"):
        resolve(out, KeyRing.load(city["keyrings"]["health_bureau"]), tmp_path / "x.csv")
    # a file whose department was rewritten does not open under the other department's key
    forged = tmp_path / "forged.csv"
    _write(forged, [{**row, "department": "health_bureau"}], FIELDS)
    with pytest.raises(RenkeiError, match="does not open"):
        resolve(forged, KeyRing.load(city["keyrings"]["health_bureau"]), tmp_path / "z.csv")
    # a resolved file coming back is refused before any row is read
    rows = _rows(resolved)
    rows[0].update(decision="approved", comment="ok")
    _write(resolved, rows, RESOLVED_FIELDS)
    assert main(["review", "import", str(resolved), "--department", "nhi", "--reviewer", "kensa-nhi",
                 "--warehouse", url, "--keyring", str(city["keyring"])]) == 2
    assert _items(url)[row["item_id"]]["state"] == "pending"


def test_an_unknown_department_is_refused(city, tmp_path):
    with pytest.raises(RenkeiError, match="keeps no audited source"):
        export(city["url"], "ward_office", tmp_path / "w.csv", ring=city["ring"])
