"""Profile: where one department change spends its time on the way to the notices stream,
library call by library call (no Airflow), on a copy of a large city's warm warehouse.

    .venv/bin/python bench/event_profile.py --work /work/bench1m --residents 1000000 [--kinds birth,dose] [--top 8]

Needs the snapshot that ``bench/event_latency.py --work DIR`` leaves (DIR/snapshot and the
PostgreSQL template ``renkei_evsnap_<residents>``). Clones the warehouse, copies the raw tables
and extracts, then per change runs what the DAG tasks run — export adapter, ingest extract /
validate / load, link (build_mart + its audit-trail entry), services plan / evaluate / record
(+ audit-trail entry), relay (to a throw-away stream) — timing each call and the slowest SQL
statements inside it. Prints a table; writes nothing under bench/results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from event_latency import create_db, db_exists, db_url, drop_db  # noqa: E402


class SqlTimer:
    """Times every statement executed through SQLAlchemy, grouped by the step running."""

    def __init__(self) -> None:
        self.step = "-"
        self.by_step: dict[str, list[tuple[float, str]]] = defaultdict(list)
        sa.event.listen(sa.Engine, "before_cursor_execute", self._before)
        sa.event.listen(sa.Engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, params, context, executemany):  # noqa: ANN001, PLR0913
        conn.info.setdefault("_t", []).append(time.perf_counter())

    def _after(self, conn, cursor, statement, params, context, executemany):  # noqa: ANN001, PLR0913
        t = conn.info["_t"].pop()
        self.by_step[self.step].append((time.perf_counter() - t, " ".join(statement.split())[:160]))

    def top(self, step: str, n: int) -> list[tuple[float, str]]:
        return sorted(self.by_step.get(step, []), reverse=True)[:n]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--residents", type=int, default=1_000_000)
    ap.add_argument("--kinds", default="birth,dose")
    ap.add_argument("--repeat", type=int, default=2, help="changes of each kind (the first of a kind warms caches)")
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    snap = Path(args.work) / "snapshot"
    template = f"renkei_evsnap_{args.residents}"
    if not (snap / "city.json").exists() or not db_exists(template):
        sys.exit(f"no snapshot in {snap} / database {template}: run bench/event_latency.py --work {args.work} first")
    tmp = Path(tempfile.mkdtemp(prefix="renkei-profile-"))
    wh_name = f"renkei_prof_{uuid.uuid4().hex[:8]}"
    t = time.perf_counter()
    create_db(wh_name, template=template)
    print(f"warehouse cloned in {time.perf_counter() - t:.1f}s; copying the raw tables and extracts", flush=True)
    shutil.copytree(snap / "raw", tmp / "raw")
    for p in snap.iterdir():
        if p.is_file():
            shutil.copy2(p, tmp / p.name)
    url = db_url(wh_name)
    os.environ.update({"RENKEI_WAREHOUSE_URL": url, "RENKEI_EXTRACTS_URL": f"sqlite:///{tmp / 'extracts.db'}",
                       "RENKEI_KEYRING": str(tmp / "keyring.json")})
    try:
        run(args, tmp, url)
    finally:
        if args.keep:
            print(f"kept {tmp} and database {wh_name}")
        else:
            drop_db(wh_name)
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def run(args, tmp: Path, url: str) -> None:  # noqa: ANN001
    from renkei import ingest
    from renkei.audit.records import record_linkage_run, record_notices_published
    from renkei.config import load_sources
    from renkei.devstack import tokyo_today
    from renkei.keys.adapter import pseudonymize, raw_location
    from renkei.keys.ring import KeyRing
    from renkei.linkage.mart import build_mart
    from renkei.outputs.outbox import evaluate_part, plan_services, record_services
    from renkei.outputs.relay import relay_notices
    from renkei.outputs.stream import NoticeStreamConfig
    from renkei.settings import Settings

    ring = KeyRing.load(tmp / "keyring.json")
    settings = Settings.from_env()
    srcs = load_sources()
    timer = SqlTimer()
    stream = NoticeStreamConfig(stream=f"renkei-prof-{uuid.uuid4().hex[:8]}:notices")
    as_of = tokyo_today()

    from renkei.devstack import DevStack

    dept = DevStack.__new__(DevStack)  # only its department actions, on this copy
    dept.raw, dept.tag, dept._births = tmp / "raw", "prof", 0
    children: list[str] = []
    rows: list[tuple[str, str, float]] = []

    def step(kind: str, name: str, fn):  # noqa: ANN001
        timer.step = f"{kind}:{name}"
        t0 = time.perf_counter()
        out = fn()
        rows.append((kind, name, time.perf_counter() - t0))
        return out

    import redis

    r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        for kind in [k for k in args.kinds.split(",") for _ in range(args.repeat)]:
            i = len([x for x in rows if x[1] == "export"])
            run_id = f"profile/{kind}-{i}"
            if kind == "birth":
                source = "registry"
                step(kind, "department change", lambda: children.append(dept.add_birth()))
            elif kind == "dose":
                source = "immunization"
                if not children:
                    children.append(dept.add_birth())
                code = children.pop(0)
                step(kind, "department change", lambda: dept.add_dose(code))
            else:
                raise SystemExit(f"--kinds: only birth and dose here, not {kind}")
            src = srcs[source]
            step(kind, "export", lambda: pseudonymize(src, raw_location(tmp / "raw", source), settings.extracts_url, ring))
            ex = step(kind, "ingest.extract", lambda: ingest.extract(src, f"ingest_{source}/{run_id}", settings))
            step(kind, "ingest.validate", lambda: ingest.validate(src, f"ingest_{source}/{run_id}", settings))
            step(kind, "ingest.load", lambda: ingest.load(src, f"ingest_{source}/{run_id}", ring, settings))
            counts = step(kind, "link.build_mart", lambda: build_mart(url, as_of, f"link/{run_id}"))
            step(kind, "link.audit_trail", lambda: record_linkage_run(url, f"link/{run_id}", as_of, counts, ring=ring))
            plan = step(kind, "services.plan", lambda: plan_services(url, as_of, f"services/{run_id}", parts=2))
            parts = [step(kind, "services.evaluate", lambda i=i: evaluate_part(url, plan, i)) for i in range(plan["parts"])]
            sc = step(kind, "services.record", lambda: record_services(url, plan, parts))
            step(kind, "services.audit_trail", lambda: record_notices_published(url, plan["run_id"], as_of, sc, ring=ring))
            rc = step(kind, "relay", lambda: relay_notices(url, stream))
            print(f"{kind}: read {ex['read']}, link {counts['mode']} touched {counts['residents_touched']}, "
                  f"services {plan['mode']} touched {plan['residents_touched']}, new {sc['new']}, relayed {rc.get('published')}",
                  flush=True)
    finally:
        r.delete(stream.stream)
        r.close()
    print(f"\n{'kind':<6} {'step':<22} {'s':>7}  slowest statements")
    for kind, name, s in rows:
        print(f"{kind:<6} {name:<22} {s:7.3f}")
        for st, text in timer.top(f"{kind}:{name}", args.top):
            if st >= 0.02:
                print(f"{'':<37}{st:6.3f}  {text}")


if __name__ == "__main__":
    sys.exit(main())
