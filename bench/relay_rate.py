"""Relay rate: notices per second from the PostgreSQL outbox to the Redis notices stream.

A fresh database of its own gets N outbox rows (one per resident of a city of N residents, as
run_services writes them; created in 20 runs so that created order is not notice id order) and a
tenth of them a lifecycle transition; ``relay_notices`` then publishes all of it to a stream of
its own on a real Redis. The stream and the database are removed afterwards.

    .venv/bin/python bench/relay_rate.py --notices 200000 [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--redis redis://127.0.0.1:6379/0] [--batch N] [--code old]

Writes bench/results/relay_rate.json, or ``--out PATH`` (a trial). ``--code old`` runs git HEAD's
relay instead, for a before/after, and writes only with ``--out``. ``relay_cpu_seconds`` is the
relay process's own CPU time: on a shared machine the wall-clock rate moves with the load
average, which the result records.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
import uuid
from datetime import date, datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from renkei import bulk
from renkei.outputs import relay
from renkei.outputs.stream import NoticeStreamConfig
from renkei.warehouse import engine, ensure_schema, notice_events, notices

RESULTS = Path(__file__).with_name("results") / "relay_rate.json"
FACTS = json.dumps({"age_months": 2, "doses_counted": [], "evaluated_on": "2025-06-01"})


def fill(url: str, n: int) -> int:
    """n outbox rows and a withdrawal for every tenth; returns the number of transitions."""
    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:
        for start in range(0, n, 50_000):
            ids = range(start, min(n, start + 50_000))
            cols = [c.name for c in notices.columns]
            bulk.insert_rows(conn, notices, cols, [(
                f"{i * 2654435761 % 2**64:032x}", "immunization", "due", f"v1.bench-erk-{i:08d}", "HEPB#1", 1,
                "HEPB", 1, date(2025, 6, 1), date(2025, 8, 1), date(2025, 6, 1), FACTS, f"bench/run-{i % 20:02d}",
                f"2025-06-01T06:{i % 20:02d}:00+09:00", None,
            ) for i in ids])
        events = [{"notice_id": f"{i * 2654435761 % 2**64:032x}", "state": "withdrawn", "reason": "dose_recorded",
                   "superseded_by": None, "run_id": "bench/run-20", "at": "2025-06-02T06:00:00+09:00"}
                  for i in range(0, n, 10)]
        conn.execute(sa.insert(notice_events), events)
    eng.dispose()
    return len(events)


def _old_relay():
    """renkei.outputs.relay as of git HEAD."""
    import importlib.util
    import sys
    import tempfile

    text = subprocess.run(["git", "show", "HEAD:plugins/renkei/outputs/relay.py"], capture_output=True, text=True,
                          check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="renkei-old-relay-")) / "relay_old.py"
    path.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("renkei_relay_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notices", type=int, default=200_000)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--batch", type=int, default=relay.DEFAULT_BATCH)
    ap.add_argument("--code", choices=["new", "old"], default="new",
                    help="old: the relay module of git HEAD (for a before/after; written only with --out)")
    ap.add_argument("--out", type=Path, help="write the result here instead of bench/results/relay_rate.json (a trial)")
    args = ap.parse_args()
    relay_module = _old_relay() if args.code == "old" else relay
    import redis

    db = f"renkei_bench_relay_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
    url = args.pg.rsplit("/", 1)[0] + f"/{db}"
    stream = f"renkei:bench:{uuid.uuid4().hex[:8]}:notices"
    client = redis.Redis.from_url(args.redis)
    try:
        transitions = fill(url, args.notices)
        cfg = NoticeStreamConfig(redis_url=args.redis, stream=stream)
        load_before = os.getloadavg()[0]
        t, cpu = time.perf_counter(), time.process_time()
        counts = relay_module.relay_notices(url, cfg, batch=args.batch)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        assert counts["published"] == args.notices and counts["state_events_published"] == transitions, counts
        assert client.xlen(stream) == args.notices + transitions
    finally:
        client.delete(stream)
        client.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "plugins/renkei/outputs"],
                           capture_output=True, text=True).stdout.strip()
    messages = args.notices + transitions
    result = {
        "command": f"bench/relay_rate.py --notices {args.notices} --batch {args.batch}",
        "engine": "postgresql+psycopg", "redis": "local, same machine",
        "commit": commit + ("+uncommitted relay changes" if dirty else ""),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": platform.platform(), "cpus": os.cpu_count(),
        "residents": args.notices, "notices": args.notices, "state_messages": transitions,
        "batch": args.batch, "seconds": round(wall, 2), "relay_cpu_seconds": round(cpu, 2),
        "load_average_1m_before": round(load_before, 2), "load_average_1m_after": round(os.getloadavg()[0], 2),
        "notices_per_s": round(args.notices / wall), "messages_per_s": round(messages / wall),
    }
    if args.code == "old":
        result["code"] = "git HEAD relay (before)"
        result["command"] += " --code old"
    out = args.out or (None if args.code == "old" else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
