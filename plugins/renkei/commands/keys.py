"""`renkei keys init|status|rotate|retire|reseal`: the keyring and the warehouse's link key version.

    renkei keys init --path P
    renkei keys export --for HOLDER --out P   (HOLDER: dept:<name>, pipeline, delivery, auditor)
    renkei keys add --purpose chain|match|link|dept:<name>
    renkei keys status [--keyring P] [--warehouse URL | --work DIR]
    renkei keys rotate --purpose P [--grace-days N] [--run [--batch-size N]]
    renkei keys retire --purpose P --version N
    renkei keys reseal --purpose link [--batch-size N] [--max-batches N]

Output names purposes, versions, states and dates, never key material.
"""

from __future__ import annotations

import argparse
import fcntl
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from renkei.errors import KeyRingError, RenkeiError


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="keyring management and key rotation").add_subparsers(
        dest="keys_command", required=True)
    ki = keys.add_parser("init", help="write a new keyring (mode 0600)")
    ki.add_argument("--path", required=True, help="where to write it (outside the repo; var/ is git-ignored)")
    ki.add_argument("--force", action="store_true", help="overwrite an existing keyring (its tokens become unreadable)")
    ki.set_defaults(func=_init)

    ex = keys.add_parser("export", help="write the keyring of one key holder: only the purposes it needs")
    ex.add_argument("--for", dest="holder", required=True, metavar="HOLDER",
                    help="dept:<department> (its pseudonym key only), pipeline, delivery or auditor")
    ex.add_argument("--out", required=True, help="where to write the holder's keyring (mode 0600)")
    ex.add_argument("--keyring", help="the full keyring (default: $RENKEI_KEYRING)")
    ex.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    ex.set_defaults(func=_export)

    ad = keys.add_parser("add", help="add a purpose the keyring lacks (e.g. chain to a keyring written before it existed)")
    ad.add_argument("--purpose", required=True, help="chain, match, link or dept:<department>")
    _common(ad, warehouse_optional=True)
    ad.set_defaults(func=_add)

    st = keys.add_parser("status", help="purposes, versions, states and grace dates (and the warehouse's link version)")
    _common(st, warehouse_optional=True)
    st.set_defaults(func=_status)

    ro = keys.add_parser("rotate", help="add a new version of a purpose and make it current")
    ro.add_argument("--purpose", required=True, help="link, or dept:<department>")
    ro.add_argument("--grace-days", type=int, help="department keys: days the previous version still opens (default 30)")
    ro.add_argument("--run", action="store_true", help="link: re-seal the warehouse's ERKs now, in this process")
    ro.add_argument("--batch-size", type=int, default=10_000)
    _common(ro, warehouse_optional=True)
    ro.set_defaults(func=_rotate)

    re_ = keys.add_parser("retire", help="refuse a previous version's tokens from now on")
    re_.add_argument("--purpose", required=True)
    re_.add_argument("--version", required=True, type=int)
    _common(re_, warehouse_optional=True)
    re_.set_defaults(func=_retire)

    rs = keys.add_parser("reseal", help="re-seal (or resume re-sealing) the warehouse's ERKs under the current link version")
    rs.add_argument("--purpose", default="link", choices=["link"])
    rs.add_argument("--batch-size", type=int, default=10_000)
    rs.add_argument("--max-batches", type=int, help="stop after this many batches (resume by running again)")
    _common(rs, warehouse_optional=False)
    rs.set_defaults(func=_reseal)


def _common(p: argparse.ArgumentParser, warehouse_optional: bool) -> None:
    p.add_argument("--keyring", help="keyring path (default: $RENKEI_KEYRING, else <work>/keyring.json)")
    p.add_argument("--warehouse", help="warehouse SQLAlchemy URL (default: the work dir's, else $RENKEI_WAREHOUSE_URL)")
    p.add_argument("--work", help="a `renkei run` work dir")
    p.set_defaults(warehouse_optional=warehouse_optional)


def _keyring_path(args: argparse.Namespace) -> Path:
    from renkei.keys.ring import keyring_path

    if args.keyring:
        return Path(args.keyring)
    if args.work and not os.environ.get("RENKEI_KEYRING"):
        return Path(args.work) / "keyring.json"
    return keyring_path()


def _warehouse(args: argparse.Namespace) -> str | None:
    from renkei.commands.audit import _warehouse_url

    try:
        return _warehouse_url(args)
    except RenkeiError:
        if args.warehouse_optional:
            return None
        raise


@contextmanager
def _locked(path: Path):
    """One keyring writer at a time (two rotations at once would lose a key)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _update_keyring(path: Path, change: Callable) -> object:
    from renkei.keys.ring import KeyRing

    with _locked(path):
        ring = KeyRing.load(path)
        out = change(ring)
        ring.save(path, overwrite=True)
    return out


def _init(args: argparse.Namespace) -> int:
    from renkei.keys.ring import KeyRing

    path = KeyRing.generate().save(args.path, overwrite=args.force)
    ring = KeyRing.load(path)
    print(f"keyring written to {path} (mode 0600) with purposes: {', '.join(ring.purposes())}")
    print(f"point Renkei at it with: export RENKEI_KEYRING={path.resolve()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from renkei.keys.ring import KeyRing, holder_purposes, keyring_path

    ring = KeyRing.load(Path(args.keyring) if args.keyring else keyring_path())
    wanted = holder_purposes(args.holder, ring.purposes())
    out = ring.subset(wanted).save(args.out, overwrite=args.force)
    print(f"keyring for {args.holder} written to {out} (mode 0600) with purposes: {', '.join(wanted)}")
    return 0


def _add(args: argparse.Namespace) -> int:
    path = _keyring_path(args)
    _update_keyring(path, lambda ring: ring.add(args.purpose))
    print(f"{args.purpose}: version 1 added to {path}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from renkei.keys import rotation
    from renkei.keys.ring import KeyRing

    ring = KeyRing.load(_keyring_path(args))
    print(f"{'purpose':<24}{'version':>8}  state")
    for row in ring.status():
        when = (f"  until {row['grace_until']}" if "grace_until" in row else "") + \
               (f"  since {row['retired_on']}" if row.get("retired_on") else "")
        print(f"{row['purpose']:<24}{row['version']:>8}  {row['state']}{when}")
    url = _warehouse(args)
    if url:
        st = rotation.status(url)
        line = f"warehouse: ERKs under link v{st['version']}" if st["version"] else "warehouse: no ERK written yet"
        if st["rotating_to"]:
            line += f", re-sealing to v{st['rotating_to']} (resume: `renkei keys reseal --purpose link`)"
        print(line)
        for r in st["rotations"]:
            done = ", ".join(f"{t} {p['done'] or 0:,}/{p['total'] if p['total'] is not None else '?'}"
                             for t, p in r["progress"].items() if r["state"] != "completed")
            print(f"rotation {r['rotation_id']}: {r['state']}, {r['rows_resealed']:,} rows re-sealed"
                  + (f", audit entry {r['audit_seq']}" if r["audit_seq"] else "") + (f" [{done}]" if done else ""))
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from renkei.keys import rotation

    path = _keyring_path(args)
    url = _warehouse(args)
    if args.purpose in ("audit", "match"):
        raise KeyRingError("rotating the match key is not supported by this command yet: name and address digests "
                           "would stop matching across departments until every extract was re-digested")
    if args.purpose == "link" and url and rotation.status(url)["rotating_to"]:
        raise KeyRingError("a link rotation is still re-sealing the warehouse: finish it first (`renkei keys reseal --purpose link`)")
    if args.run and args.purpose != "link":
        raise KeyRingError("--run re-seals the warehouse's ERKs, which only a link rotation needs")
    if args.run and not url:
        raise KeyRingError("--run needs the warehouse: pass --warehouse URL or --work DIR (or set RENKEI_WAREHOUSE_URL)")
    new = _update_keyring(path, lambda ring: ring.rotate(args.purpose, grace_days=args.grace_days))
    print(f"{args.purpose}: version {new} is current in {path}")
    if args.purpose.startswith("dept:"):
        print("the previous version opens until its grace date (`renkei keys status`); give the department its new key "
              "and re-export with `renkei pseudonymize`; ERKs do not change")
        return 0
    if args.run:
        return _reseal(args)
    print("ingest, link and services now refuse to write ERKs until the warehouse is re-sealed: trigger the DAG "
          "renkei_rotate_link_key (`airflow dags trigger renkei_rotate_link_key`) or run "
          "`renkei keys reseal --purpose link`")
    return 0


def _retire(args: argparse.Namespace) -> int:
    from renkei.keys import rotation

    path = _keyring_path(args)
    if args.purpose == "link":
        url = _warehouse(args)
        if not url:
            raise KeyRingError("retiring a link version needs the warehouse to check that no ERK is still under it: "
                               "pass --warehouse URL or --work DIR")
        st = rotation.status(url)
        if st["rotating_to"] or (st["version"] is not None and st["version"] <= args.version):
            raise KeyRingError(f"the warehouse's ERKs are still under link v{st['version']}: re-seal them first "
                               "(`renkei keys reseal --purpose link`), then retire")
    _update_keyring(path, lambda ring: ring.retire(args.purpose, args.version))
    print(f"{args.purpose}: version {args.version} is retired; its tokens are refused from now on")
    return 0


def _reseal(args: argparse.Namespace) -> int:
    from renkei.keys import rotation
    from renkei.keys.ring import KeyRing

    out = rotation.rotate_link(_warehouse(args), KeyRing.load(_keyring_path(args)), batch_size=args.batch_size,
                               max_batches=getattr(args, "max_batches", None), say=lambda m: print(m, flush=True))
    return 0 if out["state"] in ("completed", "up_to_date") else 3
