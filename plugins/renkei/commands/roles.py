"""`renkei roles sql|acl|aclfile`: the least-privilege database roles and Redis ACL users (renkei.roles).

    renkei roles sql --for roles|warehouse|extracts|delivery|metadata [--database NAME]
    renkei roles acl [--passwords FILE]                       ACL SETUSER commands
    renkei roles aclfile --users dept|readers|all [--passwords FILE] --out FILE

Passwords are read from FILE (``user=password`` lines, mode 0600), never from the command line;
the SQL printed here sets none (the DBA sets department passwords with ``\\password``), and an
aclfile carries only SHA-256 hashes. ``--generate`` writes a new password for every user that
FILE lacks back into FILE.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from renkei.errors import RenkeiError


def register(subparsers: argparse._SubParsersAction) -> None:
    roles = subparsers.add_parser("roles", help="least-privilege database roles and Redis ACL users").add_subparsers(
        dest="roles_command", required=True)
    s = roles.add_parser("sql", help="print the SQL that creates the roles or grants on one database")
    s.add_argument("--for", dest="target", required=True, choices=("roles", "warehouse", "extracts", "delivery", "metadata"))
    s.add_argument("--database", help="the database's name (default: renkei, extracts, delivery, airflow)")
    s.set_defaults(func=_sql)
    a = roles.add_parser("acl", help="print ACL SETUSER commands for the events Redis")
    a.add_argument("--passwords", help="user=password lines (mode 0600); users without one get no password")
    a.set_defaults(func=_acl)
    f = roles.add_parser("aclfile", help="write aclfile lines (hashed passwords) for users outside compose")
    f.add_argument("--users", choices=("dept", "readers", "all"), default="all")
    f.add_argument("--passwords", required=True, help="user=password lines (mode 0600)")
    f.add_argument("--generate", action="store_true", help="add a new password to FILE for every user it lacks")
    f.add_argument("--out", required=True, help="the aclfile (written mode 0600)")
    f.set_defaults(func=_aclfile)


DEFAULT_DB = {"warehouse": "renkei", "extracts": "extracts", "delivery": "delivery", "metadata": "airflow"}


def _sql(args: argparse.Namespace) -> int:
    from renkei import roles  # noqa: PLC0415

    layout = roles.Layout.from_config()
    db = args.database or DEFAULT_DB.get(args.target, "")
    make = {"roles": lambda: roles.create_roles_sql(layout, kinds=(*roles.ROLE_NAMES,)),
            "warehouse": lambda: roles.warehouse_sql(layout, db), "extracts": lambda: roles.extracts_sql(layout, db),
            "delivery": lambda: roles.delivery_sql(layout, db), "metadata": lambda: roles.metadata_sql(layout, db)}
    for stmt in make[args.target]():
        print(stmt + ";")
    return 0


def read_passwords(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    p = Path(path)
    if not p.exists():
        return {}
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RenkeiError(f"{p} is readable by group or others: chmod 600 {p}")
    out = {}
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            user, _, pw = line.partition("=")
            out[user.strip()] = pw.strip()
    return out


def _acl(args: argparse.Namespace) -> int:
    from renkei import roles  # noqa: PLC0415

    for cmd in roles.acl_setuser(roles.Layout.from_config(), read_passwords(args.passwords)):
        print(" ".join(cmd))
    return 0


def _aclfile(args: argparse.Namespace) -> int:
    from renkei import roles  # noqa: PLC0415

    layout = roles.Layout.from_config()
    n = layout.names
    users = {"dept": [n.dept_user(d) for d in layout.departments()],
             "readers": [n.reader_user(r) for r in layout.readers]}
    wanted = users["dept"] + users["readers"] if args.users == "all" else users[args.users]
    passwords = read_passwords(args.passwords)
    missing = [u for u in wanted if not passwords.get(u)]
    if missing and not args.generate:
        raise RenkeiError(f"no password for {', '.join(missing)} in {args.passwords}: add them or pass --generate")
    if missing:
        passwords.update({u: roles.new_password() for u in missing})
        _write_private(Path(args.passwords), "".join(f"{u}={p}\n" for u, p in passwords.items()))
        print(f"new passwords for {', '.join(missing)} in {args.passwords}: hand each to its holder", file=sys.stderr)
    _write_private(Path(args.out), "\n".join(roles.aclfile_lines(layout, passwords, wanted)) + "\n")
    print(f"{len(wanted)} users written to {args.out}")
    return 0


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
