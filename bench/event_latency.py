"""Benchmark: one department change → the resulting message on the notices stream, through the
real event-driven runtime, at a given city size.

    .venv/bin/python bench/event_latency.py --residents 300 --events 20
    .venv/bin/python bench/event_latency.py --residents 1000000 --events 12 --work /work/bench1m [--reuse]

Starts the whole system (renkei.devstack: PostgreSQL metadata and warehouse, Redis, scheduler,
dag-processor, triggerer, api-server; LocalExecutor) on a synthetic city of ``--residents``,
warms it up (every source announced, the whole city ingested, linked and evaluated, a first
newborn's notices on the stream, then no DAG run queued), then makes one change at a time at a
department, round-robin over ``--kinds``:

- ``birth``: the registry records a newborn (70 days old) → its notices (at least 3);
- ``dose``: the immunization register records hepatitis B dose 1 of an earlier newborn, given
  42 days ago → the new notice for dose 2 (due now);
- ``opt_out``: a resident opts out of the city-app subscription behind an open event notice →
  that notice's ``withdrawn`` state message;
- ``delete``: the digital office deletes a subscription row behind an open event notice →
  the ``withdrawn`` state message. An incremental export cannot see a deletion: the export
  adapter writes the tombstone on reconcile, so this kind runs the reconcile export of the
  source (its time is part of the event's and recorded as ``export_s``).

The clock starts before the department's raw row is written (the export adapter, the change
event, every DAG and the relay are inside it) and stops at the Redis server's own arrival time
of the awaited message (the stream entry id's milliseconds). Also recorded: the time of a
reconcile export of the registry at this city size (``reconcile_registry_s``; not published),
per-DAG and per-task median durations from the Airflow metadata (runs of the measured window),
and the machine's load average.

Each event's ``timeline`` lists its DAG runs' tasks and asset events in seconds after the change;
``stages_median_s`` sums them up as export → trigger → ingest → link → services → relay.

``--work DIR`` keeps the prepared city (DIR/city: raw tables, keyring, first extracts) and,
after the run, a snapshot of the warmed-up system (DIR/snapshot: raw tables and extracts as the
run left them, and the warehouse as PostgreSQL template database ``renkei_evsnap_<residents>``);
``--reuse`` starts from that snapshot (the warehouse cloned from the template), so a 1M-resident
warm-up is one link instead of the whole city through Airflow. ``--seed library`` fills a fresh
warehouse from the city with the DAG tasks' library calls before the stack starts (a whole-city
first ingest through Airflow does not finish at 1M today: docs/BENCHMARKS.md). Results go to
bench/results/event_latency_<residents>.json; bench/results/event_latency.json is rewritten from
those files after each run: the 1,000,000-resident result, with the 300-resident one's headline
figures beside it under ``small_city``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timezone
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain_run import commit, machine  # noqa: E402

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("birth", "dose", "opt_out", "delete")
CITY_SCALE = 1_000_000


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))], 2)


def admin_engine() -> sa.Engine:
    return sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")


def db_url(name: str) -> str:
    return ADMIN.rsplit("/", 1)[0] + f"/{name}"


def db_exists(name: str) -> bool:
    with admin_engine().connect() as conn:
        return conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is not None


def create_db(name: str, template: str | None = None) -> None:
    with admin_engine().connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))


def drop_db(name: str) -> None:
    with admin_engine().connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def lifecycle_missing() -> str | None:
    """Why opt_out/delete cannot be measured yet (None: the notice lifecycle is there)."""
    import inspect

    from renkei.outputs import notice, relay
    from renkei.warehouse import metadata

    if "notice_events" not in metadata.tables:
        return "the warehouse has no notice_events table"
    if not hasattr(notice, "NoticeState") or "NoticeState" not in inspect.getsource(relay):
        return "the relay publishes no notice_state messages"
    return None


# -- picking what to change (not timed) ---------------------------------------------------


def open_event_notice(stack, used: set[str]) -> tuple[str, str] | None:
    """(subscription_id, notice_id): an event notice of the outbox not withdrawn, not delivered,
    whose resident has exactly one active subscription of the notice's topic (that one)."""
    q = sa.text("""
        SELECT s.subscription_id, n.notice_id
        FROM notices n
        JOIN staging_subscriptions s ON s.erk = n.erk AND s.topic = (n.facts::json ->> 'topic')
        WHERE n.service = 'event' AND s.opted_out_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM notice_events e WHERE e.notice_id = n.notice_id)
          AND (SELECT count(*) FROM staging_subscriptions o
               WHERE o.erk = s.erk AND o.topic = s.topic AND o.opted_out_at IS NULL) = 1
        ORDER BY n.created_at DESC, n.notice_id
        LIMIT 50
    """)
    with stack._warehouse().connect() as conn:
        rows = conn.execute(q).all()
    for sub_id, nid in rows:
        if sub_id not in used and nid not in used:
            return sub_id, nid
    return None


# -- the measured events ------------------------------------------------------------------


class Bench:
    def __init__(self, stack, watch, airflow_db: str) -> None:
        self.stack, self.watch, self.airflow_db = stack, watch, airflow_db
        self.seen: list[tuple[str, float, dict]] = []  # every stream message since the watch began
        self.children: list[str] = []  # newborns without a recorded dose yet
        self.used: set[str] = set()

    def poll(self) -> None:
        self.seen += self.watch.poll()

    def arrived(self, match) -> float | None:  # noqa: ANN001 - predicate on a message
        """The Redis arrival time (Unix s) of the first message seen that matches."""
        self.poll()
        return next((at for _, at, m in self.seen if match(m)), None)

    def wait(self, what: str, match, t0_wall: float, bound: float) -> float:  # noqa: ANN001
        found: list[float] = []

        def check() -> bool:
            at = self.arrived(match)
            if at is not None:
                found.append(at)
            return bool(found)

        self.stack.wait_for(what, check, bound, poll=0.1)
        return found[0] - t0_wall

    def event(self, kind: str, bound: float) -> dict:
        st = self.stack
        if kind == "birth":
            t0 = time.time()
            code = st.add_birth()
            res = st.export_and_publish("registry")
            export_s = time.time() - t0
            erk = st.erk(code)
            st.wait_for("the newborn's notices in the outbox", lambda: len(st.notices_for(code)) >= 3, bound, poll=0.1)
            ids = st.notices_for(code)
            t_outbox = time.time() - t0
            # Every notice of the child on the stream: the latest arrival among them.
            got: dict[str, float] = {}

            def all_there() -> bool:
                self.poll()
                for _, at, m in self.seen:
                    if m.get("notice_id") in ids and m.get("erk") == erk and m.get("type", "notice") != "notice_state":
                        got.setdefault(m["notice_id"], at)
                return ids <= got.keys()

            st.wait_for("the newborn's notices on the stream", all_there, bound, poll=0.1)
            self.children.append(code)
            return {"kind": kind, "latency_s": max(got.values()) - t0, "outbox_s": t_outbox, "export_s": export_s,
                    "export_mode": res.mode, "message": f"{len(ids)} notices"}
        if kind == "dose":
            if not self.children:
                raise RuntimeError("no newborn without a dose: put 'birth' before 'dose' in --kinds")
            code = self.children.pop(0)
            erk = st.erk(code)
            t0 = time.time()
            st.add_dose(code)
            res = st.export_and_publish("immunization")
            export_s = time.time() - t0
            lat = self.wait("the dose-2 notice on the stream", lambda m: m.get("erk") == erk and m.get("subject") == "HEPB"
                            and m.get("dose_number") == 2 and m.get("type", "notice") != "notice_state", t0, bound)
            return {"kind": kind, "latency_s": lat, "export_s": export_s, "export_mode": res.mode,
                    "message": "notice HEPB#2"}
        if kind in ("opt_out", "delete"):
            picked = open_event_notice(st, self.used)
            if picked is None:
                raise RuntimeError("no open event notice with a single subscription behind it to change")
            sub_id, nid = picked
            self.used.update(picked)
            t0 = time.time()
            if kind == "opt_out":
                st.opt_out(sub_id)
                res = st.export_and_publish("subscriptions")
            else:
                st.delete_record("subscriptions", sub_id)
                res = st.export_and_publish("subscriptions", mode="reconcile")
            export_s = time.time() - t0
            lat = self.wait("the notice's withdrawal on the stream", lambda m: m.get("type") == "notice_state"
                            and m.get("notice_id") == nid and m.get("state") == "withdrawn", t0, bound)
            return {"kind": kind, "latency_s": lat, "export_s": export_s, "export_mode": res.mode,
                    "message": "notice_state withdrawn"}
        raise ValueError(f"unknown kind {kind!r}: use {', '.join(KINDS)}")


# -- Airflow metadata ---------------------------------------------------------------------


# The DAGs between a department's change event and the notices stream. Delivery and the nightly
# reconciles are not on that path: a quiet scheduler is one with none of these queued or running
# (the others may run meanwhile; each event records which did).
CHAIN = ("ingest_", "link_residents", "proactive_services", "relay_notices")


# The warm-up also waits for the reconcile exports every cron DAG's first start runs: at city
# scale one holds the extracts' SQLite write lock for minutes, and an export meanwhile fails.
WARM_UP = CHAIN + ("reconcile_",)


def active_runs(airflow_db: str, only: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    eng = sa.create_engine(airflow_db)
    with eng.connect() as conn:
        rows = conn.execute(sa.text("SELECT dag_id, state FROM dag_run WHERE state IN ('queued', 'running') ORDER BY dag_id")).all()
    eng.dispose()
    return [tuple(r) for r in rows if only is None or r[0].startswith(only)]


def dag_breakdown(airflow_db: str, since: datetime) -> tuple[dict, dict]:
    """Median queue wait (queued → start) and run time (start → end) per DAG, and median
    duration per task, over the runs queued since ``since``."""
    eng = sa.create_engine(airflow_db)
    with eng.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT dag_id, EXTRACT(EPOCH FROM start_date - queued_at), EXTRACT(EPOCH FROM end_date - start_date) "
            "FROM dag_run WHERE state = 'success' AND start_date IS NOT NULL AND queued_at >= :since"
        ), {"since": since}).all()
        tasks = conn.execute(sa.text(
            "SELECT ti.dag_id || '.' || ti.task_id, EXTRACT(EPOCH FROM ti.end_date - ti.start_date), "
            "EXTRACT(EPOCH FROM ti.start_date - ti.queued_dttm) "
            "FROM task_instance ti JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id "
            "WHERE ti.state = 'success' AND r.queued_at >= :since AND ti.start_date IS NOT NULL"
        ), {"since": since}).all()
    eng.dispose()
    dags: dict[str, dict] = {}
    for dag_id in sorted({r[0] for r in rows}):
        q = [float(r[1]) for r in rows if r[0] == dag_id]
        run = [float(r[2]) for r in rows if r[0] == dag_id]
        dags[dag_id] = {"runs": len(run), "queued_s": round(statistics.median(q), 2), "run_s": round(statistics.median(run), 2)}
    per_task: dict[str, dict] = {}
    for name in sorted({r[0] for r in tasks}):
        d = [float(r[1]) for r in tasks if r[0] == name]
        w = [float(r[2]) for r in tasks if r[0] == name and r[2] is not None]
        per_task[name] = {"n": len(d), "run_s": round(statistics.median(d), 2),
                          "queued_s": round(statistics.median(w), 2) if w else None}
    return dags, per_task


def timeline(airflow_db: str, t0: float) -> list[list]:
    """[dag.task, run queued, task queued, start, end] in seconds after ``t0`` (Unix s) of the
    task instances of the DAG runs queued since then, and [asset, stored] of the asset events:
    where one event's time went."""
    eng = sa.create_engine(airflow_db)
    with eng.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT ti.dag_id || '.' || ti.task_id || CASE WHEN ti.map_index >= 0 THEN '[' || ti.map_index || ']' ELSE '' END, "
            "EXTRACT(EPOCH FROM ti.queued_dttm), EXTRACT(EPOCH FROM ti.start_date), EXTRACT(EPOCH FROM ti.end_date), "
            "EXTRACT(EPOCH FROM r.queued_at) "
            "FROM task_instance ti JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id "
            "WHERE r.queued_at >= to_timestamp(:t0) ORDER BY ti.start_date NULLS LAST"), {"t0": t0}).all()
        # When each asset event was stored (a change event taken by the triggerer; a task's outlet)
        assets = conn.execute(sa.text(
            "SELECT 'asset ' || a.name, EXTRACT(EPOCH FROM e.timestamp) FROM asset_event e "
            "JOIN asset a ON a.id = e.asset_id WHERE e.timestamp >= to_timestamp(:t0) ORDER BY e.timestamp"), {"t0": t0}).all()
    eng.dispose()
    rel = lambda x: None if x is None else round(float(x) - t0, 2)  # noqa: E731
    out = [[name, rel(run_q), rel(q), rel(st), rel(end)] for name, q, st, end, run_q in rows]
    return sorted(out + [[name, rel(at)] for name, at in assets], key=lambda r: (r[1] is None, r[1] or 0))


STAGES = (("export", None), ("trigger", "renkei_changes_"), ("ingest", "renkei_staging_"),
          ("link", "renkei_mart_residents"), ("services", "renkei_outbox_notices"))


def stage_breakdown(events: list[dict]) -> dict:
    """Median seconds per stage of an event, from its timeline: the department's export (and the
    change event), the triggerer storing the change asset event, ingest (its three tasks) to the
    staging asset, link to the mart asset, services to the outbox asset, and the relay to the
    awaited message on the stream (``relay``, the rest)."""
    per: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    per["relay"] = []
    for e in events:
        marks = [("export", e["export_s"])]
        for name, prefix in STAGES[1:]:
            at = next((t[1] for t in e.get("timeline", []) if t[0].startswith("asset " + prefix)), None)
            if at is None:
                break
            marks.append((name, at))
        else:
            if e["latency_s"] < marks[-1][1]:
                continue  # published by a relay run already under way (its 5-minute cron): no stage order
            prev = 0.0
            for name, at in marks:
                per[name].append(at - prev)
                prev = at
            per["relay"].append(e["latency_s"] - prev)
    return {k: round(statistics.median(v), 2) for k, v in per.items() if v}


def warehouse_progress(stack, airflow_db: str) -> str:
    try:
        with stack._warehouse().connect() as conn:
            runs = conn.execute(sa.text("SELECT source, state FROM ingest_runs ORDER BY source")).all()
            notices = conn.execute(sa.text("SELECT count(*) FROM notices")).scalar()
            published = conn.execute(sa.text("SELECT count(*) FROM outbox_published")).scalar()
        loaded = sorted({s for s, state in runs if state == "loaded"})
    except sa.exc.SQLAlchemyError as exc:
        return f"warehouse not readable yet ({exc.__class__.__name__})"
    active = ", ".join(f"{d} {s}" for d, s in active_runs(airflow_db)) or "none"
    return f"loaded {len(loaded)} sources; notices {notices:,}, published {published:,}; runs: {active}"


def seed_warehouse(city: Path, url: str) -> dict:
    """Fill a fresh warehouse from the prepared city's first extracts with the library calls the
    DAG tasks make (ingest extract → validate → load per source, link, services), in this
    process, before the stack starts (``--seed library``). The landing table is analyzed between
    extract and load: without statistics PostgreSQL plans load's per-key "latest change"
    anti-join as a nested loop over the batch, quadratic in its rows (see docs/BENCHMARKS.md)."""
    from renkei import bulk, ingest
    from renkei.config import ingest_sources
    from renkei.devstack import tokyo_today
    from renkei.keys.ring import KeyRing
    from renkei.linkage.mart import build_mart
    from renkei.outputs.outbox import run_services
    from renkei.settings import Settings
    from renkei.warehouse import engine, ensure_schema, landing_table

    env = Settings.from_env()
    settings = Settings(warehouse_url=url, extracts_url=f"sqlite:///{city / 'extracts.db'}",
                        config_dir=env.config_dir, expectations_dir=env.expectations_dir)
    ring = KeyRing.load(city / "keyring.json")
    eng = engine(url)
    ensure_schema(eng)
    steps: dict[str, float] = {}
    for src in ingest_sources():
        run_id = f"ingest_{src.name}/seed"
        t = time.monotonic()
        ex = ingest.extract(src, run_id, settings)
        with eng.begin() as conn:
            bulk.analyze(conn, [landing_table(src)])
        ingest.validate(src, run_id, settings)
        lo = ingest.load(src, run_id, ring, settings)
        steps[f"ingest_{src.name}"] = round(time.monotonic() - t, 1)
        say(f"seed: {src.name} {ex['read']:,} read, {lo['loaded']:,} loaded in {steps[f'ingest_{src.name}']}s")
    eng.dispose()
    as_of = tokyo_today()
    t = time.monotonic()
    mart = build_mart(url, as_of, "link_residents/seed")
    steps["link"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    notices = run_services(url, as_of, "proactive_services/seed")
    steps["services"] = round(time.monotonic() - t, 1)
    say(f"seed: mart {mart['residents']:,} residents ({steps['link']}s), {notices['new']:,} notices ({steps['services']}s)")
    # A warehouse in service has been through autovacuum since its bulk load: visibility maps
    # set (index-only scans) and statistics fresh. A freshly seeded one has neither for minutes.
    t = time.monotonic()
    vac = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with vac.connect() as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE)")
    vac.dispose()
    steps["vacuum_analyze"] = round(time.monotonic() - t, 1)
    return steps


# -- main ---------------------------------------------------------------------------------


def _terminate(signum, frame) -> None:  # noqa: ANN001
    raise SystemExit(f"stopped by signal {signum}")  # the finally blocks stop the stack and drop its databases


def main() -> int:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    ap = argparse.ArgumentParser()
    ap.add_argument("--residents", type=int, default=300)
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--kinds", default=",".join(KINDS), help="round-robin over these: " + ", ".join(KINDS))
    ap.add_argument("--gap", type=float, default=2.0, help="seconds of quiet between one event's message and the next change")
    ap.add_argument("--executor", default="LocalExecutor", choices=["LocalExecutor"])
    ap.add_argument("--work", help="keep the city and a snapshot of the warmed-up system here (see the docstring)")
    ap.add_argument("--reuse", action="store_true", help="start from the snapshot in --work")
    ap.add_argument("--seed", choices=["airflow", "library"], default="airflow",
                    help="how a fresh warehouse gets the whole city: through the stack's DAG runs (the warm-up), "
                         "or by the same library calls in this process before the stack starts")
    ap.add_argument("--no-reconcile", action="store_true", help="skip timing the registry's reconcile export")
    ap.add_argument("--bound", type=float, default=600.0, help="seconds an event may take before the run fails")
    ap.add_argument("--out", help="default: bench/results/event_latency_<residents>.json")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory and databases (debugging)")
    ap.add_argument("--airflow-env", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra setting for the Airflow components (e.g. AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=1.0 "
                         "to measure with Airflow's default); recorded under airflow_settings")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        ap.error(f"--kinds: use some of {', '.join(KINDS)}")
    if args.reuse and not args.work:
        ap.error("--reuse needs --work")
    if {"opt_out", "delete"} & set(kinds) and (why := lifecycle_missing()):
        ap.error(f"--kinds opt_out/delete need the notice lifecycle ({why}): measure --kinds birth,dose")

    from renkei.config import ingest_sources, load_sources
    from renkei.devstack import DevStack, prepare_city
    from renkei.keys.adapter import RECONCILE, pseudonymize, raw_location

    started = time.monotonic()
    work = Path(args.work) if args.work else None
    snap_dir = work / "snapshot" if work else None
    template = f"renkei_evsnap_{args.residents}"
    reuse = bool(args.reuse and snap_dir and (snap_dir / "city.json").exists() and db_exists(template))
    if args.reuse and not reuse:
        say(f"no snapshot in {work} (or no database {template}): starting from the city")
    tag = uuid.uuid4().hex[:8]
    wh_name, af_name = f"renkei_ev_{tag}_wh", f"renkei_ev_{tag}_af"
    load_before = os.getloadavg()
    stack = None
    result: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="renkei-latency-"))
    try:
        if reuse:
            t = time.monotonic()
            create_db(wh_name, template=template)
            say(f"warehouse cloned from {template} in {time.monotonic() - t:.1f}s")
        else:
            create_db(wh_name)
        create_db(af_name)
        city = snap_dir if reuse else (work / "city" if work else None)
        if city is not None and not reuse:
            prepare_city(city, args.residents, say=say)
        seeded = None
        if not reuse and args.seed == "library":
            if city is None:
                ap.error("--seed library needs --work (the city is prepared there first)")
            seeded = seed_warehouse(city, db_url(wh_name))
        extra = dict(kv.split("=", 1) for kv in args.airflow_env)
        stack = DevStack.launch(tmp, warehouse=db_url(wh_name), airflow_db=db_url(af_name),
                                residents=args.residents, city=city, env=extra, say=say)
        af = db_url(af_name)
        say(f"stack up ({args.residents:,} residents); warming up")
        t = time.monotonic()
        for src in ingest_sources():
            stack.announce(src.name)
        code = stack.add_birth()
        stack.export_and_publish("registry")
        big = args.residents >= 100_000
        bound = 3600.0 if big else 600.0
        progress = (lambda: warehouse_progress(stack, af))
        stack.wait_for("warm-up: first newborn's notices", lambda: len(stack.notices_for(code)) >= 3, bound,
                       progress=progress, say=say)
        # Measure from an idle system: the warm-up's own queued runs would delay the first event.
        stack.wait_for("warm-up: quiet scheduler", lambda: not active_runs(af, WARM_UP), bound, poll=1.0,
                       progress=progress, say=say)
        warm = time.monotonic() - t
        say(f"warm-up (all sources announced + first newborn, until no run is queued): {warm:.1f}s")

        watch = stack.stream_watch()
        bench = Bench(stack, watch, af)
        bench.children.append(code)
        measured_from = datetime.now(timezone.utc)
        load_start = os.getloadavg()
        events: list[dict] = []
        for i in range(args.events):
            kind = kinds[i % len(kinds)]
            time.sleep(args.gap)
            t_ev = time.time()
            others = sorted({d for d, _ in active_runs(af)})
            ev = bench.event(kind, args.bound)
            ev["running_at_start"] = others
            events.append(ev)
            say(f"event {i + 1:>2} {kind:<8} {ev['latency_s']:6.2f}s (export {ev['export_s']:5.2f}s, "
                f"{ev['export_mode']}) → {ev['message']}")
            # the next change starts from a quiet scheduler, as the first did
            stack.wait_for("quiet scheduler", lambda: not active_runs(af, CHAIN), args.bound, poll=0.5)
            # [task, run queued, task queued, start, end] after the change
            ev["timeline"] = timeline(af, t_ev)
        load_end = os.getloadavg()
        breakdown, per_task = dag_breakdown(af, measured_from)
        watch.close()

        reconcile_s = None
        if not args.no_reconcile:
            say("timing a reconcile export of the registry (not published)")
            res = pseudonymize(load_sources()["registry"], raw_location(stack.raw, "registry"), stack.extracts,
                               stack.ring, mode=RECONCILE)
            reconcile_s = res.seconds
            say(f"reconcile of the registry: {reconcile_s:.1f}s ({res.read:,} rows read, {res.written} written)")

        stages = stage_breakdown(events)
        lat = [e["latency_s"] for e in events]
        per_kind = {}
        for k in kinds:
            mine = [e for e in events if e["kind"] == k]
            if mine:
                ls = [e["latency_s"] for e in mine]
                per_kind[k] = {"events": len(mine), "p50_s": pct(ls, 50), "p95_s": pct(ls, 95), "max_s": round(max(ls), 2),
                               "export_median_s": round(statistics.median(e["export_s"] for e in mine), 3),
                               "export_mode": mine[0]["export_mode"], "awaited": mine[0]["message"]}
        result = {
            "residents": args.residents,
            "events": len(events),
            "kinds": kinds,
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "max_s": round(max(lat), 2),
            "mean_s": round(statistics.mean(lat), 2),
            "per_kind": per_kind,
            "export_s": round(statistics.median(e["export_s"] for e in events), 3),
            "reconcile_registry_s": reconcile_s,
            "stages_median_s": stages,
            "per_dag_median_s": breakdown,
            "per_task_median_s": per_task,
            "latencies_s": [round(x, 2) for x in lat],
            "events_detail": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in e.items()} for e in events],
            "warm_up_s": round(warm, 1),
            "started_from": "snapshot" if reuse else f"city, seeded by {args.seed}",
            "seed_s": seeded,
            "executor": args.executor,
            "airflow_settings": {k: v for k, v in sorted(stack.env.items()) if k.startswith("AIRFLOW__SCHEDULER__")
                                 or k in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__PARALLELISM")},
            "load_avg": {"before": [round(x, 2) for x in load_before], "measure_start": [round(x, 2) for x in load_start],
                         "measure_end": [round(x, 2) for x in load_end]},
            "command": "python " + " ".join(sys.argv),
            "machine": machine(),
            "commit": commit(),
            "measured_on": date.today().isoformat(),
        }
    finally:
        if stack is not None:
            stack.shutdown()
        try:
            if result and work is not None:
                save_snapshot(tmp, snap_dir, wh_name, template)
        finally:
            if args.keep:
                say(f"kept {tmp}, databases {wh_name} and {af_name}")
            else:
                drop_db(wh_name)
                drop_db(af_name)
                if result:
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    say(f"the run failed: its logs are in {tmp}")
    out = Path(args.out) if args.out else RESULTS / f"event_latency_{args.residents}.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if args.out is None:
        combine_results()
    summary = {k: result[k] for k in ("residents", "events", "p50_s", "p95_s", "max_s", "export_s", "reconcile_registry_s")}
    summary["per_kind"] = {k: {x: v[x] for x in ("p50_s", "p95_s", "max_s")} for k, v in result["per_kind"].items()}
    print(json.dumps(summary, indent=2))
    say(f"total {time.monotonic() - started:.0f}s")
    return 0


def combine_results() -> None:
    """bench/results/event_latency.json: the city-scale result (event_latency_1000000.json) with
    the 300-resident one beside it under ``small_city`` (its headline figures) — rewritten
    whenever either is measured."""
    big, small = RESULTS / f"event_latency_{CITY_SCALE}.json", RESULTS / "event_latency_300.json"
    if not big.exists():
        return
    combined = json.loads(big.read_text())
    if small.exists():
        s = json.loads(small.read_text())
        combined["small_city"] = {k: s.get(k) for k in ("residents", "events", "kinds", "p50_s", "p95_s", "max_s",
                                                         "per_kind", "export_s", "reconcile_registry_s", "load_avg",
                                                         "commit", "measured_on")}
    (RESULTS / "event_latency.json").write_text(json.dumps(combined, indent=2, ensure_ascii=False) + "\n")


def save_snapshot(base: Path, snap_dir: Path, wh_name: str, template: str) -> None:
    """Keep the run's raw tables, extracts, keyring and warehouse for a later --reuse."""
    t = time.monotonic()
    new = snap_dir.with_name(snap_dir.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    shutil.copytree(base / "raw", new / "raw")
    for path in base.iterdir():
        if path.is_file() and path.name.startswith(("extracts.db", "keyring.json", "city.json")):
            shutil.copy2(path, new / path.name)
    drop_db(template)
    create_db(template, template=wh_name)
    shutil.rmtree(snap_dir, ignore_errors=True)
    new.rename(snap_dir)
    say(f"snapshot kept in {snap_dir} and database {template} ({time.monotonic() - t:.1f}s)")


if __name__ == "__main__":
    sys.exit(main())
