"""Subject keys (the notice identity): one random key per mart ERK, assigned once, on both engines."""

from __future__ import annotations

import re
from datetime import date

import pytest
import sqlalchemy as sa

from renkei.linkage.subjects import assign_subjects
from renkei.warehouse import engine, ensure_schema, mart_residents, subjects


@pytest.fixture
def url(engine_url):
    return engine_url


def _mart(conn: sa.Connection, erks: list[str]) -> None:
    conn.execute(sa.insert(mart_residents), [
        {"erk": e, "as_of": date(2025, 6, 1), "dose_count": 0, "departments": 1, "built_run_id": "t"} for e in erks])


def test_each_erk_gets_one_random_key_once(url):
    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:
        _mart(conn, [f"erk-{i:05d}" for i in range(3000)])
        assert assign_subjects(conn, "first") == 3000  # an empty table (PostgreSQL: keys built after)
        assert assign_subjects(conn, "again") == 0
    with eng.begin() as conn:
        first = dict(conn.execute(sa.select(subjects.c.erk, subjects.c.subject_key)).all())
        _mart(conn, ["erk-new"])
        assert assign_subjects(conn, "later") == 1
        later = dict(conn.execute(sa.select(subjects.c.erk, subjects.c.subject_key)).all())
        pk = sa.inspect(conn).get_pk_constraint("subjects")["constrained_columns"]
        uniques = [u["column_names"] for u in sa.inspect(conn).get_unique_constraints("subjects")]
    eng.dispose()
    assert {k: v for k, v in later.items() if k != "erk-new"} == first  # kept
    keys = list(later.values())
    assert len(set(keys)) == len(keys) == 3001
    assert all(re.fullmatch(r"[0-9a-f]{32}", k) for k in keys)
    assert pk == ["erk"] and ["subject_key"] in uniques  # the refill put its keys back
