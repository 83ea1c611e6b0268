"""One resident's record of what was linked and sent about them (cf. マイナポータル 情報提供等記録).

Runs inside the registry's boundary with the keys: the resident code is sealed into the ERK in
memory — under every link key version the keyring still opens, so rows written before a link-key
rotation are found too — and only those ERKs are queried: no other resident's rows are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.delivery import receipts
from renkei.keys.ring import KeyRing
from renkei.warehouse import engine, linkage, notices


@dataclass(frozen=True)
class ResidentRecord:
    """Which departments' data were linked, which notices were made, and their receipts."""

    linked: list[dict]
    notices: list[dict]
    receipts: dict[str, list[dict]] = field(default_factory=dict)  # by notice id


def resident_record(resident_code: str, ring: KeyRing, warehouse_url: str, delivery_url: str | None = None) -> ResidentRecord:
    """The record of the resident whose code is given (their ERK under every link version held)."""
    erks = ring.lookup_tokens("link", resident_code)
    sources = load_sources()
    eng = engine(warehouse_url)
    try:
        with eng.connect() as conn:
            have = sa.inspect(conn)
            link_rows = conn.execute(
                sa.select(linkage.c.source, linkage.c.records, linkage.c.in_registry, linkage.c.built_run_id)
                .where(linkage.c.erk.in_(erks)).order_by(linkage.c.source)
            ).mappings().all() if have.has_table(linkage.name) else []
            n = notices.c
            notice_rows = conn.execute(
                sa.select(n.notice_id, n.service, n.kind, n.subject, n.dose_number, n.window_start, n.window_end, n.created_at)
                .where(n.erk.in_(erks)).order_by(n.created_at, n.notice_id)
            ).mappings().all() if have.has_table(notices.name) else []
    finally:
        eng.dispose()
    linked = []
    for r in link_rows:
        src = sources.get(r["source"])
        linked.append({**r, "department": src.department if src else None, "title": src.title if src else r["source"]})
    record = ResidentRecord(linked, [dict(r) for r in notice_rows])
    if delivery_url and notice_rows and receipts.exists(delivery_url):
        dl = engine(delivery_url)
        try:
            with dl.connect() as conn:
                if sa.inspect(conn).has_table(receipts.delivery_receipts.name):
                    for r in receipts.receipts_of(conn, [x["notice_id"] for x in notice_rows]):
                        record.receipts.setdefault(r["notice_id"], []).append(r)
        finally:
            dl.dispose()
    return record
