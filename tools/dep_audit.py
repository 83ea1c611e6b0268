"""`make lint`: audit the pinned dependencies (requirements.lock) with pip-audit.

Fails on any known vulnerability whose ID is not listed, with a reason, in the ignore file.
When the vulnerability service cannot be asked (no route to it, or it answers for no pin — on
a machine that reaches only a PyPI mirror, pip-audit skips every pin as "not found"), the audit
did not happen: that is a warning, or a failure with RENKEI_REQUIRE_AUDIT=1 (set it in a CI
that reaches pypi.org or osv.dev).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def ignored_ids(path: str) -> list[str]:
    ids = []
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        vid, _, why = line.partition("#")
        if not why.strip():
            sys.exit(f"lint: {path}:{n}: {vid.strip()} has no reason: write why after '#'")
        ids.append(vid.strip())
    return ids


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ignore-file", required=True)
    ap.add_argument("--pip-audit", default="pip-audit")
    ap.add_argument("--requirements", default="requirements.lock")
    ap.add_argument("--service", default=os.environ.get("RENKEI_AUDIT_SERVICE", "pypi"), choices=["pypi", "osv"])
    args = ap.parse_args()
    ignore = ignored_ids(args.ignore_file)
    cmd = [args.pip_audit, "-r", args.requirements, "--no-deps", "--disable-pip", "-s", args.service,
           "-f", "json", "--progress-spinner", "off", "--timeout", "20"]
    for vid in ignore:
        cmd += ["--ignore-vuln", vid]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        deps = json.loads(out.stdout)["dependencies"]
        err = ""
    except (ValueError, KeyError, subprocess.TimeoutExpired, OSError) as exc:
        deps, err = None, (getattr(exc, "stderr", None) or type(exc).__name__)
        if isinstance(exc, (ValueError, KeyError)):
            err = (out.stderr.strip().splitlines() or ["no output"])[-1]
    vulns = [(d["name"], d["version"], v["id"], v.get("fix_versions") or ["none"])
             for d in deps or [] for v in d.get("vulns", [])]
    for name, version, vid, fixes in vulns:
        print(f"lint: {name}=={version}: {vid} (fixed in {', '.join(fixes)}): pin a fixed version, "
              f"or list {vid} with a reason in {args.ignore_file}")
    if vulns:
        return f"lint: {len(vulns)} known vulnerabilities in {args.requirements}"  # type: ignore[return-value]
    skipped = [d for d in deps or [] if d.get("skip_reason")]
    if not deps or skipped:
        why = err if deps is None else f"{len(skipped)} of {len(deps)} pins not audited, e.g. " + (
            skipped[0]["skip_reason"] if skipped else "empty answer")
        msg = f"lint: the {args.service} vulnerability service could not audit {args.requirements} ({why})"
        if os.environ.get("RENKEI_REQUIRE_AUDIT") == "1":
            return msg + " — RENKEI_REQUIRE_AUDIT=1 makes this a failure"  # type: ignore[return-value]
        print(msg + ": dependency audit NOT DONE (warning; RENKEI_REQUIRE_AUDIT=1 makes it fail)", file=sys.stderr)
        return 0
    print(f"lint: pip-audit: no known vulnerabilities in {len(deps)} pins ({len(ignore)} IDs ignored with reasons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
