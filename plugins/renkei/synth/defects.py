"""Seeded defects: which rows break the source contract, how, and what the pipeline must do."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from renkei.synth import pools
from renkei.synth.table import Table

EXPECT = {
    "bad_date": "quarantine",
    "unknown_code": "quarantine",
    "duplicate_id": "quarantine",
    "malformed_row": "quarantine",
    "mislink": "flag",
    "era_date": "load",
}
KEY_COLUMN = {
    "registry": "resident_code", "immunization": "record_id", "child_health": "record_id",
    "nhi": "resident_code", "subscriptions": "subscription_id", "events": "event_id",
}
CODE_COLUMNS = {
    "registry": ("sex", "ward_code", "status"),
    "immunization": ("vaccine_code", "sex"),
    "child_health": ("checkup_code", "sex"),
    "nhi": ("sex",),
    "subscriptions": ("topic", "ward_code"),
    "events": ("topic", "ward_code"),
}
MISLINK_SOURCES = ("immunization", "child_health", "nhi")
KIND_WEIGHTS = {"bad_date": 0.25, "unknown_code": 0.25, "duplicate_id": 0.15, "malformed_row": 0.15,
                "mislink": 0.20}
# The guaranteed one-of-each-kind never pushes a source past this share of bad rows (the
# pipeline fails a batch above config `max_failure_rate`, 5%).
COVERAGE_CAP = 0.02

BAD_ISO_DATES = ("2023-02-30", "2024-04-31", "2023-13-01", "2025-00-10", "9999-99-99", "不明")
# Era forms that name no real day: year 0, past the era's end, or a missing day.
BAD_ERA_DATES = ("令和0年5月1日", "H31.5.1", "昭和65年1月10日", "昭和64年1月8日", "R5.2.29",
                 "平成32年4月1日", "大正16年1月1日")
BAD_CODES: dict[str, tuple] = {
    "sex": (0, 3, 4),
    "status": ("transferred", "unknown", "転居"),
    "vaccine_code": ("MMR", "DTP", "FLU", "HEPA"),
    "checkup_code": ("M10", "Y2", "Y5"),
    "topic": ("sports", "traffic", "news"),
}
BAD_RESIDENT_CODES = (None, "", "1234567890", "123456789012", "12345abc901")


class _Keep:
    """Marks a defect row whose own values stay as generated (the first of a duplicate pair)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


@dataclass(frozen=True)
class Defect:
    """One seeded defect on one row: the cell to replace (or KEEP), or a CSV field-count change."""

    row: int
    kind: str
    column: str | None
    value: object = KEEP
    shape: str | None = None  # CSV malformed_row: "extra" or "missing" field

    def entry(self, source: str) -> dict:
        """The manifest entry: the row by number only, never its values."""
        return {"source": source, "row": self.row, "defect": self.kind, "column": self.column,
                "expect": EXPECT[self.kind]}


def check_digit_ok(ward_code: str) -> bool:
    """Whether a 6-digit 全国地方公共団体コード carries its check digit."""
    weighted = sum(int(d) * w for d, w in zip(ward_code[:5], (6, 5, 4, 3, 2)))
    return int(ward_code[5]) == (11 - weighted % 11) % 10


def kinds_for(source: str, fmt: str, table: Table) -> tuple[str, ...]:
    """The defect kinds that make sense for a source in a format."""
    if source not in KEY_COLUMN:
        return ()
    kinds = []
    if table.columns_of_type("date"):
        kinds.append("bad_date")
    kinds += ["unknown_code", "duplicate_id"]
    if fmt != "sqlite" or "resident_code" in table.columns:
        kinds.append("malformed_row")
    if source in MISLINK_SOURCES:
        kinds.append("mislink")
    return tuple(kinds)


def plan_defects(table: Table, fmt: str, rate: float, rng: np.random.Generator,
                 eligible: np.ndarray | None = None) -> dict[int, Defect]:
    """Choose about `rate` of the rows (from `eligible`, default all) and the defect each carries.

    When rate > 0, every applicable kind appears at least once if the source is large enough.
    """
    kinds = kinds_for(table.source, fmt, table)
    if rate <= 0 or not kinds or table.n_rows == 0:
        return {}
    count = round(rate * table.n_rows)
    count = max(count, min(len(kinds), int(COVERAGE_CAP * table.n_rows)))
    weights = np.array([KIND_WEIGHTS[k] for k in kinds])
    extra = rng.choice(len(kinds), size=max(count - len(kinds), 0), p=weights / weights.sum())
    planned = list(kinds[:count]) + [kinds[i] for i in extra.tolist()]
    pool = np.arange(table.n_rows) if eligible is None else eligible
    needed = len(planned) + planned.count("duplicate_id")
    while needed > pool.size and planned:
        needed -= 1 + (planned.pop() == "duplicate_id")
    rows = iter(rng.choice(pool, size=needed, replace=False).tolist())

    plan: dict[int, Defect] = {}
    for kind in planned:
        row = next(rows)
        if kind == "duplicate_id":
            second = next(rows)
            first, second = min(row, second), max(row, second)
            key = KEY_COLUMN[table.source]
            plan[first] = Defect(first, kind, key)
            plan[second] = Defect(second, kind, key, table.row(first)[key])
        else:
            plan[row] = _defect(kind, row, table, fmt, rng)
    return plan


def _defect(kind: str, row: int, table: Table, fmt: str, rng: np.random.Generator) -> Defect:
    values = table.row(row)
    if kind == "bad_date":
        columns = [c for c in table.columns_of_type("date") if values[c] is not None]
        bad = BAD_ISO_DATES + (BAD_ERA_DATES if fmt != "sqlite" else ())
        return Defect(row, kind, _pick(rng, columns), _pick(rng, bad))
    if kind == "unknown_code":
        column = _pick(rng, CODE_COLUMNS[table.source])
        if column == "ward_code":
            return Defect(row, kind, column, _bad_ward_code(rng))
        return Defect(row, kind, column, _pick(rng, BAD_CODES[column]))
    if kind == "malformed_row":
        if fmt == "sqlite":
            return Defect(row, kind, "resident_code", _pick(rng, BAD_RESIDENT_CODES))
        return Defect(row, kind, None, shape=_pick(rng, ("extra", "missing")))
    if kind == "mislink":
        if rng.random() < 0.5:
            # Earlier, so it stays on or before the row's administered/examined/qualified day.
            birth = datetime.date.fromisoformat(values["birth_date"])
            shifted = birth - datetime.timedelta(days=int(rng.integers(1, 400)))
            return Defect(row, kind, "birth_date", shifted.isoformat())
        return Defect(row, kind, "sex", 1 if values["sex"] == 2 else 2)
    raise ValueError(f"unknown defect kind {kind!r}")


def _bad_ward_code(rng: np.random.Generator) -> str:
    code = _pick(rng, [w[0] for w in pools.WARDS])
    wrong = (int(code[5]) + int(rng.integers(1, 10))) % 10
    return code[:5] + str(wrong)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]
