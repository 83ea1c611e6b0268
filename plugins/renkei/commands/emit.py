"""`renkei emit --source NAME [--extracts URL]`: announce a source's extract on the change channel.

The event carries the extract's last change sequence and the number of rows its latest export
wrote. It carries no row and no personal data.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    em = subparsers.add_parser("emit", help="publish a change event for a source's extract (wakes its ingest DAG)")
    em.add_argument("--source", required=True, help="a source of config/sources.yaml")
    em.add_argument("--extracts", help="extracts SQLAlchemy URL (default: $RENKEI_EXTRACTS_URL)")
    em.set_defaults(func=_emit)


def _emit(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from renkei.config import load_sources
    from renkei.errors import SourceError
    from renkei.events import ChangeEvent
    from renkei.settings import Settings, redact_url
    from renkei.warehouse import engine, extract_table

    sources = load_sources()
    if args.source not in sources:
        raise SourceError(f"unknown source {args.source!r}: use one of {sorted(sources)} (config/sources.yaml)")
    source = sources[args.source]
    url = args.extracts or Settings.from_env().extracts_url
    table = extract_table(source, sa.MetaData())
    eng = engine(url)
    try:
        if not sa.inspect(eng).has_table(table.name):
            raise SourceError(f"{source.name}: no table {table.name} at {redact_url(url)}: "
                              f"write the extract first (renkei pseudonymize --source {source.name} …)")
        with eng.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(table.c.change_seq))).scalar()
            rows = conn.execute(sa.select(sa.func.count()).where(table.c.export_id == sa.select(
                sa.func.max(table.c.export_id)).scalar_subquery())).scalar()
    finally:
        eng.dispose()
    if last is None:
        raise SourceError(f"{source.name}: {table.name} holds no change yet: nothing to announce; "
                          "export the source with renkei pseudonymize")
    event = ChangeEvent(source=source.name, change_seq=int(last), row_count=int(rows or 0))
    publish_event(event)
    print(event.to_json())
    return 0


def publish_event(event, channel=None) -> None:  # noqa: ANN001 - ChangeEvent, ChannelConfig
    """Publish a change event on the configured channel; RenkeiError (with the fix) when the
    broker is unreachable."""
    from renkei.errors import RenkeiError
    from renkei.events import load_channel, publish
    from renkei.settings import redact_url

    channel = channel or load_channel()
    try:
        publish(event, channel)
    except _broker_errors(channel.kind) as exc:
        raise RenkeiError(
            f"change channel {channel.kind}: Redis unreachable at {redact_url(channel.redis_url)} "
            f"({exc.__class__.__name__}): start Redis (or fix RENKEI_REDIS_URL) and emit again; no row is "
            "lost meanwhile, ingest reads from its position in the change sequence"
        ) from None


def _broker_errors(kind: str) -> tuple[type[Exception], ...]:
    if kind == "changelog_table":
        return ()
    import redis

    return (redis.ConnectionError, redis.TimeoutError)
