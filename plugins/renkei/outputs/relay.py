"""The outbox relay: publishes outbox notices not yet published to the notices stream, then
their lifecycle transitions.

The warehouse outbox ``notices`` stays the source of truth; the relay only reads it and records
what it has published in ``outbox_published``. Unpublished = a ``notices`` row without an
``outbox_published`` row, taken in created order (created_at, then notice_id) from its index
``outbox_pending``, which triggers keep for every writer (renkei.warehouse.install_outbox_pending):
reading it costs what is pending, not the whole outbox. Then each
``notice_events`` row not yet published (no ``stream_id``) whose notice is published goes out as
a state message (renkei.outputs.notice.NoticeState), in ``seq`` order, and gets its stream id.

Delivery is at-least-once. Per batch the relay first publishes (one MULTI/EXEC, so Redis applies
the whole batch or none of it) and then records the batch in one warehouse transaction. A crash
or a warehouse error between the two leaves the batch unrecorded, and the next run publishes it
again: consumers drop duplicates by ``notice_id`` (state messages by ``notice_id`` and ``seq``).
While Redis is unreachable nothing of the failing batch is recorded; the relay stops, reports the
outage in its counts, and the next run catches up from the outbox.

Rate (issue #13: the relay must stay off the critical path): the outbox is read in keyset pages
(after the last (created_at, notice_id) or seq of the run, on an index in that order) of
``DEFAULT_BATCH`` rows, each page is one pipelined MULTI/XADD…/EXEC round trip, and its record
one set-based statement. Messages are serialised straight from the row (the same JSON as
``Notice.to_json``), without building a dataclass per notice.
"""

from __future__ import annotations

import json
import json.encoder
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import sqlalchemy as sa

from renkei import bulk
from renkei.outputs.notice import STATE_TYPE, Notice, NoticeError, NoticeState
from renkei.outputs.stream import NoticeStreamConfig, load_notice_stream
from renkei.settings import redact_url
from renkei.sources.values import format_timestamp
from renkei.warehouse import (
    dialect_insert,
    engine,
    ensure_schema,
    notice_events,
    notices,
    outbox_pending,
    outbox_published,
    upsert,
)

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)
SKIPPED = "no broker configured"
BUSY = "another relay is publishing"
RELAY_LOCK_KEY = 0x52454C4159  # "RELAY": pg_advisory_lock's key for the one relay of a warehouse
DEFAULT_BATCH = 20_000  # one MULTI/EXEC and one warehouse transaction per page (5,000: 36k notices/s; 20,000: 43k)
VACUUM_AFTER = 20_000  # notices published by one run after which outbox_pending is vacuumed at once


def relay_notices(warehouse_url: str, channel_cfg: NoticeStreamConfig | None = None,
                  batch: int = DEFAULT_BATCH, wait: bool = True) -> dict:
    """Publish every unpublished outbox notice, then every unpublished state change of a
    published notice; return the counts.

    ``{"stream", "published", "pending", "state_events_published", "errors"}`` — notices
    ``published`` in this run and ``pending`` left unpublished, state messages published,
    ``errors`` 1 when the broker failed (then also ``"error"``: what and the fix). Under channel
    kind ``changelog_table``: ``{"skipped": "no broker configured"}``.

    One relay at a time per warehouse (on PostgreSQL, an advisory lock held for the run): two
    would read the same pending pages and put each notice on the stream twice. ``wait=False``
    returns ``{"skipped": BUSY}`` at once when another relay holds it.
    """
    cfg = channel_cfg or load_notice_stream()
    if not cfg.has_broker:
        return {"skipped": SKIPPED}
    if batch < 1:
        raise ValueError(f"relay_notices: batch must be >= 1, not {batch}")
    eng = engine(warehouse_url)
    # The outbox's tables, indexes and pending-queue triggers as this version declares them, as
    # every task makes them: once the warehouse records them, one query instead of a catalog
    # check of each on every relay run (one follows each services run).
    ensure_schema(eng)
    try:
        with _relay_lock(eng, wait) as held:
            if not held:
                return {"skipped": BUSY}
            import redis  # noqa: PLC0415 - only the relay and readers need it

            # Leaving the block closes the client (redis-py's Redis.__exit__).
            with redis.Redis.from_url(cfg.redis_url, socket_connect_timeout=5, socket_timeout=30) as client:
                if eng.dialect.name == "postgresql" and not cfg.include_facts:
                    # PostgreSQL writes each body (notice_body_sql): a tenth of the relay's CPU per page.
                    page, message = (lambda after: _unpublished(after, body=True)), _row_body
                else:
                    page, message = _unpublished, (lambda r: _notice_json(r, cfg.include_facts))
                published, error = _drain(eng, client, cfg, page, message, _record, batch)
                states = 0
                if error is None:  # a state message only ever follows its notice
                    states, error = _drain(eng, client, cfg, _unpublished_states, _state_json, _record_states,
                                           batch)
                if published >= VACUUM_AFTER:
                    _vacuum_pending(eng)
                with eng.connect() as conn:
                    pending = conn.execute(sa.select(sa.func.count()).select_from(outbox_pending).join(
                        notices, notices.c.notice_id == outbox_pending.c.notice_id)).scalar_one()
    finally:
        eng.dispose()
    counts: dict = {"stream": cfg.stream, "published": published, "pending": pending,
                    "state_events_published": states, "errors": int(error is not None)}
    if error:
        counts["error"] = error
    log.info("relay to %s: %s", cfg.stream, {k: v for k, v in counts.items() if k != "error"})
    return counts


def _vacuum_pending(eng: sa.Engine) -> None:
    """Vacuum ``outbox_pending`` after a large drain (PostgreSQL). Each published notice left a
    dead row in it; until autovacuum comes (a minute or more), the next relay's first page walks
    every one of them (200,000 dead rows: 0.06 s of the first page, and a count of the rest)."""
    if eng.dialect.name != "postgresql":
        return
    try:
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM (ANALYZE) {conn.dialect.identifier_preparer.format_table(outbox_pending)}")
    except sa.exc.DBAPIError as exc:  # e.g. a role that does not own the table: autovacuum will do it
        log.warning("relay: outbox_pending not vacuumed (%s); autovacuum will", type(exc.orig).__name__)


@contextmanager
def _relay_lock(eng: sa.Engine, wait: bool) -> Iterator[bool]:
    """Hold the warehouse's relay lock for the block; yields False (holding nothing) when ``wait``
    is False and another relay holds it. PostgreSQL: a session advisory lock on a connection of
    its own, with no transaction left open while the relay runs. SQLite has one writer at a
    time and nothing to hold."""
    if eng.dialect.name != "postgresql":
        yield True
        return
    with eng.connect() as conn:
        if wait:
            conn.execute(sa.select(sa.func.pg_advisory_lock(RELAY_LOCK_KEY)))
        elif not conn.execute(sa.select(sa.func.pg_try_advisory_lock(RELAY_LOCK_KEY))).scalar():
            conn.rollback()
            yield False
            return
        conn.commit()
        try:
            yield True
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(RELAY_LOCK_KEY)))
            conn.commit()


def _drain(eng: sa.Engine, client: "redis.Redis", cfg: NoticeStreamConfig,
           page: Callable[[sa.Row | None], sa.Select], message: Callable[[sa.Row], str], record,
           batch: int) -> tuple[int, str | None]:
    """Publish what ``page`` finds, page by page (``page(last row)``: the rows after it), recording
    each page after it is published; returns (messages published, the outage's description or None).

    Three stages overlap, one thread each: reading and serialising the next page, publishing this
    one, recording the previous one. Pages are published and recorded in order, a page is recorded
    only once Redis has answered for it, and a failure stops the run after the pages before it are
    recorded: the same at-least-once bookkeeping as one page at a time.
    """
    import redis  # noqa: PLC0415

    def read(after: sa.Row | None) -> tuple[list[sa.Row], list[str]]:
        with eng.connect() as conn:
            rows = conn.execute(page(after).limit(batch)).all()
            if after is None and len(rows) == batch:
                # Many pages ahead: plan them on real row counts (a fresh outbox has no statistics
                # yet, and without them PostgreSQL sorts the whole outbox again for every page).
                bulk.analyze(conn, [notices, outbox_published, notice_events, outbox_pending])
                conn.commit()
        return rows, [message(r) for r in rows]

    published, error, recording = 0, None, None
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="relay") as stages:
        try:
            ahead = stages.submit(read, None)
            while True:
                rows, bodies = ahead.result()
                if not rows:
                    break
                ahead = stages.submit(read, rows[-1])
                try:
                    stream_ids = _publish(client, cfg, bodies)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    error = (
                        f"notices stream {cfg.stream}: Redis unreachable at {redact_url(cfg.redis_url)} "
                        f"({exc.__class__.__name__}); nothing of this batch was recorded: start Redis (or fix "
                        "RENKEI_REDIS_URL) and the next relay run publishes every pending notice"
                    )
                    log.error("%s", error)
                    break
                if recording is not None:
                    done, recording = recording, None
                    published += done.result()
                recording = stages.submit(_recorded, record, eng, rows, stream_ids)
        finally:
            if recording is not None:  # the pages published before a stop or an error are recorded
                published += recording.result()
    return published, error


def _recorded(record: Callable, eng: sa.Engine, rows: list[sa.Row], stream_ids: list[str]) -> int:
    record(eng, rows, stream_ids)
    return len(rows)


def _unpublished(after: sa.Row | None = None, body: bool = False) -> sa.Select:
    """Unpublished notices in created order (``after``: those after that row of the order): the
    notices in ``outbox_pending``, which its triggers keep equal to those without an
    ``outbox_published`` row (renkei.warehouse.install_outbox_pending). ``body``: each row's
    message body made by PostgreSQL (:func:`notice_body_sql`) instead of the whole row."""
    p = outbox_pending.c
    columns = (notices.c.notice_id, p.created_at, notice_body_sql().label("body")) if body else (notices,)
    query = (
        sa.select(*columns)
        .join(outbox_pending, p.notice_id == notices.c.notice_id)
        .order_by(p.created_at, p.notice_id)
    )
    if after is not None:
        query = query.where(sa.tuple_(p.created_at, p.notice_id) > sa.tuple_(after.created_at, after.notice_id))
    return query


def _unpublished_states(after: sa.Row | None = None) -> sa.Select:
    """Unpublished transitions of published notices in ``seq`` order (``after``: past that row)."""
    e = notice_events.c
    query = (
        sa.select(e.seq, e.notice_id, e.state, e.reason, e.superseded_by, e.at, e.run_id)
        .join(outbox_published, outbox_published.c.notice_id == e.notice_id)
        .where(e.stream_id.is_(None))
        .order_by(e.seq)
    )
    return query if after is None else query.where(e.seq > after.seq)


_quote = json.encoder.encode_basestring  # the string encoder of json.dumps(ensure_ascii=False)


def _int(value: int | None) -> str:
    return "null" if value is None else int.__repr__(value)


def _notice_json(row: sa.Row, include_facts: bool) -> str:
    """``Notice.from_row(row, include_facts).to_json()`` — compact, keys sorted — written straight
    from the row (the relay's hot loop; tests/integration/test_relay.py holds the two equal)."""
    q = _quote
    facts = _facts_json(row) if include_facts else "{}"
    replaces = "" if row.replaces is None else f',"replaces":{q(row.replaces)}'
    return (
        f'{{"created_at":{q(row.created_at)},"created_run_id":{q(row.created_run_id)},'
        f'"dose_number":{_int(row.dose_number)},"erk":{q(row.erk)},"evaluated_on":"{row.evaluated_on.isoformat()}",'
        f'"facts":{facts},"kind":{q(row.kind)},"notice_id":{q(row.notice_id)}{replaces},'
        f'"rule_id":{q(row.rule_id)},"rule_version":{_int(row.rule_version)},"service":{q(row.service)},'
        f'"subject":{q(row.subject)},"window_end":"{row.window_end.isoformat()}",'
        f'"window_start":"{row.window_start.isoformat()}"}}'
    )


def notice_body_sql() -> sa.ColumnElement:
    """PostgreSQL: ``_notice_json(row, include_facts=False)`` as an SQL expression over
    ``notices``, byte for byte (test_relay holds the three equal). ``to_json`` of a text escapes
    exactly what Python's ``json`` does without ``ensure_ascii`` (quote, backslash, the control
    characters: \\b \\f \\n \\r \\t and \\u00XX for the rest) and leaves other text as it is."""
    n = notices.c

    def text(column: sa.ColumnElement) -> sa.ColumnElement:
        return sa.cast(sa.func.to_json(column), sa.Text)

    def number(column: sa.ColumnElement) -> sa.ColumnElement:
        return sa.func.coalesce(sa.cast(column, sa.Text), "null")

    def day(column: sa.ColumnElement) -> sa.ColumnElement:
        return sa.func.to_char(column, "YYYY-MM-DD")

    replaces = sa.case((n.replaces.is_(None), ""), else_=sa.func.concat(',"replaces":', text(n.replaces)))
    return sa.func.concat(
        '{"created_at":', text(n.created_at), ',"created_run_id":', text(n.created_run_id),
        ',"dose_number":', number(n.dose_number), ',"erk":', text(n.erk), ',"evaluated_on":"', day(n.evaluated_on),
        '","facts":{},"kind":', text(n.kind), ',"notice_id":', text(n.notice_id), replaces,
        ',"rule_id":', text(n.rule_id), ',"rule_version":', number(n.rule_version), ',"service":', text(n.service),
        ',"subject":', text(n.subject), ',"window_end":"', day(n.window_end), '","window_start":"', day(n.window_start),
        '"}',
    )


def _row_body(row: sa.Row) -> str:
    return row.body


def _facts_json(row: sa.Row) -> str:
    try:
        facts = json.loads(row.facts)
    except ValueError:
        raise NoticeError(
            f"notice {row.notice_id}: column facts is not JSON: rewrite the row with renkei.outputs.outbox"
        ) from None
    return json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _state_json(row: sa.Row) -> str:
    """``NoticeState.from_row(row).to_json()``, written straight from the row."""
    q = _quote
    superseded_by = "null" if row.superseded_by is None else q(row.superseded_by)
    return (
        f'{{"at":{q(row.at)},"notice_id":{q(row.notice_id)},"reason":{q(row.reason)},"run_id":{q(row.run_id)},'
        f'"seq":{_int(row.seq)},"state":{q(row.state)},"superseded_by":{superseded_by},"type":{q(STATE_TYPE)}}}'
    )


# The templates above (and notice_body_sql) name every message field, keys sorted: a field added to Notice or
# NoticeState must be added there too (checked on import; test_relay compares the bodies).
if [f.name for f in fields(Notice) if f.name != "message_id"] != [
    "notice_id", "service", "kind", "erk", "rule_id", "rule_version", "subject", "dose_number", "window_start",
    "window_end", "evaluated_on", "facts", "created_run_id", "created_at", "replaces",
] or [f.name for f in fields(NoticeState) if f.name != "message_id"] != [
    "seq", "notice_id", "state", "reason", "superseded_by", "at", "run_id",
]:
    raise ImportError("renkei.outputs.relay: the message fields changed: update _notice_json and _state_json")


def _publish(client: "redis.Redis", cfg: NoticeStreamConfig, batch: list[str]) -> list[str]:
    """XADD each message body in one MULTI/EXEC, sent as one pipelined write; returns the entry
    ids in order.

    What redis-py's transaction pipeline does, without its per-command bookkeeping (this is the
    relay's hot path): MULTI, the XADDs, EXEC in one write, then every reply read off the
    connection. Any error discards the connection (replies may be left unread on it) and is raised.
    """
    import redis  # noqa: PLC0415

    # XADD <stream> [MAXLEN ~ n] * data <body>, as redis-py's xadd() builds it.
    head = ("XADD", cfg.stream, *(("MAXLEN", "~", cfg.maxlen) if cfg.maxlen else ()), "*", "data")
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([pack_transaction(head, batch)])
        queued = [_reply(conn) for _ in range(len(batch) + 1)]  # OK for MULTI, QUEUED for each XADD
        refused = next((r for r in queued if isinstance(r, redis.ResponseError)), None)
        ids = _reply(conn)  # EXEC: the entry ids (EXECABORT when a command was refused)
        if refused is not None:
            raise refused
        if isinstance(ids, Exception):
            raise ids
        failed = next((i for i in ids if isinstance(i, Exception)), None) if isinstance(ids, list) else None
        if failed is not None or not isinstance(ids, list) or len(ids) != len(batch):
            raise failed or redis.ResponseError(f"notices stream {cfg.stream}: EXEC answered {ids!r:.80}")
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def pack_transaction(head: tuple, bodies: list[str]) -> bytes:
    """MULTI, ``*head, body`` for each body, EXEC in the Redis protocol: the bytes redis-py's
    ``pack_commands`` writes for them (test_relay holds the two equal), at a fraction of its
    cost — its per-argument packer was most of the relay's own CPU time."""
    def bulk(arg: bytes) -> bytes:
        return b"$%d\r\n%b\r\n" % (len(arg), arg)

    lead = b"*%d\r\n" % (len(head) + 1) + b"".join(bulk(str(a).encode()) for a in head) + b"$%d\r\n%b\r\n"
    encoded = (body.encode() for body in bodies)
    return b"".join([b"*1\r\n$5\r\nMULTI\r\n", *[lead % (len(b), b) for b in encoded], b"*1\r\n$4\r\nEXEC\r\n"])


def _reply(conn: "redis.connection.Connection") -> object:
    """The next reply on ``conn``; a command's error reply as the exception, not raised."""
    import redis  # noqa: PLC0415

    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc


def _unnest(**columns: tuple[list, sa.types.TypeEngine]) -> sa.TableValuedAlias:
    """PostgreSQL: the given arrays side by side as a table (one array parameter per column):
    a page is recorded by one statement instead of one row at a time."""
    from sqlalchemy.dialects.postgresql import ARRAY  # noqa: PLC0415

    args = [sa.bindparam(f"u_{name}", values, type_=ARRAY(typ)) for name, (values, typ) in columns.items()]
    return sa.func.unnest(*args).table_valued(*columns).render_derived(name="page", with_types=False)


def _record(eng: sa.Engine, rows: list[sa.Row], stream_ids: list[str]) -> None:
    now = format_timestamp(datetime.now(timezone.utc))
    with eng.begin() as conn:
        # DO NOTHING: a concurrent relay that published the same notice keeps its first record.
        if conn.dialect.name == "postgresql":
            page = _unnest(notice_id=([r.notice_id for r in rows], sa.String()), stream_id=(stream_ids, sa.String()))
            stmt = dialect_insert(conn)(outbox_published).from_select(
                ["notice_id", "stream_id", "published_at"],
                sa.select(page.c.notice_id, page.c.stream_id, sa.literal(now, outbox_published.c.published_at.type)))
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["notice_id"]))
        else:
            upsert(conn, outbox_published, [{"notice_id": r.notice_id, "stream_id": sid, "published_at": now}
                                            for r, sid in zip(rows, stream_ids)], update=False)


def _record_states(eng: sa.Engine, rows: list[sa.Row], stream_ids: list[str]) -> None:
    now = format_timestamp(datetime.now(timezone.utc))
    e = notice_events.c
    with eng.begin() as conn:
        # stream_id IS NULL: a concurrent relay that published the same event keeps its first record.
        if conn.dialect.name == "postgresql":
            page = _unnest(seq=([r.seq for r in rows], sa.Integer()), stream_id=(stream_ids, sa.String()))
            conn.execute(notice_events.update().where(e.seq == page.c.seq, e.stream_id.is_(None))
                         .values(stream_id=page.c.stream_id, published_at=now))
        else:
            stmt = (notice_events.update().where(e.seq == sa.bindparam("b_seq"), e.stream_id.is_(None))
                    .values(stream_id=sa.bindparam("b_sid"), published_at=now))
            conn.execute(stmt, [{"b_seq": r.seq, "b_sid": sid} for r, sid in zip(rows, stream_ids)])
