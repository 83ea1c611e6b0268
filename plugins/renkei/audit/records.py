"""What the DAGs write to the audit trail: one function per entry kind, counts and ids only."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from renkei.audit.trail import append
from renkei.keys.ring import KeyRing
from renkei.outputs.lifecycle import run_transitions
from renkei.warehouse import engine, notices


def key_versions(ring: KeyRing) -> list[dict]:
    """The current and held versions of every key purpose (never key material), as a list: a
    purpose's name (``contact``) must not be read as a payload key of personal data."""
    return [{"purpose": p, **ring.versions(p)} for p in ring.purposes()]


def record_linkage_run(warehouse_url: str, run_id: str, as_of: date, counts: dict,
                       ring: KeyRing | None = None) -> int:
    """A ``linkage_run`` entry: the mart build's counts and the key versions it ran under."""
    ring = ring or KeyRing.load()
    payload = {"run_id": run_id, "as_of": as_of.isoformat(), "counts": counts, "key_versions": key_versions(ring)}
    return append(warehouse_url, "linkage_run", payload, ring=ring)


def new_notice_ids(warehouse_url: str, run_id: str) -> list[str]:
    """The ids of the notices this run created (``created_run_id``), sorted."""
    eng = engine(warehouse_url)
    try:
        with eng.connect() as conn:
            q = sa.select(notices.c.notice_id).where(notices.c.created_run_id == run_id).order_by(notices.c.notice_id)
            return list(conn.execute(q).scalars())
    finally:
        eng.dispose()


def transitions_of(warehouse_url: str, run_id: str) -> list[dict]:
    """The lifecycle transitions this run appended: notice_id, state, reason, superseded_by."""
    eng = engine(warehouse_url)
    try:
        with eng.connect() as conn:
            return run_transitions(conn, run_id)
    finally:
        eng.dispose()


def record_notices_published(warehouse_url: str, run_id: str, as_of: date, counts: dict,
                             ring: KeyRing | None = None) -> int:
    """A ``notice_published`` entry: the services run's counts, the ids of its new notices and
    the lifecycle transitions it decided (ids and reasons: withdrawn, superseded, reinstated)."""
    ring = ring or KeyRing.load()
    payload = {"run_id": run_id, "as_of": as_of.isoformat(), "counts": counts,
               "notice_ids": new_notice_ids(warehouse_url, run_id),
               "transitions": transitions_of(warehouse_url, run_id), "key_versions": key_versions(ring)}
    return append(warehouse_url, "notice_published", payload, ring=ring)
