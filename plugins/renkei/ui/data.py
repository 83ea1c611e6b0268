"""What the pages show, read from the warehouse: pseudonymous fields and counts only.

A notice's health facts (and its window, derived from them) only for a user with the
health-facts permission (``with_facts``, see renkei.ui.auth.sees_health_facts).

Review decisions are only *requested* here (``renkei.linkage.review.request_decision``): this
process (the api-server) holds no keyring. The apply_review_decisions Dag applies them with the
same code as `renkei review approve|reject`: queue row and audit-trail entry in one transaction.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa

from renkei.errors import RenkeiError
from renkei.settings import Settings
from renkei.sources.values import JST, format_timestamp
from renkei.warehouse import (engine, ensure_schema, ingest_runs, link_builds, notices, quarantine, review_queue,
                              watermarks)

PAGE_SIZE = 50


def warehouse_url() -> str:
    return Settings.from_env().warehouse_url


@lru_cache(maxsize=4)
def _engine(url: str) -> sa.Engine:
    eng = engine(url)
    ensure_schema(eng)
    return eng


def _rows(query) -> list[dict]:
    with _engine(warehouse_url()).connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def short(value: str | None, width: int = 24) -> str:
    """A pseudonym cut to ``width`` characters: enough to tell rows apart on a page."""
    if value is None:
        return ""
    return value if len(value) <= width else value[: width - 1] + "…"


def run_report() -> dict:
    """Per source: the latest run and its counts, the watermark, and the last runs."""
    r = ingest_runs.c
    latest = sa.select(r.source, sa.func.max(r.updated_at).label("at")).group_by(r.source).subquery()
    last = sa.select(ingest_runs).join(latest, sa.and_(r.source == latest.c.source, r.updated_at == latest.c.at))
    totals = (sa.select(r.source, sa.func.count().label("runs"), sa.func.sum(r.read).label("read"),
                        sa.func.sum(r.loaded).label("loaded"), sa.func.sum(r.quarantined).label("quarantined"))
              .group_by(r.source))
    marks = {m["source"]: m for m in _rows(sa.select(watermarks))}
    by_source = {t["source"]: {**t, "last": None, "watermark": marks.get(t["source"])} for t in _rows(totals)}
    for row in _rows(last.order_by(r.source)):
        by_source[row["source"]]["last"] = row
    recent = _rows(sa.select(ingest_runs).order_by(r.updated_at.desc(), r.source).limit(PAGE_SIZE))
    return {"sources": [by_source[k] for k in sorted(by_source)], "recent": recent}


def quarantine_page(source: str | None, reason: str | None, page: int) -> dict:
    """Counts by source and reason, and one page of quarantined rows (row number, key, reason)."""
    q = quarantine.c
    counts = _rows(sa.select(q.source, q.reason, sa.func.count().label("rows"))
                   .group_by(q.source, q.reason).order_by(q.source, sa.func.count().desc(), q.reason))
    where = [c for c in ((q.source == source) if source else None, (q.reason == reason) if reason else None)
             if c is not None]
    total = _rows(sa.select(sa.func.count().label("n")).select_from(quarantine).where(*where))[0]["n"]
    rows = _rows(sa.select(q.source, q.source_row, q.record_key, q.reason, q.first_run_id, q.last_run_id,
                           q.quarantined_at).where(*where)
                 .order_by(q.source, q.source_row, q.row_hash).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE))
    for row in rows:
        row["record_key"] = short(row["record_key"])
    return {"counts": counts, "rows": rows, "total": total, "page": page,
            "pages": max(1, -(-total // PAGE_SIZE)), "source": source, "reason": reason,
            "sources": sorted({c["source"] for c in counts})}


def review_items(include_resolved: bool) -> list[dict]:
    """Queue items, each with ``request``: its latest decision request while that is pending
    application, or was refused and not decided since (else None)."""
    from renkei.linkage.review import REQUEST_APPLIED, REQUEST_REFUSED, list_items, list_requests  # noqa: PLC0415

    url = warehouse_url()
    latest = {}
    for req in list_requests(url):
        req.pop("row_hash", None)
        latest[req["item_id"]] = req
    items = list_items(url, include_resolved=include_resolved)
    for it in items:
        it.pop("erk", None)  # the page never needs the join key
        it["record_key"] = short(it["record_key"])
        req = latest.get(it["item_id"])
        if req is not None and (req["state"] == REQUEST_APPLIED or (
                req["state"] == REQUEST_REFUSED and (it["decided_at"] or "") > (req["applied_at"] or ""))):
            req = None  # applied, or refused and decided again since
        it["request"] = req
    return items


def request_decision(item_id: str, decision: str, reviewer: str, comment: str) -> dict:
    """Record an approve/reject request (``renkei.linkage.review.request_decision``): no keyring
    here; the apply_review_decisions Dag applies it (queue + audit trail in one transaction)."""
    from renkei.linkage.review import DECISIONS, request_decision as review_request  # noqa: PLC0415

    if decision not in DECISIONS:
        raise RenkeiError(f"review item {item_id}: unknown decision {decision!r}: use {' or '.join(DECISIONS)}")
    return review_request(warehouse_url(), item_id, decision, reviewer, comment)


def notices_page(service: str | None, kind: str | None, page: int, with_windows: bool = False) -> dict:
    """Counts by service and kind and one page of notices; their windows (derived from birth and
    check-up dates) only ``with_windows``."""
    n = notices.c
    counts = _rows(sa.select(n.service, n.kind, sa.func.count().label("notices"))
                   .group_by(n.service, n.kind).order_by(n.service, n.kind))
    where = [c for c in ((n.service == service) if service else None, (n.kind == kind) if kind else None)
             if c is not None]
    total = _rows(sa.select(sa.func.count().label("n")).select_from(notices).where(*where))[0]["n"]
    rows = _rows(sa.select(n.notice_id, n.service, n.kind, n.subject, n.dose_number, n.window_start,
                           n.window_end, n.evaluated_on, n.rule_id).where(*where)
                 .order_by(n.evaluated_on.desc(), n.service, n.window_end, n.notice_id)
                 .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE))
    if not with_windows:
        for row in rows:
            row["window_start"] = row["window_end"] = None
    return {"counts": counts, "rows": rows, "total": total, "page": page, "with_windows": with_windows,
            "pages": max(1, -(-total // PAGE_SIZE)), "service": service, "kind": kind}


def explain(notice_id: str, with_facts: bool = False) -> dict:
    """What `renkei explain` shows: rule, window, the facts the rule used, the lifecycle
    (state and transitions), delivery receipts. Without ``with_facts`` (the health-facts
    permission) no facts and no window: keys, counts, states and reasons only."""
    from renkei.delivery import receipts  # noqa: PLC0415
    from renkei.delivery.payload import facts_of  # noqa: PLC0415
    from renkei.outputs import lifecycle  # noqa: PLC0415

    found = _rows(sa.select(notices).where(notices.c.notice_id == notice_id))
    if not found:
        raise RenkeiError(f"notice {notice_id} is not in the warehouse: pick one from the notices list")
    n = found[0]
    n.pop("erk", None)
    facts = facts_of(n) if with_facts else None
    n.pop("facts", None)  # the raw JSON: only ever as ``facts`` below
    if not with_facts:
        n["window_start"] = n["window_end"] = None
    with _engine(warehouse_url()).connect() as conn:
        events = lifecycle.history(conn, notice_id)
    out = {"notice": n, "facts": facts, "with_facts": with_facts, "receipts": None, "lifecycle": events,
           "state": events[-1]["state"] if events else lifecycle.PENDING}
    delivery_url = os.environ.get("RENKEI_DELIVERY_URL")
    if not delivery_url and os.environ.get("RENKEI_HOME"):
        delivery_url = f"sqlite:///{Path(os.environ['RENKEI_HOME']).resolve() / 'delivery.db'}"
    if delivery_url and receipts.exists(delivery_url):
        dl = engine(delivery_url)
        try:
            with dl.connect() as conn:
                has = sa.inspect(conn).has_table("delivery_receipts")
                out["receipts"] = receipts.receipts_of(conn, [notice_id]) if has else []
        finally:
            dl.dispose()
    return out


# --- Trends (the trends page, and the small charts on the runs, notices and review pages) -------

TREND_RUNS = 20  # finished ingest runs per source
TREND_DAYS = 30  # days of notices, today included
AGE_BUCKETS = ("<1", "1-7", "8-30", ">30", "unknown")  # whole days since a review item was first seen
_AGE_LIMITS = ((1, "<1"), (8, "1-7"), (31, "8-30"))  # (first age in days not in the bucket, bucket)


def run_trend(conn: sa.Connection, last_runs: int = TREND_RUNS) -> dict[str, list[dict]]:
    """Per source, its last ``last_runs`` finished ingest runs, oldest first: ``read``,
    ``quarantined`` (for a halted run, the rows that failed the contract: nothing was loaded),
    ``rate`` (quarantined / read; None when the run read nothing) and ``halted``."""
    r = ingest_runs.c
    ranked = (sa.select(r.source, r.run_id, r.updated_at, r.state, r.read, r.failed, r.quarantined,
                        sa.func.row_number().over(partition_by=r.source,
                                                  order_by=(r.updated_at.desc(), r.run_id.desc())).label("n"))
              .where(r.state.in_(("loaded", "failed"))).subquery())
    out: dict[str, list[dict]] = {}
    for row in conn.execute(sa.select(ranked).where(ranked.c.n <= last_runs)
                            .order_by(ranked.c.source, ranked.c.updated_at, ranked.c.run_id)).mappings():
        halted = row["state"] == "failed"
        rejected = row["failed"] if halted else row["quarantined"]
        out.setdefault(row["source"], []).append({
            "run_id": row["run_id"], "updated_at": row["updated_at"], "read": row["read"],
            "quarantined": rejected, "rate": rejected / row["read"] if row["read"] else None, "halted": halted})
    return out


def notices_per_day(conn: sa.Connection, today: date, days: int = TREND_DAYS) -> dict:
    """Notices created per service per day (JST) over the ``days`` days up to ``today``:
    ``{"days": [iso date, …], "services": {service: [count per day]}}``, zero-filled."""
    n = notices.c
    first = today - timedelta(days=days - 1)
    day = sa.func.substr(n.created_at, 1, 10)  # canonical JST text: its date is the JST date
    inner = (sa.select(n.service, day.label("day"))
             .where(n.created_at >= first.isoformat(), n.created_at < (today + timedelta(days=1)).isoformat())
             .subquery())
    counts = conn.execute(sa.select(inner.c.service, inner.c.day, sa.func.count())
                          .group_by(inner.c.service, inner.c.day)).all()
    labels = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    index = {d: i for i, d in enumerate(labels)}
    services: dict[str, list[int]] = {}
    for service, d, count in sorted(counts):
        services.setdefault(service, [0] * days)[index[d]] = count
    return {"days": labels, "services": services}


def review_by_age(conn: sa.Connection, now: datetime) -> dict:
    """Active review items by state and age (whole days since the link build that first found
    them, ``AGE_BUCKETS``; "unknown" when that build is not recorded):
    ``{"buckets": AGE_BUCKETS, "states": {state: [count per bucket]}}``."""
    q, b = review_queue.c, link_builds.c
    seen = sa.select(b.run_id, sa.func.min(b.built_at).label("at")).group_by(b.run_id).subquery()
    # built_at is canonical JST text, so comparing with the boundaries as text compares times
    bucket = sa.case((seen.c.at.is_(None), "unknown"),
                     *((seen.c.at > format_timestamp(now - timedelta(days=d)), label) for d, label in _AGE_LIMITS),
                     else_=">30")
    inner = (sa.select(q.state, bucket.label("bucket"))
             .select_from(review_queue.outerjoin(seen, seen.c.run_id == q.first_seen_run))
             .where(q.active.is_(True)).subquery())
    states: dict[str, list[int]] = {}
    for state, label, count in conn.execute(sa.select(inner.c.state, inner.c.bucket, sa.func.count())
                                            .group_by(inner.c.state, inner.c.bucket)).all():
        states.setdefault(state, [0] * len(AGE_BUCKETS))[AGE_BUCKETS.index(label)] = count
    return {"buckets": AGE_BUCKETS, "states": dict(sorted(states.items()))}


TRENDS = ("runs", "notices", "review")


def trends(now: datetime | None = None, last_runs: int = TREND_RUNS, days: int = TREND_DAYS,
           parts: tuple[str, ...] = TRENDS) -> dict:
    """The trends named in ``parts`` (all three by default) at ``now`` (default: the clock),
    read in one connection."""
    now = (now or datetime.now(timezone.utc)).astimezone(JST)
    out: dict = {"last_runs": last_runs, "days": days}
    with _engine(warehouse_url()).connect() as conn:
        if "runs" in parts:
            out["runs"] = run_trend(conn, last_runs)
        if "notices" in parts:
            out["notices"] = notices_per_day(conn, now.date(), days)
        if "review" in parts:
            out["review"] = review_by_age(conn, now)
    return out


def data_docs_page(source: str, run_id: str | None = None) -> str | None:
    """The site path of a source's GX Data Docs page for this ingest run (None: its latest), if
    one was built into the local store (renkei.quality.datadocs); the app serves it under /datadocs/."""
    from renkei.quality import datadocs  # noqa: PLC0415 - stdlib only until a page is built

    return datadocs.page_for(source, run_id)


def data_docs_file(path: str) -> Path | None:
    """The file at ``path`` inside the local Data Docs site, or None (absent, a folder, outside it)."""
    from renkei.quality import datadocs  # noqa: PLC0415

    site = datadocs.local_site(datadocs.location())
    if site is None:
        return None
    root = site.resolve()
    found = (root / path).resolve()
    return found if found.is_relative_to(root) and found.is_file() else None
