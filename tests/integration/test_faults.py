"""Fault injection (issue 7): each fault leaves no half state, and a re-run ends where a clean run does.

Faults: the warehouse failing or vanishing mid-load (PostgreSQL), the load step's process
killed mid-transaction, Redis down while the relay publishes, the connection to Redis cut after
Redis applied a batch but before its reply reached the relay, duplicate and out-of-order change
events, a source handing over the same rows twice, and a missing, unreadable, too open or wrong
keyring. Nothing here waits on a clock: blocking faults hold a PostgreSQL advisory lock and
poll pg_stat_activity until the step is stuck on it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import REPO, need_service

from renkei.cli import main
from renkei.config import load_sources
from renkei.errors import KeyRingError
from renkei.ingest import extract, load, validate
from renkei.keys.adapter import pseudonymize
from renkei.keys.ring import KeyRing
from renkei.outputs import relay as relay_module
from renkei.outputs.relay import relay_notices
from renkei.outputs.stream import NoticeStreamConfig
from renkei.settings import Settings
from renkei.warehouse import engine, ensure_schema, notices, outbox_published

IMM = dataclasses.replace(load_sources()["immunization"], chunk_rows=50)  # several chunks per load
TS = "2025-05-01T09:00:00+09:00"
ROWS = 200
STUCK_ROW = "IM00150"  # in the fourth chunk: three chunks are upserted before the fault
LOCK = 74210
REDIS_URL = "redis://127.0.0.1:6379/0"
CLOSED_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def _raw(path: Path, n: int = ROWS) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=IMM.raw_columns)
        w.writeheader()
        for i in range(n):
            w.writerow({"record_id": f"IM{i:05d}", "resident_code": f"{10000000000 + i}", "name_kana": "ヤマダ ハナコ",
                        "birth_date": "2024-04-10", "sex": "2", "address": "北九州市戸畑区中本町1番1号",
                        "vaccine_code": "XYZ" if i in (3, 60) else "HEPB", "dose_number": "1",
                        "administered_on": "H31.5.1" if i == 7 else "2024-06-10", "updated_at": TS})
    return path


def _settings(warehouse_url: str, tmp_path: Path) -> Settings:
    env = Settings.from_env()
    return Settings(warehouse_url=warehouse_url, extracts_url=f"sqlite:///{tmp_path / 'ex.db'}",
                    config_dir=env.config_dir, expectations_dir=env.expectations_dir)


def _state(url: str) -> dict:
    """Everything a load decides, without run ids or wall-clock times (as text: engines differ in types)."""
    eng = engine(url)
    with eng.connect() as conn:
        state = {
            "staging": sorted(tuple(map(str, r)) for r in conn.execute(sa.text(
                "SELECT record_id, erk, name_digest, vaccine_code, dose_number, administered_on, row_hash "
                "FROM staging_immunization"))),
            "quarantine": sorted(tuple(map(str, r)) for r in conn.execute(sa.text(
                "SELECT source, row_hash, source_row, reason FROM quarantine"))),
            "watermarks": sorted(tuple(r) for r in conn.execute(sa.text("SELECT source, change_seq FROM watermarks"))),
            "landing": conn.execute(sa.text("SELECT count(*) FROM landing_immunization")).scalar_one(),
        }
    eng.dispose()
    return state


def _ingest(settings: Settings, run: str, ring: KeyRing) -> dict:
    extract(IMM, run, settings)
    validate(IMM, run, settings)
    return load(IMM, run, ring, settings)


@pytest.fixture
def reference(tmp_path_factory, ring) -> dict:
    """The end state of a clean run of the same extract (SQLite warehouse, same keys)."""
    tmp = tmp_path_factory.mktemp("reference")
    settings = _settings(f"sqlite:///{tmp / 'wh.db'}", tmp)
    pseudonymize(IMM, str(_raw(tmp / "imm.csv")), settings.extracts_url, ring)
    out = _ingest(settings, "ingest_immunization/reference", ring)
    assert out == {**out, "read": ROWS, "loaded": ROWS - 3, "quarantined": 3, "deleted": 0, "watermark": ROWS}
    state = _state(settings.warehouse_url)
    # the first export numbers its rows 1..ROWS: the watermark is the last change_seq loaded
    assert state["watermarks"] == [("immunization", ROWS)]
    return state


@pytest.fixture
def pg(pg_factory, tmp_path, ring) -> Settings:
    """A fresh PostgreSQL warehouse with the extract landed and validated under run `r`."""
    settings = _settings(pg_factory(), tmp_path)
    pseudonymize(IMM, str(_raw(tmp_path / "imm.csv")), settings.extracts_url, ring)
    extract(IMM, "r", settings)
    validate(IMM, "r", settings)
    return settings


def _sql(url: str, *statements: str) -> None:
    eng = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    eng.dispose()


def _trigger(url: str, action: str) -> None:
    _sql(url,
         "CREATE FUNCTION renkei_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
         f"IF NEW.record_id = '{STUCK_ROW}' THEN {action}; END IF; RETURN NEW; END $$",
         "CREATE TRIGGER renkei_fault BEFORE INSERT ON staging_immunization "
         "FOR EACH ROW EXECUTE FUNCTION renkei_fault()")


def _drop_trigger(url: str) -> None:
    _sql(url, "DROP TRIGGER renkei_fault ON staging_immunization", "DROP FUNCTION renkei_fault()")


def _assert_untouched(url: str) -> None:
    """The load of run `r` left nothing behind: no staging or quarantine row, landing intact."""
    state = _state(url)
    assert state == {"staging": [], "quarantine": [], "watermarks": [], "landing": ROWS}
    eng = engine(url)
    with eng.connect() as conn:
        assert conn.execute(sa.text("SELECT state FROM ingest_runs WHERE run_id = 'r'")).scalar_one() == "validated"
    eng.dispose()


POLL_BOUND = 120  # seconds: a guard against a hang, not a timing assertion


def _activity(lock_conn: sa.Connection) -> list[tuple]:
    """This database's backends (pid, state, wait event, query start) for a failure message."""
    return [tuple(r) for r in lock_conn.execute(sa.text(
        "SELECT pid, state, wait_event_type, wait_event, left(query, 60) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"))]


def _blocked_backend(lock_conn: sa.Connection) -> int:
    """The pid of the backend waiting on the advisory lock (polls, bounded, until the step is stuck)."""
    deadline = time.monotonic() + POLL_BOUND
    while time.monotonic() < deadline:
        pid = lock_conn.execute(sa.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'")).scalar()
        if pid is not None:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"the load never reached the injected lock within {POLL_BOUND}s; backends: "
                         f"{_activity(lock_conn)}")


def _wait_gone(lock_conn: sa.Connection, pid: int) -> None:
    """Polls, bounded, until the terminated backend ``pid`` has left pg_stat_activity."""
    deadline = time.monotonic() + POLL_BOUND
    while lock_conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).scalar():
        if time.monotonic() >= deadline:
            raise AssertionError(f"the terminated backend {pid} was still there after {POLL_BOUND}s; backends: "
                                 f"{_activity(lock_conn)}")
        time.sleep(0.05)


# -- the warehouse fails or goes away mid-load ----------------------------------------------------


def test_upsert_failing_mid_load_leaves_nothing_and_the_retry_matches_a_clean_run(pg, ring, reference):
    _trigger(pg.warehouse_url, "RAISE EXCEPTION 'injected fault'")
    with pytest.raises(sa.exc.DBAPIError, match="injected fault"):
        load(IMM, "r", ring, pg)
    _assert_untouched(pg.warehouse_url)
    _drop_trigger(pg.warehouse_url)
    assert load(IMM, "r", ring, pg)["read"] == ROWS
    assert _state(pg.warehouse_url) == reference


def test_backend_terminated_mid_load_leaves_nothing_and_the_retry_matches_a_clean_run(pg, ring, reference):
    _trigger(pg.warehouse_url, f"PERFORM pg_advisory_xact_lock({LOCK})")
    lock_eng = sa.create_engine(pg.warehouse_url, isolation_level="AUTOCOMMIT")
    failure: list[BaseException] = []
    with lock_eng.connect() as lock_conn:
        lock_conn.execute(sa.text(f"SELECT pg_advisory_lock({LOCK})"))

        def run() -> None:
            try:
                load(IMM, "r", ring, pg)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                failure.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        pid = _blocked_backend(lock_conn)
        lock_conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        worker.join()
        lock_conn.execute(sa.text(f"SELECT pg_advisory_unlock({LOCK})"))
    lock_eng.dispose()
    assert len(failure) == 1 and isinstance(failure[0], sa.exc.OperationalError)
    _assert_untouched(pg.warehouse_url)
    _drop_trigger(pg.warehouse_url)
    load(IMM, "r", ring, pg)
    assert _state(pg.warehouse_url) == reference


_LOAD_IN_CHILD = """
import dataclasses, sys
from pathlib import Path
from renkei.config import load_sources
from renkei.ingest import load
from renkei.keys.ring import KeyRing
from renkei.settings import Settings
source = dataclasses.replace(load_sources()["immunization"], chunk_rows=50)
env = Settings.from_env()
settings = Settings(sys.argv[1], sys.argv[2], env.config_dir, env.expectations_dir)
load(source, "r", KeyRing.load(sys.argv[3]), settings)
"""


def test_load_process_killed_mid_transaction_then_rerun_matches_a_clean_run(pg, ring, reference, tmp_path):
    keyring = ring.save(tmp_path / "keyring.json")
    _trigger(pg.warehouse_url, f"PERFORM pg_advisory_xact_lock({LOCK})")
    lock_eng = sa.create_engine(pg.warehouse_url, isolation_level="AUTOCOMMIT")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])}
    with lock_eng.connect() as lock_conn:
        lock_conn.execute(sa.text(f"SELECT pg_advisory_lock({LOCK})"))
        child = subprocess.Popen([sys.executable, "-c", _LOAD_IN_CHILD, pg.warehouse_url, pg.extracts_url,
                                  str(keyring)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            pid = _blocked_backend(lock_conn)  # the child is inside load's transaction, 3 chunks written
        finally:
            child.kill()
            child.communicate()
        # A backend waiting on a lock does not notice its client died: end it as an operator would.
        lock_conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        lock_conn.execute(sa.text(f"SELECT pg_advisory_unlock({LOCK})"))
        _wait_gone(lock_conn, pid)
    lock_eng.dispose()
    assert child.returncode != 0
    _assert_untouched(pg.warehouse_url)
    _drop_trigger(pg.warehouse_url)
    load(IMM, "r", ring, pg)
    assert _state(pg.warehouse_url) == reference


# -- Redis down while the relay publishes ----------------------------------------------------------


def _add_notices(url: str, n: int) -> list[str]:
    rows = [{
        "notice_id": f"{i:032x}", "service": "immunization", "kind": "due", "erk": f"v1.erk{i:04d}",
        "rule_id": "HIB#1", "rule_version": 1, "subject": "HIB", "dose_number": 1,
        "window_start": date(2025, 5, 1), "window_end": date(2025, 5, 1) + timedelta(days=30),
        "evaluated_on": date(2025, 5, 1), "facts": "{}", "created_run_id": "proactive_services/x",
        "created_at": f"2025-05-01T06:00:{i:02d}+09:00",
    } for i in range(n)]
    eng = engine(url)
    with eng.begin() as conn:
        conn.execute(notices.insert(), rows)
    eng.dispose()
    return [r["notice_id"] for r in rows]


def _count(url: str, table: sa.Table) -> int:
    eng = engine(url)
    with eng.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    eng.dispose()
    return n


def test_redis_down_during_publication_keeps_the_outbox_and_catches_up_without_duplicates(
    tmp_path, monkeypatch
):
    need_service("Redis", "127.0.0.1", 6379)
    import redis

    warehouse = f"sqlite:///{tmp_path / 'wh.db'}"
    eng = engine(warehouse)
    ensure_schema(eng)
    eng.dispose()
    ids = _add_notices(warehouse, 7)
    stream = f"renkei:test:{uuid.uuid4().hex}:notices"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        down = relay_notices(warehouse, NoticeStreamConfig(redis_url=CLOSED_URL, stream=stream), batch=3)
        assert down["errors"] == 1 and down["published"] == 0 and down["pending"] == 7
        assert _count(warehouse, notices) == 7 and _count(warehouse, outbox_published) == 0

        # Redis answers for one batch, then goes away in the middle of the run.
        real_publish, calls = relay_module._publish, []

        def flaky(client_, cfg_, batch_):
            calls.append(len(batch_))
            if len(calls) > 1:
                raise redis.ConnectionError("injected outage")
            return real_publish(client_, cfg_, batch_)

        cfg = NoticeStreamConfig(redis_url=REDIS_URL, stream=stream)
        monkeypatch.setattr(relay_module, "_publish", flaky)
        partial = relay_notices(warehouse, cfg, batch=3)
        assert partial["errors"] == 1 and partial["published"] == 3 and partial["pending"] == 4
        monkeypatch.setattr(relay_module, "_publish", real_publish)

        caught_up = relay_notices(warehouse, cfg, batch=3)
        assert caught_up == {"stream": stream, "published": 4, "pending": 0, "errors": 0, "state_events_published": 0}
        assert relay_notices(warehouse, cfg, batch=3)["published"] == 0
        on_stream = [json.loads(fields[b"data"])["notice_id"] for _, fields in client.xrange(stream)]
        assert on_stream == ids  # each notice once, in created order
        assert _count(warehouse, notices) == 7 and _count(warehouse, outbox_published) == 7
    finally:
        client.delete(stream)
        client.close()


class _Cut(threading.Event):
    """Set once a connection's EXEC reply is to be dropped; ``xadds``: how many XADDs it answers."""

    xadds = 0


class ReplyCuttingProxy:
    """A TCP proxy between the relay and Redis. It lets the ``cut_at``-th MULTI/EXEC holding XADDs
    through to Redis, waits until Redis has answered EXEC (the entries are on the stream), then
    drops that reply and closes the relay's connection: the relay never learns that Redis applied
    its batch. Every other command and connection passes through."""

    XADD = b"$4\r\nXADD\r\n"
    EXEC = b"$4\r\nEXEC\r\n"

    def __init__(self, upstream: tuple[str, int], cut_at: int) -> None:
        import socket

        self.upstream, self.cut_at = upstream, cut_at
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.transactions = 0  # MULTI/EXEC with XADDs seen from the relay
        self.dropped_replies: list[bytes] = []  # the EXEC replies the relay never got
        self._lock = threading.Lock()
        self._sockets: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            cut = _Cut()
            threading.Thread(target=self._upstream, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, cut), daemon=True).start()

    def _upstream(self, client, server, cut: _Cut) -> None:
        """relay -> Redis: forward everything; arm the cut before forwarding the chosen EXEC."""
        sent = b""
        try:
            while data := client.recv(65536):
                sent += data
                if self.EXEC in sent and self.XADD in sent:
                    with self._lock:
                        self.transactions += 1
                        if self.transactions == self.cut_at:
                            cut.xadds = sent.count(self.XADD)
                            cut.set()
                    sent = b""
                server.sendall(data)
        except OSError:
            pass

    def _downstream(self, server, client, cut: _Cut) -> None:
        """Redis -> relay: forward replies, except the armed transaction's; once Redis has answered
        its EXEC (n +QUEUED, then the n-entry array of entry ids), close the relay's connection."""
        import socket

        held = b""
        try:
            while data := server.recv(65536):
                if not cut.is_set():
                    client.sendall(data)
                    continue
                held += data
                queued, _, tail = held.rpartition(b"+QUEUED\r\n")
                n = cut.xadds
                if queued.count(b"+QUEUED\r\n") + 1 == n and tail.startswith(b"*%d\r\n" % n) \
                        and tail.count(b"\r\n") == 1 + 2 * n:
                    self.dropped_replies.append(held)
                    for s in (client, server):  # the relay sees its connection closed, never the ids
                        s.shutdown(socket.SHUT_RDWR)  # (close alone would wait for the other pump's recv)
                        s.close()
                    return
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()


def _consume_once_per_key(stream: str) -> tuple[list[str], int]:
    """The consumer contract of docs/EVENTS.md: read the whole stream with a NoticeReader, handle a
    notice only if its notice_id was not handled before, acknowledge every message. Returns the
    notice ids handled (in arrival order) and how many messages were read."""
    from renkei.outputs import NoticeReader

    handled, seen, read = [], set(), 0
    with NoticeReader(REDIS_URL, stream, group="delivery", consumer="worker-1") as reader:
        while batch := reader.read(count=4, block_ms=None):
            for msg in batch:
                read += 1
                if msg.notice_id not in seen:
                    handled.append(msg.notice_id)
                    seen.add(msg.notice_id)
                reader.ack([msg])
    return handled, read


def _stream_notice_ids(client, stream: str) -> list[str]:
    return [json.loads(fields[b"data"])["notice_id"] for _, fields in client.xrange(stream)]


def test_connection_cut_after_xadd_before_the_reply_is_published_again_and_consumed_once(tmp_path):
    """At-least-once, for real: Redis applies a batch's MULTI/EXEC but its reply never reaches the
    relay (a proxy drops it and closes the connection), so the relay does not record the batch in
    ``outbox_published``. Nothing is lost: the next run publishes the batch again, and a consumer
    that drops the notice_ids it has handled (docs/EVENTS.md) handles each notice exactly once.
    No relay code is patched."""
    need_service("Redis", "127.0.0.1", 6379)
    import redis

    warehouse = f"sqlite:///{tmp_path / 'wh.db'}"
    eng = engine(warehouse)
    ensure_schema(eng)
    eng.dispose()
    ids = _add_notices(warehouse, 7)
    stream = f"renkei:test:{uuid.uuid4().hex}:notices"
    client = redis.Redis.from_url(REDIS_URL)
    proxy = ReplyCuttingProxy(("127.0.0.1", 6379), cut_at=2)  # the second batch of three
    cfg = NoticeStreamConfig(redis_url=proxy.url, stream=stream)
    try:
        cut = relay_notices(warehouse, cfg, batch=3)
        assert len(proxy.dropped_replies) == 1, f"no reply was dropped ({proxy.transactions} transactions)"
        # The relay saw a dead connection: it recorded nothing of the batch and stopped ...
        assert cut == {**cut, "published": 3, "pending": 4, "errors": 1}, cut
        assert "Redis unreachable" in cut["error"]
        assert _count(warehouse, outbox_published) == 3
        # ... although Redis applied it: the case at-least-once is about.
        assert _stream_notice_ids(client, stream) == ids[:6]

        caught_up = relay_notices(warehouse, cfg, batch=3)  # the same link, working again
        assert caught_up == {"stream": stream, "published": 4, "pending": 0, "errors": 0, "state_events_published": 0}
        assert relay_notices(warehouse, cfg)["published"] == 0

        # Each notice is on the stream at least once; its record points at an entry of its own.
        entries = {msg_id.decode(): json.loads(fields[b"data"])["notice_id"] for msg_id, fields in client.xrange(stream)}
        assert sorted(set(entries.values())) == ids
        eng = engine(warehouse)
        with eng.connect() as conn:
            recorded = dict(conn.execute(sa.select(outbox_published.c.notice_id, outbox_published.c.stream_id)).all())
        eng.dispose()
        assert sorted(recorded) == ids and all(entries[sid] == nid for nid, sid in recorded.items())
        # The documented consumer (drop a notice_id already handled) handles each exactly once.
        handled, read = _consume_once_per_key(stream)
        assert read == len(entries)
        assert handled == ids
    finally:
        proxy.close()
        client.delete(stream)
        client.close()


# -- events are wake-ups; sources repeat themselves -----------------------------------------------


def test_duplicate_and_out_of_order_change_events_change_nothing(tmp_path, ring):
    settings = _settings(f"sqlite:///{tmp_path / 'wh.db'}", tmp_path)
    pseudonymize(IMM, str(_raw(tmp_path / "imm.csv")), settings.extracts_url, ring)
    _ingest(settings, "ingest_immunization/event_1", ring)
    first = _state(settings.warehouse_url)
    assert first["watermarks"] == [("immunization", ROWS)]
    # The same event delivered again, then an older one arriving late: each wakes a run that
    # reads after the persisted change_seq watermark, not from the event: nothing is re-read.
    for run in ("ingest_immunization/event_1_again", "ingest_immunization/event_0_late"):
        out = _ingest(settings, run, ring)
        assert out == {**out, "read": 0, "loaded": 0, "quarantined": 0, "deleted": 0, "watermark": ROWS}
        assert _state(settings.warehouse_url) == first


def test_source_returning_the_same_rows_twice_is_idempotent(tmp_path, ring, reference):
    settings = _settings(f"sqlite:///{tmp_path / 'wh.db'}", tmp_path)
    raw = _raw(tmp_path / "imm.csv")
    # The department hands over the same file twice: the adapter's diff writes nothing the
    # second time, and the run after it reads nothing.
    for run, written in (("ingest_immunization/once", ROWS), ("ingest_immunization/twice", 0)):
        assert pseudonymize(IMM, str(raw), settings.extracts_url, ring).written == written
        assert _ingest(settings, run, ring)["read"] == written
        assert _state(settings.warehouse_url) == reference
    # A full re-export hands every row over again under new change_seqs (ROWS+1..2*ROWS): read
    # again, it upserts to the same staging and quarantine; only the watermark moves on.
    again = pseudonymize(IMM, str(raw), settings.extracts_url, ring, mode="full")
    assert (again.written, again.first_seq, again.last_seq) == (ROWS, ROWS + 1, 2 * ROWS)
    out = _ingest(settings, "ingest_immunization/full", ring)
    assert out == {**out, "read": ROWS, "loaded": ROWS - 3, "quarantined": 3, "deleted": 0, "watermark": 2 * ROWS}
    assert _state(settings.warehouse_url) == {**reference, "watermarks": [("immunization", 2 * ROWS)]}


# -- the keyring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["missing", "directory", "not_json", "mode_0644"])
def test_bad_keyring_is_a_clear_error_and_writes_nothing(fault, tmp_path, ring, capsys):
    path = tmp_path / "keyring.json"
    if fault == "directory":  # unreadable as a file (root reads any mode, so no chmod 000)
        path.mkdir(mode=0o700)
    elif fault == "not_json":
        path.write_text("{not json", encoding="utf-8")
        path.chmod(0o600)
    elif fault == "mode_0644":
        ring.save(path)
        path.chmod(0o644)
    expected = {"missing": "not found", "directory": "cannot be read", "not_json": "cannot be read",
                "mode_0644": "chmod 600"}[fault]
    with pytest.raises(KeyRingError, match=expected) as exc:
        KeyRing.load(path)
    assert "renkei keys init" in str(exc.value) or "chmod" in str(exc.value) or "backup" in str(exc.value)

    extracts = tmp_path / "ex.db"
    code = main(["pseudonymize", "--source", "immunization", "--from", str(_raw(tmp_path / "imm.csv")),
                 "--to", f"sqlite:///{extracts}", "--keyring", str(path), "--no-emit"])
    assert code == 2 and expected in capsys.readouterr().err
    assert not extracts.exists()  # the adapter never started


def test_load_with_the_wrong_keyring_refuses_and_writes_nothing(tmp_path, ring):
    settings = _settings(f"sqlite:///{tmp_path / 'wh.db'}", tmp_path)
    pseudonymize(IMM, str(_raw(tmp_path / "imm.csv")), settings.extracts_url, ring)
    extract(IMM, "r", settings)
    validate(IMM, "r", settings)
    with pytest.raises(KeyRingError, match="do not open under dept:health_bureau") as exc:
        load(IMM, "r", KeyRing.generate(), settings)
    assert "IM00" not in str(exc.value) and "1000000" not in str(exc.value)
    _assert_untouched(settings.warehouse_url)
    load(IMM, "r", ring, settings)  # the right keyring then loads the same batch
    assert _state(settings.warehouse_url)["landing"] == 0


def test_a_warehouse_restart_that_empties_landing_is_refused_not_loaded(pg_factory, tmp_path, ring, reference):
    """Landing is UNLOGGED on PostgreSQL, so a server crash empties it. Validating that partial
    batch must fail (loading it would advance the watermark past rows never loaded); the extract
    step re-run under the same run id makes it whole again."""
    from renkei.errors import SourceError

    settings = _settings(pg_factory(), tmp_path)
    pseudonymize(IMM, str(_raw(tmp_path / "imm.csv")), settings.extracts_url, ring)
    extract(IMM, "r", settings)
    eng = engine(settings.warehouse_url)
    with eng.begin() as conn:
        assert conn.execute(sa.text("SELECT relpersistence FROM pg_class WHERE relname = 'landing_immunization'")).scalar() == "u"
        conn.execute(sa.text("TRUNCATE landing_immunization"))  # what crash recovery does to an unlogged table
    eng.dispose()
    with pytest.raises(SourceError, match="re-run the extract step"):
        validate(IMM, "r", settings)
    assert _state(settings.warehouse_url)["watermarks"] == []
    extract(IMM, "r", settings)
    validate(IMM, "r", settings)
    assert load(IMM, "r", ring, settings)["read"] == ROWS
    assert _state(settings.warehouse_url) == reference
