"""The review workflow over the integrity audit's queue: list items, approve or reject them.

A decision records who, when and why, and the department row it was about (its ``row_hash``).
Later link runs honour it: an approved ``hold`` no longer keeps its ERK from the services; a
rejected one does, until the department changes its record, when the audit re-opens the item
as pending (renkei.linkage.audit). Each decision is also appended to the audit trail
(``renkei.audit.trail``, kind ``review_decision``, ids only) when that module exists, in the
same transaction as the decision: if the entry cannot be appended (no chain key, a trail behind
its anchor) the decision is not stored either. The trail's head is anchored after the commit.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.errors import RenkeiError
from renkei.keys.ring import KeyRing
from renkei.linkage.audit import APPROVED, PENDING, REJECTED, held_condition
from renkei.sources.values import format_timestamp
from renkei.warehouse import engine, ensure_schema, review_queue, staging_key, staging_table

STATES = (PENDING, APPROVED, REJECTED)
DECISIONS = (APPROVED, REJECTED)


def held_erks(conn: sa.Connection, among: sa.ColumnElement | None = None) -> set[str]:
    """ERKs with an active ``hold`` item that is pending or rejected: no service evaluates them
    (``among``: a further condition on review_queue, e.g. one part of a services run)."""
    query = sa.select(review_queue.c.erk).where(held_condition()).distinct()
    if among is not None:
        query = query.where(among)
    return set(conn.execute(query).scalars())


def list_items(warehouse_url: str, state: str | None = None, include_resolved: bool = False) -> list[dict]:
    """Queue items (active ones unless ``include_resolved``), holds first, then by source and key."""
    if state is not None and state not in STATES:
        raise RenkeiError(f"unknown review state {state!r}: use one of {', '.join(STATES)}")
    q = review_queue.c
    query = sa.select(review_queue).order_by(q.severity, q.source, q.record_key, q.reason)
    if state is not None:
        query = query.where(q.state == state)
    if not include_resolved:
        query = query.where(q.active.is_(True))
    eng = engine(warehouse_url)
    try:
        ensure_schema(eng)
        with eng.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
    finally:
        eng.dispose()


def _current_row_hash(conn: sa.Connection, item: sa.Row) -> str | None:
    src = load_sources()[item.source]
    st = staging_table(src)
    found = conn.execute(sa.select(st.c.row_hash).where(st.c[staging_key(src)] == item.record_key)).scalar()
    return found if found is not None else item.row_hash


def decide(warehouse_url: str, item_id: str, decision: str, reviewer: str, comment: str,
           now: datetime | None = None, ring: KeyRing | None = None, anchor: object = None) -> dict:
    """Approve or reject one item; returns the stored item. The decision covers the row as it is now.

    ``ring`` signs the audit-trail entry (default: ``KeyRing.load()``, i.e. $RENKEI_KEYRING);
    ``anchor`` is where the trail's head goes (default: $RENKEI_AUDIT_ANCHOR, see
    renkei.audit.anchor). Decision and entry commit together, or neither does.
    """
    if decision not in DECISIONS:
        raise RenkeiError(f"unknown decision {decision!r}: use {' or '.join(DECISIONS)}")
    if not reviewer.strip() or not comment.strip():
        raise RenkeiError(f"review item {item_id}: a decision needs a reviewer name and a comment: pass --reviewer and --comment")
    trail = _trail()
    if trail is not None and ring is None:
        ring = KeyRing.load()
    at = format_timestamp(now or datetime.now(timezone.utc))
    eng = engine(warehouse_url)
    try:
        ensure_schema(eng)
        with eng.begin() as conn:
            item = conn.execute(sa.select(review_queue).where(review_queue.c.item_id == item_id)).first()
            if item is None:
                raise RenkeiError(f"review item {item_id} is not in the queue: `renkei review list` shows the ids")
            conn.execute(sa.update(review_queue).where(review_queue.c.item_id == item_id).values(
                state=decision, decided_by=reviewer.strip(), decided_at=at, comment=comment.strip(),
                decided_row_hash=_current_row_hash(conn, item),
            ))
            stored = dict(conn.execute(sa.select(review_queue).where(review_queue.c.item_id == item_id)).mappings().one())
            if trail is not None:  # in this transaction: an entry that fails takes the decision with it
                payload = {"item_id": stored["item_id"], "decision": stored["state"], "reviewer": stored["decided_by"],
                           "reason": stored["reason"]}
                trail.append(warehouse_url, "review_decision", payload, ring=ring, now=now, conn=conn, anchor=anchor)
    finally:
        eng.dispose()
    if trail is not None:
        trail.anchor_head(warehouse_url, ring=ring, anchor=anchor)
    return stored


def _trail():  # noqa: ANN202 - the renkei.audit.trail module, or None
    """``renkei.audit.trail`` when that module exists, else None."""
    try:
        from renkei.audit import trail  # noqa: PLC0415 - optional: another part of Renkei
    except ImportError:
        return None
    return trail
