"""The durable change channel: Redis Stream and change_log delivery through ChangeStreamTrigger."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from conftest import need_service

from renkei.errors import RenkeiError
from renkei.events import ChangeEvent, ChangeEventError, ChangeStreamTrigger, publish
from renkei.events.channel import ChannelConfig, load_channel
from renkei.warehouse import change_log

EVENT_KEYS = {"source", "change_seq", "row_count", "emitted_at", "event_id"}
WAIT_S = 15  # bound on every wait; never an assertion about speed


def _event(source: str = "registry", n: int = 0) -> ChangeEvent:
    return ChangeEvent(source=source, change_seq=1000 + n, row_count=n)


async def _wait_until(cond: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not cond():
            await asyncio.sleep(0.02)
    assert cond(), what


class Running:
    """A trigger's run() driven in a task, like the triggerer does, collecting its events."""

    def __init__(self, trigger: ChangeStreamTrigger) -> None:
        self.trigger = trigger
        self.events: list[dict] = []
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Running":
        async def drive() -> None:
            async for ev in self.trigger.run():
                self.events.append(ev.payload)

        self.task = asyncio.create_task(drive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        if self.task.done():
            self.task.result()  # surface a crash of run(): it must never return or raise
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            # Bounded: a trigger that swallowed its cancellation fails the test, never hangs it.
            await asyncio.wait_for(self.task, WAIT_S)

    async def until(self, n: int, extra: Callable[[], bool] = lambda: True) -> list[dict]:
        def ready() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError("run() returned: a change trigger must run until cancelled")
            return len(self.events) >= n and extra()

        await _wait_until(ready, f"{n} events")
        return self.events


# -- the message ---------------------------------------------------------------------------------


def test_change_event_json_has_exactly_the_non_personal_keys():
    ev = _event(n=7)
    doc = json.loads(ev.to_json())
    assert set(doc) == EVENT_KEYS
    assert ChangeEvent.from_json(ev.to_json()) == ev
    assert len(ev.event_id) == 32 and ev.emitted_at.endswith("+09:00")
    assert doc["change_seq"] == 1007 and isinstance(doc["change_seq"], int)


def test_unknown_source_is_allowed_in_a_message():
    assert ChangeEvent.from_json(_event(source="not_configured_anywhere").to_json()).source == "not_configured_anywhere"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("change_seq"), "change_seq"),
        (lambda d: d.update(change_seq="1000"), "change_seq"),
        (lambda d: d.update(change_seq=True), "change_seq"),
        (lambda d: d.update(change_seq=-1), "change_seq"),
        (lambda d: d.update(change_seq=10.5), "change_seq"),
        # the old timestamp watermark is no position any more: an event carrying it is refused
        (lambda d: d.update(change_seq="2024-05-01T10:00:00+09:00"), "change_seq"),
        (lambda d: d.update(watermark="2024-05-01T10:00:00+09:00"), "watermark"),
        (lambda d: d.update(row_count="3"), "row_count"),
        (lambda d: d.update(row_count=True), "row_count"),
        (lambda d: d.update(row_count=-1), "row_count"),
        (lambda d: d.update(emitted_at="2024-05-01T01:00:00+00:00"), "emitted_at"),
        (lambda d: d.update(event_id="not-a-uuid"), "event_id"),
        (lambda d: d.update(source=""), "source"),
        (lambda d: d.update(name_kana="ヤマダ"), "name_kana"),
    ],
)
def test_bad_message_names_the_field(change, field):
    doc = json.loads(_event().to_json())
    change(doc)
    with pytest.raises(ChangeEventError, match=field) as info:
        ChangeEvent.from_json(json.dumps(doc))
    assert isinstance(info.value, RenkeiError)


def test_non_json_message_is_a_change_event_error():
    with pytest.raises(ChangeEventError, match="not JSON"):
        ChangeEvent.from_json(b"\xff not json")


# -- the trigger's identity ----------------------------------------------------------------------


def test_trigger_serializes_to_an_equal_object_with_a_stable_hash():
    from airflow.sdk import Asset, AssetWatcher
    from airflow.serialization.encoders import encode_trigger
    from airflow.serialization.serialized_objects import BaseSerialization
    from airflow.triggers.base import BaseEventTrigger
    from airflow._shared.module_loading import import_string  # what the 3.3 triggerer uses

    trig = ChangeStreamTrigger.from_config("registry", load_channel(kind="redis_stream"))
    classpath, kwargs = trig.serialize()
    assert classpath == "renkei.events.trigger.ChangeStreamTrigger"
    assert set(kwargs) >= {"source", "kind", "redis_url", "group", "consumer", "block_ms"}
    again = import_string(classpath)(**json.loads(json.dumps(kwargs)))
    assert again == trig and hash(again) == hash(trig)

    # The path Airflow takes for an AssetWatcher: encode_trigger, stored kwargs, hash of both.
    encoded = encode_trigger(trig)
    stored = {k: BaseSerialization.deserialize(v) for k, v in encoded["kwargs"].items()}
    assert import_string(encoded["classpath"])(**stored) == trig
    assert BaseEventTrigger.hash(classpath, kwargs) == BaseEventTrigger.hash(*again.serialize())
    Asset(name="renkei_change_registry", uri="renkei://changes/registry",
          watchers=[AssetWatcher(name="registry_changes", trigger=trig)])


def test_trigger_repr_hides_url_passwords():
    trig = ChangeStreamTrigger("registry", redis_url="redis://:s3cret@redis:6379/0")
    assert "s3cret" not in repr(trig)


def test_trigger_refuses_pubsub_and_names_the_alternative():
    with pytest.raises(RenkeiError, match="watcher_trigger"):
        ChangeStreamTrigger("registry", kind="redis_pubsub")


# -- redis_stream --------------------------------------------------------------------------------


@pytest.fixture
def redis_channel():
    need_service("Redis", "127.0.0.1", 6379)
    import redis

    prefix = f"renkei:test:{uuid.uuid4().hex}:"
    cfg = ChannelConfig(kind="redis_stream", stream_prefix=prefix, block_ms=100)
    client = redis.Redis.from_url(cfg.redis_url)
    yield cfg, client
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def _pending(client, cfg: ChannelConfig, source: str) -> int:
    if not client.exists(cfg.key(source)):
        return 0
    groups = {g["name"].decode(): g for g in client.xinfo_groups(cfg.key(source))}
    return int(groups[cfg.group]["pending"]) if cfg.group in groups else 0


def _has_group(client, cfg: ChannelConfig, source: str) -> bool:
    return bool(client.exists(cfg.key(source))) and any(
        g["name"].decode() == cfg.group for g in client.xinfo_groups(cfg.key(source))
    )


@pytest.mark.redis
def test_a_burst_of_20_is_yielded_20_times(redis_channel):
    cfg, client = redis_channel

    async def scenario() -> tuple[list[str], list[str]]:
        async with Running(ChangeStreamTrigger.from_config("registry", cfg)) as run:
            await _wait_until(lambda: _has_group(client, cfg, "registry"), "consumer group created")
            published = [_event(n=i) for i in range(20)]
            for ev in published:
                publish(ev, cfg)
            got = await run.until(20, lambda: _pending(client, cfg, "registry") == 0)
            return [e["event_id"] for e in got], [e.event_id for e in published]

    got_ids, sent_ids = asyncio.run(scenario())
    assert got_ids == sent_ids  # all 20, once each, in publish order
    assert _pending(client, cfg, "registry") == 0  # every one acknowledged


@pytest.mark.redis
def test_events_published_while_no_trigger_runs_are_delivered_on_start(redis_channel):
    cfg, client = redis_channel
    before_any_group = [_event(n=i) for i in range(3)]
    for ev in before_any_group:
        publish(ev, cfg)

    async def first_start() -> list[dict]:
        async with Running(ChangeStreamTrigger.from_config("registry", cfg)) as run:
            return list(await run.until(3, lambda: _pending(client, cfg, "registry") == 0))

    assert [e["event_id"] for e in asyncio.run(first_start())] == [e.event_id for e in before_any_group]

    while_down = [_event(n=i) for i in range(3, 8)]
    for ev in while_down:
        publish(ev, cfg)

    async def second_start() -> list[dict]:
        async with Running(ChangeStreamTrigger.from_config("registry", cfg)) as run:
            return list(await run.until(5, lambda: _pending(client, cfg, "registry") == 0))

    # Only the new ones: what was acknowledged before is not delivered again.
    assert [e["event_id"] for e in asyncio.run(second_start())] == [e.event_id for e in while_down]


@pytest.mark.redis
def test_an_event_yielded_but_not_acked_is_redelivered_after_a_crash(redis_channel):
    cfg, client = redis_channel
    published = [_event(n=i) for i in range(3)]
    for ev in published:
        publish(ev, cfg)

    async def crash_after_first_yield() -> dict:
        gen = ChangeStreamTrigger.from_config("registry", cfg).run()
        first = await asyncio.wait_for(gen.__anext__(), WAIT_S)
        await gen.aclose()  # the triggerer dies between the yield and the XACK
        return first.payload

    first = asyncio.run(crash_after_first_yield())
    assert first["event_id"] == published[0].event_id
    # One XREADGROUP hands over a whole batch: all three are pending on this consumer, none acked.
    pending = client.xpending_range(cfg.key("registry"), cfg.group, min="-", max="+", count=10)
    assert first["message_id"] in [p["message_id"].decode() for p in pending]

    async def restart() -> list[dict]:
        async with Running(ChangeStreamTrigger.from_config("registry", cfg)) as run:
            return list(await run.until(3, lambda: _pending(client, cfg, "registry") == 0))

    again = asyncio.run(restart())
    assert [e["event_id"] for e in again] == [e.event_id for e in published]
    assert again[0]["message_id"] == first["message_id"]  # the same stream entry, re-read from pending


@pytest.mark.redis
def test_triggers_of_two_sources_do_not_see_each_other(redis_channel):
    cfg, client = redis_channel
    publish(_event("nhi", 1), cfg)
    mine = _event("registry", 2)
    publish(mine, cfg)

    async def scenario() -> list[dict]:
        async with Running(ChangeStreamTrigger.from_config("registry", cfg)) as run:
            return list(await run.until(1, lambda: _pending(client, cfg, "registry") == 0))

    got = asyncio.run(scenario())
    assert [e["event_id"] for e in got] == [mine.event_id]
    assert set(got[0]) == EVENT_KEYS | {"channel", "message_id"}  # payload: no personal data


@pytest.mark.redis
def test_a_malformed_message_is_dropped_and_the_next_one_delivered(redis_channel):
    cfg, client = redis_channel
    client.xadd(cfg.key("registry"), {"data": b'{"source": "registry"}'})
    good = _event(n=1)
    publish(good, cfg)

    async def scenario() -> list[dict]:
        async with Running(ChangeStreamTrigger.from_config("registry", cfg)) as run:
            return list(await run.until(1, lambda: _pending(client, cfg, "registry") == 0))

    assert [e["event_id"] for e in asyncio.run(scenario())] == [good.event_id]


# -- changelog_table -----------------------------------------------------------------------------


def test_change_log_delivers_each_row_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    cfg = ChannelConfig(kind="changelog_table", block_ms=20, warehouse_url=url)
    first = [_event(n=i) for i in range(5)]
    for ev in first:
        publish(ev, cfg)
    other = _event("nhi", 9)
    publish(other, cfg)
    eng = sa.create_engine(url)

    def unconsumed(source: str) -> int:
        with eng.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(change_log)
                .where(change_log.c.source == source, change_log.c.consumed_at.is_(None))
            ).scalar_one()

    async def run_until(n: int) -> list[dict]:
        async with Running(ChangeStreamTrigger.from_config("registry", cfg)) as run:
            return list(await run.until(n, lambda: unconsumed("registry") == 0))

    assert [e["event_id"] for e in asyncio.run(run_until(5))] == [e.event_id for e in first]
    assert unconsumed("nhi") == 1  # another source's row is left alone

    # A restart sees only what came after: rows are read in id order, so a re-delivered old row
    # would come before the new one.
    later = _event(n=6)
    publish(later, cfg)
    assert [e["event_id"] for e in asyncio.run(run_until(1))] == [later.event_id]
    with eng.connect() as conn:
        payloads = conn.execute(sa.select(change_log.c.payload)).scalars().all()
    assert all(set(json.loads(p)) == EVENT_KEYS for p in payloads)
    eng.dispose()
