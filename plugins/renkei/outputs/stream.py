"""The notices stream's config: the ``notices:`` section of config/channels.yaml.

The broker follows the change channel's ``kind`` (env RENKEI_CHANNEL_KIND overrides): under
``redis_stream`` and ``redis_pubsub`` notices go to a Redis Stream; under ``changelog_table``
there is no broker, the relay does nothing and consumers read the outbox table itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renkei.errors import ConfigError
from renkei.events.channel import DEFAULT_REDIS_URL, KINDS

DEFAULT_STREAM = "renkei:notices"


@dataclass(frozen=True)
class NoticeStreamConfig:
    """Where notices are published."""

    kind: str = "redis_stream"  # the change channel's kind: changelog_table means no broker
    redis_url: str = DEFAULT_REDIS_URL
    stream: str = DEFAULT_STREAM
    maxlen: int = 0  # approximate cap (XADD MAXLEN ~); 0 = never trim
    include_facts: bool = False  # True puts the rule's facts (linked health data) on the stream: opt in

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"notices stream: kind {self.kind!r} is unknown: use one of {list(KINDS)}")
        if not self.stream:
            raise ConfigError("notices stream: stream is empty: name the Redis Stream key, e.g. 'renkei:notices'")
        if self.maxlen < 0:
            raise ConfigError("notices stream: maxlen must be >= 0 (0 = never trim)")

    @property
    def has_broker(self) -> bool:
        return self.kind != "changelog_table"


def load_notice_stream(config_dir: Path | None = None, kind: str | None = None) -> NoticeStreamConfig:
    """The configured notices stream (``kind`` or env RENKEI_CHANNEL_KIND overrides the file's)."""
    from renkei.config import _load_yaml  # noqa: PLC0415 - the one YAML loader with good errors
    from renkei.settings import Settings  # noqa: PLC0415

    path = Path(config_dir or Settings.from_env().config_dir) / "channels.yaml"
    doc = _load_yaml(path)
    kind = kind or os.environ.get("RENKEI_CHANNEL_KIND") or doc.get("kind", "redis_stream")
    if kind not in KINDS:
        raise ConfigError(f"{path}: kind {kind!r} is unknown: use one of {list(KINDS)}")
    spec = doc.get("notices") or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: notices must be a mapping of settings (url, stream, maxlen, include_facts)")

    def get(name: str, default: Any, typ: type) -> Any:
        value = spec.get(name, default)
        if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
            raise ConfigError(f"{path}: notices.{name} must be a {typ.__name__}, not {value!r}")
        return value

    return NoticeStreamConfig(
        kind=kind,
        redis_url=os.environ.get("RENKEI_REDIS_URL") or get("url", DEFAULT_REDIS_URL, str),
        stream=get("stream", DEFAULT_STREAM, str),
        maxlen=get("maxlen", 0, int),
        include_facts=get("include_facts", False, bool),
    )
