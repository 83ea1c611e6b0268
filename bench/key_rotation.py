"""Link-key re-seal rate: a warehouse of N residents' ERKs, rotated v1 → v2.

The warehouse is filled directly (not through the chain) with the ERK-bearing rows a city of N
residents has: staging_registry (erk, household_key), mart_residents (erk, household_key),
linkage (registry + immunization), mart_doses (3 per resident), subjects, and notices (one per
5 residents). Reports rows and ERK cells re-sealed per second.

    .venv/bin/python bench/key_rotation.py --residents 100000 [--warehouse URL] [--batch-size 10000]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.keys import rotation
from renkei.keys.ring import KeyRing
from renkei.warehouse import (engine, ensure_schema, key_state, linkage, mart_doses, mart_residents, notices,
                              staging_table, subjects)

RESULTS = Path(__file__).with_name("results") / "key_rotation.json"


def fill(url: str, ring: KeyRing, n: int) -> int:
    eng = engine(url)
    ensure_schema(eng)
    reg = staging_table(load_sources()["registry"])
    cells = 0
    with eng.begin() as conn:
        for start in range(0, n, 20_000):
            ids = range(start, min(n, start + 20_000))
            erk = {i: ring.seal("link", f"{10_000_000_000 + i}") for i in ids}
            hh = {i: ring.seal("link", f"household:H{i // 3}") for i in ids}
            conn.execute(sa.insert(reg), [{"erk": erk[i], "household_key": hh[i], "birth_date": date(2000, 1, 1),
                                           "row_hash": "x", "loaded_run_id": "bench"} for i in ids])
            conn.execute(sa.insert(mart_residents), [{"erk": erk[i], "household_key": hh[i], "as_of": date(2025, 6, 1),
                                                      "departments": 2, "built_run_id": "bench"} for i in ids])
            conn.execute(sa.insert(linkage), [{"erk": erk[i], "source": s, "records": 1, "in_registry": True,
                                               "built_run_id": "bench"} for i in ids for s in ("registry", "immunization")])
            conn.execute(sa.insert(mart_doses), [{"erk": erk[i], "vaccine_code": "HEPB", "dose_number": d,
                                                  "administered_on": date(2024, 1, d), "record_id": f"R{i}-{d}"}
                                                 for i in ids for d in (1, 2, 3)])
            conn.execute(sa.insert(subjects), [{"erk": erk[i], "subject_key": f"{i:032x}", "first_run_id": "bench"} for i in ids])
            conn.execute(sa.insert(notices), [{
                "notice_id": f"{i:032x}", "service": "immunization", "kind": "due", "erk": erk[i], "rule_id": "r",
                "rule_version": 1, "subject": "HEPB", "dose_number": 1, "window_start": date(2025, 6, 1),
                "window_end": date(2025, 8, 1), "evaluated_on": date(2025, 6, 1), "facts": "{}",
                "created_run_id": "bench", "created_at": "2025-06-01T06:00:00+09:00"} for i in ids if i % 5 == 0])
            cells += len(ids) * (2 + 2 + 2 + 3 + 1) + len([i for i in ids if i % 5 == 0])
        conn.execute(sa.insert(key_state).values(purpose="link", version=1, updated_at="2025-06-01T06:00:00+09:00"))
    eng.dispose()
    return cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--residents", type=int, default=100_000)
    ap.add_argument("--warehouse")
    ap.add_argument("--batch-size", type=int, default=rotation.DEFAULT_BATCH)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="renkei-bench-rot-"))
    url = args.warehouse or f"sqlite:///{tmp / 'warehouse.db'}"
    ring = KeyRing.generate()
    ring.save(tmp / "keyring.json")
    cells = fill(url, ring, args.residents)
    ring.rotate("link")
    t = time.perf_counter()
    out = rotation.rotate_link(url, ring, batch_size=args.batch_size, say=lambda m: None)
    wall = time.perf_counter() - t
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "command": f"bench/key_rotation.py --residents {args.residents} --batch-size {args.batch_size}",
        "engine": url.split(":")[0], "commit": commit, "machine": platform.platform(),
        "residents": args.residents, "rows_resealed": out["rows_resealed"], "erk_cells": cells,
        "measured_on": time.strftime("%Y-%m-%d"), "seconds": round(wall, 2), "rows_per_s": round(out["rows_resealed"] / wall),
        "erk_cells_per_s": round(cells / wall), "residents_per_s": round(args.residents / wall),
    }
    print(json.dumps(result, indent=2))
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps(runs + [result], indent=2) + "\n")


if __name__ == "__main__":
    main()
