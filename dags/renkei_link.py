"""link_residents: rebuild the linked mart (one row per ERK) when any staging table changes.

A build first lets a wave of changes settle: it waits (at most RENKEI_LINK_SETTLE_S, 5 s) while a
sibling ingest is between extract and load; in a city's first load, while a source that never
loaded a row is being ingested, the run is skipped — that ingest's load starts the build that
links the city (renkei.linkage.settle); a run whose staging events the build before already
consumed builds nothing and is skipped (no mart event, so no services run). Set-based SQL over staging
(renkei.linkage.mart): residents, counted doses, which departments
contributed, and department copies that disagree with the registry. Emits renkei_mart_residents.
Each build appends a `linkage_run` entry (counts, key versions) to the audit trail.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetAny, dag, task

from renkei.assets import MART_RESIDENTS, staging
from renkei.config import ingest_sources


@dag(
    schedule=AssetAny(*[staging(s.name) for s in ingest_sources()]),
    start_date=pendulum.datetime(2024, 1, 1, tz="Asia/Tokyo"),
    catchup=False,
    max_active_runs=1,
    tags=["renkei", "linkage"],
    doc_md=__doc__,
)
def link_residents():
    @task(outlets=[MART_RESIDENTS])
    def build_mart(**context) -> dict:
        from renkei.audit.records import record_linkage_run
        from renkei.linkage.mart import build_mart as run_build
        from airflow.sdk.exceptions import AirflowSkipException

        from renkei.linkage.settle import first_loads_running, settle_seconds, wait_for_ingests
        from renkei.runctx import evaluation_date, run_key, started_by_event
        from renkei.settings import Settings

        ti = context["ti"]

        def running(sources: list[str]) -> list[str]:
            return [s for s in sources if ti.get_dr_count(dag_id=f"ingest_{s}", states=["queued", "running"])]

        url, as_of, run = Settings.from_env().warehouse_url, evaluation_date(context), run_key(context)
        arriving = first_loads_running(url, [s.name for s in ingest_sources()], running)
        if arriving:  # a city's first load is linked once: their loads start the next build
            raise AirflowSkipException(f"the first loads of {', '.join(arriving)} are running; "
                                       "the build after them links the city")
        wait_for_ingests(url, settle_seconds())  # one build for a wave of changes across sources
        # A run queued by a staging event the build before already consumed: nothing to link, and
        # no mart event (so no services run). A run started by hand builds.
        counts = run_build(url, as_of, run, skip_unchanged=started_by_event(context))
        if counts["mode"] == "unchanged":
            raise AirflowSkipException(f"no ingest run since build {counts['build_seq']}: the mart is unchanged")
        record_linkage_run(url, run, as_of, counts)
        context["outlet_events"][MART_RESIDENTS].extra = counts
        return counts

    build_mart()


link_residents()
