"""Importing what Renkei's tasks need once, in the process that forks the task processes.

An Airflow task process is forked (LocalExecutor: scheduler → worker → supervisor → task;
CeleryExecutor: ``airflow celery worker`` → pool process → supervisor → task). Whatever the
forking process has imported, every task inherits for free and shares copy-on-write; whatever
it has not, each task imports again: Great Expectations alone costs 2–3 CPU seconds a task,
more than an incremental extract of a few hundred rows does with it. So the processes that
fork tasks import these modules at start (through ``airflow_local_settings``, which Airflow
imports in every component); the api-server, triggerer and DAG processor do not.

``RENKEI_PRELOAD=off`` turns it off (e.g. to measure what it saves).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Sequence

ENV = "RENKEI_PRELOAD"
# Heavy third-party packages first, then the task modules that import them.
MODULES = (
    "pandas",
    "great_expectations",
    "great_expectations.expectations",
    "renkei.ingest",
    "renkei.quality.gx_runner",
    "renkei.quality.datadocs",
    "renkei.linkage.mart",
    "renkei.linkage.review",
    "renkei.outputs.outbox",
    "renkei.outputs.relay",
    "renkei.outputs.contacts",
    "renkei.outputs.services_run",
    "renkei.audit.records",
    "renkei.delivery.deliver",
)


def forks_tasks(argv: Sequence[str], executor: str) -> bool:
    """Whether this Airflow command is a process that forks task processes."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    if words[:2] == ["celery", "worker"]:
        return True
    return words[:1] == ["scheduler"] and executor.rsplit(".", 1)[-1] == "LocalExecutor"


def preload(argv: Sequence[str], executor: str) -> list[str]:
    """Import :data:`MODULES` when this process forks tasks; returns the modules imported.

    A module that fails to import is skipped (logged with its error type): the task that
    needs it imports it itself and reports the error where it belongs."""
    if os.environ.get(ENV, "on").lower() in ("off", "0", "false", "no") or not forks_tasks(argv, executor):
        return []
    started = time.perf_counter()
    done = []
    for name in MODULES:
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception as error:  # noqa: BLE001 - a warm-up must never stop the scheduler or worker
            _say(f"renkei preload: {name} not imported ({type(error).__name__}); the tasks import it themselves")
    templates = _warm_templates() if "renkei.quality.datadocs" in done else 0
    _say(f"renkei preload: {len(done)} of {len(MODULES)} modules and {templates} Data Docs templates in "
         f"{time.perf_counter() - started:.1f}s, shared by the task processes this process forks")
    return done


def _warm_templates() -> int:
    """Compile GX's Data Docs templates once here (renkei.quality.datadocs.warm_templates): each
    build compiled them again, some seconds of every extract. Not when Data Docs are off."""
    from renkei.quality import datadocs  # noqa: PLC0415

    try:
        return datadocs.warm_templates() if datadocs.location() is not None else 0
    except Exception as error:  # noqa: BLE001 - a warm-up must never stop the scheduler or worker
        _say(f"renkei preload: Data Docs templates not compiled ({type(error).__name__}); each build compiles them")
        return 0


def _say(line: str) -> None:
    # Airflow imports this before it configures logging: straight to the component's stderr.
    print(line, file=sys.stderr, flush=True)
