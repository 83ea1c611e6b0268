"""Change events: departments say "source X changed", Airflow wakes the ingest DAG.

``ChangeStreamTrigger`` is loaded on first use so that publishers (department adapters) can
``from renkei.events import publish`` without importing Airflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from renkei.events.channel import ChannelConfig, load_channel, publish
from renkei.events.message import ChangeEvent, ChangeEventError

if TYPE_CHECKING:
    from renkei.events.trigger import ChangeStreamTrigger

__all__ = ["ChangeEvent", "ChangeEventError", "ChangeStreamTrigger", "ChannelConfig", "load_channel", "publish"]


def __getattr__(name: str) -> object:
    if name == "ChangeStreamTrigger":
        from renkei.events.trigger import ChangeStreamTrigger  # noqa: PLC0415

        return ChangeStreamTrigger
    raise AttributeError(f"module 'renkei.events' has no attribute {name!r}")
