"""link_residents and proactive_services side by side on PostgreSQL (issue #13).

1. A full link build empties the mart tables with TRUNCATE, which is not MVCC-safe: a
   transaction whose REPEATABLE READ snapshot was taken before the build committed, and that
   reads the mart after it, finds the tables *empty* (PostgreSQL docs, TRUNCATE). Services read
   in such snapshots: the plan then refused with "the warehouse restarted … run link_residents",
   and an evaluate part drafted nothing and withdrew every open notice it had. Services now lock
   the mart tables (ACCESS SHARE, which the rebuild's ACCESS EXCLUSIVE excludes) before their
   snapshot: a read sees the whole old mart (the rebuild waits for it) or the whole new one.
2. A link build whose subject-key table had been refilled meanwhile by a services plan (both
   find it empty on a young warehouse) reflected the table's keys in its old snapshot, where
   the catalog queries name the unique constraint twice (the dropped row and the new one): the
   second ``DROP CONSTRAINT`` failed with ``constraint "subjects_subject_key_key" of relation
   "subjects" does not exist``. Keys are now dropped once each, IF EXISTS, and re-created under
   their known names in the same transaction.

Each race is made deterministic with a gate: a trigger on a table the link writes at a chosen
point waits for an advisory lock the test holds, so the link stops there with its work
uncommitted; the test lets it go once the other party is where the race needs it. Run against
the previous bulk.py, mart.py, subjects.py and outbox.py, the evaluation test failed with 91 of
91 open notices withdrawn, the plan test with the "warehouse restarted … run link_residents"
error and the subject-key test with the issue's ``UndefinedObject``; the last test (keys left
missing) passed before too — PostgreSQL's DDL is transactional, so a crash cannot leave that
state, and it guards the IF EXISTS / known-name rebuild.
"""

from __future__ import annotations

import threading
import time
from datetime import date

import pytest
import sqlalchemy as sa

from renkei.config import ingest_sources
from renkei.keys.adapter import pseudonymize, raw_location
from renkei.linkage.mart import build_mart
from renkei.outputs import outbox
from renkei.outputs.outbox import evaluate_part, plan_services, run_services
from renkei.warehouse import engine

AS_OF = date(2025, 6, 1)
RESIDENTS = 400
GATE = 913013  # the advisory lock key of the gate


def _admin(url: str) -> sa.Engine:
    return sa.create_engine(url.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")


def _copy(pg_factory, template: str) -> str:
    """A new database made from ``template`` (which must have no connections)."""
    url = pg_factory()
    admin = _admin(url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{url.rsplit("/", 1)[1]}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{url.rsplit("/", 1)[1]}" TEMPLATE "{template.rsplit("/", 1)[1]}"'))
    admin.dispose()
    return url


def _quiesce(url: str) -> None:
    admin = _admin(url)
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"),
                     {"n": url.rsplit("/", 1)[1]})
    admin.dispose()


@pytest.fixture(scope="module")
def city(pg_factory, tmp_path_factory):
    """Two template warehouses of a small city: ``ingested`` (staged, never linked) and
    ``served`` (after a first link and services run), with that run's counts."""
    from renkei import ingest
    from renkei.keys.ring import KeyRing
    from renkei.settings import Settings
    from renkei.synth import generate

    base = tmp_path_factory.mktemp("link-concurrency")
    generate(RESIDENTS, 13, AS_OF, base / "raw", fmt="sqlite", defect_rate=0.01)
    ring = KeyRing.generate()
    extracts_url = f"sqlite:///{base / 'extracts.db'}"
    for src in ingest_sources():
        pseudonymize(src, raw_location(base / "raw", src.name), extracts_url, ring)
    url = pg_factory()
    env = Settings.from_env()
    settings = Settings(warehouse_url=url, extracts_url=extracts_url, config_dir=env.config_dir,
                        expectations_dir=env.expectations_dir)
    for src in ingest_sources():
        ingest.extract(src, "ingest/first", settings)
        ingest.validate(src, "ingest/first", settings)
        ingest.load(src, "ingest/first", ring, settings)
    _quiesce(url)
    ingested = _copy(pg_factory, url)
    link = build_mart(url, AS_OF, "link/first")
    services = run_services(url, AS_OF, "services/first")
    _quiesce(url)
    assert link["residents"] > 0 and services["open"] > 0
    return {"ingested": ingested, "served": url, "link": link, "services": services, "pg_factory": pg_factory}


class Gate:
    """Stops the link at the first write of ``table`` (a statement trigger waiting for an
    advisory lock the test holds) until :meth:`open`."""

    def __init__(self, url: str, table: str, event: str) -> None:
        self.db = url.rsplit("/", 1)[1]
        self.eng = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        self.conn = self.eng.connect()
        self.conn.execute(sa.text(f"""
            CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_advisory_xact_lock_shared({GATE}); RETURN NULL; END $$"""))
        self.conn.execute(sa.text(
            f"CREATE TRIGGER test_gate BEFORE {event} ON {table} FOR EACH STATEMENT EXECUTE FUNCTION test_gate()"))
        self.conn.execute(sa.text(f"SELECT pg_advisory_lock({GATE})"))

    def _waiting(self, locktype: str) -> int:
        with self.eng.connect() as conn:  # any thread may wait; the gate's own session holds the lock
            return conn.execute(sa.text(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE d.datname = :db AND l.locktype = :t AND NOT l.granted"), {"db": self.db, "t": locktype}).scalar_one()

    def wait(self, locktype: str, what: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not self._waiting(locktype):
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.05)

    def link_stopped(self) -> None:
        self.wait("advisory", "the link to reach the gate")

    def reader_blocked(self) -> None:
        self.wait("relation", "the services read to wait for a table lock")

    def open(self) -> None:
        self.conn.execute(sa.text(f"SELECT pg_advisory_unlock({GATE})"))  # the trigger passes from now on

    def close(self) -> None:
        self.conn.close()
        self.eng.dispose()


class Run(threading.Thread):
    def __init__(self, fn, *args, **kwargs) -> None:
        super().__init__(daemon=True)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.result, self.error = None, None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def outcome(self, timeout: float = 180):
        self.join(timeout)
        assert not self.is_alive(), f"{self.fn.__name__} did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def _count(url: str, sql: str) -> int:
    eng = engine(url)
    with eng.connect() as conn:
        n = conn.execute(sa.text(sql)).scalar_one()
    eng.dispose()
    return n


def test_an_evaluation_during_a_full_rebuild_sees_the_whole_mart(city):
    """An evaluate part whose transaction starts while a full rebuild of the same date is
    between its TRUNCATE and its commit must evaluate a whole mart: the same open notices, no
    withdrawal. (Before: it read the truncated tables in its older snapshot as empty, drafted
    nothing and withdrew every open notice as not_in_registry.)"""
    url = _copy(city["pg_factory"], city["served"])
    plan = plan_services(url, AS_OF, "services/during-rebuild", parts=1, full=True)
    gate = Gate(url, "link_builds", "INSERT")  # the link's last write: the mart is refilled, not committed
    try:
        link = Run(build_mart, url, AS_OF, "link/rebuild", full=True)
        link.start()
        gate.link_stopped()
        part = Run(evaluate_part, url, plan, 0)
        part.start()
        gate.reader_blocked()
        gate.open()
        rebuilt, counts = link.outcome(), part.outcome()
    finally:
        gate.close()
    assert rebuilt["mode"] == "full" and rebuilt["residents"] == city["link"]["residents"]
    assert (counts["withdrawn"], counts["superseded"], counts["new"]) == (0, 0, 0), counts
    assert counts["open"] == city["services"]["open"]
    assert _count(url, "SELECT count(*) FROM notice_events") == 0


def test_a_plan_during_a_full_rebuild_does_not_find_the_mart_lost(city, monkeypatch):
    """The services plan's read transaction starts while a full rebuild is between its
    TRUNCATE and its commit (its subject-key step committed just before the rebuild began). It must
    plan over the whole new mart. (Before: its snapshot predated the commit, the truncated mart
    looked empty and the plan failed with "the warehouse restarted … run link_residents".)"""
    url = _copy(city["pg_factory"], city["served"])
    gate = Gate(url, "link_builds", "INSERT")
    link = Run(build_mart, url, AS_OF, "link/rebuild", full=True)
    real = outbox.snapshot_options

    def rebuild_first(eng):  # the plan's subject keys are committed; its read transaction comes next
        link.start()
        gate.link_stopped()
        return real(eng)

    monkeypatch.setattr(outbox, "snapshot_options", rebuild_first)
    try:
        plan = Run(plan_services, url, AS_OF, "services/plan-during-rebuild")
        plan.start()
        gate.link_stopped()
        gate.reader_blocked()
        gate.open()
        rebuilt, planned = link.outcome(), plan.outcome()
    finally:
        gate.close()
    assert planned["link_seq"] == rebuilt["build_seq"]
    assert planned["mode"] == "full" and planned["residents_touched"] == rebuilt["residents"] == city["link"]["residents"]


def _keys(url: str, table: str) -> list[tuple[str, str]]:
    return sorted(map(tuple, _rows(url, (
        "SELECT conname, contype FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'u')"), t=table)))


def _rows(url: str, sql: str, **params) -> list:
    eng = engine(url)
    with eng.connect() as conn:
        rows = conn.execute(sa.text(sql), params).all()
    eng.dispose()
    return rows


def test_a_first_link_after_a_plan_refilled_the_subject_keys(city):
    """On a warehouse never linked, a link build takes its snapshot; a services plan then finds
    ``subjects`` empty and refills it (no residents yet: dropping and re-adding its keys), and
    commits; the link goes on and refills ``subjects`` too. (Before: its reflection, in the old
    snapshot, named subjects_subject_key_key twice and the second DROP failed with
    'constraint "subjects_subject_key_key" of relation "subjects" does not exist'.)"""
    url = _copy(city["pg_factory"], city["ingested"])
    gate = Gate(url, "mart_changes", "DELETE")  # a full build's first write, just before the refill
    try:
        link = Run(build_mart, url, AS_OF, "link/first")
        link.start()
        gate.link_stopped()
        early = plan_services(url, AS_OF, "services/early")  # its subject keys: refilled, committed
        assert early["residents_touched"] == 0
        gate.open()
        built = link.outcome()
    finally:
        gate.close()
    assert built["residents"] == city["link"]["residents"]
    assert _count(url, "SELECT count(*) FROM subjects") == built["residents"]
    assert _keys(url, "subjects") == [("subjects_pkey", "p"), ("subjects_subject_key_key", "u")]


def test_a_link_after_keys_were_left_missing(city):
    """A table left without its keys (as a crash between DROP and ADD would leave it, were DDL
    not transactional, or a hand repair) or with one under another name: the next full link
    builds them again under the known names."""
    url = _copy(city["pg_factory"], city["served"])
    eng = engine(url)
    with eng.begin() as conn:
        conn.execute(sa.text("ALTER TABLE mart_residents DROP CONSTRAINT mart_residents_pkey"))
        conn.execute(sa.text("ALTER TABLE mart_doses RENAME CONSTRAINT mart_doses_pkey TO mart_doses_pk_old"))
        conn.execute(sa.text("DROP INDEX ix_link_flags_erk"))
        conn.execute(sa.text("TRUNCATE subjects"))  # so the link refills it (new keys: a fresh warehouse's state)
        conn.execute(sa.text("ALTER TABLE subjects DROP CONSTRAINT subjects_subject_key_key"))
    eng.dispose()
    built = build_mart(url, AS_OF, "link/after-crash", full=True)
    assert built["residents"] == city["link"]["residents"]
    assert _keys(url, "mart_residents") == [("mart_residents_pkey", "p")]
    assert _keys(url, "mart_doses") == [("mart_doses_pkey", "p")]
    assert _keys(url, "subjects") == [("subjects_pkey", "p"), ("subjects_subject_key_key", "u")]
    assert _rows(url, "SELECT indexname FROM pg_indexes WHERE tablename = 'link_flags' AND indexname = 'ix_link_flags_erk'")
    assert _count(url, "SELECT count(*) FROM subjects") == built["residents"]


def test_services_between_a_late_registry_and_its_link_wait_without_failing(pg_factory, tmp_path):
    """A new city's sources arrive in any order (issue #13). The others are loaded and linked
    first (the mart is empty: no registry yet); the registry's load commits; services run before
    the link that takes it in. The empty mart is not a lost one (no build has linked a registry
    row yet): services plan nothing and do not fail. After the link, they draft the notices."""
    from renkei import ingest
    from renkei.keys.ring import KeyRing
    from renkei.settings import Settings
    from renkei.synth import generate

    generate(200, 17, AS_OF, tmp_path / "raw", fmt="sqlite", defect_rate=0.0)
    ring = KeyRing.generate()
    extracts_url = f"sqlite:///{tmp_path / 'extracts.db'}"
    sources = ingest_sources()
    for src in sources:
        pseudonymize(src, raw_location(tmp_path / "raw", src.name), extracts_url, ring)
    url = pg_factory()
    env = Settings.from_env()
    settings = Settings(warehouse_url=url, extracts_url=extracts_url, config_dir=env.config_dir,
                        expectations_dir=env.expectations_dir)

    def load(src) -> None:  # noqa: ANN001
        ingest.extract(src, f"ingest_{src.name}/1", settings)
        ingest.validate(src, f"ingest_{src.name}/1", settings)
        ingest.load(src, f"ingest_{src.name}/1", ring, settings)

    for src in sources:
        if src.name != "registry":
            load(src)
    assert build_mart(url, AS_OF, "link/1")["residents"] == 0
    run_services(url, AS_OF, "services/1")
    load(next(s for s in sources if s.name == "registry"))
    early = run_services(url, AS_OF, "services/2")  # before: "the mart is empty although staging holds residents"
    assert early["new"] == 0
    assert build_mart(url, AS_OF, "link/2")["residents"] == 200
    assert run_services(url, AS_OF, "services/3")["new"] > 0
