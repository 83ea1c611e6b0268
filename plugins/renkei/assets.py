"""Every Airflow Asset of Renkei, declared once and reused in outlets and schedules.

Imported only by DAG files (it needs Airflow's task SDK); the rest of the package never does.
"""

from __future__ import annotations

from airflow.sdk import Asset


def staging(source: str) -> Asset:
    """The validated staging table of one source."""
    return Asset(name=f"renkei_staging_{source}", uri=f"renkei://warehouse/staging/{source}", group="renkei")


MART_RESIDENTS = Asset(name="renkei_mart_residents", uri="renkei://warehouse/mart/residents", group="renkei")
OUTBOX_NOTICES = Asset(name="renkei_outbox_notices", uri="renkei://warehouse/outbox/notices", group="renkei")
