"""Stable notice identity: each ERK of the mart gets a subject key once, and keeps it.

A notice id hashes the subject key, not the ERK (renkei.services.immunization.notice_id), so a
link-key rotation — which rewrites every ERK, ``subjects.erk`` included — changes no notice id
and republishes nothing. The subject key is random rather than derived from the first ERK: a
digest of the old ERK would let whoever holds a leaked old link key test a guessed resident code
against the warehouse after the rotation meant to lock them out.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from contextlib import nullcontext

import sqlalchemy as sa

from renkei.bulk import insert_rows, refilled
from renkei.warehouse import mart_residents, subjects

SUBJECT_KEY_BYTES = 16  # 32 hex characters


def assign_subjects(conn: sa.Connection, run_id: str, among: sa.Select | Sequence[str] | None = None) -> int:
    """Give every mart ERK that has no subject key a new one; returns how many.

    ``among`` (a SELECT or a list of ERKs) limits the check to those mart rows: an incremental link
    build passes the ERKs it rebuilt, the only ones that can be new to the mart (comparing the
    whole mart with ``subjects`` is a pass over a million rows of each at city scale).

    PostgreSQL draws the keys itself (``gen_random_uuid``: 122 random bits from the server's
    strong random source, as 32 hex characters) in one INSERT … SELECT, and a first fill builds
    the table's keys after the insert; other engines draw them with ``secrets``.
    """
    has = sa.select(subjects.c.erk).where(subjects.c.erk == mart_residents.c.erk).exists()
    missing = sa.and_(~has, sa.true() if among is None else mart_residents.c.erk.in_(among))
    if conn.dialect.name == "postgresql":
        key = sa.func.replace(sa.cast(sa.func.gen_random_uuid(), sa.Text), "-", "")
        insert = sa.insert(subjects).from_select(
            ["erk", "subject_key", "first_run_id"],
            sa.select(mart_residents.c.erk, key, sa.literal(run_id, sa.String(250))).where(missing))
        # Concurrent assignments (link, services plan) take their turns, the mart before the
        # subject keys as a full link build does (no lock-order deadlock). A REPEATABLE READ
        # build may not see keys committed after its snapshot: "empty" is the table's physical
        # size (no page at all, committed or not), so a refill never truncates anyone's keys.
        prep = conn.dialect.identifier_preparer
        conn.exec_driver_sql(f"LOCK TABLE {prep.format_table(mart_residents)} IN ACCESS SHARE MODE")
        conn.exec_driver_sql(f"LOCK TABLE {prep.format_table(subjects)} IN SHARE ROW EXCLUSIVE MODE")
        size = sa.text("SELECT pg_relation_size(CAST(:t AS regclass))")
        empty = conn.execute(size, {"t": prep.format_table(subjects)}).scalar_one() == 0
        with refilled(conn, [subjects]) if empty else nullcontext():  # empty: keys built after, in one sorted pass
            return conn.execute(insert, execution_options={"preserve_rowcount": True}).rowcount
    new = list(conn.execute(sa.select(mart_residents.c.erk).where(missing)).scalars())
    rows = [(erk, secrets.token_hex(SUBJECT_KEY_BYTES), run_id) for erk in new]
    return insert_rows(conn, subjects, ["erk", "subject_key", "first_run_id"], rows)


def subject_keys(conn: sa.Connection, run_id: str) -> dict[str, str]:
    """ERK → subject key for the whole mart (assigning missing ones first)."""
    assign_subjects(conn, run_id)
    return dict(conn.execute(sa.select(subjects.c.erk, subjects.c.subject_key)).all())
