"""The delivery database: one receipt per delivery attempt of a notice (delivery_receipts).

It lives in its own database (RENKEI_DELIVERY_URL), inside the delivery boundary, and holds no
contact: only the notice id, the attempt number, the outcome, the channel and the time. A
partial unique index allows one `sent` receipt per notice on every engine, so a notice is never
recorded as sent twice.

Final outcomes: `sent`; `suppressed` for any reason but quiet_hours (deferred) and withdrawn;
`failed` ``max_attempts`` times. Everything else is pending and comes back on a later run.
suppressed/withdrawn is final while the notice stays withdrawn or superseded in the warehouse
(renkei.outputs.lifecycle): a notice reinstated later may be delivered after all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from renkei.sources.values import format_timestamp, parse_timestamp

SENT, FAILED, SUPPRESSED = "sent", "failed", "suppressed"
WITHDRAWN = "withdrawn"  # the suppression of a notice withdrawn or superseded before it was sent
DEFERRED_REASONS = frozenset({"quiet_hours"})

metadata = sa.MetaData()

delivery_receipts = sa.Table(
    "delivery_receipts", metadata,
    sa.Column("notice_id", sa.String(64), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),  # 1, 2, … per notice
    sa.Column("status", sa.String(16), nullable=False),  # sent | failed | suppressed
    sa.Column("reason", sa.String(64)),  # opted_out | no_verified_contact | quiet_hours | withdrawn | … | SMTP error class
    sa.Column("channel", sa.String(16)),
    sa.Column("at", sa.String(32), nullable=False),  # canonical ISO text in JST
    sa.CheckConstraint("status IN ('sent', 'failed', 'suppressed')", name="ck_delivery_receipts_status"),
    sa.Index("ix_delivery_receipts_sent_once", "notice_id", unique=True,
             sqlite_where=sa.text("status = 'sent'"), postgresql_where=sa.text("status = 'sent'")),
)


@dataclass(frozen=True)
class NoticeState:
    """What the receipts say about one notice."""

    attempts: int
    sent: bool
    final_suppression: bool  # suppressed for a final reason (not deferred, not withdrawn)
    failures: int
    last_failure_at: datetime | None
    withdrawn: bool = False  # the latest receipt is suppressed/withdrawn


def default_url(work: Path) -> str:
    """The embedded delivery database under ``work`` (the folder is created if missing)."""
    folder = Path(work).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'delivery.db'}"


def ensure_receipts(eng: sa.Engine) -> None:
    metadata.create_all(eng)


def exists(url: str) -> bool:
    """False for a SQLite file that is not there yet (so a dry run creates nothing)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return Path(u.database).exists()
    return True


def states(conn: sa.Connection) -> dict[str, NoticeState]:
    """The state of every notice with at least one receipt."""
    if not sa.inspect(conn).has_table(delivery_receipts.name):
        return {}
    r = delivery_receipts.c
    is_failed = sa.case((r.status == FAILED, 1), else_=0)
    final_sup = sa.case((sa.and_(r.status == SUPPRESSED, r.reason.not_in(sorted(DEFERRED_REASONS | {WITHDRAWN}))), 1),
                        else_=0)
    withdrawn_at = sa.case((sa.and_(r.status == SUPPRESSED, r.reason == WITHDRAWN), r.attempt), else_=None)
    q = sa.select(
        r.notice_id,
        sa.func.max(r.attempt),
        sa.func.sum(sa.case((r.status == SENT, 1), else_=0)),
        sa.func.sum(final_sup),
        sa.func.sum(is_failed),
        sa.func.max(sa.case((r.status == FAILED, r.at), else_=None)),
        sa.func.max(withdrawn_at),
    ).group_by(r.notice_id)
    return {
        nid: NoticeState(int(n), bool(sent), bool(sup), int(failed), parse_timestamp(last) if last else None,
                         withdrawn=last_withdrawn == n)
        for nid, n, sent, sup, failed, last, last_withdrawn in conn.execute(q)
    }


def record(conn: sa.Connection, notice_id: str, status: str, reason: str | None, channel: str | None, at: datetime) -> int:
    """Append the next receipt of a notice inside the caller's transaction; returns its attempt."""
    r = delivery_receipts.c
    if status == SENT and conn.execute(
        sa.select(sa.func.count()).where(r.notice_id == notice_id, r.status == SENT)
    ).scalar_one():
        raise AlreadySent(notice_id)
    attempt = (conn.execute(sa.select(sa.func.max(r.attempt)).where(r.notice_id == notice_id)).scalar_one() or 0) + 1
    conn.execute(delivery_receipts.insert().values(
        notice_id=notice_id, attempt=attempt, status=status, reason=reason, channel=channel, at=format_timestamp(at)))
    return attempt


def receipts_of(conn: sa.Connection, notice_ids: Iterable[str]) -> list[dict]:
    r = delivery_receipts.c
    q = sa.select(delivery_receipts).where(r.notice_id.in_(list(notice_ids))).order_by(r.notice_id, r.attempt)
    return [dict(row._mapping) for row in conn.execute(q)]


class AlreadySent(Exception):
    """A `sent` receipt exists for the notice already (another run delivered it)."""
