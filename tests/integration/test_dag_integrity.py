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
print("@@" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"), AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}")
    env.pop("RENKEI_WAREHOUSE_URL", None)
    out = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "dags")], env=env, capture_output=True, text=True, timeout=300)
    line = next((l for l in out.stdout.splitlines() if l.startswith("@@")), None)
    assert line, out.stderr[-2000:]
    return json.loads(line[2:])


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


def test_plugins_folder_hides_the_package_from_airflows_loader():
    # Airflow imports every .py under plugins/ as a top-level module unless ignored.
    assert (REPO / "plugins" / ".airflowignore").read_text().split() == ["renkei/"]
