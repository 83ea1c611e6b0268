"""A link build lets a wave of changes settle: it waits, boundedly, for sibling ingests between
extract and load (renkei.linkage.settle), on SQLite and PostgreSQL."""

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from renkei.errors import ConfigError
from renkei.linkage.settle import first_loads_running, never_loaded, settle_seconds, wait_for_ingests
from renkei.sources.values import format_timestamp
from renkei.warehouse import engine, ensure_schema, ingest_runs


@pytest.fixture
def url(engine_url):
    eng = engine(engine_url)
    ensure_schema(eng)
    eng.dispose()
    return engine_url


def _run(url, source, state, ago_s=0.0, run_id="r1", loaded=0):
    eng = engine(url)
    ensure_schema(eng)
    stamp = format_timestamp(datetime.now(timezone.utc) - timedelta(seconds=ago_s))
    with eng.begin() as conn:
        conn.execute(ingest_runs.delete().where(ingest_runs.c.source == source))
        conn.execute(ingest_runs.insert().values(run_id=run_id, source=source, state=state, updated_at=stamp,
                                                 loaded=loaded))
    eng.dispose()


def _set_state(url, source, state, after_s):
    def later():
        time.sleep(after_s)
        eng = engine(url)
        with eng.begin() as conn:
            conn.execute(ingest_runs.update().where(ingest_runs.c.source == source).values(state=state))
        eng.dispose()
    t = threading.Thread(target=later)
    t.start()
    return t


def test_waits_until_the_sibling_ingest_has_loaded(url):
    _run(url, "immunization", "loaded")
    _run(url, "registry", "validated")  # its load is running now
    loads = _set_state(url, "registry", "loaded", after_s=1.0)
    started = time.monotonic()
    done = wait_for_ingests(url, bound_s=10)
    loads.join()
    assert done["in_flight"] == []
    assert 0.9 <= time.monotonic() - started < 5, "returned before the load ended, or long after it"


def test_stops_waiting_at_the_bound_and_names_what_is_still_loading(url):
    _run(url, "registry", "extracted")  # a long first load: never ends within the bound
    started = time.monotonic()
    done = wait_for_ingests(url, bound_s=1.0)
    assert done["in_flight"] == ["registry"]
    assert 1.0 <= time.monotonic() - started < 3


def test_a_run_stuck_at_validated_long_ago_holds_nothing(url):
    _run(url, "nhi", "validated", ago_s=120)  # its load failed two minutes ago
    _run(url, "events", "failed")  # halted by validation: not in flight
    started = time.monotonic()
    done = wait_for_ingests(url, bound_s=5)
    assert done["in_flight"] == [] and done["waited_s"] < 0.5
    assert time.monotonic() - started < 1


def test_an_empty_warehouse_and_zero_never_wait(tmp_path):
    fresh = f"sqlite:///{tmp_path / 'none.db'}"
    assert wait_for_ingests(fresh, bound_s=5) == {"waited_s": 0.0, "in_flight": []}
    assert not sa.inspect(sa.create_engine(fresh)).has_table("ingest_runs"), "waiting must create nothing"
    assert wait_for_ingests(fresh, bound_s=0) == {"waited_s": 0.0, "in_flight": []}


@pytest.mark.parametrize(("raw", "expected"), [("5", 5.0), ("0", 0.0), ("2.5", 2.5), ("60", 60.0)])
def test_the_bound_from_the_environment(raw, expected):
    assert settle_seconds({"RENKEI_LINK_SETTLE_S": raw}) == expected
    assert settle_seconds({}) == 5.0


@pytest.mark.parametrize("raw", ["-1", "61", "soon", ""])
def test_a_bad_bound_names_the_setting(raw):
    with pytest.raises(ConfigError, match="RENKEI_LINK_SETTLE_S"):
        settle_seconds({"RENKEI_LINK_SETTLE_S": raw})


SOURCES = ["registry", "immunization", "child_health", "nhi", "subscriptions", "events"]


def test_a_first_load_is_one_that_never_loaded_a_row(url):
    _run(url, "registry", "loaded", loaded=1000)
    _run(url, "nhi", "loaded", loaded=0)  # a sweep before the department's first export
    _run(url, "immunization", "validated")  # its first load under way
    eng = engine(url)
    with eng.connect() as conn:
        assert never_loaded(conn, SOURCES) == ["child_health", "events", "immunization", "nhi", "subscriptions"]
    eng.dispose()


def test_the_build_is_skipped_only_while_a_first_load_runs(url):
    _run(url, "registry", "loaded", loaded=1000)
    _run(url, "immunization", "loaded", loaded=500)
    asked = []

    def running(sources):  # Airflow's answer: which of these have an ingest DAG run going
        asked.append(sorted(sources))
        return [s for s in sources if s in ("nhi", "registry")]

    # registry is being ingested again (not a first load); nhi's first load is running
    assert first_loads_running(url, SOURCES, running) == ["nhi"]
    assert asked == [["child_health", "events", "nhi", "subscriptions"]], "only never-loaded sources are asked about"
    for s in ("child_health", "events", "nhi", "subscriptions"):
        _run(url, s, "loaded", loaded=1, run_id=f"r-{s}")
    assert first_loads_running(url, SOURCES, running) == []
    assert len(asked) == 1, "with every source loaded Airflow is not asked"
