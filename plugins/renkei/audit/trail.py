"""The audit trail: an append-only log whose entries are HMAC-chained under the audit key.

Entry ``seq`` carries ``entry_hash = v<N>.HMAC-SHA256(k_audit_N, [seq, at, kind, payload,
prev_hash])`` and ``prev_hash`` = the entry_hash of ``seq - 1``. Keyed, so that someone with
database access alone cannot rebuild a consistent chain after an edit. The single-row
``audit_head`` is updated in the same transaction as each append: it serializes appenders and
records the last seq under its own MAC, so a deleted tail is caught too. What the chain cannot
show is a rollback of log and head together to an earlier copy; anchoring the head outside the
warehouse (the run report, a mail to the auditor) closes that.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone

import sqlalchemy as sa

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


class AuditError(RenkeiError):
    """An entry cannot be appended (bad kind or payload, or a head that disagrees with the log)."""


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`: ``first_bad_seq`` and ``problem`` are None when ok."""

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None


def append(warehouse_url: str, kind: str, payload: dict, ring: KeyRing | None = None,
           now: datetime | None = None) -> int:
    """Append one entry (serialized against concurrent appenders) and return its seq.

    ``ring`` defaults to :meth:`KeyRing.load` (``$RENKEI_KEYRING``); ``now`` to the clock.
    """
    if not isinstance(kind, str) or not KIND.match(kind):
        raise AuditError(f"audit kind {kind!r} is invalid: use lower_snake_case, at most 32 characters (e.g. linkage_run)")
    body = canonical_payload(kind, payload)
    ring = ring or KeyRing.load()
    at = format_timestamp(now or datetime.now(timezone.utc))
    eng = engine(warehouse_url)
    try:
        _ensure_tables(eng)
        with eng.begin() as conn:  # the genesis head, once; concurrent first appends insert it once
            upsert(conn, audit_head, [{"id": 1, "seq": 0, "entry_hash": GENESIS,
                                       "head_mac": _head_mac(ring, 0, GENESIS)}], update=False)
        with eng.connect() as conn:
            _lock(conn)
            head = conn.execute(sa.select(audit_head).where(audit_head.c.id == 1).with_for_update()).mappings().one()
            last = conn.execute(sa.select(sa.func.max(audit_log.c.seq))).scalar() or 0
            if last != head["seq"]:
                raise AuditError(
                    f"audit_head says the log ends at seq {head['seq']} but audit_log ends at seq {last}: "
                    "the trail was altered; run `renkei audit verify` and restore the warehouse from backup"
                )
            seq = last + 1
            entry_hash = _seal(ring, seq, at, kind, body, head["entry_hash"])
            conn.execute(sa.insert(audit_log).values(seq=seq, at=at, kind=kind, payload=body,
                                                     prev_hash=head["entry_hash"], entry_hash=entry_hash))
            conn.execute(sa.update(audit_head).where(audit_head.c.id == 1).values(
                seq=seq, entry_hash=entry_hash, head_mac=_head_mac(ring, seq, entry_hash)))
            conn.commit()
        return seq
    finally:
        eng.dispose()


def verify(warehouse_url: str, ring: KeyRing) -> VerifyResult:
    """Walk the chain from seq 1 and report the first entry that does not hold."""
    eng = engine(warehouse_url)
    try:
        with eng.connect() as conn:
            if not all(sa.inspect(conn).has_table(t.name) for t in _TABLES):
                return VerifyResult(True, 0)
        with _snapshot(eng) as conn:
            head = conn.execute(sa.select(audit_head).where(audit_head.c.id == 1)).mappings().first()
            rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings().all()
    finally:
        eng.dispose()
    prev, expected = GENESIS, 1
    for row in rows:
        seq = row["seq"]
        if seq != expected:
            return VerifyResult(False, len(rows), expected,
                                f"entry {expected} is missing (the next stored entry is {seq}): entries were deleted")
        want = _seal_as(ring, row["entry_hash"], seq, row["at"], row["kind"], row["payload"], row["prev_hash"])
        if want is None:
            return VerifyResult(False, len(rows), seq,
                                f"entry {seq}: entry_hash names an audit key version this keyring does not hold, or is malformed")
        if not hmac.compare_digest(want, row["entry_hash"]):
            return VerifyResult(False, len(rows), seq,
                                f"entry {seq}: entry_hash does not match its seq, at, kind, payload and prev_hash "
                                "under the audit key (edited, moved or forged)")
        if not hmac.compare_digest(row["prev_hash"], prev):
            return VerifyResult(False, len(rows), seq,
                                f"entry {seq}: prev_hash does not match entry {seq - 1} (reordered or replaced)")
        prev, expected = row["entry_hash"], seq + 1
    last = expected - 1
    if head is None:
        if rows:
            return VerifyResult(False, len(rows), last, "audit_head is missing: the head record was deleted")
        return VerifyResult(True, 0)
    head_want = _mac_as(ring, head["head_mac"], _head_message(head["seq"], head["entry_hash"]))
    if head_want is None or not hmac.compare_digest(head_want, head["head_mac"]):
        return VerifyResult(False, len(rows), head["seq"] if head["seq"] > last else last + 1,
                            "audit_head does not authenticate under the audit key (edited or forged)")
    if head["seq"] > last:
        return VerifyResult(False, len(rows), last + 1,
                            f"entries {last + 1}…{head['seq']} are missing: the log was truncated after entry {last}")
    if head["seq"] < last:
        return VerifyResult(False, len(rows), head["seq"] + 1,
                            f"entries after {head['seq']} were added without going through append (audit_head ends at {head['seq']})")
    if not hmac.compare_digest(head["entry_hash"], prev):
        return VerifyResult(False, len(rows), last, f"entry {last}: it differs from the one audit_head recorded (replaced)")
    return VerifyResult(True, len(rows))


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


def _seal(ring: KeyRing, seq: int, at: str, kind: str, payload: str, prev_hash: str) -> str:
    return f"v{ring.versions('audit')['current']}.{ring.mac(_message(seq, at, kind, payload, prev_hash))}"


def _head_mac(ring: KeyRing, seq: int, entry_hash: str) -> str:
    return f"v{ring.versions('audit')['current']}.{ring.mac(_head_message(seq, entry_hash))}"


def _seal_as(ring: KeyRing, stored: str, seq: int, at: str, kind: str, payload: str, prev_hash: str) -> str | None:
    return _mac_as(ring, stored, _message(seq, at, kind, payload, prev_hash))


def _mac_as(ring: KeyRing, stored: str, message: bytes) -> str | None:
    """The MAC of ``message`` under the audit key version named by ``stored`` (None if unknown).

    Entries written before an audit-key rotation verify under the older version they name.
    """
    v = KeyRing.version_of(stored)
    if v is None or v not in ring.versions("audit")["versions"]:
        return None
    return f"v{v}.{ring.mac(message, version=v)}"
