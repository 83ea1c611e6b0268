"""Every time schedule of Renkei's DAGs, made in one place.

Imported only by DAG files (it needs Airflow's task SDK), like :mod:`renkei.assets`.

With catchup off, Airflow 3 still runs a cron schedule's latest past tick as soon as a DAG
appears: a new deployment would run every department's nightly reconcile, every sweep and the
daily services run at once, in its first minute. A Renkei DAG that has never run waits for its
next tick instead (``RENKEI_FIRST_SCHEDULED_RUN=next``, the default). ``latest`` keeps Airflow's
behaviour: the dev stack uses it to load its synthetic city at start. A DAG that has run before
is not affected either way: after an outage it runs the tick it missed, once.

Airflow honours this only for a DAG without a ``start_date`` (one is a lower bound that
overrides it), so the cron-scheduled DAGs set none.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronTriggerTimetable

from renkei.settings import first_scheduled_run_latest

TIMEZONE = "Asia/Tokyo"


def cron(expression: str) -> CronTriggerTimetable:
    """Runs at each tick of ``expression`` (Asia/Tokyo); the first run as set by
    ``RENKEI_FIRST_SCHEDULED_RUN``."""
    # run_immediately=False is not "never" in Airflow 3.3: it runs a tick less than a tenth of the
    # schedule's period ago (at least 5 minutes): a zero window is.
    latest = first_scheduled_run_latest()
    return CronTriggerTimetable(expression, timezone=TIMEZONE, run_immediately=True if latest else timedelta(0))
