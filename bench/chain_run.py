"""Benchmark: the whole chain (`renkei run`) on a synthetic city, stage by stage.

    .venv/bin/python bench/chain_run.py --residents 20000 [--warehouse URL] [--out bench/results/chain_run.json]

Generates the city (not timed as part of the chain), then times pseudonymization, the Airflow
metadata migration and each DAG run, and records wall time, rows/s and peak RSS of the process
tree with the machine and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict:
    mem = next((int(l.split()[1]) // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), None)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    return {"cpus": os.cpu_count(), "memory_mb": mem, "cpu": cpu, "python": platform.python_version(),
            "loop_5m_s": loop_seconds()}


def loop_seconds(n: int = 5_000_000, tries: int = 3) -> float:
    """The machine's pure-Python speed when it was measured: the best of ``tries`` runs of ``n``
    integer additions, in seconds. Machines of the same 2-core kind, and one machine on different
    days, have differed several-fold in pure-Python speed: results of different days compare only
    beside this figure."""
    best = float("inf")
    for _ in range(tries):
        t0, total = time.perf_counter(), 0
        for i in range(n):
            total += i
        best = min(best, time.perf_counter() - t0)
    return round(best, 3)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--residents", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--as-of", default="2025-06-01")
    ap.add_argument("--warehouse", default=None)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "chain_run.json"))
    args = ap.parse_args()

    from renkei.keys.ring import KeyRing
    from renkei.runner import run_chain
    from renkei.synth import generate

    with tempfile.TemporaryDirectory(prefix="renkei-bench-") as tmp:
        base = Path(tmp)
        t = time.perf_counter()
        generate(args.residents, args.seed, date.fromisoformat(args.as_of), base / "raw")
        synth_s = time.perf_counter() - t
        ring = KeyRing.generate().save(base / "keyring.json")
        report = run_chain(base / "raw", date.fromisoformat(args.as_of), base / "work", warehouse_url=args.warehouse,
                           keyring_path=ring, say=lambda m: print(m, flush=True))
    rows = sum(c["read"] for c in report["sources"].values())
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    result = {
        "residents": args.residents,
        "rows": rows,
        "synth_s": round(synth_s, 2),
        "wall_s": report["wall_s"],
        "rows_per_s": round(rows / report["wall_s"], 1),
        "stages": {**report["stages_s"], **{r["dag_id"]: r["seconds"] for r in report["dag_runs"]}},
        "peak_rss_mb": {"runner": peak_self, "largest_child": peak_children},
        "notices": report["notices"],
        "warehouse": report["warehouse_url"].split(":")[0],
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "commit": commit(),
        "measured_on": date.today().isoformat(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
