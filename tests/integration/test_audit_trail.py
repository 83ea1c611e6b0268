"""The audit trail: an untouched chain verifies, every kind of tampering names its entry."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import date, datetime, timezone

import pytest
import sqlalchemy as sa

from renkei.audit import append, verify
from renkei.audit.trail import GENESIS, AuditError, _message
from renkei.cli import main
from renkei.warehouse import audit_head, audit_log

NOW = datetime(2025, 6, 1, 6, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return request.getfixturevalue("pg_factory")()


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


def test_untouched_log_verifies(url, ring):
    assert verify(url, ring).ok  # no table yet: an empty trail
    _log(url, ring)
    res = verify(url, ring)
    assert (res.ok, res.entries) == (True, 5)
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
    assert "audit key" in res.problem


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
    assert first["key_versions"]["link"] == {"current": 1, "versions": [1]} and first["counts"] == {"residents": 3}
    assert second["notice_ids"] == ["n1", "n2"] and second["as_of"] == "2025-06-01"
    assert verify(url, ring).ok


def test_cli_verify_exit_codes(url, ring, tmp_path, capsys):
    keyring = str(ring.save(tmp_path / "keyring.json"))
    _log(url, ring, 3)
    assert main(["audit", "verify", "--warehouse", url, "--keyring", keyring]) == 0
    assert capsys.readouterr().out.strip() == "OK, 3 entries"
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


def test_entries_keep_verifying_across_an_audit_key_rotation(url, ring):
    _log(url, ring, 2)
    ring.rotate("audit")
    assert append(url, "key_rotation", {"purpose": "audit", "to_version": 2}, ring=ring, now=NOW) == 3
    rows = _rows(url)
    assert [r["entry_hash"][:3] for r in rows] == ["v1.", "v1.", "v2."]
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
