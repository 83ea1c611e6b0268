"""`renkei …`: the things a data engineer does by hand, beside the DAGs.

    renkei keys init|export|add|status|rotate|retire|reseal  keyrings per holder, key rotation (commands/keys.py)
    renkei roles sql|acl|aclfile          least-privilege DB roles and Redis ACL users (commands/roles.py)
    renkei synth --residents N --seed S --as-of D --out DIR [--format sqlite|csv|csv-cp932]
    renkei pseudonymize --source NAME --from URL_OR_CSV --to URL [--reconcile | --full]
    renkei run --raw DIR --as-of D [--warehouse URL] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

from renkei.errors import RenkeiError


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD") from None


def _synth(args: argparse.Namespace) -> int:
    from renkei.synth import generate

    t = time.perf_counter()
    manifest = generate(args.residents, args.seed, args.as_of, Path(args.out), fmt=args.format,
                        defect_rate=args.defect_rate, progress=lambda m: print(f"synth    {m}"))
    counts = ", ".join(f"{k} {v:,}" for k, v in manifest["counts"].items())
    print(f"synth    {args.out}: {counts}; {len(manifest['defects'])} seeded defects "
          f"(manifest.json) in {time.perf_counter() - t:.1f}s")
    return 0


def _pseudonymize(args: argparse.Namespace) -> int:
    from renkei.config import load_sources
    from renkei.keys.adapter import FULL, INCREMENTAL, RECONCILE, pseudonymize
    from renkei.keys.ring import KeyRing

    sources = load_sources()
    if args.source not in sources:
        raise RenkeiError(f"unknown source {args.source!r}: use one of {sorted(sources)} (config/sources.yaml)")
    mode = FULL if args.full else RECONCILE if args.reconcile else INCREMENTAL
    res = pseudonymize(sources[args.source], args.from_, args.to, KeyRing.load(args.keyring),
                       progress=lambda m: print(f"pseudonymize {m}"), mode=mode, state_url=args.state)
    print(json.dumps(res.__dict__))
    if args.emit and res.written:
        from renkei.events import ChangeEvent
        from renkei.commands.emit import publish_event

        try:
            publish_event(ChangeEvent(source=args.source, change_seq=res.last_seq, row_count=res.written))
        except RenkeiError as exc:
            # The extract is written; the scheduled sweep will find it even without the event.
            print(f"renkei: warning: change event not sent: {exc}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    from renkei.runner import run_chain
    from renkei.summary import print_summary

    work = Path(args.work or "var/run")
    report = run_chain(Path(args.raw), args.as_of, work, warehouse_url=args.warehouse,
                       keyring_path=Path(args.keyring) if args.keyring else None)
    print_summary(report, work / "run_report.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="renkei", description="Renkei (連携): departmental data linkage for proactive services.")
    sub = ap.add_subparsers(dest="command", required=True)

    sy = sub.add_parser("synth", help="generate a synthetic city's raw departmental tables")
    sy.add_argument("--residents", type=int, default=20000)
    sy.add_argument("--seed", type=int, default=7)
    sy.add_argument("--as-of", type=_date, required=True)
    sy.add_argument("--out", required=True)
    sy.add_argument("--format", choices=["sqlite", "csv", "csv-cp932"], default="sqlite")
    sy.add_argument("--defect-rate", type=float, default=0.005)
    sy.set_defaults(func=_synth)

    ps = sub.add_parser("pseudonymize", help="export adapter: raw source → pseudonymized extract")
    ps.add_argument("--source", required=True)
    ps.add_argument("--from", dest="from_", required=True, help="a CSV path or a SQLAlchemy URL of the raw table")
    ps.add_argument("--to", required=True, help="SQLAlchemy URL of the extract database")
    ps.add_argument("--keyring", help="keyring path (default: $RENKEI_KEYRING)")
    ps.add_argument("--state", help="SQLAlchemy URL of the adapter's own state (default: the --to database)")
    how = ps.add_mutually_exclusive_group()
    how.add_argument("--reconcile", action="store_true",
                     help="diff the complete key set: changed rows and a tombstone per vanished row (nightly)")
    how.add_argument("--full", action="store_true", help="write every row again (and tombstones)")
    ps.add_argument("--no-emit", dest="emit", action="store_false",
                    help="do not publish a change event after writing changes")
    ps.set_defaults(func=_pseudonymize)

    rn = sub.add_parser("run", help="pseudonymize a raw folder and run the DAG chain for a date")
    rn.add_argument("--raw", required=True, help="folder with <source>.csv or <source>.db files")
    rn.add_argument("--as-of", type=_date, required=True, help="evaluation date D (YYYY-MM-DD)")
    rn.add_argument("--warehouse", help="warehouse SQLAlchemy URL (default: SQLite in the work dir)")
    rn.add_argument("--work", help="work dir (default var/run)")
    rn.add_argument("--keyring", help="keyring path (default: $RENKEI_KEYRING, else <work>/keyring.json)")
    rn.set_defaults(func=_run)

    # Further commands live one module each in renkei.commands (register(subparsers)).
    import importlib
    import pkgutil

    import renkei.commands as commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"renkei.commands.{mod}").register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    from renkei.logsetup import install_cli  # noqa: PLC0415 - masks personal data in what the CLI logs

    install_cli()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RenkeiError as exc:
        print(f"renkei: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
