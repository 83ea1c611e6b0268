"""The warehouse schema (SQLAlchemy Core) and the one dialect seam.

Tables by layer: ``landing_<source>`` (this run's pseudonymized extract rows, still under the
department pseudonym), ``staging_<source>`` (validated rows keyed by the ERK), ``quarantine``
(every rejected row with its reason), ``watermarks`` and ``ingest_runs`` (bookkeeping), the
linked mart (``mart_residents``, ``mart_doses``, ``linkage``, ``link_flags``) and the ``notices``
outbox. The same metadata runs on SQLite (embedded default) and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql.expression import FunctionElement

from renkei.config import SEALED_COLUMNS, Source, load_sources
from renkei.errors import SourceError

log = logging.getLogger(__name__)
metadata = sa.MetaData()
DATE_COLUMNS_TYPE = sa.Date

# Timestamps are kept as canonical ISO text in JST ('YYYY-MM-DDTHH:MM:SS+09:00'): string order
# is time order on every engine, and watermarks compare without timezone surprises.
TS = sa.String(32)


def _extract_type(source: Source, raw: str, as_landing: bool) -> sa.types.TypeEngine:
    t = source.columns[raw]
    if t == "int":
        return sa.Integer()
    if t == "date" and not as_landing:
        return sa.Date()
    if t in ("date", "timestamp"):
        return sa.String(32)
    return sa.Text()


def _extract_like_columns(source: Source, as_landing: bool) -> list[sa.Column]:
    cols = []
    for raw, t in source.columns.items():
        if t == "drop":
            continue
        cols.append(sa.Column(source.extract_column(raw), _extract_type(source, raw, as_landing)))
    return cols


# The change-capture columns every extract row carries (written by the export adapter, see
# renkei.keys.adapter): its position in the department's change stream, the export it belongs to,
# upsert or delete, and when the export ran (the department's clock, as canonical JST text).
UPSERT, DELETE = "upsert", "delete"
CHANGE_COLUMNS = ("change_seq", "export_id", "op", "exported_at")


def _change_columns() -> list[sa.Column]:
    return [
        sa.Column("change_seq", sa.Integer, primary_key=True, autoincrement=False),  # strictly increasing
        sa.Column("export_id", sa.Integer, nullable=False),
        sa.Column("op", sa.String(8), nullable=False),  # upsert | delete (a tombstone: the key only)
        sa.Column("exported_at", TS, nullable=False),
        sa.Column("source_row", sa.Integer, nullable=False),  # the row's position in its export's read
    ]


def extract_table(source: Source, md: sa.MetaData) -> sa.Table:
    """The department's outbound extract: an append-only change log written by the export
    adapter, one row per upsert or tombstone, read by ``change_seq`` (never by a data value)."""
    name = f"extract_{source.name}"
    if name in md.tables:
        return md.tables[name]
    return sa.Table(
        name, md,
        *_change_columns(),
        *_extract_like_columns(source, as_landing=True),
        sa.Column("parse_errors", sa.Text),
    )


def landing_table(source: Source) -> sa.Table:
    name = f"landing_{source.name}"
    if name in metadata.tables:
        return metadata.tables[name]
    table = sa.Table(
        name, metadata,
        sa.Column("run_id", sa.String(250), primary_key=True),
        *_change_columns(),
        *_extract_like_columns(source, as_landing=True),
        sa.Column("parse_errors", sa.Text),
        sa.Column("quarantine_reason", sa.Text),  # set by validation; NULL = passes
        # load finds each key's latest change of the batch; PostgreSQL hashes the anti-join, SQLite
        # would scan the batch once per row without it
        sa.Index(f"ix_{name}_key", "run_id", source.key, "change_seq").ddl_if(dialect="sqlite"),
    )
    # Landing holds a batch only between extract and load, and the extract can always be re-run:
    # no WAL for it on PostgreSQL (validate checks the batch is whole after a server crash).
    return _unlogged(table)


def _unlogged(table: sa.Table) -> sa.Table:
    """Create ``table`` UNLOGGED on PostgreSQL (no WAL; a server crash empties it)."""
    sa.event.listen(table, "after_create",
                    sa.DDL(f'ALTER TABLE "{table.name}" SET UNLOGGED').execute_if(dialect="postgresql"))
    return table


def staging_key(source: Source) -> str:
    """The staging primary key: the ERK where the department keyed rows by resident."""
    return "erk" if source.key == "dept_pseudonym" else source.key


def staging_table(source: Source) -> sa.Table:
    name = f"staging_{source.name}"
    if name in metadata.tables:
        return metadata.tables[name]
    cols: list[sa.Column] = []
    key = staging_key(source)
    for c in _extract_like_columns(source, as_landing=False):
        if c.name == "dept_pseudonym":
            cols.append(sa.Column("erk", sa.String(120), primary_key=(key == "erk"), index=(key != "erk")))
        elif c.name == "household_pseudonym":
            cols.append(sa.Column("household_key", sa.String(120), index=True))
        elif c.name in SEALED_COLUMNS:
            cols.append(sa.Column(SEALED_COLUMNS[c.name][1], sa.Text))  # the match digest
        else:
            if c.name == key:
                c = sa.Column(c.name, sa.String(120), primary_key=True)
            cols.append(c)
    cols += [sa.Column("row_hash", sa.String(64), nullable=False), sa.Column("loaded_run_id", sa.String(250), nullable=False)]
    return sa.Table(name, metadata, *cols)


quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("row_hash", sa.String(64), primary_key=True),  # digest of the pseudonymized row
    sa.Column("source_row", sa.Integer, nullable=False),
    sa.Column("record_key", sa.Text),  # non-personal natural key (record_id …) or pseudonym
    sa.Column("reason", sa.Text, nullable=False),  # "expectation:column; …"
    sa.Column("first_run_id", sa.String(250), nullable=False),
    sa.Column("last_run_id", sa.String(250), nullable=False),
    sa.Column("quarantined_at", TS, nullable=False),
)

# Ingest's position per source: the last extract change_seq loaded (the adapter's sequence,
# never a department timestamp, so no data value can move it).
watermarks = sa.Table(
    "watermarks", metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("change_seq", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
)

# Staging rows retired by a department tombstone (op = delete): kept with their deletion for
# the audit trail, out of staging so nothing downstream (mart, audit, services) sees them.
staging_deleted = sa.Table(
    "staging_deleted", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("record_key", sa.String(120)),  # the staging key (record_id …); NULL where it is the ERK
    sa.Column("erk", sa.String(120), index=True),
    sa.Column("row_hash", sa.String(64), nullable=False),  # the retired row's digest
    sa.Column("loaded_run_id", sa.String(250), nullable=False),
    sa.Column("change_seq", sa.Integer, nullable=False),  # the tombstone's
    sa.Column("deleted_run_id", sa.String(250), nullable=False, index=True),
    sa.Column("deleted_at", TS, nullable=False),
)

# Records a load re-linked to another resident (a department correcting a mislink): the ERK the
# record left, per load run. Its old resident has one record fewer and nothing else of it
# changed, so a link build finds it here (renkei.linkage.changes) instead of recounting every
# resident's records in the source.
staging_moved = sa.Table(
    "staging_moved", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("record_key", sa.String(120), nullable=False),
    sa.Column("erk", sa.String(120), nullable=False),  # the resident the record left
    sa.Column("moved_run_id", sa.String(250), nullable=False, index=True),
)

ingest_runs = sa.Table(
    "ingest_runs", metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("read", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("loaded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("quarantined", sa.Integer, nullable=False, server_default="0"),
    sa.Column("watermark_from", sa.Integer),  # change_seq positions: read (from, to]
    sa.Column("watermark_to", sa.Integer),
    sa.Column("deleted", sa.Integer, nullable=False, server_default="0"),  # staging rows retired by tombstones
    sa.Column("state", sa.String(16), nullable=False),  # extracted | validated | loaded | failed
    sa.Column("updated_at", TS, nullable=False),
)

# What extract found when it ran the source's suite over each chunk as it read it (the rows were
# in memory anyway): validate trusts the landed reasons only when the suite is still this one.
landing_checks = sa.Table(
    "landing_checks", metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("suite", sa.String(64), nullable=False),  # gx_runner.suite_fingerprint when checked
    sa.Column("rows", sa.Integer, nullable=False),  # rows checked
)

mart_residents = sa.Table(
    "mart_residents", metadata,
    sa.Column("erk", sa.String(120), primary_key=True),
    sa.Column("birth_date", sa.Date),
    sa.Column("sex", sa.Integer),
    sa.Column("ward_code", sa.String(6)),
    sa.Column("status", sa.String(16)),
    sa.Column("status_date", sa.Date),
    sa.Column("household_key", sa.String(120)),
    sa.Column("age_years", sa.Integer),  # legal age on as_of (年齢計算ニ関スル法律)
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("dose_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("immunization_history", sa.Text),  # "CODE#n@YYYY-MM-DD,…" sorted
    sa.Column("checkups", sa.Text),  # "M4@YYYY-MM-DD,…"
    sa.Column("nhi_qualified_on", sa.Date),
    sa.Column("nhi_disqualified_on", sa.Date),
    sa.Column("nhi_last_checkup_on", sa.Date),
    sa.Column("subscription_topics", sa.Text),  # active on as_of
    sa.Column("departments", sa.Integer, nullable=False),  # sources that contributed
    sa.Column("built_run_id", sa.String(250), nullable=False),
)

mart_doses = sa.Table(
    "mart_doses", metadata,
    sa.Column("erk", sa.String(120), primary_key=True),
    sa.Column("vaccine_code", sa.String(16), primary_key=True),
    sa.Column("dose_number", sa.Integer, primary_key=True),
    sa.Column("administered_on", sa.Date, nullable=False),
    sa.Column("record_id", sa.String(120), nullable=False),
)

linkage = sa.Table(
    "linkage", metadata,
    sa.Column("erk", sa.String(120), primary_key=True),
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("in_registry", sa.Boolean, nullable=False),
    sa.Column("built_run_id", sa.String(250), nullable=False),
)
# The ERKs no registry row vouches for: few, counted after every build (a scan of every
# resident's linkage rows, a tenth of a second at city scale, without it).
sa.Index("ix_linkage_unregistered", linkage.c.erk,
         postgresql_where=linkage.c.in_registry.is_(False), sqlite_where=linkage.c.in_registry.is_(False))

link_flags = sa.Table(
    "link_flags", metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("record_key", sa.String(120), primary_key=True),
    sa.Column("reason", sa.String(64), primary_key=True),  # birth_date_mismatch | sex_mismatch | not_in_registry
    sa.Column("erk", sa.String(120), nullable=False, index=True),
    sa.Column("built_run_id", sa.String(250), nullable=False),
)

# The mart is derived from staging and rebuilt by every full link: no WAL for it on PostgreSQL
# (a whole-city build wrote ~1 GB of it and its checkpoints). A server crash empties unlogged
# tables; the next link then builds in full (renkei.linkage.mart.mart_lost) and services refuse
# to evaluate an emptied mart. Streaming replicas do not receive unlogged tables.
MART_TABLES = tuple(_unlogged(t) for t in (mart_doses, mart_residents, linkage, link_flags))

notices = sa.Table(
    "notices", metadata,
    sa.Column("notice_id", sa.String(64), primary_key=True),
    sa.Column("service", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("erk", sa.String(120), nullable=False, index=True),
    sa.Column("rule_id", sa.String(64), nullable=False),
    sa.Column("rule_version", sa.Integer, nullable=False),
    sa.Column("subject", sa.String(32), nullable=False),  # vaccine_code / checkup_code / …
    sa.Column("dose_number", sa.Integer),
    sa.Column("window_start", sa.Date, nullable=False),
    sa.Column("window_end", sa.Date, nullable=False),
    sa.Column("evaluated_on", sa.Date, nullable=False),
    sa.Column("facts", sa.Text, nullable=False),  # JSON: the facts the rule used
    sa.Column("created_run_id", sa.String(250), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("replaces", sa.String(64)),  # the notice this one supersedes (notice_events), if any
    sa.Index("ix_notices_created_order", "created_at", "notice_id"),  # the relay's keyset pages
)

# The contact token of each notified resident: AES-SIV(k_contact, resident code), sealed by the
# pipeline (renkei.outputs.contacts) so that delivery, which holds only the contact key, finds
# the contact without being able to open an ERK. Keyed by the ERK (re-sealed on link rotation).
notice_contacts = sa.Table(
    "notice_contacts", metadata,
    sa.Column("erk", sa.String(120), primary_key=True),
    sa.Column("contact_token", sa.String(120), nullable=False),
    sa.Column("sealed_at", TS, nullable=False),
)

# The notice lifecycle after creation (ARCHITECTURE.md, notice lifecycle): append-only
# transitions of an outbox notice. A notice's state is its latest event's (none: pending):
# withdrawn (its basis is gone), superseded (the rule asks for another notice, superseded_by),
# reinstated (the basis came back before it was sent). The relay publishes each event on the
# notices stream (stream_id, published_at); delivery sends only a notice whose state is pending.
notice_events = sa.Table(
    "notice_events", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("notice_id", sa.String(64), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False),  # withdrawn | superseded | reinstated
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("superseded_by", sa.String(64)),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("at", TS, nullable=False),
    sa.Column("stream_id", sa.String(64)),  # set by the relay once published
    sa.Column("published_at", TS),
)


@lru_cache(maxsize=1)
def _declare_source_tables() -> None:
    for src in load_sources().values():
        if src.ingest:
            landing_table(src)
            staging_table(src)


def engine(url: str) -> sa.Engine:
    """An engine for a warehouse or extract URL (SQLite gets WAL and a busy timeout)."""
    if url.startswith("sqlite"):
        eng = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(eng, "connect")
        def _pragmas(dbapi_conn, _):  # noqa: ANN001 - DBAPI connection
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            dbapi_conn.create_function("renkei_row_digest", -1, _sqlite_row_digest, deterministic=True)

        return eng
    return sa.create_engine(url, pool_pre_ping=True)


def snapshot_options(eng: sa.Engine) -> dict:
    """Execution options for a transaction that reads one snapshot: REPEATABLE READ on
    PostgreSQL (a SQLite transaction reads one already)."""
    return {"isolation_level": "REPEATABLE READ"} if eng.dialect.name == "postgresql" else {}


def ensure_schema(eng: sa.Engine) -> None:
    """Create every warehouse table that does not exist yet (idempotent); a landing table of an
    older extract layout is re-created while it holds no batch.

    Skipped when the warehouse records (``renkei_schema``) every table as this code defines it:
    the checks are some fifty catalog queries, 50–120 ms a call on PostgreSQL, and every task
    calls this. A table dropped by hand after it was recorded is not re-created: delete its
    ``renkei_schema`` row (or every row) and the next call checks everything again."""
    _declare_source_tables()
    wanted = schema_digests()
    if _recorded_digests(eng).items() >= wanted.items():
        return
    _renew_landing(eng)
    metadata.create_all(eng)
    _create_missing_indexes(eng)
    install_outbox_pending(eng)
    _record_digests(eng, wanted)


def _create_missing_indexes(eng: sa.Engine) -> None:
    """An index declared after its table was created (create_all makes only new tables'): made now."""
    with eng.begin() as conn:
        found = sa.inspect(conn).get_multi_indexes().items()
        have = {table: {ix["name"] for ix in indexes} for (_, table), indexes in found}
        for table in metadata.sorted_tables:
            for ix in table.indexes:
                if table.name in have and ix.name not in have[table.name]:
                    conn.execute(CreateIndex(ix, if_not_exists=True))


# What ensure_schema made: a row per table (and one for the outbox triggers) with a digest of
# its definition in this code. Rows, not one fingerprint: code that declares more tables (or a
# changed one) checks and records them without making older rows stale.
schema_tables = sa.Table(
    "renkei_schema", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
)
_TRIGGERS_ENTRY = "(outbox_pending triggers)"


_digests: dict[tuple[str, ...], dict[str, str]] = {}  # per set of declared tables (declared once each)


def schema_digests() -> dict[str, str]:
    """Each warehouse table's name → a digest of its columns, keys and indexes as declared here."""
    declared = tuple(metadata.tables)
    if declared not in _digests:
        _digests[declared] = _digest_tables()
    return dict(_digests[declared])


def _digest_tables() -> dict[str, str]:
    def digest(*parts: object) -> str:
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    found = {
        t.name: digest(
            [(c.name, repr(c.type), c.nullable, c.primary_key) for c in t.columns],
            sorted((str(i.name), [c.name for c in i.columns], i.unique) for i in t.indexes),
            sorted((type(k).__name__, str(k.name), [c.name for c in k.columns]) for k in t.constraints
                   if isinstance(k, sa.sql.schema.ColumnCollectionConstraint)),
        )
        for t in metadata.tables.values()
    }
    found[_TRIGGERS_ENTRY] = digest(_PENDING_TRIGGERS_PG, _PENDING_TRIGGERS_SQLITE)
    return found


def _recorded_digests(eng: sa.Engine) -> dict[str, str]:
    try:
        with eng.connect() as conn:
            return dict(conn.execute(sa.select(schema_tables.c.name, schema_tables.c.digest)).all())
    except sa.exc.DBAPIError:  # no such table yet (or a role that may not read it): check everything
        return {}


def _record_digests(eng: sa.Engine, digests: dict[str, str]) -> None:
    try:
        with eng.begin() as conn:
            stmt = dialect_insert(conn)(schema_tables)
            conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={"digest": stmt.excluded.digest}),
                         [{"name": n, "digest": d} for n, d in sorted(digests.items())])
    except sa.exc.DBAPIError as exc:  # a role without the write (the api-server's): it checks every call
        log.debug("renkei_schema not recorded (%s): the next call checks the schema again", exc.__class__.__name__)


def _renew_landing(eng: sa.Engine) -> None:
    """Landing holds a batch only between extract and load: one whose columns are not this
    version's (e.g. ``name_digest`` before quasi-identifiers were sealed by the department) is
    dropped when empty, so create_all makes it anew; with a batch in it, the upgrade waits."""
    insp = sa.inspect(eng)
    existing = set(insp.get_table_names())
    for name, table in list(metadata.tables.items()):
        if not name.startswith("landing_") or name not in existing:
            continue
        if {c["name"] for c in insp.get_columns(name)} == {c.name for c in table.columns}:
            continue
        with eng.begin() as conn:
            if conn.execute(sa.text(f'SELECT 1 FROM "{name}" LIMIT 1')).first() is not None:
                raise SourceError(f"{name} holds a batch landed by an older Renkei: finish that run's load with the "
                                  "older version (or delete its rows) before upgrading")
            conn.execute(sa.text(f'DROP TABLE "{name}"'))


def source_tables() -> None:
    _declare_source_tables()


def dialect_insert(conn: sa.Connection):
    """The engine's ``insert`` construct, the one with ON CONFLICT (upserts)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - other engines: add their upsert here (the one dialect seam)
        raise NotImplementedError(f"upsert on {conn.dialect.name}")
    return insert


def upsert(conn: sa.Connection, table: sa.Table, rows: list[dict], update: bool = True) -> None:
    """INSERT … ON CONFLICT (primary key) DO UPDATE (or DO NOTHING), per dialect."""
    if not rows:
        return
    stmt = dialect_insert(conn)(table)
    pk = [c.name for c in table.primary_key.columns]
    if update:
        cols = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in pk and c.name in rows[0]}
        stmt = stmt.on_conflict_do_update(index_elements=pk, set_=cols) if cols else stmt.on_conflict_do_nothing(index_elements=pk)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=pk)
    conn.execute(stmt, rows)


class yyyymmdd(FunctionElement):
    """A date as the integer YYYYMMDD (for legal-age arithmetic in SQL)."""

    type = sa.Integer()
    inherit_cache = True


@compiles(yyyymmdd, "sqlite")
def _yyyymmdd_sqlite(element, compiler, **kw):  # noqa: ANN001
    return "CAST(strftime('%%Y%%m%%d', %s) AS INTEGER)" % compiler.process(element.clauses, **kw)


@compiles(yyyymmdd, "postgresql")
def _yyyymmdd_pg(element, compiler, **kw):  # noqa: ANN001
    return "CAST(to_char(%s, 'YYYYMMDD') AS INTEGER)" % compiler.process(element.clauses, **kw)


class row_digest(FunctionElement):
    """SHA-256 (hex) of a row's values, computed by the database (quarantine and staging
    ``row_hash``): of the row's PostgreSQL record text ``(v1,v2,…)``, which SQLite reproduces
    in Python, so a row digests alike on every engine."""

    type = sa.String(64)
    inherit_cache = True


_RECORD_SPECIAL = frozenset('"\\(),') | frozenset(" \t\n\v\f\r")


def record_text(values) -> str:
    """A row as PostgreSQL's record output writes it (NULL empty; quoted when needed)."""
    out = []
    for v in values:
        if v is None:
            out.append("")
            continue
        text = str(v)
        if text == "" or any(ch in _RECORD_SPECIAL for ch in text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '""') + '"'
        out.append(text)
    return "(" + ",".join(out) + ")"


def _sqlite_row_digest(*values) -> str:  # registered on every SQLite connection by engine()
    return hashlib.sha256(record_text(values).encode("utf-8")).hexdigest()


@compiles(row_digest, "sqlite")
def _row_digest_sqlite(element, compiler, **kw):  # noqa: ANN001
    return "renkei_row_digest(%s)" % compiler.process(element.clauses, **kw)


@compiles(row_digest, "postgresql")
def _row_digest_pg(element, compiler, **kw):  # noqa: ANN001
    # ROW(...)::text quotes values and marks NULLs, so different rows never encode alike.
    return "encode(sha256(convert_to(CAST(ROW(%s) AS TEXT), 'UTF8')), 'hex')" % compiler.process(element.clauses, **kw)


class as_date(FunctionElement):
    """An ISO 'YYYY-MM-DD' text as a date column value (SQLite keeps dates as that text)."""

    type = sa.Date()
    inherit_cache = True


@compiles(as_date, "sqlite")
def _as_date_sqlite(element, compiler, **kw):  # noqa: ANN001
    return compiler.process(element.clauses, **kw)


@compiles(as_date, "postgresql")
def _as_date_pg(element, compiler, **kw):  # noqa: ANN001
    return "CAST(%s AS DATE)" % compiler.process(element.clauses, **kw)


# The change channel for setups without Redis (renkei.events, kind changelog_table).
change_log = sa.Table(
    "change_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # ChangeEvent JSON: no personal data
    sa.Column("created_at", TS, nullable=False),
    sa.Column("consumed_at", TS),  # NULL = not yet handed to Airflow
    sa.Index("ix_change_log_pending", "source", "consumed_at", "id"),
)


# Which outbox notices the relay has put on the notices stream (renkei.outputs.relay). The relay
# records here and never writes to `notices`: the outbox stays the source of truth.
outbox_published = sa.Table(
    "outbox_published", metadata,
    sa.Column("notice_id", sa.String(64), primary_key=True),
    sa.Column("stream_id", sa.String(64), nullable=False),  # the Redis Stream entry id
    sa.Column("published_at", TS, nullable=False),
)


# The notices not yet on the stream, in created order: the index of "no outbox_published row",
# kept by triggers (install_outbox_pending) so that every writer keeps it — a notice inserted is
# pending; its outbox_published row inserted, it is not; that row deleted (to publish it again),
# it is pending again; the notice deleted, it is gone. The relay reads it instead of an anti-join
# over the whole outbox (0.8 s per page at a million residents, for a handful of new notices).
outbox_pending = sa.Table(
    "outbox_pending", metadata,
    sa.Column("created_at", TS, primary_key=True),
    sa.Column("notice_id", sa.String(64), primary_key=True),
    sa.Index("ix_outbox_pending_notice", "notice_id", unique=True),
)

_PENDING_TRIGGERS_PG = (
    ("renkei_pending_insert", "notices", "INSERT", "NEW", """
        INSERT INTO outbox_pending (created_at, notice_id)
        SELECT t.created_at, t.notice_id FROM changed t
        WHERE NOT EXISTS (SELECT 1 FROM outbox_published p WHERE p.notice_id = t.notice_id)
        ON CONFLICT DO NOTHING"""),
    ("renkei_pending_forget", "notices", "DELETE", "OLD", """
        DELETE FROM outbox_pending p USING changed t WHERE p.notice_id = t.notice_id"""),
    ("renkei_pending_published", "outbox_published", "INSERT", "NEW", """
        DELETE FROM outbox_pending p USING changed t WHERE p.notice_id = t.notice_id"""),
    ("renkei_pending_again", "outbox_published", "DELETE", "OLD", """
        INSERT INTO outbox_pending (created_at, notice_id)
        SELECT n.created_at, n.notice_id FROM changed t JOIN notices n ON n.notice_id = t.notice_id
        ON CONFLICT DO NOTHING"""),
)
_PENDING_TRIGGERS_SQLITE = (
    ("renkei_pending_insert", """AFTER INSERT ON notices
        WHEN NOT EXISTS (SELECT 1 FROM outbox_published p WHERE p.notice_id = NEW.notice_id)
        BEGIN INSERT OR IGNORE INTO outbox_pending (created_at, notice_id) VALUES (NEW.created_at, NEW.notice_id); END"""),
    ("renkei_pending_forget", """AFTER DELETE ON notices
        BEGIN DELETE FROM outbox_pending WHERE notice_id = OLD.notice_id; END"""),
    ("renkei_pending_published", """AFTER INSERT ON outbox_published
        BEGIN DELETE FROM outbox_pending WHERE notice_id = NEW.notice_id; END"""),
    ("renkei_pending_again", """AFTER DELETE ON outbox_published
        BEGIN INSERT OR IGNORE INTO outbox_pending (created_at, notice_id)
        SELECT created_at, notice_id FROM notices WHERE notice_id = OLD.notice_id; END"""),
)
_PENDING_LOCK = 0x52656E6B  # an advisory lock id: one installer at a time


def _pending_triggers(conn: sa.Connection) -> set[str]:
    if conn.dialect.name == "postgresql":
        return set(conn.execute(sa.text(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'renkei_pending_%' "
            "AND tgrelid IN (to_regclass('notices'), to_regclass('outbox_published'))")).scalars())
    return set(conn.execute(sa.text(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'renkei_pending_%'")).scalars())


def install_outbox_pending(eng: sa.Engine) -> bool:
    """Install the triggers that keep ``outbox_pending`` and fill it with the notices not yet
    published, once (the tables exist); True when it installed them now."""
    names = {t[0] for t in _PENDING_TRIGGERS_PG}
    with eng.connect() as conn:
        if _pending_triggers(conn) >= names:
            return False
    with eng.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PENDING_LOCK})
        have = _pending_triggers(conn)
        if have >= names:
            return False
        if conn.dialect.name == "postgresql":
            for name, table, event, rows, body in _PENDING_TRIGGERS_PG:
                if name in have:
                    continue
                conn.execute(sa.text(
                    f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
                    f"$$ BEGIN {body.strip()}; RETURN NULL; END $$"))
                conn.execute(sa.text(
                    f"CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {rows} TABLE AS changed "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"))
        else:
            for name, body in _PENDING_TRIGGERS_SQLITE:
                conn.execute(sa.text(f"CREATE TRIGGER IF NOT EXISTS {name} {body}"))
        # The notices published before the triggers existed are not pending; the rest are. The
        # triggers above lock the tables: a writer waiting on them fires them once this commits.
        n, o = notices.c, outbox_published.c
        conn.execute(dialect_insert(conn)(outbox_pending).from_select(
            ["created_at", "notice_id"],
            sa.select(n.created_at, n.notice_id).where(~sa.exists().where(o.notice_id == n.notice_id)),
        ).on_conflict_do_nothing())
    return True


# The tamper-evident audit trail (renkei.audit.trail): append-only, each entry HMAC-chained to
# the previous one under the keyring's audit key. Payloads hold counts, ids and key versions,
# never personal data.
audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),  # 1, 2, … gapless
    sa.Column("at", TS, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),  # linkage_run | review_decision | notice_published | …
    sa.Column("payload", sa.Text, nullable=False),  # canonical JSON
    sa.Column("prev_hash", sa.String(80), nullable=False),
    sa.Column("entry_hash", sa.String(80), nullable=False),  # v<audit key version>.<HMAC-SHA256 hex>
)

# The chain's head, one row (id = 1) updated in the same transaction as each append: it is the
# append lock, and it makes a deleted last entry detectable (head_mac binds seq and entry_hash).
audit_head = sa.Table(
    "audit_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("entry_hash", sa.String(80), nullable=False),
    sa.Column("head_mac", sa.String(80), nullable=False),
    sa.CheckConstraint("id = 1", name="ck_audit_head_single_row"),
)


# The integrity audit's review queue (renkei.linkage.audit writes it, renkei.linkage.review
# decides): one row per (source, record_key, reason), deterministic id, decisions kept across
# rebuilds. `active` = the latest audit still finds it; `row_hash` = the department row then.
review_queue = sa.Table(
    "review_queue", metadata,
    sa.Column("item_id", sa.String(16), primary_key=True),  # sha256(source, record_key, reason)[:16]
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("record_key", sa.String(120), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),  # birth_date_mismatch | sex_mismatch | not_in_registry | name_mismatch | address_mismatch
    sa.Column("erk", sa.String(120), nullable=False, index=True),
    sa.Column("severity", sa.String(8), nullable=False),  # hold | review
    sa.Column("state", sa.String(16), nullable=False),  # pending | approved | rejected
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("row_hash", sa.String(64)),
    sa.Column("first_seen_run", sa.String(250), nullable=False),
    sa.Column("decided_by", sa.Text),
    sa.Column("decided_at", TS),
    sa.Column("comment", sa.Text),
    sa.Column("decided_row_hash", sa.String(64)),  # the department row the decision was about
    sa.UniqueConstraint("source", "record_key", "reason", name="uq_review_queue_finding"),
)


# Notice identity (renkei.linkage.subjects): a random subject key given to an ERK once, when it
# first reaches the mart. Notice ids hash the subject key, so re-sealing ERKs under a new link key
# version (renkei.keys.rotation rewrites `erk` here) leaves every notice id unchanged.
subjects = sa.Table(
    "subjects", metadata,
    sa.Column("erk", sa.String(120), primary_key=True),
    sa.Column("subject_key", sa.String(32), nullable=False, unique=True),
    sa.Column("first_run_id", sa.String(250), nullable=False),
)

# The link key version the warehouse's ERKs are under, one row per purpose ('link'). ERK writers
# (ingest load, link, services) share-lock it; a rotation locks it exclusively to start and sets
# `rotating_to` until every ERK column is re-sealed (renkei.keys.rotation).
key_state = sa.Table(
    "key_state", metadata,
    sa.Column("purpose", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer),
    sa.Column("rotating_to", sa.Integer),
    sa.Column("rotation_id", sa.String(64)),
    sa.Column("updated_at", TS, nullable=False),
)

# One row per re-seal of the warehouse's ERKs: versions, state and per-table progress (JSON:
# {table: {total, done, resealed, cursor}}), committed with each batch so a re-run resumes.
key_rotations = sa.Table(
    "key_rotations", metadata,
    sa.Column("rotation_id", sa.String(64), primary_key=True),  # link-v1-v2
    sa.Column("purpose", sa.String(64), nullable=False),
    sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # running | completed
    sa.Column("progress", sa.Text, nullable=False),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("finished_at", TS),
    sa.Column("audit_seq", sa.Integer),  # the key_rotation entry of the audit trail
)


# Incremental link and services (renkei.linkage.changes): bookkeeping of ids, dates and counts.
# Each mart build is one `link_builds` row (seq 1, 2, …); `link_consumed` names the ingest runs
# (run, source, the run's updated_at) whose staging rows a build took in; `mart_changes` the ERKs
# an incremental build rebuilt, which the next services run evaluates. `services_runs` records
# each complete services evaluation (its date, the last build it saw, a digest of the events
# calendar) and `services_held` the ERKs the audit held back then.
link_builds = sa.Table(
    "link_builds", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("grace_days", sa.Integer, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),  # full | incremental
    sa.Column("residents_touched", sa.Integer, nullable=False),
    sa.Column("built_at", TS, nullable=False),
)

link_consumed = sa.Table(
    "link_consumed", metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("updated_at", TS, primary_key=True),  # ingest_runs.updated_at: a re-load is a new run
    sa.Column("build_seq", sa.Integer, nullable=False),
)

mart_changes = sa.Table(
    "mart_changes", metadata,
    sa.Column("build_seq", sa.Integer, primary_key=True),
    sa.Column("erk", sa.String(120), primary_key=True),
)

services_runs = sa.Table(
    "services_runs", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("link_seq", sa.Integer, nullable=False),  # the last mart build evaluated (0: none)
    sa.Column("events_digest", sa.String(64), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),  # full | incremental
    sa.Column("residents_touched", sa.Integer, nullable=False),
    sa.Column("evaluated_at", TS, nullable=False),
)

services_held = sa.Table(
    "services_held", metadata,
    sa.Column("erk", sa.String(120), primary_key=True),
)
# The ERKs each part of a services run held back, until the run is recorded (services_held).
services_held_pending = sa.Table(
    "services_held_pending", metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("erk", sa.String(120), primary_key=True),
)
