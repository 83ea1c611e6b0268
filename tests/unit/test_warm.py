"""The task-forking Airflow processes import the tasks' heavy modules once (renkei.warm)."""

import os
import subprocess
import sys

import pytest

from renkei.warm import MODULES, forks_tasks

LOCAL = "LocalExecutor"


@pytest.mark.parametrize(("argv", "executor", "expected"), [
    (["airflow", "scheduler"], LOCAL, True),
    (["/venv/bin/airflow", "scheduler", "--skip-serve-logs"], "airflow.executors.local_executor.LocalExecutor", True),
    (["airflow", "scheduler"], "CeleryExecutor", False),  # the Celery scheduler forks no task
    (["airflow", "celery", "worker", "--queues", "delivery", "--concurrency", "1"], "CeleryExecutor", True),
    (["airflow", "celery", "flower"], "CeleryExecutor", False),
    (["airflow", "api-server", "--port", "8080"], LOCAL, False),
    (["airflow", "dag-processor"], LOCAL, False),
    (["airflow", "triggerer"], LOCAL, False),
    (["airflow", "db", "migrate"], LOCAL, False),
    (["airflow"], LOCAL, False),
])
def test_which_processes_preload(argv, executor, expected):
    assert forks_tasks(argv, executor) is expected


def _run(argv: list[str], **env) -> list[str]:
    """In a fresh interpreter: preload for ``argv``; which heavy modules are then imported."""
    code = (
        "import sys; from renkei.warm import preload; "
        f"preload({argv!r}, 'LocalExecutor'); "
        "print(' '.join(m for m in ('pandas', 'great_expectations', 'renkei.ingest') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=True)
    return done.stdout.split(), done.stderr


def test_a_scheduler_imports_every_module_and_says_so():
    imported, said = _run(["airflow", "scheduler"], RENKEI_PRELOAD="on")
    assert imported == ["pandas", "great_expectations", "renkei.ingest"]
    assert f"renkei preload: {len(MODULES)} of {len(MODULES)} modules" in said


@pytest.mark.parametrize(("argv", "env"), [
    (["airflow", "api-server"], {"RENKEI_PRELOAD": "on"}),
    (["airflow", "scheduler"], {"RENKEI_PRELOAD": "off"}),
])
def test_other_processes_and_the_off_switch_import_nothing(argv, env):
    imported, said = _run(argv, **env)
    assert imported == []
    assert "renkei preload" not in said
