"""`renkei emit --source NAME [--extracts URL]`: announce a source's extract on the change channel.

The event carries the extract's newest ``updated_at`` as its watermark and the extract's row
count (the snapshot's size: the adapter writes full snapshots, so "changed since the last event"
is unknown here). It carries no row and no personal data.
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
    from renkei.errors import RenkeiError, SourceError
    from renkei.events import ChangeEvent, load_channel, publish
    from renkei.settings import Settings, redact_url
    from renkei.warehouse import engine, extract_table

    sources = load_sources()
    if args.source not in sources:
        raise SourceError(f"unknown source {args.source!r}: use one of {sorted(sources)} (config/sources.yaml)")
    source = sources[args.source]
    if "updated_at" not in source.extract_columns:
        raise SourceError(f"{source.name}: the extract has no updated_at column, so it has no watermark to announce: "
                          "add updated_at (timestamp) to its columns in config/sources.yaml")
    url = args.extracts or Settings.from_env().extracts_url
    table = extract_table(source, sa.MetaData())
    eng = engine(url)
    try:
        if not sa.inspect(eng).has_table(table.name):
            raise SourceError(f"{source.name}: no table {table.name} at {redact_url(url)}: "
                              f"write the extract first (renkei pseudonymize --source {source.name} …)")
        with eng.connect() as conn:
            watermark, rows = conn.execute(sa.select(sa.func.max(table.c.updated_at), sa.func.count())).one()
    finally:
        eng.dispose()
    if watermark is None:
        raise SourceError(f"{source.name}: {table.name} has no row with an updated_at: nothing to announce; "
                          "re-export the source with renkei pseudonymize")
    event = ChangeEvent(source=source.name, watermark=watermark, row_count=int(rows))
    channel = load_channel()
    try:
        publish(event, channel)
    except _broker_errors(channel.kind) as exc:
        raise RenkeiError(
            f"change channel {channel.kind}: Redis unreachable at {redact_url(channel.redis_url)} "
            f"({exc.__class__.__name__}): start Redis (or fix RENKEI_REDIS_URL) and emit again; no row is "
            "lost meanwhile, ingest reads by watermark"
        ) from None
    print(event.to_json())
    return 0


def _broker_errors(kind: str) -> tuple[type[Exception], ...]:
    if kind == "changelog_table":
        return ()
    import redis

    return (redis.ConnectionError, redis.TimeoutError)
