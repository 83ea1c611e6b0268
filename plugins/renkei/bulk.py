"""Bulk work on warehouse tables, the dialect seam for city-sized batches.

- Appends: rows (tuples in the order of the named columns) by COPY on PostgreSQL, executemany
  elsewhere — one round trip per chunk instead of one per row.
- Rebuilds: PostgreSQL gets a larger ``work_mem`` (aggregates sort millions of rows), no JIT
  (compiling a one-off plan costs more than it saves), ``TRUNCATE`` instead of ``DELETE`` and a
  table's keys and indexes dropped while it is refilled and built afterwards in one sorted pass,
  then ``ANALYZE`` so the next step plans on real row counts. SQLite keeps ``DELETE`` and its
  indexes. TRUNCATE is not MVCC-safe: readers in one snapshot take :func:`read_lock` first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, DropIndex

PG_SETTINGS = {"work_mem": "256MB", "maintenance_work_mem": "512MB", "jit": "off"}


def _pg(conn: sa.Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _quoted(conn: sa.Connection, names: Sequence[str]) -> str:
    prep = conn.dialect.identifier_preparer
    return ", ".join(prep.quote(n) for n in names)


def _pg_copy(conn: sa.Connection, table_name: str, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    prep = conn.dialect.identifier_preparer
    n = 0
    cur = conn.connection.driver_connection.cursor()
    with cur.copy(f"COPY {prep.quote(table_name)} ({_quoted(conn, columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    cur.close()
    return n


def insert_rows(conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Append rows (tuples in ``columns`` order); returns how many."""
    if _pg(conn):
        return _pg_copy(conn, table.name, columns, rows)
    batch = [dict(zip(columns, r)) for r in rows]
    if batch:
        conn.execute(table.insert(), batch)
    return len(batch)


def tune(conn: sa.Connection) -> None:
    """Transaction-local settings for set-based work over the whole city (PostgreSQL only)."""
    if _pg(conn):  # one round trip: an incremental batch calls this too
        conn.execute(sa.select(*[sa.func.set_config(name, value, True) for name, value in PG_SETTINGS.items()]))


def analyze(conn: sa.Connection, tables: Sequence[sa.Table]) -> None:
    """Refresh the planner statistics of freshly filled tables (PostgreSQL only)."""
    if _pg(conn):
        prep = conn.dialect.identifier_preparer
        for t in tables:
            conn.exec_driver_sql(f"ANALYZE {prep.format_table(t)}")


def read_lock(conn: sa.Connection, tables: Sequence[sa.Table]) -> None:
    """Make a one-snapshot read of ``tables`` safe against a concurrent :func:`refilled`
    (PostgreSQL only): call it as the *first* statement of a REPEATABLE READ transaction.

    ``TRUNCATE`` is not MVCC-safe: a transaction whose snapshot predates the commit of a
    refill reads the truncated tables as empty. ``LOCK TABLE … IN ACCESS SHARE MODE`` takes no
    snapshot, and conflicts only with the refill's ACCESS EXCLUSIVE: taken first, the snapshot
    comes after any refill running now has committed (the new tables), and a refill that
    starts later waits for this transaction to end (the old ones). Plain reads, incremental
    DELETE/INSERT and other readers are not blocked by it.
    """
    if _pg(conn):
        prep = conn.dialect.identifier_preparer
        conn.exec_driver_sql("LOCK TABLE " + ", ".join(prep.format_table(t) for t in tables) + " IN ACCESS SHARE MODE")


def _key_names(t: sa.Table) -> tuple[str, list[tuple[str, list[str]]]]:
    """The names the keys of ``t`` get on PostgreSQL: the metadata's, else PostgreSQL's own
    defaults (``<table>_pkey``, ``<table>_<columns>_key``), which ``create_all`` left them under."""
    pk = t.primary_key.name or f"{t.name}_pkey"
    uniques = []
    for uq in (c for c in t.constraints if isinstance(c, sa.UniqueConstraint)):
        cols = [c.name for c in uq.columns]
        uniques.append((uq.name or f"{t.name}_{'_'.join(cols)}_key", cols))
    return pk, uniques


@contextmanager
def refilled(conn: sa.Connection, tables: Sequence[sa.Table]) -> Iterator[None]:
    """Empty ``tables`` for a full rebuild; the body fills them again.

    On PostgreSQL the tables are truncated and their primary keys, unique constraints and
    indexes dropped, then rebuilt after the body (a sorted build instead of millions of random
    b-tree inserts) and the tables analyzed. All of it is transactional: a failed build leaves the old mart.
    TRUNCATE holds the tables ACCESS EXCLUSIVE to the commit, but is not MVCC-safe: a reader
    in one snapshot must :func:`read_lock` them first.

    Keys are dropped ``IF EXISTS``, each once, by their known names and those the catalog shows,
    and re-created under the known names: reflection runs in this transaction's snapshot, which
    under REPEATABLE READ can predate a concurrent refill of the same table — it then lists the
    dropped constraint row beside the re-created one (one name twice) or misses a change, and a
    key left missing or renamed by hand is put back too.
    """
    if not _pg(conn):
        for t in tables:
            conn.execute(t.delete())
        yield
        return
    prep = conn.dialect.identifier_preparer
    conn.exec_driver_sql("TRUNCATE " + ", ".join(prep.format_table(t) for t in tables))
    insp = sa.inspect(conn)
    for t in tables:
        pk, uniques = _key_names(t)
        names = [pk, insp.get_pk_constraint(t.name).get("name"), *(n for n, _ in uniques),
                 *(uq["name"] for uq in insp.get_unique_constraints(t.name))]
        for name in dict.fromkeys(n for n in names if n):
            conn.exec_driver_sql(f"ALTER TABLE {prep.format_table(t)} DROP CONSTRAINT IF EXISTS {prep.quote(name)}")
        for ix in t.indexes:
            conn.execute(DropIndex(ix, if_exists=True))
    yield
    for t in tables:
        # Not AddConstraint(t.primary_key): it marks the shared metadata's constraint as created
        # by ALTER, so a later CREATE TABLE from the same metadata (another warehouse in this
        # process) would silently omit the primary key.
        pk, uniques = _key_names(t)
        cols = ", ".join(prep.quote(c.name) for c in t.primary_key.columns)
        conn.exec_driver_sql(f"ALTER TABLE {prep.format_table(t)} ADD CONSTRAINT {prep.quote(pk)} PRIMARY KEY ({cols})")
        for uname, ucols in uniques:
            conn.exec_driver_sql(
                f"ALTER TABLE {prep.format_table(t)} ADD CONSTRAINT {prep.quote(uname)} UNIQUE ({_quoted(conn, ucols)})")
        for ix in t.indexes:
            conn.execute(CreateIndex(ix))
    analyze(conn, tables)
