"""Peak memory of the integrity audit's queue merge (issue #13): the Python merge against the
set-based one, on a PostgreSQL warehouse of a synthetic city of N residents.

Staging is filled directly (not through the chain): per resident 3 immunization records, a
child-health record for every third and an NHI record for every fourth, each department copy
agreeing with the registry. Phases, each audited by a fresh process (peak RSS by
``resource.getrusage``, so one phase's memory cannot hide another's):

- ``registry_last``: the departments have loaded, the registry not yet (the order of the issue);
- ``registry_arrives``: then the registry loads every resident;
- ``half_registered``: a fresh warehouse whose registry holds every other resident, so both
  versions find the same not_in_registry findings (like for like);
- ``rest_registered``: then the registry loads the other half: every one of those items resolves.

    .venv/bin/python bench/audit_memory.py --residents 100000 [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]

``--code old`` audits with the audit module of git HEAD (the Python merge), ``new`` with the
working tree's; the default runs both and writes bench/results/audit_memory.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import sqlalchemy as sa

RESULTS = Path(__file__).with_name("results") / "audit_memory.json"
AS_OF = date(2025, 6, 1)
PHASES = ("registry_last", "registry_arrives", "half_registered", "rest_registered")


def _erk(i: int) -> str:
    return f"v1.{i:08d}" + "A" * 88  # an ERK's length (AES-SIV token, base64url)


def _attrs(i: int) -> tuple:
    return (f"{i:064x}"[:64], date(1950 + i % 70, 1 + i % 12, 1 + i % 28), 1 + i % 2, f"{i * 7:064x}"[:64])


def fill_departments(url: str, n: int) -> None:
    from renkei import bulk
    from renkei.config import load_sources
    from renkei.warehouse import engine, ensure_schema, staging_table

    srcs = load_sources()
    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:
        imm, chk, nhi = (staging_table(srcs[s]) for s in ("immunization", "child_health", "nhi"))
        bulk.insert_rows(conn, imm, ["record_id", "erk", "name_digest", "birth_date", "sex", "address_digest",
                                     "row_hash", "loaded_run_id"],
                         ((f"IM-{i}-{d}", _erk(i), *_attrs(i), f"{i * 3 + d:064x}", "bench") for i in range(n)
                          for d in range(3)))
        bulk.insert_rows(conn, chk, ["record_id", "erk", "name_digest", "birth_date", "sex", "address_digest",
                                     "row_hash", "loaded_run_id"],
                         ((f"CH-{i}", _erk(i), *_attrs(i), f"{i:064x}", "bench") for i in range(0, n, 3)))
        bulk.insert_rows(conn, nhi, ["erk", "name_digest", "birth_date", "sex", "address_digest", "row_hash",
                                     "loaded_run_id"],
                         ((_erk(i), *_attrs(i), f"{i:064x}", "bench") for i in range(0, n, 4)))
        bulk.analyze(conn, [imm, chk, nhi])
    eng.dispose()


def fill_registry(url: str, n: int, step: int = 1) -> None:
    from renkei import bulk
    from renkei.config import load_sources
    from renkei.warehouse import engine, ingest_runs, staging_table

    reg = staging_table(load_sources()["registry"])
    eng = engine(url)
    with eng.begin() as conn:
        conn.execute(reg.delete())
        bulk.insert_rows(conn, reg, ["erk", "name_digest", "birth_date", "sex", "address_digest", "row_hash",
                                     "loaded_run_id"],
                         ((_erk(i), *_attrs(i), f"{i:064x}", "bench") for i in range(0, n, step)))
        conn.execute(sa.insert(ingest_runs).values(run_id=f"ingest_registry/bench-{uuid.uuid4().hex[:6]}",
                                                   source="registry", state="loaded",
                                                   updated_at="2025-06-01T06:00:00+09:00"))
        bulk.analyze(conn, [reg])
    eng.dispose()


def _old_audit():
    """renkei.linkage.audit as of git HEAD (the Python merge)."""
    text = subprocess.run(["git", "show", "HEAD:plugins/renkei/linkage/audit.py"], capture_output=True, text=True,
                          check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="renkei-old-audit-")) / "audit_old.py"
    path.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("renkei_audit_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def measure(url: str, code: str, run_id: str) -> dict:
    """One audit of the whole warehouse in this process; its peak RSS and the queue's counts."""
    from renkei.warehouse import engine

    audit = _old_audit() if code == "old" else importlib.import_module("renkei.linkage.audit")
    eng = engine(url)
    with eng.connect() as conn:  # connected and imported: the baseline
        conn.execute(sa.select(1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with eng.begin() as conn:
        counts = audit.audit_links(conn, AS_OF, run_id, 90)
    seconds = time.perf_counter() - t
    eng.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"baseline_rss_mb": round(before / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
            "audit_rss_growth_mb": round((peak - before) / 1024, 1), "seconds": round(seconds, 2),
            "findings": counts["findings"], "new": counts["new"], "resolved": counts["resolved"],
            "active_by_state": counts["by_state"]}


def _measured(url: str, code: str, run_id: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--measure", url, "--code", code, "--run-id", run_id],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"audit ({code}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(pg: str, n: int, code: str, phases: tuple[str, ...] = PHASES) -> dict:
    admin = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    made = []

    def new_db() -> str:
        name = f"renkei_bench_audit_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return pg.rsplit("/", 1)[0] + f"/{name}"

    try:
        out = {}
        url = new_db()
        fill_departments(url, n)
        out["registry_last"] = _measured(url, code, "link_residents/bench-1")
        if "registry_arrives" in phases:
            fill_registry(url, n)
            out["registry_arrives"] = _measured(url, code, "link_residents/bench-2")
        if "half_registered" in phases:
            url = new_db()
            fill_departments(url, n)
            fill_registry(url, n, step=2)
            out["half_registered"] = _measured(url, code, "link_residents/bench-3")
            if "rest_registered" in phases:
                fill_registry(url, n)
                out["rest_registered"] = _measured(url, code, "link_residents/bench-4")
        return out
    finally:
        with admin.connect() as conn:
            for name in made:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--residents", type=int, default=100_000)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--code", choices=["old", "new", "both"], default="both")
    ap.add_argument("--old-phases", default=",".join(PHASES),
                    help="phases for the old code (it resolves items one UPDATE at a time: 35,834 took 212 s at 10k)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one audit in a fresh process
    ap.add_argument("--run-id", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.code, args.run_id)))
        return
    codes = ["old", "new"] if args.code == "both" else [args.code]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "command": f"bench/audit_memory.py --residents {args.residents} --code {args.code} --old-phases {args.old_phases}",
        "engine": "postgresql+psycopg", "commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
        "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "residents": args.residents,
        "code": {"old": "git HEAD: findings and queue merged in Python", "new": "working tree: set-based merge"},
    }
    for code in codes:
        phases = tuple(args.old_phases.split(",")) if code == "old" else PHASES
        result[code] = run(args.pg, args.residents, code, phases)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
