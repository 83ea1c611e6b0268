"""Second table, labelled so: a whole-city first load stage by stage by library calls in ONE
process (no Airflow scheduler, executor or task processes), against a bare baseline. What a city
runs is measured by bench/full_run.py (real Airflow components); this script only says where the
time goes inside the tasks.

    .venv/bin/python bench/stage_breakdown.py --residents 1000000 [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]

1. Generates the synthetic city (not timed) and the departments' pseudonymized extracts with
   the export adapter (department side; timed and reported, not part of the chain).
2. **Chain** on a fresh PostgreSQL warehouse: for every ingested source extract → validate →
   convert (department pseudonym → ERK) → load, then link (the mart) and services (the
   notices outbox) — the same library functions the DAG tasks call, in one process, so each
   stage is timed alone. Airflow's own per-task overhead is measured by bench/chain_run.py.
3. **Baseline** on a second fresh database: the same extract → join → insert as plain SQL,
   with no validation and no crypto (raw rows copied in, joined on the plaintext resident code).
Writes bench/results/stage_breakdown.json (the incremental run through Airflow is bench/full_run.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from datetime import date
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from chain_run import commit, machine  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class RssWatch:
    """Peak RSS of this process tree (the benchmark and its ingest workers), sampled every
    0.2 s; the PostgreSQL server's memory is not counted."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        from renkei.local_airflow import descendants

        total = 0
        for pid in (os.getpid(), *descendants(os.getpid())):
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        self.peak_kb = max(self.peak_kb, total)

    def __enter__(self) -> "RssWatch":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.sample()
        self.peak_kb = max(self.peak_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def fresh_db(admin_url: str, tag: str) -> str:
    name = f"renkei_bench_{tag}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_db(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, s: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + s, 3)


def ingest_source(settings, ring_path: str, source_name: str, run_id: str) -> dict:
    """One source's ingest (what its ingest DAG's three tasks do), timed per step."""
    from renkei import ingest
    from renkei.config import load_sources
    from renkei.keys.ring import KeyRing

    src = load_sources()[source_name]
    ring = KeyRing.load(ring_path)
    steps: dict[str, float] = {}
    t = time.perf_counter()
    ex = ingest.extract(src, run_id, settings)
    # The suite runs inside extract, on each chunk as it is read: its seconds count as validate.
    steps["extract"] = time.perf_counter() - t - ex["validate_s"]
    t = time.perf_counter()
    va = ingest.validate(src, run_id, settings)
    steps["validate"] = ex["validate_s"] + time.perf_counter() - t
    t = time.perf_counter()
    lo = ingest.load(src, run_id, ring, settings)
    steps["convert"] = lo["convert_s"]
    steps["load"] = time.perf_counter() - t - lo["convert_s"]
    return {"source": source_name, "steps": steps, "read": ex["read"], "failed": va["failed"],
            "loaded": lo["loaded"], "quarantined": lo["quarantined"]}


def warm_worker() -> int:
    """Import what a task imports (Great Expectations ≈3.5 s), as a long-lived worker has."""
    import great_expectations  # noqa: F401

    from renkei import ingest  # noqa: F401
    from renkei.quality import gx_runner

    gx_runner._batch_definition()
    return os.getpid()


def worker_pool(workers: int):
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    pids = set()
    while len(pids) < workers:  # every worker warm before the clock starts
        pids.update(f.result() for f in [pool.submit(warm_worker) for _ in range(workers * 2)])
    return pool


def run_chain(settings, ring_path: Path, sources, as_of: date, run_id: str, stages: Stages, say, pool,
              workers: int) -> dict:
    """Ingest every source (on the pool's workers, as Airflow runs the per-source ingest DAGs
    side by side), then link and services; returns counts."""
    from renkei.linkage.mart import build_mart
    from renkei.outputs.outbox import run_services

    counts: dict = {"sources": {}}
    t0 = time.perf_counter()
    # Largest first, so that the two workers finish together.
    order = sorted(sources, key=lambda s: -_extract_rows(settings.extracts_url, s))
    futures = [pool.submit(ingest_source, settings, str(ring_path), s.name, run_id) for s in order]
    for f in futures:
        r = f.result()
        for k, v in r["steps"].items():
            stages.add(k, v)
        counts["sources"][r["source"]] = {k: r[k] for k in ("read", "failed", "loaded", "quarantined")}
        say(f"  {r['source']:<14} read {r['read']:>9,}  loaded {r['loaded']:>9,}  quarantined {r['quarantined']:>7,}  "
            + "  ".join(f"{k} {v:.1f}s" for k, v in r["steps"].items()))
    stages.add("ingest_wall", time.perf_counter() - t0)
    t = time.perf_counter()
    counts["mart"] = build_mart(settings.warehouse_url, as_of, run_id)
    stages.add("link", time.perf_counter() - t)
    t = time.perf_counter()
    # Split in as many parts as there are ingest workers, run on them (Airflow: mapped tasks).
    counts["notices"] = run_services(settings.warehouse_url, as_of, run_id, parts=workers, pool=pool)
    stages.add("services", time.perf_counter() - t)
    return counts


def _extract_rows(extracts_url: str, source) -> int:
    from renkei.warehouse import extract_table

    db = sqlite3.connect(extracts_url.replace("sqlite:///", ""))
    try:
        return db.execute(f'SELECT count(*) FROM "{extract_table(source, sa.MetaData()).name}"').fetchone()[0]
    finally:
        db.close()


def baseline(raw_dir: Path, url: str, sources, say) -> dict[str, float]:
    """Plain SQL: copy the raw rows in (no validation, no crypto), join on resident_code, insert."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=False) as pg:
        for src in sources:
            cols = [c for c, kind in src.columns.items() if kind != "drop"]
            lite = sqlite3.connect(raw_dir / f"{src.name}.db")
            pg.execute(f'CREATE UNLOGGED TABLE "{src.name}" ({", ".join(f"{c} text" for c in cols)})')
            with pg.cursor().copy(f'COPY "{src.name}" ({", ".join(cols)}) FROM STDIN') as cp:
                cur = lite.execute(f'SELECT {", ".join(cols)} FROM "{src.name}"')
                while True:
                    part = cur.fetchmany(50000)
                    if not part:
                        break
                    for row in part:
                        cp.write_row(row)
            lite.close()
        stages["extract_load"] = time.perf_counter() - t0
        t = time.perf_counter()
        pg.execute("CREATE INDEX ON immunization (resident_code)")
        pg.execute("""
            CREATE TABLE base_mart AS
            SELECT r.resident_code, r.birth_date, r.sex, r.ward_code, r.status,
                   d.doses, d.history, c.checkups, n.qualified_on, s.topics
            FROM registry r
            LEFT JOIN (SELECT resident_code, count(*) AS doses,
                              string_agg(vaccine_code || '#' || dose_number || '@' || administered_on, ','
                                         ORDER BY vaccine_code, dose_number) AS history
                       FROM immunization GROUP BY resident_code) d USING (resident_code)
            LEFT JOIN (SELECT resident_code, string_agg(checkup_code || '@' || examined_on, ',') AS checkups
                       FROM child_health GROUP BY resident_code) c USING (resident_code)
            LEFT JOIN (SELECT resident_code, max(qualified_on) AS qualified_on FROM nhi GROUP BY resident_code) n
                   USING (resident_code)
            LEFT JOIN (SELECT resident_code, string_agg(topic, ',') AS topics
                       FROM subscriptions WHERE opted_out_at IS NULL GROUP BY resident_code) s USING (resident_code)
        """)
        pg.commit()
        stages["join_insert"] = time.perf_counter() - t
    say(f"  baseline: copy {stages['extract_load']:.1f}s, join+insert {stages['join_insert']:.1f}s")
    return {k: round(v, 3) for k, v in stages.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--residents", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--as-of", default="2025-06-01")
    ap.add_argument("--pg", default=os.environ.get("RENKEI_BENCH_PG", PG_ADMIN), help="admin URL; fresh databases are made beside it")
    ap.add_argument("--workers", type=int, default=2, help="ingest workers (Airflow task slots); default: one per core")
    ap.add_argument("--work", default=None, help="keep the city here (default: a temp dir, removed)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    ap.add_argument("--reuse", action="store_true", help="reuse the city and extracts already in --work")
    args = ap.parse_args()

    from renkei.config import ingest_sources
    from renkei.keys.adapter import pseudonymize, raw_location
    from renkei.keys.ring import KeyRing
    from renkei.settings import Settings
    from renkei.synth import generate
    from renkei.warehouse import engine, ensure_schema

    say = lambda m: print(m, flush=True)  # noqa: E731
    as_of = date.fromisoformat(args.as_of)
    tmp = tempfile.TemporaryDirectory(prefix="renkei-full-") if args.work is None else None
    base = Path(args.work or tmp.name)
    base.mkdir(parents=True, exist_ok=True)
    sources = ingest_sources()
    wh_url = fresh_db(args.pg, "chain")
    base_url = fresh_db(args.pg, "bare")
    try:
        ring_path = base / "keyring.json"
        extracts_url = f"sqlite:///{base / 'extracts.db'}"
        synth_s = adapter_s = None
        if not (args.reuse and ring_path.exists() and (base / "extracts.db").exists()):
            t = time.perf_counter()
            generate(args.residents, args.seed, as_of, base / "raw")
            synth_s = time.perf_counter() - t
            say(f"city: {args.residents:,} residents generated in {synth_s:.1f}s")
            ring_path.unlink(missing_ok=True)
            KeyRing.generate().save(ring_path)
            ring = KeyRing.load(ring_path)
            Path(base / "extracts.db").unlink(missing_ok=True)
            t = time.perf_counter()
            for src in sources:
                pseudonymize(src, raw_location(base / "raw", src.name), extracts_url, ring)
            adapter_s = time.perf_counter() - t
            say(f"department adapters: extracts pseudonymized in {adapter_s:.1f}s (department side, not in the chain)")
        else:
            say(f"city: reusing {base} (its extracts and keyring)")
            from renkei.warehouse import extract_table

            db = sqlite3.connect(base / "extracts.db")
            for src in sources:  # extracts written before the watermark index existed
                name = extract_table(src, sa.MetaData()).name
                db.execute(f'CREATE INDEX IF NOT EXISTS "ix_{name}_updated_at" ON "{name}" (updated_at)')
            db.close()

        settings = Settings(warehouse_url=wh_url, extracts_url=extracts_url,
                            config_dir=Settings.from_env().config_dir, expectations_dir=Settings.from_env().expectations_dir)
        eng = engine(wh_url)
        ensure_schema(eng)
        eng.dispose()
        stages = Stages()
        pool = worker_pool(args.workers)
        say(f"chain (PostgreSQL warehouse, {args.workers} warm ingest workers):")
        with RssWatch() as rss:
            t = time.perf_counter()
            counts = run_chain(settings, ring_path, sources, as_of, "bench-full", stages, say, pool, args.workers)
            wall = time.perf_counter() - t
        rows = sum(c["read"] for c in counts["sources"].values())
        say(f"chain wall {wall:.1f}s; stages {stages.seconds}; peak RSS {rss.peak_kb // 1024} MB")

        say("baseline (plain SQL, no validation, no crypto):")
        t = time.perf_counter()
        base_stages = baseline(base / "raw", base_url, sources, say)
        baseline_s = time.perf_counter() - t

        pool.shutdown()

        common = {"command": "python " + " ".join(sys.argv), "machine": machine(), "commit": commit(),
                  "measured_on": date.today().isoformat()}
        full = {
            "residents": args.residents,
            "rows": rows,
            "wall_s": round(wall, 2),
            "baseline_s": round(baseline_s, 2),
            "ratio": round(wall / baseline_s, 2),
            "peak_rss_mb": rss.peak_kb // 1024,
            "ingest_workers": args.workers,
            "rows_per_s": round(rows / wall),
            "stages": stages.seconds,
            "stage_rows_per_s": {k: round(rows / v) for k, v in stages.seconds.items()
                                 if v and k in ("extract", "validate", "convert", "load")},
            "baseline_stages": base_stages,
            "department_adapter_s": adapter_s and round(adapter_s, 2),
            "synth_s": synth_s and round(synth_s, 2),
            "counts": counts,
            **common,
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        full["what"] = "library calls in one process (no Airflow); see full_run.json for the city through Airflow"
        (out / "stage_breakdown.json").write_text(json.dumps(full, indent=2, ensure_ascii=False, default=str) + "\n")
        say(json.dumps({k: full[k] for k in ("residents", "wall_s", "baseline_s", "ratio", "peak_rss_mb")}))
    finally:
        if not args.keep:
            drop_db(args.pg, wh_url)
            drop_db(args.pg, base_url)
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
