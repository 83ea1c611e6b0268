"""The outbox relay: publishes outbox notices not yet published to the notices stream.

The warehouse outbox ``notices`` stays the source of truth; the relay only reads it and records
what it has published in ``outbox_published``. Unpublished = a ``notices`` row without an
``outbox_published`` row, taken in created order (created_at, then notice_id).

Delivery is at-least-once. Per batch the relay first publishes (one MULTI/EXEC, so Redis applies
the whole batch or none of it) and then records the batch in one warehouse transaction. A crash
or a warehouse error between the two leaves the batch unrecorded, and the next run publishes it
again: consumers drop duplicates by ``notice_id``. While Redis is unreachable nothing of the
failing batch is recorded; the relay stops, reports the outage in its counts, and the next run
catches up from the outbox.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import sqlalchemy as sa

from renkei.outputs.notice import Notice
from renkei.outputs.stream import NoticeStreamConfig, load_notice_stream
from renkei.settings import redact_url
from renkei.sources.values import format_timestamp
from renkei.warehouse import engine, metadata, notices, outbox_published, upsert

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)
SKIPPED = "no broker configured"


def relay_notices(warehouse_url: str, channel_cfg: NoticeStreamConfig | None = None, batch: int = 500) -> dict:
    """Publish every unpublished outbox notice; return the counts.

    ``{"stream", "published", "pending", "errors"}`` — ``published`` in this run, ``pending``
    left unpublished, ``errors`` 1 when the broker failed (then also ``"error"``: what and the
    fix). Under channel kind ``changelog_table``: ``{"skipped": "no broker configured"}``.
    """
    cfg = channel_cfg or load_notice_stream()
    if not cfg.has_broker:
        return {"skipped": SKIPPED}
    if batch < 1:
        raise ValueError(f"relay_notices: batch must be >= 1, not {batch}")
    import redis  # noqa: PLC0415 - only the relay and readers need it

    eng = engine(warehouse_url)
    # Creating missing tables writes no row: a relay that runs before the first notice is a no-op.
    metadata.create_all(eng, tables=[notices, outbox_published])
    client = redis.Redis.from_url(cfg.redis_url, socket_connect_timeout=5, socket_timeout=30)
    published = 0
    error: str | None = None
    try:
        while True:
            with eng.connect() as conn:
                rows = conn.execute(_unpublished().limit(batch)).mappings().all()
            if not rows:
                break
            batch_notices = [Notice.from_row(r, cfg.include_facts) for r in rows]
            try:
                stream_ids = _publish(client, cfg, batch_notices)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                error = (
                    f"notices stream {cfg.stream}: Redis unreachable at {redact_url(cfg.redis_url)} "
                    f"({exc.__class__.__name__}); nothing of this batch was recorded: start Redis (or fix "
                    "RENKEI_REDIS_URL) and the next relay run publishes every pending notice"
                )
                log.error("%s", error)
                break
            _record(eng, batch_notices, stream_ids)
            published += len(batch_notices)
        with eng.connect() as conn:
            pending = conn.execute(sa.select(sa.func.count()).select_from(_unpublished().subquery())).scalar_one()
    finally:
        client.close()
        eng.dispose()
    counts: dict = {"stream": cfg.stream, "published": published, "pending": pending, "errors": int(error is not None)}
    if error:
        counts["error"] = error
    log.info("relay to %s: %s", cfg.stream, {k: v for k, v in counts.items() if k != "error"})
    return counts


def _unpublished() -> sa.Select:
    return (
        sa.select(notices)
        .outerjoin(outbox_published, outbox_published.c.notice_id == notices.c.notice_id)
        .where(outbox_published.c.notice_id.is_(None))
        .order_by(notices.c.created_at, notices.c.notice_id)
    )


def _publish(client: "redis.Redis", cfg: NoticeStreamConfig, batch: list[Notice]) -> list[str]:
    pipe = client.pipeline(transaction=True)
    for notice in batch:
        if cfg.maxlen:
            pipe.xadd(cfg.stream, {"data": notice.to_json()}, maxlen=cfg.maxlen, approximate=True)
        else:
            pipe.xadd(cfg.stream, {"data": notice.to_json()})
    return [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]


def _record(eng: sa.Engine, batch: list[Notice], stream_ids: list[str]) -> None:
    now = format_timestamp(datetime.now(timezone.utc))
    rows = [{"notice_id": n.notice_id, "stream_id": sid, "published_at": now} for n, sid in zip(batch, stream_ids)]
    with eng.begin() as conn:
        # DO NOTHING: a concurrent relay that published the same notice keeps its first record.
        upsert(conn, outbox_published, rows, update=False)
