"""A readable summary of a run report, for the terminal."""

from __future__ import annotations

from pathlib import Path


def print_summary(report: dict, report_path: Path) -> None:
    print()
    print(f"Renkei run for {report['as_of']}  ({report.get('wall_s', 0):.0f}s)")
    print(f"  {'source':<15}{'read':>9}{'loaded':>9}{'quarantined':>13}")
    for name, c in report["sources"].items():
        print(f"  {name:<15}{c['read']:>9,}{c['loaded']:>9,}{c['quarantined']:>13,}")
    link = report["linked"]
    print(f"  linked mart: {link['residents']:,} residents, {link['linked_residents']:,} with data from 2+ departments")
    if link.get("link_flags"):
        flags = ", ".join(f"{k} {v}" for k, v in sorted(link["link_flags"].items()))
        print(f"  link flags (department copy ≠ registry): {flags}")
    audit = report.get("integrity_audit")
    if audit:
        seeded = (f"; seeded mislinks found {audit['seeded_found']}/{audit['seeded_mislinks']}, precision {audit['precision']}"
                  if audit.get("seeded_mislinks") is not None else "")
        print(f"  integrity audit: {audit['flagged']:,} records flagged, {audit['held_erks']:,} residents held for review{seeded}")
    for service, kinds in sorted(report["notices"].items()):
        kinds_text = ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items()))
        print(f"  notices {service}: {kinds_text}")
    if not report["notices"]:
        print("  notices: none open on this date")
    print(f"  warehouse: {report['warehouse_url']}")
    print(f"  report:    {report_path}")
