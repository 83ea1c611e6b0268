"""`renkei audit verify|accept-restore|resident`: check the audit trail against its anchor, accept a
restored warehouse, show one resident's record of use."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from renkei.errors import RenkeiError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("audit", help="the tamper-evident audit trail").add_subparsers(dest="audit_command", required=True)
    v = p.add_parser("verify", help="check the hash chain against its anchor: exit 0 if intact, 1 naming the first bad entry")
    _common(v)
    v.add_argument("--anchor", help="where the trail's head was anchored: a directory or an auditor's http(s) URL "
                   "(default: $RENKEI_AUDIT_ANCHOR, else audit-anchors/ beside the keyring)")
    v.set_defaults(func=_verify)
    a = p.add_parser("accept-restore", help="after restoring the warehouse from a backup: record in the anchor that the "
                     "trail was rolled back on purpose, so verify and appends accept it")
    _common(a)
    a.add_argument("--anchor", help="as for verify")
    a.add_argument("--reason", required=True, help="why (the dump restored, the incident); kept in the anchor")
    a.set_defaults(func=_accept_restore)
    r = p.add_parser("resident", help="which departments' data were linked and which notices were sent for one resident")
    r.add_argument("--resident-code", required=True, help="住民票コード; printed as given, never stored")
    _common(r)
    r.add_argument("--delivery", help="delivery DB URL (default: $RENKEI_DELIVERY_URL, else <work>/delivery.db if present)")
    r.set_defaults(func=_resident)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work", help="a `renkei run` work dir (its run_report.json, warehouse.db, keyring.json)")
    p.add_argument("--warehouse", help="warehouse SQLAlchemy URL (default: the work dir's, else $RENKEI_WAREHOUSE_URL)")
    p.add_argument("--keyring", help="keyring path (default: $RENKEI_KEYRING, else <work>/keyring.json)")


def _warehouse_url(args: argparse.Namespace) -> str:
    from renkei.delivery.settings import warehouse_url_of
    from renkei.settings import Settings

    if args.warehouse:
        return args.warehouse
    if args.work:
        work = Path(args.work)
        try:
            report = json.loads((work / "run_report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = {}
        return warehouse_url_of(work, report, None, dict(os.environ))
    if os.environ.get("RENKEI_WAREHOUSE_URL"):
        return Settings.from_env().warehouse_url
    raise RenkeiError("no warehouse given: pass --work DIR or --warehouse URL (or set RENKEI_WAREHOUSE_URL)")


def _keyring_path(args: argparse.Namespace) -> Path | None:
    from renkei.keys.ring import ENV_PATH

    path = args.keyring or os.environ.get(ENV_PATH) or (Path(args.work) / "keyring.json" if args.work else None)
    return Path(path) if path else None


def _ring(args: argparse.Namespace):  # noqa: ANN202 - KeyRing, imported lazily
    from renkei.keys.ring import KeyRing

    return KeyRing.load(_keyring_path(args))


def _verify(args: argparse.Namespace) -> int:
    from renkei.audit.trail import verify

    res = verify(_warehouse_url(args), _ring(args), anchor=args.anchor, keyring_path=_keyring_path(args))
    if res.anchored is None:
        anchoring = f"not anchored (no anchor at {res.anchor})"
    else:
        anchoring = f"anchored at seq {res.anchored} in {res.anchor}"
    for note in res.restores:
        print(f"note: {note}")
    if res.ok:
        print(f"OK, {res.entries} entries, {anchoring}")
        return 0
    where = f"at seq {res.first_bad_seq}" if res.first_bad_seq is not None else "before reading the log"
    print(f"FAILED {where}: {res.problem} ({res.entries} entries read; {anchoring}). "
          "Keep this warehouse and the anchor as evidence, restore the trail from backup and review who had write access.")
    return 1


def _accept_restore(args: argparse.Namespace) -> int:
    from renkei.audit.trail import accept_restore

    rec = accept_restore(_warehouse_url(args), _ring(args), args.reason, anchor=args.anchor,
                         keyring_path=_keyring_path(args))
    print(f"restore accepted: the trail now ends at seq {rec['seq']} (the anchor had seq {rec['replaces']}); "
          "entries after it are gone and the anchor keeps this record")
    return 0


def _resident(args: argparse.Namespace) -> int:
    from renkei.audit.resident import resident_record

    delivery = args.delivery or os.environ.get("RENKEI_DELIVERY_URL")
    if not delivery and args.work and (Path(args.work) / "delivery.db").exists():
        delivery = f"sqlite:///{(Path(args.work) / 'delivery.db').resolve()}"
    rec = resident_record(args.resident_code.strip(), _ring(args), _warehouse_url(args), delivery)
    print(f"resident   {args.resident_code.strip()}  (as given; not stored)")
    print("linked     " + ("" if rec.linked else "none"))
    for r in rec.linked:
        registry = "" if r["in_registry"] else ", not in the registry"
        print(f"  {r['department'] or '-'}: {r['title']} [{r['source']}] — {r['records']} record(s){registry}; "
              f"linked by run {r['built_run_id']}")
    print("notices    " + ("" if rec.notices else "none"))
    for n in rec.notices:
        subject = n["subject"] + (f" #{n['dose_number']}" if n["dose_number"] is not None else "")
        print(f"  {n['notice_id']}  {n['service']}/{n['kind']}  {subject}  window {n['window_start']} … {n['window_end']}"
              f"  created {n['created_at']}")
        if delivery:
            got = rec.receipts.get(n["notice_id"], [])
            if not got:
                print("    no delivery receipt")
            for r in got:
                print(f"    receipt #{r['attempt']} {r['at']} {r['status']}" + (f" ({r['reason']})" if r["reason"] else "")
                      + (f" by {r['channel']}" if r["channel"] else ""))
    return 0
