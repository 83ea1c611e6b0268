"""`renkei notices tail|relay`: read the notices stream, or run the outbox relay once.

    renkei notices tail [--group G] [--consumer C] [--count N] [--follow] [--from-start]
    renkei notices relay [--warehouse URL]

`tail` prints one JSON line per message: a notice, or a state message of a notice
(``"type": "notice_state"``: withdrawn, superseded or reinstated; docs/EVENTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from renkei.outputs.reader import NoticeReader

TAIL_GROUP = "renkei-tail"  # its own group: tailing never takes notices from the delivery group


def register(subparsers: argparse._SubParsersAction) -> None:
    nt = subparsers.add_parser("notices", help="the notices stream: tail it, or relay the outbox to it")
    sub = nt.add_subparsers(dest="notices_command", required=True)

    tl = sub.add_parser("tail", help="print notices and their state messages from the stream, one JSON line "
                                     "each (acked after print)")
    tl.add_argument("--group", default=TAIL_GROUP, help=f"consumer group (default {TAIL_GROUP})")
    tl.add_argument("--consumer", default="cli", help="consumer name in the group (default cli)")
    tl.add_argument("--count", type=_positive, help="stop after N messages (default: all there are)")
    tl.add_argument("--follow", action="store_true", help="keep waiting for new notices (Ctrl-C stops)")
    tl.add_argument("--from-start", action="store_true",
                    help="read the whole stream again in this group (default: a new group sees only new notices)")
    tl.set_defaults(func=_tail)

    rl = sub.add_parser("relay", help="publish outbox notices and state changes not yet on the stream (once), "
                                      "print counts")
    rl.add_argument("--warehouse", help="warehouse SQLAlchemy URL (default: $RENKEI_WAREHOUSE_URL)")
    rl.set_defaults(func=_relay)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: use a whole number >= 1")
    return n


def _tail(args: argparse.Namespace) -> int:
    import redis

    from renkei.errors import RenkeiError
    from renkei.outputs.reader import NoticeReader
    from renkei.settings import redact_url

    with NoticeReader.from_config(args.group, args.consumer, start="0" if args.from_start else "$") as reader:
        try:
            _print_notices(reader, args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RenkeiError(
                f"notices stream {reader.stream}: Redis unreachable at {redact_url(reader.redis_url)} "
                f"({exc.__class__.__name__}): start Redis or fix RENKEI_REDIS_URL; unacknowledged "
                "notices stay pending for this consumer"
            ) from None
    return 0


def _print_notices(reader: "NoticeReader", args: argparse.Namespace) -> None:
    if args.from_start:
        reader.seek("0")
    printed = 0
    try:
        while args.count is None or printed < args.count:
            want = 100 if args.count is None else min(100, args.count - printed)
            batch = reader.read(count=want, block_ms=2000 if args.follow else None)
            if not batch and not args.follow:
                break
            for msg in batch:  # a Notice or a NoticeState: both print as their message
                print(msg.to_json(), flush=True)
                reader.ack([msg])  # after the print: a crash in between re-reads it
            printed += len(batch)
    except KeyboardInterrupt:
        pass


def _relay(args: argparse.Namespace) -> int:
    from renkei.outputs.relay import relay_notices
    from renkei.settings import Settings

    counts = relay_notices(args.warehouse or Settings.from_env().warehouse_url)
    print(json.dumps({k: v for k, v in counts.items() if k != "error"}, sort_keys=True))
    if counts.get("errors"):
        print(f"renkei: error: {counts['error']}", file=sys.stderr)
        return 1
    return 0
