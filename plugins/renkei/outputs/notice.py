"""The messages of the notices stream (JSON in field ``data``): notices and their state changes.

A notice message holds the columns of the ``notices`` outbox row, dates as ISO strings and
``facts`` as a JSON object; ``replaces`` only when the notice supersedes another. ``notice_id``
is the idempotency key: delivery is at-least-once, so a consumer drops a notice whose id it has
already handled. The resident is named only by the ERK (a pseudonym); never by a resident code,
name or contact.

A state message (``"type": "notice_state"``) carries one lifecycle transition of a notice
published earlier (renkei.outputs.lifecycle): withdrawn, superseded or reinstated, with its
reason. Its idempotency key is (``notice_id``, ``seq``). :func:`decode` tells the two apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any

from renkei.errors import RenkeiError

_DATES = ("window_start", "window_end", "evaluated_on")
_INTS = ("rule_version",)
_STRINGS = ("notice_id", "service", "kind", "erk", "rule_id", "subject", "created_run_id", "created_at")
_OPTIONAL = ("replaces", "message_id")
STATE_TYPE = "notice_state"  # the ``type`` of a state message (a notice message has none)


class NoticeError(RenkeiError):
    """A notice message is malformed."""


@dataclass(frozen=True)
class Notice:
    """One notice of the outbox, as a consumer sees it."""

    notice_id: str
    service: str
    kind: str
    erk: str
    rule_id: str
    rule_version: int
    subject: str
    dose_number: int | None
    window_start: date
    window_end: date
    evaluated_on: date
    facts: dict[str, Any]
    created_run_id: str
    created_at: str  # canonical JST timestamp 'YYYY-MM-DDTHH:MM:SS+09:00'
    replaces: str | None = None  # the notice this one supersedes
    message_id: str | None = field(default=None, compare=False)  # stream entry id; set by the reader

    def to_dict(self) -> dict[str, Any]:
        """The message fields (no ``message_id``; ``replaces`` only when set), dates as ISO strings."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "message_id"}
        if out["replaces"] is None:
            del out["replaces"]
        for name in _DATES:
            out[name] = out[name].isoformat()
        return out

    def to_json(self) -> str:
        """The message body: compact JSON, keys sorted, UTF-8 text kept as is."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], include_facts: bool = False) -> "Notice":
        """A notice from a ``notices`` outbox row (facts JSON text parsed)."""
        doc = {f.name: row[f.name] for f in fields(cls) if f.name not in _OPTIONAL}
        doc["replaces"] = row.get("replaces")
        try:
            doc["facts"] = json.loads(row["facts"]) if include_facts else {}
        except ValueError:
            raise NoticeError(
                f"notice {row['notice_id']}: column facts is not JSON: rewrite the row with renkei.outputs.outbox"
            ) from None
        return cls(**doc)

    @classmethod
    def from_json(cls, text: str | bytes, message_id: str | None = None) -> "Notice":
        """Decode and check a message body; raise NoticeError naming the bad field."""
        return cls.from_dict(_load(text, message_id), message_id)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], message_id: str | None = None) -> "Notice":
        where = f"notice message {message_id}"
        names = [f.name for f in fields(cls) if f.name not in _OPTIONAL]
        missing = [n for n in names if n not in doc]
        if missing:
            raise NoticeError(f"{where}: field(s) {missing} missing: every notice message needs {names}")
        out = {n: doc[n] for n in names}
        out["replaces"] = doc.get("replaces")
        if out["replaces"] is not None and (not isinstance(out["replaces"], str) or not out["replaces"]):
            raise NoticeError(f"{where}: field 'replaces' must be a notice id (a non-empty string) when present")
        for name in _STRINGS:
            if not isinstance(out[name], str) or not out[name]:
                raise NoticeError(f"{where}: field '{name}' must be a non-empty string")
        for name in _INTS:
            if not isinstance(out[name], int) or isinstance(out[name], bool):
                raise NoticeError(f"{where}: field '{name}' must be an integer")
        if out["dose_number"] is not None and (not isinstance(out["dose_number"], int) or isinstance(out["dose_number"], bool)):
            raise NoticeError(f"{where}: field 'dose_number' must be an integer or null")
        if not isinstance(out["facts"], dict):
            raise NoticeError(f"{where}: field 'facts' must be a JSON object")
        for name in _DATES:
            try:
                out[name] = date.fromisoformat(out[name])
            except (TypeError, ValueError):
                raise NoticeError(f"{where}: field '{name}' must be a date 'YYYY-MM-DD'") from None
        return cls(**out, message_id=message_id)


@dataclass(frozen=True)
class NoticeState:
    """A lifecycle transition of a notice, as a consumer sees it (docs/EVENTS.md).

    ``state``: withdrawn (do not send it), superseded (do not send it; ``superseded_by`` is sent
    instead) or reinstated (it may be sent again). ``seq`` orders the transitions of a notice.
    """

    seq: int
    notice_id: str
    state: str  # withdrawn | superseded | reinstated
    reason: str  # e.g. dose_recorded, opted_out, rule_asks_other, basis_restored
    superseded_by: str | None
    at: str  # canonical JST timestamp
    run_id: str  # the services run that decided it
    message_id: str | None = field(default=None, compare=False)  # stream entry id; set by the reader

    def to_dict(self) -> dict[str, Any]:
        """The message fields (no ``message_id``), with ``"type": "notice_state"``."""
        return {"type": STATE_TYPE, **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "message_id"}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "NoticeState":
        """A state message from a ``notice_events`` row."""
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name != "message_id"})

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], message_id: str | None = None) -> "NoticeState":
        where = f"notice state message {message_id}"
        names = [f.name for f in fields(cls) if f.name != "message_id"]
        missing = [n for n in names if n not in doc]
        if missing:
            raise NoticeError(f"{where}: field(s) {missing} missing: every state message needs {names}")
        out = {n: doc[n] for n in names}
        if not isinstance(out["seq"], int) or isinstance(out["seq"], bool):
            raise NoticeError(f"{where}: field 'seq' must be an integer")
        for name in ("notice_id", "state", "reason", "at", "run_id"):
            if not isinstance(out[name], str) or not out[name]:
                raise NoticeError(f"{where}: field '{name}' must be a non-empty string")
        if out["superseded_by"] is not None and (not isinstance(out["superseded_by"], str) or not out["superseded_by"]):
            raise NoticeError(f"{where}: field 'superseded_by' must be a notice id or null")
        return cls(**out, message_id=message_id)


def decode(text: str | bytes, message_id: str | None = None) -> Notice | NoticeState:
    """A message body of the notices stream: a NoticeState when its ``type`` says so, else a
    Notice; raise NoticeError naming the bad field."""
    doc = _load(text, message_id)
    kind = doc.get("type")
    if kind == STATE_TYPE:
        return NoticeState.from_dict(doc, message_id)
    if kind is not None:
        raise NoticeError(f"notice message {message_id}: type {kind!r} is unknown: expected none or {STATE_TYPE!r}")
    return Notice.from_dict(doc, message_id)


def _load(text: str | bytes, message_id: str | None) -> dict:
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NoticeError(
            f"notice message {message_id}: body is not JSON ({exc.__class__.__name__}): "
            "publish with renkei.outputs.relay"
        ) from None
    if not isinstance(doc, dict):
        raise NoticeError(f"notice message {message_id}: body must be a JSON object")
    return doc
