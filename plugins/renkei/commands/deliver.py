"""`renkei deliver --work DIR [--warehouse URL] [--keyring P] [--dry-run --out FILE.jsonl] [--now ISO]`."""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone

from renkei.errors import RenkeiError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("deliver", help="send the outbox's notices to residents (or preview them)")
    p.add_argument("--work", required=True, help="a `renkei run` work dir (its run_report.json)")
    p.add_argument("--warehouse", help="warehouse SQLAlchemy URL (default: the run report's)")
    p.add_argument("--keyring", help="keyring path (default: $RENKEI_KEYRING, else <work>/keyring.json)")
    p.add_argument("--dry-run", action="store_true", help="send nothing, record nothing; write --out instead")
    p.add_argument("--out", help="with --dry-run: one JSON line per message that would be sent")
    p.add_argument("--now", help="the clock reading to decide with, ISO 8601 (naive = JST; default: now)")
    p.set_defaults(func=run)


def _now(text: str | None) -> datetime:
    from renkei.sources.values import ValueParseError, parse_timestamp

    if not text:
        return datetime.now(timezone.utc)
    try:
        return parse_timestamp(text)
    except ValueParseError:
        raise RenkeiError(f"--now {text!r} is not a timestamp: write e.g. 2025-06-02T10:00:00+09:00") from None


def mask(channel: str, recipient: str) -> str:
    """A recipient fit for a terminal: the first two characters of an e-mail's local part."""
    if channel == "email" and "@" in recipient:
        local, _, domain = recipient.partition("@")
        return f"{local[:2]}…@{domain}"
    return "…"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from renkei.delivery.deliver import deliver
    from renkei.delivery.settings import DeliverySettings

    if args.dry_run != bool(args.out):
        raise RenkeiError("--dry-run and --out FILE.jsonl go together: give both to preview, neither to send")
    settings = DeliverySettings.from_work(Path(args.work), args.warehouse, args.keyring)
    now = _now(args.now)
    if args.dry_run:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # The file holds contact addresses: readable by its owner only.
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            report = deliver(settings, now, dry_run_out=fh)
    else:
        report = deliver(settings, now)
    counts = report.counts()
    verb = "dry run" if args.dry_run else "delivered"
    print(f"deliver  {verb} at {now.isoformat()}: {counts['considered']} notices considered")
    for service, outcomes in counts["by_service"].items():
        print(f"  {service:<13} " + ", ".join(f"{k} {v}" for k, v in outcomes.items()))
    if args.dry_run:
        print(f"  messages written to {args.out} (mode 0600; holds contact addresses)")
    sample = report.sample
    if sample:
        shown = f" → {mask(sample['channel'], sample['recipient'])}" if "recipient" in sample else ""
        print(f"sample   {sample['service']} notice {sample['notice_id']} by {sample['channel']}{shown}")
        print(f"  件名: {sample['subject']}")
        for line in sample["body"].splitlines():
            print(f"  {line}")
    idle = counts.get("suppressed:quiet_hours", 0) + counts.get("suppressed:expired", 0)
    if idle and not counts.get("would_send") and not counts.get("sent"):
        print(f"hint     {idle} notices are in quiet hours or past their window at {now.isoformat()}; "
              "pass --now (e.g. the run's as-of date at 10:00) to decide at another time")
    return 0
