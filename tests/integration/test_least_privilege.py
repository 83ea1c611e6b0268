"""Least privilege (renkei.roles, issue #14 item 3), proven on this machine's PostgreSQL and Redis.

Each role is created under a unique name for this run, the real schema is created *as the
pipeline role* (renkei.roles.apply_postgres, as airflow-init does), and every limit is shown as
DENIED by the server (SQLSTATE 42501 / Redis NOPERM), next to the role doing its own job with
Renkei's own code. Roles, users, databases and keys are dropped afterwards.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import date, datetime, timezone

import pytest
import sqlalchemy as sa

from renkei import roles
from renkei.config import load_sources

pytestmark = pytest.mark.postgres

PG_BASE = "postgresql+psycopg://{user}@127.0.0.1:5432/{db}"


@pytest.fixture(scope="module")
def stack(pg_factory, tmp_path_factory):
    import renkei.linkage.review  # noqa: F401 - its tables belong to the schema too
    from renkei.keys.ring import KeyRing

    prefix = f"t{uuid.uuid4().hex[:8]}_"
    layout = dataclasses.replace(roles.Layout.from_config(), names=roles.Names(prefix))
    n = layout.names
    dbs = {k: sa.engine.make_url(pg_factory()).database for k in ("warehouse", "extracts", "delivery")}
    admin_url = sa.engine.make_url(pg_factory()).render_as_string(hide_password=False)
    kinds = (roles.PIPELINE, roles.API, roles.DELIVERY, roles.AUDITOR)
    all_roles = [n.role(k) for k in kinds] + [n.dept_role(d) for d in layout.departments()]
    passwords = {r: roles.new_password() for r in all_roles}
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        roles.apply_postgres(admin_url, dbs["warehouse"], dbs["extracts"], passwords, layout, delivery_db=dbs["delivery"])
        s = _Stack(layout, dbs, admin_url, KeyRing.generate(), tmp_path_factory.mktemp("least_privilege"))
        s.seed()
        yield s
    finally:
        with admin.connect() as conn:
            for db in dbs.values():
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            for role in all_roles:
                conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


@dataclasses.dataclass
class _Stack:
    layout: roles.Layout
    dbs: dict
    admin_url: str
    ring: object
    tmp: object

    def url(self, role: str, db: str) -> str:
        return PG_BASE.format(user=role, db=self.dbs[db])

    def role(self, kind: str) -> str:
        return self.layout.names.role(kind)

    def dept(self, department: str) -> str:
        return self.layout.names.dept_role(department)

    def seed(self) -> None:
        """As the pipeline: one notice with a lifecycle event, a review item, an audit entry,
        staging rows delivery reads."""
        from renkei import warehouse as wh

        now = "2025-04-01T09:00:00+09:00"
        srcs = load_sources()
        eng = wh.engine(self.url(self.role(roles.PIPELINE), "warehouse"))
        with eng.begin() as conn:
            conn.execute(sa.insert(wh.notices).values(
                notice_id="n1", service="immunization", kind="due", erk="v1.erk1", rule_id="mr1", rule_version=1,
                subject="MR", dose_number=1, window_start=date(2025, 4, 1), window_end=date(2025, 6, 30),
                evaluated_on=date(2025, 4, 1), facts="{}", created_run_id="r1", created_at=now))
            conn.execute(sa.insert(wh.notice_events).values(notice_id="n1", state="withdrawn", reason="basis_gone",
                                                            run_id="r2", at=now))
            conn.execute(sa.insert(wh.review_queue).values(
                item_id="i1", source="immunization", record_key="rec1", reason="not_in_registry", erk="v1.erk1",
                severity="hold", state="pending", active=True, first_seen_run="r1"))
            conn.execute(sa.insert(wh.audit_log).values(seq=1, at=now, kind="linkage_run", payload="{}",
                                                        prev_hash="0", entry_hash="chain:v1.x"))
            conn.execute(sa.insert(wh.audit_head).values(id=1, seq=1, entry_hash="chain:v1.x", head_mac="chain:v1.y"))
            ev = wh.staging_table(srcs["events"])
            conn.execute(sa.insert(ev).values(event_id="e1", title="MR clinic", row_hash="h", loaded_run_id="r1"))
        eng.dispose()


def _denied(url: str, sql: str, params: dict | None = None) -> str:
    """Run ``sql`` as the URL's role: it must fail with insufficient_privilege (42501)."""
    import psycopg

    eng = sa.create_engine(url)
    try:
        with pytest.raises(sa.exc.DBAPIError) as err, eng.begin() as conn:
            conn.execute(sa.text(sql), params or {})
        assert isinstance(err.value.orig, psycopg.errors.InsufficientPrivilege), err.value
        return str(err.value.orig)
    finally:
        eng.dispose()


def _connect_denied(url: str) -> None:
    eng = sa.create_engine(url)
    try:
        with pytest.raises(sa.exc.OperationalError, match="permission denied for database"):
            eng.connect().close()
    finally:
        eng.dispose()


def _rows(url: str, sql: str) -> list:
    eng = sa.create_engine(url)
    try:
        with eng.begin() as conn:
            result = conn.execute(sa.text(sql))
            return list(result) if result.returns_rows else []
    finally:
        eng.dispose()


# -- ownership ---------------------------------------------------------------------------------

def test_the_pipeline_owns_every_table_and_a_later_table_fails_closed(stack):
    pipeline = stack.role(roles.PIPELINE)
    for db in ("warehouse", "extracts"):
        owners = {r.tableowner for r in _rows(stack.admin_url.rsplit("/", 1)[0] + "/" + stack.dbs[db],
                                              "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
        assert owners == {pipeline}, (db, owners)
    url = stack.url(pipeline, "warehouse")
    _rows(url, "CREATE TABLE lp_later (x int)")
    try:
        for kind in (roles.API, roles.DELIVERY, roles.AUDITOR):
            _denied(stack.url(stack.role(kind), "warehouse"), "SELECT * FROM lp_later")
    finally:
        _rows(url, "DROP TABLE lp_later")


def test_a_superuser_made_table_is_adopted_by_the_pipeline(stack):
    admin_wh = stack.admin_url.rsplit("/", 1)[0] + "/" + stack.dbs["warehouse"]
    _rows(admin_wh, "CREATE TABLE lp_legacy (id serial primary key)")
    _rows(admin_wh, ";\n".join(roles.adopt_sql(stack.role(roles.PIPELINE))))
    owner = _rows(admin_wh, "SELECT tableowner FROM pg_tables WHERE tablename = 'lp_legacy'")[0][0]
    assert owner == stack.role(roles.PIPELINE)
    _rows(stack.url(stack.role(roles.PIPELINE), "warehouse"), "DROP TABLE lp_legacy")


# -- the api-server ----------------------------------------------------------------------------

def test_api_reads_the_pages_and_requests_decisions(stack, monkeypatch):
    from renkei.ui import data

    url = stack.url(stack.role(roles.API), "warehouse")
    monkeypatch.setenv("RENKEI_WAREHOUSE_URL", url)
    monkeypatch.delenv("RENKEI_DELIVERY_URL", raising=False)
    monkeypatch.delenv("RENKEI_HOME", raising=False)
    assert data.notices_page(None, None, 1)["total"] == 1
    data.run_report()
    data.quarantine_page(None, None, 1)
    assert [i["item_id"] for i in data.review_items(include_resolved=True)] == ["i1"]
    req = data.request_decision("i1", "approved", "alice", "checked the paper record")
    assert req["state"] == "pending"
    assert data.explain("n1")["state"] == "withdrawn"
    assert set(data.trends()) >= {"runs", "notices", "review"}  # the trends page and the page charts
    # the request changed nothing in the queue
    assert _rows(url, "SELECT state FROM review_queue")[0][0] == "pending"


@pytest.mark.parametrize("sql", [
    "UPDATE notices SET kind = 'x'",
    "DELETE FROM notices",
    "INSERT INTO notice_events (notice_id, state, reason, run_id, at) VALUES ('n1', 'reinstated', 'x', 'r', 'now')",
    "UPDATE review_queue SET state = 'approved'",  # decisions are applied by the Dag, with the chain key
    "UPDATE review_requests SET state = 'applied'",
    "SELECT * FROM staging_immunization",
    "UPDATE staging_immunization SET row_hash = 'x'",
    "SELECT * FROM mart_residents",
    "SELECT * FROM subjects",
    "INSERT INTO audit_log (seq, at, kind, payload, prev_hash, entry_hash) VALUES (2, 'a', 'k', '{}', 'p', 'e')",
    "UPDATE audit_head SET seq = 0",
    "CREATE TABLE api_squat (x int)",
])
def test_api_denied(stack, sql):
    _denied(stack.url(stack.role(roles.API), "warehouse"), sql)


def test_api_cannot_reach_the_extracts(stack):
    _connect_denied(stack.url(stack.role(roles.API), "extracts"))


# -- delivery ----------------------------------------------------------------------------------

def test_delivery_reads_notices_and_writes_its_receipts(stack):
    from renkei.delivery import deliver, receipts
    from renkei.delivery.optouts import load_subscriptions
    from renkei.warehouse import engine

    wh = engine(stack.url(stack.role(roles.DELIVERY), "warehouse"))
    with wh.connect() as conn:
        assert [(x["notice_id"], x["state"]) for x in deliver.read_notices(conn)] == [("n1", "withdrawn")]
        assert deliver.event_titles(conn, {"e1"}) == {"e1": "MR clinic"}
        assert load_subscriptions(conn, {"v1.erk1"}) == {}
        assert deliver.contact_tokens(conn) == {}  # notice_contacts: what delivery opens with its contact key
    wh.dispose()
    dl = engine(stack.url(stack.role(roles.DELIVERY), "delivery"))
    with dl.begin() as conn:
        receipts.record(conn, "n1", receipts.SUPPRESSED, "withdrawn", None, datetime(2025, 4, 1, tzinfo=timezone.utc))
    with dl.connect() as conn:
        assert [r["status"] for r in receipts.receipts_of(conn, ["n1"])] == ["suppressed"]
    dl.dispose()


@pytest.mark.parametrize("db, sql", [
    ("warehouse", "UPDATE notices SET kind = 'x'"),
    ("warehouse", "UPDATE notice_events SET stream_id = 'x'"),
    ("warehouse", "INSERT INTO notice_contacts VALUES ('v1.x', 'v1.y', 'now')"),
    ("warehouse", "SELECT * FROM mart_residents"),
    ("warehouse", "SELECT * FROM staging_immunization"),
    ("warehouse", "SELECT venue FROM staging_events"),  # only the columns delivery reads
    ("warehouse", "SELECT * FROM review_queue"),
    ("warehouse", "SELECT * FROM audit_log"),
    ("delivery", "DELETE FROM delivery_receipts"),
    ("delivery", "DROP TABLE delivery_receipts"),
])
def test_delivery_denied(stack, db, sql):
    _denied(stack.url(stack.role(roles.DELIVERY), db), sql)


def test_delivery_cannot_reach_the_extracts(stack):
    _connect_denied(stack.url(stack.role(roles.DELIVERY), "extracts"))


# -- the auditor -------------------------------------------------------------------------------

def test_auditor_reads_the_trail_only(stack):
    url = stack.url(stack.role(roles.AUDITOR), "warehouse")
    assert _rows(url, "SELECT seq FROM audit_log")[0][0] == 1
    assert _rows(url, "SELECT seq FROM audit_head")[0][0] == 1
    for sql in ("UPDATE audit_log SET payload = '{}'", "DELETE FROM audit_log", "UPDATE audit_head SET seq = 2",
                "SELECT * FROM notices", "SELECT * FROM review_queue"):
        _denied(url, sql)


# -- departments -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw(stack):
    from renkei.synth import generate

    out = stack.tmp / "raw"
    generate(residents=100, seed=7, as_of=date(2025, 4, 1), out=out)
    return out


@pytest.fixture(scope="module")
def exported(stack, raw):
    from renkei.keys.adapter import pseudonymize, raw_location

    url = stack.url(stack.dept("health_bureau"), "extracts")
    src = load_sources()["immunization"]
    first = pseudonymize(src, raw_location(raw, "immunization"), url, stack.ring)
    again = pseudonymize(src, raw_location(raw, "immunization"), url, stack.ring)
    return first, again


def test_a_department_exports_its_own_source_with_the_real_adapter(stack, exported):
    first, again = exported
    url = stack.url(stack.dept("health_bureau"), "extracts")
    assert first.written > 0
    assert again.written == 0  # its own export state, read back and kept
    assert _rows(url, "SELECT source FROM export_position") == [("immunization",)]
    # the pipeline reads it (ingest)
    assert _rows(stack.url(stack.role(roles.PIPELINE), "extracts"),
                 "SELECT count(*) FROM extract_immunization")[0][0] == first.written


def test_a_department_cannot_write_another_departments_extract(stack, raw):
    from renkei.keys.adapter import pseudonymize, raw_location

    url = stack.url(stack.dept("nhi"), "extracts")
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        pseudonymize(load_sources()["immunization"], raw_location(raw, "immunization"), url, stack.ring)


@pytest.mark.parametrize("sql", [
    "INSERT INTO extract_immunization (change_seq, export_id, op, exported_at, source_row) VALUES (999, 1, 'delete', 'x', 0)",
    "SELECT * FROM extract_immunization",
    "LOCK TABLE extract_immunization IN EXCLUSIVE MODE",
    "DELETE FROM export_state_immunization",
    "DELETE FROM extract_nhi",  # its own extract is append-only for it
    "TRUNCATE extract_nhi",
    "DROP TABLE extract_nhi",
    "CREATE TABLE extract_squat (x int)",
    # export_position: the rows of its own sources only (row-level security)
    "INSERT INTO export_position (source, export_id, exported_at) VALUES ('immunization', 9, 'x')",
])
def test_department_denied_on_extracts(stack, sql):
    _denied(stack.url(stack.dept("nhi"), "extracts"), sql)


def test_a_department_does_not_see_other_departments_positions(stack, exported):
    nhi = stack.url(stack.dept("nhi"), "extracts")
    assert _rows(nhi, "SELECT source FROM export_position") == []
    # an upsert that lands on another department's row is refused
    _denied(nhi, "INSERT INTO export_position (source, export_id, exported_at) VALUES ('immunization', 1, 'x') "
                 "ON CONFLICT (source) DO UPDATE SET export_id = 0")
    eng = sa.create_engine(stack.url(stack.dept("nhi"), "extracts"))
    with eng.begin() as conn:  # an UPDATE of another's row matches nothing: it is invisible
        assert conn.execute(sa.text("UPDATE export_position SET export_id = 0 WHERE source = 'immunization'")).rowcount == 0
    eng.dispose()


def test_a_department_cannot_reach_the_warehouse(stack):
    _connect_denied(stack.url(stack.dept("nhi"), "warehouse"))


# -- Redis ACL ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bus(stack):
    redis = pytest.importorskip("redis")
    from tests.conftest import need_service

    need_service("Redis", "127.0.0.1", 6379)
    admin = redis.Redis(host="127.0.0.1", port=6379)
    prefix = stack.layout.names.prefix
    layout = dataclasses.replace(stack.layout, change_prefix=f"{prefix}renkei:changes:",
                                 notices_stream=f"{prefix}renkei:notices")
    users = list(roles.redis_rules(layout))
    passwords = {u: roles.new_password() for u in users}
    try:
        for cmd in roles.acl_setuser(layout, passwords):
            admin.execute_command(*cmd)

        def client(user: str):
            return redis.Redis(host="127.0.0.1", port=6379, username=user, password=passwords[user])

        yield layout, client, admin
    finally:
        admin.execute_command("ACL", "DELUSER", *users)
        keys = list(admin.scan_iter(match=f"{prefix}*"))
        if keys:
            admin.delete(*keys)
        admin.close()


def _noperm(call) -> None:
    import redis

    with pytest.raises(redis.exceptions.NoPermissionError):
        call()


def test_redis_password_is_stored_hashed(bus, stack):
    layout, _, admin = bus
    user = layout.names.user("relay")
    stored = admin.acl_getuser(user)["passwords"]
    assert len(stored) == 1 and all(len(p) == 64 for p in stored)


def test_a_department_publishes_only_to_its_own_change_stream(bus):
    from renkei.events.channel import ChangeEvent, ChannelConfig, publish

    layout, client, _ = bus
    user = layout.names.dept_user("health_bureau")
    password = client(user).connection_pool.connection_kwargs["password"]
    cfg = ChannelConfig(redis_url=f"redis://{user}:{password}@127.0.0.1:6379/0", stream_prefix=layout.change_prefix)
    assert publish(ChangeEvent(source="immunization", change_seq=3, row_count=3), cfg)
    r = client(user)
    own, other = layout.change_prefix + "immunization", layout.change_prefix + "nhi"
    _noperm(lambda: r.xadd(other, {"data": "forged"}))
    _noperm(lambda: r.xread({layout.notices_stream: "0"}))
    _noperm(lambda: r.xtrim(layout.notices_stream, maxlen=0))
    _noperm(lambda: r.xadd(layout.notices_stream, {"data": "forged"}))
    _noperm(lambda: r.xread({own: "0"}))  # it writes its stream, reads nothing
    _noperm(lambda: r.delete(own))
    _noperm(lambda: r.keys("*"))


def test_the_relay_publishes_notices_but_cannot_read_or_delete(bus):
    layout, client, _ = bus
    r = client(layout.names.user("relay"))
    pipe = r.pipeline(transaction=True)
    pipe.xadd(layout.notices_stream, {"data": "{}"})
    pipe.xadd(layout.notices_stream, {"data": "{}"})
    assert len(pipe.execute()) == 2
    r.xtrim(layout.notices_stream, maxlen=1000, approximate=True)
    r.xadd(layout.change_prefix + "events", {"data": "{}"})  # reconcile on the default queue
    _noperm(lambda: r.delete(layout.notices_stream))
    _noperm(lambda: r.xtrim(layout.change_prefix + "events", maxlen=0))
    _noperm(lambda: r.xread({layout.change_prefix + "events": "0"}))
    _noperm(lambda: r.xreadgroup("g", "c", {layout.notices_stream: ">"}))


def test_a_reader_reads_and_acks_notices_only(bus):
    layout, client, admin = bus
    admin.xadd(layout.notices_stream, {"data": "{}"})
    r = client(layout.names.reader_user("delivery"))
    r.xgroup_create(layout.notices_stream, "lp-delivery", id="0", mkstream=True)
    got = r.xreadgroup("lp-delivery", "c1", {layout.notices_stream: ">"}, count=10)
    ids = [i for _, entries in got for i, _ in entries]
    assert ids and r.xack(layout.notices_stream, "lp-delivery", *ids) == len(ids)
    _noperm(lambda: r.xadd(layout.notices_stream, {"data": "forged"}))
    _noperm(lambda: r.xtrim(layout.notices_stream, maxlen=0))
    _noperm(lambda: r.delete(layout.notices_stream))
    _noperm(lambda: r.xgroup_destroy(layout.notices_stream, "lp-delivery"))
    _noperm(lambda: r.xadd(layout.change_prefix + "nhi", {"data": "forged"}))
    _noperm(lambda: r.xreadgroup("lp-delivery", "c1", {layout.change_prefix + "nhi": ">"}))


def test_the_triggerer_consumes_change_streams_only(bus):
    layout, client, admin = bus
    key = layout.change_prefix + "nhi"
    admin.xadd(key, {"data": "{}"})
    r = client(layout.names.user("triggerer"))
    r.xgroup_create(key, "renkei-airflow", id="0", mkstream=True)
    got = r.xreadgroup("renkei-airflow", "triggerer", {key: ">"}, count=10)
    ids = [i for _, entries in got for i, _ in entries]
    assert ids and r.xack(key, "renkei-airflow", *ids) == len(ids)
    _noperm(lambda: r.xadd(key, {"data": "forged"}))
    _noperm(lambda: r.xtrim(key, maxlen=0))
    _noperm(lambda: r.xreadgroup("renkei-airflow", "t", {layout.notices_stream: ">"}))
    _noperm(lambda: r.xadd(layout.notices_stream, {"data": "forged"}))


def test_a_user_without_a_password_cannot_log_in(bus, stack):
    import redis

    layout, _, admin = bus
    user = layout.names.prefix + "renkei-nopw"
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", "~x", "+ping")
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=6379, username=user, password="guess").ping()
    finally:
        admin.execute_command("ACL", "DELUSER", user)
