"""Test helper: a department changes its own data, and the change travels the real path.

The department's export adapter (``renkei.keys.adapter.pseudonymize``, what ``renkei
pseudonymize`` runs) appends the change to the extract, then real Airflow DAG runs ingest it
(``ingest_<source>``: extract → validate → load) and link (``link_residents``), optionally
serving (``proactive_services``). Nothing here writes a warehouse table itself.
"""

from __future__ import annotations

import csv
import sqlite3
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

JST = timezone(timedelta(hours=9))


def jst_stamp(minutes_ago: int) -> str:
    """A department change stamp (``updated_at``) ``minutes_ago`` before now, JST wall clock."""
    return (datetime.now(JST) - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%S+09:00")


def raw_sqlite_rows(raw: Path, source: str) -> list[dict]:
    """A raw SQLite source's rows in table order (the synthetic manifest's row numbers)."""
    con = sqlite3.connect(raw / f"{source}.db")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f'SELECT * FROM "{source}" ORDER BY rowid')]
    finally:
        con.close()


def update_raw_sqlite(raw: Path, source: str, where: dict, **changes) -> None:
    """The department edits exactly one row of its own (SQLite) table."""
    sets = ", ".join(f'"{c}" = ?' for c in changes)
    cond = " AND ".join(f'"{c}" = ?' for c in where)
    with sqlite3.connect(raw / f"{source}.db") as con:
        n = con.execute(f'UPDATE "{source}" SET {sets} WHERE {cond}', [*changes.values(), *where.values()]).rowcount
    assert n == 1, f"{source}: {n} rows match {list(where)}"


def write_csv(raw: Path, source: str, rows: list[dict]) -> None:
    """A department's CSV drop (the whole file, as the source contract has it)."""
    from renkei.config import load_sources

    cols = load_sources()[source].raw_columns
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / f"{source}.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows([{c: r.get(c) for c in cols} for r in rows])


def export_and_run(raw: Path, work: Path, warehouse_url: str, keyring: Path, as_of: date, sources: list[str],
                   at: str, serve: bool = False) -> tuple[dict, dict]:
    """Export ``sources`` incrementally into ``<work>/extracts.db`` (as run_chain's first export
    did), then run ``ingest_<source>`` for each, ``link_residents`` and (``serve``)
    ``proactive_services`` as Airflow DAG runs at ``at`` (JST) on ``as_of``.

    Returns ({source: ExtractResult}, {dag_id: run}); asserts every run succeeded.
    """
    from renkei.config import load_sources
    from renkei.keys.adapter import pseudonymize, raw_location
    from renkei.keys.ring import KeyRing
    from renkei.runner import airflow_env, run_dags

    work = work.resolve()
    extracts = f"sqlite:///{work / 'extracts.db'}"
    ring = KeyRing.load(keyring)
    exported = {s: pseudonymize(load_sources()[s], raw_location(raw, s), extracts, ring) for s in sources}
    dags = [f"ingest_{s}" for s in sources] + ["link_residents"] + (["proactive_services"] if serve else [])
    env = airflow_env(work, warehouse_url, extracts, keyring.resolve())
    log = work / "logs" / "airflow.log"
    runs = run_dags(env, as_of, dags, log, lambda m: None, at=at)
    ended = {r["dag_id"]: r for r in runs if r.get("event") == "end"}
    assert len(ended) == len(dags) and all(r["state"] == "success" for r in ended.values()), \
        f"DAG runs failed: {runs}; see {log}"
    return exported, ended


def ingest_run(warehouse_url: str, run: dict) -> dict:
    """The ``ingest_runs`` row an ingest DAG run left (its counts)."""
    from renkei.warehouse import engine, ingest_runs

    eng = engine(warehouse_url)
    with eng.connect() as conn:
        row = conn.execute(sa.select(ingest_runs).where(
            ingest_runs.c.run_id == f"{run['dag_id']}/{run['run_id']}")).mappings().one()
    eng.dispose()
    return dict(row)
