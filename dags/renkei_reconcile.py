"""Reconcile DAGs, one per departmental source: the export adapter's nightly full key diff.

Incremental exports read only rows whose change column moved; a deletion leaves no row to read
and a change stamped behind the adapter's position by more than the overlap is not in the window.
`reconcile_<source>` runs the adapter in reconcile mode on the source's `reconcile_cron`
(config/sources.yaml, 02:30 Asia/Tokyo by default) or on demand (trigger the DAG, or
`renkei pseudonymize --reconcile` at the department): it appends the tombstones and missed
changes and publishes a change event, which wakes `ingest_<source>`.

It runs inside the department boundary (RENKEI_RAW_DIR holds the raw tables), on the queue
RENKEI_DEPARTMENT_QUEUE (default `default`). Counts only travel through XCom.
"""

from __future__ import annotations

import os

from airflow.sdk import dag, task

from renkei.config import ingest_sources
from renkei.schedules import cron


def build_reconcile_dag(source_name: str, reconcile_cron: str):
    @dag(
        dag_id=f"reconcile_{source_name}",
        schedule=cron(reconcile_cron),
        catchup=False,
        max_active_runs=1,
        tags=["renkei", "department", source_name],
        doc_md=__doc__,
    )
    def reconcile():
        @task(queue=os.environ.get("RENKEI_DEPARTMENT_QUEUE", "default"))
        def reconcile_export() -> dict:
            from renkei.exports import reconcile_source

            return reconcile_source(source_name)

        reconcile_export()

    return reconcile()


for _source in ingest_sources():
    globals()[f"reconcile_{_source.name}"] = build_reconcile_dag(_source.name, _source.reconcile_cron)
