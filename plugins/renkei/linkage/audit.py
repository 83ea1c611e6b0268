"""The integrity audit (紐付け点検): each department's copy of a resident against the registry's.

For every record of a department that keeps its own copy of the basic attributes (immunization,
child_health, nhi), the copy is compared with the registry row of the same ERK:

| finding | reason | severity |
|---|---|---|
| no registry row for the ERK | ``not_in_registry`` | hold |
| birth date differs | ``birth_date_mismatch`` | hold |
| sex differs | ``sex_mismatch`` | hold |
| name digest differs (both present) | ``name_mismatch`` | review |
| address digest differs (both present) | ``address_mismatch`` | review |

An address that differs while the build date lies within ``move_grace_days`` after the
registry's ``status_date`` (a recorded move the department has not caught up with) is
*expected*: counted, not queued. A value missing on either side is not compared.

Findings go to ``review_queue`` idempotently: a finding seen again keeps its row and decision;
a finding no longer seen becomes inactive; a decided item whose department row has changed
since the decision (``row_hash``) is re-opened as pending. Active ``hold`` items that are
pending or rejected keep their ERK out of the services (renkei.linkage.review.held_erks).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.warehouse import review_queue, staging_key, staging_table

AUDITED_SOURCES = ("immunization", "child_health", "nhi")
HOLD, REVIEW = "hold", "review"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
SEVERITY = {
    "not_in_registry": HOLD, "birth_date_mismatch": HOLD, "sex_mismatch": HOLD,
    "name_mismatch": REVIEW, "address_mismatch": REVIEW,
}
DEFAULT_MOVE_GRACE_DAYS = 90
ENV_MOVE_GRACE_DAYS = "RENKEI_AUDIT_MOVE_GRACE_DAYS"


def move_grace_days(env: dict[str, str] | None = None) -> int:
    """Days after a recorded move in which a department's old address is expected (env override)."""
    text = (os.environ if env is None else env).get(ENV_MOVE_GRACE_DAYS, "")
    if not text:
        return DEFAULT_MOVE_GRACE_DAYS
    if not text.isdigit():
        from renkei.errors import ConfigError  # noqa: PLC0415

        raise ConfigError(f"{ENV_MOVE_GRACE_DAYS}={text!r} is not a number of days: set a whole number such as 90")
    return int(text)


def item_id(source: str, record_key: str, reason: str) -> str:
    """The deterministic id of a queue item (stable across rebuilds and engines)."""
    return hashlib.sha256(f"{source}|{record_key}|{reason}".encode()).hexdigest()[:16]


def _differs(a: sa.ColumnElement, b: sa.ColumnElement) -> sa.ColumnElement:
    return sa.and_(a.is_not(None), b.is_not(None), a != b)


LINK_FLAG_REASONS = ("not_in_registry", "birth_date_mismatch", "sex_mismatch")  # also kept in link_flags


@dataclass
class Findings:
    """What one pass over the department copies found (see :func:`find`)."""

    found: dict[str, dict]  # by item id: source, record_key, reason, erk, severity, row_hash
    expected: int  # address differences explained by a recent move
    flags: list[dict]  # the link_flags rows: source, record_key, reason, erk (LINK_FLAG_REASONS)


def find(conn: sa.Connection, as_of: date, grace_days: int, scope: sa.Select | None = None) -> Findings:
    """Every finding now (of the records of the ERKs in ``scope``, a SELECT of ERKs; None: all).

    One outer join per source gives both the audit's findings and the mart's ``link_flags``
    (a birth date or sex that differs, or no registry row: the same conditions).
    """
    srcs = load_sources()
    reg = staging_table(srcs["registry"])
    out = Findings({}, 0, [])
    for name in AUDITED_SOURCES:
        st = staging_table(srcs[name])
        key = st.c[staging_key(srcs[name])]
        q = (
            sa.select(
                key.label("record_key"), st.c.erk, st.c.row_hash, reg.c.erk.label("reg_erk"), reg.c.status_date,
                *[_differs(st.c[a], reg.c[a]).label(a) for a in ("birth_date", "sex", "name_digest", "address_digest")],
            )
            .select_from(st).outerjoin(reg, reg.c.erk == st.c.erk)
            .where(st.c.erk.is_not(None), sa.true() if scope is None else st.c.erk.in_(scope), sa.or_(
                reg.c.erk.is_(None),
                *[_differs(st.c[a], reg.c[a]) for a in ("birth_date", "sex", "name_digest", "address_digest")],
            ))
        )
        for r in conn.execute(q):
            reasons = []
            if r.reg_erk is None:
                reasons.append("not_in_registry")
            else:
                reasons += [f"{a}_mismatch" for a in ("birth_date", "sex") if r._mapping[a]]
                if r.name_digest:
                    reasons.append("name_mismatch")
                if r.address_digest:
                    moved = r.status_date is not None and r.status_date <= as_of <= r.status_date + timedelta(days=grace_days)
                    if moved:
                        out.expected += 1
                    else:
                        reasons.append("address_mismatch")
            for reason in reasons:
                out.found[item_id(name, r.record_key, reason)] = {
                    "source": name, "record_key": r.record_key, "reason": reason, "erk": r.erk,
                    "severity": SEVERITY[reason], "row_hash": r.row_hash,
                }
                if reason in LINK_FLAG_REASONS:
                    out.flags.append({"source": name, "record_key": r.record_key, "reason": reason, "erk": r.erk})
    return out


def _queued(conn: sa.Connection, scope: sa.Select | None) -> dict[str, sa.Row]:
    """Queue items by id: all of them, or those about the records of the ERKs in ``scope``.

    By record, not by the item's ``erk``: an item keeps the ERK it was first seen under, and a
    record that moved since is judged where it is now — as a full audit would.
    """
    if scope is None:
        return {r.item_id: r for r in conn.execute(sa.select(review_queue))}
    srcs = load_sources()
    q = review_queue.c
    known: dict[str, sa.Row] = {}
    for name in AUDITED_SOURCES:
        st = staging_table(srcs[name])
        records = sa.select(st.c[staging_key(srcs[name])]).where(st.c.erk.in_(scope))
        for r in conn.execute(sa.select(review_queue).where(q.source == name, q.record_key.in_(records))):
            known[r.item_id] = r
    return known


def audit_links(conn: sa.Connection, as_of: date, run_id: str, grace_days: int | None = None,
                scope: sa.Select | None = None, findings: Findings | None = None) -> dict:
    """Compare department copies with the registry and update the review queue; returns counts.

    ``scope`` (a SELECT of ERKs) limits the audit to the records of those ERKs — an incremental
    build's residents; nothing about other records can have changed. None audits everything.
    ``findings`` counts the findings of the audited records; the other counts are the queue's.
    """
    grace = move_grace_days() if grace_days is None else grace_days
    if findings is None:
        findings = find(conn, as_of, grace, scope)
    found, expected = findings.found, findings.expected
    q = review_queue.c
    known = _queued(conn, scope)
    # An item keeps its id when a link-key rotation re-seals its record_key (an nhi ERK).
    natural = {(r.source, r.record_key, r.reason): iid for iid, r in known.items()}
    found = {natural.get((f["source"], f["record_key"], f["reason"]), iid): f for iid, f in found.items()}
    new, changed = [], []
    reopened = resolved = 0
    for iid, f in found.items():
        old = known.get(iid)
        if old is None:
            new.append({"item_id": iid, **f, "state": PENDING, "active": True, "first_seen_run": run_id})
            continue
        update = {}
        if not old.active:
            update["active"] = True
        if old.row_hash != f["row_hash"]:
            update["row_hash"] = f["row_hash"]
        if old.state != PENDING and old.decided_row_hash != f["row_hash"]:
            # The department changed its record since the decision: the decision no longer covers it.
            update.update(state=PENDING, decided_by=None, decided_at=None, comment=None, decided_row_hash=None)
            reopened += 1
        if update:
            changed.append((iid, update))
    for iid, old in known.items():
        if old.active and iid not in found and old.source in AUDITED_SOURCES:
            changed.append((iid, {"active": False}))
            resolved += 1
    if new:
        conn.execute(sa.insert(review_queue), new)
    for iid, update in changed:
        conn.execute(sa.update(review_queue).where(q.item_id == iid).values(**update))

    active = q.active.is_(True)
    by_reason = dict(conn.execute(sa.select(q.reason, sa.func.count()).where(active).group_by(q.reason)).all())
    by_state = dict(conn.execute(sa.select(q.state, sa.func.count()).where(active).group_by(q.state)).all())
    return {
        "findings": len(found), "new": len(new), "reopened": reopened, "resolved": resolved,
        "expected_address_changes": expected, "by_reason": by_reason, "by_state": by_state,
        "held_erks": conn.execute(sa.select(sa.func.count(sa.distinct(q.erk))).where(held_condition())).scalar_one(),
    }


def held_condition() -> sa.ColumnElement:
    """Queue rows that hold their ERK back: active ``hold`` items still pending, or rejected."""
    q = review_queue.c
    return sa.and_(q.active.is_(True), q.severity == HOLD, q.state.in_((PENDING, REJECTED)))


def summary(conn: sa.Connection, seeded: set[tuple[str, str]] | None) -> dict:
    """The report's ``integrity_audit``: flagged records, and against seeded mislinks when known.

    ``flagged`` counts records (source, record_key) with an active item of any reason;
    precision = seeded among flagged / flagged, recall = seeded found / seeded.
    """
    q = review_queue.c
    flagged = {(s, k) for s, k in conn.execute(sa.select(q.source, q.record_key).where(q.active.is_(True)).distinct())}
    rows = conn.execute(sa.select(q.reason, q.state).where(q.active.is_(True))).all()
    out: dict = {
        "flagged": len(flagged),
        "by_reason": dict(sorted(Counter(r for r, _ in rows).items())),
        "by_state": dict(sorted(Counter(s for _, s in rows).items())),
        "held_erks": conn.execute(sa.select(sa.func.count(sa.distinct(q.erk))).where(held_condition())).scalar_one(),
        "seeded_mislinks": None, "seeded_found": None, "precision": None, "recall": None,
    }
    if seeded is not None:
        hit = flagged & seeded
        out.update(
            seeded_mislinks=len(seeded), seeded_found=len(hit),
            precision=round(len(hit) / len(flagged), 4) if flagged else None,
            recall=round(len(hit) / len(seeded), 4) if seeded else None,
        )
    return out


def seeded_mislinks(raw_dir: Path, ring) -> set[tuple[str, str]] | None:  # noqa: ANN001 - KeyRing
    """The (source, record_key) of each ``mislink`` in a synthetic city's manifest.json, or None.

    record_key is the record_id where the source has one, else the ERK sealed from the raw
    row's resident code (needs the keyring; None without it).
    """
    import json  # noqa: PLC0415

    from renkei.keys.adapter import _iter_raw, raw_location  # noqa: PLC0415

    path = Path(raw_dir) / "manifest.json"
    if ring is None or not path.exists():
        return None
    wanted: dict[str, set[int]] = {}
    for d in json.loads(path.read_text(encoding="utf-8")).get("defects", []):
        if d.get("defect") == "mislink":
            wanted.setdefault(d["source"], set()).add(int(d["row"]))
    srcs = load_sources()
    keys: set[tuple[str, str]] = set()
    for name, rows in wanted.items():
        src, loc = srcs[name], raw_location(Path(raw_dir), name)
        if loc is None:
            continue
        for idx, raw in _iter_raw(src, loc):
            if idx in rows and raw is not None:
                if src.key == "dept_pseudonym":
                    keys.add((name, ring.seal("link", str(raw["resident_code"]).strip())))
                else:
                    keys.add((name, str(raw[src.key]).strip()))
    return keys
