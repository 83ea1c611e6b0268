"""The notice message: one outbox row as it travels on the notices stream (JSON in field ``data``).

The message holds the columns of the ``notices`` outbox row, dates as ISO strings and ``facts``
as a JSON object. ``notice_id`` is the idempotency key: delivery is at-least-once, so a consumer
drops a notice whose id it has already handled. The resident is named only by the ERK (a
pseudonym); never by a resident code, name or contact.
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
    message_id: str | None = field(default=None, compare=False)  # stream entry id; set by the reader

    def to_dict(self) -> dict[str, Any]:
        """The message fields (no ``message_id``), dates as ISO strings."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "message_id"}
        for name in _DATES:
            out[name] = out[name].isoformat()
        return out

    def to_json(self) -> str:
        """The message body: compact JSON, keys sorted, UTF-8 text kept as is."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], include_facts: bool = True) -> "Notice":
        """A notice from a ``notices`` outbox row (facts JSON text parsed)."""
        doc = {f.name: row[f.name] for f in fields(cls) if f.name != "message_id"}
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
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise NoticeError(
                f"notice message {message_id}: body is not JSON ({exc.__class__.__name__}): "
                "publish with renkei.outputs.relay"
            ) from None
        if not isinstance(doc, dict):
            raise NoticeError(f"notice message {message_id}: body must be a JSON object")
        return cls.from_dict(doc, message_id)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], message_id: str | None = None) -> "Notice":
        where = f"notice message {message_id}"
        names = [f.name for f in fields(cls) if f.name != "message_id"]
        missing = [n for n in names if n not in doc]
        if missing:
            raise NoticeError(f"{where}: field(s) {missing} missing: every notice message needs {names}")
        out = {n: doc[n] for n in names}
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
