"""``outbox_pending`` is the index of "no outbox_published row": its triggers keep it for every
writer, on SQLite and PostgreSQL, and an older warehouse gets it filled once. The oracle is the
definition itself, computed by the test as the anti-join the relay used to run."""

import json
from datetime import date

import pytest
import sqlalchemy as sa

from renkei import bulk
from renkei.warehouse import engine, ensure_schema, install_outbox_pending, notices, outbox_pending, outbox_published

T0 = "2025-05-01T06:00:00+09:00"


@pytest.fixture
def url(engine_url):
    eng = engine(engine_url)
    ensure_schema(eng)
    eng.dispose()
    return engine_url


def _row(i: int, created_at: str = T0) -> tuple:
    return (f"{i:032x}", "immunization", "due", f"v1.erk{i:04d}", "HIB#1", 1, "HIB", 1, date(2025, 5, 1),
            date(2025, 6, 1), date(2025, 5, 1), json.dumps({"n": i}), "proactive_services/r1", created_at, None)


def _insert(conn, ids, copy=False):
    columns = [c.name for c in notices.columns]
    rows = [_row(i) for i in ids]
    if copy:
        bulk.insert_rows(conn, notices, columns, rows)  # COPY on PostgreSQL: the statement trigger fires too
    else:
        conn.execute(notices.insert(), [dict(zip(columns, r)) for r in rows])


def _publish(conn, ids):
    conn.execute(outbox_published.insert(), [{"notice_id": f"{i:032x}", "stream_id": f"1-{i}", "published_at": T0}
                                             for i in ids])


def _pending(conn) -> set[str]:
    return set(conn.execute(sa.select(outbox_pending.c.notice_id)).scalars())


def _unpublished(conn) -> set[str]:
    n, o = notices.c, outbox_published.c
    return set(conn.execute(sa.select(n.notice_id).where(~sa.exists().where(o.notice_id == n.notice_id))).scalars())


def test_every_writer_keeps_pending_equal_to_unpublished(url):
    eng = engine(url)
    with eng.begin() as conn:
        _insert(conn, range(0, 6))
        _insert(conn, range(6, 10), copy=True)
        assert _pending(conn) == _unpublished(conn) and len(_pending(conn)) == 10
        _publish(conn, [1, 2, 3, 7])
        assert _pending(conn) == _unpublished(conn) and len(_pending(conn)) == 6
        # an operator deletes published rows to publish those notices again
        conn.execute(outbox_published.delete().where(outbox_published.c.notice_id.in_([f"{2:032x}", f"{7:032x}"])))
        assert _pending(conn) == _unpublished(conn) and len(_pending(conn)) == 8
        conn.execute(notices.delete().where(notices.c.notice_id.in_([f"{0:032x}", f"{3:032x}"])))  # 3: published
        assert _pending(conn) == _unpublished(conn) and len(_pending(conn)) == 7
        # a notice whose published row came first (a restore in another order) is not pending
        _publish(conn, [20])
        _insert(conn, [20])
        assert f"{20:032x}" not in _pending(conn)
        assert _pending(conn) == _unpublished(conn)
        created = dict(conn.execute(sa.select(outbox_pending.c.notice_id, outbox_pending.c.created_at)).all())
        assert set(created.values()) == {T0}, "pending rows carry the notice's created order"
    eng.dispose()


def test_an_older_warehouse_is_filled_once(url):
    eng = engine(url)
    with eng.begin() as conn:
        _insert(conn, range(5))
        _publish(conn, [0, 4])
    _drop_triggers(eng)
    with eng.begin() as conn:
        conn.execute(outbox_pending.delete())
        _insert(conn, [5])  # written while no trigger existed: the fill must find it
        assert _pending(conn) == set()
    assert install_outbox_pending(eng) is True
    assert install_outbox_pending(eng) is False
    with eng.connect() as conn:
        assert _pending(conn) == _unpublished(conn) == {f"{i:032x}" for i in (1, 2, 3, 5)}
    eng.dispose()


def _drop_triggers(eng):
    with eng.begin() as conn:
        if conn.dialect.name == "postgresql":
            for name, table in (("renkei_pending_insert", "notices"), ("renkei_pending_forget", "notices"),
                                ("renkei_pending_published", "outbox_published"),
                                ("renkei_pending_again", "outbox_published")):
                conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
        else:
            for name in ("renkei_pending_insert", "renkei_pending_forget", "renkei_pending_published",
                         "renkei_pending_again"):
                conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
