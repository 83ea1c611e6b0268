"""Evaluating the service rules over the mart and writing notices to the outbox.

Services (rules are data under config/services/): immunization and infant check-ups for
children, specific health check-up invitations for NHI members, event notices for residents who
subscribed. Only residents whose registry status is ``resident`` on D get notices. A notice's id
is deterministic (rule, ERK, period, kind), and the outbox insert ignores an id it already
holds: a re-run, a retry or a duplicate event never publishes a notice twice.

Notices not yet delivered follow their basis (renkei.outputs.lifecycle): for the residents it
evaluates, a run withdraws or supersedes each open notice (window_end ≥ D) that the rules no
longer give, and reinstates a withdrawn or superseded one they give again, in the transaction
that writes its new notices. Immunization, check-up and NHI notices are current when drafted
again (drafts are a function of the mart and the date); an event notice, never drafted twice,
while its event and a matching subscription last (event_notices.event_notice_lapse).

Suspect links are held back: an ERK with an active ``hold`` item of the integrity audit that is
pending or rejected (renkei.linkage.review.held_erks) gets no new notice from any service, and
none of its notices moves, until a reviewer approves the item or the department's corrected
record clears it. Notices already in the outbox stay.

A run is *incremental* when the previous complete evaluation was for the same date and the
events calendar is unchanged since: then only the residents the mart builds since then rebuilt
(``mart_changes``) and those the audit no longer holds are evaluated — every other resident's
drafts are the ones already in the outbox. Otherwise every resident is evaluated (``full``).

A run is planned (:func:`plan_services`), evaluated in parts (:func:`evaluate_part`: a full run
on PostgreSQL splits the residents by ERK hash, so that Airflow runs the parts side by side as
mapped tasks) and recorded once every part succeeded (:func:`record_services`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone

import sqlalchemy as sa

from renkei import bulk
from renkei.config import load_sources
from renkei.errors import RenkeiError
from renkei.keys.rotation import hold_link_key
from renkei.linkage.audit import has_loaded
from renkei.linkage.mart import lock_for_read, mart_lost
from renkei.linkage.review import held_erks
from renkei.linkage.subjects import assign_subjects
from renkei.outputs import lifecycle
from renkei.services.checkup import evaluate_checkups, load_checkup_rules
from renkei.services.dates import fiscal_year, fiscal_year_start
from renkei.services.event_notices import (
    Event,
    Subscription,
    calendar,
    evaluate_on_calendar,
    event_notice_lapse,
    load_event_rules,
)
from renkei.services.immunization import NoticeDraft, evaluate_recorded, load_immunization_rules, notice_id
from renkei.services.nhi_checkup import evaluate_nhi_checkup, load_nhi_checkup_rules
from renkei.sources.values import format_timestamp, parse_timestamp
from renkei.warehouse import (
    engine,
    ensure_schema,
    link_builds,
    mart_changes,
    mart_residents,
    notices,
    review_queue,
    services_held,
    services_held_pending,
    services_runs,
    snapshot_options,
    staging_table,
    subjects,
    upsert,
)

log = logging.getLogger(__name__)
CHILD_AGE_LIMIT_YEARS = 17  # beyond every child series window (HPV runs to 高校1年相当)
RESIDENT = "resident"
FULL, INCREMENTAL = "full", "incremental"
CHUNK = 2000  # ERKs per IN list of an incremental run (well under SQLite's bound-parameter limit)
FETCH = 20000  # rows per fetch when streaming residents
Draft = tuple[str, NoticeDraft]  # (erk, draft)


@dataclass(frozen=True)
class Part:
    """One slot of a partitioned evaluation: the residents whose ERK hashes to ``index`` of
    ``count`` (PostgreSQL's ``hashtext``; every ERK falls in exactly one slot, whatever the
    mart holds when each slot runs)."""

    index: int
    count: int

    def clause(self, col: sa.ColumnElement) -> sa.ColumnElement:
        if self.count <= 1:
            return sa.true()
        return sa.func.hashtext(col).op("&")(0x7FFFFFFF) % self.count == self.index


Erks = list[str] | Part | None  # the residents to evaluate (None: everyone)


def _child_filter(as_of: date):
    oldest = date(as_of.year - CHILD_AGE_LIMIT_YEARS - 1, as_of.month, 1)
    return sa.and_(mart_residents.c.birth_date > oldest, mart_residents.c.birth_date <= as_of,
                   mart_residents.c.status == RESIDENT)


def _among(col: sa.ColumnElement, erks: Erks) -> sa.ColumnElement:
    if erks is None:
        return sa.true()
    return erks.clause(col) if isinstance(erks, Part) else col.in_(erks)


def _stream(conn: sa.Connection, q: sa.Select) -> Iterator[sa.Row]:
    return conn.execute(q, execution_options={"yield_per": FETCH})


def _recorded(history: str | None) -> dict[tuple[str, int], list[date]]:
    """A child's counted doses {(vaccine_code, dose_number): [administered_on]} from
    ``mart_residents.immunization_history`` ("CODE#n@YYYY-MM-DD,…"), which the mart build
    aggregates from exactly the child's ``mart_doses`` rows — one row per child to fetch
    instead of one per dose."""
    recorded: dict[tuple[str, int], list[date]] = {}
    if history:
        for piece in history.split(","):
            head, _, on = piece.rpartition("@")
            code, _, n = head.rpartition("#")
            recorded.setdefault((code, int(n)), []).append(date.fromisoformat(on))
    return recorded


def immunization_drafts(conn: sa.Connection, as_of: date, erks: Erks = None) -> Iterator[Draft]:
    rules = load_immunization_rules()
    m = mart_residents.c
    kids = sa.select(m.erk, m.birth_date, m.status, m.sex, m.immunization_history).where(
        _child_filter(as_of), _among(m.erk, erks))
    for erk, born, status, sex, history in _stream(conn, kids):
        if status != RESIDENT or as_of < born:
            continue  # evaluate_child's own first test (the filter already ensures it)
        for draft in evaluate_recorded(born, _recorded(history), as_of, rules, sex=sex):
            yield erk, draft


def checkup_drafts(conn: sa.Connection, as_of: date, erks: Erks = None) -> Iterator[Draft]:
    rules = load_checkup_rules()
    m = mart_residents.c
    q = sa.select(m.erk, m.birth_date, m.status, m.checkups).where(
        _child_filter(as_of), m.age_years < 5, _among(m.erk, erks))
    for erk, born, status, checkups in _stream(conn, q):
        examined = {piece.split("@", 1)[0] for piece in (checkups or "").split(",") if piece}
        for draft in evaluate_checkups(born, status, examined, as_of, rules):
            yield erk, draft


def nhi_checkup_drafts(conn: sa.Connection, as_of: date, erks: Erks = None) -> Iterator[Draft]:
    rules = load_nhi_checkup_rules()
    m = mart_residents.c
    fy_start = fiscal_year_start(fiscal_year(as_of))
    # The first tests of evaluate_nhi_checkup, done in SQL: a member on D not yet checked this
    # fiscal year (it would return nothing for anyone else).
    q = sa.select(m.erk, m.birth_date, m.status, m.nhi_qualified_on, m.nhi_disqualified_on, m.nhi_last_checkup_on).where(
        m.nhi_qualified_on.is_not(None), m.status == RESIDENT, m.birth_date.is_not(None),
        m.nhi_qualified_on <= as_of, sa.or_(m.nhi_disqualified_on.is_(None), m.nhi_disqualified_on > as_of),
        sa.or_(m.nhi_last_checkup_on.is_(None), m.nhi_last_checkup_on < fy_start),
        _among(m.erk, erks))
    for erk, born, status, qualified, disqualified, last in _stream(conn, q):
        for draft in evaluate_nhi_checkup(born, status, qualified, disqualified, last, as_of, rules):
            yield erk, draft


def _events(conn: sa.Connection) -> list[Event]:
    ev = staging_table(load_sources()["events"])
    return [
        Event(r.event_id, r.topic, r.ward_code, r.venue or "", parse_timestamp(r.starts_at))
        for r in conn.execute(sa.select(ev.c.event_id, ev.c.topic, ev.c.ward_code, ev.c.venue, ev.c.starts_at))
        if r.starts_at is not None
    ]


def _subscriptions(conn: sa.Connection, erks: Erks) -> dict[str, list[Subscription]]:
    """The city-app subscriptions of the residents (registry status ``resident``) among ``erks``."""
    sub = staging_table(load_sources()["subscriptions"])
    subs: dict[str, list[Subscription]] = defaultdict(list)
    q = (
        sa.select(sub.c.erk, sub.c.topic, sub.c.ward_code, sub.c.opted_in_at, sub.c.opted_out_at)
        .join(mart_residents, mart_residents.c.erk == sub.c.erk)
        .where(mart_residents.c.status == RESIDENT, _among(sub.c.erk, erks))
    )
    for erk, topic, ward, opted_in, opted_out in _stream(conn, q):
        if opted_in is None:
            continue
        subs[erk].append(Subscription(topic, ward, parse_timestamp(opted_in), parse_timestamp(opted_out) if opted_out else None))
    return subs


def event_drafts(conn: sa.Connection, as_of: date, erks: Erks = None) -> Iterator[Draft]:
    rules = load_event_rules()
    # Only events that can qualify today, prepared once; the drafts are the same as over the
    # whole calendar (evaluate_on_calendar).
    cal = calendar(_events(conn), as_of, rules)
    if not cal.by_topic:
        return
    subs = _subscriptions(conn, erks)
    sent: dict[str, list[tuple[str, date]]] = defaultdict(list)
    n = notices.c
    for erk, event_id, on in _stream(conn, sa.select(n.erk, n.subject, n.evaluated_on).where(
            n.service == "event", _among(n.erk, erks))):
        sent[erk].append((event_id, on))
    for erk, mine in subs.items():
        for draft in evaluate_on_calendar(mine, cal, rules, sent.get(erk, ())):
            yield erk, draft


SERVICES = {
    "immunization": immunization_drafts,
    "checkup": checkup_drafts,
    "nhi_checkup": nhi_checkup_drafts,
    "event": event_drafts,
}

# The sources a service's rules read besides the registry. Until each has loaded once the
# service is not evaluated: in a first load in any order (a new city, a restore) a child whose
# immunization records have not arrived yet is not a child without doses. The first load itself
# makes a full link build, so the next run evaluates every resident (renkei.linkage.audit.first_loads).
SERVICE_SOURCES = {
    "immunization": ("immunization",), "checkup": ("child_health",), "nhi_checkup": ("nhi",),
    "event": ("events", "subscriptions"),
}


def awaiting_first_load(conn: sa.Connection, services: list[str]) -> list[str]:
    """The ``services`` whose sources have not all loaded yet (renkei.linkage.audit.has_loaded)."""
    return [s for s in services if not all(has_loaded(conn, src) for src in SERVICE_SOURCES.get(s, ()))]


COLUMNS = [c.name for c in notices.columns]


def _facts(draft: NoticeDraft, shared: dict[int, tuple[NoticeDraft, str]]) -> str:
    """The draft's facts as JSON; an event's draft is one object shared by every resident told
    about the event (evaluate_on_calendar), so its JSON is made once (the cache keeps the draft
    alive, so its id cannot be reused)."""
    if draft.service == "event":
        hit = shared.get(id(draft))
        if hit is None:
            hit = shared[id(draft)] = (draft, json.dumps(draft.facts, sort_keys=True, ensure_ascii=False, default=str))
        return hit[1]
    return json.dumps(draft.facts, sort_keys=True, ensure_ascii=False, default=str)


def _row(erk: str, draft: NoticeDraft, as_of: date, run_id: str, created_at: str,
         shared: dict[int, tuple[NoticeDraft, str]] | None, nid: str) -> dict:
    return {
        "notice_id": nid,  # hashes the resident's subject key, not the ERK (renkei.linkage.subjects)
        "service": draft.service, "kind": draft.kind, "erk": erk,
        "rule_id": draft.rule_id, "rule_version": draft.rule_version,
        "subject": draft.vaccine_code, "dose_number": draft.dose_number,
        "window_start": draft.window_start, "window_end": draft.window_end,
        "evaluated_on": as_of, "facts": _facts(draft, {} if shared is None else shared),
        "created_run_id": run_id, "created_at": created_at, "replaces": None,
    }


def _insert_new(conn: sa.Connection, rows: list[dict]) -> int:
    """Insert the rows whose notice_id the outbox does not hold yet; returns how many.

    With one id twice in ``rows`` the first is kept (as the batched upsert did). PostgreSQL
    (psycopg 3) gets COPY into a temporary table and one INSERT … SELECT … ON CONFLICT DO
    NOTHING; other engines the batched upsert.
    """
    rows = list({r["notice_id"]: r for r in reversed(rows)}.values())[::-1] if rows else rows
    if not rows:
        return 0
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        from sqlalchemy.dialects.postgresql import insert  # noqa: PLC0415 - the PostgreSQL path only

        tmp = sa.Table("notices_batch", sa.MetaData(), *[sa.Column(c.name, c.type) for c in notices.columns],
                       prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
        tmp.create(conn)
        prep = conn.dialect.identifier_preparer
        cols = ", ".join(prep.quote(c) for c in COLUMNS)
        cur = conn.connection.driver_connection.cursor()
        with cur.copy(f"COPY {prep.format_table(tmp)} ({cols}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row([r[c] for c in COLUMNS])
        cur.close()
        stmt = insert(notices).from_select(COLUMNS, sa.select(*[tmp.c[c] for c in COLUMNS]))
        stmt = stmt.on_conflict_do_nothing(index_elements=["notice_id"])
        return conn.execute(stmt, execution_options={"preserve_rowcount": True}).rowcount
    before = conn.execute(sa.select(sa.func.count()).select_from(notices)).scalar_one()
    for i in range(0, len(rows), 5000):
        upsert(conn, notices, rows[i:i + 5000], update=False)
    return conn.execute(sa.select(sa.func.count()).select_from(notices)).scalar_one() - before


def _events_digest(conn: sa.Connection) -> str:
    """A digest of the events calendar as staged (an event's row_hash covers its content)."""
    ev = staging_table(load_sources()["events"])
    h = hashlib.sha256()
    for event_id, row_hash in conn.execute(sa.select(ev.c.event_id, ev.c.row_hash).order_by(ev.c.event_id)):
        h.update(f"{event_id}|{row_hash}\n".encode())
    return h.hexdigest()


def _scope(conn: sa.Connection, as_of: date, link_seq: int, digest: str, held: set[str]) -> list[str] | None:
    """The residents to evaluate, or None for everyone (see the module docstring)."""
    prev = conn.execute(sa.select(services_runs).order_by(services_runs.c.seq.desc()).limit(1)).first()
    if prev is None or prev.as_of != as_of or prev.events_digest != digest or prev.link_seq > link_seq:
        return None
    b = link_builds.c
    full_builds = conn.execute(sa.select(sa.func.count()).select_from(link_builds).where(
        b.seq > prev.link_seq, b.seq <= link_seq, b.mode != "incremental")).scalar_one()
    if full_builds:
        return None
    c = mart_changes.c
    erks = set(conn.execute(sa.select(c.erk).where(c.build_seq > prev.link_seq, c.build_seq <= link_seq)).scalars())
    released = set(conn.execute(sa.select(services_held.c.erk)).scalars()) - held
    return sorted(erks | released)


def _record(conn: sa.Connection, run_id: str, as_of: date, link_seq: int, digest: str, mode: str,
            touched: int, now: str) -> None:
    prev = conn.execute(sa.select(sa.func.max(services_runs.c.seq))).scalar()
    conn.execute(sa.insert(services_runs).values(
        seq=(prev or 0) + 1, run_id=run_id, as_of=as_of, link_seq=link_seq, events_digest=digest, mode=mode,
        residents_touched=touched, evaluated_at=now))
    # The ERKs the parts held back are the base of the next run's "released" residents.
    conn.execute(services_held.delete())
    pending = services_held_pending.c
    conn.execute(sa.insert(services_held).from_select(
        ["erk"], sa.select(pending.erk).where(pending.run_id == run_id).distinct()))
    # The builds evaluated now are done with; a later run starts after link_seq.
    conn.execute(mart_changes.delete().where(mart_changes.c.build_seq <= link_seq))


def plan_services(warehouse_url: str, as_of: date, run_id: str, parts: int = 1, services: list[str] | None = None,
                  full: bool | None = None) -> dict:
    """Decide what a services run evaluates; returns the plan the parts and the record step share
    (counts and ids only): {"as_of", "run_id", "services", "link_seq", "link_version",
    "events_digest", "mode", "parts", "residents_touched"}.

    A full evaluation on PostgreSQL is split into ``parts`` slots by ERK hash, each evaluated by
    :func:`evaluate_part` on its own (an Airflow mapped task each); an incremental one is one part.
    """
    eng = engine(warehouse_url)
    ensure_schema(eng)
    with eng.begin() as conn:
        link_version = hold_link_key(conn)  # the link-key version this run reads under
    with eng.connect().execution_options(**snapshot_options(eng)) as conn, conn.begin():
        lock_for_read(conn)  # before the snapshot: never a full link build's truncated tables
        link_seq = conn.execute(sa.select(sa.func.max(link_builds.c.seq))).scalar() or 0
        if link_seq and mart_lost(conn):
            raise RenkeiError(
                f"services run {run_id}: the mart is empty although staging holds residents (the warehouse "
                f"restarted since link build {link_seq}; the mart's tables are unlogged): run link_residents, "
                "which rebuilds it in full, then this run again"
            )
        digest = _events_digest(conn)
        scope = (_scope(conn, as_of, link_seq, digest, held_erks(conn))
                 if services is None and full is not True else None)
        if scope is None:
            touched = conn.execute(sa.select(sa.func.count()).select_from(mart_residents)).scalar_one()
        else:
            touched = len(scope)
    # Every ERK the run evaluates has its subject key (notice identity) before a part reads it
    # (an ERK a concurrent build adds gets its notices on the run that build triggers). A link
    # build gives its new ERKs theirs in its own transaction, so this finds some only in a
    # warehouse older than subject keys: checked among the run's residents when it has a scope,
    # not over the whole mart (a million rows of each at city scale, ~0.6 s of both cores).
    with eng.begin() as conn:
        hold_link_key(conn, expect=link_version)
        if scope is None:
            assign_subjects(conn, run_id)
        else:
            for i in range(0, len(scope), CHUNK):
                assign_subjects(conn, run_id, among=scope[i:i + CHUNK])
    eng.dispose()
    split = scope is None and eng.dialect.name == "postgresql"
    return {"as_of": as_of.isoformat(), "run_id": run_id, "services": services, "link_seq": link_seq,
            "link_version": link_version, "events_digest": digest, "mode": FULL if scope is None else INCREMENTAL,
            "parts": max(1, parts) if split else 1, "residents_touched": touched}


def _residents(conn: sa.Connection, erks: set[str]) -> dict[str, sa.RowMapping]:
    """The mart rows of ``erks`` (those the registry still holds), by ERK."""
    m = mart_residents.c
    cols = (m.erk, m.status, m.immunization_history, m.checkups, m.nhi_qualified_on, m.nhi_disqualified_on,
            m.nhi_last_checkup_on)
    keys = sorted(erks)
    out: dict[str, sa.RowMapping] = {}
    for i in range(0, len(keys), CHUNK):
        out.update((r["erk"], r) for r in conn.execute(sa.select(*cols).where(m.erk.in_(keys[i:i + CHUNK]))).mappings())
    return out


class _Lifecycle:
    """Decides the lifecycle transitions of one part's open notices, chunk by chunk
    (renkei.outputs.lifecycle; see the module docstring)."""

    def __init__(self, as_of: date, services: list[str], held: set[str]) -> None:
        self.as_of, self.services, self.held = as_of, services, held
        self.counted = {s.rule_id: s.counts for s in load_immunization_rules().series}
        self._calendar: dict[str, Event] | None = None

    def events(self, conn: sa.Connection) -> dict[str, Event]:
        if self._calendar is None:
            self._calendar = {e.event_id: e for e in _events(conn)}
        return self._calendar

    def decide(self, conn: sa.Connection, erks: Erks, open_ids: set[str], drafted: set[str],
               fresh: list[dict]) -> list[lifecycle.Transition]:
        """The transitions of the open notices of ``erks``: ``open_ids`` holds those of the
        drafted services (window open, not events), ``drafted`` every id the rules gave now,
        ``fresh`` the rows of the notices new in this pass. Only the few notices whose state
        moves are read in full."""
        among = _among(notices.c.erk, erks)
        states = lifecycle.latest_states(conn, lifecycle.open_clause(self.as_of, self.services), among)
        # Drafted services: current = drafted again (sets, not rows: a city's open notices).
        moving = {i for i in open_ids - drafted if states.get(i, lifecycle.PENDING) in lifecycle.LIVE}
        moving |= {i for i, state in states.items() if state in lifecycle.CLOSED and i in drafted and i in open_ids}
        found = [o for o in lifecycle.by_id(conn, moving, states) if o.erk not in self.held]
        event_lapse: dict[str, str] = {}
        if "event" in self.services:  # never drafted twice (event_drafts skips told events)
            calendar_now, subs = self.events(conn), _subscriptions(conn, erks)
            for o in lifecycle.open_notices(conn, lifecycle.open_clause(self.as_of, ["event"]), among, states=states):
                if o.erk in self.held:
                    continue
                lapse = event_notice_lapse(subs.get(o.erk, []), calendar_now.get(o.subject), self.as_of, o.window_end)
                if lapse is not None:
                    event_lapse[o.notice_id] = lapse
                if (o.state in lifecycle.LIVE) == (lapse is not None):
                    found.append(o)
        if not found:
            return []
        lapsed = [o for o in found if o.state in lifecycle.LIVE]
        successors = self._successors(conn, lapsed, drafted, fresh)
        residents = _residents(conn, {o.erk for o in lapsed})

        def successor(o: lifecycle.OpenNotice) -> str | None:
            ids = sorted(i for i in successors.get(o.key, ()) if i != o.notice_id)
            return ids[0] if ids else None

        def reason(o: lifecycle.OpenNotice) -> str:
            return lifecycle.withdrawal_reason(o, residents.get(o.erk), self.as_of, self.counted.get(o.rule_id, ()),
                                               event_lapse.get(o.notice_id))

        # Every notice found moves: a live one lapsed, a closed one is current again.
        return lifecycle.decide(found, lambda o: o.state in lifecycle.CLOSED, successor, reason)

    @staticmethod
    def _successors(conn: sa.Connection, lapsed: list[lifecycle.OpenNotice], drafted: set[str],
                    fresh: list[dict]) -> dict[tuple, list[str]]:
        """The notices drafted now (in the outbox or new) about the residents, services and
        subjects of ``lapsed``: what each can be superseded by."""
        wanted = {o.key for o in lapsed}
        out: dict[tuple, list[str]] = defaultdict(list)
        n = notices.c
        erks = sorted({o.erk for o in lapsed})
        for i in range(0, len(erks), CHUNK):
            for nid, *key in conn.execute(sa.select(n.notice_id, n.erk, n.service, n.subject)
                                          .where(n.erk.in_(erks[i:i + CHUNK]))):
                if nid in drafted and tuple(key) in wanted:
                    out[tuple(key)].append(nid)
        for r in fresh:
            key = (r["erk"], r["service"], r["subject"])
            if key in wanted:
                out[key].append(r["notice_id"])
        return out


def evaluate_part(warehouse_url: str, plan: dict, index: int = 0) -> dict:
    """Evaluate the rules for one part of a plan, write its new notices and the lifecycle
    transitions of its open ones; returns counts {"part", "open", "new", "withdrawn",
    "superseded", "reinstated", "held_erks", "by_service_kind"}.

    Re-running a part writes nothing twice (notice ids are deterministic, the outbox ignores
    ids it holds, and a transition is only appended from the state it was decided from).
    """
    eng = engine(warehouse_url)
    as_of, run_id = date.fromisoformat(plan["as_of"]), plan["run_id"]
    part = Part(index, plan["parts"])
    now = format_timestamp(datetime.now(timezone.utc))
    services = plan["services"] or list(SERVICES)
    rows: list[dict] = []
    transitions: list[lifecycle.Transition] = []
    # Read in one snapshot on PostgreSQL; write in a transaction of its own (on SQLite a read
    # transaction upgraded to a writer fails if another writer came in between).
    with eng.connect().execution_options(**snapshot_options(eng)) as conn, conn.begin():
        lock_for_read(conn)  # before the snapshot (as the plan): the mart of one whole build
        bulk.tune(conn)
        if plan["link_seq"] and mart_lost(conn):  # an emptied mart would withdraw every open notice
            raise RenkeiError(
                f"services run {run_id}, part {index}: the mart is empty although staging holds residents "
                "(the warehouse restarted since the plan?): run link_residents, then this run again")
        held = held_erks(conn, part.clause(review_queue.c.erk))
        awaiting = awaiting_first_load(conn, services)
        services = [s for s in services if s not in awaiting]  # their open notices are left alone
        scope = None
        if plan["mode"] == INCREMENTAL:
            scope = _scope(conn, as_of, plan["link_seq"], plan["events_digest"], held)
        # None here (the base changed since the plan): evaluating the whole part is always safe.
        chunks: list[Erks] = [part] if scope is None else [scope[i:i + CHUNK] for i in range(0, len(scope), CHUNK)]
        shared: dict[int, tuple[NoticeDraft, str]] = {}
        by_kind: Counter[str] = Counter()
        life = _Lifecycle(as_of, services, held)
        for erks in chunks:
            # The outbox ignores ids it holds: rows are only made for the others (the same
            # outcome, without serialising and shipping every open notice again each run).
            n = notices.c
            seen: set[str] = set()
            open_ids: set[str] = set()  # of the drafted services: the lifecycle's base
            is_open = sa.case((lifecycle.open_clause(as_of, [s for s in services if s != "event"]), 1), else_=0)
            for nid, still in conn.execute(sa.select(n.notice_id, is_open).where(_among(n.erk, erks)),
                                           execution_options={"yield_per": FETCH}):
                seen.add(nid)
                if still:
                    open_ids.add(nid)
            subject_of = dict(conn.execute(sa.select(subjects.c.erk, subjects.c.subject_key)
                                           .where(_among(subjects.c.erk, erks)),
                                           execution_options={"yield_per": FETCH}).all())
            drafted: set[str] = set()
            fresh: list[dict] = []
            for name in services:
                for erk, d in SERVICES[name](conn, as_of, erks):
                    if erk in held or erk not in subject_of:
                        continue
                    by_kind[f"{d.service}/{d.kind}"] += 1
                    nid = notice_id(d.rule_id, subject_of[erk], d.period_key, d.kind)
                    drafted.add(nid)
                    if nid not in seen:
                        seen.add(nid)
                        fresh.append(_row(erk, d, as_of, run_id, now, shared, nid))
            transitions += life.decide(conn, erks, open_ids, drafted, fresh)
            rows += fresh
    with eng.begin() as conn:
        hold_link_key(conn, expect=plan["link_version"])
        moved = lifecycle.append(conn, transitions, run_id, now)
        new = _insert_new(conn, _with_replaces(rows, moved))
        pending = services_held_pending.c
        conn.execute(services_held_pending.delete().where(pending.run_id == run_id, part.clause(pending.erk)))
        if held:  # all the city's residents while their reviews wait: COPY, not one INSERT per row
            bulk.insert_rows(conn, services_held_pending, ["run_id", "erk"], [(run_id, e) for e in sorted(held)])
    eng.dispose()
    counts = {"part": index, "open": sum(by_kind.values()), "new": new, **lifecycle.count(moved),
              "held_erks": len(held), "by_service_kind": dict(sorted(by_kind.items()))}
    if awaiting:
        counts["awaiting_first_load"] = awaiting
    log.info("proactive_services on %s, part %d of %d: %s", as_of, index + 1, part.count, counts)
    return counts


def _with_replaces(rows: list[dict], transitions: list[lifecycle.Transition]) -> list[dict]:
    """The new rows, each naming the notice it supersedes (the first by id, if several)."""
    replaced: dict[str, str] = {}
    for t in transitions:
        if t.superseded_by is not None:
            replaced.setdefault(t.superseded_by, t.notice_id)
    if replaced:
        for r in rows:
            if r["notice_id"] in replaced:
                r["replaces"] = replaced[r["notice_id"]]
    return rows


def record_services(warehouse_url: str, plan: dict, results: list[dict]) -> dict:
    """Record a services run whose every part succeeded (the base of the next incremental run);
    returns the run's counts {"open", "new", "withdrawn", "superseded", "reinstated",
    "held_erks", "by_service_kind", "mode", "residents_touched", "parts"}."""
    done = sorted(r["part"] for r in results)
    if done != list(range(plan["parts"])):
        raise RenkeiError(
            f"services run {plan['run_id']}: parts {done} reported, {plan['parts']} planned; "
            "re-run the missing evaluate parts before recording the run"
        )
    eng = engine(warehouse_url)
    now = format_timestamp(datetime.now(timezone.utc))
    by_kind: Counter[str] = Counter()
    for r in results:
        by_kind.update(r["by_service_kind"])
    with eng.begin() as conn:
        hold_link_key(conn, expect=plan["link_version"])
        if plan["services"] is None:
            _record(conn, plan["run_id"], date.fromisoformat(plan["as_of"]), plan["link_seq"], plan["events_digest"],
                    plan["mode"], plan["residents_touched"], now)
        conn.execute(services_held_pending.delete().where(services_held_pending.c.run_id == plan["run_id"]))
    eng.dispose()
    counts = {"open": sum(r["open"] for r in results), "new": sum(r["new"] for r in results),
              **{k: sum(r.get(k, 0) for r in results) for k in ("withdrawn", "superseded", "reinstated")},
              "held_erks": sum(r["held_erks"] for r in results), "by_service_kind": dict(sorted(by_kind.items())),
              "mode": plan["mode"], "residents_touched": plan["residents_touched"], "parts": plan["parts"]}
    log.info("proactive_services on %s: %s", plan["as_of"], counts)
    return counts


def run_services(warehouse_url: str, as_of: date, run_id: str, services: list[str] | None = None,
                 full: bool | None = None, parts: int = 1, pool=None) -> dict:  # noqa: ANN001 - an Executor
    """Evaluate the rules on ``as_of`` and write new notices; returns counts.

    {"open": notices open on the date for the residents evaluated, "new": inserted now,
     "withdrawn", "superseded", "reinstated": lifecycle transitions appended now,
     "held_erks": ERKs held back by the audit, "by_service_kind": {"immunization/due": n, …},
     "mode": "full" | "incremental", "residents_touched": residents evaluated, "parts": n}

    A run of a subset of ``services`` or with ``full=True`` evaluates everyone; only runs of
    every service are recorded as the base of the next incremental run. ``parts`` > 1 splits a
    full run on PostgreSQL (:func:`plan_services`), evaluated on ``pool`` (an Executor) when given.
    """
    plan = plan_services(warehouse_url, as_of, run_id, parts, services, full)
    if pool is not None and plan["parts"] > 1:
        results = list(pool.map(evaluate_part, [warehouse_url] * plan["parts"], [plan] * plan["parts"],
                                range(plan["parts"])))
    else:
        results = [evaluate_part(warehouse_url, plan, i) for i in range(plan["parts"])]
    return record_services(warehouse_url, plan, results)
