"""Every DAG imports cleanly, cheaply, and as the data flow says (the model: Airflow's own
test_example_dags). Parsing runs in a fresh interpreter so that imports are observable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.airflow

PROBE = r"""
import json, sys, socket
opened = []
_real = socket.socket.connect
def _spy(self, addr):
    opened.append(str(addr))
    return _real(self, addr)
socket.socket.connect = _spy
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {
    "errors": {k: str(v)[-400:] for k, v in bag.import_errors.items()},
    "dags": {d.dag_id: {"tags": sorted(d.tags), "tz": str(d.timezone), "catchup": d.catchup,
                        "tasks": [t.task_id for t in d.tasks], "max_active_runs": d.max_active_runs}
             for d in bag.dags.values()},
    "heavy": [m for m in ("great_expectations", "pandas", "renkei.ingest", "renkei.linkage.mart") if m in sys.modules],
    "connections": opened,
}
# When the scheduler would make each DAG's first scheduled run, from the DAG as it serializes it:
# for a DAG that never ran, and for one whose last run was two days ago (a restart after an outage).
from datetime import timedelta
from airflow._shared.timezones.timezone import coerce_datetime, utcnow
from airflow.serialization.serialized_objects import DagSerialization
from airflow.timetables.base import DagRunInfo
now = coerce_datetime(utcnow())
ran = DagRunInfo.interval(now - timedelta(days=2, minutes=1), now - timedelta(days=2, minutes=1))
first = {}
for d in bag.dags.values():
    sdag = DagSerialization.from_dict(DagSerialization.to_dict(d))
    never, outage = (sdag.next_dagrun_info(last_automated_run_info=last) for last in (None, ran))
    if never is not None or outage is not None:
        first[d.dag_id] = {k: None if v is None else (v.run_after - now).total_seconds()
                           for k, v in (("never_ran", never), ("after_outage", outage))}
out["first_run_in_s"] = first
print("@@" + json.dumps(out))
"""


def _parse(home: Path, **extra: str) -> dict:
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"), AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
               AIRFLOW__CORE__DEFAULT_TIMEZONE="Asia/Tokyo")  # as docker-compose.yaml and runner set it
    env.pop("RENKEI_WAREHOUSE_URL", None)
    env.pop("RENKEI_FIRST_SCHEDULED_RUN", None)
    env.update(extra)
    out = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "dags")], env=env, capture_output=True, text=True, timeout=300)
    line = next((l for l in out.stdout.splitlines() if l.startswith("@@")), None)
    assert line, out.stderr[-2000:]
    return json.loads(line[2:])


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    return _parse(tmp_path_factory.mktemp("airflow_home"))


def test_no_import_errors(parsed):
    assert parsed["errors"] == {}


def test_one_ingest_dag_per_configured_source_plus_chain(parsed):
    from renkei.config import ingest_sources

    expected = ({f"ingest_{s.name}" for s in ingest_sources()} | {f"reconcile_{s.name}" for s in ingest_sources()}
                | {"link_residents", "proactive_services", "relay_notices", "deliver_notices", "renkei_rotate_link_key",
                   "apply_review_decisions"})
    assert set(parsed["dags"]) == expected
    assert parsed["dags"]["renkei_rotate_link_key"]["tasks"] == ["start", "reseal", "finish"]
    for s in ingest_sources():
        assert parsed["dags"][f"ingest_{s.name}"]["tasks"] == ["extract", "validate", "load"]
        assert parsed["dags"][f"reconcile_{s.name}"]["tasks"] == ["reconcile_export"]


def test_dags_state_schedule_basics(parsed):
    for dag_id, d in parsed["dags"].items():
        assert "renkei" in d["tags"], dag_id
        assert d["tz"] in ("Asia/Tokyo", "Timezone('Asia/Tokyo')"), (dag_id, d["tz"])
        assert d["catchup"] is False
        assert d["max_active_runs"] == 1


def test_parsing_is_cheap(parsed):
    assert parsed["heavy"] == [], f"heavy modules imported at parse time: {parsed['heavy']}"
    assert parsed["connections"] == [], f"parsing opened connections: {parsed['connections']}"


@pytest.mark.parametrize("syntax", ["glob", "regexp"])
def test_plugins_folder_hides_its_python_from_airflows_loader(syntax):
    """Airflow's plugin loader executes every .py it finds under plugins/ as a top-level plugin
    module, in every process that loads plugins (each task process too): the renkei package is
    imported as a package, and airflow_local_settings.py is Airflow's local settings (test_warm)."""
    from airflow.utils.file import find_path_from_directory

    found = find_path_from_directory(str(REPO / "plugins"), ".airflowignore", syntax)
    assert [p for p in found if p.endswith(".py")] == []


CRON_DAGS = ("ingest_", "reconcile_", "proactive_services", "relay_notices", "deliver_notices", "apply_review_decisions")


def test_a_new_deployment_waits_for_each_schedules_next_tick(parsed):
    """Airflow 3 runs a cron schedule's latest past tick as soon as a DAG appears (catchup off):
    every nightly reconcile and sweep at once on a new deployment's first minute. By default a
    Renkei DAG that never ran waits for its next tick; one that ran before still runs the tick
    it missed during an outage."""
    first = parsed["first_run_in_s"]
    assert {d for d in parsed["dags"] if d.startswith(CRON_DAGS)} == set(first)
    for dag_id, t in first.items():
        assert t["never_ran"] > 0, (dag_id, t)
        assert t["after_outage"] <= 0, (dag_id, t)


def test_latest_runs_the_latest_past_tick_at_once(tmp_path):
    first = _parse(tmp_path, RENKEI_FIRST_SCHEDULED_RUN="latest")["first_run_in_s"]
    assert first and all(t["never_ran"] <= 0 and t["after_outage"] <= 0 for t in first.values()), first


def test_an_unknown_first_run_setting_is_an_import_error_that_names_the_fix(tmp_path):
    errors = _parse(tmp_path, RENKEI_FIRST_SCHEDULED_RUN="soon")["errors"]
    assert errors and all("set `next`" in e and "`latest`" in e for e in errors.values()), errors
