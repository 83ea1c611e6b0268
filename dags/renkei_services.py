"""proactive_services: evaluate the service rules (config/services/) into the notices outbox.

Runs when the mart changes and every day at 06:00 Asia/Tokyo, because windows open with the
calendar even when no data changed. Notice ids are deterministic, so a re-run adds nothing.
Emits renkei_outbox_notices with the counts.
Each run appends a `notice_published` entry (counts, new notice ids) to the audit trail.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from renkei.assets import MART_RESIDENTS, OUTBOX_NOTICES


@dag(
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 6 * * *", timezone="Asia/Tokyo"), assets=[MART_RESIDENTS]
    ),
    start_date=pendulum.datetime(2024, 1, 1, tz="Asia/Tokyo"),
    catchup=False,
    max_active_runs=1,
    tags=["renkei", "services"],
    doc_md=__doc__,
)
def proactive_services():
    @task(outlets=[OUTBOX_NOTICES])
    def evaluate_rules(**context) -> dict:
        from renkei.audit.records import record_notices_published
        from renkei.outputs.outbox import run_services
        from renkei.runctx import evaluation_date, run_key
        from renkei.settings import Settings

        url, as_of, run = Settings.from_env().warehouse_url, evaluation_date(context), run_key(context)
        counts = run_services(url, as_of, run)
        record_notices_published(url, run, as_of, counts)
        context["outlet_events"][OUTBOX_NOTICES].extra = counts
        return counts

    evaluate_rules()


proactive_services()
