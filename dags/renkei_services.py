"""proactive_services: evaluate the service rules (config/services/) into the notices outbox.

Runs when the mart changes and every day at 06:00 Asia/Tokyo, because windows open with the
calendar even when no data changed. Notice ids are deterministic, so a re-run adds nothing.

plan → evaluate (mapped: a full run on PostgreSQL is split by ERK hash into
RENKEI_SERVICES_PARTS parts that run side by side; each writes its own new notices) → record
(once every part succeeded: the base of the next incremental run). A one-part run (incremental,
or any on SQLite) is evaluated and recorded by plan itself; evaluate and record are then skipped
(renkei.outputs.services_run); started by a change, it also publishes them to the notices
stream at once (relay_notices, run by the event, then finds them published). Emits renkei_outbox_notices
with the counts — after storing a contact token for each newly notified resident
(renkei.outputs.contacts: what delivery opens instead of the ERK), so a delivery run that the
asset starts finds every token it needs. Each run appends a `notice_published` entry (counts, new notice ids) to the
audit trail.
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, dag, task

from renkei.assets import MART_RESIDENTS, OUTBOX_NOTICES, OUTBOX_NOTICES_WHEN_DONE
from renkei.schedules import cron


@dag(
    schedule=AssetOrTimeSchedule(timetable=cron("0 6 * * *"), assets=[MART_RESIDENTS]),
    catchup=False,
    max_active_runs=1,
    tags=["renkei", "services"],
    doc_md=__doc__,
)
def proactive_services():
    @task(outlets=[OUTBOX_NOTICES_WHEN_DONE])
    def plan(**context) -> list[dict]:
        """One item per part to evaluate, each carrying the whole plan (counts and ids only). A
        one-part run (incremental, or any on SQLite) is evaluated and recorded right here — two
        task starts fewer between a change and its notice: it maps evaluate over no part (so
        evaluate and record are skipped) and emits renkei_outbox_notices through its alias.
        Started by a change (a mart event), it also publishes its notices to the stream itself."""
        from renkei.outputs.outbox import evaluate_part, plan_services
        from renkei.outputs.services_run import finish_run, relay_at_once
        from renkei.runctx import evaluation_date, run_key, started_by_event
        from renkei.settings import Settings, services_parts

        url = Settings.from_env().warehouse_url
        planned = plan_services(url, evaluation_date(context), run_key(context), parts=services_parts())
        if planned["parts"] == 1:
            counts = finish_run(url, planned, [evaluate_part(url, planned, 0)])
            if started_by_event(context):  # a change on its way to its notice
                counts["relay"] = relay_at_once(url)
            context["outlet_events"][OUTBOX_NOTICES_WHEN_DONE].add(OUTBOX_NOTICES, extra=counts)
            return []
        return [{"index": i, "plan": planned} for i in range(planned["parts"])]

    @task
    def evaluate(part: dict) -> dict:
        from renkei.outputs.outbox import evaluate_part
        from renkei.settings import Settings

        return evaluate_part(Settings.from_env().warehouse_url, part["plan"], part["index"])

    @task(outlets=[OUTBOX_NOTICES])
    def record(parts: list[dict], evaluated: list[dict], **context) -> dict:
        from renkei.outputs.services_run import finish_run
        from renkei.settings import Settings

        counts = finish_run(Settings.from_env().warehouse_url, parts[0]["plan"], list(evaluated))
        context["outlet_events"][OUTBOX_NOTICES].extra = counts
        return counts

    parts = plan()
    record(parts, evaluate.expand(part=parts))


proactive_services()
