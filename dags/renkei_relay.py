"""relay_notices: publish new outbox notices to the notices stream (docs/EVENTS.md).

Runs when proactive_services writes the outbox and every 5 minutes, so that notices left behind
by a broker outage are caught up soon after Redis is back; batches of RELAY_BATCH notices. At-least-once: consumers drop
duplicates by notice_id. The task fails while Redis is unreachable (nothing is recorded then).
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, dag, task

from renkei.assets import OUTBOX_NOTICES
from renkei.schedules import cron

# Notices per published batch (one MULTI/EXEC, then one recording transaction): a whole city's
# first evaluation (~480,000 notices) goes out in 24 pages; one change's few notices in one.
RELAY_BATCH = 20_000


@dag(
    schedule=AssetOrTimeSchedule(timetable=cron("*/5 * * * *"), assets=[OUTBOX_NOTICES]),
    catchup=False,
    max_active_runs=1,
    tags=["renkei", "relay"],
    doc_md=__doc__,
)
def relay_notices():
    @task
    def relay() -> dict:
        from renkei.errors import RenkeiError
        from renkei.outputs.relay import relay_notices as run_relay
        from renkei.settings import Settings

        counts = run_relay(Settings.from_env().warehouse_url, batch=RELAY_BATCH)
        if counts.get("errors"):
            raise RenkeiError(counts["error"])
        return counts

    relay()


relay_notices()
