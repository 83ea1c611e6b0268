"""The review workflow over the integrity audit's queue: list items, approve or reject them.

A decision records who, when and why, and the department row it was about (its ``row_hash``).
Later link runs honour it: an approved ``hold`` no longer keeps its ERK from the services; a
rejected one does, until the department changes its record, when the audit re-opens the item
as pending (renkei.linkage.audit). Each decision is also appended to the audit trail
(``renkei.audit.trail``, kind ``review_decision``, ids only) when that module exists, in the
same transaction as the decision: if the entry cannot be appended (no chain key, a trail behind
its anchor) the decision is not stored either. The trail's head is anchored after the commit.

Two ways in:

- :func:`decide` applies a decision at once; it needs the chain key (``renkei review
  approve|reject`` runs with the keyring).
- :func:`request_decision` only records a *request* in ``review_requests`` (no key: the Airflow
  api-server behind the Renkei pages holds no keyring). :func:`apply_requests`, run by the
  ``apply_review_decisions`` Dag where the keyring is, applies pending requests one by one:
  decision, audit entry and the request's ``applied`` state in one transaction, the anchor
  after. A request that no longer fits (item gone, decided again since, department row changed)
  is marked ``refused`` with the reason and changes nothing else.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.errors import RenkeiError
from renkei.keys.ring import KeyRing
from renkei.linkage.audit import APPROVED, PENDING, REJECTED, RESOLVED, held_condition
from renkei.sources.values import format_timestamp
from renkei.warehouse import TS, engine, ensure_schema, review_queue, staging_key, staging_table

STATES = (PENDING, APPROVED, REJECTED, RESOLVED)  # resolved: undecided, no longer found (inactive)
DECISIONS = (APPROVED, REJECTED)
REQUEST_APPLIED, REQUEST_REFUSED = "applied", "refused"  # and PENDING

# Decision requests from the Renkei pages. The api-server's database role needs only SELECT and
# INSERT here (and SELECT on review_queue); the applying Dag updates ``state``. Kept out of the
# warehouse metadata: created on first use by either side.
requests_metadata = sa.MetaData()
review_requests = sa.Table(
    "review_requests", requests_metadata,
    sa.Column("request_id", sa.Integer, primary_key=True, autoincrement=True),  # application order
    sa.Column("item_id", sa.String(16), nullable=False, index=True),
    sa.Column("decision", sa.String(16), nullable=False),  # approved | rejected
    sa.Column("reviewer", sa.Text, nullable=False),  # the logged-in Airflow user
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("row_hash", sa.String(64)),  # the item's department row when it was requested
    sa.Column("requested_at", TS, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | applied | refused
    sa.Column("applied_at", TS),
    sa.Column("audit_seq", sa.Integer),  # the review_decision entry (applied)
    sa.Column("outcome", sa.Text),  # why it was refused
)


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


def _check(item_id: str, decision: str, reviewer: str, comment: str) -> None:
    if decision not in DECISIONS:
        raise RenkeiError(f"unknown decision {decision!r}: use {' or '.join(DECISIONS)}")
    if not reviewer.strip() or not comment.strip():
        raise RenkeiError(f"review item {item_id}: a decision needs a reviewer name and a comment: pass --reviewer and --comment")


def _decide_on(conn: sa.Connection, warehouse_url: str, item: sa.Row, decision: str, reviewer: str, comment: str,
               at: str, now: datetime | None, ring: KeyRing | None, anchor: object, trail, extra: dict | None = None,
               ) -> tuple[dict, int | None]:
    """Store the decision on ``item`` and append its audit entry, in ``conn``'s transaction;
    returns the stored item and the entry's seq (None without the trail module)."""
    conn.execute(sa.update(review_queue).where(review_queue.c.item_id == item.item_id).values(
        state=decision, decided_by=reviewer.strip(), decided_at=at, comment=comment.strip(),
        decided_row_hash=_current_row_hash(conn, item),
    ))
    stored = dict(conn.execute(sa.select(review_queue).where(review_queue.c.item_id == item.item_id)).mappings().one())
    seq = None
    if trail is not None:  # in this transaction: an entry that fails takes the decision with it
        payload = {"item_id": stored["item_id"], "decision": stored["state"], "reviewer": stored["decided_by"],
                   "reason": stored["reason"], **(extra or {})}
        seq = trail.append(warehouse_url, "review_decision", payload, ring=ring, now=now, conn=conn, anchor=anchor)
    return stored, seq


def _item(conn: sa.Connection, item_id: str) -> sa.Row | None:
    return conn.execute(sa.select(review_queue).where(review_queue.c.item_id == item_id)).first()


def decide(warehouse_url: str, item_id: str, decision: str, reviewer: str, comment: str,
           now: datetime | None = None, ring: KeyRing | None = None, anchor: object = None) -> dict:
    """Approve or reject one item; returns the stored item. The decision covers the row as it is now.

    ``ring`` signs the audit-trail entry (default: ``KeyRing.load()``, i.e. $RENKEI_KEYRING);
    ``anchor`` is where the trail's head goes (default: $RENKEI_AUDIT_ANCHOR, see
    renkei.audit.anchor). Decision and entry commit together, or neither does.
    """
    _check(item_id, decision, reviewer, comment)
    trail = _trail()
    if trail is not None and ring is None:
        ring = KeyRing.load()
    at = format_timestamp(now or datetime.now(timezone.utc))
    eng = engine(warehouse_url)
    try:
        ensure_schema(eng)
        with eng.begin() as conn:
            item = _item(conn, item_id)
            if item is None:
                raise RenkeiError(f"review item {item_id} is not in the queue: `renkei review list` shows the ids")
            stored, _ = _decide_on(conn, warehouse_url, item, decision, reviewer, comment, at, now, ring, anchor, trail)
    finally:
        eng.dispose()
    if trail is not None:
        trail.anchor_head(warehouse_url, ring=ring, anchor=anchor)
    return stored


def _ensure_requests(eng: sa.Engine) -> None:
    requests_metadata.create_all(eng)


def request_decision(warehouse_url: str, item_id: str, decision: str, reviewer: str, comment: str,
                     now: datetime | None = None) -> dict:
    """Record a decision request for :func:`apply_requests` (no keyring needed); returns it.

    Checked as :func:`decide` checks (decision, reviewer, comment, the item exists); it changes
    nothing in the queue or the audit trail until it is applied.
    """
    _check(item_id, decision, reviewer, comment)
    at = format_timestamp(now or datetime.now(timezone.utc))
    eng = engine(warehouse_url)
    try:
        ensure_schema(eng)
        _ensure_requests(eng)
        with eng.begin() as conn:
            item = _item(conn, item_id)
            if item is None:
                raise RenkeiError(f"review item {item_id} is not in the queue: reload the review page")
            rid = conn.execute(sa.insert(review_requests).values(
                item_id=item_id, decision=decision, reviewer=reviewer.strip(), comment=comment.strip(),
                row_hash=item.row_hash, requested_at=at, state=PENDING)).inserted_primary_key[0]
            return dict(conn.execute(sa.select(review_requests).where(review_requests.c.request_id == rid))
                        .mappings().one())
    finally:
        eng.dispose()


def list_requests(warehouse_url: str, state: str | None = None) -> list[dict]:
    """Decision requests, oldest first (``state``: pending, applied or refused)."""
    query = sa.select(review_requests).order_by(review_requests.c.request_id)
    if state is not None:
        query = query.where(review_requests.c.state == state)
    eng = engine(warehouse_url)
    try:
        with eng.connect() as conn:
            if not sa.inspect(conn).has_table(review_requests.name):
                return []
            return [dict(r) for r in conn.execute(query).mappings()]
    finally:
        eng.dispose()


def _refusal(conn: sa.Connection, req: dict, item: sa.Row | None) -> str | None:
    """Why a request can no longer be applied (None: it can)."""
    if item is None:
        return "the item is no longer in the queue"
    if req["decision"] not in DECISIONS or not req["reviewer"].strip() or not req["comment"].strip():
        return "not a valid decision (decision, reviewer or comment)"
    if item.decided_at is not None and item.decided_at > req["requested_at"]:
        return f"the item was decided again since the request ({item.state} by {item.decided_by} at {item.decided_at})"
    if req["row_hash"] is not None and _current_row_hash(conn, item) != req["row_hash"]:
        return "the department's record changed since the request: decide again on the current record"
    return None


def apply_requests(warehouse_url: str, ring: KeyRing | None = None, anchor: object = None,
                   now: datetime | None = None) -> dict:
    """Apply every pending decision request, oldest first; returns the request ids by outcome.

    Each request is one transaction: the decision (dated when it was requested: that is when the
    reviewer decided), its ``review_decision`` entry (with ``request_id``) and the request's
    ``applied`` state commit together, then the trail's head is anchored. If the entry cannot be
    appended (no chain key, a trail behind its anchor) the transaction rolls back, the request
    stays pending and the error is raised: the next run retries. ``ring`` defaults to
    ``KeyRing.load()`` (loaded only when a request is pending).
    """
    trail = _trail()
    out: dict[str, list[int]] = {REQUEST_APPLIED: [], REQUEST_REFUSED: []}
    eng = engine(warehouse_url)
    try:
        r = review_requests.c
        with eng.connect() as conn:  # every minute: one look, no DDL, no keyring while nothing is pending
            if not sa.inspect(conn).has_table(review_requests.name):
                return out
            ids = list(conn.execute(sa.select(r.request_id).where(r.state == PENDING).order_by(r.request_id)).scalars())
        if ids and trail is not None and ring is None:
            ring = KeyRing.load()
        for rid in ids:
            at = format_timestamp(now or datetime.now(timezone.utc))
            with eng.begin() as conn:
                found = conn.execute(sa.select(review_requests).where(r.request_id == rid, r.state == PENDING)
                                     .with_for_update()).mappings().first()
                if found is None:
                    continue  # applied by a concurrent run
                req = dict(found)
                item = _item(conn, req["item_id"])
                why = _refusal(conn, req, item)
                seq = None
                if why is None:
                    _, seq = _decide_on(conn, warehouse_url, item, req["decision"], req["reviewer"], req["comment"],
                                        req["requested_at"], now, ring, anchor, trail, extra={"request_id": rid})
                done = conn.execute(sa.update(review_requests).where(r.request_id == rid, r.state == PENDING).values(
                    state=REQUEST_REFUSED if why else REQUEST_APPLIED, applied_at=at, audit_seq=seq, outcome=why))
                if done.rowcount != 1:
                    raise RenkeiError(f"review request {rid} was applied concurrently: rolled back this copy")
            out[REQUEST_REFUSED if why else REQUEST_APPLIED].append(rid)
            if why is None and trail is not None:
                trail.anchor_head(warehouse_url, ring=ring, anchor=anchor)
    finally:
        eng.dispose()
    return out


def _trail():  # noqa: ANN202 - the renkei.audit.trail module, or None
    """``renkei.audit.trail`` when that module exists, else None."""
    try:
        from renkei.audit import trail  # noqa: PLC0415 - optional: another part of Renkei
    except ImportError:
        return None
    return trail
