"""`renkei run`: pseudonymize a raw drop folder and run the whole DAG chain for one date.

Layout of a work dir (all created here):

    <work>/extracts.db        the departments' pseudonymized extracts (export adapter output)
    <work>/warehouse.db       the warehouse, unless --warehouse names another URL
    <work>/airflow/           AIRFLOW_HOME: SQLite metadata DB, task logs
    <work>/logs/airflow.log   everything Airflow printed
    <work>/run_report.json    the report (counts only, no personal data)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from renkei.config import ingest_sources
from renkei.errors import RenkeiError, SourceError
from renkei.keys.adapter import pseudonymize, raw_location
from renkei.keys.ring import ENV_PATH, KeyRing
from renkei.settings import REPO_ROOT, redact_url
from renkei.warehouse import engine, ensure_schema, ingest_runs, link_flags, linkage, mart_residents, notices

CHAIN_TAIL = ("link_residents", "proactive_services")


def airflow_env(work: Path, warehouse_url: str, extracts_url: str, keyring: Path) -> dict[str, str]:
    """Environment for an embedded Airflow whose home is ``<work>/airflow``."""
    home = work / "airflow"
    (home / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # A cron DAG sets no start_date (renkei.schedules), so its timezone is the default's.
        "AIRFLOW__CORE__DEFAULT_TIMEZONE": "Asia/Tokyo",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__API__EXPOSE_CONFIG": "False",
        "RENKEI_WAREHOUSE_URL": warehouse_url,
        "RENKEI_EXTRACTS_URL": extracts_url,
        "RENKEI_HOME": str(work),
        ENV_PATH: str(keyring),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "plugins"), os.environ.get("PYTHONPATH")])),
    })
    # Task logs: Airflow adds renkei.logsetup's masking processor to every task process and
    # to the supervisor that writes the log file.
    from renkei.logsetup import AIRFLOW_ENV  # noqa: PLC0415

    env.update(AIRFLOW_ENV)
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
    if "RENKEI_AIRFLOW_DB_URL" in os.environ:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = os.environ["RENKEI_AIRFLOW_DB_URL"]
    return env


def _data_docs(env: dict[str, str]) -> str | None:
    """Where the ingest runs built their GX Data Docs: the local site's index, or the store URL."""
    from renkei.quality.datadocs import local_site, location  # noqa: PLC0415

    where = location(env)
    site = local_site(where)
    return str(site / "index.html") if site is not None else where


def _airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def run_chain(
    raw_dir: Path,
    as_of: date,
    work: Path,
    warehouse_url: str | None = None,
    keyring_path: Path | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    """Pseudonymize, then run ingest → link → services as Airflow DAG runs; return the report."""
    t0 = time.perf_counter()
    work = work.resolve()
    raw_dir = raw_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    warehouse_url = warehouse_url or f"sqlite:///{work / 'warehouse.db'}"
    extracts_url = f"sqlite:///{work / 'extracts.db'}"
    keyring = Path(keyring_path or os.environ.get(ENV_PATH) or work / "keyring.json").resolve()
    # Never a silent new keyring: one made here would seal a warehouse no other key holder can
    # read. KeyRing.load names the path and the command that creates one.
    ring = KeyRing.load(keyring)

    stages: dict[str, float] = {}
    sources = ingest_sources()
    raw_paths: dict[str, str] = {}
    t = time.perf_counter()
    for src in sources:
        loc = raw_location(raw_dir, src.name)
        if loc is None:
            raise SourceError(f"{src.name}: neither {src.name}.csv nor {src.name}.db in {raw_dir}: add the file or remove the source from config/sources.yaml")
        res = pseudonymize(src, loc, extracts_url, ring)
        raw_paths[src.name] = str(Path(loc.replace("sqlite:///", "")))
        say(f"extract  {src.name:<14} {res.read:>8,} rows pseudonymized ({res.with_parse_errors} with unparseable values) in {res.seconds:.1f}s")
    stages["pseudonymize"] = round(time.perf_counter() - t, 2)

    wh = engine(warehouse_url)
    ensure_schema(wh)
    wh.dispose()

    env = airflow_env(work, warehouse_url, extracts_url, keyring)
    log_path = work / "logs" / "airflow.log"
    t = time.perf_counter()
    with open(log_path, "ab") as log:
        proc = subprocess.run([_airflow_bin(), "db", "migrate"], env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RenkeiError(f"`airflow db migrate` failed (exit {proc.returncode}): see {log_path}")
    stages["airflow_db_migrate"] = round(time.perf_counter() - t, 2)
    say(f"airflow  metadata DB ready ({stages['airflow_db_migrate']:.1f}s); log: {log_path}")

    dag_ids = [f"ingest_{s.name}" for s in sources] + list(CHAIN_TAIL)
    runs = run_dags(env, as_of, dag_ids, log_path, say)
    stages["dag_runs"] = round(sum(r.get("seconds", 0) for r in runs), 2)
    failed = [r for r in runs if r.get("state") != "success" and r.get("event") == "end"]
    if failed or len(runs) != len(dag_ids):
        raise RenkeiError(f"DAG run failed: {failed or 'the chain stopped early'}; see {log_path} and {work / 'airflow' / 'logs'}")

    report = build_report(warehouse_url, as_of, runs, raw_paths, ring=ring)
    report["warehouse_url"] = redact_url(warehouse_url)
    report["extracts_url"] = redact_url(extracts_url)
    report["airflow_home"] = str(work / "airflow")
    report["data_docs"] = _data_docs(env)
    say(f"docs     GX Data Docs (one page per ingest run and source): {report['data_docs'] or 'off'}")
    report["stages_s"] = stages
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    (work / "run_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return report


def run_dags(env: dict, as_of: date, dag_ids: list[str], log_path: Path, say, at: str = "06:00") -> list[dict]:
    """Run ``dag_ids`` in order as real Airflow DAG runs for ``as_of`` at logical time ``at``
    (Asia/Tokyo); returns one dict per run {"dag_id", "run_id", "state", "seconds", "event"}."""
    from renkei.airflow_chain import PROGRESS_PREFIX  # noqa: PLC0415

    cmd = [sys.executable, "-m", "renkei.airflow_chain", "--as-of", as_of.isoformat(), "--dags", ",".join(dag_ids),
           "--at", at]
    runs: list[dict] = []
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PROGRESS_PREFIX):
                msg = json.loads(line[len(PROGRESS_PREFIX):])
                if msg.get("event") == "end":
                    runs.append(msg)
                    say(f"dag run  {msg['dag_id']:<22} {msg['state']:<8} {msg['seconds']:>6.1f}s")
                elif msg.get("event") != "start":
                    runs.append(msg)
                    say(f"airflow  {msg}")
            else:
                log.write(line)
        proc.wait()
    return runs


def build_report(warehouse_url: str, as_of: date, runs: list[dict], raw_paths: dict[str, str],
                 ring: KeyRing | None = None) -> dict:
    """Counts per source for this chain's runs, the mart, the notices per service and kind, and
    the integrity audit (scored against the seeded mislinks when the raw folder holds a synthetic
    city's manifest.json and ``ring`` is given)."""
    from renkei.linkage import audit  # noqa: PLC0415

    raw_dir = Path(next(iter(raw_paths.values()))).parent if raw_paths else None
    seeded = audit.seeded_mislinks(raw_dir, ring) if raw_dir is not None else None
    eng = engine(warehouse_url)
    run_ids = {f"{r['dag_id']}/{r['run_id']}": r["dag_id"] for r in runs if r.get("event") == "end"}
    with eng.connect() as conn:
        per_source = {}
        for row in conn.execute(sa.select(ingest_runs).where(ingest_runs.c.run_id.in_(list(run_ids)))).mappings():
            per_source[row["source"]] = {
                "read": row["read"], "loaded": row["loaded"], "quarantined": row["quarantined"],
                "deleted": row["deleted"], "watermark": row["watermark_to"],
            }
        residents = conn.execute(sa.select(sa.func.count()).select_from(mart_residents)).scalar_one()
        linked = conn.execute(
            sa.select(sa.func.count()).select_from(mart_residents).where(mart_residents.c.departments > 1)
        ).scalar_one()
        by_sk = conn.execute(
            sa.select(notices.c.service, notices.c.kind, sa.func.count()).group_by(notices.c.service, notices.c.kind)
        ).all()
        flags = dict(conn.execute(sa.select(link_flags.c.reason, sa.func.count()).group_by(link_flags.c.reason)).all())
        contributing = dict(conn.execute(sa.select(linkage.c.source, sa.func.count()).group_by(linkage.c.source)).all())
        integrity = audit.summary(conn, seeded)
    eng.dispose()
    notices_by: dict[str, dict[str, int]] = {}
    for service, kind, n in by_sk:
        notices_by.setdefault(service, {})[kind] = n
    return {
        "as_of": as_of.isoformat(),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": dict(sorted(per_source.items())),
        "linked": {"residents": residents, "linked_residents": linked, "erks_by_source": contributing, "link_flags": flags},
        "integrity_audit": integrity,
        "notices": notices_by,
        "dag_runs": [{k: r.get(k) for k in ("dag_id", "run_id", "state", "seconds")} for r in runs],
        "raw_sources": raw_paths,
        "raw_dir": str(raw_dir) if raw_dir is not None else None,
    }
