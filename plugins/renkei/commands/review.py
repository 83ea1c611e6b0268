"""`renkei review list|approve|reject|requests|apply-requests`: the integrity audit's review queue,
by hand. approve/reject apply at once (they need the keyring's chain key); the Renkei pages only
request a decision, which `apply-requests` (or the apply_review_decisions Dag) applies.

`renkei review export|resolve|strip|import`: a department's list as a file (renkei.linkage.review_files;
resolve and strip run inside the department). `renkei review summary`: the queue in figures
(renkei.linkage.review_summary)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("review", help="the integrity audit's review queue (紐付け点検)")
    sub = p.add_subparsers(dest="review_command", required=True)

    ls = sub.add_parser("list", help="list queue items (active ones; --all adds resolved ones)")
    ls.add_argument("--state", choices=["pending", "approved", "rejected", "resolved"])
    ls.add_argument("--all", action="store_true", help="include items the latest audit no longer finds")
    _where(ls)
    ls.set_defaults(func=_list)

    for decision, verb in (("approved", "approve"), ("rejected", "reject")):
        d = sub.add_parser(verb, help=f"{verb} one item: the decision holds until the department changes its record")
        d.add_argument("item_id")
        d.add_argument("--reviewer", required=True, help="who decides (stored with the decision)")
        d.add_argument("--comment", required=True, help="why (stored with the decision; no personal data)")
        d.add_argument("--keyring", help="keyring that signs the audit-trail entry (default: $RENKEI_KEYRING, "
                       "else <work>/keyring.json)")
        _where(d)
        d.set_defaults(func=_decide, decision=decision)

    rq = sub.add_parser("requests", help="decision requests made on the Renkei review page")
    rq.add_argument("--state", choices=["pending", "applied", "refused"])
    _where(rq)
    rq.set_defaults(func=_requests)

    ap = sub.add_parser("apply-requests", help="apply pending decision requests (what the apply_review_decisions Dag does)")
    ap.add_argument("--keyring", help="keyring that signs the audit-trail entries (default: $RENKEI_KEYRING, "
                    "else <work>/keyring.json)")
    _where(ap)
    ap.set_defaults(func=_apply)

    ex = sub.add_parser("export", help="write a department's pending findings as CSV (linkage side, pipeline keyring)")
    ex.add_argument("--department", required=True, help="whose list, e.g. health_bureau (config/sources.yaml)")
    ex.add_argument("--out", required=True, help="CSV file to write")
    ex.add_argument("--encoding", choices=["utf-8", "cp932"], default="utf-8",
                    help="utf-8 (with BOM, the default) or cp932 for the department's spreadsheet")
    ex.add_argument("--keyring", help="the pipeline keyring: link and dept:<department> keys (default: "
                    "$RENKEI_KEYRING, else <work>/keyring.json)")
    _where(ex)
    ex.set_defaults(func=_export)

    rs = sub.add_parser("resolve", help="inside the department: add resident codes opened with its own key")
    rs.add_argument("file", help="the list `renkei review export` wrote")
    rs.add_argument("--keyring", required=True, help="the department's keyring (`renkei keys export --for dept:<name>`)")
    rs.add_argument("--out", required=True, help="resolved CSV to write (mode 0600: it holds resident codes)")
    rs.set_defaults(func=_resolve)

    st = sub.add_parser("strip", help="inside the department: drop the resident_code column before the list goes back")
    st.add_argument("file", help="the resolved list with the clerks' decisions")
    st.add_argument("--out", required=True, help="CSV file to send back")
    st.set_defaults(func=_strip)

    im = sub.add_parser("import", help="apply the decisions of a department's returned list (linkage side)")
    im.add_argument("file", help="the returned list, without the resident_code column")
    im.add_argument("--department", required=True, help="whose list it is; rows of another department are refused")
    im.add_argument("--reviewer", required=True, help="who decided (stored with each decision)")
    im.add_argument("--keyring", help="keyring that signs the audit-trail entries (default: $RENKEI_KEYRING, "
                    "else <work>/keyring.json)")
    _where(im)
    im.set_defaults(func=_import)

    sm = sub.add_parser("summary", help="counts by department, reason, severity and state, and waiting times")
    sm.add_argument("--json", action="store_true", help="print the figures as JSON")
    _where(sm)
    sm.set_defaults(func=_summary)


def _where(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--work", help="a `renkei run` work dir (default var/run)")
    where.add_argument("--warehouse", help="warehouse SQLAlchemy URL")


def _url(args: argparse.Namespace) -> str:
    from renkei.delivery.settings import warehouse_url_of

    if args.warehouse:
        return args.warehouse
    work = Path(args.work or "var/run")
    try:
        report = json.loads((work / "run_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = {}
    return warehouse_url_of(work, report, None, dict(os.environ))


def _list(args: argparse.Namespace) -> int:
    from renkei.linkage.review import list_items

    items = list_items(_url(args), state=args.state, include_resolved=args.all)
    print(f"{'item':<17}{'severity':<9}{'state':<10}{'source':<14}{'reason':<21}{'record':<26}decided")
    for it in items:
        record = it["record_key"] if len(it["record_key"]) <= 24 else it["record_key"][:23] + "…"
        decided = f"{it['decided_by']} {it['decided_at']}" if it["decided_by"] else ""
        resolved = "" if it["active"] else " (resolved)"
        print(f"{it['item_id']:<17}{it['severity']:<9}{it['state']:<10}{it['source']:<14}{it['reason']:<21}{record:<26}{decided}{resolved}")
    print(f"{len(items)} item(s)")
    return 0


def _requests(args: argparse.Namespace) -> int:
    from renkei.linkage.review import list_requests

    reqs = list_requests(_url(args), state=args.state)
    print(f"{'request':<9}{'item':<17}{'decision':<10}{'state':<9}{'reviewer':<14}{'requested':<27}outcome")
    for r in reqs:
        print(f"{r['request_id']:<9}{r['item_id']:<17}{r['decision']:<10}{r['state']:<9}{r['reviewer'][:13]:<14}"
              f"{r['requested_at']:<27}{r['outcome'] or ''}")
    print(f"{len(reqs)} request(s)")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from renkei.linkage.review import REQUEST_APPLIED, REQUEST_REFUSED, apply_requests

    ring, anchor = _ring_and_anchor(args)
    done = apply_requests(_url(args), ring=ring, anchor=anchor)
    print(f"{len(done[REQUEST_APPLIED])} request(s) applied, {len(done[REQUEST_REFUSED])} refused "
          "(`renkei review requests --state refused` says why)")
    return 0


def _ring_and_anchor(args: argparse.Namespace):  # noqa: ANN202 - (KeyRing | None, anchor sink | None)
    from renkei.keys.ring import ENV_PATH, KeyRing

    path = args.keyring or os.environ.get(ENV_PATH)
    work = None if args.warehouse else Path(args.work or "var/run")
    if path is None and work is not None and (work / "keyring.json").exists():
        path = str(work / "keyring.json")
    ring = KeyRing.load(path) if path else None
    anchor = None
    if path and not os.environ.get("RENKEI_AUDIT_ANCHOR"):  # the default anchor lives beside this keyring
        from renkei.audit.anchor import sink

        anchor = sink(keyring=path, create=True)
    return ring, anchor


def _decide(args: argparse.Namespace) -> int:
    from renkei.linkage.review import decide

    ring, anchor = _ring_and_anchor(args)
    item = decide(_url(args), args.item_id, args.decision, args.reviewer, args.comment, ring=ring, anchor=anchor)
    print(f"{item['item_id']} {item['state']} by {item['decided_by']} at {item['decided_at']} "
          f"({item['source']} {item['reason']}); the next link run honours it")
    return 0


def _export(args: argparse.Namespace) -> int:
    from renkei.linkage.review_files import export

    ring, _ = _ring_and_anchor(args)
    n = export(_url(args), args.department, Path(args.out), encoding=args.encoding, ring=ring)
    print(f"{n} pending item(s) of {args.department} written to {args.out} ({args.encoding}); inside the department: "
          f"`renkei review resolve --keyring <its keyring> {args.out} --out <resolved.csv>`")
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from renkei.keys.ring import KeyRing
    from renkei.linkage.review_files import resolve

    n = resolve(Path(args.file), KeyRing.load(args.keyring), Path(args.out))
    print(f"{n} row(s) resolved to {args.out} (mode 0600, holds resident codes: keep it inside the department); "
          "fill in decision and comment, then `renkei review strip` it before sending it back")
    return 0


def _strip(args: argparse.Namespace) -> int:
    from renkei.linkage.review_files import strip

    n = strip(Path(args.file), Path(args.out))
    print(f"{n} row(s) written to {args.out} without resident codes: send this file back")
    return 0


def _import(args: argparse.Namespace) -> int:
    from renkei.linkage.review_files import REFUSED, import_decisions

    ring, anchor = _ring_and_anchor(args)
    rows = import_decisions(_url(args), Path(args.file), args.department, args.reviewer, ring=ring, anchor=anchor)
    for r in rows:
        print(f"line {r.line:<5}{r.item_id:<17}{r.outcome:<10}{r.why or ''}")
    counts = {o: sum(r.outcome == o for r in rows) for o in ("applied", "unchanged", "skipped", REFUSED)}
    print(", ".join(f"{n} {o}" for o, n in counts.items()))
    return 1 if counts[REFUSED] else 0


def _summary(args: argparse.Namespace) -> int:
    from renkei.linkage.review_summary import COLUMNS, summary

    s = summary(_url(args))
    if args.json:
        print(json.dumps(s, ensure_ascii=False, indent=2))
        return 0
    print(f"review queue at {s['as_of']}: {s['items']} item(s)")
    head = "".join(f"{c:>10}" for c in (*COLUMNS, "total"))
    for title, table in (("department", s["by_department"]), ("reason", s["by_reason"]), ("severity", s["by_severity"])):
        print(f"\n{title:<22}{head}")
        for key, row in table.items():
            print(f"{key:<22}" + "".join(f"{row[c]:>10}" for c in (*COLUMNS, "total")))
    print(f"\n{'waiting (days)':<22}{'count':>8}{'median':>8}{'p90':>8}{'max':>8}")
    for label, w in [("pending, all", s["waiting_pending"]), ("to decision, all", s["days_to_decision"])] + [
            (f"{k}: {lbl}", d[key]) for k, d in s["by_department"].items()
            for lbl, key in (("pending", "waiting_pending"), ("to decision", "days_to_decision"))]:
        print(f"{label:<22}{w['count']:>8}" + "".join(f"{'-' if w[x] is None else w[x]:>8}"
                                                       for x in ("median_days", "p90_days", "max_days")))
    return 0
