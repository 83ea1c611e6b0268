"""Benchmark: change → notice on the stream, through the real event-driven runtime.

    .venv/bin/python bench/event_latency.py [--events 20] [--gap 2] [--out bench/results/event_latency.json]

Starts the whole system (renkei.devstack: PostgreSQL metadata and warehouse, Redis, scheduler,
dag-processor, triggerer, api-server; LocalExecutor), warms it up, then registers one newborn
at a time: runs the export adapter, publishes the change event (t0) and waits until the child's
notices are in the outbox (t_outbox) and on the notices stream (t_stream). Reports p50/p95/max
and where the time goes, from the Airflow metadata (per-DAG queue and run times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain_run import commit, machine  # noqa: E402

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))], 2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between one notice arriving and the next change")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "event_latency.json"))
    args = ap.parse_args()

    from renkei.config import ingest_sources
    from renkei.devstack import DevStack

    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    names = [f"renkei_bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with admin.connect() as conn:
        for n in names:
            conn.execute(sa.text(f'CREATE DATABASE "{n}"'))
    urls = [ADMIN.rsplit("/", 1)[0] + f"/{n}" for n in names]
    stack = None
    try:
        with tempfile.TemporaryDirectory(prefix="renkei-latency-") as tmp:
            stack = DevStack.launch(Path(tmp), warehouse=urls[0], airflow_db=urls[1])
            for src in ingest_sources():
                stack.export_and_publish(src.name)
            code = stack.add_birth()
            stack.export_and_publish("registry")
            warm = stack.wait_for("warm-up", lambda: len(stack.notices_for(code)) >= 3, 600)
            # Measure from an idle system: the warm-up's own queued runs would delay the first event.
            warm += stack.wait_for("quiet scheduler", lambda: active_runs(urls[1]) == 0, 600, poll=1.0)
            print(f"warm-up (all sources + first newborn, until no run is queued): {warm:.1f}s", flush=True)
            outbox, stream = [], []
            for i in range(args.events):
                time.sleep(args.gap)
                code = stack.add_birth()
                t0 = time.monotonic()
                stack.export_and_publish("registry")
                stack.wait_for("outbox", lambda: len(stack.notices_for(code)) >= 3, 300, poll=0.25)
                outbox.append(time.monotonic() - t0)
                ids = stack.notices_for(code)
                stack.wait_for("stream", lambda: ids <= set(stack.stream_notice_ids()), 300, poll=0.25)
                stream.append(time.monotonic() - t0)
                print(f"event {i + 1:>2}: outbox {outbox[-1]:5.1f}s  stream {stream[-1]:5.1f}s", flush=True)
            breakdown = dag_breakdown(urls[1])
    finally:
        if stack is not None:
            stack.shutdown()
        with admin.connect() as conn:
            for n in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
    result = {
        "events": args.events,
        "p50_s": pct(stream, 50), "p95_s": pct(stream, 95), "max_s": round(max(stream), 2),
        "outbox_p50_s": pct(outbox, 50), "outbox_p95_s": pct(outbox, 95),
        "mean_s": round(statistics.mean(stream), 2),
        "per_dag_median_s": breakdown,
        "command": "python " + " ".join(sys.argv),
        "machine": machine(), "commit": commit(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def active_runs(airflow_db: str) -> int:
    eng = sa.create_engine(airflow_db)
    with eng.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM dag_run WHERE state IN ('queued', 'running')")).scalar_one()
    eng.dispose()
    return n


def dag_breakdown(airflow_db: str) -> dict:
    """Median queue wait (queued → start) and run time (start → end) per DAG, from the metadata."""
    eng = sa.create_engine(airflow_db)
    with eng.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT dag_id, EXTRACT(EPOCH FROM start_date - queued_at), EXTRACT(EPOCH FROM end_date - start_date) "
            "FROM dag_run WHERE state = 'success' AND start_date IS NOT NULL AND queued_at IS NOT NULL"
        )).all()
    eng.dispose()
    out: dict[str, dict] = {}
    for dag_id in sorted({r[0] for r in rows}):
        q = [float(r[1]) for r in rows if r[0] == dag_id]
        run = [float(r[2]) for r in rows if r[0] == dag_id]
        out[dag_id] = {"runs": len(run), "queued_s": round(statistics.median(q), 2), "run_s": round(statistics.median(run), 2)}
    return out


if __name__ == "__main__":
    sys.exit(main())
