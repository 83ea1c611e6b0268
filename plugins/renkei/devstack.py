"""A whole Renkei system on one machine, for end-to-end tests and the latency benchmark.

`DevStack.launch()` prepares a synthetic city (raw tables, keyring, first extracts — or copies a
city prepared once by :func:`prepare_city`), a config copy whose Redis keys carry a unique tag,
the Airflow metadata and warehouse databases it is given, and starts the scheduler,
dag-processor, triggerer and api-server as separate processes — with the LocalExecutor, or with
the CeleryExecutor and its workers configured as docker-compose.yaml configures them (Redis
broker, result backend on the metadata database, queues ``default`` and ``delivery``). Its methods act
as a department would (register a birth, record a dose, an opt-out, delete a record; run the
export adapter and publish the change event), each stamping ``updated_at`` with the real JST
time, and observe the outputs (outbox, notice lifecycle, notices stream).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from renkei.settings import REPO_ROOT

COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
EXECUTORS = ("LocalExecutor", "CeleryExecutor")
REDIS_URL = "redis://127.0.0.1:6379/0"
# docker-compose.yaml's Celery settings: the worker concurrency (RENKEI_WORKER_CONCURRENCY's
# default), the delivery worker's queue and concurrency, and the broker's visibility timeout.
WORKER_CONCURRENCY = 2
DELIVERY_QUEUE = "delivery"
DELIVERY_CONCURRENCY = 1
VISIBILITY_TIMEOUT_S = 43200
CITY_FILE = "city.json"  # what prepare_city made: residents, seed, as_of, seconds per step


# Airflow settings for event latency. An idle scheduler loop sleeps scheduler_idle_sleep_time
# (default 1 s) before it looks again, so each hand-over from one task to the next, and from an
# asset event to the DAG run it triggers, waited up to a second: eight hand-overs lie between a
# change and its notice. 0.2 s costs the idle scheduler a few more metadata queries a second.
# A task's supervisor waits for the task process in a select() bounded by min_heartbeat_interval
# (default 5 s); when the process's sockets have closed before it can be reaped, the select has
# nothing left to watch and sleeps the whole bound: a quarter of the task processes of a 50,000-
# resident run held their executor slot ~5 s after the task ended, and a skipped or failed task
# reached its state that much later. 1 s bounds that; running tasks heartbeat once a second.
LATENCY_SETTINGS = {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
                    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1"}

# A task's calls to the Execution API wait 5 s by default: on a loaded 2-core machine (CI, or
# tests beside a benchmark) the api-server answered later and the task failed (ReadTimeout).
LOADED_MACHINE_SETTINGS = {"AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30"}
API_START_BOUND_S = 180


def tokyo_today() -> date:
    return (datetime.now(timezone.utc) + timedelta(hours=9)).date()


def now_jst_text() -> str:
    """The department's clock reading now, in JST with its zone (the machine's clock is UTC:
    a bare ``datetime.now()`` labelled +09:00 would be nine hours behind)."""
    from renkei.sources.values import format_timestamp

    return format_timestamp(datetime.now(timezone.utc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def components_env(port: int) -> dict[str, str]:
    """What separately started Airflow components must agree on: the api-server's port, where
    its Execution API is, and its secrets (fresh per stack); every user an admin (tests only)."""
    from cryptography.fernet import Fernet  # noqa: PLC0415

    return {
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    }


def celery_env(tag: str, airflow_db: str) -> dict[str, str]:
    """The CeleryExecutor's settings for every component of the stack tagged ``tag``: the Redis
    broker with every key (and pub/sub channel) under ``renkei-dev-<tag>:celery:`` — stacks
    running side by side share one Redis, and :meth:`DevStack.shutdown` deletes the tag's keys —,
    the result backend on the stack's metadata database (``db+postgresql://``, as compose), the
    delivery tasks on their own queue."""
    meta = sa.make_url(airflow_db).set(drivername="postgresql")
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"renkei-dev-{tag}:celery:",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + meta.render_as_string(hide_password=False),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "RENKEI_DELIVERY_QUEUE": DELIVERY_QUEUE,
    }


# What a Celery worker does without (docker-compose.yaml gives the workers no metadata login,
# Fernet key or JWT secret: an Airflow 3 worker reaches the metadata through the Execution API).
WORKER_WITHOUT = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET")


def celery_worker_commands(tag: str, default_workers: int) -> dict[str, list[str]]:
    """Component name → command line of each worker: ``default_workers`` on queue ``default``
    (concurrency from AIRFLOW__CELERY__WORKER_CONCURRENCY) and one on the delivery queue
    (concurrency 1), as compose's airflow-worker and airflow-worker-delivery. The hostnames are
    unique (``default-1@renkei-dev-<tag>``): on one machine Celery's default, ``celery@<host>``,
    would be the same for all of them."""
    workers = {f"worker-default-{i}": ["airflow", "celery", "worker", "--queues", "default",
                                       "--celery-hostname", f"default-{i}@renkei-dev-{tag}"]
               for i in range(1, default_workers + 1)}
    workers["worker-delivery"] = ["airflow", "celery", "worker", "--queues", DELIVERY_QUEUE,
                                  "--concurrency", str(DELIVERY_CONCURRENCY),
                                  "--celery-hostname", f"delivery-1@renkei-dev-{tag}"]
    return workers


def celery_ping_command(hostname: str) -> list[str]:
    """docker-compose.yaml's worker health check: the worker ``hostname`` answers a ping on the broker."""
    return ["celery", "--app", "airflow.providers.celery.executors.celery_executor.app", "inspect", "ping",
            "-d", hostname]


def _quiet(_line: str) -> None:
    pass


def prepare_city(city: Path, residents: int, seed: int = 5, say: Callable[[str], None] = _quiet) -> dict:
    """The department side of a synthetic city under ``city``: raw tables (``raw/``), a keyring
    and the first (full) exports of every source (``extracts.db``, with the adapters' state).

    Steps already done (``city.json`` present) are skipped, so a large city is made once and
    copied by :meth:`DevStack.launch`; returns the contents of ``city.json``.
    """
    from renkei.config import ingest_sources
    from renkei.keys.adapter import pseudonymize, raw_location
    from renkei.keys.ring import KeyRing
    from renkei.synth import generate

    city = Path(city)
    marker = city / CITY_FILE
    if marker.exists():
        info = json.loads(marker.read_text(encoding="utf-8"))
        if info.get("residents") != residents or info.get("seed") != seed:
            raise ValueError(f"{city} holds a city of {info.get('residents')} residents (seed {info.get('seed')}), "
                             f"not {residents} (seed {seed}): choose another directory")
        return info
    city.mkdir(parents=True, exist_ok=True)
    for stale in ("raw", "extracts.db", "keyring.json"):
        path = city / stale
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    as_of = tokyo_today()
    t = time.monotonic()
    generate(residents, seed, as_of, city / "raw", defect_rate=0.0,
             progress=(lambda m: say(f"  synth: {m}")) if residents >= 100_000 else None)
    synth_s = time.monotonic() - t
    say(f"city: {residents:,} residents generated in {synth_s:.1f}s")
    ring = KeyRing.load(KeyRing.generate().save(city / "keyring.json"))
    extracts = f"sqlite:///{city / 'extracts.db'}"
    exports: dict[str, float] = {}
    for src in ingest_sources():  # the departments' first extracts
        t = time.monotonic()
        res = pseudonymize(src, raw_location(city / "raw", src.name), extracts, ring,
                           progress=(lambda m: say(f"  export: {m}")) if residents >= 100_000 else None,
                           batch_rows=50000)
        exports[src.name] = round(time.monotonic() - t, 1)
        say(f"first export of {src.name}: {res.written:,} rows in {exports[src.name]:.1f}s")
    info = {"residents": residents, "seed": seed, "as_of": as_of.isoformat(), "synth_s": round(synth_s, 1),
            "first_export_s": exports}
    marker.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


class DevStack:
    """The running system and the department-side actions on it."""

    def __init__(self, base: Path, env: dict, cfg_dir: Path, raw: Path, ring, warehouse: str, extracts: str, tag: str,
                 workers: dict[str, list[str]] | None = None):
        self.base, self.env, self.cfg_dir, self.raw, self.ring = base, env, cfg_dir, raw, ring
        self.warehouse, self.extracts, self.tag = warehouse, extracts, tag
        self.executor = env["AIRFLOW__CORE__EXECUTOR"]
        # Component name → command line: the four Airflow components, then the Celery workers.
        self.commands: dict[str, list[str]] = {
            name: ["airflow", name] + (["--port", env["AIRFLOW__API__PORT"]] if name == "api-server" else [])
            for name in COMPONENTS}
        self.commands.update(workers or {})
        # Each worker serves its task logs on a port of its own (one machine: the default 8793 once).
        self.component_env: dict[str, dict[str, str]] = {
            name: {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())} for name in (workers or {})}
        self.procs: dict[str, subprocess.Popen] = {}
        self._births = 0
        self._eng: sa.Engine | None = None
        self._airflow_eng: sa.Engine | None = None
        self.published: list[tuple[str, str]] = []  # (source, stream id) of every change event published

    @classmethod
    def launch(cls, base: Path, warehouse: str, airflow_db: str, residents: int = 300, seed: int = 5,
               sweep_cron: str = "0 3 * * *", city: Path | None = None, env: dict[str, str] | None = None,
               delivery: dict | None = None, executor: str = "LocalExecutor", celery_workers: int = 2,
               say: Callable[[str], None] = _quiet) -> "DevStack":
        """Prepare everything under ``base`` and start the four Airflow components (and, with
        ``executor="CeleryExecutor"``, ``celery_workers`` workers on queue ``default`` and one on
        queue ``delivery``: :func:`celery_env`, :func:`celery_worker_commands`).

        The sweep runs daily at 03:00 by default here, so that what reaches the outbox was
        carried by change events, not picked up by a sweep. ``city``: a directory made by
        :func:`prepare_city` (made there first if it is not yet) whose raw tables, keyring and
        first extracts are copied instead of generating them under ``base`` — a city of a
        million residents takes minutes to make. ``env``: extra settings for the components
        (e.g. the ``RENKEI_SMTP_*`` of a test SMTP server: the deliver_notices DAG reads them).
        ``delivery``: top-level keys of config/delivery.yaml replaced in the stack's copy (e.g.
        ``{"quiet_hours": {"start": "00:00", "end": "00:00", "timezone": "Asia/Tokyo"}}`` to send
        at any hour). The stack runs each schedule's latest past tick at start
        (``RENKEI_FIRST_SCHEDULED_RUN=latest``): its sweeps load the city; ``env`` may say ``next``.
        """
        import yaml

        from renkei.keys.ring import KeyRing
        from renkei.runner import airflow_env
        from renkei.warehouse import engine, ensure_schema

        if executor not in EXECUTORS:
            raise ValueError(f"executor {executor!r}: DevStack runs {' or '.join(EXECUTORS)}")
        if executor == "CeleryExecutor" and celery_workers < 1:
            raise ValueError(f"celery_workers={celery_workers}: the default queue needs at least one worker")
        base = Path(base)
        tag = uuid.uuid4().hex[:8]
        cfg_dir = base / "config"
        shutil.copytree(REPO_ROOT / "config", cfg_dir)
        channels = yaml.safe_load((cfg_dir / "channels.yaml").read_text(encoding="utf-8"))
        channels["redis_stream"]["stream_prefix"] = f"renkei-dev-{tag}:changes:"
        channels.setdefault("notices", {})["stream"] = f"renkei-dev-{tag}:notices"
        (cfg_dir / "channels.yaml").write_text(yaml.safe_dump(channels, allow_unicode=True, sort_keys=False), encoding="utf-8")
        sources = yaml.safe_load((cfg_dir / "sources.yaml").read_text(encoding="utf-8"))
        sources["defaults"]["sweep_cron"] = sweep_cron
        (cfg_dir / "sources.yaml").write_text(yaml.safe_dump(sources, allow_unicode=True, sort_keys=False), encoding="utf-8")
        if delivery:
            settings = yaml.safe_load((cfg_dir / "delivery.yaml").read_text(encoding="utf-8"))
            settings.update(delivery)
            (cfg_dir / "delivery.yaml").write_text(yaml.safe_dump(settings, allow_unicode=True, sort_keys=False),
                                                  encoding="utf-8")
        if city is None:
            prepare_city(base, residents, seed, say)
        else:
            prepare_city(Path(city), residents, seed, say)
            t = time.monotonic()
            shutil.copytree(Path(city) / "raw", base / "raw")
            for path in Path(city).iterdir():  # extracts.db (and a WAL, if one was left), keyring, city.json
                if path.is_file() and path.name.startswith(("extracts.db", "keyring.json", CITY_FILE)):
                    shutil.copy2(path, base / path.name)
            say(f"city copied from {city} in {time.monotonic() - t:.1f}s")
        raw = base / "raw"
        ring_path = base / "keyring.json"
        ring = KeyRing.load(ring_path)
        eng = engine(warehouse)
        ensure_schema(eng)
        eng.dispose()
        extracts = f"sqlite:///{base / 'extracts.db'}"
        run_env = airflow_env(base / "work", warehouse, extracts, ring_path)
        port = free_port()
        run_env.update({
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            **LATENCY_SETTINGS,
            **LOADED_MACHINE_SETTINGS,
            **components_env(port),
            "RENKEI_CONFIG_DIR": str(cfg_dir),
            "RENKEI_CHANNEL_KIND": "redis_stream",
            "RENKEI_RAW_DIR": str(raw),
            # The stack loads its city with the start-up sweeps (a deployment's default waits
            # for each schedule's next tick: renkei.schedules).
            "RENKEI_FIRST_SCHEDULED_RUN": "latest",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            **(celery_env(tag, airflow_db) if executor == "CeleryExecutor" else {}),
            **(env or {}),
        })
        t = time.monotonic()
        subprocess.run(["airflow", "db", "migrate"], env=run_env, check=True, capture_output=True)
        say(f"airflow db migrate: {time.monotonic() - t:.1f}s")
        workers = celery_worker_commands(tag, celery_workers) if executor == "CeleryExecutor" else None
        stack = cls(base, run_env, cfg_dir, raw, ring, warehouse, extracts, tag, workers)
        # The api-server first: a task the scheduler started before it listened failed on its first
        # Execution API call (connection refused) — the startup runs of the hourly DAGs did.
        t = time.monotonic()
        stack.start("api-server")
        try:
            stack.wait_for("the api-server to answer", stack.api_answers, API_START_BOUND_S, poll=0.5)
        except BaseException:
            stack.shutdown()
            raise
        say(f"api-server up: {time.monotonic() - t:.1f}s")
        for name in stack.commands:
            if name not in stack.procs:
                stack.start(name)
        return stack

    # -- processes ----------------------------------------------------------------------
    def start(self, name: str) -> None:
        """Start component ``name`` (one of :attr:`commands`); its output goes to ``<base>/<name>.log``."""
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(self.commands[name], env=self.environment(name), stdout=log,
                                            stderr=subprocess.STDOUT)

    def environment(self, name: str) -> dict[str, str]:
        """The environment component ``name`` runs with (a worker's lacks :data:`WORKER_WITHOUT`)."""
        env = {**self.env, **self.component_env.get(name, {})}
        if name in self.component_env:
            for key in WORKER_WITHOUT:
                env.pop(key, None)
        return env

    def celery_hostname(self, name: str) -> str:
        """The Celery hostname of worker ``name`` (``default-1@renkei-dev-<tag>``)."""
        args = self.commands[name]
        return args[args.index("--celery-hostname") + 1]

    def ping_worker(self, name: str) -> bool:
        """docker-compose.yaml's health check (:func:`celery_ping_command`), run for worker ``name``."""
        done = subprocess.run(celery_ping_command(self.celery_hostname(name)), env=self.environment(name),
                              capture_output=True, timeout=120)
        return done.returncode == 0

    def api_answers(self) -> bool:
        """The api-server answers ``/api/v2/version`` (compose's health check)."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.env['AIRFLOW__API__PORT']}/api/v2/version",
                                        timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def pids(self) -> dict[str, list[int]]:
        """Component name → the pids of its process and every descendant (task processes, Celery's
        pool, log servers), for the components running now."""
        from renkei.local_airflow import descendants

        return {name: [p.pid, *descendants(p.pid)] for name, p in self.procs.items() if p.poll() is None}

    def stop(self, name: str) -> None:
        from renkei.local_airflow import stop_tree

        proc = self.procs.pop(name, None)
        if proc is not None:
            stop_tree(proc.pid, timeout=20)
            proc.wait()

    def shutdown(self) -> None:
        """Stop every component and delete this stack's Redis keys (the Celery broker's too)."""
        from concurrent.futures import ThreadPoolExecutor

        import redis

        if self.procs:  # all at once: a Celery worker's warm shutdown can take stop()'s whole timeout
            with ThreadPoolExecutor(len(self.procs)) as pool:
                list(pool.map(self.stop, list(self.procs)))
        for eng in (self._eng, self._airflow_eng):
            if eng is not None:
                eng.dispose()
        self._eng = self._airflow_eng = None
        r = redis.Redis.from_url(REDIS_URL)
        for key in r.scan_iter(f"renkei-dev-{self.tag}:*"):
            r.delete(key)
        r.close()

    # -- department side ----------------------------------------------------------------
    def _raw_write(self, source: str, sql: str, params: tuple) -> int:
        con = sqlite3.connect(self.raw / f"{source}.db", timeout=30)
        try:
            n = con.execute(sql, params).rowcount
            con.commit()
        finally:
            con.close()
        return n

    def _raw_row(self, source: str, where: str, params: tuple) -> dict | None:
        con = sqlite3.connect(self.raw / f"{source}.db", timeout=30)
        con.row_factory = sqlite3.Row
        try:
            row = con.execute(f'SELECT * FROM "{source}" WHERE {where} LIMIT 1', params).fetchone()
        finally:
            con.close()
        return dict(row) if row is not None else None

    def add_birth(self, born: date | None = None, guardian_email: str | None = None) -> str:
        """A child is registered (born 70 days ago unless ``born``); returns the new (synthetic)
        resident code. ``guardian_email``: an adult (born 1990-01-01) is registered in the same
        household first, with that e-mail as a verified contact (registry_contact), so delivery
        reaches the child's notices through them; use a test address (``…@example.test``)."""
        self._births += 1
        code = f"9{uuid.uuid4().int % 10**10:010d}"
        born = born or (tokyo_today() - timedelta(days=70))
        household = f"HDEV{self.tag}{self._births}"
        insert = ("INSERT INTO registry (resident_code, name_kana, name_kanji, birth_date, sex, ward_code, address, "
                  "household_code, status, status_date, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)")
        if guardian_email:
            adult = f"8{uuid.uuid4().int % 10**10:010d}"
            self._raw_write("registry", insert, (adult, "ホゴシャ テスト", "保護者 試験", "1990-01-01", 2, "401064",
                                                 "北九州市小倉北区城内1番1号", household, "resident", "1990-01-01",
                                                 now_jst_text()))
            self._raw_write("registry_contact", "INSERT INTO registry_contact (resident_code, channel, address, "
                            "verified_at, updated_at) VALUES (?,?,?,?,?)",
                            (adult, "email", guardian_email, now_jst_text(), now_jst_text()))
        self._raw_write("registry", insert, (code, "シンセイ ジ", "新生 児", born.isoformat(), 1, "401064",
                                             "北九州市小倉北区城内1番1号", household, "resident", born.isoformat(),
                                             now_jst_text()))
        return code

    def add_dose(self, code: str, vaccine_code: str = "HEPB", dose_number: int = 1,
                 administered_on: date | None = None) -> str:
        """The immunization register records a dose for resident ``code`` (its copy of the basic
        attributes taken from the registry row, as the health bureau's own record would match);
        returns the new record_id. Default: hepatitis B dose 1 given 42 days ago, which makes
        dose 2 due today (its interval is 28 days) — a newborn of :meth:`add_birth` qualifies."""
        reg = self._raw_row("registry", "resident_code = ?", (code,))
        if reg is None:
            raise ValueError(f"resident {code} is not in the raw registry")
        record_id = f"IDEV{uuid.uuid4().hex[:12]}"
        given = administered_on or (tokyo_today() - timedelta(days=42))
        self._raw_write(
            "immunization",
            "INSERT INTO immunization (record_id, resident_code, name_kana, birth_date, sex, address, vaccine_code, "
            "dose_number, administered_on, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (record_id, code, reg["name_kana"], reg["birth_date"], reg["sex"], reg["address"], vaccine_code,
             dose_number, given.isoformat(), now_jst_text()),
        )
        return record_id

    def opt_out(self, subscription_id: str) -> None:
        """The resident opts out of a city-app subscription: opted_out_at and updated_at now."""
        stamp = now_jst_text()
        n = self._raw_write("subscriptions", "UPDATE subscriptions SET opted_out_at = ?, updated_at = ? "
                            "WHERE subscription_id = ?", (stamp, stamp, subscription_id))
        if n != 1:
            raise ValueError(f"subscription {subscription_id}: {n} raw rows updated, expected 1")

    def delete_record(self, source: str, key: str) -> None:
        """The department deletes a record (its raw row) by its natural key: ``resident_code``
        for the sources keyed by pseudonym, else the source's key. An incremental export cannot
        see a deletion: the adapter writes its tombstone on reconcile
        (``export_and_publish(source, mode="reconcile")``)."""
        from renkei.config import load_sources

        src = load_sources()[source]
        column = "resident_code" if src.key == "dept_pseudonym" else src.key
        n = self._raw_write(source, f'DELETE FROM "{source}" WHERE "{column}" = ?', (key,))
        if n != 1:
            raise ValueError(f"{source} {column}={key}: {n} raw rows deleted, expected 1")

    def export_and_publish(self, source: str = "registry", times: int = 1, mode: str = "incremental"):
        """Run the export adapter for ``source`` and, when it wrote changes, publish its change
        event ``times`` times; returns the adapter's ExtractResult."""
        from renkei.config import load_sources
        from renkei.events import ChangeEvent, publish
        from renkei.events.channel import load_channel
        from renkei.keys.adapter import pseudonymize, raw_location

        src = load_sources()[source]
        res = pseudonymize(src, raw_location(self.raw, source), self.extracts, self.ring, mode=mode)
        if res.last_seq is None:
            return res
        event = ChangeEvent(source=source, change_seq=res.last_seq, row_count=res.written)
        for _ in range(times):
            self.published.append((source, publish(event, load_channel(self.cfg_dir))))
        return res

    def announce(self, source: str) -> int | None:
        """Publish a change event for the extract as it stands (as `renkei emit` does): wakes the
        source's ingest, which reads everything after its watermark; returns the change_seq
        announced (None: the extract holds no change yet)."""
        from renkei.config import load_sources
        from renkei.events import ChangeEvent, publish
        from renkei.events.channel import load_channel
        from renkei.warehouse import engine, extract_table

        table = extract_table(load_sources()[source], sa.MetaData())
        eng = engine(self.extracts)
        try:
            with eng.connect() as conn:
                last = conn.execute(sa.select(sa.func.max(table.c.change_seq))).scalar()
        finally:
            eng.dispose()
        if last is None:
            return None
        publish(ChangeEvent(source=source, change_seq=int(last), row_count=0), load_channel(self.cfg_dir))
        return int(last)

    # -- observations -------------------------------------------------------------------
    def _warehouse(self) -> sa.Engine:
        if self._eng is None:
            self._eng = sa.create_engine(self.warehouse, pool_size=1, max_overflow=1)
        return self._eng

    def erk(self, code: str) -> str:
        return self.ring.seal("link", code)

    def notices_for(self, code: str) -> set[str]:
        with self._warehouse().connect() as conn:
            return set(conn.execute(sa.text("SELECT notice_id FROM notices WHERE erk = :e"), {"e": self.erk(code)}).scalars())

    def notice_rows(self, code: str) -> list[dict]:
        """Every outbox notice of resident ``code`` (duplicates kept), by service, subject, dose."""
        cols = ("notice_id", "service", "rule_id", "rule_version", "subject", "dose_number", "kind",
                "window_start", "window_end", "evaluated_on", "created_run_id")
        with self._warehouse().connect() as conn:
            rows = conn.execute(sa.text(f"SELECT {', '.join(cols)} FROM notices WHERE erk = :e "
                                        "ORDER BY service, subject, dose_number, kind"), {"e": self.erk(code)})
            return [dict(r._mapping) for r in rows]

    def notice_keys(self, code: str) -> list[tuple]:
        """What identifies each notice of resident ``code``, as (service, rule_id, rule_version,
        subject, dose_number, kind, window_start, window_end) with ISO dates — a list, so that a
        duplicate shows."""
        return sorted((r["service"], r["rule_id"], r["rule_version"], r["subject"], r["dose_number"], r["kind"],
                       str(r["window_start"]), str(r["window_end"])) for r in self.notice_rows(code))

    def notice_states(self, notice_ids: set[str] | list[str]) -> list[dict]:
        """The lifecycle rows (``notice_events``) of these notices, oldest first ([] while the
        warehouse has no such table)."""
        if not notice_ids:
            return []
        with self._warehouse().connect() as conn:
            if not sa.inspect(conn).has_table("notice_events"):
                return []
            t = sa.Table("notice_events", sa.MetaData(), autoload_with=conn)
            rows = conn.execute(sa.select(t).where(t.c.notice_id.in_(sorted(notice_ids))).order_by(t.c.seq))
            return [dict(r._mapping) for r in rows]

    def has_lifecycle(self) -> bool:
        """The warehouse keeps the notice lifecycle (table ``notice_events``)."""
        with self._warehouse().connect() as conn:
            return sa.inspect(conn).has_table("notice_events")

    def notice_stream_key(self) -> str:
        from renkei.outputs.stream import load_notice_stream

        return load_notice_stream(self.cfg_dir).stream

    def stream_notice_ids(self) -> list[str]:
        """The id of every notice message on the notices stream, in order; state messages
        (``"type": "notice_state"``) are left out (reads the whole stream: small stacks;
        :meth:`stream_watch` follows a large one)."""
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        docs = [json.loads(f[b"data"]) for _, f in r.xrange(self.notice_stream_key())]
        r.close()
        return [d["notice_id"] for d in docs if d.get("type") != "notice_state"]

    def change_stream_key(self, source: str) -> str:
        from renkei.events.channel import load_channel

        return load_channel(self.cfg_dir).key(source)

    def change_stream(self, source: str) -> dict:
        """The change stream of ``source`` as Redis holds it: ``entries`` [(stream id, event dict)],
        ``length`` (XLEN) and, per consumer group, its ``last_delivered`` id and ``pending`` ids."""
        import redis

        key = self.change_stream_key(source)
        r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            entries = [(sid, json.loads(f["data"])) for sid, f in r.xrange(key)]
            groups = {}
            for g in (r.xinfo_groups(key) if r.exists(key) else []):
                pending = r.xpending_range(key, g["name"], min="-", max="+", count=100000)
                groups[g["name"]] = {"last_delivered": g["last-delivered-id"],
                                     "pending": [p["message_id"] for p in pending]}
            return {"entries": entries, "length": r.xlen(key), "groups": groups}
        finally:
            r.close()

    # -- the Airflow metadata database --------------------------------------------------
    def _airflow(self) -> sa.Engine:
        if self._airflow_eng is None:
            self._airflow_eng = sa.create_engine(self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], pool_size=1, max_overflow=1)
        return self._airflow_eng

    def change_asset_events(self, stream_ids: list[str]) -> dict[str, dict]:
        """Stream id → the asset event the triggerer made of that change event (``id``,
        ``consumed_by``: ids of the dag runs that consumed it), for those it has made."""
        with self._airflow().connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT e.id, e.extra::json -> 'payload' ->> 'message_id' AS mid, array_remove(array_agg(d.dag_run_id), NULL) "
                "FROM asset_event e LEFT JOIN dagrun_asset_event d ON d.event_id = e.id "
                "WHERE e.extra::json -> 'payload' ->> 'message_id' = ANY(:ids) GROUP BY e.id"), {"ids": list(stream_ids)})
            return {mid: {"id": eid, "consumed_by": list(runs)} for eid, mid, runs in rows}

    def unfinished_runs(self) -> list[tuple[str, str, str]]:
        """(dag_id, run_id, state) of every queued or running DAG run, and ("queued-by-asset",
        dag_id, "") for each DAG an asset event has queued that has no run yet
        (asset_dag_run_queue): empty when the system is at rest."""
        with self._airflow().connect() as conn:
            runs = conn.execute(sa.text("SELECT dag_id, run_id, state FROM dag_run WHERE state IN ('queued', 'running') "
                                        "ORDER BY dag_id, run_id")).all()
            queued = conn.execute(sa.text("SELECT DISTINCT target_dag_id FROM asset_dag_run_queue")).scalars().all()
        return [tuple(r) for r in runs] + [("queued-by-asset", d, "") for d in sorted(queued)]

    def failed_runs(self, dag_id: str) -> list[str]:
        """Run ids of the DAG's failed runs."""
        with self._airflow().connect() as conn:
            return list(conn.execute(sa.text("SELECT run_id FROM dag_run WHERE dag_id = :d AND state = 'failed' "
                                             "ORDER BY run_id"), {"d": dag_id}).scalars())

    def dag_run_state(self, dag_id: str, run_id: str) -> str | None:
        with self._airflow().connect() as conn:
            return conn.execute(sa.text("SELECT state FROM dag_run WHERE dag_id = :d AND run_id = :r"),
                                {"d": dag_id, "r": run_id}).scalar()

    def dag_runs(self, dag_id: str) -> list[tuple[str, str]]:
        """(run_id, state) of every run of ``dag_id``, oldest first."""
        with self._airflow().connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text("SELECT run_id, state FROM dag_run WHERE dag_id = :d "
                                                           "ORDER BY id"), {"d": dag_id})]

    def task_instances(self, dag_id: str, run_id: str | None = None) -> list[dict]:
        """The DAG's task instances (of run ``run_id``, else of every run): ``id``, ``run_id``,
        ``task_id``, ``state``, ``queue``, ``hostname``, ``try_number`` and ``external_executor_id``
        (the Celery task id, which the worker's log shows; None under the LocalExecutor)."""
        cols = "id, run_id, task_id, state, queue, hostname, try_number, external_executor_id"
        with self._airflow().connect() as conn:
            rows = conn.execute(sa.text(f"SELECT {cols} FROM task_instance WHERE dag_id = :d"
                                        + (" AND run_id = :r" if run_id is not None else "")
                                        + " ORDER BY run_id, task_id"), {"d": dag_id, "r": run_id})
            return [dict(r._mapping) for r in rows]

    def worker_task_ids(self, name: str) -> set[str]:
        """The Celery task ids worker ``name`` received (its log: ``Task execute_workload[<id>] received``)."""
        import re

        path = self.base / f"{name}.log"
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return set(re.findall(r"Task execute_workload\[([0-9a-f-]+)\] received", text))

    def trigger(self, dag_id: str) -> str:
        """Trigger a manual run of ``dag_id`` (`airflow dags trigger`); returns its run id."""
        run_id = f"manual__devstack_{uuid.uuid4().hex[:12]}"
        subprocess.run(["airflow", "dags", "trigger", dag_id, "--run-id", run_id], env=self.env, check=True,
                       capture_output=True)
        return run_id

    # -- delivery -----------------------------------------------------------------------
    @property
    def delivery_url(self) -> str:
        """The delivery database (receipts) the deliver_notices DAG writes."""
        from renkei.delivery.receipts import default_url

        return self.env.get("RENKEI_DELIVERY_URL") or default_url(Path(self.env["RENKEI_HOME"]))

    def receipts(self, notice_ids: set[str] | list[str]) -> list[dict]:
        """The delivery receipts of these notices, by notice and attempt ([] before the first run)."""
        from renkei.delivery import receipts

        eng = sa.create_engine(self.delivery_url)
        try:
            with eng.connect() as conn:
                if not sa.inspect(conn).has_table(receipts.delivery_receipts.name):
                    return []
                return receipts.receipts_of(conn, notice_ids)
        finally:
            eng.dispose()

    def stream_watch(self) -> "StreamWatch":
        """Follows the notices stream from its current end (only what is published from now on)."""
        return StreamWatch(self.notice_stream_key())

    def wait_for(self, what: str, check: Callable[[], bool], bound: float, poll: float = 2.0,
                 progress: Callable[[], str | None] | None = None, every: float = 30.0,
                 say: Callable[[str], None] = _quiet) -> float:
        """Seconds until ``check()`` holds; raises TimeoutError after ``bound`` or if a component
        died. ``progress()``, when given, is reported through ``say`` every ``every`` seconds."""
        started = last = time.monotonic()
        while time.monotonic() - started < bound:
            if check():
                return time.monotonic() - started
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"components died: {dead}; see {self.base}/*.log")
            if progress is not None and time.monotonic() - last >= every:
                last = time.monotonic()
                line = progress()
                if line:
                    say(f"  {what}, {last - started:.0f}s: {line}")
            time.sleep(poll)
        raise TimeoutError(f"{what} did not happen within {bound}s; logs in {self.base}")


class StreamWatch:
    """Reads the notices stream incrementally: each :meth:`poll` returns the messages added
    since the previous one as (stream id, arrival in Unix seconds by the Redis server's clock —
    the id's millisecond part —, the decoded message)."""

    def __init__(self, key: str) -> None:
        import redis

        self.key = key
        self.r = redis.Redis.from_url(REDIS_URL)
        last = self.r.xrevrange(key, count=1)
        self.last = last[0][0].decode() if last else "0-0"

    def poll(self, count: int = 10000) -> list[tuple[str, float, dict]]:
        out = []
        while True:
            got = self.r.xread({self.key: self.last}, count=count)
            if not got:
                return out
            for sid, fields in got[0][1]:
                self.last = sid.decode()
                out.append((self.last, int(self.last.split("-")[0]) / 1000, json.loads(fields[b"data"])))

    def close(self) -> None:
        self.r.close()
