"""The notice lifecycle (ARCHITECTURE.md): what became of an outbox notice after it was written.

A notice is *pending* when written. ``notice_events`` appends its transitions, and its state is
the latest one's: *withdrawn* (its basis is gone: a dose recorded, a record deleted, an opt-out,
a move), *superseded* (the rule now asks for another notice, ``superseded_by``; the new notice's
``replaces`` names the old one) or *reinstated* (the basis came back while the window is still
open: ids are deterministic, so the same notice returns instead of a new one). Delivery sends a
notice only while it is pending or reinstated; a sent notice is never sent again (receipts).

The services run decides the transitions (:func:`decide`) for the residents it evaluates and
appends them in the transaction that writes its new notices (:func:`append`). Reasons are short
snake_case words that carry no data.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import NamedTuple

import sqlalchemy as sa

from renkei.services.dates import fiscal_year, fiscal_year_start
from renkei.warehouse import notice_events, notices

PENDING, WITHDRAWN, SUPERSEDED, REINSTATED = "pending", "withdrawn", "superseded", "reinstated"
LIVE = frozenset({PENDING, REINSTATED})  # may still be delivered
CLOSED = frozenset({WITHDRAWN, SUPERSEDED})  # must not be delivered (unless reinstated)
RULE_ASKS_OTHER, BASIS_RESTORED = "rule_asks_other", "basis_restored"
NOT_IN_REGISTRY, NO_LONGER_DUE = "not_in_registry", "no_longer_due"
RESIDENT = "resident"
CHUNK = 2000  # ids per IN list (well under SQLite's bound-parameter limit)


class OpenNotice(NamedTuple):
    """A notice whose window is still open on the evaluation date, with its current state (a
    tuple: cheap to make for every open event notice of a city)."""

    notice_id: str
    erk: str
    service: str
    subject: str  # vaccine / check-up code or event id
    dose_number: int | None
    rule_id: str
    window_end: date
    state: str

    @property
    def key(self) -> tuple[str, str, str]:
        """Who and what the notice is about: a notice with the same key can supersede it."""
        return self.erk, self.service, self.subject


@dataclass(frozen=True)
class Transition:
    """One lifecycle event to append; ``was`` is the state it was decided from."""

    notice_id: str
    state: str
    reason: str
    superseded_by: str | None = None
    was: str = PENDING


def decide(
    open_notices: Iterable[OpenNotice],
    current: Callable[[OpenNotice], bool],
    successor: Callable[[OpenNotice], str | None],
    reason: Callable[[OpenNotice], str],
) -> list[Transition]:
    """The transitions of open notices, reinstatements first (a supersession may name one).

    A live notice that is no longer ``current`` is superseded when ``successor`` names a current
    notice about the same resident, service and subject, else withdrawn for ``reason``; a
    withdrawn or superseded notice that is current again is reinstated. Nothing else moves, so
    deciding twice on the same data gives nothing the second time.
    """
    back: list[Transition] = []
    gone: list[Transition] = []
    for n in open_notices:
        now = current(n)
        if n.state in LIVE and not now:
            by = successor(n)
            if by is not None and by != n.notice_id:
                gone.append(Transition(n.notice_id, SUPERSEDED, RULE_ASKS_OTHER, by, n.state))
            else:
                gone.append(Transition(n.notice_id, WITHDRAWN, reason(n), None, n.state))
        elif n.state in CLOSED and now:
            back.append(Transition(n.notice_id, REINSTATED, BASIS_RESTORED, None, n.state))
    return sorted(back, key=lambda t: t.notice_id) + sorted(gone, key=lambda t: t.notice_id)


def withdrawal_reason(n: OpenNotice, resident: Mapping | None, on: date,
                      counted_codes: Iterable[str] = (), event_reason: str | None = None) -> str:
    """Why a notice that is no longer current lapsed, from its resident's mart row on ``on``.

    ``counted_codes``: the register codes whose doses count for an immunization notice's series
    (default its subject); ``event_reason``: what the event check found for an event notice.
    """
    if resident is None:
        return NOT_IN_REGISTRY
    status = resident["status"]
    if status != RESIDENT:
        return "status_" + (re.sub(r"[^a-z0-9_]", "_", str(status).lower())[:40] if status else "unknown")
    if n.service == "event":
        return event_reason or NO_LONGER_DUE
    if n.service == "immunization":
        given = _doses(resident["immunization_history"])
        if any((code, n.dose_number) in given for code in (tuple(counted_codes) or (n.subject,))):
            return "dose_recorded"
    elif n.service == "checkup":
        examined = {p.split("@", 1)[0] for p in (resident["checkups"] or "").split(",") if p}
        if n.subject in examined:
            return "checkup_recorded"
    elif n.service == "nhi_checkup":
        qualified, disqualified = resident["nhi_qualified_on"], resident["nhi_disqualified_on"]
        if qualified is None or qualified > on or (disqualified is not None and disqualified <= on):
            return "nhi_membership_ended"
        last = resident["nhi_last_checkup_on"]
        if last is not None and last >= fiscal_year_start(fiscal_year(on)):
            return "checkup_recorded"
    return NO_LONGER_DUE


def _doses(history: str | None) -> set[tuple[str, int]]:
    """(code, dose) of the mart's ``immunization_history`` ("CODE#n@YYYY-MM-DD,…")."""
    out = set()
    for piece in (history or "").split(","):
        code, _, n = piece.rpartition("@")[0].rpartition("#")
        if code:
            out.add((code, int(n)))
    return out


def latest_states(conn: sa.Connection, *where: sa.ColumnElement) -> dict[str, str]:
    """The current state of each notice that has an event (absent: pending), among the notices
    ``where`` selects (conditions on ``notices``; none: all): one query, one row per notice."""
    e = notice_events.c
    last = sa.select(sa.func.max(e.seq).label("seq")).group_by(e.notice_id)
    if where:
        last = last.where(e.notice_id.in_(sa.select(notices.c.notice_id).where(*where)))
    q = sa.select(e.notice_id, e.state).where(e.seq.in_(last))
    return dict(conn.execute(q).all())


def open_clause(on: date, services: Iterable[str]) -> sa.ColumnElement:
    """Notices of ``services`` whose window is open on ``on`` (window_end ≥ on)."""
    return sa.and_(notices.c.window_end >= on, notices.c.service.in_(sorted(services)))


def open_notices(conn: sa.Connection, *where: sa.ColumnElement, states: Mapping[str, str] | None = None,
                 fetch: int = 20000) -> Iterator[OpenNotice]:
    """The notices ``where`` selects as OpenNotice, streamed (run no other query on ``conn``
    while iterating), each with its state from ``states`` (default: read here)."""
    states = latest_states(conn, *where) if states is None else states
    n = notices.c
    q = sa.select(n.notice_id, n.erk, n.service, n.subject, n.dose_number, n.rule_id, n.window_end).where(*where)
    for row in conn.execute(q, execution_options={"yield_per": fetch}):
        yield OpenNotice(*row, states.get(row[0], PENDING))


def states_of(conn: sa.Connection, ids: Iterable[str]) -> dict[str, str]:
    """The current state of each notice id given that has an event (absent: pending)."""
    ids = sorted(set(ids))
    out: dict[str, str] = {}
    e = notice_events.c
    for i in range(0, len(ids), CHUNK):
        q = sa.select(e.notice_id, e.state).where(e.notice_id.in_(ids[i:i + CHUNK])).order_by(e.seq)
        out.update(conn.execute(q).all())  # later events overwrite earlier ones
    return out


def by_id(conn: sa.Connection, ids: Iterable[str], states: Mapping[str, str]) -> list[OpenNotice]:
    """The notices of ``ids`` (a few) as OpenNotice, with their state from ``states``."""
    ids = sorted(set(ids))
    out: list[OpenNotice] = []
    for i in range(0, len(ids), CHUNK):
        out += open_notices(conn, notices.c.notice_id.in_(ids[i:i + CHUNK]), states=states)
    return out


def state_of(conn: sa.Connection, notice_id: str) -> str:
    """The current state of one notice (delivery asks this just before sending)."""
    return states_of(conn, [notice_id]).get(notice_id, PENDING)


def append(conn: sa.Connection, transitions: list[Transition], run_id: str, at: str) -> list[Transition]:
    """Append the transitions whose notice is still in the state they were decided from (a
    concurrent run may have moved it since), in order, inside the caller's transaction; returns
    those appended."""
    if not transitions:
        return []
    now = states_of(conn, (t.notice_id for t in transitions))
    kept = [t for t in transitions if now.get(t.notice_id, PENDING) == t.was]
    rows = [{"notice_id": t.notice_id, "state": t.state, "reason": t.reason, "superseded_by": t.superseded_by,
             "run_id": run_id, "at": at} for t in kept]
    for i in range(0, len(rows), 5000):
        conn.execute(sa.insert(notice_events), rows[i:i + 5000])
    return kept


def count(transitions: Iterable[Transition]) -> dict[str, int]:
    """{"withdrawn", "superseded", "reinstated"}: how many of each."""
    c = Counter(t.state for t in transitions)
    return {s: c.get(s, 0) for s in (WITHDRAWN, SUPERSEDED, REINSTATED)}


def history(conn: sa.Connection, notice_id: str) -> list[dict]:
    """Every event of a notice, oldest first (``renkei explain``, the notice page)."""
    e = notice_events.c
    q = sa.select(e.seq, e.state, e.reason, e.superseded_by, e.at, e.run_id, e.stream_id).where(
        e.notice_id == notice_id).order_by(e.seq)
    return [dict(r._mapping) for r in conn.execute(q)]


def run_transitions(conn: sa.Connection, run_id: str) -> list[dict]:
    """The transitions a services run appended (ids and reasons only: the audit trail's)."""
    e = notice_events.c
    q = sa.select(e.notice_id, e.state, e.reason, e.superseded_by).where(e.run_id == run_id).order_by(e.seq)
    return [dict(r._mapping) for r in conn.execute(q)]
