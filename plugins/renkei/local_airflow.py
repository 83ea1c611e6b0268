"""`make up`: Airflow on embedded defaults with the Renkei DAGs unpaused, until Ctrl-C.

Runs `airflow standalone` (api-server, scheduler, dag-processor, triggerer; LocalExecutor) with
AIRFLOW_HOME under the work dir, SQLite metadata unless RENKEI_AIRFLOW_DB_URL names another
database, the demo's warehouse, extracts and keyring, and the change channel: the Redis stream
when Redis answers, else the warehouse change-log table (no server needed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from renkei.runner import airflow_env

PORT = int(os.environ.get("RENKEI_UI_PORT", "8080"))


def _redis_up(url: str) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1):
            return True
    except OSError:
        return False


def up_env(work: Path) -> dict[str, str]:
    env = airflow_env(
        work,
        os.environ.get("RENKEI_WAREHOUSE_URL", f"sqlite:///{work / 'warehouse.db'}"),
        os.environ.get("RENKEI_EXTRACTS_URL", f"sqlite:///{work / 'extracts.db'}"),
        Path(os.environ.get("RENKEI_KEYRING", work / "keyring.json")).resolve(),
    )
    redis_url = os.environ.get("RENKEI_REDIS_URL", "redis://127.0.0.1:6379/0")
    if "RENKEI_CHANNEL_KIND" not in os.environ:
        env["RENKEI_CHANNEL_KIND"] = "redis_stream" if _redis_up(redis_url) else "changelog_table"
    env.update({
        "RENKEI_RAW_DIR": str(work / "raw"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",  # 2 cores: LocalExecutor would start 32 workers
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__API__PORT": str(PORT),
        # the task supervisors reach the Execution API on the port the api-server really uses
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{PORT}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,reviewer:user,viewer:viewer",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    })
    return env


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (standalone's components start sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_tree(pid: int, timeout: float = 30) -> None:
    """SIGTERM a process and all its descendants; SIGKILL what is left after ``timeout``."""
    procs = [pid, *descendants(pid)]
    for p in procs:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in procs):
        time.sleep(0.5)
    for p in procs:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _password(home: Path) -> str | None:
    path = home / "simple_auth_manager_passwords.json.generated"
    try:
        return json.loads(path.read_text()).get("admin")
    except (OSError, ValueError):
        return None


def down(work: Path) -> int:
    pidfile = work / "airflow.pid"
    if not pidfile.exists():
        print("renkei down: no Airflow started by `make up`")
        return 0
    stop_tree(int(pidfile.read_text()))
    pidfile.unlink(missing_ok=True)
    print("renkei down: Airflow stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m renkei.local_airflow")
    ap.add_argument("--work", default="var/demo")
    ap.add_argument("--down", action="store_true", help="stop the Airflow that `make up` started")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    if args.down:
        return down(work)
    env = up_env(work)
    home = Path(env["AIRFLOW_HOME"])
    (home / "logs").mkdir(parents=True, exist_ok=True)
    print(f"renkei up: AIRFLOW_HOME={home}  channel={env['RENKEI_CHANNEL_KIND']}  warehouse={env['RENKEI_WAREHOUSE_URL']}")
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    log = open(work / "logs" / "airflow-standalone.log", "ab")  # noqa: SIM115 - lives as long as the child
    proc = subprocess.Popen(["airflow", "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    (work / "airflow.pid").write_text(str(proc.pid))

    def stop(*_):
        print("\nrenkei up: stopping Airflow …")
        stop_tree(proc.pid)
        proc.wait()
        (work / "airflow.pid").unlink(missing_ok=True)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", PORT), timeout=1):
                break
        except OSError:
            time.sleep(1)
    if proc.poll() is not None:
        print(f"renkei up: Airflow exited ({proc.returncode}); see {work / 'logs' / 'airflow-standalone.log'}")
        return 1
    print(f"renkei up: Airflow UI at http://127.0.0.1:{PORT}  login admin / {_password(home) or '(see simple_auth_manager_passwords.json.generated)'}")
    print("renkei up: Renkei DAGs are unpaused; Ctrl-C or `make down` stops everything.")
    proc.wait()
    return proc.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
