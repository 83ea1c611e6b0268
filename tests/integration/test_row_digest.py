"""The row digest (quarantine and staging ``row_hash``) is the same on SQLite and PostgreSQL,
so a row is recognised as the same row whichever warehouse engine computed its digest."""

from __future__ import annotations

import sqlalchemy as sa

from renkei.warehouse import engine, record_text, row_digest

ROWS = [
    ("plain", 1, None),
    ("", 0, "x"),
    ("a,b", -7, "(paren)"),
    ('quote "q"', 12345678901234, "back\\slash"),
    ("tab\there", None, "new\nline"),
    ("スズキ タロウ", 2, "北九州市小倉北区1-2-3"),
    ("'; DROP TABLE staging_registry; --", 9, " lead space"),
    (None, None, None),
]


def _digests(url: str) -> list[str]:
    eng = engine(url)
    t = sa.Table("digest_probe", sa.MetaData(), sa.Column("n", sa.Integer, primary_key=True),
                 sa.Column("a", sa.Text), sa.Column("b", sa.BigInteger), sa.Column("c", sa.Text))
    with eng.begin() as conn:
        t.create(conn)
        conn.execute(t.insert(), [{"n": i, "a": a, "b": b, "c": c} for i, (a, b, c) in enumerate(ROWS)])
        out = list(conn.execute(sa.select(row_digest(t.c.a, t.c.b, t.c.c)).order_by(t.c.n)).scalars())
    eng.dispose()
    return out


def test_sqlite_and_postgresql_digest_rows_alike(tmp_path, pg_url):
    on_sqlite = _digests(f"sqlite:///{tmp_path / 'd.db'}")
    assert on_sqlite == _digests(pg_url)
    assert len(set(on_sqlite)) == len(ROWS)  # different rows, different digests


def test_record_text_quotes_what_postgresql_quotes():
    assert record_text(["a", 1, None]) == "(a,1,)"
    assert record_text(["", "a,b", 'q"', "b\\s", "x y"]) == '("","a,b","q""","b\\\\s","x y")'
