"""A whole Renkei system on one machine, for end-to-end tests and the latency benchmark.

`DevStack.launch()` prepares a synthetic city (raw tables, keyring, first extracts), a config
copy whose Redis keys carry a unique tag, the Airflow metadata and warehouse databases it is
given, and starts the scheduler, dag-processor, triggerer and api-server as separate processes
(LocalExecutor). Its methods act as a department would (register a birth, run the export
adapter, publish the change event) and observe the outputs (outbox, notices stream).
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
REDIS_URL = "redis://127.0.0.1:6379/0"


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


class DevStack:
    """The running system and the department-side actions on it."""

    def __init__(self, base: Path, env: dict, cfg_dir: Path, raw: Path, ring, warehouse: str, extracts: str, tag: str):
        self.base, self.env, self.cfg_dir, self.raw, self.ring = base, env, cfg_dir, raw, ring
        self.warehouse, self.extracts, self.tag = warehouse, extracts, tag
        self.procs: dict[str, subprocess.Popen] = {}
        self._births = 0

    @classmethod
    def launch(cls, base: Path, warehouse: str, airflow_db: str, residents: int = 300, seed: int = 5,
               sweep_cron: str = "0 3 * * *") -> "DevStack":
        """Prepare everything under ``base`` and start the four Airflow components.

        The sweep runs daily at 03:00 by default here, so that what reaches the outbox was
        carried by change events, not picked up by a sweep.
        """
        import yaml

        from renkei.config import ingest_sources
        from renkei.keys.adapter import pseudonymize, raw_location
        from renkei.keys.ring import KeyRing
        from renkei.runner import airflow_env
        from renkei.synth import generate
        from renkei.warehouse import engine, ensure_schema

        tag = uuid.uuid4().hex[:8]
        cfg_dir = base / "config"
        shutil.copytree(REPO_ROOT / "config", cfg_dir)
        channels = yaml.safe_load((cfg_dir / "channels.yaml").read_text(encoding="utf-8"))
        channels["redis_stream"]["stream_prefix"] = f"renkei-dev-{tag}:changes:"
        channels.setdefault("notices", {})["stream"] = f"renkei-dev-{tag}:notices"
        (cfg_dir / "channels.yaml").write_text(yaml.safe_dump(channels, allow_unicode=True), encoding="utf-8")
        sources = yaml.safe_load((cfg_dir / "sources.yaml").read_text(encoding="utf-8"))
        sources["defaults"]["sweep_cron"] = sweep_cron
        (cfg_dir / "sources.yaml").write_text(yaml.safe_dump(sources, allow_unicode=True), encoding="utf-8")
        raw = base / "raw"
        generate(residents, seed, tokyo_today(), raw, defect_rate=0.0)
        ring_path = KeyRing.generate().save(base / "keyring.json")
        ring = KeyRing.load(ring_path)
        eng = engine(warehouse)
        ensure_schema(eng)
        eng.dispose()
        extracts = f"sqlite:///{base / 'extracts.db'}"
        env = airflow_env(base / "work", warehouse, extracts, ring_path)
        port = free_port()
        env.update({
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            **components_env(port),
            "RENKEI_CONFIG_DIR": str(cfg_dir),
            "RENKEI_CHANNEL_KIND": "redis_stream",
            "RENKEI_RAW_DIR": str(raw),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        })
        subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        for src in ingest_sources():  # the departments' first extracts
            pseudonymize(src, raw_location(raw, src.name), extracts, ring)
        stack = cls(base, env, cfg_dir, raw, ring, warehouse, extracts, tag)
        for name in COMPONENTS:
            stack.start(name)
        return stack

    # -- processes ----------------------------------------------------------------------
    def start(self, name: str) -> None:
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        args = ["airflow", name] + (["--port", self.env["AIRFLOW__API__PORT"]] if name == "api-server" else [])
        self.procs[name] = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, name: str) -> None:
        from renkei.local_airflow import stop_tree

        proc = self.procs.pop(name, None)
        if proc is not None:
            stop_tree(proc.pid, timeout=20)
            proc.wait()

    def shutdown(self) -> None:
        """Stop every component and delete this stack's Redis keys."""
        import redis

        for name in list(self.procs):
            self.stop(name)
        r = redis.Redis.from_url(REDIS_URL)
        for key in r.scan_iter(f"renkei-dev-{self.tag}:*"):
            r.delete(key)
        r.close()

    # -- department side ----------------------------------------------------------------
    def add_birth(self) -> str:
        """A child born 70 days ago is registered; returns the new (synthetic) resident code."""
        self._births += 1
        code = f"9{uuid.uuid4().int % 10**10:010d}"
        born = tokyo_today() - timedelta(days=70)
        stamp = now_jst_text()
        con = sqlite3.connect(self.raw / "registry.db")
        con.execute(
            "INSERT INTO registry (resident_code, name_kana, name_kanji, birth_date, sex, ward_code, address, "
            "household_code, status, status_date, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (code, "シンセイ ジ", "新生 児", born.isoformat(), 1, "401064", "北九州市小倉北区城内1番1号",
             f"HDEV{self.tag}{self._births}", "resident", born.isoformat(), stamp),
        )
        con.commit()
        con.close()
        return code

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
            publish(event, load_channel(self.cfg_dir))
        return res

    # -- observations -------------------------------------------------------------------
    def notices_for(self, code: str) -> set[str]:
        erk = self.ring.seal("link", code)
        eng = sa.create_engine(self.warehouse)
        with eng.connect() as conn:
            ids = set(conn.execute(sa.text("SELECT notice_id FROM notices WHERE erk = :e"), {"e": erk}).scalars())
        eng.dispose()
        return ids

    def stream_notice_ids(self) -> list[str]:
        import redis

        from renkei.outputs.stream import load_notice_stream

        r = redis.Redis.from_url(REDIS_URL)
        key = load_notice_stream(self.cfg_dir).stream
        out = [json.loads(f[b"data"])["notice_id"] for _, f in r.xrange(key)]
        r.close()
        return out

    def wait_for(self, what: str, check: Callable[[], bool], bound: float, poll: float = 2.0) -> float:
        """Seconds until ``check()`` holds; raises TimeoutError after ``bound`` or if a component died."""
        started = time.monotonic()
        while time.monotonic() - started < bound:
            if check():
                return time.monotonic() - started
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"components died: {dead}; see {self.base}/*.log")
            time.sleep(poll)
        raise TimeoutError(f"{what} did not happen within {bound}s; logs in {self.base}")
