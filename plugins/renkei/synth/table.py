"""The raw source schemas of SOURCES.md and a lazily rendered synthetic table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Column types as in SOURCES.md / config/sources.yaml: text, int, date, timestamp.
PERSON_COPY = (("name_kana", "text"), ("birth_date", "date"), ("sex", "int"), ("address", "text"))
SCHEMAS: dict[str, tuple[tuple[str, str], ...]] = {
    "registry": (
        ("resident_code", "text"), ("name_kana", "text"), ("name_kanji", "text"),
        ("birth_date", "date"), ("sex", "int"), ("ward_code", "text"), ("address", "text"),
        ("household_code", "text"), ("status", "text"), ("status_date", "date"),
        ("updated_at", "timestamp"),
    ),
    "registry_contact": (
        ("resident_code", "text"), ("channel", "text"), ("address", "text"),
        ("verified_at", "timestamp"), ("updated_at", "timestamp"),
    ),
    "immunization": (
        ("record_id", "text"), ("resident_code", "text"), *PERSON_COPY,
        ("vaccine_code", "text"), ("dose_number", "int"), ("administered_on", "date"),
        ("updated_at", "timestamp"),
    ),
    "child_health": (
        ("record_id", "text"), ("resident_code", "text"), *PERSON_COPY,
        ("checkup_code", "text"), ("examined_on", "date"), ("updated_at", "timestamp"),
    ),
    "nhi": (
        ("resident_code", "text"), *PERSON_COPY, ("qualified_on", "date"),
        ("disqualified_on", "date"), ("last_checkup_on", "date"), ("updated_at", "timestamp"),
    ),
    "subscriptions": (
        ("subscription_id", "text"), ("resident_code", "text"), ("topic", "text"),
        ("ward_code", "text"), ("opted_in_at", "timestamp"), ("opted_out_at", "timestamp"),
        ("updated_at", "timestamp"),
    ),
    "events": (
        ("event_id", "text"), ("title", "text"), ("topic", "text"), ("ward_code", "text"),
        ("venue", "text"), ("starts_at", "timestamp"), ("ends_at", "timestamp"),
        ("updated_at", "timestamp"),
    ),
}
SOURCE_ORDER = tuple(SCHEMAS)


@dataclass(frozen=True)
class Table:
    """One source's rows, rendered on demand so that a million-row table streams in chunks.

    `render(rows)` returns column → list of values (str, int or None; dates ISO, timestamps
    ISO with +09:00) for the given sorted row indices. `resident` maps a row to its resident
    index in the city (personal sources), or is None.
    """

    source: str
    n_rows: int
    render: Callable[[np.ndarray], dict[str, list]]
    resident: np.ndarray | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in SCHEMAS[self.source])

    def columns_of_type(self, kind: str) -> tuple[str, ...]:
        """The column names of one type (text, int, date, timestamp)."""
        return tuple(name for name, type_ in SCHEMAS[self.source] if type_ == kind)

    def row(self, index: int) -> dict[str, object]:
        """One rendered row as column → value."""
        values = self.render(np.array([index], dtype=np.int64))
        return {name: values[name][0] for name in self.columns}
