"""The audit trail: an append-only log whose entries are HMAC-chained under the chain key.

Entry ``seq`` carries ``entry_hash = chain:v<N>.HMAC-SHA256(k_chain_N, [seq, at, kind, payload,
prev_hash])`` and ``prev_hash`` = the entry_hash of ``seq - 1``. Keyed, so that someone with
database access alone cannot rebuild a consistent chain after an edit. The single-row
``audit_head`` is updated in the same transaction as each append: it serializes appenders and
records the last seq under its own MAC, so a deleted tail is caught too.

What the warehouse alone cannot show is a rollback of log and head together to an earlier copy,
or the audit tables dropped or emptied. So after every commit the head is exported to an anchor
outside the warehouse (:mod:`renkei.audit.anchor`: an append-only file, or an auditor's HTTP
endpoint), and :func:`verify` holds the trail against it; :func:`append` refuses to extend a
trail that is behind its anchor.

Entries without the ``chain:`` prefix were written before the chain key existed, under the match
key; they verify only before the first chain entry. After it, an unprefixed entry is a forgery
(the match key was handed to departments in older keyrings).
"""

from __future__ import annotations

import hmac
import json
import os
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone

import sqlalchemy as sa

from renkei.audit import anchor as anchors
from renkei.audit.anchor import AnchorError
from renkei.errors import RenkeiError
from renkei.keys.ring import KeyRing
from renkei.sources.values import format_timestamp
from renkei.warehouse import audit_head, audit_log, engine, upsert

GENESIS = "0" * 64  # prev_hash of entry 1
KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Keys that would mean a payload carries identity; the trail holds counts, ids and key versions.
PERSONAL_KEYS = frozenset({
    "resident_code", "name", "name_kana", "name_kanji", "address", "birth_date",
    "phone", "email", "contact",
})
_TABLES = [audit_log, audit_head]
Anchor = anchors.Sink | str | os.PathLike | None  # a sink, a directory or URL; None: $RENKEI_AUDIT_ANCHOR


class AuditError(RenkeiError):
    """An entry cannot be appended (bad kind or payload, a head that disagrees with the log, or a
    trail behind its anchor)."""


class AnchorWriteError(AuditError):
    """The entry is committed, but its head could not be exported to the anchor."""


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`: ``first_bad_seq`` and ``problem`` are None when ok.

    ``anchored``: the highest seq the anchor records (None: not anchored); ``anchor``: where the
    anchor was looked for; ``restores``: the accepted restores it records."""

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None
    anchored: int | None = None
    anchor: str | None = None
    restores: tuple[str, ...] = ()  # accepted restores the anchor records (accept_restore)


def append(warehouse_url: str, kind: str, payload: dict, ring: KeyRing | None = None,
           now: datetime | None = None, conn: sa.Connection | None = None, anchor: Anchor = None) -> int:
    """Append one entry (serialized against concurrent appenders) and return its seq.

    ``ring`` defaults to :meth:`KeyRing.load` (``$RENKEI_KEYRING``); ``now`` to the clock;
    ``anchor`` to :func:`renkei.audit.anchor.sink` (``$RENKEI_AUDIT_ANCHOR``).

    Without ``conn`` the entry commits on its own connection and the new head is anchored.
    With ``conn`` it is written inside the caller's transaction (which then holds the trail's
    lock until it ends) and nothing is anchored: after the commit, call :func:`anchor_head`.

    Refuses (before writing) a trail that is behind its anchor: the warehouse was rolled back.
    Raises :class:`AnchorWriteError` when the entry committed but the anchor could not be written.
    """
    if not isinstance(kind, str) or not KIND.match(kind):
        raise AuditError(f"audit kind {kind!r} is invalid: use lower_snake_case, at most 32 characters (e.g. linkage_run)")
    body = canonical_payload(kind, payload)
    ring = ring or KeyRing.load()
    _need_chain_key(ring)
    at = format_timestamp(now or datetime.now(timezone.utc))
    sink = anchors.sink(anchor, create=True)
    wid = anchors.warehouse_id(warehouse_url)
    floor = _anchored_floor(sink, wid, ring)
    if conn is not None:
        audit_log.metadata.create_all(conn, tables=_TABLES)
        upsert(conn, audit_head, [{"id": 1, "seq": 0, "entry_hash": GENESIS,
                                   "head_mac": _head_mac(ring, 0, GENESIS)}], update=False)
        return _append_on(conn, ring, at, kind, body, floor)[0]
    eng = engine(warehouse_url)
    try:
        _ensure_tables(eng)
        with eng.begin() as c:  # the genesis head, once; concurrent first appends insert it once
            upsert(c, audit_head, [{"id": 1, "seq": 0, "entry_hash": GENESIS,
                                    "head_mac": _head_mac(ring, 0, GENESIS)}], update=False)
        with eng.connect() as c:
            _lock(c)
            head = _append_on(c, ring, at, kind, body, floor)
            c.commit()
    finally:
        eng.dispose()
    _export(sink, wid, ring, *head)
    return head[0]


def anchor_head(warehouse_url: str, ring: KeyRing | None = None, anchor: Anchor = None) -> int:
    """Export the committed head to the anchor (after ``append(..., conn=...)`` committed);
    returns its seq (0: nothing to anchor). Refuses a head that does not authenticate."""
    ring = ring or KeyRing.load()
    eng = engine(warehouse_url)
    try:
        with eng.connect() as conn:
            if not sa.inspect(conn).has_table(audit_head.name):
                return 0
            head = conn.execute(sa.select(audit_head).where(audit_head.c.id == 1)).mappings().first()
    finally:
        eng.dispose()
    if head is None or head["seq"] == 0:
        return 0
    want = _mac_as(ring, head["head_mac"], _head_message(head["seq"], head["entry_hash"]))
    if not head["head_mac"].startswith(CHAIN_PREFIX) or want is None or not hmac.compare_digest(want, head["head_mac"]):
        raise AuditError("audit_head does not authenticate under the chain key: not anchoring it; run `renkei audit verify`")
    _export(anchors.sink(anchor, create=True), anchors.warehouse_id(warehouse_url), ring,
            head["seq"], head["entry_hash"], head["head_mac"])
    return head["seq"]


def _append_on(conn: sa.Connection, ring: KeyRing, at: str, kind: str, body: str,
               floor: dict | None) -> tuple[int, str, str]:
    """Append under the head's lock on ``conn`` (not committed); returns the new head."""
    head = conn.execute(sa.select(audit_head).where(audit_head.c.id == 1).with_for_update()).mappings().one()
    last = conn.execute(sa.select(sa.func.max(audit_log.c.seq))).scalar() or 0
    if last != head["seq"]:
        raise AuditError(
            f"audit_head says the log ends at seq {head['seq']} but audit_log ends at seq {last}: "
            "the trail was altered; run `renkei audit verify` and restore the warehouse from backup"
        )
    if floor is not None and head["seq"] < floor["seq"]:
        raise AuditError(
            f"the audit trail ends at seq {head['seq']} but its anchor ({floor['where']}) recorded seq {floor['seq']} "
            f"at {floor['at']}: the warehouse's audit tables were rolled back, emptied or dropped. Not appending: run "
            "`renkei audit verify`, keep this warehouse as evidence and restore audit_log and audit_head from a copy "
            f"that reaches seq {floor['seq']}"
        )
    seq = last + 1
    entry_hash = _seal(ring, seq, at, kind, body, head["entry_hash"])
    head_mac = _head_mac(ring, seq, entry_hash)
    conn.execute(sa.insert(audit_log).values(seq=seq, at=at, kind=kind, payload=body,
                                             prev_hash=head["entry_hash"], entry_hash=entry_hash))
    conn.execute(sa.update(audit_head).where(audit_head.c.id == 1).values(
        seq=seq, entry_hash=entry_hash, head_mac=head_mac))
    return seq, entry_hash, head_mac


def _anchor_message(warehouse: str, rec: dict) -> bytes:
    fields = [anchors.FORMAT, warehouse, rec["seq"], rec["entry_hash"], rec["head_mac"], rec["at"]]
    if rec.get("kind") == RESTORE:
        fields += [RESTORE, rec["replaces"], rec["reason"]]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


RESTORE = "restore"  # an anchor record that accepts a restored (older) trail, see accept_restore


def anchor_record(ring: KeyRing, warehouse: str, seq: int, entry_hash: str, head_mac: str,
                  at: str | None = None, restore: dict | None = None) -> dict:
    """The anchor record of one head, authenticated under the chain key (``restore``: ``replaces``
    and ``reason`` of an accepted restore)."""
    at = at or format_timestamp(datetime.now(timezone.utc))
    rec = {"format": anchors.FORMAT, "warehouse": warehouse, "seq": seq, "entry_hash": entry_hash,
           "head_mac": head_mac, "at": at}
    if restore is not None:
        rec.update(kind=RESTORE, replaces=restore["replaces"], reason=restore["reason"])
    rec["mac"] = _chain_mac(ring, _anchor_message(warehouse, rec))
    return rec


def _export(sink: anchors.Sink, wid: str, ring: KeyRing, seq: int, entry_hash: str, head_mac: str) -> None:
    try:
        sink.write(anchor_record(ring, wid, seq, entry_hash, head_mac))
    except AnchorError as exc:
        raise AnchorWriteError(f"audit entry {seq} is committed but its head was not anchored: {exc}. The next "
                               "append anchors the head again; fix the anchor before relying on `renkei audit verify`") from None


def _authentic(ring: KeyRing, wid: str, rec: dict | None) -> bool:
    """Whether an anchor record is well formed, of this warehouse and MACed under the chain key."""
    if not isinstance(rec, dict) or rec.get("format") != anchors.FORMAT or rec.get("warehouse") != wid:
        return False
    seq, entry_hash, head_mac, at, mac = (rec.get(k) for k in ("seq", "entry_hash", "head_mac", "at", "mac"))
    restore = rec.get("kind") == RESTORE
    if "kind" in rec and not restore:
        return False
    if restore and not (isinstance(rec.get("replaces"), int) and isinstance(rec.get("reason"), str)):
        return False
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= (0 if restore else 1)
            and all(isinstance(v, str) for v in (entry_hash, head_mac, at, mac))):
        return False
    if not (mac.startswith(CHAIN_PREFIX) and head_mac.startswith(CHAIN_PREFIX)):
        return False
    for stored, message in ((mac, _anchor_message(wid, rec)), (head_mac, _head_message(seq, entry_hash))):
        want = _mac_as(ring, stored, message)
        if want is None or not hmac.compare_digest(want, stored):
            return False
    return True


def _effective(records: list[tuple[str, dict]]) -> tuple[list[dict], list[dict]]:
    """(the anchored heads that still bind, the restores), in file order: an accepted restore to
    seq R supersedes the heads anchored before it above R."""
    kept: list[dict] = []
    restores: list[dict] = []
    for where, rec in records:
        rec = {**rec, "where": where}
        if rec.get("kind") == RESTORE:
            kept = [r for r in kept if r["seq"] <= rec["seq"]]
            restores.append(rec)
        kept.append(rec)
    return kept, restores


def _anchored_floor(sink: anchors.Sink, wid: str, ring: KeyRing) -> dict | None:
    """The highest authenticated anchored head among the anchor's recent records (None: none)."""
    try:
        sink.check()
        found = sink.read(wid, tail=True)
    except AnchorError as exc:
        raise AuditError(f"not appending to the audit trail: {exc}") from None
    kept, _ = _effective([(w, r) for w, r in found if _authentic(ring, wid, r)])
    return max(kept, key=lambda r: r["seq"]) if kept else None


def accept_restore(warehouse_url: str, ring: KeyRing, reason: str, anchor: Anchor = None,
                   keyring_path: str | os.PathLike | None = None) -> dict:
    """Record in the anchor that the trail was deliberately restored to an older copy, so that
    verify and append accept it from now on (the anchor keeps the record: the rollback stays
    visible). Refuses unless the restored chain verifies on its own and agrees with every anchored
    head it still covers. Returns the restore record."""
    if not reason or not reason.strip():
        raise AuditError("accepting a restore needs a reason (the dump, the incident): pass --reason")
    _need_chain_key(ring)
    sink = anchors.sink(anchor, keyring=keyring_path, create=True)
    wid = anchors.warehouse_id(warehouse_url)
    res = verify(warehouse_url, ring, anchor=sink)
    if res.ok:
        raise AuditError(f"the trail verifies against its anchor ({res.entries} entries): there is no restore to accept")
    alone = verify(warehouse_url, ring, anchor=_NoAnchor())
    if not alone.ok:
        raise AuditError(f"the restored trail does not verify on its own ({alone.problem}): restore another copy")
    kept, _ = _effective([(w, r) for w, r in sink.read(wid) if _authentic(ring, wid, r)])
    eng = engine(warehouse_url)
    try:
        with eng.connect() as conn:
            if all(sa.inspect(conn).has_table(t.name) for t in _TABLES):
                head = conn.execute(sa.select(audit_head).where(audit_head.c.id == 1)).mappings().first()
                hashes = dict(conn.execute(sa.select(audit_log.c.seq, audit_log.c.entry_hash)).all())
            else:
                head, hashes = None, {}
    finally:
        eng.dispose()
    seq, entry_hash = (head["seq"], head["entry_hash"]) if head else (0, GENESIS)
    head_mac = head["head_mac"] if head else _head_mac(ring, 0, GENESIS)
    if not head_mac.startswith(CHAIN_PREFIX):
        head_mac = _head_mac(ring, seq, entry_hash)  # a legacy head: vouched for by the chain check above
    for rec in kept:
        if 1 <= rec["seq"] <= seq and not hmac.compare_digest(hashes.get(rec["seq"], ""), rec["entry_hash"]):
            raise AuditError(f"the restored trail's entry {rec['seq']} differs from the one anchored at {rec['at']}: "
                             "it is not an earlier copy of this trail; restore another copy")
    top = max((r["seq"] for r in kept), default=0)
    record = anchor_record(ring, wid, seq, entry_hash, head_mac, restore={"replaces": top, "reason": reason.strip()})
    sink.write(record)
    return record


class _NoAnchor:
    """A sink with nothing in it: verify the chain alone."""

    def check(self) -> None:
        return None

    def write(self, record: dict) -> None:
        raise AnchorError("no anchor")

    def read(self, warehouse: str, tail: bool = False) -> list:
        return []

    def describe(self, warehouse: str) -> str:
        return "none"


def verify(warehouse_url: str, ring: KeyRing, anchor: Anchor = None,
           keyring_path: str | os.PathLike | None = None) -> VerifyResult:
    """Walk the chain from seq 1, then hold it against the anchor; report the first thing that
    does not hold. ``anchor`` as for :func:`append`; ``keyring_path`` places the default anchor
    directory (next to that keyring) when neither ``anchor`` nor ``$RENKEI_AUDIT_ANCHOR`` is set."""
    sink = anchors.sink(anchor, keyring=keyring_path)
    wid = anchors.warehouse_id(warehouse_url)
    where = sink.describe(wid)
    try:
        records = sink.read(wid)
    except AnchorError as exc:
        return VerifyResult(False, 0, None, f"{exc}: the trail cannot be checked against its anchor", None, where)
    for rec_where, rec in records:
        if not _authentic(ring, wid, rec):
            seq = rec.get("seq") if isinstance(rec, dict) and isinstance(rec.get("seq"), int) else None
            return VerifyResult(False, 0, seq, f"anchor record {rec_where} does not authenticate under the chain key "
                                "for this warehouse (edited, forged or copied from another warehouse's anchor)", None, where)
    kept, restores = _effective(records)
    top = max(kept, key=lambda r: r["seq"]) if kept else None
    anchored = top["seq"] if top else None
    notes = tuple(f"restored at {r['at']} from seq {r['replaces']} to seq {r['seq']}: {r['reason']}" for r in restores)
    if top is not None and top["seq"] == 0:
        top = None  # restored to an empty trail: nothing anchored binds

    def result(ok: bool, entries: int, bad: int | None = None, problem: str | None = None) -> VerifyResult:
        return VerifyResult(ok, entries, bad, problem, anchored, where, notes)

    eng = engine(warehouse_url)
    try:
        with eng.connect() as conn:
            missing = [t.name for t in _TABLES if not sa.inspect(conn).has_table(t.name)]
        if missing:
            if top:
                return result(False, 0, 1, f"the audit table(s) {', '.join(missing)} are missing, but the anchor recorded "
                              f"{top['seq']} entries (last at {top['at']}): the trail was dropped")
            return result(True, 0)
        with _snapshot(eng) as conn:
            head = conn.execute(sa.select(audit_head).where(audit_head.c.id == 1)).mappings().first()
            rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings().all()
    finally:
        eng.dispose()
    if not rows and top:
        return result(False, 0, 1, f"audit_log is empty, but the anchor recorded {top['seq']} entries (last at "
                      f"{top['at']}): the log was emptied")
    prev, expected, chain_from = GENESIS, 1, None
    for row in rows:
        seq = row["seq"]
        if seq != expected:
            return result(False, len(rows), expected,
                          f"entry {expected} is missing (the next stored entry is {seq}): entries were deleted")
        if row["entry_hash"].startswith(CHAIN_PREFIX):
            chain_from = chain_from or seq
        elif chain_from is not None:
            return result(False, len(rows), seq,
                          f"entry {seq}: entry_hash is not under the chain key, but entry {chain_from} already was: "
                          "an entry sealed with the match key after the chain key took over is a forgery")
        want = _seal_as(ring, row["entry_hash"], seq, row["at"], row["kind"], row["payload"], row["prev_hash"])
        if want is None:
            return result(False, len(rows), seq,
                          f"entry {seq}: entry_hash names a chain key version this keyring does not hold, or is malformed")
        if not hmac.compare_digest(want, row["entry_hash"]):
            return result(False, len(rows), seq,
                          f"entry {seq}: entry_hash does not match its seq, at, kind, payload and prev_hash "
                          "under the chain key (edited, moved or forged)")
        if not hmac.compare_digest(row["prev_hash"], prev):
            return result(False, len(rows), seq, f"entry {seq}: prev_hash does not match entry {seq - 1} (reordered or replaced)")
        prev, expected = row["entry_hash"], seq + 1
    last = expected - 1
    if head is None:
        if rows:
            return result(False, len(rows), last, "audit_head is missing: the head record was deleted")
        return result(True, 0)
    head_want = _mac_as(ring, head["head_mac"], _head_message(head["seq"], head["entry_hash"]))
    if (head_want is None or not hmac.compare_digest(head_want, head["head_mac"])
            or (chain_from is not None and not head["head_mac"].startswith(CHAIN_PREFIX))):
        return result(False, len(rows), head["seq"] if head["seq"] > last else last + 1,
                      "audit_head does not authenticate under the chain key (edited or forged)")
    if head["seq"] > last:
        return result(False, len(rows), last + 1,
                      f"entries {last + 1}…{head['seq']} are missing: the log was truncated after entry {last}")
    if head["seq"] < last:
        return result(False, len(rows), head["seq"] + 1,
                      f"entries after {head['seq']} were added without going through append (audit_head ends at {head['seq']})")
    if not hmac.compare_digest(head["entry_hash"], prev):
        return result(False, len(rows), last, f"entry {last}: it differs from the one audit_head recorded (replaced)")
    if top and last < top["seq"]:
        return result(False, len(rows), last + 1,
                      f"the trail ends at seq {last}, but the anchor recorded seq {top['seq']} at {top['at']}: it was rolled "
                      f"back to an earlier copy or truncated (entries {last + 1}…{top['seq']} are gone)")
    for rec in sorted((r for r in kept if r["seq"] >= 1), key=lambda r: r["seq"]):
        if not hmac.compare_digest(rows[rec["seq"] - 1]["entry_hash"], rec["entry_hash"]):
            return result(False, len(rows), rec["seq"],
                          f"entry {rec['seq']}: it differs from the one anchored at {rec['at']} (the trail was rewritten)")
    return result(True, len(rows))


def canonical_payload(kind: str, payload: dict) -> str:
    """The payload as canonical JSON (sorted keys, no spaces); refuses keys of personal data."""
    if not isinstance(payload, dict):
        raise AuditError(f"audit entry {kind}: payload must be a dict of counts, ids and key versions")
    bad = sorted(_personal_keys(payload))
    if bad:
        raise AuditError(f"audit entry {kind}: payload keys {bad} would hold personal data: record counts or ids instead")
    try:
        return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_jsonable)
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit entry {kind}: payload is not JSON ({exc}): pass numbers, strings, lists and dicts") from None


def _personal_keys(value: object) -> set[str]:
    if isinstance(value, dict):
        found = {k for k in value if isinstance(k, str) and k.lower() in PERSONAL_KEYS}
        for v in value.values():
            found |= _personal_keys(v)
        return found
    if isinstance(value, (list, tuple)):
        return set().union(*(_personal_keys(v) for v in value)) if value else set()
    return set()


def _jsonable(value: object) -> str:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _ensure_tables(eng: sa.Engine, attempts: int = 5) -> None:
    for attempt in range(attempts):
        try:
            audit_log.metadata.create_all(eng, tables=_TABLES)
            return
        except sa.exc.DBAPIError:
            # First appenders race on CREATE TABLE; the loser retries and finds the tables there.
            if attempt == attempts - 1:
                raise


def _lock(conn: sa.Connection) -> None:
    """Take the write lock first: BEGIN IMMEDIATE on SQLite; PostgreSQL locks the head row (FOR UPDATE)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _snapshot(eng: sa.Engine) -> sa.Connection:
    """A connection reading from one snapshot, so a concurrent append is not taken for tampering."""
    if eng.dialect.name == "postgresql":
        return eng.connect().execution_options(isolation_level="REPEATABLE READ")
    conn = eng.connect()
    if eng.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN")  # pysqlite would not open a read transaction by itself
    return conn


def _message(seq: int, at: str, kind: str, payload: str, prev_hash: str) -> bytes:
    return json.dumps(["renkei-audit/1", seq, at, kind, payload, prev_hash],
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _head_message(seq: int, entry_hash: str) -> bytes:
    return json.dumps(["renkei-audit-head/1", seq, entry_hash], separators=(",", ":")).encode("utf-8")


CHAIN_PREFIX = "chain:"  # entries and heads MACed under the chain key; bare v<N>. = the match key (before /3)


def _seal(ring: KeyRing, seq: int, at: str, kind: str, payload: str, prev_hash: str) -> str:
    return _chain_mac(ring, _message(seq, at, kind, payload, prev_hash))


def _head_mac(ring: KeyRing, seq: int, entry_hash: str) -> str:
    return _chain_mac(ring, _head_message(seq, entry_hash))


def _need_chain_key(ring: KeyRing) -> None:
    if not ring.holds("chain"):
        raise AuditError("the keyring holds no chain key, which signs the audit trail: the pipeline's keyring needs it "
                         "(`renkei keys add --purpose chain`, then deploy the keyring to the pipeline's writers)")


def _chain_mac(ring: KeyRing, message: bytes) -> str:
    _need_chain_key(ring)
    return f"{CHAIN_PREFIX}v{ring.current('chain')}.{ring.mac(message, purpose='chain')}"


def _seal_as(ring: KeyRing, stored: str, seq: int, at: str, kind: str, payload: str, prev_hash: str) -> str | None:
    return _mac_as(ring, stored, _message(seq, at, kind, payload, prev_hash))


def _mac_as(ring: KeyRing, stored: str, message: bytes) -> str | None:
    """The MAC of ``message`` under the key and version named by ``stored`` (None if not held).

    Entries written before a key rotation verify under the older version they name; entries
    written before the chain key existed (no ``chain:`` prefix) under the match key.
    """
    stored = stored or ""
    purpose, prefix = ("chain", CHAIN_PREFIX) if stored.startswith(CHAIN_PREFIX) else ("match", "")
    v = KeyRing.version_of(stored[len(prefix):])
    if v is None or not ring.holds(purpose) or v not in ring.versions(purpose)["versions"]:
        return None
    return f"{prefix}v{v}.{ring.mac(message, version=v, purpose=purpose)}"
