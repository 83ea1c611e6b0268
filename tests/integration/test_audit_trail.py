"""The audit trail: an untouched chain verifies, every kind of tampering names its entry, and the
anchor outside the warehouse catches what the warehouse alone cannot (rollback, drop, rewrite)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from datetime import date, datetime, timezone

import pytest
import sqlalchemy as sa

from renkei.audit import append, verify
from renkei.audit.anchor import warehouse_id
from renkei.audit.trail import GENESIS, AuditError, _head_message, _message
from renkei.cli import main
from renkei.warehouse import audit_head, audit_log

NOW = datetime(2025, 6, 1, 6, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def anchors(tmp_path, monkeypatch) -> Path:
    """This test's anchor directory ($RENKEI_AUDIT_ANCHOR)."""
    d = tmp_path / "anchors"
    monkeypatch.setenv("RENKEI_AUDIT_ANCHOR", str(d))
    return d


@pytest.fixture
def url(engine_url):
    return engine_url


def _log(url: str, ring, n: int = 5) -> None:
    for i in range(1, n + 1):
        assert append(url, "linkage_run", {"run_id": f"link_residents/run{i}", "counts": {"residents": i}},
                      ring=ring, now=NOW) == i


def _exec(url: str, *stmts) -> None:
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        for s in stmts:
            conn.execute(s)
    eng.dispose()


def _rows(url: str) -> list[dict]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings()]
    eng.dispose()
    return rows


def test_untouched_log_verifies(url, ring, anchors):
    res = verify(url, ring)  # no table yet and nothing anchored: an empty trail
    assert (res.ok, res.entries, res.anchored) == (True, 0, None)
    _log(url, ring)
    res = verify(url, ring)
    assert (res.ok, res.entries, res.anchored) == (True, 5, 5)
    assert res.anchor == str(anchors / f"{warehouse_id(url)}.jsonl")
    rows = _rows(url)
    assert rows[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["entry_hash"] for a, b in zip(rows, rows[1:]))
    assert all(r["at"] == "2025-06-01T15:00:00+09:00" for r in rows)
    assert json.loads(rows[2]["payload"]) == {"counts": {"residents": 3}, "run_id": "link_residents/run3"}


@pytest.mark.parametrize("column,value", [("payload", '{"counts":{"residents":999}}'), ("kind", "review_decision"),
                                          ("at", "2025-06-01T15:00:01+09:00")])
def test_edited_entry_fails_at_its_seq(url, ring, column, value):
    _log(url, ring)
    _exec(url, sa.update(audit_log).where(audit_log.c.seq == 3).values({column: value}))
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq, res.entries) == (False, 3, 5)
    assert "entry 3" in res.problem


def test_deleted_middle_entry_is_a_gap(url, ring):
    _log(url, ring)
    _exec(url, sa.delete(audit_log).where(audit_log.c.seq == 3))
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq) == (False, 3)
    assert "missing" in res.problem


def test_deleted_last_entry_is_caught_by_the_head(url, ring):
    _log(url, ring)
    _exec(url, sa.delete(audit_log).where(audit_log.c.seq == 5))
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq) == (False, 5)
    assert "truncated" in res.problem
    with pytest.raises(AuditError, match="audit_head says the log ends at seq 5 but audit_log ends at seq 4"):
        append(url, "linkage_run", {"n": 6}, ring=ring, now=NOW)


def test_rewinding_the_head_without_the_key_is_caught(url, ring):
    _log(url, ring)
    fourth = _rows(url)[3]["entry_hash"]
    _exec(url, sa.delete(audit_log).where(audit_log.c.seq == 5),
          sa.update(audit_head).values(seq=4, entry_hash=fourth))
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq) == (False, 5)
    assert "audit_head" in res.problem


def test_swapped_entries_fail_at_the_first(url, ring):
    _log(url, ring)
    c = audit_log.c
    _exec(url, sa.update(audit_log).where(c.seq == 2).values(seq=-1),
          sa.update(audit_log).where(c.seq == 3).values(seq=2),
          sa.update(audit_log).where(c.seq == -1).values(seq=3))
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq) == (False, 2)


def test_rebuilt_chain_with_plain_sha256_is_a_forgery(url, ring):
    _log(url, ring)
    rows = _rows(url)
    rows[1]["payload"] = '{"counts":{"residents":0},"run_id":"link_residents/run2"}'
    prev = rows[0]["entry_hash"]
    stmts = []
    for r in rows[1:]:  # a consistent chain from entry 2 on, as someone without the key would build it
        r["prev_hash"] = prev
        r["entry_hash"] = prev = "v1." + hashlib.sha256(
            _message(r["seq"], r["at"], r["kind"], r["payload"], r["prev_hash"])).hexdigest()
        stmts.append(sa.update(audit_log).where(audit_log.c.seq == r["seq"]).values(
            payload=r["payload"], prev_hash=r["prev_hash"], entry_hash=r["entry_hash"]))
    stmts.append(sa.update(audit_head).values(entry_hash=prev))
    _exec(url, *stmts)
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq) == (False, 2)
    assert "not under the chain key" in res.problem


def test_another_keyring_does_not_verify(url, ring):
    from renkei.keys.ring import KeyRing

    _log(url, ring, 2)
    res = verify(url, KeyRing.generate())
    assert (res.ok, res.first_bad_seq) == (False, 1)


def test_concurrent_appends_make_one_gapless_chain(url, ring):
    errors: list[BaseException] = []
    seqs: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        try:
            for i in range(5):
                s = append(url, "review_decision", {"worker": t, "i": i}, ring=ring)
                with lock:
                    seqs.append(s)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert sorted(seqs) == list(range(1, 21))
    res = verify(url, ring)
    assert (res.ok, res.entries) == (True, 20)


def test_payloads_refuse_personal_keys_and_bad_kinds(tmp_path, ring):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    with pytest.raises(AuditError, match=r"\['resident_code'\]"):
        append(url, "review_decision", {"flags": [{"resident_code": "x"}]}, ring=ring)
    with pytest.raises(AuditError, match="lower_snake_case"):
        append(url, "Linkage Run", {}, ring=ring)
    with pytest.raises(AuditError, match="not JSON"):
        append(url, "linkage_run", {"x": object()}, ring=ring)
    assert append(url, "linkage_run", {"as_of": date(2025, 6, 1)}, ring=ring) == 1


def test_dag_hooks_record_counts_key_versions_and_new_notice_ids(tmp_path, ring, monkeypatch):
    from renkei.audit.records import record_linkage_run, record_notices_published
    from renkei.warehouse import engine, ensure_schema, notices

    url = f"sqlite:///{tmp_path / 'w.db'}"
    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:
        conn.execute(sa.insert(notices), [_notice(f"n{i}", "v1.x", run) for i, run in
                                          enumerate(["proactive_services/a", "proactive_services/b", "proactive_services/b"])])
    eng.dispose()
    monkeypatch.setenv("RENKEI_KEYRING", str(ring.save(tmp_path / "keyring.json")))
    assert record_linkage_run(url, "link_residents/b", date(2025, 6, 1), {"residents": 3}) == 1  # ring from the env
    assert record_notices_published(url, "proactive_services/b", date(2025, 6, 1), {"new": 2}, ring=ring) == 2
    first, second = (json.loads(r["payload"]) for r in _rows(url))
    link = next(k for k in first["key_versions"] if k["purpose"] == "link")
    assert link == {"purpose": "link", "current": 1, "versions": [1]} and first["counts"] == {"residents": 3}
    assert second["notice_ids"] == ["n1", "n2"] and second["as_of"] == "2025-06-01"
    assert verify(url, ring).ok


def test_cli_verify_exit_codes(url, ring, tmp_path, capsys):
    keyring = str(ring.save(tmp_path / "keyring.json"))
    _log(url, ring, 3)
    assert main(["audit", "verify", "--warehouse", url, "--keyring", keyring]) == 0
    assert capsys.readouterr().out.strip().startswith("OK, 3 entries, anchored at seq 3 in ")
    _exec(url, sa.update(audit_log).where(audit_log.c.seq == 2).values(payload="{}"))
    assert main(["audit", "verify", "--warehouse", url, "--keyring", keyring]) == 1
    assert "FAILED at seq 2: entry 2" in capsys.readouterr().out


def _notice(notice_id: str, erk: str, run: str, subject: str = "MR") -> dict:
    return {"notice_id": notice_id, "service": "immunization", "kind": "due", "erk": erk, "rule_id": "mr1",
            "rule_version": 1, "subject": subject, "dose_number": 1, "window_start": date(2025, 6, 1),
            "window_end": date(2025, 8, 31), "evaluated_on": date(2025, 6, 1), "facts": "{}",
            "created_run_id": run, "created_at": "2025-06-01T06:00:00+09:00"}


def test_cli_resident_lists_only_that_residents_links_notices_and_receipts(url, ring, tmp_path, capsys):
    from renkei.delivery.receipts import delivery_receipts, ensure_receipts
    from renkei.warehouse import engine, ensure_schema, linkage, notices

    work = tmp_path / "work"
    work.mkdir()
    if url.startswith("sqlite"):
        url = f"sqlite:///{work / 'warehouse.db'}"  # found through --work alone
    me, other = "12345678901", "98765432109"
    erk_me, erk_other = ring.seal("link", me), ring.seal("link", other)
    eng = engine(url)
    ensure_schema(eng)
    run = "link_residents/manual__2025-06-01"
    with eng.begin() as conn:
        conn.execute(sa.insert(linkage), [
            {"erk": erk_me, "source": "registry", "records": 1, "in_registry": True, "built_run_id": run},
            {"erk": erk_me, "source": "immunization", "records": 3, "in_registry": True, "built_run_id": run},
            {"erk": erk_other, "source": "nhi", "records": 7, "in_registry": True, "built_run_id": run},
        ])
        conn.execute(sa.insert(notices), [_notice("a" * 32, erk_me, "proactive_services/r1"),
                                          _notice("b" * 32, erk_other, "proactive_services/r1", subject="HPV")])
    eng.dispose()
    dl = engine(f"sqlite:///{work / 'delivery.db'}")
    ensure_receipts(dl)
    with dl.begin() as conn:
        conn.execute(sa.insert(delivery_receipts), [
            {"notice_id": "a" * 32, "attempt": 1, "status": "sent", "reason": None, "channel": "email",
             "at": "2025-06-01T09:00:00+09:00"},
            {"notice_id": "b" * 32, "attempt": 1, "status": "suppressed", "reason": "opted_out", "channel": None,
             "at": "2025-06-01T09:00:00+09:00"},
        ])
    dl.dispose()
    keyring = str(ring.save(tmp_path / "keyring.json"))
    args = ["audit", "resident", "--resident-code", me, "--work", str(work), "--keyring", keyring]
    if not url.startswith("sqlite"):
        args += ["--warehouse", url]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"resident   {me}" in out
    assert "health_bureau: 予防接種台帳 (immunization register) [immunization] — 3 record(s)" in out
    assert "ward_office: 住民記録 (citizen registry) [registry] — 1 record(s)" in out
    assert "a" * 32 in out and "immunization/due  MR #1  window 2025-06-01 … 2025-08-31" in out
    assert "receipt #1 2025-06-01T09:00:00+09:00 sent by email" in out
    for leak in (other, "b" * 32, "nhi", "HPV", "opted_out", erk_me, erk_other):
        assert leak not in out


def test_entries_keep_verifying_across_a_chain_key_rotation(url, ring):
    _log(url, ring, 2)
    ring.rotate("chain")
    assert append(url, "key_rotation", {"purpose": "chain", "to_version": 2}, ring=ring, now=NOW) == 3
    rows = _rows(url)
    assert [r["entry_hash"][:9] for r in rows] == ["chain:v1.", "chain:v1.", "chain:v2."]
    assert verify(url, ring).entries == 3 and verify(url, ring).ok
    _exec(url, sa.update(audit_log).where(audit_log.c.seq == 1).values(payload="{}"))
    assert verify(url, ring).first_bad_seq == 1  # an old entry is still checked, under its own version


def test_resident_record_finds_rows_under_every_link_version_held(url, ring, tmp_path):
    from renkei.audit.resident import resident_record
    from renkei.warehouse import engine, ensure_schema, linkage, notices

    code = "12345678901"
    under_v1 = ring.seal("link", code)
    ring.rotate("link")
    under_v2 = ring.seal("link", code)
    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:  # e.g. rows restored from a backup taken before the re-seal
        conn.execute(sa.insert(linkage), [{"erk": under_v1, "source": "registry", "records": 1, "in_registry": True,
                                           "built_run_id": "link_residents/old"}])
        conn.execute(sa.insert(notices), [_notice("c" * 32, under_v2, "proactive_services/new")])
    eng.dispose()
    rec = resident_record(code, ring, url)
    assert [r["source"] for r in rec.linked] == ["registry"] and [n["notice_id"] for n in rec.notices] == ["c" * 32]
    ring.retire("link", 1)
    rec = resident_record(code, ring, url)
    assert rec.linked == [] and [n["notice_id"] for n in rec.notices] == ["c" * 32]


# -- the anchor: what the warehouse alone cannot show -------------------------------------------
def _tables(url: str) -> tuple[list[dict], list[dict]]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        log = [dict(r) for r in conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings()]
        head = [dict(r) for r in conn.execute(sa.select(audit_head)).mappings()]
    eng.dispose()
    return log, head


def _restore(url: str, log: list[dict], head: list[dict]) -> None:
    """Put both tables back as an earlier copy had them (a restored backup, or an insider's)."""
    _exec(url, sa.delete(audit_log), sa.delete(audit_head), sa.insert(audit_log).values(log),
          sa.insert(audit_head).values(head))


def _anchor_lines(anchors: Path, url: str) -> list[dict]:
    return [json.loads(line) for line in (anchors / f"{warehouse_id(url)}.jsonl").read_text().splitlines()]


def test_every_append_anchors_the_head_in_a_private_append_only_file(url, ring, anchors):
    _log(url, ring, 3)
    path = anchors / f"{warehouse_id(url)}.jsonl"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = _anchor_lines(anchors, url)
    rows = _rows(url)
    assert [(a["seq"], a["entry_hash"]) for a in lines] == [(r["seq"], r["entry_hash"]) for r in rows]
    assert all(a["warehouse"] == warehouse_id(url) and a["mac"].startswith("chain:v1.") for a in lines)
    assert "secret" not in path.read_text()


def test_warehouse_ids_ignore_password_and_driver():
    assert warehouse_id("postgresql+psycopg://u:secret@db.example/wh") == warehouse_id("postgresql://u:other@DB.example:5432/wh")
    assert warehouse_id("postgresql://u@db.example/wh") != warehouse_id("postgresql://u@db.example/wh2")


def test_rolled_back_trail_fails_and_append_refuses(url, ring):
    _log(url, ring, 3)
    old = _tables(url)  # a consistent copy of both tables at seq 3
    for i in (4, 5):
        append(url, "linkage_run", {"run": i}, ring=ring, now=NOW)
    _restore(url, *old)
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq, res.entries, res.anchored) == (False, 4, 3, 5)
    assert "rolled back" in res.problem and "anchor recorded seq 5" in res.problem
    with pytest.raises(AuditError, match=r"ends at seq 3 but its anchor .* recorded seq 5.*restore audit_log and audit_head"):
        append(url, "linkage_run", {"run": 6}, ring=ring, now=NOW)
    assert len(_rows(url)) == 3


def test_truncated_trail_fails(url, ring):
    _log(url, ring)
    _exec(url, sa.delete(audit_log).where(audit_log.c.seq >= 4))
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq) == (False, 4)
    assert "truncated" in res.problem


def test_dropped_tables_fail_and_append_refuses(url, ring):
    _log(url, ring)
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        audit_log.drop(conn)
        audit_head.drop(conn)
    eng.dispose()
    res = verify(url, ring)
    assert (res.ok, res.entries, res.anchored) == (False, 0, 5)
    assert "missing" in res.problem and "dropped" in res.problem
    with pytest.raises(AuditError, match="ends at seq 0 but its anchor"):
        append(url, "linkage_run", {"run": 6}, ring=ring, now=NOW)


@pytest.mark.parametrize("tables", [[audit_log], [audit_log, audit_head]], ids=["log", "log+head"])
def test_emptied_log_fails(url, ring, tables):
    _log(url, ring)
    _exec(url, *(sa.delete(t) for t in tables))
    res = verify(url, ring)
    assert (res.ok, res.entries) == (False, 0)
    assert "audit_log is empty" in res.problem and "emptied" in res.problem


def _reseal_with_match_key(url: str, attacker, from_seq: int, payload: str | None = None) -> None:
    """Rewrite entries from ``from_seq`` on, a consistent chain and head, under the match key: what
    a department holding a pre-/3 keyring (audit = match) could do with warehouse write access."""
    rows = _rows(url)
    prev = rows[from_seq - 2]["entry_hash"] if from_seq > 1 else GENESIS
    stmts = []
    for r in rows[from_seq - 1:]:
        if payload is not None and r["seq"] == from_seq:
            r["payload"] = payload
        r["prev_hash"] = prev
        r["entry_hash"] = prev = "v1." + attacker.mac(_message(r["seq"], r["at"], r["kind"], r["payload"], prev))
        stmts.append(sa.update(audit_log).where(audit_log.c.seq == r["seq"]).values(
            payload=r["payload"], prev_hash=r["prev_hash"], entry_hash=r["entry_hash"]))
    last = rows[-1]["seq"]
    stmts.append(sa.update(audit_head).values(seq=last, entry_hash=prev,
                                              head_mac="v1." + attacker.mac(_head_message(last, prev))))
    _exec(url, *stmts)


def test_the_match_key_cannot_rewrite_the_trail(url, ring):
    attacker = ring.subset(["match"])
    assert not attacker.holds("chain")
    _log(url, ring)
    # The whole trail re-sealed as "legacy" entries: the chain alone would accept it, the anchor does not.
    _reseal_with_match_key(url, attacker, 1, payload='{"counts":{"residents":0},"run_id":"link_residents/run1"}')
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq) == (False, 1)
    assert "differs from the one anchored" in res.problem and "rewritten" in res.problem


def test_an_unprefixed_entry_after_the_first_chain_entry_is_a_forgery(url, ring, anchors):
    attacker = ring.subset(["match"])
    _log(url, ring)
    _reseal_with_match_key(url, attacker, 3, payload='{"counts":{"residents":0}}')
    (anchors / f"{warehouse_id(url)}.jsonl").unlink()  # even with the anchor gone
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq, res.anchored) == (False, 3, None)
    assert "not under the chain key, but entry 1 already was" in res.problem


def test_legacy_match_key_entries_verify_before_the_first_chain_entry(url, ring):
    """A trail begun before the chain key existed (entries v<N>. under the old audit = match key)
    keeps verifying, and new entries extend it under the chain key."""
    from renkei.warehouse import engine

    eng = engine(url)
    audit_log.metadata.create_all(eng, tables=[audit_log, audit_head])
    eng.dispose()
    prev, stmts = GENESIS, []
    for seq in (1, 2):
        at, payload = "2025-05-01T09:00:00+09:00", json.dumps({"run": seq})
        h = "v1." + ring.mac(_message(seq, at, "linkage_run", payload, prev))
        stmts.append(sa.insert(audit_log).values(seq=seq, at=at, kind="linkage_run", payload=payload, prev_hash=prev, entry_hash=h))
        prev = h
    stmts.append(sa.insert(audit_head).values(id=1, seq=2, entry_hash=prev, head_mac="v1." + ring.mac(_head_message(2, prev))))
    _exec(url, *stmts)
    assert verify(url, ring).ok
    assert append(url, "linkage_run", {"run": 3}, ring=ring, now=NOW) == 3
    res = verify(url, ring)
    assert (res.ok, res.entries, res.anchored) == (True, 3, 3)
    assert [r["entry_hash"][:3] for r in _rows(url)] == ["v1.", "v1.", "cha"]


@pytest.mark.parametrize("how", ["forged", "edited", "other_warehouse", "garbage"])
def test_an_anchor_line_that_does_not_authenticate_fails(url, ring, anchors, how):
    _log(url, ring, 3)
    path = anchors / f"{warehouse_id(url)}.jsonl"
    last = _anchor_lines(anchors, url)[-1]
    if how == "forged":
        line = json.dumps({**last, "seq": 9, "mac": "chain:v1." + "0" * 64})
    elif how == "edited":
        line = json.dumps({**last, "seq": 2})
    elif how == "other_warehouse":
        line = json.dumps({**last, "warehouse": "0" * 32})
    else:
        line = "{not json"
    with open(path, "a") as f:
        f.write(line + "\n")
    res = verify(url, ring)
    assert not res.ok
    assert "does not authenticate" in res.problem and f"{path}:4" in res.problem


def test_without_an_anchor_verify_checks_the_chain_and_says_not_anchored(url, ring, tmp_path, capsys, monkeypatch):
    _log(url, ring, 2)
    monkeypatch.setenv("RENKEI_AUDIT_ANCHOR", str(tmp_path / "elsewhere"))
    res = verify(url, ring)
    assert (res.ok, res.entries, res.anchored) == (True, 2, None)
    keyring = str(ring.save(tmp_path / "keyring.json"))
    assert main(["audit", "verify", "--warehouse", url, "--keyring", keyring]) == 0
    assert "not anchored" in capsys.readouterr().out
    _exec(url, sa.update(audit_log).where(audit_log.c.seq == 2).values(payload="{}"))
    assert verify(url, ring).first_bad_seq == 2


def test_the_default_anchor_sits_beside_the_keyring(tmp_path, ring, monkeypatch):
    monkeypatch.delenv("RENKEI_AUDIT_ANCHOR")
    keyring = ring.save(tmp_path / "keys" / "keyring.json")
    monkeypatch.setenv("RENKEI_KEYRING", str(keyring))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    _log(url, ring, 2)
    assert (tmp_path / "keys" / "audit-anchors" / f"{warehouse_id(url)}.jsonl").exists()
    assert verify(url, ring, keyring_path=keyring).anchored == 2


class _Auditor(BaseHTTPRequestHandler):
    """A tiny auditor: POST stores a head, GET ?warehouse= answers the latest one."""

    heads: dict[str, list[dict]] = {}

    def do_POST(self):  # noqa: N802 - http.server's name
        rec = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.heads.setdefault(rec["warehouse"], []).append(rec)
        self.send_response(201)
        self.end_headers()

    def do_GET(self):  # noqa: N802
        wid = self.path.split("warehouse=", 1)[-1]
        got = self.heads.get(wid)
        if not got:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps(max(got, key=lambda r: r["seq"])).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def auditor():
    _Auditor.heads = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Auditor)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/anchor", _Auditor.heads
    server.shutdown()
    server.server_close()


def test_an_http_auditor_anchors_the_head(url, ring, auditor, monkeypatch):
    endpoint, heads = auditor
    monkeypatch.setenv("RENKEI_AUDIT_ANCHOR", endpoint)
    _log(url, ring, 3)
    old = _tables(url)
    append(url, "linkage_run", {"run": 4}, ring=ring, now=NOW)
    assert [h["seq"] for h in heads[warehouse_id(url)]] == [1, 2, 3, 4]
    res = verify(url, ring)
    assert (res.ok, res.entries, res.anchored) == (True, 4, 4) and res.anchor.startswith(endpoint)
    _restore(url, *old)
    res = verify(url, ring)
    assert (res.ok, res.first_bad_seq) == (False, 4) and "rolled back" in res.problem
    with pytest.raises(AuditError, match="recorded seq 4"):
        append(url, "linkage_run", {"run": 5}, ring=ring, now=NOW)


def test_an_unreachable_auditor_stops_the_append_before_it_writes(tmp_path, ring, monkeypatch):
    monkeypatch.setenv("RENKEI_AUDIT_ANCHOR", "http://127.0.0.1:9/anchor")  # discard port: nothing listens
    url = f"sqlite:///{tmp_path / 'w.db'}"
    with pytest.raises(AuditError, match="unreachable"):
        append(url, "linkage_run", {"run": 1}, ring=ring, now=NOW)
    assert not verify(url, ring).ok  # and verify says it could not check


# -- review decisions: the decision and its entry commit together --------------------------------
def _queue_item(url: str) -> str:
    from renkei.warehouse import engine, ensure_schema, review_queue

    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:
        conn.execute(sa.insert(review_queue).values(
            item_id="a1" * 8, source="immunization", record_key="IM-0001", reason="birth_date_mismatch",
            erk="v1.x", severity="hold", state="pending", active=True, row_hash="h" * 64,
            first_seen_run="link_residents/r1"))
    eng.dispose()
    return "a1" * 8


def test_a_review_decision_is_not_recorded_without_its_audit_entry(url, ring, anchors):
    from renkei.linkage.review import decide, list_items

    item = _queue_item(url)
    no_chain = ring.subset([p for p in ring.purposes() if p != "chain"])
    with pytest.raises(AuditError, match="no chain key"):
        decide(url, item, "approved", "kensa-01", "checked", ring=no_chain)
    stored = list_items(url)[0]
    assert (stored["state"], stored["decided_by"]) == ("pending", None)
    assert _rows(url) == []
    got = decide(url, item, "approved", "kensa-01", "checked", ring=ring)
    assert got["state"] == "approved"
    rows = _rows(url)
    assert [(r["seq"], r["kind"]) for r in rows] == [(1, "review_decision")]
    assert json.loads(rows[0]["payload"])["item_id"] == item
    res = verify(url, ring)
    assert (res.ok, res.anchored) == (True, 1)


def test_a_review_decision_on_a_rolled_back_trail_is_refused(url, ring):
    from renkei.linkage.review import decide, list_items

    item = _queue_item(url)
    _log(url, ring, 2)
    old = _tables(url)
    append(url, "linkage_run", {"run": 3}, ring=ring, now=NOW)
    _restore(url, *old)
    with pytest.raises(AuditError, match="rolled back"):
        decide(url, item, "rejected", "kensa-01", "checked", ring=ring)
    assert list_items(url)[0]["state"] == "pending"


def test_a_deliberate_restore_is_accepted_and_stays_visible(url, ring, tmp_path, capsys):
    from renkei.audit.trail import accept_restore

    keyring = str(ring.save(tmp_path / "keyring.json"))
    _log(url, ring, 3)
    backup = _tables(url)  # last night's dump
    for i in (4, 5):
        append(url, "linkage_run", {"run": i}, ring=ring, now=NOW)
    with pytest.raises(AuditError, match="no restore to accept"):
        accept_restore(url, ring, "nothing happened")
    _restore(url, *backup)
    assert main(["audit", "verify", "--warehouse", url, "--keyring", keyring]) == 1
    capsys.readouterr()
    assert main(["audit", "accept-restore", "--warehouse", url, "--keyring", keyring,
                 "--reason", "restored renkei-2025-06-01.dump after disk loss"]) == 0
    assert "now ends at seq 3 (the anchor had seq 5)" in capsys.readouterr().out
    assert append(url, "linkage_run", {"run": 4}, ring=ring, now=NOW) == 4
    res = verify(url, ring)
    assert (res.ok, res.entries, res.anchored) == (True, 4, 4)
    assert res.restores and "from seq 5 to seq 3: restored renkei-2025-06-01.dump" in res.restores[0]
    assert main(["audit", "verify", "--warehouse", url, "--keyring", keyring]) == 0
    assert "note: restored at" in capsys.readouterr().out


def test_a_rewritten_trail_is_not_accepted_as_a_restore(url, ring):
    from renkei.audit.trail import accept_restore

    _log(url, ring, 3)
    old = _tables(url)
    append(url, "linkage_run", {"run": 4}, ring=ring, now=NOW)
    _restore(url, *old)
    _reseal_with_match_key(url, ring.subset(["match"]), 1, payload='{"run":0}')
    with pytest.raises(AuditError, match="differs from the one anchored"):
        accept_restore(url, ring, "looks like a restore")
    assert not verify(url, ring).ok
