"""deliver_notices: send the outbox's notices to residents, with a receipt per attempt.

Runs when the outbox changes, and also hourly from 08:00 to 20:00 Asia/Tokyo: the outbox fills
at 06:00, inside quiet hours (21:00–08:00), so deferred notices and failed sends waiting out
their backoff need a later run. Runs in the registry's boundary: RENKEI_RAW_DIR (registry and
registry_contact), RENKEI_KEYRING (the link key), RENKEI_WAREHOUSE_URL, RENKEI_DELIVERY_URL.
Returns counts only (renkei.delivery.deliver).
"""

from __future__ import annotations

import os

from airflow.sdk import AssetOrTimeSchedule, dag, task

from renkei.assets import OUTBOX_NOTICES
from renkei.schedules import cron


@dag(
    schedule=AssetOrTimeSchedule(timetable=cron("0 8-20 * * *"), assets=[OUTBOX_NOTICES]),
    catchup=False,
    max_active_runs=1,
    tags=["renkei", "delivery"],
    doc_md=__doc__,
)
def deliver_notices():
    # Production runs delivery on its own Celery queue, on workers inside the registry boundary
    # (the only ones holding contacts); docker-compose.yaml sets RENKEI_DELIVERY_QUEUE=delivery.
    @task(queue=os.environ.get("RENKEI_DELIVERY_QUEUE", "default"))
    def send_notices() -> dict:
        from datetime import datetime, timezone

        from renkei.delivery.deliver import deliver_from_env

        # Quiet hours and backoff are about the wall clock when messages leave, not the run's date.
        return deliver_from_env(datetime.now(timezone.utc))

    send_notices()


deliver_notices()
