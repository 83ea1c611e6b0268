"""Vectorised date arithmetic of SERVICES.md (anniv, reach, fiscal years) and ISO rendering."""

from __future__ import annotations

import datetime

import numpy as np

DAY = "datetime64[D]"
SECOND = "datetime64[s]"
NAT = np.datetime64("NaT", "D")
JST_OFFSET = "+09:00"


def day(value: datetime.date) -> np.datetime64:
    """A date as a numpy day."""
    return np.datetime64(value.isoformat(), "D")


def days(n: np.ndarray | int) -> np.ndarray:
    """A day count as a numpy timedelta (array or scalar)."""
    return np.asarray(n, dtype="int64").astype("timedelta64[D]")


def anniv(birth: np.ndarray, months: np.ndarray | int) -> np.ndarray:
    """The same day-of-month `months` after `birth`; the 1st of the next month if that day is missing."""
    month0 = birth.astype("datetime64[M]")
    offset = birth - month0.astype(DAY)
    target = month0 + np.asarray(months, dtype="int64").astype("timedelta64[M]")
    next_month = (target + np.timedelta64(1, "M")).astype(DAY)
    candidate = target.astype(DAY) + offset
    return np.where(candidate < next_month, candidate, next_month)


def reach(birth: np.ndarray, months: np.ndarray | int) -> np.ndarray:
    """The day a person reaches `months` months of age (the day before the anniversary)."""
    return anniv(birth, months) - np.timedelta64(1, "D")


def fiscal_year_start(when: np.ndarray) -> np.ndarray:
    """April 1 of the fiscal year (年度) that contains each day."""
    year = when.astype("datetime64[Y]").astype("int64") + 1970
    month = when.astype("datetime64[M]").astype("int64") % 12 + 1
    start_year = np.where(month >= 4, year, year - 1)
    return _april_first(start_year)


def school_entry_year(birth: np.ndarray) -> np.ndarray:
    """Year of elementary-school entry: b.year + 6 if born on or before April 1, else + 7."""
    year = birth.astype("datetime64[Y]").astype("int64") + 1970
    on_or_before_april_1 = birth <= _april_first(year)
    return np.where(on_or_before_april_1, year + 6, year + 7)


def april_first(year: np.ndarray) -> np.ndarray:
    """April 1 of each year."""
    return _april_first(np.asarray(year, dtype="int64"))


def _april_first(year: np.ndarray) -> np.ndarray:
    january = (year - 1970).astype("datetime64[Y]").astype("datetime64[M]")
    return (january + np.timedelta64(3, "M")).astype(DAY)


def iso_dates(values: np.ndarray) -> list[str | None]:
    """ISO `YYYY-MM-DD` strings, None for NaT."""
    text = np.datetime_as_string(values.astype(DAY), unit="D").tolist()
    return [None if t == "NaT" else t for t in text]


def iso_timestamps(values: np.ndarray) -> list[str | None]:
    """ISO 8601 JST timestamps (`…T10:00:00+09:00`), None for NaT; values are JST wall clock."""
    text = np.datetime_as_string(values.astype(SECOND), unit="s").tolist()
    return [None if t == "NaT" else t + JST_OFFSET for t in text]
