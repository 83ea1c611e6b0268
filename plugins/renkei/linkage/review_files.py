"""A department's 紐付け点検 list as a file: export, resolve inside the department, import decisions.

The round trip, and which side of the department boundary each step runs on:

1. :func:`export` (linkage side, pipeline keyring): the department's active pending findings as
   CSV, one row per queue item. The record is named by the department's own pseudonym, re-sealed
   from the item's ERK under the department's current key (in memory, as ingest re-seals the
   other way); a resident-keyed source's ``record_key`` is that pseudonym too, so no ERK leaves.
   Nothing of another department is written.
2. :func:`resolve` (department side, the department's keyring only): adds ``resident_code``,
   opened from each pseudonym, so clerks can look the records up in their own system. It refuses
   a keyring of the pipeline (that would put resident codes on the linkage side) and a file of
   another department.
3. The clerks fill in ``decision`` and ``comment``; :func:`strip` drops the ``resident_code``
   column before the file goes back (deleting the column in a spreadsheet does the same).
4. :func:`import_decisions` (linkage side, pipeline keyring): applies each decided row as
   ``renkei review approve|reject`` does, queue row and audit-trail entry in one transaction. It
   refuses a file that still holds a ``resident_code`` column before reading any row (the codes
   must not cross back), and per row: another department's item, an unknown decision, an item
   that changed since the export (its department row, its state, or no longer found).

Files are CSV in UTF-8 with a BOM (spreadsheets then read it as UTF-8) or CP932; reading detects
which, and :func:`resolve` and :func:`strip` write back in the encoding they read.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.errors import RenkeiError
from renkei.keys.ring import KeyRing, is_department
from renkei.linkage.audit import AUDITED_SOURCES, PENDING
# _decide_on, not decide(): the stale check and the decision must share one transaction and row lock
from renkei.linkage.review import DECISIONS, _decide_on, _trail
from renkei.sources.values import format_timestamp
from renkei.warehouse import engine, ensure_schema, link_builds, review_queue, staging_key, staging_table

FIELDS = ("department", "item_id", "record_key", "dept_pseudonym", "reason", "attribute", "first_seen",
          "severity", "state", "row_hash", "decision", "comment")
RESIDENT_CODE = "resident_code"  # the column resolve adds after dept_pseudonym; never crosses back
RESOLVED_FIELDS = (*FIELDS[:4], RESIDENT_CODE, *FIELDS[4:])
ENCODINGS = {"utf-8": "utf-8-sig", "cp932": "cp932"}  # option → Python codec
ATTRIBUTE = {"birth_date_mismatch": "birth_date", "sex_mismatch": "sex", "name_mismatch": "name",
             "address_mismatch": "address", "not_in_registry": ""}
# What a clerk may write in the decision column; blank leaves the item pending.
DECISION_WORDS = {"approved": "approved", "approve": "approved", "承認": "approved",
                  "rejected": "rejected", "reject": "rejected", "却下": "rejected"}
APPLIED, UNCHANGED, REFUSED, SKIPPED = "applied", "unchanged", "refused", "skipped"
_CODE_LIKE = re.compile(r"[0-9０-９]{11}")  # a resident code typed into a comment


@dataclass(frozen=True)
class RowOutcome:
    """What :func:`import_decisions` did with one file row (``line``: 2 is the first data row)."""

    line: int
    item_id: str
    outcome: str  # applied | unchanged | refused | skipped
    why: str | None = None


# -- shared: the department, reading and writing files ----------------------------------------

def department_sources(department: str) -> list[str]:
    """The audited sources whose records ``department`` keeps (config/sources.yaml)."""
    srcs = load_sources()
    mine = [n for n in AUDITED_SOURCES if srcs[n].department == department]
    if not mine:
        known = sorted({srcs[n].department for n in AUDITED_SOURCES})
        raise RenkeiError(f"department {department!r} keeps no audited source: use one of {', '.join(known)}")
    return mine


def _read(path: Path) -> tuple[str, list[str], list[list[str]]]:
    """(encoding option, header, rows) of a review file. The encoding is detected: a BOM or
    non-ASCII UTF-8 is UTF-8; else CP932 (an export in CP932 is plain ASCII until a clerk writes)."""
    raw = Path(path).read_bytes()
    for option, codec in ENCODINGS.items():
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        if option == "utf-8" and not raw.startswith(b"\xef\xbb\xbf") and raw.isascii():
            continue
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if not rows:
            break
        return option, [h.strip() for h in rows[0]], [r for r in rows[1:] if any(f.strip() for f in r)]
    raise RenkeiError(f"{path}: not a review file (empty, or neither UTF-8 nor CP932): "
                      "write it with `renkei review export` and save it as CSV")


def _header(path: Path) -> list[str]:
    """The column names of a review file, from its first line alone (no data row is read)."""
    with Path(path).open("rb") as fh:
        first = fh.readline()
    if first.startswith(b"\xef\xbb\xbf"):
        first = first[3:]
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError:
        text = first.decode("cp932", errors="replace")
    return [h.strip() for h in next(csv.reader([text]), [])]


def _write(path: Path, header: Iterable[str], rows: Iterable[Iterable[str]], encoding: str, private: bool) -> None:
    """Write CSV in ``encoding``; ``private``: mode 0600 (the file holds resident codes)."""
    if encoding not in ENCODINGS:
        raise RenkeiError(f"encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n")  # CRLF: what the department's spreadsheets write
    w.writerow(header)
    for n, row in enumerate(rows, start=2):
        try:
            "".join(row).encode(ENCODINGS[encoding])
        except UnicodeEncodeError:
            raise RenkeiError(f"{path}: line {n} holds a character {encoding} cannot store: "
                              "rewrite that comment, or use --encoding utf-8") from None
        w.writerow(row)
    data = buf.getvalue().encode(ENCODINGS[encoding])
    path = Path(path)
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _check_header(path: Path, header: list[str], want: tuple[str, ...]) -> None:
    if header != list(want):
        raise RenkeiError(f"{path}: columns {header} are not those of a review file ({', '.join(want)}): "
                          "keep the columns `renkei review export` wrote, in their order")


def _department_of(path: Path, rows: list[list[str]], at: int) -> str:
    found = {r[at] for r in rows}
    if len(found) != 1:
        raise RenkeiError(f"{path}: rows of {len(found)} departments; a review file is one department's: "
                          "export each department's own list")
    return found.pop()


# -- 1. export (linkage side) -----------------------------------------------------------------

def _first_seen(conn: sa.Connection) -> dict[str, str]:
    """When each link run first finished building (``link_builds.built_at``), by run id."""
    b = link_builds.c
    return dict(conn.execute(sa.select(b.run_id, sa.func.min(b.built_at)).group_by(b.run_id)).all())


def _current_erks(conn: sa.Connection, source: str, keys: list[str]) -> dict[str, str]:
    """The ERK each record of ``source`` is linked under now (staging), by record key."""
    src = load_sources()[source]
    st = staging_table(src)
    col = st.c[staging_key(src)]
    out: dict[str, str] = {}
    for i in range(0, len(keys), 500):
        out.update(conn.execute(sa.select(col, st.c.erk).where(col.in_(keys[i:i + 500]))).all())
    return out


def export(warehouse_url: str, department: str, out: Path, encoding: str = "utf-8",
           ring: KeyRing | None = None) -> int:
    """Write ``department``'s active pending findings to ``out``; returns the number of rows.

    ``ring`` needs ``link`` and ``dept:<department>`` (the pipeline's keyring; default
    ``KeyRing.load()``): each item's ERK is re-sealed into the department's pseudonym.
    """
    if encoding not in ENCODINGS:
        raise RenkeiError(f"encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    sources = department_sources(department)
    ring = ring or KeyRing.load()
    purpose = f"dept:{department}"
    q = review_queue.c
    eng = engine(warehouse_url)
    try:
        ensure_schema(eng)
        with eng.connect() as conn:
            items = conn.execute(sa.select(review_queue).where(
                q.source.in_(sources), q.active.is_(True), q.state == PENDING,
            ).order_by(q.source, q.record_key, q.reason)).all()
            seen = _first_seen(conn)
            erks: dict[tuple[str, str], str] = {}
            for s in sources:
                keys = sorted({i.record_key for i in items if i.source == s})
                erks.update({(s, k): e for k, e in _current_erks(conn, s, keys).items()})
    finally:
        eng.dispose()
    tokens = [erks.get((i.source, i.record_key), i.erk) for i in items]
    sealed = ring.reseal_many("link", tokens, purpose)
    srcs = load_sources()
    rows = []
    for item, (pseudonym, err) in zip(items, sealed):
        if err is not None:
            raise RenkeiError(f"review item {item.item_id}: its ERK does not re-seal into a {purpose} pseudonym "
                              f"({err}): run with the pipeline's keyring (link and {purpose} keys)")
        resident_keyed = srcs[item.source].key == "dept_pseudonym"
        rows.append([
            department, item.item_id, pseudonym if resident_keyed else item.record_key, pseudonym, item.reason,
            ATTRIBUTE.get(item.reason, ""), seen.get(item.first_seen_run, ""), item.severity, item.state,
            item.row_hash or "", "", "",
        ])
    _write(out, FIELDS, rows, encoding, private=False)
    return len(rows)


# -- 2. and 3. inside the department ----------------------------------------------------------

def resolve(file: Path, dept_ring: KeyRing, out: Path) -> int:
    """Add each row's resident code, opened from its pseudonym with the department's own key;
    returns the number of rows. Runs inside the department: refuses any keyring that holds more
    than department keys, one without this file's department key, and a file it did not export.
    """
    path = Path(file)
    if Path(out).resolve() == path.resolve():
        raise RenkeiError(f"{out}: write the resolved list to a new file, not over the exported one")
    encoding, header, rows = _read(path)
    if RESIDENT_CODE in header:
        raise RenkeiError(f"{path}: already resolved (it has a {RESIDENT_CODE} column)")
    _check_header(path, header, FIELDS)
    pipeline = [p for p in dept_ring.purposes() if not is_department(p)]
    if pipeline:
        raise RenkeiError(f"this keyring holds {', '.join(pipeline)} keys: it is not a department's. Resolve the "
                          "list inside the department with its own keyring (`renkei keys export --for dept:<name>`); "
                          "resident codes must never exist on the linkage side")
    out_rows: list[list[str]] = []
    if rows:
        at = FIELDS.index
        department = _department_of(path, rows, at("department"))
        purpose = f"dept:{department}"
        if not dept_ring.holds(purpose):
            raise RenkeiError(f"{path} is department {department}'s list, and this keyring holds no {purpose} key "
                              f"(it holds {', '.join(dept_ring.purposes()) or 'nothing'}): only {department} "
                              "resolves its own list, with its own keyring")
        for n, r in enumerate(rows, start=2):
            if len(r) != len(FIELDS):
                raise RenkeiError(f"{path}: line {n} has {len(r)} fields, not {len(FIELDS)}: re-export the list")
            try:
                code = dept_ring.open(purpose, r[at("dept_pseudonym")])
            except RenkeiError as exc:
                raise RenkeiError(f"{path}: line {n} (item {r[at('item_id')]}): its dept_pseudonym does not open "
                                  f"under this keyring's {purpose} key ({exc}): re-export the list") from None
            i = at("dept_pseudonym") + 1
            out_rows.append([*r[:i], code, *r[i:]])
    _write(out, RESOLVED_FIELDS, out_rows, encoding, private=True)
    return len(out_rows)


def strip(file: Path, out: Path) -> int:
    """The resolved list without its ``resident_code`` column, ready to go back; returns rows."""
    path = Path(file)
    encoding, header, rows = _read(path)
    if RESIDENT_CODE not in header:
        _check_header(path, header, FIELDS)
        kept = rows
    else:
        _check_header(path, header, RESOLVED_FIELDS)
        i = RESOLVED_FIELDS.index(RESIDENT_CODE)
        kept = [r[:i] + r[i + 1:] for r in rows]
    _write(out, FIELDS, kept, encoding, private=False)
    return len(kept)


# -- 4. import (linkage side) -----------------------------------------------------------------

def _department_row_hash(conn: sa.Connection, source: str, record_key: str) -> str | None:
    src = load_sources()[source]
    st = staging_table(src)
    return conn.execute(sa.select(st.c.row_hash).where(st.c[staging_key(src)] == record_key)).scalar()


def _refusal(conn: sa.Connection, item: sa.Row | None, row: dict, department: str, decision: str,
             sources: list[str]) -> str | None:
    """Why a decided row cannot be applied (None: it can)."""
    if item is None:
        return "the item is not in the queue: re-export the list"
    if row["department"] != department or item.source not in sources:
        return f"not an item of department {department}: send each department's list back on its own"
    if decision not in DECISIONS:
        return ("unknown decision (the cell is not echoed: it may hold anything): write approve (承認) or "
                "reject (却下), or leave it blank to keep the item pending")
    if not row["comment"].strip():
        return "a decision needs a comment saying why"
    if _CODE_LIKE.search(row["comment"]):
        return "the comment holds an 11-digit number like a resident code: remove it, personal data must not cross back"
    if not item.active:
        return "the audit no longer finds this item (the department's record changed): nothing to decide"
    if row["row_hash"] != (item.row_hash or "") or _department_row_hash(conn, item.source, item.record_key) != item.row_hash:
        return "the department's record changed since the export: export the list again and decide on the current record"
    if item.state != PENDING:
        return f"decided since the export ({item.state} by {item.decided_by} at {item.decided_at}): export again to review it"
    return None


def import_decisions(warehouse_url: str, file: Path, department: str, reviewer: str, ring: KeyRing | None = None,
                     anchor: object = None, now: datetime | None = None) -> list[RowOutcome]:
    """Apply the decisions in ``department``'s returned list; returns one outcome per row.

    A row with a decision is applied as ``renkei review approve|reject`` applies one (with
    ``reviewer``), queue row and ``review_decision`` audit entry in one transaction, or refused
    with the reason (nothing changes for it). Blank decisions are skipped; a row already applied
    with the same decision and comment is ``unchanged``. ``ring`` needs the chain key (default
    ``KeyRing.load()``); ``anchor`` as in :func:`renkei.linkage.review.decide`.
    """
    path = Path(file)
    if RESIDENT_CODE in _header(path):  # decided on the first line: no resident code is read here
        raise RenkeiError(f"{path} still holds the {RESIDENT_CODE} column: not read. Inside the department, delete "
                          "that column (or run `renkei review strip`) and send the file again: resident codes never "
                          "leave the department")
    _, header, rows = _read(path)
    _check_header(path, header, FIELDS)
    if not reviewer.strip():
        raise RenkeiError("importing decisions needs a reviewer name: pass --reviewer")
    sources = department_sources(department)
    trail = _trail()
    if trail is not None and ring is None:
        ring = KeyRing.load()
    outcomes: list[RowOutcome] = []
    seen_ids: set[str] = set()
    eng = engine(warehouse_url)
    try:
        ensure_schema(eng)
        for n, fields in enumerate(rows, start=2):
            if len(fields) != len(FIELDS):
                outcomes.append(RowOutcome(n, "", REFUSED, f"{len(fields)} fields, not {len(FIELDS)}: keep the "
                                                             "exported columns"))
                continue
            row = dict(zip(FIELDS, fields))
            iid, word = row["item_id"].strip(), row["decision"].strip()
            if not word:
                outcomes.append(RowOutcome(n, iid, SKIPPED, "no decision: the item stays pending"))
                continue
            if iid in seen_ids:
                outcomes.append(RowOutcome(n, iid, REFUSED, "the item appears twice in the file: keep one row"))
                continue
            seen_ids.add(iid)
            decision = DECISION_WORDS.get(word.lower(), word)
            with eng.begin() as conn:
                item = conn.execute(sa.select(review_queue).where(review_queue.c.item_id == iid)
                                    .with_for_update()).first()
                if (item is not None and item.state == decision and item.decided_by == reviewer.strip()
                        and item.comment == row["comment"].strip() and item.decided_row_hash == row["row_hash"]):
                    outcomes.append(RowOutcome(n, iid, UNCHANGED, "already applied (an earlier import of this file)"))
                    continue
                why = _refusal(conn, item, row, department, decision, sources)
                if why is not None:
                    outcomes.append(RowOutcome(n, iid, REFUSED, why))
                    continue
                at = format_timestamp(now or datetime.now(timezone.utc))
                _decide_on(conn, warehouse_url, item, decision, reviewer, row["comment"], at, now, ring, anchor,
                           trail, extra={"via": "department_file", "department": department})
            outcomes.append(RowOutcome(n, iid, APPLIED))
            if trail is not None:
                trail.anchor_head(warehouse_url, ring=ring, anchor=anchor)
    finally:
        eng.dispose()
    return outcomes
