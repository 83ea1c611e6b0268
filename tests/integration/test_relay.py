"""The outbox relay, the notice reader and the `renkei emit` / `renkei notices` commands on a real Redis."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from conftest import need_service

from renkei.cli import main
from renkei.config import load_sources
from renkei.events import ChangeEvent
from renkei.keys.adapter import pseudonymize
from renkei.outputs import Notice, NoticeReader, NoticeState
from renkei.outputs.relay import relay_notices
from renkei.outputs.stream import NoticeStreamConfig
from renkei.settings import Settings
from renkei.warehouse import engine, ensure_schema, notice_events, notices, outbox_published

pytestmark = pytest.mark.redis
REDIS_URL = "redis://127.0.0.1:6379/0"
CLOSED_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: a broker outage
NOTICE_KEYS = {
    "notice_id", "service", "kind", "erk", "rule_id", "rule_version", "subject", "dose_number",
    "window_start", "window_end", "evaluated_on", "facts", "created_run_id", "created_at",
}


@pytest.fixture
def prefix():
    """A Redis key prefix of this test's own; every key under it is deleted afterwards."""
    need_service("Redis", "127.0.0.1", 6379)
    import redis

    pfx = f"renkei:test:{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(REDIS_URL)
    yield pfx
    for key in client.scan_iter(match=f"{pfx}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def client(prefix):
    import redis

    c = redis.Redis.from_url(REDIS_URL)
    yield c
    c.close()


@pytest.fixture
def cfg(prefix) -> NoticeStreamConfig:
    return NoticeStreamConfig(redis_url=REDIS_URL, stream=f"{prefix}notices")


@pytest.fixture
def warehouse(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    eng = engine(url)
    ensure_schema(eng)
    eng.dispose()
    return url


@pytest.fixture
def config_dir(tmp_path, prefix, monkeypatch) -> Path:
    """The repo's config with this test's stream keys, as RENKEI_CONFIG_DIR."""
    cdir = tmp_path / "config"
    shutil.copytree(Settings.from_env().config_dir, cdir)
    doc = yaml.safe_load((cdir / "channels.yaml").read_text(encoding="utf-8"))
    doc["kind"] = "redis_stream"
    doc["redis_stream"]["stream_prefix"] = f"{prefix}changes:"
    doc["notices"]["stream"] = f"{prefix}notices"
    (cdir / "channels.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("RENKEI_CONFIG_DIR", str(cdir))
    for name in ("RENKEI_CHANNEL_KIND", "RENKEI_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    return cdir


def _add_notices(url: str, n: int, start: int = 0, created_at: str = "2025-05-01T06:00:00+09:00") -> list[str]:
    """n outbox rows written as run_services would; returns their ids."""
    rows = []
    for i in range(start, start + n):
        rows.append({
            "notice_id": f"{i:032x}", "service": "immunization", "kind": "due", "erk": f"v1.erk{i:04d}",
            "rule_id": "HIB#1", "rule_version": 1, "subject": "HIB", "dose_number": 1,
            "window_start": date(2025, 5, 1), "window_end": date(2025, 5, 1) + timedelta(days=30 + i),
            "evaluated_on": date(2025, 5, 1),
            "facts": json.dumps({"age_months": 2, "doses_counted": [], "evaluated_on": "2025-05-01"}),
            "created_run_id": "proactive_services/scheduled__2025-05-01", "created_at": created_at,
        })
    eng = engine(url)
    with eng.begin() as conn:
        conn.execute(notices.insert(), rows)
    eng.dispose()
    return [r["notice_id"] for r in rows]


def _stream_ids(client, key: str) -> list[str]:
    return [json.loads(fields[b"data"])["notice_id"] for _, fields in client.xrange(key)]


def _table(url: str, table: sa.Table) -> list[tuple]:
    eng = engine(url)
    with eng.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns))]
    eng.dispose()
    return rows


# -- the relay -----------------------------------------------------------------------------------


def test_each_notice_is_published_exactly_once_across_runs(warehouse, cfg, client):
    later = _add_notices(warehouse, 3, start=0, created_at="2025-05-02T06:00:00+09:00")
    earlier = _add_notices(warehouse, 2, start=10, created_at="2025-05-01T06:00:00+09:00")
    outbox_before = _table(warehouse, notices)

    first = relay_notices(warehouse, cfg, batch=2)  # three batches
    assert first == {"stream": cfg.stream, "published": 5, "pending": 0, "state_events_published": 0, "errors": 0}
    assert _stream_ids(client, cfg.stream) == earlier + later  # created order

    assert relay_notices(warehouse, cfg)["published"] == 0
    newest = _add_notices(warehouse, 2, start=20, created_at="2025-05-03T06:00:00+09:00")
    assert relay_notices(warehouse, cfg)["published"] == 2
    assert _stream_ids(client, cfg.stream) == earlier + later + newest

    recorded = _table(warehouse, outbox_published)
    stream_ids = [msg_id.decode() for msg_id, _ in client.xrange(cfg.stream)]
    assert sorted(r[1] for r in recorded) == sorted(stream_ids)
    assert _table(warehouse, notices)[: len(outbox_before)] == outbox_before  # the outbox is only read


def test_message_is_the_outbox_row_as_json(warehouse, cfg, client):
    _add_notices(warehouse, 1)
    relay_notices(warehouse, NoticeStreamConfig(redis_url=cfg.redis_url, stream=cfg.stream, include_facts=True))  # opted in
    [(msg_id, fields)] = client.xrange(cfg.stream)
    assert set(fields) == {b"data"}
    doc = json.loads(fields[b"data"])
    assert set(doc) == NOTICE_KEYS
    assert doc["facts"] == {"age_months": 2, "doses_counted": [], "evaluated_on": "2025-05-01"}
    assert doc["window_end"] == "2025-05-31" and doc["rule_version"] == 1
    notice = Notice.from_json(fields[b"data"], msg_id.decode())
    assert notice.window_end == date(2025, 5, 31) and notice.message_id == msg_id.decode()
    assert json.loads(notice.to_json()) == doc


def test_facts_stay_off_the_stream_by_default(warehouse, cfg, client):
    """A NoticeStreamConfig built in code, with no setting, keeps linked health facts off the stream."""
    _add_notices(warehouse, 1)
    relay_notices(warehouse, NoticeStreamConfig(redis_url=cfg.redis_url, stream=cfg.stream))
    [(_, fields)] = client.xrange(cfg.stream)
    assert json.loads(fields[b"data"])["facts"] == {}


def test_facts_stay_off_the_stream_when_configured(warehouse, cfg, client):
    _add_notices(warehouse, 1)
    relay_notices(warehouse, NoticeStreamConfig(redis_url=cfg.redis_url, stream=cfg.stream, include_facts=False))
    [(_, fields)] = client.xrange(cfg.stream)
    assert json.loads(fields[b"data"])["facts"] == {}


def test_outage_publishes_and_records_nothing_then_catches_up_without_duplicates(warehouse, cfg, client):
    ids = _add_notices(warehouse, 3)
    down = NoticeStreamConfig(redis_url=CLOSED_URL, stream=cfg.stream)

    counts = relay_notices(warehouse, down, batch=2)
    assert (counts["published"], counts["pending"], counts["errors"]) == (0, 3, 1)
    assert "Redis unreachable at redis://127.0.0.1:1/0" in counts["error"] and "next relay run" in counts["error"]
    assert _table(warehouse, outbox_published) == []
    assert client.exists(cfg.stream) == 0

    assert relay_notices(warehouse, cfg, batch=2) == {
        "stream": cfg.stream, "published": 3, "pending": 0, "state_events_published": 0, "errors": 0}
    assert relay_notices(warehouse, cfg)["published"] == 0
    assert _stream_ids(client, cfg.stream) == ids


def test_changelog_kind_has_no_broker_and_records_nothing(warehouse):
    _add_notices(warehouse, 2)
    assert relay_notices(warehouse, NoticeStreamConfig(kind="changelog_table")) == {"skipped": "no broker configured"}
    assert _table(warehouse, outbox_published) == []


def _add_transition(url: str, notice_id: str, state: str, reason: str, superseded_by: str | None = None) -> None:
    """A lifecycle event as a services run appends it."""
    eng = engine(url)
    with eng.begin() as conn:
        conn.execute(notice_events.insert().values(
            notice_id=notice_id, state=state, reason=reason, superseded_by=superseded_by,
            run_id="proactive_services/scheduled__2025-05-02", at="2025-05-02T06:00:04+09:00"))
    eng.dispose()


def test_state_messages_follow_their_notice_once(warehouse, cfg, client):
    old, new = _add_notices(warehouse, 2)
    eng = engine(warehouse)
    with eng.begin() as conn:
        conn.execute(notices.update().where(notices.c.notice_id == new).values(replaces=old))
    eng.dispose()
    _add_transition(warehouse, old, "superseded", "rule_asks_other", new)

    assert relay_notices(warehouse, cfg) == {
        "stream": cfg.stream, "published": 2, "pending": 0, "state_events_published": 1, "errors": 0}
    entries = client.xrange(cfg.stream)
    docs = [json.loads(fields[b"data"]) for _, fields in entries]
    assert [d["notice_id"] for d in docs] == [old, new, old]
    assert "replaces" not in docs[0] and docs[1]["replaces"] == old and set(docs[1]) == NOTICE_KEYS | {"replaces"}
    assert docs[2] == {"type": "notice_state", "seq": 1, "notice_id": old, "state": "superseded",
                       "reason": "rule_asks_other", "superseded_by": new, "at": "2025-05-02T06:00:04+09:00",
                       "run_id": "proactive_services/scheduled__2025-05-02"}
    [(seq, stream_id, published_at)] = [(r[0], r[7], r[8]) for r in _table(warehouse, notice_events)]
    assert stream_id == entries[2][0].decode() and published_at is not None

    # Each once: a second run publishes nothing; a later transition goes out alone.
    assert relay_notices(warehouse, cfg)["state_events_published"] == 0
    _add_transition(warehouse, old, "reinstated", "basis_restored")
    assert relay_notices(warehouse, cfg)["state_events_published"] == 1
    assert [json.loads(f[b"data"]).get("state") for _, f in client.xrange(cfg.stream)] == [
        None, None, "superseded", "reinstated"]


def test_pages_on_postgresql_go_out_in_created_order_each_recorded_once(pg_factory, prefix, client):
    """PostgreSQL's own paths: keyset pages on the created-order index, each page recorded by one
    statement (unnest), transitions recorded by one UPDATE … FROM; a capped stream (MAXLEN ~)."""
    url = pg_factory()
    eng = engine(url)
    ensure_schema(eng)
    eng.dispose()
    # created order is not id order: three runs, ids interleaved across them
    ids = [_add_notices(url, 4, start=run * 100, created_at=f"2025-05-0{3 - run}T06:00:00+09:00") for run in range(3)]
    in_created_order = ids[2] + ids[1] + ids[0]
    _add_transition(url, ids[0][1], "withdrawn", "dose_recorded")
    _add_transition(url, ids[2][3], "withdrawn", "opted_out")
    capped = NoticeStreamConfig(redis_url=REDIS_URL, stream=f"{prefix}notices", maxlen=1000)

    counts = relay_notices(url, capped, batch=5)  # pages of 5, 5, 2; then one page of 2 transitions
    assert counts == {"stream": capped.stream, "published": 12, "pending": 0, "state_events_published": 2, "errors": 0}
    docs = [(msg_id.decode(), json.loads(f[b"data"])) for msg_id, f in client.xrange(capped.stream)]
    assert [d["notice_id"] for _, d in docs] == [*in_created_order, ids[0][1], ids[2][3]]
    assert [d.get("state") for _, d in docs[12:]] == ["withdrawn", "withdrawn"]
    recorded = dict((r[0], r[1]) for r in _table(url, outbox_published))
    assert recorded == {d["notice_id"]: msg_id for msg_id, d in docs[:12]}
    assert [(r[1], r[7]) for r in _table(url, notice_events)] == [(ids[0][1], docs[12][0]), (ids[2][3], docs[13][0])]
    assert relay_notices(url, capped, batch=5)["published"] == 0


def test_a_relay_on_a_warehouse_of_an_older_version_brings_its_outbox_up_to_date(pg_factory, cfg, client):
    """The relay makes the schema as every task does (warehouse.ensure_schema): on a warehouse
    made before the created-order index and the pending queue's triggers (its renkei_schema
    rows predate them), its first run makes both, fills the queue from the notices without a
    publication, and publishes them."""
    url = pg_factory()
    eng = engine(url)
    ensure_schema(eng)
    ids = _add_notices(url, 5)
    with eng.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_notices_created_order"))
        for trigger, table in conn.execute(sa.text(
                "SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal")).all():
            conn.execute(sa.text(f'DROP TRIGGER "{trigger}" ON {table}'))
        conn.execute(sa.text("DELETE FROM outbox_pending"))
        conn.execute(sa.text("DELETE FROM renkei_schema"))
    assert relay_notices(url, cfg)["published"] == 5
    with eng.connect() as conn:
        index = conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_notices_created_order'")).scalar()
        triggers = conn.execute(sa.text("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal")).scalar_one()
    eng.dispose()
    assert index is not None and "created_at, notice_id" in index
    assert triggers > 0
    assert sorted(json.loads(f[b"data"])["notice_id"] for _, f in client.xrange(cfg.stream)) == sorted(ids)
    assert _add_notices(url, 2, start=100) and relay_notices(url, cfg)["published"] == 2  # the triggers queue new ones


def test_a_large_drain_vacuums_the_pending_queue_at_once(pg_factory, cfg, client, monkeypatch):
    """Every published notice leaves a dead row in outbox_pending; a relay that published a page
    or more vacuums it before the next relay's first page has to walk them (autovacuum comes a
    minute or more later). A small relay does not."""
    from renkei.outputs import relay

    url = pg_factory()
    monkeypatch.setattr(relay, "VACUUM_AFTER", 10)
    eng = engine(url)
    ensure_schema(eng)

    def vacuums() -> int:
        with eng.connect() as conn:
            return conn.execute(sa.text("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox_pending'")
                                ).scalar_one()

    _add_notices(url, 12)
    assert relay_notices(url, cfg)["published"] == 12
    deadline = time.monotonic() + 10  # the statistics are reported asynchronously
    while vacuums() == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vacuums() == 1
    _add_notices(url, 3, start=100)
    assert relay_notices(url, cfg)["published"] == 3
    time.sleep(1)
    assert vacuums() == 1
    eng.dispose()


def test_message_body_is_the_notice_dataclass_json(engine_url, cfg, client):
    """The relay writes message bodies straight from the row (on PostgreSQL without facts, the
    database writes them: relay.notice_body_sql); they are exactly what ``Notice.to_json`` /
    ``NoticeState.to_json`` make of the same rows (escapes of every control character, quotes,
    backslashes, non-ASCII text, a missing dose, ``replaces``, facts in or out)."""
    warehouse = engine_url
    eng = engine(warehouse)
    ensure_schema(eng)
    eng.dispose()
    [a, b] = _add_notices(warehouse, 2)
    odd = 'EV"\\\n予約\t\b\f\r' + "".join(map(chr, range(1, 32))) + "\x7f\u2028\U0001F600 \\u00e9"
    eng = engine(warehouse)
    with eng.begin() as conn:
        conn.execute(notices.update().where(notices.c.notice_id == b).values(
            replaces=a, dose_number=None, subject=odd[:32], erk=f"v1.{odd}", created_run_id=f"run/{odd}",
            rule_id=odd[-20:], facts=json.dumps({"z": [1, "あ"], "a": None})))
    eng.dispose()
    _add_transition(warehouse, a, "superseded", "rule_asks_other", b)
    for include_facts in (False, True):
        stream = f"{cfg.stream}:{include_facts}"
        relay_notices(warehouse, NoticeStreamConfig(redis_url=cfg.redis_url, stream=stream, include_facts=include_facts))
        eng = engine(warehouse)
        with eng.begin() as conn:
            rows = {r["notice_id"]: r for r in conn.execute(sa.select(notices)).mappings()}
            [event] = conn.execute(sa.select(notice_events)).mappings().all()
            expected = [Notice.from_row(rows[a], include_facts).to_json(), Notice.from_row(rows[b], include_facts).to_json(),
                        NoticeState.from_row(event).to_json()]
            conn.execute(outbox_published.delete())  # publish the same rows again to the next stream
            conn.execute(notice_events.update().values(stream_id=None, published_at=None))
        eng.dispose()
        assert [f[b"data"].decode() for _, f in client.xrange(stream)] == expected
    if warehouse.startswith("postgresql"):  # the expression itself, whichever path the relay took
        from renkei.outputs.relay import notice_body_sql

        eng = engine(warehouse)
        with eng.connect() as conn:
            made = dict(conn.execute(sa.select(notices.c.notice_id, notice_body_sql())).all())
        eng.dispose()
        assert made == {a: Notice.from_row(rows[a], False).to_json(), b: Notice.from_row(rows[b], False).to_json()}
        assert "\\u0001" in made[b] and "\\u001f" in made[b] and "\U0001F600" in made[b]


def test_one_relay_at_a_time_on_postgresql(pg_factory, cfg, client):
    """Two relays at once would read the same pending pages and put every notice on the stream
    twice. While one holds the warehouse's relay lock, another asked not to wait (services'
    relay_at_once) publishes nothing and says so; one that waits (relay_notices' own run)
    publishes once the first is done — each notice once on the stream."""
    import threading

    from renkei.outputs.relay import BUSY, RELAY_LOCK_KEY

    url = pg_factory()
    eng = engine(url)
    ensure_schema(eng)
    eng.dispose()
    ids = _add_notices(url, 3)
    holder_eng = engine(url)
    holder = holder_eng.connect()  # another relay, mid-run
    holder.execute(sa.select(sa.func.pg_advisory_lock(RELAY_LOCK_KEY)))
    holder.commit()
    try:
        assert relay_notices(url, cfg, wait=False) == {"skipped": BUSY}
        assert client.xlen(cfg.stream) == 0
        waited: dict = {}
        waiter = threading.Thread(target=lambda: waited.update(relay_notices(url, cfg)))
        waiter.start()
        waiter.join(1.5)
        assert waiter.is_alive() and client.xlen(cfg.stream) == 0, "the waiting relay went ahead of the lock"
    finally:
        holder.execute(sa.select(sa.func.pg_advisory_unlock(RELAY_LOCK_KEY)))
        holder.commit()
        holder.close()
        holder_eng.dispose()
    waiter.join(30)
    assert waited["published"] == 3 and _stream_ids(client, cfg.stream) == ids
    assert relay_notices(url, cfg, wait=False)["published"] == 0  # free again: nothing left


@pytest.mark.parametrize("head", [("XADD", "r:notices", "*", "data"), ("XADD", "r:notices", "MAXLEN", "~", 100_000, "*", "data")],
                         ids=["plain", "capped"])
def test_the_relay_writes_the_transaction_redis_py_would(head):
    """relay.pack_transaction (the relay's own packer) against redis-py's pack_commands, byte for
    byte: empty, non-ASCII, quoted and protocol-like bodies, and a long one."""
    import redis

    from renkei.outputs.relay import pack_transaction

    bodies = ["", '{"a":"x"}', '予約 "quoted" \\ back', "\r\n$3\r\n*1\r\n", "x" * 70_000]
    theirs = redis.Connection().pack_commands([("MULTI",), *((*head, b) for b in bodies), ("EXEC",)])
    assert pack_transaction(head, bodies) == b"".join(theirs)


def test_a_state_message_waits_for_its_notice_through_an_outage(warehouse, cfg, client):
    [nid] = _add_notices(warehouse, 1)
    _add_transition(warehouse, nid, "withdrawn", "opted_out")
    down = relay_notices(warehouse, NoticeStreamConfig(redis_url=CLOSED_URL, stream=cfg.stream))
    assert (down["published"], down["state_events_published"], down["errors"]) == (0, 0, 1)
    assert [r[7] for r in _table(warehouse, notice_events)] == [None]
    # A transition of a notice the outbox does not hold (never published) is never published.
    _add_transition(warehouse, "f" * 32, "withdrawn", "opted_out")

    up = relay_notices(warehouse, cfg)
    assert (up["published"], up["state_events_published"], up["errors"]) == (1, 1, 0)
    docs = [json.loads(fields[b"data"]) for _, fields in client.xrange(cfg.stream)]
    assert [(d["notice_id"], d.get("type")) for d in docs] == [(nid, None), (nid, "notice_state")]
    assert [r[7] is None for r in _table(warehouse, notice_events)] == [False, True]


# -- the reader ----------------------------------------------------------------------------------


def test_reader_reads_acks_and_rereads_its_pending_after_a_crash(warehouse, cfg, client):
    ids = _add_notices(warehouse, 3)
    relay_notices(warehouse, cfg)

    first = NoticeReader(REDIS_URL, cfg.stream, "delivery", "worker-1")
    got = first.read(count=10)
    assert [n.notice_id for n in got] == ids and all(n.message_id for n in got)
    assert first.ack(got[:1]) == 1
    first.close()  # the worker dies with two notices read but not acknowledged

    # Another consumer of the group does not get them: they are pending on worker-1.
    with NoticeReader(REDIS_URL, cfg.stream, "delivery", "worker-2") as other:
        assert other.read(count=10) == []

    with NoticeReader(REDIS_URL, cfg.stream, "delivery", "worker-1") as again:
        pending = again.read(count=10)
        assert [n.notice_id for n in pending] == ids[1:]
        assert [n.message_id for n in pending] == [n.message_id for n in got[1:]]  # the same entries
        assert again.ack(pending) == 2
        assert again.read(count=10) == []
        newer = _add_notices(warehouse, 1, start=50)
        relay_notices(warehouse, cfg)
        assert [n.notice_id for n in again.read(count=10, block_ms=100)] == newer
    assert client.xpending(cfg.stream, "delivery")["pending"] == 1  # the newest, not acknowledged


def test_reader_yields_state_messages_as_notice_states(warehouse, cfg, client):
    old, new = _add_notices(warehouse, 2)
    _add_transition(warehouse, old, "superseded", "rule_asks_other", new)
    _add_transition(warehouse, old, "reinstated", "basis_restored")
    relay_notices(warehouse, cfg)
    with NoticeReader(REDIS_URL, cfg.stream, "delivery", "worker-1") as reader:
        got = reader.read(count=10)
        assert [type(m) for m in got] == [Notice, Notice, NoticeState, NoticeState]
        first, second = got[2], got[3]
        assert (first.notice_id, first.state, first.reason, first.superseded_by) == (
            old, "superseded", "rule_asks_other", new)
        assert (second.seq, second.state, second.superseded_by) == (2, "reinstated", None) and first.seq == 1
        assert second.message_id == client.xrange(cfg.stream)[3][0].decode()
        assert reader.ack(got) == 4
    assert client.xpending(cfg.stream, "delivery")["pending"] == 0


def test_reader_drops_a_malformed_entry_and_reads_on(warehouse, cfg, client, caplog):
    client.xadd(cfg.stream, {"data": b'{"notice_id": "x"}'})
    ids = _add_notices(warehouse, 1)
    relay_notices(warehouse, cfg)
    with caplog.at_level(logging.ERROR, logger="renkei.outputs.reader"), \
            NoticeReader(REDIS_URL, cfg.stream, "delivery", "worker-1") as reader:
        assert [n.notice_id for n in reader.read(count=1)] == ids
    assert "missing" in caplog.text
    assert client.xpending(cfg.stream, "delivery")["pending"] == 1  # only the good one awaits its ack


# -- the commands --------------------------------------------------------------------------------

REGISTRY_ROWS = [
    {"resident_code": "12345678901", "name_kana": "ヤマダ タロウ", "name_kanji": "山田太郎", "birth_date": "2024-04-10",
     "sex": "1", "ward_code": "401030", "address": "北九州市戸畑区中本町1番1号", "household_code": "H0001",
     "status": "active", "status_date": "2024-04-10", "updated_at": "2025-05-01T09:00:00+09:00"},
    {"resident_code": "12345678902", "name_kana": "ヤマダ ハナコ", "name_kanji": "山田花子", "birth_date": "1990-01-02",
     "sex": "2", "ward_code": "401030", "address": "北九州市戸畑区中本町1番1号", "household_code": "H0001",
     "status": "active", "status_date": "2020-01-01", "updated_at": "2025-05-02T10:30:00+09:00"},
]


def test_emit_publishes_a_well_formed_event_for_an_extract(config_dir, tmp_path, prefix, client, ring, capsys):
    registry = load_sources()["registry"]
    raw = tmp_path / "registry.csv"
    with open(raw, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=registry.raw_columns)
        w.writeheader()
        w.writerows(REGISTRY_ROWS)
    extracts = f"sqlite:///{tmp_path / 'extracts.db'}"
    pseudonymize(registry, str(raw), extracts, ring)
    capsys.readouterr()

    assert main(["emit", "--source", "registry", "--extracts", extracts]) == 0
    out = capsys.readouterr().out
    event = ChangeEvent.from_json(out.strip())
    # the last change_seq of the extract (two rows: 1, 2) and the size of its last export
    assert (event.source, event.change_seq, event.row_count) == ("registry", 2, 2)
    [(_, fields)] = client.xrange(f"{prefix}changes:registry")
    assert ChangeEvent.from_json(fields[b"data"]) == event
    for row in REGISTRY_ROWS:  # nothing of a record travels
        assert row["resident_code"] not in out and row["name_kana"] not in out


def test_emit_names_a_missing_extract_and_an_unknown_source(config_dir, tmp_path, capsys):
    extracts = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["emit", "--source", "registry", "--extracts", extracts]) == 2
    assert "no table extract_registry" in capsys.readouterr().err
    assert main(["emit", "--source", "nope", "--extracts", extracts]) == 2
    assert "unknown source 'nope'" in capsys.readouterr().err


def test_notices_tail_prints_json_lines_and_acks(config_dir, warehouse, cfg, client, capsys):
    ids = _add_notices(warehouse, 3)
    assert main(["notices", "relay", "--warehouse", warehouse]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "stream": cfg.stream, "published": 3, "pending": 0, "state_events_published": 0, "errors": 0}

    # A new group starts at the stream's end unless told to read from the start.
    assert main(["notices", "tail", "--group", "ops"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["notices", "tail", "--group", "ops", "--from-start", "--count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["notice_id"] for line in lines] == ids[:2]
    assert all(set(json.loads(line)) == NOTICE_KEYS for line in lines)

    assert main(["notices", "tail", "--group", "ops"]) == 0  # printed ones were acked: only the third
    assert [json.loads(line)["notice_id"] for line in capsys.readouterr().out.splitlines()] == ids[2:]
    assert client.xpending(cfg.stream, "ops")["pending"] == 0


def test_notices_tail_prints_state_messages(config_dir, warehouse, cfg, capsys):
    [nid] = _add_notices(warehouse, 1)
    _add_transition(warehouse, nid, "withdrawn", "dose_recorded")
    assert main(["notices", "relay", "--warehouse", warehouse]) == 0
    capsys.readouterr()
    assert main(["notices", "tail", "--group", "ops", "--from-start"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["notice_id"], d.get("type"), d.get("state")) for d in lines] == [
        (nid, None, None), (nid, "notice_state", "withdrawn")]


def test_notices_relay_reports_an_outage_with_exit_code_1(config_dir, warehouse, monkeypatch, capsys):
    _add_notices(warehouse, 2)
    monkeypatch.setenv("RENKEI_REDIS_URL", CLOSED_URL)
    assert main(["notices", "relay", "--warehouse", warehouse]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["pending"] == 2
    assert "Redis unreachable" in captured.err
    assert _table(warehouse, outbox_published) == []


def test_notices_config_is_read_from_channels_yaml(config_dir, prefix, monkeypatch, capsys):
    from renkei.errors import ConfigError
    from renkei.outputs.stream import load_notice_stream

    cfg = load_notice_stream()
    assert (cfg.stream, cfg.maxlen, cfg.include_facts, cfg.has_broker) == (f"{prefix}notices", 0, False, True)  # facts stay off the stream by default
    monkeypatch.setenv("RENKEI_CHANNEL_KIND", "changelog_table")
    assert load_notice_stream().has_broker is False
    assert main(["notices", "tail"]) == 2
    assert "changelog_table" in capsys.readouterr().err

    doc = yaml.safe_load((config_dir / "channels.yaml").read_text(encoding="utf-8"))
    doc["notices"]["maxlen"] = "lots"
    (config_dir / "channels.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match="notices.maxlen must be a int"):
        load_notice_stream()
