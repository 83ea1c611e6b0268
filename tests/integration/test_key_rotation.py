"""Link-key rotation on a synthetic city built through the real chain (Airflow DAG runs).

What a broken rotation would violate: every ERK column ends under the new version and nothing
in the warehouse opens under the old one; the warehouse equals the one before mapped through
open(old) → seal(new); no notice id changes, nothing is republished or re-delivered on a re-run;
the audit trail still verifies and records the rotation; a killed re-seal resumes to the same
end state as an uninterrupted one, and ERK writers are refused while it is unfinished.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from renkei.cli import main
from renkei.config import load_sources
from renkei.errors import KeyRingError, RotationInProgress
from renkei.keys import rotation
from renkei.keys.ring import KeyRing
from renkei.runctx import TOKYO
from conftest import need_service

AS_OF = date(2025, 6, 1)
RESIDENTS = 400
pytestmark = [pytest.mark.airflow]
BOOKKEEPING = {"key_rotations", "key_state", "audit_log", "audit_head"}


# -- the city -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from renkei.synth import generate

    raw = tmp_path_factory.mktemp("city") / "raw"
    generate(RESIDENTS, 5, AS_OF, raw, fmt="sqlite", defect_rate=0.03)
    _nhi_copies_disagree(raw)
    return raw


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def city(request, raw, tmp_path_factory):
    """The chain run once; a copy of the SQLite warehouse and keyring is kept as it was."""
    from renkei.runner import run_chain

    work = tmp_path_factory.mktemp(f"work-{request.param}")
    url = request.getfixturevalue("pg_factory")() if request.param == "postgresql" else f"sqlite:///{work / 'warehouse.db'}"
    keyring = KeyRing.generate().save(work / "keyring.json")
    report = run_chain(raw, AS_OF, work, warehouse_url=url, keyring_path=keyring, say=lambda m: None)
    # A reviewer's decision on an item keyed by an nhi ERK must survive the re-seal (rejected: the
    # ERK stays held, so the decision itself changes no notice).
    item = _nhi_item(url)
    assert main(["review", "reject", item, "--reviewer", "tester", "--comment", "checked",
                 "--warehouse", url, "--keyring", str(keyring)]) == 0
    pristine = tmp_path_factory.mktemp(f"pristine-{request.param}")
    if request.param == "sqlite":
        shutil.copy(work / "warehouse.db", pristine / "warehouse.db")
    shutil.copy(keyring, pristine / "keyring.json")
    return {"backend": request.param, "url": url, "work": work, "keyring": keyring, "report": report,
            "raw": raw, "pristine": pristine}


def _nhi_copies_disagree(raw: Path) -> None:
    """Give three NHI rows another birth date, so the audit flags records keyed by an ERK."""
    import sqlite3

    con = sqlite3.connect(raw / "nhi.db")
    with con:
        con.execute("UPDATE nhi SET birth_date = '1950-01-02' WHERE rowid IN (SELECT rowid FROM nhi "
                    "WHERE birth_date IS NOT NULL AND birth_date != '1950-01-02' ORDER BY rowid LIMIT 3)")
    con.close()


def _nhi_item(url: str) -> str:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        item = conn.execute(sa.text("SELECT item_id FROM review_queue WHERE source = 'nhi' AND state = 'pending' "
                                    "ORDER BY item_id LIMIT 1")).scalar()
    eng.dispose()
    assert item, "the NHI rows changed above must be in the review queue"
    return item


def _tables(url: str) -> dict[str, set[tuple]]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        md = sa.MetaData()
        md.reflect(conn)
        out = {name: {tuple(r) for r in conn.execute(sa.select(t))} for name, t in md.tables.items()}
    eng.dispose()
    return out


def _erk_snapshot(url: str) -> dict[str, list[dict]]:
    """Every row of every table with ERK columns, as dicts."""
    eng = sa.create_engine(url)
    out = {}
    with eng.connect() as conn:
        for p in rotation.erk_columns():
            out[p.table.name] = [dict(r) for r in conn.execute(sa.select(p.table)).mappings()]
    eng.dispose()
    return out


def _mapped(before: dict[str, list[dict]], ring: KeyRing) -> dict[str, set[tuple]]:
    """The snapshot as an uninterrupted re-seal must leave it: open(old) → seal(current)."""
    erk_keyed = {s.name for s in load_sources().values() if s.ingest and s.key == "dept_pseudonym"}
    out = {}
    for p in rotation.erk_columns():
        rows = set()
        for r in before[p.table.name]:
            r = dict(r)
            for c in p.columns + (p.by_source if r.get("source") in erk_keyed else ()):
                if r[c] is not None:
                    r[c] = ring.seal("link", ring.open("link", r[c]))
            rows.add(tuple(sorted(r.items())))
        out[p.table.name] = rows
    return out


def _as_sets(snapshot: dict[str, list[dict]]) -> dict[str, set[tuple]]:
    return {t: {tuple(sorted(r.items())) for r in rows} for t, rows in snapshot.items()}


def _cells_opening_under(url: str, ring: KeyRing, version: int) -> list[str]:
    """Tables holding any cell that opens as a link token of ``version`` (whatever its column)."""
    hits = set()
    for name, rows in _tables(url).items():
        for row in rows:
            for cell in row:
                if isinstance(cell, str) and KeyRing.version_of(cell) == version:
                    try:
                        ring.open("link", cell)
                    except KeyRingError:
                        continue
                    hits.add(name)
    return sorted(hits)


def _notices(url: str) -> dict[str, tuple]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        rows = conn.execute(sa.text("SELECT notice_id, service, kind, subject, dose_number, window_start, "
                                    "created_run_id FROM notices")).all()
    eng.dispose()
    return {r[0]: tuple(r[1:]) for r in rows}


# -- delivery through a real SMTP server --------------------------------------------------------
class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, N802 - aiosmtpd hook
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), str(msg["Subject"])))
        return "250 OK"


@pytest.fixture
def smtp():
    """An SMTP server of this test's own (one inbox per parametrised city)."""
    from aiosmtpd.controller import Controller

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = _Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    yield port, inbox
    ctl.stop()


def _deliver(city, port: int, delivery_db: str, dry_run: bool = False) -> tuple[dict, list[dict]]:
    from renkei.delivery.config import load_delivery_config
    from renkei.delivery.deliver import deliver
    from renkei.delivery.settings import DeliverySettings

    settings = DeliverySettings(city["url"], f"sqlite:///{city['work'] / delivery_db}", city["raw"], city["keyring"])
    cfg = dataclasses.replace(load_delivery_config(env={"RENKEI_SMTP_HOST": "127.0.0.1", "RENKEI_SMTP_PORT": str(port)}),
                              rate_per_second=1000.0)
    now = datetime(2025, 6, 2, 10, 0, tzinfo=TOKYO)
    if not dry_run:
        return deliver(settings, now, config=cfg, ring=KeyRing.load(city["keyring"])).counts(), []
    out = city["work"] / f"{delivery_db}.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        counts = deliver(settings, now, config=cfg, ring=KeyRing.load(city["keyring"]), dry_run_out=fh).counts()
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    out.unlink()
    return counts, lines


def _receipts(city, delivery_db: str) -> set[tuple]:
    eng = sa.create_engine(f"sqlite:///{city['work'] / delivery_db}")
    with eng.connect() as conn:
        rows = set(conn.execute(sa.text("SELECT notice_id, attempt, status, reason, channel FROM delivery_receipts")).all())
    eng.dispose()
    return rows


def _run_rotation_dag(city) -> list[dict]:
    from renkei.runner import airflow_env, run_dags

    env = airflow_env(city["work"], city["url"], f"sqlite:///{city['work'] / 'extracts.db'}", city["keyring"])
    return run_dags(env, AS_OF, ["renkei_rotate_link_key"], city["work"] / "logs" / "airflow.log", lambda m: None)


def test_link_rotation_keeps_notice_identity_and_history(city, smtp, capsys):
    from renkei.outputs.relay import relay_notices
    from renkei.outputs.stream import NoticeStreamConfig
    from renkei.runner import run_chain

    need_service("Redis", "127.0.0.1", 6379)
    url, work, keyring = city["url"], city["work"], str(city["keyring"])
    port, inbox = smtp
    stream = NoticeStreamConfig(stream=f"renkei:test:rotation:{uuid.uuid4().hex[:8]}")

    # Before: notices published on the stream, delivered by e-mail; what a dry run would send.
    notices_before = _notices(url)
    assert len(notices_before) > 50
    assert relay_notices(url, stream)["published"] == len(notices_before)
    _, would_send = _deliver(city, port, "dry-before.db", dry_run=True)
    sent_before = _deliver(city, port, "delivery.db")[0]
    assert sent_before.get("sent", 0) > 0 and len(inbox.messages) == sent_before["sent"]
    receipts_before = _receipts(city, "delivery.db")
    published_before = _tables(url)["outbox_published"]
    before = _erk_snapshot(url)
    decided = {r["item_id"]: r["state"] for r in before["review_queue"] if r["source"] == "nhi"}
    assert "rejected" in decided.values() and any(r["source"] == "nhi" for r in before["link_flags"])

    # Rotate: the keyring gets v2; ERK writers refuse until the warehouse is re-sealed.
    assert main(["keys", "rotate", "--purpose", "link", "--keyring", keyring]) == 0
    ring = KeyRing.load(keyring)
    assert ring.current("link") == 2 and ring.state("link", 1) == "history"
    from renkei.linkage.mart import build_mart

    with pytest.raises(RotationInProgress, match="re-seal the warehouse first"):
        _load_refused(city, ring)
    if city["backend"] == "postgresql":
        # A re-seal stopped after a few batches (as a crash would) leaves the lock held …
        assert main(["keys", "reseal", "--keyring", keyring, "--warehouse", url, "--batch-size", "50", "--max-batches", "4"]) == 3
        with pytest.raises(RotationInProgress, match="being re-sealed"):
            build_mart(url, AS_OF, "link_residents/refused")
        assert rotation.status(url)["rotating_to"] == 2
    # … and the DAG resumes it (SQLite: the DAG does the whole re-seal).
    runs = _run_rotation_dag(city)
    assert [r.get("state") for r in runs] == ["success"], runs
    capsys.readouterr()

    # Every ERK column under v2 only; no cell anywhere opens under v1; contents equal mapped.
    after = _erk_snapshot(url)
    for table, rows in after.items():
        p = next(p for p in rotation.erk_columns() if p.table.name == table)
        for r in rows:
            assert all(r[c] is None or r[c].startswith("v2.") for c in p.columns), table
    assert _cells_opening_under(url, ring, 1) == []
    assert _as_sets(after) == _mapped(before, ring)
    st = rotation.status(url)
    assert (st["version"], st["rotating_to"]) == (2, None)
    assert st["rotations"][-1]["state"] == "completed"

    # The audit trail verifies and records the rotation (it was appended to, never rewritten).
    assert main(["audit", "verify", "--warehouse", url, "--keyring", keyring]) == 0
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        entry = conn.execute(sa.text("SELECT kind, payload FROM audit_log ORDER BY seq DESC LIMIT 1")).one()
    eng.dispose()
    payload = json.loads(entry[1])
    assert entry[0] == "key_rotation" and (payload["from_version"], payload["to_version"]) == (1, 2)
    assert payload["rows_total"] == sum(len(v) for v in before.values())

    # A re-run of the whole chain: the same notices, nothing republished or re-delivered.
    run_chain(city["raw"], AS_OF, work, warehouse_url=url, keyring_path=city["keyring"], say=lambda m: None)
    assert _notices(url) == notices_before
    assert {r["item_id"]: r["state"] for r in _erk_snapshot(url)["review_queue"] if r["source"] == "nhi"} == decided
    assert relay_notices(url, stream)["published"] == 0
    assert _tables(url)["outbox_published"] == published_before
    assert _deliver(city, port, "delivery.db")[0].get("sent", 0) == 0
    assert len(inbox.messages) == sent_before["sent"] and _receipts(city, "delivery.db") == receipts_before
    # The v2 ERKs reach the same residents' contacts as the v1 ERKs did.
    _, would_send_after = _deliver(city, port, "dry-after.db", dry_run=True)
    assert {(m["notice_id"], m["recipient"]) for m in would_send_after} == {(m["notice_id"], m["recipient"]) for m in would_send}
    assert main(["audit", "verify", "--warehouse", url, "--keyring", keyring]) == 0

    # A resident's record still lists their links and notices (looked up under every version).
    code = _resident_with_notices(city, ring)
    args = ["audit", "resident", "--resident-code", code, "--warehouse", url, "--keyring", keyring]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "linked     none" not in out and "notices    none" not in out and code in out

    import redis

    redis.Redis.from_url(stream.redis_url).delete(stream.stream)


def _load_refused(city, ring: KeyRing) -> None:
    from renkei.ingest import load
    from renkei.settings import Settings

    settings = dataclasses.replace(Settings.from_env(), warehouse_url=city["url"])
    load(load_sources()["registry"], "ingest_registry/refused", ring, settings)


def _resident_with_notices(city, ring: KeyRing) -> str:
    import sqlite3

    erks = set(_notices_erks(city["url"]))
    con = sqlite3.connect(city["raw"] / "registry.db")
    codes = [r[0] for r in con.execute("SELECT resident_code FROM registry")]
    con.close()
    return next(c for c in codes if c and len(c) == 11 and c.isdigit() and ring.seal("link", c) in erks)


def _notices_erks(url: str) -> list[str]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        erks = list(conn.execute(sa.text("SELECT erk FROM notices")).scalars())
    eng.dispose()
    return erks


# -- interruption ---------------------------------------------------------------------------------
def _lines_until(proc: subprocess.Popen, n: int, timeout: float) -> list[str]:
    """Read progress lines until ``n`` arrived (bounded by ``timeout``)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(lines)} progress lines within {timeout}s: {lines}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            assert line, f"the re-seal exited early ({proc.poll()}): {lines}"
            if line.startswith("link rotation v"):
                lines.append(line)
    return lines


# The copy-and-kill comparison needs a file copy of the warehouse: the SQLite city. On PostgreSQL
# the interruption is a batch limit and the DAG resumes it (the test above).
@pytest.mark.parametrize("city", ["sqlite"], indirect=True)
def test_a_killed_reseal_resumes_to_the_uninterrupted_end_state(city, tmp_path):
    pristine = city["pristine"]
    keyring = tmp_path / "keyring.json"
    shutil.copy(pristine / "keyring.json", keyring)
    os.chmod(keyring, 0o600)
    assert main(["keys", "rotate", "--purpose", "link", "--keyring", str(keyring)]) == 0
    ring = KeyRing.load(keyring)
    whole, killed = tmp_path / "whole.db", tmp_path / "killed.db"
    shutil.copy(pristine / "warehouse.db", whole)
    shutil.copy(pristine / "warehouse.db", killed)
    url_whole, url_killed = f"sqlite:///{whole}", f"sqlite:///{killed}"
    before = _erk_snapshot(url_killed)

    uninterrupted = rotation.rotate_link(url_whole, ring, batch_size=3, say=lambda m: None)
    assert uninterrupted["state"] == "completed"

    # A real process, killed (SIGKILL) once it has committed a few batches.
    cmd = [str(Path(sys.executable).with_name("renkei")), "keys", "reseal", "--warehouse", url_killed,
           "--keyring", str(keyring), "--batch-size", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _lines_until(proc, 3, timeout=120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    st = rotation.status(url_killed)
    assert st["rotating_to"] == 2 and st["rotations"][-1]["state"] == "running"
    assert st["rotations"][-1]["rows_resealed"] > 0  # three batches committed before the kill
    assert _as_sets(_erk_snapshot(url_killed)) != _mapped(before, ring), "the kill came after the end"

    # While unfinished, every ERK writer is refused with the way out.
    from renkei.linkage.mart import build_mart
    from renkei.outputs.outbox import run_services

    with pytest.raises(RotationInProgress, match="renkei keys reseal"):
        _load_refused({"url": url_killed}, ring)
    with pytest.raises(RotationInProgress, match="being re-sealed"):
        build_mart(url_killed, AS_OF, "link_residents/refused")
    with pytest.raises(RotationInProgress, match="being re-sealed"):
        run_services(url_killed, AS_OF, "proactive_services/refused")

    # Resume in a new process: the end state equals the uninterrupted run's, table by table.
    done = subprocess.run(cmd[:-1] + ["500"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "completed" in done.stdout
    a, b = _tables(url_whole), _tables(url_killed)
    assert set(a) == set(b)
    for name in sorted(set(a) - BOOKKEEPING):
        assert a[name] == b[name], f"{name} differs between the killed-and-resumed and the uninterrupted rotation"
    assert _as_sets(_erk_snapshot(url_killed)) == _mapped(before, ring)
    assert main(["audit", "verify", "--warehouse", url_killed, "--keyring", str(keyring)]) == 0
    # Idempotent: a further re-seal finds nothing to do.
    assert rotation.rotate_link(url_killed, ring, say=lambda m: None)["state"] == "up_to_date"

    # The old keyring (v1 current) may not write into the v2 warehouse.
    with pytest.raises(KeyRingError, match="deploy the rotated keyring"):
        _load_refused({"url": url_killed}, KeyRing.load(pristine / "keyring.json"))
