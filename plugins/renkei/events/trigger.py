"""ChangeStreamTrigger: the durable Airflow event trigger that turns change events into asset events.

Delivery is at-least-once. For ``redis_stream`` the trigger reads its source's stream through a
consumer group and XACKs a message only after ``yield TriggerEvent`` has returned, i.e. after
the triggerer took the event; on every (re)start it first re-reads its own pending entries
(delivered, never acked: a crash or cancel between yield and ack), so nothing published is
lost while the triggerer is down. Duplicates are possible and harmless: an event is a wake-up
and ingest reads by watermark. One gap remains: in Airflow 3.3 ``yield`` returns once the event
is queued in the triggerer's memory, before it is stored in the metadata DB, so a triggerer
crash in that instant drops the wake-up — the scheduled sweep covers it (AIRFLOW_NOTES.md).

The consumer name must be stable (not per host or per start) twice over: pending entries are
per consumer, and Airflow identifies an AssetWatcher trigger by ``BaseEventTrigger.hash`` of
``serialize()``, so any per-parse value would re-create the trigger on every DAG parse.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from renkei.events.stream_reply import stream_entries
from renkei.errors import ConfigError
from renkei.events.channel import DEFAULT_PREFIX, DEFAULT_REDIS_URL, ChannelConfig, load_channel
from renkei.events.message import ChangeEvent, ChangeEventError

if TYPE_CHECKING:
    import sqlalchemy as sa

CLASSPATH = "renkei.events.trigger.ChangeStreamTrigger"
TRIGGER_KINDS = ("redis_stream", "changelog_table")
_BATCH = 100
_MAX_BACKOFF_S = 30.0


class ChangeStreamTrigger(BaseEventTrigger):
    """Yield one TriggerEvent per change event of one source; runs until cancelled."""

    def __init__(
        self,
        source: str,
        kind: str = "redis_stream",
        redis_url: str | None = None,
        group: str = "renkei-airflow",
        consumer: str = "triggerer",
        block_ms: int = 5000,
        stream_prefix: str = DEFAULT_PREFIX,
        warehouse_url: str | None = None,
    ) -> None:
        super().__init__()
        if kind not in TRIGGER_KINDS:
            raise ConfigError(
                f"ChangeStreamTrigger: kind {kind!r} is not supported: use one of {list(TRIGGER_KINDS)}, "
                "or renkei.events.trigger.watcher_trigger for redis_pubsub (the stock trigger)"
            )
        if not source:
            raise ConfigError("ChangeStreamTrigger: source is empty: name the departmental source to watch")
        self.source = source
        self.kind = kind
        # None: resolved in the triggerer (RENKEI_REDIS_URL or config/channels.yaml). Serialized
        # trigger arguments are stored unencrypted in Airflow's metadata DB, so a URL with a
        # password must not travel through them.
        self.redis_url = redis_url
        self.group = group
        self.consumer = consumer
        self.block_ms = int(block_ms)
        self.stream_prefix = stream_prefix
        self.warehouse_url = warehouse_url  # None: RENKEI_WAREHOUSE_URL in the triggerer

    @classmethod
    def from_config(cls, source: str, channel: ChannelConfig | None = None) -> "ChangeStreamTrigger":
        cfg = channel or load_channel()
        return cls(
            source=source, kind=cfg.kind, redis_url=None, group=cfg.group, consumer=cfg.consumer,
            block_ms=cfg.block_ms, stream_prefix=cfg.stream_prefix, warehouse_url=cfg.warehouse_url,
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return CLASSPATH, {
            "source": self.source,
            "kind": self.kind,
            "redis_url": self.redis_url,
            "group": self.group,
            "consumer": self.consumer,
            "block_ms": self.block_ms,
            "stream_prefix": self.stream_prefix,
            "warehouse_url": self.warehouse_url,
        }

    def __repr__(self) -> str:
        from renkei.settings import redact_url  # noqa: PLC0415

        # The triggerer logs repr(trigger): keep URL passwords out of the logs.
        kwargs = self.serialize()[1]
        for name in ("redis_url", "warehouse_url"):
            if kwargs[name]:
                kwargs[name] = redact_url(kwargs[name])
        return self.repr(CLASSPATH, kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChangeStreamTrigger) and self.serialize() == other.serialize()

    def __hash__(self) -> int:
        return hash((CLASSPATH, tuple(sorted(self.serialize()[1].items()))))

    @property
    def stream_key(self) -> str:
        return f"{self.stream_prefix}{self.source}"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        stream = self._run_stream() if self.kind == "redis_stream" else self._run_change_log()
        async for event in stream:
            yield event

    # -- redis_stream ---------------------------------------------------------------------------

    async def _run_stream(self) -> AsyncIterator[TriggerEvent]:
        import redis.asyncio as aioredis  # noqa: PLC0415
        from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: PLC0415
        from redis.exceptions import ResponseError  # noqa: PLC0415
        from redis.exceptions import TimeoutError as RedisTimeoutError  # noqa: PLC0415

        key = self.stream_key
        backoff = 1.0
        while True:
            # The socket must outlive a blocking XREADGROUP, or every idle block reads as a timeout.
            client = aioredis.Redis.from_url(
                self.redis_url or load_channel().redis_url or DEFAULT_REDIS_URL, socket_timeout=self.block_ms / 1000 + 10, socket_connect_timeout=5
            )
            try:
                await self._ensure_group(client, key)
                # Pending first: entries delivered to this consumer before a crash, never acked.
                last = "0"
                while True:
                    entries = stream_entries(await client.xreadgroup(self.group, self.consumer, {key: last}, count=_BATCH))
                    if not entries:
                        break
                    for msg_id, fields in entries:
                        event = self._event(msg_id, fields)
                        if event is not None:
                            yield event
                        await client.xack(key, self.group, msg_id)
                        last = msg_id
                backoff = 1.0
                while True:
                    resp = await client.xreadgroup(
                        self.group, self.consumer, {key: ">"}, count=_BATCH, block=self.block_ms
                    )
                    for msg_id, fields in stream_entries(resp):
                        event = self._event(msg_id, fields)
                        if event is not None:
                            yield event
                        # Only now: the triggerer has taken the event (at-least-once).
                        await client.xack(key, self.group, msg_id)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # A cancel that lands inside a socket read can surface as a TimeoutError (an
                # OSError): when the task is being cancelled, stop instead of retrying forever.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                self.log.warning(
                    "change stream %s: Redis unreachable (%s); retrying in %.0f s — nothing is lost, "
                    "unacked entries are re-read", key, exc.__class__.__name__, backoff,
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.log.warning("change stream %s: group %s vanished; re-creating it", key, self.group)
            finally:
                await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _ensure_group(self, client: Any, key: str) -> None:
        from redis.exceptions import ResponseError  # noqa: PLC0415

        try:
            # id "0": a new group also delivers what was published before the first trigger start.
            await client.xgroup_create(key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _event(self, msg_id: str, fields: dict | None) -> TriggerEvent | None:
        if not fields:
            # The entry was trimmed (MAXLEN) while pending: nothing left to deliver.
            self.log.warning("change stream %s: entry %s is gone (trimmed); acknowledging it", self.stream_key, msg_id)
            return None
        data = fields.get(b"data", fields.get("data"))
        return self._decode(msg_id, data)

    # -- changelog_table ------------------------------------------------------------------------

    async def _run_change_log(self) -> AsyncIterator[TriggerEvent]:
        from sqlalchemy.exc import OperationalError  # noqa: PLC0415

        from renkei.events.channel import change_log_engine  # noqa: PLC0415
        from renkei.settings import Settings  # noqa: PLC0415

        url = self.warehouse_url or Settings.from_env().warehouse_url
        backoff = 1.0
        while True:
            try:
                eng = await asyncio.to_thread(change_log_engine, url)
                rows = await asyncio.to_thread(self._pending_rows, eng)
                for row_id, payload in rows:
                    event = self._decode(str(row_id), payload)
                    if event is not None:
                        yield event
                    await asyncio.to_thread(self._mark_consumed, eng, row_id)
                backoff = 1.0
                if len(rows) < _BATCH:
                    await asyncio.sleep(self.block_ms / 1000)
            except OperationalError as exc:
                self.log.warning(
                    "change_log for %s: warehouse unreachable (%s); retrying in %.0f s",
                    self.source, exc.__class__.__name__, backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _pending_rows(self, eng: "sa.Engine") -> list[tuple[int, str]]:
        from renkei.warehouse import change_log as t  # noqa: PLC0415

        q = (
            t.select().with_only_columns(t.c.id, t.c.payload)
            .where(t.c.source == self.source, t.c.consumed_at.is_(None))
            .order_by(t.c.id).limit(_BATCH)
        )
        with eng.connect() as conn:
            return [(r.id, r.payload) for r in conn.execute(q)]

    @staticmethod
    def _mark_consumed(eng: "sa.Engine", row_id: int) -> None:
        import datetime  # noqa: PLC0415

        from renkei.sources.values import format_timestamp  # noqa: PLC0415
        from renkei.warehouse import change_log as t  # noqa: PLC0415

        now = format_timestamp(datetime.datetime.now(datetime.timezone.utc))
        with eng.begin() as conn:
            conn.execute(t.update().where(t.c.id == row_id, t.c.consumed_at.is_(None)).values(consumed_at=now))

    # -- both -----------------------------------------------------------------------------------

    def _decode(self, msg_id: str, data: str | bytes | None) -> TriggerEvent | None:
        try:
            if data is None:
                raise ChangeEventError("change event: field 'data' is missing: publish with renkei.events.publish")
            event = ChangeEvent.from_json(data)
        except ChangeEventError as exc:
            # A poison message must not stop the channel: drop it loudly; the sweep covers the source.
            self.log.error("change channel %s: message %s dropped: %s", self.source, msg_id, exc)
            return None
        if event.source != self.source:
            self.log.error(
                "change channel %s: message %s names source %r: dropped; publish it to its own source",
                self.source, msg_id, event.source,
            )
            return None
        return TriggerEvent({**event.to_dict(), "channel": self.kind, "message_id": msg_id})



def watcher_trigger(source: str, channel: ChannelConfig | None = None) -> BaseEventTrigger:
    """The event trigger for an AssetWatcher on ``source`` under the configured channel kind."""
    cfg = channel or load_channel()
    if cfg.kind != "redis_pubsub":
        return ChangeStreamTrigger.from_config(source, cfg)
    # The stock trigger: not durable (AIRFLOW_NOTES.md); imported late, its module starts the
    # providers manager at import time.
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger  # noqa: PLC0415

    return MessageQueueTrigger(
        scheme="redis+pubsub", channels=[cfg.key(source)], redis_conn_id=cfg.redis_conn_id, poll_interval=1
    )
