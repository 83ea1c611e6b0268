"""Change capture through the real path: department tables change (insert, update, delete), the
export adapter writes only the changes (incremental, reconcile), real Airflow DAG runs ingest,
link and serve, and the outbox ends with exactly the notices the final data calls for.

A hand-built city on D = 2025-06-01 (SQLite and PostgreSQL warehouses). Registry, immunization
and subscriptions are SQL department tables (incremental reads by updated_at, reconcile for
deletions); child health, NHI and events are CSV drops (each export diffs the whole file).

Step 0 (06:00): first exports and chain.
Step 1 (10:00): Q's JE dose 2 given yesterday is recorded today; a wrong ROTA5 dose 2 is recorded
  on J; A moves out; B's registry row is deleted; C2 is registered with updated_at 1900 (behind
  the adapter's position: only the reconcile sees it); X opts out although a subscription row
  stamped 9999-12-31 sits in the table; Z's city-app account (subscription) is deleted; V's
  health subscription S5 is updated and then deleted before ingest (one batch); a new event E2;
  check-up and NHI rows change. The immunization export is published twice.
Step 2 (12:00): the wrong dose record moves to J2 (a corrected mislink); B is registered again;
  event E1 is cancelled; CH1 and V's NHI row are deleted.
Step 3 (14:00): a reconcile of every source finds nothing and writes nothing.

Expected immunization notices come from the hand computation in test_notices_hand_computed.py
(same birth dates and histories) plus the ROTA5 arithmetic below; event notices from
SERVICES.md (D < start date ≤ D + 7; opted out on D → inactive on D).
"""

from __future__ import annotations

import csv
import sqlite3
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from renkei.config import ingest_sources, load_sources

pytestmark = pytest.mark.airflow
D = date(2025, 6, 1)
OLD = "2025-05-31T10:00:00+09:00"  # the first state's stamps


def code(name: str) -> str:
    return f"{sum(ord(c) * 1000 ** i for i, c in enumerate(name)):011d}"[-11:]


KIDS = {  # name: birth date
    "J": "2025-01-15", "J2": "2025-01-15", "Q": "2022-03-10", "A": "2025-04-01", "B": "2025-04-02",
    "C2": "2025-03-31",
}
ADULTS = ("V", "X", "Z", "W2")
SQL_SOURCES = ("registry", "immunization", "subscriptions")


def _person(name: str) -> dict:
    born = KIDS.get(name, "1980-05-05")
    return {"name_kana": "テスト コ", "birth_date": born, "sex": "1",
            "address": f"北九州市小倉北区城内{len(name) * 10 + ord(name[0])}番1号"}


def _registry_row(name: str, stamp: str, status: str = "resident") -> dict:
    p = _person(name)
    return {"resident_code": code(name), "name_kana": p["name_kana"], "name_kanji": "試験 子",
            "birth_date": p["birth_date"], "sex": p["sex"], "ward_code": "401064", "address": p["address"],
            "household_code": f"H{code(name)}", "status": status,
            "status_date": "2025-05-31" if status != "resident" else p["birth_date"], "updated_at": stamp}


def _dose(record_id: str, name: str, vaccine: str, dose: int, on: str, stamp: str) -> dict:
    p = _person(name)
    return {"record_id": record_id, "resident_code": code(name), **p, "vaccine_code": vaccine,
            "dose_number": dose, "administered_on": on, "updated_at": stamp}


def _sub(sid: str, name: str, topic: str, stamp: str, opted_out: str | None = None, ward: str | None = None) -> dict:
    return {"subscription_id": sid, "resident_code": code(name), "topic": topic, "ward_code": ward,
            "opted_in_at": "2025-01-01T09:00:00+09:00", "opted_out_at": opted_out, "updated_at": stamp}


def _event(eid: str, starts: str) -> dict:
    return {"event_id": eid, "title": "勝山公園 冬のイルミネーション", "topic": "events", "ward_code": "401064",
            "venue": "勝山公園", "starts_at": starts, "ends_at": starts, "updated_at": OLD}


class Department:
    """The departments' own systems: SQL tables (SQLite files) and CSV drop files."""

    def __init__(self, raw: Path) -> None:
        self.raw = raw
        raw.mkdir(parents=True, exist_ok=True)
        self.sources = load_sources()
        for name in SQL_SOURCES:
            cols = self.sources[name].raw_columns
            with sqlite3.connect(raw / f"{name}.db") as db:
                db.execute(f'CREATE TABLE "{name}" ({", ".join(cols)})')
                db.execute(f'CREATE INDEX ix_{name}_updated_at ON "{name}" (updated_at)')

    def insert(self, source: str, row: dict) -> None:
        cols = self.sources[source].raw_columns
        with sqlite3.connect(self.raw / f"{source}.db") as db:
            db.execute(f'INSERT INTO "{source}" VALUES ({", ".join("?" * len(cols))})', [row.get(c) for c in cols])

    def update(self, source: str, key: str, value: str, **changes) -> None:
        sets = ", ".join(f"{c} = ?" for c in changes)
        with sqlite3.connect(self.raw / f"{source}.db") as db:
            n = db.execute(f'UPDATE "{source}" SET {sets} WHERE {key} = ?', [*changes.values(), value]).rowcount
        assert n == 1, (source, key)

    def delete(self, source: str, key: str, value: str) -> None:
        with sqlite3.connect(self.raw / f"{source}.db") as db:
            assert db.execute(f'DELETE FROM "{source}" WHERE {key} = ?', [value]).rowcount == 1

    def drop_csv(self, source: str, rows: list[dict]) -> None:
        cols = self.sources[source].raw_columns
        with open(self.raw / f"{source}.csv", "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows([{c: r.get(c) for c in cols} for r in rows])


class City:
    def __init__(self, base: Path, warehouse_url: str) -> None:
        from renkei.keys.ring import KeyRing
        from renkei.runner import airflow_env

        self.base, self.warehouse = base, warehouse_url
        self.dept = Department(base / "raw")
        self.ring_path = KeyRing.generate().save(base / "keyring.json")
        self.ring = KeyRing.load(self.ring_path)
        self.extracts = f"sqlite:///{base / 'extracts.db'}"
        self.env = airflow_env(base / "work", warehouse_url, self.extracts, self.ring_path)
        self.log = base / "work" / "logs" / "airflow.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.who = {self.ring.seal("link", code(n)): n for n in (*KIDS, *ADULTS)}

    def export(self, source: str, mode: str = "incremental"):
        from renkei.keys.adapter import pseudonymize

        loc = (f"sqlite:///{self.dept.raw / f'{source}.db'}" if source in SQL_SOURCES
               else str(self.dept.raw / f"{source}.csv"))
        return pseudonymize(load_sources()[source], loc, self.extracts, self.ring, mode=mode)

    def chain(self, at: str, dags: list[str] | None = None) -> dict[str, dict]:
        import subprocess

        from renkei.runner import run_dags

        if not (self.base / "work" / "airflow" / "airflow.db").exists():
            subprocess.run([str(Path(__import__("sys").executable).with_name("airflow")), "db", "migrate"],
                           env=self.env, check=True, capture_output=True)
        dags = dags or [f"ingest_{s.name}" for s in ingest_sources()] + ["link_residents", "proactive_services"]
        runs = run_dags(self.env, D, dags, self.log, lambda m: None, at=at)
        ended = {r["dag_id"]: r for r in runs if r.get("event") == "end"}
        assert [r for r in ended.values() if r["state"] != "success"] == [] and len(ended) == len(dags), \
            f"DAG runs failed: {runs}; see {self.log}"
        return ended

    def sql(self, query: str, **params) -> list[tuple]:
        eng = sa.create_engine(self.warehouse)
        with eng.connect() as conn:
            rows = [tuple(r) for r in conn.execute(sa.text(query), params)]
        eng.dispose()
        return rows

    def notices(self) -> dict[tuple, str]:
        """(resident, service, subject, dose, kind) -> state (pending, or the latest lifecycle event's)."""
        latest = dict(self.sql(
            "SELECT e.notice_id, e.state FROM notice_events e WHERE e.seq = "
            "(SELECT max(seq) FROM notice_events l WHERE l.notice_id = e.notice_id)"))
        out = {}
        for nid, erk, service, subject, dose, kind in self.sql(
                "SELECT notice_id, erk, service, subject, dose_number, kind FROM notices"):
            state = latest.get(nid, "pending")
            out[(self.who[erk], service, subject, dose, kind)] = "pending" if state == "reinstated" else state
        return out

    def current(self, *services: str) -> set[tuple]:
        return {k for k, state in self.notices().items() if state == "pending" and k[1] in services}

    def deliver(self) -> list[tuple[str, str]]:
        """Deliver the outbox at D 10:00 JST to a real SMTP server; (recipient, event id) sent."""
        import dataclasses
        import email
        import socket
        from datetime import datetime
        from email import policy

        from aiosmtpd.controller import Controller

        from renkei.delivery.config import load_delivery_config
        from renkei.delivery.deliver import deliver
        from renkei.delivery.settings import DeliverySettings
        from renkei.runctx import TOKYO

        class Inbox:
            sent: list[tuple[str, str]] = []

            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook
                msg = email.message_from_bytes(envelope.content, policy=policy.default)
                for rcpt in envelope.rcpt_tos:
                    self.sent.append((rcpt, str(msg["X-Renkei-Notice"])))
                return "250 OK"

        inbox = Inbox()
        inbox.sent = []
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        ctl = Controller(inbox, hostname="127.0.0.1", port=port)
        ctl.start()
        try:
            cfg = load_delivery_config(env={"RENKEI_SMTP_HOST": "127.0.0.1", "RENKEI_SMTP_PORT": str(port)})
            cfg = dataclasses.replace(cfg, rate_per_second=1000.0)
            settings = DeliverySettings(self.warehouse, f"sqlite:///{self.base / 'delivery.db'}", self.dept.raw,
                                        self.ring_path)
            deliver(settings, datetime(2025, 6, 1, 10, 0, tzinfo=TOKYO), config=cfg, ring=self.ring)
        finally:
            ctl.stop()
        subjects = dict(self.sql("SELECT notice_id, subject FROM notices"))
        return sorted((rcpt, subjects[nid]) for rcpt, nid in inbox.sent)

    def receipts(self) -> dict[tuple[str, str, int], str]:
        """(resident, subject, dose) -> the latest receipt (status or status/reason)."""
        eng = sa.create_engine(f"sqlite:///{self.base / 'delivery.db'}")
        with eng.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT notice_id, status, reason FROM delivery_receipts r WHERE attempt = "
                "(SELECT max(attempt) FROM delivery_receipts l WHERE l.notice_id = r.notice_id)")).all()
        eng.dispose()
        about = {nid: (self.who[erk], subject, dose)
                 for nid, erk, subject, dose in self.sql("SELECT notice_id, erk, subject, dose_number FROM notices")}
        return {about[nid]: status if reason is None else f"{status}/{reason}" for nid, status, reason in rows}

    def states_of(self, name: str) -> set[str]:
        return {state for k, state in self.notices().items() if k[0] == name}


def _first_state(city: City) -> None:
    dept = city.dept
    for name in (*KIDS, *ADULTS):
        if name != "C2":  # registered in step 1
            dept.insert("registry", _registry_row(name, OLD))
    dept.insert("immunization", _dose("IMJ000", "J", "ROTA5", 1, "2025-03-15", OLD))
    dept.insert("immunization", _dose("IMJ2000", "J2", "ROTA5", 1, "2025-03-15", OLD))
    dept.insert("immunization", _dose("IMQ000", "Q", "JE", 1, "2025-05-20", OLD))
    for i, d in enumerate(["2022-05-10", "2022-06-10", "2022-07-10", "2023-02-10"], 1):  # Q as in the hand test
        dept.insert("immunization", _dose(f"IMQD{i}", "Q", "DPT_IPV", i, d, OLD))
        dept.insert("immunization", _dose(f"IMQH{i}", "Q", "HIB", i, d, OLD))
    for i, d in enumerate(["2022-05-10", "2022-06-10", "2022-07-10", "2023-03-10"], 1):
        dept.insert("immunization", _dose(f"IMQP{i}", "Q", "PCV", i, d, OLD))
    dept.insert("subscriptions", _sub("S2", "V", "events", OLD))
    dept.insert("subscriptions", _sub("S1", "X", "events", OLD))
    dept.insert("subscriptions", _sub("S3", "Z", "events", OLD))
    dept.insert("subscriptions", _sub("S5", "V", "health", OLD))
    # A sentinel some systems write: it must neither load nor hide later changes.
    dept.insert("subscriptions", _sub("S4", "W2", "events", "9999-12-31T00:00:00+09:00"))
    dept.drop_csv("events", [_event("E1", "2025-06-04T18:00:00+09:00")])
    dept.drop_csv("child_health", [{"record_id": "CH1", "resident_code": code("J"), **_person("J"),
                                    "checkup_code": "M4", "examined_on": "2025-05-20", "updated_at": OLD}])
    dept.drop_csv("nhi", [{"resident_code": code("V"), **_person("V"), "qualified_on": "2020-04-01",
                           "disqualified_on": None, "last_checkup_on": None, "updated_at": OLD}])
    # the registry's contact points, read only by delivery (never ingested)
    dept.drop_csv("registry_contact", [
        {"resident_code": code(n), "channel": "email", "address": f"{n.lower()}@example.com", "verified_at": OLD,
         "updated_at": OLD} for n in ("V", "X", "Z")])


# Immunization notices, hand-computed for D = 2025-06-01 (see test_notices_hand_computed.py):
# born 2025-01-15 → HEPB 1, DPT_IPV_HIB 1, PCV 1 due; ROTA5 dose 1 on 03-15 → dose 2 from 04-12
# (end b+224 = 08-27, 08-27 − 30 > D: due); with a dose 2 on 04-20 → dose 3 from 05-18, due.
# Q: JE dose 2 due (from 05-27); once given (05-31) dose 3 waits for max(anniv 6 m, reach 48 m).
# A (04-01), B (04-02), C2 (03-31): HEPB 1, ROTA 1, DPT_IPV_HIB 1, PCV 1 due.
def _infant(name: str, rota: str = "ROTA", rota_dose: int = 1) -> set[tuple]:
    return {(name, "immunization", "HEPB", 1, "due"), (name, "immunization", "DPT_IPV_HIB", 1, "due"),
            (name, "immunization", "PCV", 1, "due"), (name, "immunization", rota, rota_dose, "due")}


@pytest.fixture(params=["sqlite", "postgresql"])
def city(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_factory")()
    else:
        url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    return City(tmp_path, url)


def test_changes_reach_the_notices_exactly(city: City):
    dept = city.dept
    _first_state(city)
    first = {s.name: city.export(s.name) for s in ingest_sources()}
    assert {s: r.mode for s, r in first.items()} == dict.fromkeys(first, "full")
    city.chain("06:00")
    assert city.sql("SELECT reason FROM quarantine WHERE source = 'subscriptions'") == [
        ("updated_at_after_export:updated_at",)]
    assert city.current("immunization") == (
        _infant("J", "ROTA5", 2) | _infant("J2", "ROTA5", 2) | _infant("A") | _infant("B")
        | {("Q", "immunization", "JE", 2, "due")})
    assert city.current("event") == {(n, "event", "E1", 1, "event") for n in ("V", "X", "Z")}

    # -- step 1 -------------------------------------------------------------------------
    now = "2025-06-01T09:30:00+09:00"
    dept.insert("immunization", _dose("IMQ001", "Q", "JE", 2, "2025-05-31", now))  # given yesterday
    dept.insert("immunization", _dose("IMJ001", "J", "ROTA5", 2, "2025-04-20", now))  # the wrong child
    dept.update("registry", "resident_code", code("A"), status="moved_out", status_date="2025-05-31", updated_at=now)
    dept.update("subscriptions", "subscription_id", "S1", opted_out_at="2025-06-01T09:00:00+09:00", updated_at=now)
    dept.update("subscriptions", "subscription_id", "S5", ward_code="401064", updated_at=now)
    inc = {s: city.export(s) for s in SQL_SOURCES}
    assert (inc["registry"].upserts, inc["registry"].deletes) == (1, 0)
    assert (inc["immunization"].upserts, inc["subscriptions"].upserts) == (2, 2)
    dept.delete("registry", "resident_code", code("B"))
    dept.insert("registry", _registry_row("C2", "1900-01-01T00:00:00+09:00"))  # ancient stamp
    dept.delete("subscriptions", "subscription_id", "S3")
    dept.delete("subscriptions", "subscription_id", "S5")
    assert city.export("registry").written == 0, "the incremental read cannot see a deletion or an 1900 stamp"
    rec = {s: city.export(s, "reconcile") for s in ("registry", "subscriptions")}
    assert (rec["registry"].upserts, rec["registry"].deletes) == (1, 1)
    assert (rec["subscriptions"].upserts, rec["subscriptions"].deletes) == (0, 2)
    dept.drop_csv("events", [_event("E1", "2025-06-04T18:00:00+09:00"), _event("E2", "2025-06-05T18:00:00+09:00")])
    dept.drop_csv("child_health", [
        {"record_id": "CH1", "resident_code": code("J"), **_person("J"), "checkup_code": "M4",
         "examined_on": "2025-05-21", "updated_at": now},
        {"record_id": "CH2", "resident_code": code("J2"), **_person("J2"), "checkup_code": "M4",
         "examined_on": "2025-05-22", "updated_at": now}])
    dept.drop_csv("nhi", [{"resident_code": code("V"), **_person("V"), "qualified_on": "2020-04-01",
                           "disqualified_on": None, "last_checkup_on": "2025-05-30", "updated_at": now}])
    for s in ("events", "child_health", "nhi"):
        assert city.export(s).upserts == {"events": 1, "child_health": 2, "nhi": 1}[s]
    runs = city.chain("10:00")
    # the same export announced twice: the second run reads nothing
    again = city.chain("10:05", ["ingest_immunization"])
    assert city.sql("SELECT read FROM ingest_runs WHERE run_id = :r",
                    r=f"ingest_immunization/{again['ingest_immunization']['run_id']}") == [(0,)]
    assert runs["ingest_subscriptions"]["state"] == "success"

    assert city.current("immunization") == (
        _infant("J", "ROTA5", 3) | _infant("J2", "ROTA5", 2) | _infant("C2"))
    n = city.notices()
    assert n[("J", "immunization", "ROTA5", 2, "due")] == "superseded"
    assert n[("Q", "immunization", "JE", 2, "due")] == "withdrawn"
    assert city.states_of("A") == {"withdrawn"} and city.states_of("B") == {"withdrawn"}
    assert city.current("event") == {("V", "event", "E1", 1, "event"), ("V", "event", "E2", 1, "event")}
    assert n[("X", "event", "E1", 1, "event")] == "withdrawn" and n[("Z", "event", "E1", 1, "event")] == "withdrawn"
    assert ("W2", "event", "E1", 1, "event") not in n
    reasons = dict(city.sql("SELECT n.subject || '/' || CAST(n.dose_number AS TEXT), e.reason FROM notice_events e "
                            "JOIN notices n ON n.notice_id = e.notice_id WHERE n.erk = :q", q=city.ring.seal("link", code("Q"))))
    assert reasons == {"JE/2": "dose_recorded"}
    replaced = city.sql("SELECT replaces FROM notices WHERE erk = :j AND subject = 'ROTA5' AND dose_number = 3",
                        j=city.ring.seal("link", code("J")))
    old = city.sql("SELECT notice_id FROM notices WHERE erk = :j AND subject = 'ROTA5' AND dose_number = 2",
                   j=city.ring.seal("link", code("J")))
    assert replaced == old
    # S5 changed and was deleted within one batch; S3 deleted: both retired, kept for the trail
    assert city.sql("SELECT subscription_id FROM staging_subscriptions ORDER BY 1") == [("S1",), ("S2",)]
    assert sorted(city.sql("SELECT record_key FROM staging_deleted WHERE source = 'subscriptions'")) == [("S3",), ("S5",)]
    assert city.sql("SELECT count(*) FROM staging_deleted WHERE source = 'registry' AND erk = :b",
                    b=city.ring.seal("link", code("B"))) == [(1,)]

    # delivery (real SMTP) sends what is still current: V's two event notices; X's and Z's
    # withdrawn notices are suppressed
    assert city.deliver() == [("v@example.com", "E1"), ("v@example.com", "E2")]
    got = city.receipts()
    assert {k: v for k, v in got.items() if k[1] in ("E1", "E2")} == {
        ("V", "E1", 1): "sent", ("V", "E2", 1): "sent", ("X", "E1", 1): "suppressed/withdrawn",
        ("Z", "E1", 1): "suppressed/withdrawn"}
    closed = {(k[0], k[2], k[3]) for k, state in city.notices().items() if state != "pending"}
    assert closed and {k: got[k] for k in closed} == dict.fromkeys(closed, "suppressed/withdrawn")

    # -- step 2 -------------------------------------------------------------------------
    later = "2025-06-01T11:30:00+09:00"
    j2 = _person("J2")
    dept.update("immunization", "record_id", "IMJ001", resident_code=code("J2"), address=j2["address"], updated_at=later)
    dept.insert("registry", _registry_row("B", later))
    dept.drop_csv("events", [_event("E2", "2025-06-05T18:00:00+09:00")])
    dept.drop_csv("child_health", [{"record_id": "CH2", "resident_code": code("J2"), **_person("J2"),
                                    "checkup_code": "M4", "examined_on": "2025-05-22", "updated_at": now}])
    dept.drop_csv("nhi", [])
    for s in ingest_sources():
        city.export(s.name)
    city.chain("12:00")
    assert city.current("immunization") == (
        _infant("J", "ROTA5", 2) | _infant("J2", "ROTA5", 3) | _infant("B") | _infant("C2"))
    n = city.notices()
    assert n[("J", "immunization", "ROTA5", 3, "due")] == "superseded"
    assert n[("J2", "immunization", "ROTA5", 2, "due")] == "superseded"
    assert "withdrawn" not in city.states_of("B") and "superseded" not in city.states_of("B")
    assert city.current("event") == {("V", "event", "E2", 1, "event")}
    assert n[("V", "event", "E1", 1, "event")] == "withdrawn"
    assert city.sql("SELECT record_id FROM staging_child_health") == [("CH2",)]
    assert city.sql("SELECT count(*) FROM staging_nhi") == [(0,)]
    j_checkups = city.sql("SELECT checkups FROM mart_residents WHERE erk = :j", j=city.ring.seal("link", code("J")))
    assert j_checkups == [(None,)], "a deleted check-up leaves the linked data"

    # V's E1 was sent before the event was cancelled: its withdrawal is recorded, nothing is
    # sent again
    assert city.deliver() == []
    assert city.receipts()[("V", "E1", 1)] == "sent"

    # -- step 3: a reconcile that finds nothing writes nothing ---------------------------
    before = city.notices()
    events_before = city.sql("SELECT count(*) FROM notice_events")
    assert {s.name: city.export(s.name, "reconcile").written for s in ingest_sources()} == {
        s.name: 0 for s in ingest_sources()}
    quiet = city.chain("14:00")
    assert city.notices() == before and city.sql("SELECT count(*) FROM notice_events") == events_before
    reads = {s.name: city.sql("SELECT read FROM ingest_runs WHERE run_id = :r",
                              r=f"ingest_{s.name}/{quiet[f'ingest_{s.name}']['run_id']}") for s in ingest_sources()}
    assert reads == {s.name: [(0,)] for s in ingest_sources()}
