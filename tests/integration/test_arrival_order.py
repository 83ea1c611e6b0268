"""A first load in any order is clean (issue #13): the departments of a new city (or a restored
warehouse) finish their first exports in their own order, and the review queue never holds a
finding that only reflects that order.

The hand-built city of test_integrity_near_miss.py (twins, same-name neighbours, a registry typo,
a mistyped resident code …) is exported and loaded source by source through the real chain —
each step is ``ingest_<source>`` for the sources that arrive, then ``link_residents`` and
``proactive_services``, as Airflow DAG runs (every run must end in success, also while sources
have never loaded) — in three orders, on SQLite and PostgreSQL.

Oracle, by hand: before the registry has loaded there is no finding at all (every finding
compares with a registry row, or says there is none); once it has, the queue holds exactly the
hand-determined findings (test_integrity_near_miss: the true mislinks and ミオ's registry typo)
of the departments loaded so far — nothing more, nothing resolved, in every order.

And the services: a service is evaluated only once the registry and the sources its rules read
have loaded (an infant whose immunization records have not arrived is not an infant without
doses), so no notice is ever drafted from half a city: none is withdrawn or superseded on the
way, and once everything has arrived the infants get their immunization notices.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from department_steps import export_and_run, write_csv
from test_integrity_near_miss import CHILD_HEALTH, D, IMMUNIZATION, MIO_BEFORE_CORRECTION, NHI, _mislinks, _registry_rows

from renkei.config import ingest_sources
from renkei.linkage.audit import PENDING
from renkei.linkage.review import list_items
from renkei.outputs.outbox import SERVICE_SOURCES
from renkei.warehouse import engine, ensure_schema, notice_events, notices

pytestmark = pytest.mark.airflow

ORDERS = {
    "registry_last": [["immunization"], ["child_health", "nhi"], ["registry"]],
    "registry_first": [["registry"], ["immunization", "child_health", "nhi"]],
    "interleaved": [["nhi"], ["registry"], ["immunization", "child_health"]],
}


def _expected(ring, loaded: set[str]) -> set[tuple[str, str, str]]:
    """The hand-determined findings of the departments loaded so far (none without the registry)."""
    if "registry" not in loaded:
        return set()
    return {f for f in _mislinks(ring) | MIO_BEFORE_CORRECTION if f[0] in loaded}


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("engine_name", ["sqlite", "postgresql"])
def test_first_loads_in_any_order_raise_only_the_true_findings(order, engine_name, tmp_path, request):
    from renkei.keys.ring import KeyRing
    from renkei.runner import airflow_env

    raw, work = tmp_path / "raw", (tmp_path / "work").resolve()
    drops = {"registry": _registry_rows(corrected=False), "immunization": IMMUNIZATION,
             "child_health": CHILD_HEALTH, "nhi": NHI}
    for src in ingest_sources():
        write_csv(raw, src.name, drops.get(src.name, []))
    keyring = KeyRing.generate().save(tmp_path / "keyring.json")
    ring = KeyRing.load(keyring)
    url = request.getfixturevalue("pg_factory")() if engine_name == "postgresql" else f"sqlite:///{work / 'warehouse.db'}"
    (work / "logs").mkdir(parents=True)
    eng = engine(url)
    ensure_schema(eng)
    eng.dispose()
    env = airflow_env(work, url, f"sqlite:///{work / 'extracts.db'}", keyring.resolve())
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env, check=True,
                   capture_output=True)

    loaded: set[str] = set()
    for step, sources in enumerate(ORDERS[order]):
        # ingest, link and services for the sources that arrive now; export_and_run asserts success
        export_and_run(raw, work, url, keyring, D, sources, at=f"{7 + step:02d}:00", serve=True)
        loaded |= set(sources)
        every = list_items(url, include_resolved=True)  # resolved items too: none may have been raised
        assert {(i["source"], i["record_key"], i["reason"]) for i in every} == _expected(ring, loaded), \
            f"{order}, after {sorted(loaded)}"
        assert all(i["active"] and i["state"] == PENDING for i in every)

        served, moved = _notices(url)
        ready = {s for s, needs in SERVICE_SOURCES.items() if {"registry", *needs} <= loaded}
        assert served <= ready and moved == 0, f"{order}, after {sorted(loaded)}: {served} notices, {moved} moved"
    assert "immunization" in served  # everything arrived: the infants are served


def _notices(url: str) -> tuple[set[str], int]:
    """The services that have notices in the outbox, and how many lifecycle transitions there are."""
    eng = engine(url)
    with eng.connect() as conn:
        served = set(conn.execute(sa.select(notices.c.service).distinct()).scalars())
        moved = conn.execute(sa.select(sa.func.count()).select_from(notice_events)).scalar_one()
    eng.dispose()
    return served, moved


def test_an_empty_sweep_of_the_registry_is_not_its_first_load(tmp_path):
    """A sweep before the registry's first export loads no row: not_in_registry is still not
    judged (at 1M it raised 361,414 findings for the departments that arrived first)."""
    from renkei.linkage.audit import has_loaded
    from renkei.warehouse import ingest_runs

    url = f"sqlite:///{tmp_path / 'wh.db'}"
    eng = engine(url)
    ensure_schema(eng)
    stamp = "2026-12-04T09:00:00+09:00"
    with eng.begin() as conn:
        conn.execute(ingest_runs.insert().values(run_id="sweep", source="registry", state="loaded", loaded=0,
                                                 updated_at=stamp))
        assert has_loaded(conn, "registry"), "an empty run is a load for the services (a source may hold none)"
        assert not has_loaded(conn, "registry", with_rows=True), "but no registry row has arrived: nothing is judged against it"
        conn.execute(ingest_runs.insert().values(run_id="first", source="registry", state="loaded", loaded=3,
                                                 updated_at=stamp))
        assert has_loaded(conn, "registry", with_rows=True)
    eng.dispose()
