"""Every Airflow Asset of Renkei, declared once and reused in outlets and schedules.

Imported only by DAG files (it needs Airflow's task SDK); the rest of the package never does.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias, AssetWatcher


def staging(source: str) -> Asset:
    """The validated staging table of one source."""
    return Asset(name=f"renkei_staging_{source}", uri=f"renkei://warehouse/staging/{source}", group="renkei")


def changes(source: str) -> Asset:
    """A source's change channel, watched by our durable trigger (config/channels.yaml)."""
    from renkei.events.trigger import watcher_trigger  # noqa: PLC0415 - only where DAGs are built

    return Asset(
        name=f"renkei_changes_{source}",
        uri=f"renkei://changes/{source}",
        group="renkei",
        watchers=[AssetWatcher(name=f"renkei_changes_{source}_watcher", trigger=watcher_trigger(source))],
    )


MART_RESIDENTS = Asset(name="renkei_mart_residents", uri="renkei://warehouse/mart/residents", group="renkei")
OUTBOX_NOTICES = Asset(name="renkei_outbox_notices", uri="renkei://warehouse/outbox/notices", group="renkei")
# A task that updates the outbox only in some runs (proactive_services.plan, when it evaluates a
# one-part run itself) declares this alias and adds OUTBOX_NOTICES to it when it did: an alias
# emits nothing when nothing was added, a declared asset would emit on every success.
OUTBOX_NOTICES_WHEN_DONE = AssetAlias(name="renkei_outbox_notices_when_done", group="renkei")
