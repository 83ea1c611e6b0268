"""What a DAG run is about: its evaluation date and id, derived from the Airflow context.

Asset-triggered runs in Airflow 3 have no logical date, so the date falls back to the run's
``run_after``; ``dag_run.conf["as_of"]`` overrides both (a backfill or `renkei run --as-of`).
Dates are taken in Asia/Tokyo: a run at 06:00 JST evaluates that Japanese calendar day.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

TOKYO = ZoneInfo("Asia/Tokyo")


def evaluation_date(context: dict) -> date:
    """The date D the run evaluates (conf ``as_of`` > logical date > run_after), in JST."""
    dag_run = context.get("dag_run")
    conf = (getattr(dag_run, "conf", None) or {}) if dag_run is not None else {}
    if conf.get("as_of"):
        return date.fromisoformat(str(conf["as_of"]))
    moment: datetime | None = context.get("logical_date") or getattr(dag_run, "run_after", None)
    if moment is None:
        raise ValueError("the run has neither a logical date nor run_after: pass conf {'as_of': 'YYYY-MM-DD'}")
    return moment.astimezone(TOKYO).date()


def started_by_event(context: dict) -> bool:
    """Whether an asset event started this run (a change on its way to a notice), not a
    schedule, a backfill or a person."""
    return context["dag_run"].run_type == "asset_triggered"


def run_key(context: dict) -> str:
    """A stable id of this DAG run (dag id + run id), used to tag rows the run writes."""
    return f"{context['dag'].dag_id}/{context['run_id']}"
