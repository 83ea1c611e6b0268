"""`renkei explain NOTICE_ID --work DIR [--warehouse URL]`: why a notice exists and what became of
it (its lifecycle and delivery receipts), without identity."""

from __future__ import annotations

import argparse
import json
import os

from renkei.errors import RenkeiError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("explain", help="show the rule, window, facts and lifecycle of one notice")
    p.add_argument("notice_id")
    p.add_argument("--work", required=True, help="a `renkei run` work dir (its run_report.json)")
    p.add_argument("--warehouse", help="warehouse SQLAlchemy URL (default: the run report's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import sqlalchemy as sa

    from renkei.delivery import receipts
    from renkei.delivery.payload import facts_of
    from renkei.delivery.settings import warehouse_url_of
    from renkei.outputs import lifecycle
    from renkei.warehouse import engine, notices

    work = Path(args.work)
    try:
        report = json.loads((work / "run_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = {}
    url = warehouse_url_of(work, report, args.warehouse, dict(os.environ))
    eng = engine(url)
    try:
        with eng.connect() as conn:
            row = conn.execute(sa.select(notices).where(notices.c.notice_id == args.notice_id)).mappings().first()
            events = lifecycle.history(conn, args.notice_id) if row is not None else []
    finally:
        eng.dispose()
    if row is None:
        raise RenkeiError(f"notice {args.notice_id} is not in the warehouse: check the id (renkei deliver --dry-run lists them)")
    n = dict(row)
    print(f"notice     {n['notice_id']}")
    print(f"service    {n['service']} ({n['kind']})")
    print(f"rule       {n['rule_id']} version {n['rule_version']}")
    subject = n["subject"] + (f" #{n['dose_number']}" if n["dose_number"] is not None else "")
    print(f"subject    {subject}")
    print(f"window     {n['window_start']} … {n['window_end']}")
    print(f"evaluated  {n['evaluated_on']} (run {n['created_run_id']}, created {n['created_at']})")
    if n["replaces"]:
        print(f"replaces   {n['replaces']}")
    print(f"state      {events[-1]['state'] if events else lifecycle.PENDING}")
    for e in events:
        by = f" by {e['superseded_by']}" if e["superseded_by"] else ""
        print(f"  #{e['seq']} {e['at']} {e['state']} ({e['reason']}){by}, run {e['run_id']}")
    print("facts used")
    for line in json.dumps(facts_of(n), indent=2, ensure_ascii=False, sort_keys=True).splitlines():
        print(f"  {line}")
    delivery_url = os.environ.get("RENKEI_DELIVERY_URL") or receipts.default_url(work)
    if receipts.exists(delivery_url):
        dl = engine(delivery_url)
        try:
            with dl.connect() as conn:
                rows = receipts.receipts_of(conn, [n["notice_id"]]) if sa.inspect(conn).has_table("delivery_receipts") else []
        finally:
            dl.dispose()
        print("receipts" + ("" if rows else "   none"))
        for r in rows:
            print(f"  #{r['attempt']} {r['at']} {r['status']}" + (f" ({r['reason']})" if r["reason"] else "")
                  + (f" by {r['channel']}" if r["channel"] else ""))
    return 0
