"""NoticeReader: the consumer API of the notices stream (a Redis Stream read by a consumer group).

    reader = NoticeReader("redis://127.0.0.1:6379/0", "renkei:notices", "delivery", "worker-1")
    for msg in reader.read(count=100, block_ms=5000):
        if isinstance(msg, NoticeState):    # withdrawn / superseded / reinstated
            apply(msg)                      # drop it if (msg.notice_id, msg.seq) was handled before
        else:
            handle(msg)                     # drop it if msg.notice_id was handled before
        reader.ack([msg])

A notice's state messages come after the notice itself (docs/EVENTS.md).

At-least-once: a notice read but not acknowledged stays pending on its consumer, and the next
reader with the same group and consumer name re-reads its pending notices before new ones.
Keep the consumer name stable (not per process start) so that a restarted worker finds them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from renkei.events.stream_reply import stream_entries
from renkei.outputs.notice import Notice, NoticeError, NoticeState, decode

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)
Message = Notice | NoticeState


class NoticeReader:
    """Reads notices for one consumer of one consumer group; ``start`` is where a new group begins."""

    def __init__(
        self, redis_url: str, stream: str, group: str, consumer: str, start: str = "0",
        client: "redis.Redis | None" = None,
    ) -> None:
        import redis  # noqa: PLC0415 - only readers and the relay need it

        if not (stream and group and consumer):
            raise ValueError("NoticeReader: stream, group and consumer must be non-empty")
        self.redis_url = redis_url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.start = start  # "0": everything still on the stream; "$": only notices published from now
        self._client = client or redis.Redis.from_url(redis_url, socket_connect_timeout=5)
        self._group_ready = False
        self._pending_after: str | None = "0"  # cursor over own pending entries; None = read new ones

    @classmethod
    def from_config(cls, group: str, consumer: str, start: str = "0") -> "NoticeReader":
        """A reader of the stream in config/channels.yaml (``notices:``)."""
        from renkei.errors import ConfigError  # noqa: PLC0415
        from renkei.outputs.stream import load_notice_stream  # noqa: PLC0415

        cfg = load_notice_stream()
        if not cfg.has_broker:
            raise ConfigError(
                "notices: the channel kind is changelog_table, so no broker carries notices: read the "
                "warehouse table `notices`, or set kind: redis_stream in config/channels.yaml"
            )
        return cls(cfg.redis_url, cfg.stream, group, consumer, start=start)

    def read(self, count: int = 100, block_ms: int | None = None) -> list[Message]:
        """Up to ``count`` messages (a Notice, or a NoticeState: a notice's lifecycle
        transition): first this consumer's pending ones, then new ones.

        ``block_ms`` waits that long for new messages when none is there (None: do not wait;
        0: wait forever). Each message carries its stream entry id in ``message_id``.
        """
        self._ensure_group()
        # Loops only past entries that were all dropped as malformed, so [] means "nothing there".
        while self._pending_after is not None:
            entries = stream_entries(self._client.xreadgroup(
                self.group, self.consumer, {self.stream: self._pending_after}, count=count
            ))
            if not entries:
                self._pending_after = None
                break
            self._pending_after = entries[-1][0]
            notices = self._decode(entries)
            if notices:
                return notices
        while True:
            entries = stream_entries(self._client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
            ))
            notices = self._decode(entries)
            if notices or not entries:
                return notices

    def ack(self, ids: Iterable[str | Message]) -> int:
        """Acknowledge messages (or their stream entry ids) once handled; returns how many were pending."""
        keys = [i if isinstance(i, str) else i.message_id for i in ids]
        if any(k is None for k in keys):
            raise ValueError("NoticeReader.ack: a message without message_id was not read from the stream")
        return int(self._client.xack(self.stream, self.group, *keys)) if keys else 0

    def seek(self, last_id: str = "0") -> None:
        """Move the group's cursor (XGROUP SETID): "0" re-delivers everything still on the stream.

        New reads then start after ``last_id``, own pending entries included, so the separate
        pending re-read is skipped.
        """
        self._ensure_group()
        self._client.xgroup_setid(self.stream, self.group, last_id)
        self._pending_after = None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "NoticeReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        import redis  # noqa: PLC0415

        try:
            self._client.xgroup_create(self.stream, self.group, id=self.start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _decode(self, entries: list[tuple[str, dict | None]]) -> list[Message]:
        out: list[Message] = []
        for msg_id, fields in entries:
            data = (fields or {}).get(b"data", (fields or {}).get("data"))
            try:
                if data is None:
                    raise NoticeError(f"notice message {msg_id}: field 'data' is missing (or the entry was trimmed)")
                out.append(decode(data, msg_id))
            except NoticeError as exc:
                # A poison entry must not block the group: drop it loudly; the outbox still holds the notice.
                log.error("notices stream %s: %s; acknowledged and skipped", self.stream, exc)
                self._client.xack(self.stream, self.group, msg_id)
        return out
