"""Bulk writes into warehouse tables: COPY on PostgreSQL, executemany elsewhere.

Rows are tuples in the order of the named columns. On PostgreSQL an upsert copies the batch
into a temporary table and merges it with one ``INSERT … SELECT … ON CONFLICT`` statement, so
a million rows cost one round trip per chunk instead of one per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from renkei.warehouse import upsert


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
    if conn.dialect.name == "postgresql":
        return _pg_copy(conn, table.name, columns, rows)
    batch = [dict(zip(columns, r)) for r in rows]
    if batch:
        conn.execute(table.insert(), batch)
    return len(batch)


def upsert_rows(conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: list[Sequence]) -> int:
    """Insert rows, replacing the non-key columns of rows whose primary key exists.

    ``rows`` must not repeat a primary key (PostgreSQL refuses to update one row twice in a
    statement); callers dedupe first.
    """
    if not rows:
        return 0
    if conn.dialect.name != "postgresql":
        upsert(conn, table, [dict(zip(columns, r)) for r in rows])
        return len(rows)
    prep = conn.dialect.identifier_preparer
    tmp = f"tmp_{table.name}"
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {prep.quote(tmp)} "
        f"(LIKE {prep.quote(table.name)} INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    conn.exec_driver_sql(f"TRUNCATE {prep.quote(tmp)}")
    _pg_copy(conn, tmp, columns, rows)
    pk = [c.name for c in table.primary_key.columns]
    cols = _quoted(conn, columns)
    updates = ", ".join(f"{prep.quote(c)} = EXCLUDED.{prep.quote(c)}" for c in columns if c not in pk)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    conn.exec_driver_sql(
        f"INSERT INTO {prep.quote(table.name)} ({cols}) SELECT {cols} FROM {prep.quote(tmp)} "
        f"ON CONFLICT ({_quoted(conn, pk)}) {action}"
    )
    return len(rows)
