"""Opt-out through the whole chain: a resident who opts out gets no new event notice, and the
event notice already generated but not yet delivered is withdrawn (opted_out) and suppressed —
checked on a real SMTP server, with the chain run as real Airflow DAG runs on two consecutive days.
"""

from __future__ import annotations

import csv
import dataclasses
import email
import socket
from datetime import date, datetime
from email import policy
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from renkei.config import load_sources
from renkei.runctx import TOKYO

pytestmark = pytest.mark.airflow
D1, D2 = date(2025, 6, 1), date(2025, 6, 2)
OPTS_OUT, STAYS = "10000000001", "10000000002"
TS = "2025-05-20T10:00:00+09:00"


class Inbox:
    def __init__(self):
        self.to: list[tuple[str, str]] = []  # (recipient, subject)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        for rcpt in envelope.rcpt_tos:
            self.to.append((rcpt, str(msg["Subject"])))
        return "250 OK"


def _write(raw: Path, source: str, rows: list[dict]) -> None:
    cols = load_sources()[source].raw_columns
    with open(raw / f"{source}.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _drop(raw: Path, opted_out_at: str, events: list[tuple[str, str]]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    people = {OPTS_OUT: "opts-out@example.com", STAYS: "stays@example.com"}
    _write(raw, "registry", [{
        "resident_code": code, "name_kana": "テスト", "name_kanji": "試験", "birth_date": "1980-05-05", "sex": "2",
        "ward_code": "401064", "address": "北九州市小倉北区城内1番1号", "household_code": f"H{code}",
        "status": "resident", "status_date": "", "updated_at": TS} for code in people])
    _write(raw, "registry_contact", [{
        "resident_code": code, "channel": "email", "address": addr, "verified_at": TS, "updated_at": TS}
        for code, addr in people.items()])
    _write(raw, "subscriptions", [
        {"subscription_id": "S1", "resident_code": OPTS_OUT, "topic": "events", "ward_code": "",
         "opted_in_at": "2025-01-01T09:00:00+09:00", "opted_out_at": opted_out_at,
         "updated_at": opted_out_at or TS},
        {"subscription_id": "S2", "resident_code": STAYS, "topic": "events", "ward_code": "",
         "opted_in_at": "2025-01-01T09:00:00+09:00", "opted_out_at": "", "updated_at": TS},
    ])
    _write(raw, "events", [{
        "event_id": eid, "title": "勝山公園 冬のイルミネーション", "topic": "events", "ward_code": "401064",
        "venue": "勝山公園", "starts_at": starts, "ends_at": starts, "updated_at": stamp}
        for eid, starts, stamp in [(e[0], e[1], TS if e[0] == "E1" else "2025-06-01T12:00:00+09:00") for e in events]])
    for source in ("immunization", "child_health", "nhi"):
        _write(raw, source, [])


def test_opt_out_stops_new_event_notices_and_suppresses_undelivered_ones(tmp_path):
    from renkei.delivery.config import load_delivery_config
    from renkei.delivery.deliver import deliver
    from renkei.delivery.settings import DeliverySettings
    from renkei.keys.ring import KeyRing
    from renkei.runner import run_chain

    raw, work = tmp_path / "raw", tmp_path / "work"
    ring_path = KeyRing.generate().save(tmp_path / "keyring.json")
    ring = KeyRing.load(ring_path)
    # Day 1: both residents subscribe to events; E1 starts in 3 days → both get a notice.
    _drop(raw, opted_out_at="", events=[("E1", "2025-06-04T18:00:00+09:00")])
    run_chain(raw, D1, work, keyring_path=ring_path, say=lambda m: None)
    # Later on day 1 one resident opts out in the city app; a new event E2 is announced.
    _drop(raw, opted_out_at="2025-06-01T12:00:00+09:00",
          events=[("E1", "2025-06-04T18:00:00+09:00"), ("E2", "2025-06-05T18:00:00+09:00")])
    run_chain(raw, D2, work, keyring_path=ring_path, say=lambda m: None)

    eng = sa.create_engine(f"sqlite:///{work / 'warehouse.db'}")
    with eng.connect() as conn:
        made = {(r[0], r[1]) for r in conn.execute(sa.text("SELECT erk, subject FROM notices WHERE service='event'"))}
    eng.dispose()
    out, stay = ring.seal("link", OPTS_OUT), ring.seal("link", STAYS)
    assert made == {(out, "E1"), (stay, "E1"), (stay, "E2")}, "no new notice after the opt-out"

    inbox = Inbox()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        cfg = load_delivery_config(env={"RENKEI_SMTP_HOST": "127.0.0.1", "RENKEI_SMTP_PORT": str(port)})
        cfg = dataclasses.replace(cfg, rate_per_second=1000.0)
        settings = DeliverySettings.from_work(work, keyring=str(ring_path), env={})
        deliver(settings, datetime(2025, 6, 2, 10, 0, tzinfo=TOKYO), config=cfg, ring=ring)
        deliver(settings, datetime(2025, 6, 2, 11, 0, tzinfo=TOKYO), config=cfg, ring=ring)  # nothing twice
    finally:
        ctl.stop()
    recipients = sorted(r for r, _ in inbox.to)
    assert recipients == ["stays@example.com", "stays@example.com"]
    eng = sa.create_engine(settings.delivery_url)
    with eng.connect() as conn:
        reasons = {r[0] for r in conn.execute(sa.text(
            "SELECT reason FROM delivery_receipts WHERE status = 'suppressed'"))}
    eng.dispose()
    assert reasons == {"withdrawn"}  # the services run withdrew it before delivery ran
    eng = sa.create_engine(f"sqlite:///{work / 'warehouse.db'}")
    with eng.connect() as conn:
        withdrawn = conn.execute(sa.text(
            "SELECT n.erk, n.subject, e.state, e.reason FROM notice_events e JOIN notices n "
            "ON n.notice_id = e.notice_id")).all()
    eng.dispose()
    assert [tuple(r) for r in withdrawn] == [(out, "E1", "withdrawn", "opted_out")]
