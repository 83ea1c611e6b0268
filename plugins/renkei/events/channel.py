"""The change channel: its config (config/channels.yaml) and ``publish``.

Kinds: ``redis_stream`` (durable, the default), ``changelog_table`` (a warehouse table, for
setups without Redis) and ``redis_pubsub`` (the stock Airflow trigger's channel; loses bursts,
kept only as an option). See config/channels.yaml.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renkei.errors import ConfigError
from renkei.events.message import ChangeEvent, now_timestamp

if TYPE_CHECKING:
    import redis
    import sqlalchemy as sa

KINDS = ("redis_stream", "changelog_table", "redis_pubsub")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "renkei:changes:"


@dataclass(frozen=True)
class ChannelConfig:
    """One resolved change channel."""

    kind: str = "redis_stream"
    redis_url: str = DEFAULT_REDIS_URL
    stream_prefix: str = DEFAULT_PREFIX  # stream (or pub/sub channel) key = prefix + source
    group: str = "renkei-airflow"
    consumer: str = "triggerer"
    maxlen: int = 10000
    block_ms: int = 5000  # XREADGROUP BLOCK, or the change_log poll interval
    redis_conn_id: str = "redis_default"  # redis_pubsub only: the stock trigger's Airflow connection
    warehouse_url: str | None = None  # changelog_table: None = RENKEI_WAREHOUSE_URL at use time

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"channel kind {self.kind!r} is unknown: use one of {list(KINDS)}")

    def key(self, source: str) -> str:
        """The Redis stream / pub/sub channel of a source."""
        return f"{self.stream_prefix}{source}"

    def resolved_warehouse_url(self) -> str:
        from renkei.settings import Settings  # noqa: PLC0415

        return self.warehouse_url or Settings.from_env().warehouse_url


def load_channel(config_dir: Path | None = None, kind: str | None = None) -> ChannelConfig:
    """The configured channel (``kind`` or env RENKEI_CHANNEL_KIND picks another section)."""
    from renkei.config import _load_yaml  # noqa: PLC0415 - the one YAML loader with good errors
    from renkei.settings import Settings  # noqa: PLC0415

    path = Path(config_dir or Settings.from_env().config_dir) / "channels.yaml"
    doc = _load_yaml(path)
    kind = kind or os.environ.get("RENKEI_CHANNEL_KIND") or doc.get("kind", "redis_stream")
    if kind not in KINDS:
        raise ConfigError(f"{path}: kind {kind!r} is unknown: use one of {list(KINDS)}")
    spec = doc.get(kind) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: {kind} must be a mapping of settings")

    def get(name: str, default: Any, typ: type) -> Any:
        value = spec.get(name, default)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ConfigError(f"{path}: {kind}.{name} must be a {typ.__name__}, not {value!r}")
        return value

    url = os.environ.get("RENKEI_REDIS_URL") or get("url", DEFAULT_REDIS_URL, str)
    if kind == "changelog_table":
        return ChannelConfig(kind=kind, block_ms=get("poll_ms", 5000, int))
    if kind == "redis_pubsub":
        return ChannelConfig(
            kind=kind, redis_url=url, stream_prefix=get("channel_prefix", DEFAULT_PREFIX, str),
            redis_conn_id=get("redis_conn_id", "redis_default", str),
        )
    return ChannelConfig(
        kind=kind, redis_url=url, stream_prefix=get("stream_prefix", DEFAULT_PREFIX, str),
        group=get("group", "renkei-airflow", str), consumer=get("consumer", "triggerer", str),
        maxlen=get("maxlen", 10000, int), block_ms=get("block_ms", 5000, int),
    )


def publish(event: ChangeEvent, channel_config: ChannelConfig | None = None) -> str:
    """Send a change event; return its id on the channel (stream id, change_log id, receivers)."""
    cfg = channel_config or load_channel()
    body = event.to_json()
    if cfg.kind == "redis_stream":
        # MAXLEN ~ trims whole macro-nodes only: cheap, and the cap is a bound, not a count.
        msg_id = _redis(cfg.redis_url).xadd(cfg.key(event.source), {"data": body}, maxlen=cfg.maxlen, approximate=True)
        return msg_id.decode() if isinstance(msg_id, bytes) else str(msg_id)
    if cfg.kind == "redis_pubsub":
        return str(_redis(cfg.redis_url).publish(cfg.key(event.source), body))
    return str(_insert_change_log(cfg.resolved_warehouse_url(), event, body))


@lru_cache(maxsize=8)
def _redis(url: str) -> "redis.Redis":
    import redis  # noqa: PLC0415 - only publishers need it

    return redis.Redis.from_url(url)


@lru_cache(maxsize=8)
def change_log_engine(url: str) -> "sa.Engine":
    """A cached warehouse engine with the change_log table in place."""
    from renkei.warehouse import change_log, engine  # noqa: PLC0415

    eng = engine(url)
    change_log.create(eng, checkfirst=True)
    return eng


def _insert_change_log(url: str, event: ChangeEvent, body: str) -> int:
    from renkei.warehouse import change_log  # noqa: PLC0415

    with change_log_engine(url).begin() as conn:
        res = conn.execute(change_log.insert().values(source=event.source, payload=body, created_at=now_timestamp()))
        return int(res.inserted_primary_key[0])
