"""Letting a wave of department changes settle before a link build.

Departments change records at about the same time (a birth is registered and the newborn's
first dose recorded; a move touches the registry and a subscription), and each source's ingest
ends on its own. The link DAG starts on the first staging asset: a build started while a
sibling ingest is still loading links that wave twice — two builds, two services runs, two
relays — and the resident's notice arrives a whole round later. So a build first waits, for at
most ``RENKEI_LINK_SETTLE_S`` seconds (default 5; 0: never), while an ingest run is *in flight*:
extracted or validated, not yet loaded, and at that step for less than the bound (a run whose
load failed stays ``validated``; it must not hold every build). A long load (a city's first)
is not waited for: the next build takes it.

A city's **first load** (a new deployment, a restore) is the exception: while a source that has
never loaded a row has an ingest run queued or running, a build is not worth making — nothing
needs a partial city (the services wait for their sources' first loads, renkei.outputs.outbox),
every source's first load makes a full build, and that ingest's own load starts the next build
when it ends. :func:`first_loads_running` names them; the link task then skips its run. Linked
as each department finished, a million-resident city was built in full five times over, each
build competing for the CPU with the ingests still running.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from renkei.errors import ConfigError
from renkei.linkage.audit import has_loaded
from renkei.warehouse import engine, ingest_runs

log = logging.getLogger(__name__)

ENV = "RENKEI_LINK_SETTLE_S"
DEFAULT_S = 5.0
IN_FLIGHT = ("extracted", "validated")


def settle_seconds(env: dict | None = None) -> float:
    """The bound from ``RENKEI_LINK_SETTLE_S`` (0–60 seconds)."""
    raw = (os.environ if env is None else env).get(ENV, str(DEFAULT_S))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 60:
        raise ConfigError(f"{ENV}={raw!r}: give the seconds a link build waits for ingests in flight, 0 to 60")
    return value


def never_loaded(conn: sa.Connection, sources: list[str]) -> list[str]:
    """The ``sources`` that have not loaded a row (renkei.linkage.audit.has_loaded with rows: a
    sweep before a department's first export loads none, and is not a first load)."""
    if not sa.inspect(conn).has_table(ingest_runs.name):
        return sorted(sources)
    return sorted(s for s in sources if not has_loaded(conn, s, with_rows=True))


def first_loads_running(warehouse_url: str, sources: list[str], running: Callable[[list[str]], list[str]]) -> list[str]:
    """The sources whose first load is under way: never loaded a row, and ``running(names)``
    (in a task: Airflow's count of the source's queued or running ingest DAG runs) says an
    ingest of theirs is queued or running now."""
    eng = engine(warehouse_url)
    try:
        with eng.connect() as conn:
            waiting = never_loaded(conn, sources)
    finally:
        eng.dispose()
    return sorted(running(waiting)) if waiting else []


def in_flight(conn: sa.Connection, bound_s: float, now: datetime | None = None) -> list[str]:
    """Sources with an ingest run extracted or validated within the last ``bound_s`` seconds."""
    now = now or datetime.now(timezone.utc)
    # updated_at is whole seconds of JST text: one more second so a run just stamped counts
    since = now - timedelta(seconds=bound_s + 1)
    rows = conn.execute(sa.select(ingest_runs.c.source, ingest_runs.c.updated_at)
                        .where(ingest_runs.c.state.in_(IN_FLIGHT))).all()
    return sorted({source for source, stamp in rows if datetime.fromisoformat(stamp) >= since})


def wait_for_ingests(warehouse_url: str, bound_s: float, poll_s: float = 0.1,
                     clock: Callable[[], float] = time.monotonic) -> dict:
    """Wait while an ingest run is in flight, at most ``bound_s`` seconds; returns
    ``{"waited_s", "in_flight"}`` (the sources still in flight when it stopped waiting)."""
    started = clock()
    if bound_s <= 0:
        return {"waited_s": 0.0, "in_flight": []}
    # Recent as of the start of the wait: a run in flight then is waited for until it is loaded
    # or the bound is reached, however long the wait has lasted so far.
    as_of = datetime.now(timezone.utc)
    eng = engine(warehouse_url)
    try:
        while True:
            with eng.connect() as conn:
                if not sa.inspect(conn).has_table(ingest_runs.name):
                    return {"waited_s": 0.0, "in_flight": []}
                busy = in_flight(conn, bound_s, now=as_of)
            waited = clock() - started
            if not busy or waited >= bound_s:
                break
            time.sleep(poll_s)
    finally:
        eng.dispose()
    if waited >= poll_s:
        log.info("link: waited %.1fs for ingests in flight%s", waited,
                 f"; building without {', '.join(busy)} (still loading)" if busy else "")
    return {"waited_s": round(waited, 2), "in_flight": busy}
