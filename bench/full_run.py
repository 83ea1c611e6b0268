"""Benchmark: the whole city as a city runs it — through real Airflow components — and then
1,000 real department changes, on the LocalExecutor and on the CeleryExecutor.

    .venv/bin/python bench/full_run.py --residents 1000000 --work /work/bench1m \\
        --executor LocalExecutor --executor CeleryExecutor [--repeat N] [--changes 1000]

Per executor and repeat:

1. **Baseline** (in the same run, on a fresh database, before the stack starts): the same raw
   department rows copied into PostgreSQL and joined into one mart table with plain SQL — no
   validation, no crypto, no Airflow (bench/stage_breakdown.py's ``baseline``).
2. **Whole city**: a fresh PostgreSQL warehouse and Airflow metadata database; the system
   started as separate processes by renkei.devstack (scheduler, dag-processor, triggerer,
   api-server, and the executor's workers: LocalExecutor task processes, or ``airflow celery
   worker`` processes on the Redis broker with the ``delivery`` queue). Once every source's
   AssetWatcher is running, the clock starts and each department announces its first extract
   with a change event (``--order``, registry last by default: the order that used to raise a
   finding for every resident). The clock stops at the Redis server's arrival time of the last
   message on the notices stream, once every outbox notice and lifecycle event is published
   and no DAG run is queued or running. Every DAG run must end green.
3. **Incremental**: ``--changes`` real changes made at the departments in their raw tables —
   births, doses, moves, opt-outs, deletions — exported by the export adapter (incremental,
   the deletions by reconcile: department side, timed as ``export_s``) and announced by one
   change event per source. ``wall_s``: first change event → the last resulting notice or
   withdrawal on the stream; ``new_notices`` and ``withdrawn_notices`` are counted in the
   warehouse's outbox and lifecycle.
4. **The Renkei pages** with the city loaded: each page fetched through the api-server
   (authenticated, as the Airflow UI does), best of three.

Peak memory sums the proportional set size (PSS, so shared pages count once) of every
process of the system — the Airflow components and all their children, the PostgreSQL server
and the Redis server — sampled each second; the benchmark process itself is not part of the
system and not counted. PostgreSQL's share includes any other client's backends on this
machine.

Also recorded per run: the CPU seconds of each part of the system over the clock (``cpu``:
user + system time per process, sampled each second — a process living less than a second
between two samples is missed; task processes by DAG and task), the warehouse's busiest
statements (``warehouse_busiest_s``: seconds a backend was seen running each, by its first 90
characters) and, for the incremental, every task's timeline (``timeline``).

Results: bench/results/full_run.json and incremental.json, one entry per executor (rewritten by
this script only; a run updates its executor's entry), each with every run and the median;
``--out DIR`` writes them elsewhere (a trial run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from chain_run import commit, machine  # noqa: E402
from event_latency import dag_breakdown, timeline  # noqa: E402
from stage_breakdown import baseline, drop_db, fresh_db  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESULTS = REPO / "bench" / "results"
EXECUTORS = ("LocalExecutor", "CeleryExecutor")
PAGES = ("runs", "quarantine", "review", "notices", "trends")
CHAIN_DAGS = ("link_residents", "proactive_services", "relay_notices")


def say(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# -- memory of the whole system --------------------------------------------------------------


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pids_named(*names: str) -> list[int]:
    out = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in names:
                out.append(int(comm.parent.name))
        except OSError:
            continue
    return out


_TICK = os.sysconf("SC_CLK_TCK")
_TASK_TITLE = re.compile(r"airflow worker -- ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b")


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class SystemMemory:
    """Peak of the summed PSS of the Airflow components (with every child), PostgreSQL and Redis;
    and the CPU seconds each part of the system used while it was watched (sampled each second
    per process: a process that lives less than a second between two samples is missed)."""

    def __init__(self, stack) -> None:  # noqa: ANN001 - DevStack
        self.stack = stack
        self.peak: dict[str, int] = {"total_mb": 0}
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._kind: dict[int, str] = {}
        self.queries: dict[str, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _classify(self, pid: int, roots: dict[int, str]) -> str:
        title = _title(pid)
        task = _TASK_TITLE.match(title)
        if task:  # a task process ("airflow worker -- <task instance id>")
            return "ti:" + task.group(1)
        if "supervisor" in title or (title.startswith("airflow worker -- LocalExecutor") and "<idle>" not in title):
            return "task supervisors"
        return roots.get(pid, "executor workers")

    def sample(self) -> None:
        from renkei.local_airflow import descendants

        airflow = set()
        roots: dict[int, str] = {}
        for name, proc in list(self.stack.procs.items()):
            airflow.add(proc.pid)
            roots[proc.pid] = name
            for child in descendants(proc.pid):
                airflow.add(child)
                roots.setdefault(child, name if name != "scheduler" else "executor workers")
        postgres, redis = _pids_named("postgres"), _pids_named("redis-server")
        parts = {
            "airflow_mb": sum(_pss_kb(p) for p in airflow) // 1024,
            "postgres_mb": sum(_pss_kb(p) for p in postgres) // 1024,
            "redis_mb": sum(_pss_kb(p) for p in redis) // 1024,
        }
        parts["total_mb"] = sum(parts.values())
        parts["airflow_processes"] = len(airflow)
        if parts["total_mb"] > self.peak["total_mb"]:
            self.peak = parts
        self._sample_queries()
        for group, pids in (("airflow", airflow), ("postgres", postgres), ("redis", redis)):
            for pid in pids:
                used = _cpu_s(pid)
                if used is None:
                    continue
                if pid not in self._first:
                    # a process first seen after the watch began is counted from its start
                    self._first[pid] = used if not self._started else 0.0
                    self._kind[pid] = self._classify(pid, roots) if group == "airflow" else group
                elif not self._kind[pid].startswith("ti:") and group == "airflow":
                    self._kind[pid] = self._classify(pid, roots)  # a forked process retitles itself
                self._last[pid] = used

    def _sample_queries(self) -> None:
        """What the warehouse's busy backends run now: one sample per backend and second."""
        try:
            if self._pg is None:
                self._pg = sa.create_engine(self.stack.warehouse, pool_size=1, max_overflow=0)
            with self._pg.connect() as conn:
                rows = conn.execute(sa.text(
                    "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()")).scalars().all()
        except sa.exc.SQLAlchemyError:
            return
        for query in rows:
            self.queries[query] = self.queries.get(query, 0) + 1

    def busiest_queries(self, n: int = 12) -> list[list]:
        """[seconds a backend was seen running it, the statement's first 90 characters]."""
        return [[v, k] for k, v in sorted(self.queries.items(), key=lambda kv: -kv[1])[:n]]

    _pg = None

    def cpu(self, airflow_url: str | None = None) -> dict:
        """CPU seconds by part: components, task processes by DAG, PostgreSQL, Redis."""
        by_kind: dict[str, float] = {}
        for pid, first in self._first.items():
            kind = self._kind[pid]
            by_kind[kind] = by_kind.get(kind, 0.0) + self._last.get(pid, first) - first
        tasks = {k[3:]: v for k, v in by_kind.items() if k.startswith("ti:")}
        names: dict[str, str] = {}
        if tasks and airflow_url:
            with sa.create_engine(airflow_url).connect() as conn:
                names = {str(i): f"{d}.{t}" for i, d, t in conn.execute(
                    sa.text("SELECT id, dag_id, task_id FROM task_instance"))}
        per_task: dict[str, float] = {}
        for ti, used in tasks.items():
            name = names.get(ti, "unknown task")
            per_task[name] = per_task.get(name, 0.0) + used
        per_dag: dict[str, float] = {}
        for name, used in per_task.items():
            per_dag[name.split(".")[0]] = per_dag.get(name.split(".")[0], 0.0) + used
        parts = {k: round(v, 1) for k, v in sorted(by_kind.items()) if not k.startswith("ti:")}
        parts["task processes"] = round(sum(tasks.values()), 1)
        return {
            "total_s": round(sum(by_kind.values()), 1),
            "by_part_s": parts,
            "tasks_by_dag_s": {k: round(v, 1) for k, v in sorted(per_dag.items(), key=lambda kv: -kv[1])},
            "tasks_s": {k: round(v, 1) for k, v in sorted(per_task.items(), key=lambda kv: -kv[1])},
            "note": "user+system CPU seconds, sampled each second per process",
        }

    _started = False

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    def __enter__(self) -> "SystemMemory":
        self.sample()
        self._started = True
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.sample()
        if self._pg is not None:
            self._pg.dispose()


# -- observing the system ---------------------------------------------------------------------


def watchers_running(stack, n_sources: int) -> bool:  # noqa: ANN001
    """Every source's AssetWatcher trigger is assigned to the triggerer."""
    with stack._airflow().connect() as conn:
        if not sa.inspect(conn).has_table("trigger"):
            return False
        n = conn.execute(sa.text("SELECT count(*) FROM trigger WHERE triggerer_id IS NOT NULL")).scalar()
    return n >= n_sources


def api_healthy(stack) -> bool:  # noqa: ANN001
    """The api-server answers the Execution API's health check: before it does, a task's
    supervisor cannot start its task and the run fails (a loaded machine starts it last)."""
    import httpx

    try:
        return httpx.get(stack.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] + "health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def dag_ids(stack) -> set[str]:  # noqa: ANN001
    with stack._airflow().connect() as conn:
        if not sa.inspect(conn).has_table("dag"):
            return set()
        return set(conn.execute(sa.text("SELECT dag_id FROM dag WHERE is_stale = false")).scalars())


def start_without_reconciles(stack, expected: set[str]) -> None:  # noqa: ANN001
    """The stack starts with every DAG paused; once the chain's DAGs are parsed, all but the
    departments' nightly reconciles are unpaused. Airflow 3 starts a cron schedule's latest past
    interval at once when a DAG first appears (CronTriggerTimetable without catch-up): a
    reconcile would run the adapter over a whole source inside the department, and the
    sweeps would ingest the city before its change events (see :func:`hold_extracts`).
    ``deliver_notices`` stays paused too: the clock stops on the notices stream, and sending a
    whole city's first notices (nearly half a million) is a paced job of its own, not the
    chain (the Celery e2e test proves delivery)."""
    seen: list[int] = []

    def parsed() -> bool:  # the chain's DAGs are there and no new one came for three polls
        ids = dag_ids(stack)
        seen.append(len(ids))
        return expected <= ids and len(seen) >= 3 and len(set(seen[-3:])) == 1

    stack.wait_for("the DAGs parsed", parsed, 600, poll=2.0)
    with stack._airflow().begin() as conn:
        conn.execute(sa.text("UPDATE dag SET is_paused = false WHERE dag_id NOT LIKE 'reconcile\\_%' "
                             "AND dag_id <> 'deliver_notices'"))


def hold_extracts(stack) -> Path:  # noqa: ANN001
    """Move the departments' first extracts aside and leave an empty extracts database of the
    same schema: the start-up sweeps find nothing, as on a city's first day before the
    departments have exported. :func:`release_extracts` puts them back."""
    path = Path(stack.extracts.replace("sqlite:///", ""))
    held = path.with_name("extracts.held.db")
    os.replace(path, held)
    src = sqlite3.connect(held)
    ddl = [r[0] for r in src.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'")]
    src.close()
    empty = sqlite3.connect(path)
    for sql in ddl:
        empty.execute(sql)
    empty.commit()
    empty.close()
    return held


def release_extracts(stack, held: Path) -> None:  # noqa: ANN001
    os.replace(held, Path(stack.extracts.replace("sqlite:///", "")))


def outbox_state(stack) -> dict:  # noqa: ANN001
    with stack._warehouse().connect() as conn:
        if not sa.inspect(conn).has_table("outbox_published"):
            return {"notices": 0, "published": 0, "events": 0, "events_unpublished": 0, "withdrawn": 0}
        row = conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM notices), (SELECT count(*) FROM outbox_published), "
            "(SELECT count(*) FROM notice_events), (SELECT count(*) FROM notice_events WHERE stream_id IS NULL), "
            "(SELECT count(*) FROM notice_events WHERE state = 'withdrawn')")).one()
    return dict(zip(("notices", "published", "events", "events_unpublished", "withdrawn"), row))


def all_published(stack) -> bool:  # noqa: ANN001
    """Some notice exists, none waits in ``outbox_pending`` (kept by the warehouse's triggers) and
    no lifecycle event is unpublished. Polled each second, so it asks for existence, not counts:
    counting every notice and publication each second (outbox_state) was seen active for 3 s of
    a 1M incremental, competing with the run it measured."""
    with stack._warehouse().connect() as conn:
        if not sa.inspect(conn).has_table("outbox_pending"):
            return False
        some, pending, events = conn.execute(sa.text(
            "SELECT EXISTS (SELECT 1 FROM notices), EXISTS (SELECT 1 FROM outbox_pending), "
            "EXISTS (SELECT 1 FROM notice_events WHERE stream_id IS NULL)")).one()
    return bool(some) and not pending and not events


def run_states(stack, since: datetime) -> dict[str, dict[str, int]]:  # noqa: ANN001
    with stack._airflow().connect() as conn:
        rows = conn.execute(sa.text("SELECT dag_id, state, count(*) FROM dag_run WHERE queued_at >= :s "
                                    "GROUP BY dag_id, state"), {"s": since}).all()
    out: dict[str, dict[str, int]] = {}
    for dag_id, state, n in rows:
        out.setdefault(dag_id, {})[state] = n
    return out


def last_stream_arrival(stack) -> float | None:  # noqa: ANN001
    """The Redis server's arrival time (Unix s) of the newest message on the notices stream."""
    import redis

    from renkei.devstack import REDIS_URL

    r = redis.Redis.from_url(REDIS_URL)
    try:
        last = r.xrevrange(stack.notice_stream_key(), count=1)
        return int(last[0][0].decode().split("-")[0]) / 1000 if last else None
    finally:
        r.close()


def stream_length(stack) -> int:  # noqa: ANN001
    import redis

    from renkei.devstack import REDIS_URL

    r = redis.Redis.from_url(REDIS_URL)
    try:
        return r.xlen(stack.notice_stream_key())
    finally:
        r.close()


def wait_quiet(stack, what: str, bound: float, since: datetime) -> float:  # noqa: ANN001
    """Until no DAG run is queued or running (nor queued by an asset), everything is on the
    stream, and that holds for two polls in a row (a relay run can start right after)."""
    seen = {"quiet": 0}

    def busy() -> list:  # delivery is paused (start_without_reconciles): its asset queue waits
        return [r for r in stack.unfinished_runs() if "deliver_notices" not in r[:2]]

    def check() -> bool:
        if busy() or not all_published(stack):
            seen["quiet"] = 0
            return False
        seen["quiet"] += 1
        return seen["quiet"] >= 2

    def progress() -> str:
        s = outbox_state(stack)
        runs = run_states(stack, since)
        busy = sorted(d for d, st in runs.items() if st.get("running") or st.get("queued"))
        return f"notices {s['notices']:,} ({s['published']:,} on the stream), running {busy}"

    return stack.wait_for(what, check, bound, poll=1.0, progress=progress, every=30.0, say=say)


# -- the departments' changes -----------------------------------------------------------------


def _raw(stack, source: str) -> sqlite3.Connection:  # noqa: ANN001
    con = sqlite3.connect(stack.raw / f"{source}.db", timeout=60)
    con.row_factory = sqlite3.Row
    return con


def make_changes(stack, n: int, seed: int) -> dict[str, int]:  # noqa: ANN001
    """``n`` real changes at the departments, in their raw tables: births (10 %), hepatitis B
    doses for those newborns (10 %), doses for infants of the city (20 %), moves to another ward
    (30 %), opt-outs (20 %) and deleted subscriptions (10 %). Returns the count by kind."""
    from renkei.devstack import now_jst_text, tokyo_today

    rnd = random.Random(seed)
    k = {"birth": n // 10, "newborn_dose": n // 10, "infant_dose": n // 5, "move": (3 * n) // 10,
         "opt_out": n // 5}
    k["delete"] = n - sum(k.values())
    born = [stack.add_birth() for _ in range(k["birth"])]
    for code in born[: k["newborn_dose"]]:
        stack.add_dose(code)  # HEPB 1, 42 days ago: HEPB 2 due now instead of HEPB 1
    today = tokyo_today()
    with _raw(stack, "registry") as reg:
        infants = [r[0] for r in reg.execute(
            "SELECT resident_code FROM registry WHERE status = 'resident' AND birth_date BETWEEN ? AND ?",
            ((today - timedelta(days=300)).isoformat(), (today - timedelta(days=60)).isoformat()))]
        adults = [r[0] for r in reg.execute(
            "SELECT resident_code FROM registry WHERE status = 'resident' AND birth_date < ? ORDER BY rowid LIMIT 200000",
            ((today - timedelta(days=365 * 20)).isoformat(),))]
        wards = [r[0] for r in reg.execute("SELECT DISTINCT ward_code FROM registry")]
    for code in rnd.sample(infants, min(k["infant_dose"], len(infants))):
        stack.add_dose(code, "PCV", 1, today - timedelta(days=3))
    stamp = now_jst_text()
    moves = []
    for code in rnd.sample(adults, min(k["move"], len(adults))):
        moves.append((rnd.choice(wards), f"北九州市某区転居先{rnd.randint(1, 999)}番地", stamp, code))
    with _raw(stack, "registry") as reg:
        reg.executemany("UPDATE registry SET ward_code = ?, address = ?, updated_at = ? WHERE resident_code = ?", moves)
    with _raw(stack, "subscriptions") as sub:
        active = [r[0] for r in sub.execute("SELECT subscription_id FROM subscriptions WHERE opted_out_at IS NULL")]
        picked = rnd.sample(active, min(k["opt_out"] + k["delete"], len(active)))
        sub.executemany("UPDATE subscriptions SET opted_out_at = ?, updated_at = ? WHERE subscription_id = ?",
                        [(stamp, stamp, s) for s in picked[: k["opt_out"]]])
        sub.executemany("DELETE FROM subscriptions WHERE subscription_id = ?", [(s,) for s in picked[k["opt_out"]:]])
    return {kind: (len(moves) if kind == "move" else v) for kind, v in k.items()}


def export(stack, source: str, mode: str) -> dict:  # noqa: ANN001
    from renkei.config import load_sources
    from renkei.keys.adapter import pseudonymize, raw_location

    res = pseudonymize(load_sources()[source], raw_location(stack.raw, source), stack.extracts, stack.ring, mode=mode)
    return {"source": source, "mode": mode, "written": res.written, "last_seq": res.last_seq, "s": round(res.seconds, 2)}


def publish(stack, source: str, last_seq: int, rows: int) -> None:  # noqa: ANN001
    from renkei.events import ChangeEvent
    from renkei.events import publish as publish_event
    from renkei.events.channel import load_channel

    stack.published.append((source, publish_event(ChangeEvent(source=source, change_seq=last_seq, row_count=rows),
                                                  load_channel(stack.cfg_dir))))


# -- the Renkei pages -------------------------------------------------------------------------


def page_times(stack) -> dict[str, float]:  # noqa: ANN001
    """Each Renkei page through the api-server, best of three (seconds)."""
    import httpx

    base = f"http://127.0.0.1:{stack.env['AIRFLOW__API__PORT']}"
    token = httpx.get(f"{base}/auth/token", timeout=30).json()["access_token"]
    out = {}
    with httpx.Client(headers={"Authorization": f"Bearer {token}", "Accept": "text/html"}, timeout=120) as client:
        for page in PAGES:
            best = None
            for _ in range(3):
                t = time.perf_counter()
                r = client.get(f"{base}/renkei/{page}")
                took = time.perf_counter() - t
                if r.status_code != 200:
                    raise RuntimeError(f"/renkei/{page}: HTTP {r.status_code}")
                best = took if best is None else min(best, took)
            out[page] = round(best, 3)
    return out


# -- one run ----------------------------------------------------------------------------------


def _say_cpu(executor: str, what: str, cpu: dict) -> dict:
    top = ", ".join(f"{k} {v}" for k, v in list(cpu["tasks_s"].items())[:8])
    say(f"{executor}: {what}: CPU {cpu['total_s']}s: {cpu['by_part_s']}; tasks: {top}")
    return cpu


def _say_queries(executor: str, what: str, busiest: list) -> list:
    say(f"{executor}: {what}: the warehouse's busiest statements (s seen active): " +
        "; ".join(f"{n} {q}" for n, q in busiest[:8]))
    return busiest


def one_run(args, executor: str, city: Path, order: list[str]) -> tuple[dict, dict]:  # noqa: ANN001
    from renkei.devstack import DevStack

    tag = uuid.uuid4().hex[:6]
    base_url = fresh_db(args.pg, f"bare{tag}")
    try:
        say(f"{executor}: baseline (plain SQL copy + join of the raw rows)")
        t = time.perf_counter()
        base_stages = baseline(city / "raw", base_url, _sources(), say)
        baseline_s = time.perf_counter() - t
    finally:
        drop_db(args.pg, base_url)
    wh_url, af_url = fresh_db(args.pg, f"wh{tag}"), fresh_db(args.pg, f"af{tag}")
    tmp = Path(tempfile.mkdtemp(prefix="renkei-full-"))
    stack = None
    ok = False
    try:
        extra = {"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True", **dict(kv.split("=", 1) for kv in args.airflow_env)}
        launch = {"executor": executor} if executor != "LocalExecutor" else {}
        if executor == "CeleryExecutor":
            launch["celery_workers"] = args.celery_workers
        t = time.perf_counter()
        stack = DevStack.launch(tmp, warehouse=wh_url, airflow_db=af_url, residents=args.residents, city=city,
                                env=extra, say=say, **launch)
        held = hold_extracts(stack)  # before the components have imported Airflow: no sweep has run
        stack.wait_for("the Execution API", lambda: api_healthy(stack), 600, poll=1.0)
        start_without_reconciles(stack, {f"ingest_{s}" for s in order} | set(CHAIN_DAGS))
        stack.wait_for("the change-event watchers", lambda: watchers_running(stack, len(order)), 600, poll=1.0)
        stack.wait_for("the start-up's own scheduled runs", lambda: not stack.unfinished_runs(), args.bound, poll=1.0)
        say(f"{executor}: system up in {time.perf_counter() - t:.0f}s; the departments announce their first extracts")
        since = datetime.now(timezone.utc)
        with SystemMemory(stack) as mem:
            release_extracts(stack, held)  # the departments' first exports are done
            t0 = time.time()
            for source in order:
                stack.announce(source)
            wait_quiet(stack, "the whole city", args.bound, since)
        end = last_stream_arrival(stack)
        wall = end - t0
        full_state = outbox_state(stack)
        runs = run_states(stack, since)
        failed = {d: st["failed"] for d, st in runs.items() if st.get("failed")}
        per_dag, per_task = dag_breakdown(af_url, since)
        say(f"{executor}: whole city {wall:.1f}s (baseline {baseline_s:.1f}s), {full_state['notices']:,} notices, "
            f"peak {mem.peak['total_mb']} MB {mem.peak}; failed runs {failed or 'none'}")
        pages = page_times(stack)
        say(f"{executor}: pages {pages}")

        say(f"{executor}: {args.changes} changes at the departments")
        before = outbox_state(stack)
        stream_before = stream_length(stack)
        kinds = make_changes(stack, args.changes, args.seed)
        t_exp = time.perf_counter()
        exports = [export(stack, "registry", "incremental"), export(stack, "immunization", "incremental"),
                   export(stack, "subscriptions", "reconcile")]
        export_s = time.perf_counter() - t_exp
        inc_since = datetime.now(timezone.utc)
        with SystemMemory(stack) as inc_mem:
            t1 = time.time()
            for e in exports:
                if e["last_seq"] is not None and e["written"]:
                    publish(stack, e["source"], e["last_seq"], e["written"])
            wait_quiet(stack, "the changes", args.bound, inc_since)
        inc_end = last_stream_arrival(stack)
        after = outbox_state(stack)
        inc_runs = run_states(stack, inc_since)
        inc_failed = {d: st["failed"] for d, st in inc_runs.items() if st.get("failed")}
        inc_per_dag, inc_per_task = dag_breakdown(af_url, inc_since)
        inc = {
            "wall_s": round(inc_end - t1, 2),
            "export_s": round(export_s, 2),
            "changed_records": sum(e["written"] for e in exports),
            "changes_by_kind": kinds,
            "exports": exports,
            "new_notices": after["notices"] - before["notices"],
            "withdrawn_notices": after["withdrawn"] - before["withdrawn"],
            "lifecycle_events": after["events"] - before["events"],
            "stream_messages": stream_length(stack) - stream_before,
            "failed_runs": inc_failed,
            "dag_runs": inc_runs,
            "per_dag_median_s": inc_per_dag,
            "per_task_median_s": inc_per_task,
            "peak_pss_mb": inc_mem.peak,
            "timeline": timeline(af_url, t1),
            "cpu": _say_cpu(executor, "changes", inc_mem.cpu(af_url)),
            "warehouse_busiest_s": _say_queries(executor, "changes", inc_mem.busiest_queries()),
        }
        say(f"{executor}: changes → stream {inc['wall_s']}s (export {inc['export_s']}s): {inc['new_notices']} new "
            f"notices, {inc['withdrawn_notices']} withdrawn, failed runs {inc_failed or 'none'}")
        full = {
            "wall_s": round(wall, 2),
            "baseline_s": round(baseline_s, 2),
            "ratio": round(wall / baseline_s, 2),
            "peak_rss_mb": mem.peak["total_mb"],
            "peak_pss": mem.peak,
            "cpu": _say_cpu(executor, "whole city", mem.cpu(af_url)),
            "warehouse_busiest_s": _say_queries(executor, "whole city", mem.busiest_queries()),
            "baseline_stages": base_stages,
            "announce_order": order,
            "notices": full_state["notices"],
            "failed_runs": failed,
            "dag_runs": runs,
            "per_dag_median_s": per_dag,
            "per_task_median_s": per_task,
            "page_s": pages,
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        }
        ok = not (failed or inc_failed)  # a red run keeps its logs for the reader
        return full, inc
    finally:
        if stack is not None:
            stack.shutdown()
        if args.keep or not ok:
            say(f"kept {tmp} and databases {wh_url.rsplit('/', 1)[1]}, {af_url.rsplit('/', 1)[1]}" if args.keep
                else f"the run failed: logs in {tmp}")
        if not args.keep:
            drop_db(args.pg, wh_url)
            drop_db(args.pg, af_url)
            if ok:
                shutil.rmtree(tmp, ignore_errors=True)


def _sources():  # noqa: ANN202
    from renkei.config import ingest_sources

    return ingest_sources()


def _median_entry(runs: list[dict], keys: tuple[str, ...]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in keys}


def write_results(name: str, executor: str, entry: dict, folder: Path = RESULTS) -> None:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(path.read_text()) if path.exists() else {}
    if not isinstance(doc, dict) or "residents" in doc:  # the old single-entry layout
        doc = {}
    doc[executor] = entry
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")


def _terminate(signum, frame) -> None:  # noqa: ANN001
    raise SystemExit(f"stopped by signal {signum}")  # the finally blocks stop the stack and drop the databases


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--residents", type=int, default=1_000_000)
    ap.add_argument("--work", required=True, help="the prepared city lives in WORK/city (made there once)")
    ap.add_argument("--executor", action="append", choices=EXECUTORS, help="repeatable; default: both")
    ap.add_argument("--celery-workers", type=int, default=2, help="`airflow celery worker` processes on the default queue")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--order", default="", help="comma-separated announce order (default: registry last)")
    ap.add_argument("--pg", default=os.environ.get("RENKEI_BENCH_PG", PG_ADMIN))
    ap.add_argument("--bound", type=float, default=3600.0, help="seconds a stage may take before the run fails")
    ap.add_argument("--airflow-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--dry", action="store_true", help="measure but write no result file (trying the script out)")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="folder of the result files (default bench/results; another one for a trial run)")
    args = ap.parse_args()

    from renkei.devstack import prepare_city

    city = Path(args.work) / "city"
    info = prepare_city(city, args.residents, say=say)
    names = [s.name for s in _sources()]
    order = [s for s in args.order.split(",") if s] or [n for n in names if n != "registry"] + ["registry"]
    if sorted(order) != sorted(names):
        ap.error(f"--order must name each source once: {', '.join(names)}")
    common = {"command": "python " + " ".join(sys.argv), "machine": machine(), "commit": commit(),
              "measured_on": date.today().isoformat(), "city": info}
    for executor in args.executor or EXECUTORS:
        fulls, incs = [], []
        for i in range(args.repeat):
            say(f"== {executor}, run {i + 1} of {args.repeat}, {args.residents:,} residents")
            full, inc = one_run(args, executor, city, order)
            fulls.append(full)
            incs.append(inc)
        head = {"residents": args.residents, "executor": executor, "repeat": args.repeat}
        if executor == "CeleryExecutor":
            head["celery_workers"] = args.celery_workers
        full_entry = {**head, **_median_entry(fulls, ("wall_s", "baseline_s", "ratio")),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in fulls),
                      "peak_memory_note": "summed PSS of every Airflow process, PostgreSQL and Redis",
                      "runs": fulls, **common}
        inc_entry = {**head, **_median_entry(incs, ("wall_s", "export_s")),
                     "changed_records": incs[0]["changed_records"],
                     "new_notices": statistics.median(r["new_notices"] for r in incs),
                     "withdrawn_notices": statistics.median(r["withdrawn_notices"] for r in incs),
                     "runs": incs, **common}
        print(json.dumps({k: full_entry[k] for k in ("residents", "executor", "wall_s", "baseline_s", "ratio",
                                                     "peak_rss_mb")}), flush=True)
        print(json.dumps({k: inc_entry[k] for k in ("residents", "executor", "wall_s", "export_s", "changed_records",
                                                    "new_notices", "withdrawn_notices")}), flush=True)
        if not args.dry:
            write_results("full_run.json", executor, full_entry, args.out)
            write_results("incremental.json", executor, inc_entry, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
