"""Least privilege: one database role and one Redis user per component, as data, and the SQL and
ACL commands that create them (docs/OPERATIONS.md, "Least privilege"; issue #14 item 3).

PostgreSQL (the warehouse server; roles are cluster-wide, grants per database):

- ``renkei_pipeline`` (Airflow workers, init): **owns** every table of the warehouse and of the
  extracts database. Tables are created by this role (init runs ``ensure_schema`` logged in as
  it, and adopts tables an older deployment created as the superuser), so a table the pipeline
  creates later is its own and no other role gets anything on it until a grant names it: a new
  table fails closed. ``ALTER DEFAULT PRIVILEGES FOR ROLE renkei_pipeline`` takes PUBLIC's
  EXECUTE off its future functions; every other grant below names its table.
- ``renkei_api`` (the api-server, the Renkei pages): SELECT on what the pages read; its only
  writes are INSERT on ``review_requests`` (a decision *request*; the apply_review_decisions
  Dag applies it with the chain key). No staging, mart, extracts or audit write.
- ``renkei_delivery`` (the delivery worker): SELECT on the notices, their lifecycle and the
  staging columns delivery reads (event titles, subscriptions); in the delivery database
  SELECT, INSERT, UPDATE on ``delivery_receipts`` (no DELETE: a receipt is never erased).
- ``renkei_dept_<department>`` (a department's export host) on the extracts database only:
  SELECT, INSERT, UPDATE on its own ``extract_<source>`` tables (UPDATE only because
  ``LOCK TABLE … IN EXCLUSIVE MODE``, the adapter's sequence lock, requires it), its own
  ``export_state_<source>`` tables, and on ``export_position`` the rows of its own sources only
  (row-level security). It cannot create tables (the pipeline creates every extract table first,
  so no department can squat another's name), nor read the warehouse.
- ``renkei_auditor``: SELECT on ``audit_log`` and ``audit_head``; nothing else.
- ``airflow_celery`` (metadata DB): the Celery result backend of the workers, the
  ``celery_taskmeta``/``celery_tasksetmeta`` tables only — workers get no metadata DB login.

Redis (the events bus), ACL users (Redis 7):

- ``renkei-dept-<department>``: XADD to ``renkei:changes:<source>`` of its own sources; nothing else.
- ``renkei-relay`` (Airflow workers): XADD/XTRIM on ``renkei:notices`` (MULTI/EXEC: the relay
  publishes a batch in one transaction) and XADD on the change streams (reconcile on the default
  queue announces its export).
- ``renkei-triggerer``: XREADGROUP/XACK/XGROUP CREATE on the change streams.
- ``renkei-reader-<name>`` (delivery, downstream consumers): XREADGROUP/XACK/XGROUP CREATE|SETID
  on ``renkei:notices``: it cannot add, trim or delete.

Every name takes a ``prefix`` (tests create uniquely named roles per run).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa

from renkei.config import Source, load_sources

# -- the roles, as data ------------------------------------------------------------------------

PIPELINE, API, DELIVERY, AUDITOR, CELERY = "pipeline", "api", "delivery", "auditor", "celery"
DEPT_ROLE, DEPT_USER, READER_USER = "renkei_dept_", "renkei-dept-", "renkei-reader-"
ROLE_NAMES = {PIPELINE: "renkei_pipeline", API: "renkei_api", DELIVERY: "renkei_delivery",
              AUDITOR: "renkei_auditor", CELERY: "airflow_celery"}
READERS = ("delivery", "downstream")  # Redis users that read the notices stream

# Table-level grants on the warehouse (the pipeline owns every table and needs none).
WAREHOUSE_GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    API: {  # renkei.ui.data and renkei.linkage.review (list_items, request_decision, list_requests)
        "ingest_runs": ("SELECT",), "watermarks": ("SELECT",), "quarantine": ("SELECT",),
        "notices": ("SELECT",), "notice_events": ("SELECT",), "review_queue": ("SELECT",),
        "review_requests": ("SELECT", "INSERT"),
        "link_builds": ("SELECT",),  # when a review item was first seen (renkei.ui.data.review_by_age)
        "renkei_schema": ("SELECT",),  # ensure_schema's record of the tables (no data): the pages skip its checks
    },
    DELIVERY: {  # renkei.delivery.deliver, renkei.outputs.lifecycle
        "notices": ("SELECT",), "notice_events": ("SELECT",), "notice_contacts": ("SELECT",),
    },
    AUDITOR: {"audit_log": ("SELECT",), "audit_head": ("SELECT",)},
}
# Sequences behind an INSERT a role makes: (table, serial column).
WAREHOUSE_SEQUENCES: dict[str, tuple[tuple[str, str], ...]] = {API: (("review_requests", "request_id"),)}
# Column-level SELECT on staging tables (source → columns): only the columns the code reads.
STAGING_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    DELIVERY: {"events": ("event_id", "title"),  # deliver.event_titles
               "subscriptions": ("erk", "topic", "ward_code", "opted_in_at", "opted_out_at")},  # optouts
}
DELIVERY_DB_GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    DELIVERY: {"delivery_receipts": ("SELECT", "INSERT", "UPDATE")},
    API: {"delivery_receipts": ("SELECT",)},  # the notice page's receipts (renkei.ui.data.explain)
}
CELERY_TABLES = {"celery_taskmeta": "task_id_sequence", "celery_tasksetmeta": "taskset_id_sequence"}

# Redis ACL rules (after ``reset``/password): commands and keys of each kind of user.
RELAY_COMMANDS = ("+xadd", "+xtrim", "+multi", "+exec", "+discard", "+ping")
TRIGGERER_COMMANDS = ("+xreadgroup", "+xack", "+xgroup|create", "+ping")
READER_COMMANDS = ("+xreadgroup", "+xack", "+xgroup|create", "+xgroup|setid", "+ping")
DEPT_COMMANDS = ("+xadd",)


@dataclass(frozen=True)
class Names:
    """Role and user names, with an optional prefix (unique names per test run)."""

    prefix: str = ""

    def role(self, kind: str) -> str:
        return self.prefix + ROLE_NAMES[kind]

    def dept_role(self, department: str) -> str:
        return f"{self.prefix}{DEPT_ROLE}{department}"

    def user(self, kind: str) -> str:
        return f"{self.prefix}renkei-{kind}"

    def dept_user(self, department: str) -> str:
        return f"{self.prefix}{DEPT_USER}{department}"

    def reader_user(self, name: str) -> str:
        return f"{self.prefix}{READER_USER}{name}"


@dataclass(frozen=True)
class Layout:
    """What the grants are about: the sources (by department) and the Redis keys."""

    sources: tuple[Source, ...]
    change_prefix: str = "renkei:changes:"
    notices_stream: str = "renkei:notices"
    readers: tuple[str, ...] = READERS
    names: Names = field(default_factory=Names)

    @classmethod
    def from_config(cls, names: Names | None = None, config_dir=None) -> "Layout":  # noqa: ANN001
        from renkei.events.channel import load_channel  # noqa: PLC0415
        from renkei.outputs.stream import load_notice_stream  # noqa: PLC0415

        return cls(sources=tuple(load_sources(config_dir).values()),
                   change_prefix=load_channel(config_dir, kind="redis_stream").stream_prefix,
                   notices_stream=load_notice_stream(config_dir, kind="redis_stream").stream,
                   names=names or Names())

    def departments(self) -> dict[str, list[Source]]:
        """department → its sources (a source with no department is the pipeline's own)."""
        out: dict[str, list[Source]] = {}
        for s in self.sources:
            if s.department:
                out.setdefault(s.department, []).append(s)
        return dict(sorted(out.items()))

    def by_name(self) -> dict[str, Source]:
        return {s.name: s for s in self.sources}


# -- SQL helpers -------------------------------------------------------------------------------

def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _table(name: str) -> str:
    return f"public.{ident(name)}"


def create_roles_sql(layout: Layout, passwords: Mapping[str, str] | None = None,
                     kinds: Iterable[str] = (PIPELINE, API, DELIVERY, AUDITOR)) -> list[str]:
    """Cluster-wide: create the login roles that do not exist yet (no superuser, no role or
    database creation, no replication, no RLS bypass); set the password of each role named in
    ``passwords`` (role name → password). A role without one cannot log in by password until
    the DBA sets it (``\\password``)."""
    passwords = passwords or {}
    n = layout.names
    roles = [n.role(k) for k in kinds] + [n.dept_role(d) for d in layout.departments()]
    out = []
    for role in roles:
        out.append(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {literal(role)}) "
                   f"THEN CREATE ROLE {ident(role)} LOGIN; END IF; END $$")
        pw = f" PASSWORD {literal(passwords[role])}" if passwords.get(role) else ""
        out.append(f"ALTER ROLE {ident(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                   f"NOBYPASSRLS NOINHERIT{pw}")
    return out


def _database_sql(database: str, owner: str, connect: Iterable[str]) -> list[str]:
    """Nobody but the named roles connects; only ``owner`` creates in (or adopts) schema public."""
    db = ident(database)
    out = [f"REVOKE ALL ON DATABASE {db} FROM PUBLIC",
           f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {ident(owner)}",
           "REVOKE ALL ON SCHEMA public FROM PUBLIC",
           f"GRANT USAGE, CREATE ON SCHEMA public TO {ident(owner)}"]
    for role in connect:
        out += [f"GRANT CONNECT ON DATABASE {db} TO {ident(role)}", f"GRANT USAGE ON SCHEMA public TO {ident(role)}"]
    return out


def adopt_sql(owner: str) -> list[str]:
    """Give ``owner`` the tables, sequences and views of schema public it does not own yet (a
    deployment whose schema the superuser created): run as a superuser."""
    return [f"""DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
             AND pg_get_userbyid(c.relowner) <> {literal(owner)}
             AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
  LOOP
    EXECUTE format('ALTER %s public.%I OWNER TO %I',
                   CASE r.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                   r.relname, {literal(owner)});
  END LOOP;
END $$"""]


def warehouse_sql(layout: Layout, database: str) -> list[str]:
    """Grants on the warehouse database (run as a superuser after ``ensure_schema`` ran as the
    pipeline role). Idempotent and converging: every other role's table privileges are revoked
    first, so a grant removed here is removed there."""
    n = layout.names
    owner = n.role(PIPELINE)
    others = [n.role(k) for k in (API, DELIVERY, AUDITOR)]
    out = _database_sql(database, owner, others) + adopt_sql(owner)
    out.append(f"ALTER DEFAULT PRIVILEGES FOR ROLE {ident(owner)} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC")
    who = ", ".join(ident(r) for r in others)
    out += [f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {who}",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {who}"]
    for kind, tables in WAREHOUSE_GRANTS.items():
        for table, privs in tables.items():
            out.append(f"GRANT {', '.join(privs)} ON {_table(table)} TO {ident(n.role(kind))}")
    for kind, serials in WAREHOUSE_SEQUENCES.items():
        for table, column in serials:
            out.append(f"DO $$ BEGIN EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', "
                       f"pg_get_serial_sequence({literal('public.' + ident(table))}, {literal(column)}), "
                       f"{literal(n.role(kind))}); END $$")
    from renkei.warehouse import staging_table  # noqa: PLC0415

    sources = layout.by_name()
    for kind, by_source in STAGING_COLUMNS.items():
        for source, columns in by_source.items():
            if source in sources and sources[source].ingest:
                name = staging_table(sources[source]).name
                cols = ", ".join(ident(c) for c in columns)
                out.append(f"GRANT SELECT ({cols}) ON {_table(name)} TO {ident(n.role(kind))}")
    return out


def extract_tables(sources: Iterable[Source]) -> sa.MetaData:
    """The extracts database's tables: each source's extract and export state, export_position."""
    from renkei.keys.adapter import state_tables  # noqa: PLC0415
    from renkei.warehouse import extract_table  # noqa: PLC0415

    md = sa.MetaData()
    for s in sources:
        extract_table(s, md)
        state_tables(s, md)
    return md


def ensure_extract_tables(eng: sa.Engine, layout: Layout) -> None:
    """Create every extract and export-state table (run as the pipeline role, their owner), so
    a department never needs CREATE."""
    extract_tables(layout.sources).create_all(eng)


def extracts_sql(layout: Layout, database: str) -> list[str]:
    """Grants on the extracts database (run as a superuser after :func:`ensure_extract_tables`)."""
    n = layout.names
    owner = n.role(PIPELINE)
    depts = layout.departments()
    roles = [n.dept_role(d) for d in depts]
    out = _database_sql(database, owner, roles) + adopt_sql(owner)
    out.append(f"ALTER DEFAULT PRIVILEGES FOR ROLE {ident(owner)} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC")
    if roles:
        who = ", ".join(ident(r) for r in roles)
        out += [f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {who}",
                f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {who}"]
    out.append(f"ALTER TABLE {_table('export_position')} ENABLE ROW LEVEL SECURITY")
    for dept, sources in depts.items():
        role = ident(n.dept_role(dept))
        for s in sources:
            out.append(f"GRANT SELECT, INSERT, UPDATE ON {_table('extract_' + s.name)} TO {role}")
            out.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {_table('export_state_' + s.name)} TO {role}")
        own = ", ".join(literal(s.name) for s in sources)
        out.append(f"GRANT SELECT, INSERT, UPDATE ON {_table('export_position')} TO {role}")
        policy = ident(n.prefix + "dept_" + dept)
        out.append(f"DROP POLICY IF EXISTS {policy} ON {_table('export_position')}")
        out.append(f"CREATE POLICY {policy} ON {_table('export_position')} TO {role} "
                   f"USING (source IN ({own})) WITH CHECK (source IN ({own}))")
    return out


def delivery_sql(layout: Layout, database: str) -> list[str]:
    """Grants on a PostgreSQL delivery database (RENKEI_DELIVERY_URL), run as a superuser after
    ``renkei.delivery.receipts.ensure_receipts`` created ``delivery_receipts`` as that superuser:
    the delivery role writes receipts but cannot delete them."""
    n = layout.names
    roles = [n.role(k) for k in DELIVERY_DB_GRANTS]
    db = ident(database)
    out = [f"REVOKE ALL ON DATABASE {db} FROM PUBLIC", "REVOKE ALL ON SCHEMA public FROM PUBLIC"]
    for role in roles:
        out += [f"GRANT CONNECT ON DATABASE {db} TO {ident(role)}", f"GRANT USAGE ON SCHEMA public TO {ident(role)}"]
    out.append(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {', '.join(ident(r) for r in roles)}")
    for kind, tables in DELIVERY_DB_GRANTS.items():
        for table, privs in tables.items():
            out.append(f"GRANT {', '.join(privs)} ON {_table(table)} TO {ident(n.role(kind))}")
    return out


def metadata_sql(layout: Layout, database: str) -> list[str]:
    """The Celery result backend's role on the Airflow metadata DB (run as its owner after the
    tables exist, see :func:`ensure_celery_tables`): the workers' only metadata-DB login."""
    role = ident(layout.names.role(CELERY))
    out = [f"GRANT CONNECT ON DATABASE {ident(database)} TO {role}", f"GRANT USAGE ON SCHEMA public TO {role}"]
    for table, seq in CELERY_TABLES.items():
        out.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {_table(table)} TO {role}")
        out.append(f"GRANT USAGE, SELECT, UPDATE ON SEQUENCE {_table(seq)} TO {role}")
    return out


def ensure_celery_tables(eng: sa.Engine) -> None:
    """Create Celery's result tables (needs celery: the image's Celery provider)."""
    from celery.backends.database.models import ResultModelBase  # noqa: PLC0415

    ResultModelBase.metadata.create_all(eng)


# -- Redis ACL ---------------------------------------------------------------------------------

def redis_rules(layout: Layout) -> dict[str, list[str]]:
    """ACL rules per Redis user (without ``reset`` and password): Redis 7 syntax."""
    n = layout.names
    changes = f"~{layout.change_prefix}*"
    notices = f"~{layout.notices_stream}"
    base = ["resetkeys", "resetchannels", "-@all"]
    rules = {
        n.user("relay"): [*base, notices, *RELAY_COMMANDS, f"({changes} +xadd)"],
        n.user("triggerer"): [*base, changes, *TRIGGERER_COMMANDS],
    }
    for reader in layout.readers:
        rules[n.reader_user(reader)] = [*base, notices, *READER_COMMANDS]
    for dept, sources in layout.departments().items():
        rules[n.dept_user(dept)] = [*base, *(f"~{layout.change_prefix}{s.name}" for s in sources), *DEPT_COMMANDS]
    return rules


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def acl_setuser(layout: Layout, passwords: Mapping[str, str] | None = None) -> list[list[str]]:
    """``ACL SETUSER`` argument lists (``reset`` first: re-applying converges). A user with a
    password gets its SHA-256 (``#…``, the password itself never reaches Redis); one without is
    left with no password, so nobody can log in as it until one is set."""
    passwords = passwords or {}
    out = []
    for user, rules in redis_rules(layout).items():
        pw = [f"#{password_hash(passwords[user])}"] if passwords.get(user) else []
        out.append(["ACL", "SETUSER", user, "reset", "on", *pw, *rules])
    return out


def aclfile_lines(layout: Layout, passwords: Mapping[str, str], users: Iterable[str] | None = None) -> list[str]:
    """``user …`` lines of a Redis aclfile (hashed passwords) for ``users`` (default: all)."""
    rules = redis_rules(layout)
    wanted = list(rules) if users is None else list(users)
    out = []
    for user in wanted:
        pw = f" #{password_hash(passwords[user])}" if passwords.get(user) else ""
        out.append(f"user {user} on{pw} {' '.join(rules[user])}")
    return out


def new_password() -> str:
    """A URL-safe password (hex), as .env.example asks."""
    return secrets.token_hex(24)


# -- applying it (airflow-init) ----------------------------------------------------------------

def _run(url: str, statements: Iterable[str]) -> None:
    eng = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn, conn.begin():
            for stmt in statements:
                conn.exec_driver_sql(stmt.replace("%", "%%"))
    finally:
        eng.dispose()


def _with_user(url: str, user: str, password: str | None) -> str:
    u = sa.engine.make_url(url).set(username=user, password=password)
    return u.render_as_string(hide_password=False)


def ensure_database(admin_url: str, database: str) -> None:
    eng = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).scalar():
                conn.exec_driver_sql(f"CREATE DATABASE {ident(database)}")
    finally:
        eng.dispose()


def apply_postgres(admin_url: str, warehouse_db: str, extracts_db: str, passwords: Mapping[str, str],
                   layout: Layout | None = None, delivery_db: str | None = None) -> None:
    """Everything, in order: roles (``passwords``: role name → password; the pipeline's is
    required, it creates the schema), the warehouse schema created *as the pipeline role*, the
    extract tables likewise, then the grants. ``admin_url``: a superuser on the server."""
    from renkei.warehouse import engine, ensure_schema  # noqa: PLC0415

    layout = layout or Layout.from_config()
    n = layout.names
    admin = sa.engine.make_url(admin_url)
    _run(admin_url, create_roles_sql(layout, passwords))
    for db in (warehouse_db, extracts_db, *([delivery_db] if delivery_db else [])):
        ensure_database(admin_url, db)
    pipeline = passwords[n.role(PIPELINE)]
    # the owner must be able to connect before the grants: adopt first, then create as the pipeline
    for db in (warehouse_db, extracts_db):
        db_admin = admin.set(database=db).render_as_string(hide_password=False)
        _run(db_admin, [f"GRANT CONNECT, TEMPORARY ON DATABASE {ident(db)} TO {ident(n.role(PIPELINE))}",
                        f"GRANT USAGE, CREATE ON SCHEMA public TO {ident(n.role(PIPELINE))}",
                        *adopt_sql(n.role(PIPELINE))])
    wh = engine(_with_user(admin.set(database=warehouse_db).render_as_string(hide_password=False),
                           n.role(PIPELINE), pipeline))
    try:
        ensure_schema(wh)
        _ensure_review_requests(wh)
    finally:
        wh.dispose()
    ex = engine(_with_user(admin.set(database=extracts_db).render_as_string(hide_password=False),
                           n.role(PIPELINE), pipeline))
    try:
        ensure_extract_tables(ex, layout)
    finally:
        ex.dispose()
    _run(admin.set(database=warehouse_db).render_as_string(hide_password=False), warehouse_sql(layout, warehouse_db))
    _run(admin.set(database=extracts_db).render_as_string(hide_password=False), extracts_sql(layout, extracts_db))
    if delivery_db:
        from renkei.delivery.receipts import ensure_receipts  # noqa: PLC0415

        url = admin.set(database=delivery_db).render_as_string(hide_password=False)
        eng = sa.create_engine(url)
        try:
            ensure_receipts(eng)
        finally:
            eng.dispose()
        _run(url, delivery_sql(layout, delivery_db))


def _ensure_review_requests(eng: sa.Engine) -> None:
    """The review-request table is created on first use by either side; create it here, as the
    pipeline, so the api role never owns (or needs CREATE for) it."""
    try:
        from renkei.linkage.review import requests_metadata  # noqa: PLC0415
    except ImportError:
        return
    requests_metadata.create_all(eng)


def apply_metadata(admin_url: str, password: str, layout: Layout | None = None) -> None:
    """The Celery result backend role on the metadata DB (``admin_url``: its owner)."""
    layout = layout or Layout(sources=())
    db = sa.engine.make_url(admin_url).database
    _run(admin_url, create_roles_sql(layout, {layout.names.role(CELERY): password}, kinds=(CELERY,)))
    eng = sa.create_engine(admin_url)
    try:
        ensure_celery_tables(eng)
    finally:
        eng.dispose()
    _run(admin_url, metadata_sql(layout, db))
