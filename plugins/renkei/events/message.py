"""The change event: a wake-up telling Airflow that a source has new rows, never the rows.

A ``ChangeEvent`` carries the source name, the last change sequence the export adapter wrote, a
row count and its own identity — no personal data, no record keys. Ingest reads by its persisted
position in that sequence, so a lost, duplicated or reordered event costs latency, never data.
"""

from __future__ import annotations

import datetime
import json
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from renkei.errors import RenkeiError
from renkei.sources.values import format_timestamp

# Canonical timestamp: 'YYYY-MM-DDTHH:MM:SS+09:00' (renkei.sources.values.format_timestamp).
_TS_LEN = len("2024-01-01T00:00:00+09:00")


class ChangeEventError(RenkeiError):
    """A change event message is malformed."""


def now_timestamp() -> str:
    """Now as a canonical JST timestamp."""
    return format_timestamp(datetime.datetime.now(datetime.timezone.utc))


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ChangeEvent:
    """One change notice of a departmental source."""

    source: str
    change_seq: int  # the last extract change_seq written (the adapter's sequence, never a data value)
    row_count: int  # extract rows (upserts and tombstones) the export wrote (informational)
    emitted_at: str = field(default_factory=now_timestamp)
    event_id: str = field(default_factory=_new_id)  # uuid4 hex: lets consumers drop duplicates

    def __post_init__(self) -> None:
        _check(asdict(self))

    def to_json(self) -> str:
        """The message body (compact JSON, keys sorted)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ChangeEvent":
        """Decode and validate a message body; raise ChangeEventError naming the bad field."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChangeEventError(
                f"change event: body is not JSON ({exc.__class__.__name__}): publish with renkei.events.publish"
            ) from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> "ChangeEvent":
        if not isinstance(doc, dict):
            raise ChangeEventError("change event: body must be a JSON object: publish with renkei.events.publish")
        _check(doc)
        return cls(**{f.name: doc[f.name] for f in fields(cls)})


def _check(doc: dict[str, Any]) -> None:
    for f in fields(ChangeEvent):
        if f.name not in doc:
            raise ChangeEventError(f"change event: field '{f.name}' is missing: every event needs all of "
                                   f"{', '.join(x.name for x in fields(ChangeEvent))}")
    extra = sorted(set(doc) - {f.name for f in fields(ChangeEvent)})
    if extra:
        # Keeps personal data out by construction: only the known, non-personal keys travel.
        raise ChangeEventError(f"change event: unknown field(s) {extra}: remove them (an event carries no data)")
    for name in ("source", "emitted_at", "event_id"):
        if not isinstance(doc[name], str) or not doc[name]:
            raise ChangeEventError(f"change event: field '{name}' must be a non-empty string")
    if not _is_canonical_ts(doc["emitted_at"]):
        raise ChangeEventError(
            "change event: field 'emitted_at' must be a canonical timestamp 'YYYY-MM-DDTHH:MM:SS+09:00': "
            "format it with renkei.sources.values.format_timestamp"
        )
    for name in ("change_seq", "row_count"):
        value = doc[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ChangeEventError(f"change event: field '{name}' must be an integer >= 0")
    eid = doc["event_id"]
    if len(eid) != 32 or any(c not in "0123456789abcdef" for c in eid):
        raise ChangeEventError("change event: field 'event_id' must be 32 lowercase hex digits (uuid4().hex)")


def _is_canonical_ts(text: str) -> bool:
    if len(text) != _TS_LEN or not text.endswith("+09:00"):
        return False
    try:
        return format_timestamp(datetime.datetime.fromisoformat(text)) == text
    except ValueError:
        return False
