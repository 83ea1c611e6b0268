"""ensure_schema checks the catalog only when ``renkei_schema`` does not record every table as
this code defines it (every task calls it; the checks are some fifty catalog queries).

The oracle is the database's own catalog (SQLAlchemy's inspector and the trigger list), on
SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from renkei.warehouse import _pending_triggers, engine, ensure_schema, linkage, metadata, notices, schema_tables


def _tables(eng: sa.Engine) -> set[str]:
    return set(sa.inspect(eng).get_table_names())


def _recorded(eng: sa.Engine) -> dict[str, str]:
    with eng.connect() as conn:
        return dict(conn.execute(sa.select(schema_tables.c.name, schema_tables.c.digest)).all())


def test_a_new_warehouse_is_made_and_recorded(engine_url):
    eng = engine(engine_url)
    ensure_schema(eng)
    assert _tables(eng) >= set(metadata.tables)
    recorded = _recorded(eng)
    assert set(recorded) == set(metadata.tables) | {"(outbox_pending triggers)"}
    assert all(len(d) == 64 for d in recorded.values())
    with eng.connect() as conn:
        assert len(_pending_triggers(conn)) == 4
    eng.dispose()


def test_a_recorded_warehouse_is_not_checked_again_until_a_row_says_so(engine_url):
    """Dropped by hand after it was recorded, a table stays dropped (the call trusts the record:
    that is the saving); once its row is gone, the next call checks and re-creates it."""
    eng = engine(engine_url)
    ensure_schema(eng)
    with eng.begin() as conn:
        conn.execute(sa.text("DROP TABLE link_flags"))
    ensure_schema(eng)
    assert "link_flags" not in _tables(eng), "a recorded schema is not checked again"
    with eng.begin() as conn:
        conn.execute(schema_tables.delete().where(schema_tables.c.name == "link_flags"))
    ensure_schema(eng)
    assert "link_flags" in _tables(eng)
    assert "link_flags" in _recorded(eng)
    eng.dispose()


def test_a_changed_definition_is_checked_and_recorded_again(engine_url):
    """A row recording another definition (an older Renkei's table) makes the next call check
    everything: the outbox triggers dropped meanwhile are installed again."""
    eng = engine(engine_url)
    ensure_schema(eng)
    with eng.begin() as conn:
        for name in sorted(_pending_triggers(conn)):
            conn.execute(sa.text(f"DROP TRIGGER {name} ON {_trigger_table(name)}" if conn.dialect.name == "postgresql"
                                 else f"DROP TRIGGER {name}"))
        conn.execute(schema_tables.update().where(schema_tables.c.name == notices.name).values(digest="0" * 64))
        assert not _pending_triggers(conn)
    ensure_schema(eng)
    with eng.connect() as conn:
        assert len(_pending_triggers(conn)) == 4
    assert _recorded(eng)[notices.name] != "0" * 64
    eng.dispose()


def _trigger_table(name: str) -> str:
    return "outbox_published" if name in ("renkei_pending_published", "renkei_pending_again") else "notices"


def test_an_index_declared_after_its_table_was_made_is_made_with_its_condition(engine_url):
    """create_all makes only new tables' indexes: a table made by an older Renkei (here: its
    partial index dropped and its row changed) gets the index the code declares now, partial
    condition included, and a count of unregistered ERKs uses it."""
    eng = engine(engine_url)
    ensure_schema(eng)
    with eng.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_linkage_unregistered"))
        conn.execute(schema_tables.update().where(schema_tables.c.name == linkage.name).values(digest="0" * 64))
    assert "ix_linkage_unregistered" not in {ix["name"] for ix in sa.inspect(eng).get_indexes("linkage")}
    ensure_schema(eng)
    with eng.connect() as conn:
        if conn.dialect.name == "postgresql":
            made = conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_linkage_unregistered'"))
            assert made.scalar_one().endswith("(erk) WHERE (in_registry IS FALSE)")
        else:
            made = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = 'ix_linkage_unregistered'"))
            assert made.scalar_one().endswith("(erk) WHERE in_registry IS 0")
            plan = conn.execute(sa.text("EXPLAIN QUERY PLAN SELECT count(DISTINCT erk) FROM linkage "
                                        "WHERE in_registry IS 0")).all()
            assert "ix_linkage_unregistered" in plan[-1][-1]
    eng.dispose()
