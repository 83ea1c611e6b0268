"""Ingest DAGs, one per departmental source in config/sources.yaml.

    extract (rows changed since the watermark → landing)
      → validate (GX suite expectations/<source>.json; failing rows marked with their reason)
      → load (dept pseudonym → ERK in memory; staging upsert, quarantine, watermark; one transaction)
      → outlet Asset renkei_staging_<source> with the counts in its event's extra

Scheduled on events *and* time: a change event on the source's durable channel (an Asset with
an AssetWatcher over renkei's ChangeStreamTrigger) or the sweep cron of config/sources.yaml,
whichever comes first. A message is only a wake-up: every run reads from the persisted
watermark, so a run picks up everything changed, the sweep bounds the delay of an event lost or
stranded, and max_active_runs=1 keeps a burst from starting runs that fight over the watermark.
Only counts travel through XCom.
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, dag, task

from renkei.assets import changes, staging
from renkei.config import ingest_sources
from renkei.schedules import cron


def build_ingest_dag(source_name: str, sweep_cron: str):
    asset = staging(source_name)

    @dag(
        dag_id=f"ingest_{source_name}",
        schedule=AssetOrTimeSchedule(timetable=cron(sweep_cron), assets=[changes(source_name)]),
        catchup=False,
        max_active_runs=1,  # runs of one source never fight over its watermark
        tags=["renkei", "ingest", source_name],
        doc_md=__doc__,
    )
    def ingest():
        @task
        def extract(**context) -> dict:
            from renkei.config import load_sources
            from renkei.ingest import extract as run_extract
            from renkei.runctx import run_key

            return run_extract(load_sources()[source_name], run_key(context))

        @task
        def validate(extracted: dict, **context) -> dict:
            from renkei.config import load_sources
            from renkei.ingest import validate as run_validate
            from renkei.runctx import run_key

            return run_validate(load_sources()[source_name], run_key(context))

        @task(outlets=[asset])
        def load(validated: dict, **context) -> dict:
            from renkei.config import load_sources
            from renkei.ingest import load as run_load
            from renkei.keys.ring import KeyRing
            from renkei.runctx import run_key

            counts = run_load(load_sources()[source_name], run_key(context), KeyRing.load())
            counts["failed_validation"] = validated["failed"]
            context["outlet_events"][asset].extra = counts
            return counts

        load(validate(extract()))

    return ingest()


for _source in ingest_sources():
    globals()[f"ingest_{_source.name}"] = build_ingest_dag(_source.name, _source.sweep_cron)
