"""The outbox relay: publishes outbox notices not yet published to the notices stream, then
their lifecycle transitions.

The warehouse outbox ``notices`` stays the source of truth; the relay only reads it and records
what it has published in ``outbox_published``. Unpublished = a ``notices`` row without an
``outbox_published`` row, taken in created order (created_at, then notice_id). Then each
``notice_events`` row not yet published (no ``stream_id``) whose notice is published goes out as
a state message (renkei.outputs.notice.NoticeState), in ``seq`` order, and gets its stream id.

Delivery is at-least-once. Per batch the relay first publishes (one MULTI/EXEC, so Redis applies
the whole batch or none of it) and then records the batch in one warehouse transaction. A crash
or a warehouse error between the two leaves the batch unrecorded, and the next run publishes it
again: consumers drop duplicates by ``notice_id`` (state messages by ``notice_id`` and ``seq``).
While Redis is unreachable nothing of the failing batch is recorded; the relay stops, reports the
outage in its counts, and the next run catches up from the outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import sqlalchemy as sa

from renkei.outputs.notice import Notice, NoticeState
from renkei.outputs.stream import NoticeStreamConfig, load_notice_stream
from renkei.settings import redact_url
from renkei.sources.values import format_timestamp
from renkei.warehouse import engine, metadata, notice_events, notices, outbox_published, upsert

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)
SKIPPED = "no broker configured"


def relay_notices(warehouse_url: str, channel_cfg: NoticeStreamConfig | None = None, batch: int = 500) -> dict:
    """Publish every unpublished outbox notice, then every unpublished state change of a
    published notice; return the counts.

    ``{"stream", "published", "pending", "state_events_published", "errors"}`` — notices
    ``published`` in this run and ``pending`` left unpublished, state messages published,
    ``errors`` 1 when the broker failed (then also ``"error"``: what and the fix). Under channel
    kind ``changelog_table``: ``{"skipped": "no broker configured"}``.
    """
    cfg = channel_cfg or load_notice_stream()
    if not cfg.has_broker:
        return {"skipped": SKIPPED}
    if batch < 1:
        raise ValueError(f"relay_notices: batch must be >= 1, not {batch}")
    import redis  # noqa: PLC0415 - only the relay and readers need it

    eng = engine(warehouse_url)
    # Creating missing tables writes no row: a relay that runs before the first notice is a no-op.
    metadata.create_all(eng, tables=[notices, outbox_published, notice_events])
    client = redis.Redis.from_url(cfg.redis_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        published, error = _drain(eng, client, cfg, _unpublished(), lambda r: Notice.from_row(r, cfg.include_facts),
                                  _record, batch)
        states = 0
        if error is None:  # a state message only ever follows its notice
            states, error = _drain(eng, client, cfg, _unpublished_states(), NoticeState.from_row, _record_states, batch)
        with eng.connect() as conn:
            pending = conn.execute(sa.select(sa.func.count()).select_from(_unpublished().subquery())).scalar_one()
    finally:
        client.close()
        eng.dispose()
    counts: dict = {"stream": cfg.stream, "published": published, "pending": pending,
                    "state_events_published": states, "errors": int(error is not None)}
    if error:
        counts["error"] = error
    log.info("relay to %s: %s", cfg.stream, {k: v for k, v in counts.items() if k != "error"})
    return counts


def _drain(eng: sa.Engine, client: "redis.Redis", cfg: NoticeStreamConfig, query: sa.Select,
           message: Callable[[sa.RowMapping], Notice | NoticeState], record, batch: int) -> tuple[int, str | None]:
    """Publish what ``query`` finds, batch by batch, recording each batch after it is published;
    returns (messages published, the outage's description or None)."""
    import redis  # noqa: PLC0415

    published = 0
    while True:
        with eng.connect() as conn:
            rows = conn.execute(query.limit(batch)).mappings().all()
        if not rows:
            return published, None
        messages = [message(r) for r in rows]
        try:
            stream_ids = _publish(client, cfg, messages)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            error = (
                f"notices stream {cfg.stream}: Redis unreachable at {redact_url(cfg.redis_url)} "
                f"({exc.__class__.__name__}); nothing of this batch was recorded: start Redis (or fix "
                "RENKEI_REDIS_URL) and the next relay run publishes every pending notice"
            )
            log.error("%s", error)
            return published, error
        record(eng, messages, stream_ids)
        published += len(messages)


def _unpublished() -> sa.Select:
    return (
        sa.select(notices)
        .outerjoin(outbox_published, outbox_published.c.notice_id == notices.c.notice_id)
        .where(outbox_published.c.notice_id.is_(None))
        .order_by(notices.c.created_at, notices.c.notice_id)
    )


def _unpublished_states() -> sa.Select:
    e = notice_events.c
    return (
        sa.select(e.seq, e.notice_id, e.state, e.reason, e.superseded_by, e.at, e.run_id)
        .join(outbox_published, outbox_published.c.notice_id == e.notice_id)
        .where(e.stream_id.is_(None))
        .order_by(e.seq)
    )


def _publish(client: "redis.Redis", cfg: NoticeStreamConfig, batch: list[Notice | NoticeState]) -> list[str]:
    pipe = client.pipeline(transaction=True)
    for msg in batch:
        if cfg.maxlen:
            pipe.xadd(cfg.stream, {"data": msg.to_json()}, maxlen=cfg.maxlen, approximate=True)
        else:
            pipe.xadd(cfg.stream, {"data": msg.to_json()})
    return [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]


def _record(eng: sa.Engine, batch: list[Notice], stream_ids: list[str]) -> None:
    now = format_timestamp(datetime.now(timezone.utc))
    rows = [{"notice_id": n.notice_id, "stream_id": sid, "published_at": now} for n, sid in zip(batch, stream_ids)]
    with eng.begin() as conn:
        # DO NOTHING: a concurrent relay that published the same notice keeps its first record.
        upsert(conn, outbox_published, rows, update=False)


def _record_states(eng: sa.Engine, batch: list[NoticeState], stream_ids: list[str]) -> None:
    now = format_timestamp(datetime.now(timezone.utc))
    e = notice_events.c
    # stream_id IS NULL: a concurrent relay that published the same event keeps its first record.
    stmt = (notice_events.update().where(e.seq == sa.bindparam("b_seq"), e.stream_id.is_(None))
            .values(stream_id=sa.bindparam("b_sid"), published_at=now))
    with eng.begin() as conn:
        conn.execute(stmt, [{"b_seq": m.seq, "b_sid": sid} for m, sid in zip(batch, stream_ids)])
