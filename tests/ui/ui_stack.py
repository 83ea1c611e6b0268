"""A `make up` Airflow on a small synthetic city for the UI tests (tests/ui/test_ui.py).

The work dir is built like the Makefile's demo (keys, synth, run), with three department
records changed first so that the integrity audit has four review items (one seeded mislink,
a name, a sex and a birth date that differ from the registry's). Airflow runs as
`python -m renkei.local_airflow` on a free port with SimpleAuthManager users admin, reviewer
(role user) and viewer (role viewer), a JWT secret known to the tests so that they can
mint expired and forged tokens, and the health-facts permission given to ``reviewer`` only
(``AIRFLOW__RENKEI__HEALTH_FACTS_USERS``). Decisions made on the pages are requests that the
stack's own scheduler applies (the apply_review_decisions Dag): :meth:`Server.wait_applied`.
The whole process tree is stopped at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AS_OF = "2025-06-01"
START_BOUND_S = 180
APPLY_BOUND_S = 300  # a decision request waits for the next apply_review_decisions run (every minute)
FACTS_USER = "reviewer"  # the one demo user with the health-facts permission
SEEDED_NAME = "テスト　ヘンコウ"  # a department's changed name reading: must never reach a page


@dataclass
class Server:
    url: str
    work: Path
    # repr=False: a failing test prints its fixtures, and these must never reach a CI log
    jwt_secret: str = field(repr=False)
    passwords: dict[str, str] = field(repr=False)
    plaintext: list[str] = field(default_factory=list, repr=False)  # raw names, codes, addresses

    @property
    def warehouse(self) -> Path:
        return self.work / "warehouse.db"

    def token(self, user: str) -> str:
        import httpx

        r = httpx.post(f"{self.url}/auth/token", json={"username": user, "password": self.passwords[user]}, timeout=30)
        r.raise_for_status()
        return r.json()["access_token"]

    def review_rows(self) -> list[dict]:
        with sqlite3.connect(self.warehouse) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM review_queue ORDER BY item_id")]

    def requests(self) -> list[dict]:
        """The decision requests the pages recorded (review_requests), oldest first."""
        with sqlite3.connect(self.warehouse) as conn:
            conn.row_factory = sqlite3.Row
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'review_requests'").fetchone():
                return []
            return [dict(r) for r in conn.execute("SELECT * FROM review_requests ORDER BY request_id")]

    def wait_applied(self, item_ids: list[str]) -> list[dict]:
        """Trigger apply_review_decisions (as admin) and wait until no request for ``item_ids`` is
        pending; returns those requests. The Dag's every-minute schedule applies them anyway."""
        import httpx

        try:
            httpx.post(f"{self.url}/api/v2/dags/apply_review_decisions/dagRuns", json={"logical_date": None},
                       headers={"Authorization": f"Bearer {self.token('admin')}"}, timeout=30)
        except httpx.HTTPError:
            pass  # the schedule still runs it
        deadline = time.monotonic() + APPLY_BOUND_S
        while True:
            mine = [r for r in self.requests() if r["item_id"] in item_ids]
            if mine and all(r["state"] != "pending" for r in mine):
                return mine
            if time.monotonic() > deadline:
                pytest.fail(f"decision requests were not applied within {APPLY_BOUND_S}s: "
                            f"{[(r['request_id'], r['state']) for r in mine]}; see the apply_review_decisions "
                            f"task logs under {self.work / 'airflow' / 'logs'}")
            time.sleep(3)

    def audit_entries(self, kind: str) -> list[dict]:
        with sqlite3.connect(self.warehouse) as conn:
            rows = conn.execute("SELECT seq, payload FROM audit_log WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
        return [{"seq": seq, **json.loads(payload)} for seq, payload in rows]

    def leaks(self, text: str) -> list[str]:
        """Which raw plaintext values occur in ``text`` (reported by position, never by value)."""
        return [f"raw value #{i}" for i, v in enumerate(self.plaintext) if v in text]


def need_tool(name: str, path: str) -> None:
    """Skip (or, with RENKEI_REQUIRE_SERVICES=1, fail) when a tool the test drives is absent."""
    from conftest import REQUIRE

    if Path(path).exists():
        return
    msg = f"{name} is not installed at {path}; install it: apt-get install -y chromium chromium-driver"
    if REQUIRE:
        pytest.fail(f"{msg} — RENKEI_REQUIRE_SERVICES=1 turns this skip into a failure")
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _renkei(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run([str(BIN / "renkei"), *args], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    if done.returncode != 0:  # renkei's messages name rows and rules, never values
        pytest.fail(f"`renkei {args[0]}` for the UI demo failed ({done.returncode}): {done.stderr.strip()[-600:]}")


def _seed_findings(raw: Path) -> None:
    """Three department-side changes the audit must flag, on three different residents."""
    with sqlite3.connect(raw / "immunization.db") as conn:
        rows = conn.execute("SELECT min(rowid), resident_code FROM immunization GROUP BY resident_code "
                            "ORDER BY resident_code LIMIT 3 OFFSET 10").fetchall()
        (name_row, _), (sex_row, _), (birth_row, _) = rows
        conn.execute("UPDATE immunization SET name_kana = ? WHERE rowid = ?", (SEEDED_NAME, name_row))
        conn.execute("UPDATE immunization SET sex = 3 - sex WHERE rowid = ?", (sex_row,))
        conn.execute("UPDATE immunization SET birth_date = date(birth_date, '-3 days') WHERE rowid = ?", (birth_row,))


def _plaintext_sample(raw: Path, n: int = 300) -> list[str]:
    with sqlite3.connect(raw / "registry.db") as conn:
        rows = conn.execute("SELECT resident_code, name_kana, name_kanji, address FROM registry LIMIT ?", (n,)).fetchall()
    return sorted({v for row in rows for v in row if isinstance(v, str) and len(v) >= 4} | {SEEDED_NAME})


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + START_BOUND_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`make up` exited with {proc.returncode} before the UI answered; see {log}")
        try:
            if httpx.get(f"{url}/api/v2/monitor/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"the Airflow UI did not answer within {START_BOUND_S}s; see {log}")


@contextmanager
def launch(work: Path) -> Iterator[Server]:
    """Build the demo work dir, start `make up`'s process on it, and stop its whole tree after."""
    from renkei.local_airflow import stop_tree

    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENKEI_", "AIRFLOW"))}
    env["RENKEI_KEYRING"] = str(work / "keyring.json")
    _renkei("keys", "init", "--path", str(work / "keyring.json"), env=env)
    _renkei("synth", "--residents", "300", "--seed", "7", "--as-of", AS_OF, "--out", str(work / "raw"), env=env)
    _seed_findings(work / "raw")
    _renkei("run", "--raw", str(work / "raw"), "--as-of", AS_OF, "--work", str(work), env=env)

    port = _free_port()
    jwt_secret = secrets.token_urlsafe(64)
    env.update({"RENKEI_UI_PORT": str(port), "RENKEI_CHANNEL_KIND": "changelog_table",
                "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret, "AIRFLOW__RENKEI__HEALTH_FACTS_USERS": FACTS_USER,
                # task processes reach the api-server here (the default assumes port 8080): the
                # apply_review_decisions Dag must run for decisions to be applied
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"})
    log = work / "logs" / "up.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "renkei.local_airflow", "--work", str(work)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, work / "logs" / "airflow-standalone.log")
        pw_file = work / "airflow" / "simple_auth_manager_passwords.json.generated"
        passwords = json.loads(pw_file.read_text())
        yield Server(url=url, work=work, jwt_secret=jwt_secret, passwords=passwords,
                     plaintext=_plaintext_sample(work / "raw"))
    finally:
        stop_tree(proc.pid)
        proc.wait(timeout=60)
