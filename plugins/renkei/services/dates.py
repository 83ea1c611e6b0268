"""Legal date arithmetic for service rules: anniversaries, ages, intervals, fiscal and school years."""

from __future__ import annotations

from calendar import isleap
from datetime import date, timedelta

_ONE_DAY = timedelta(days=1)
# Days per month of a common year; calendar.monthrange also computes a weekday, which made it
# the hot spot when rules are evaluated for every child of a city.
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def anniv(b: date, m: int) -> date:
    """The same day-of-month m months after b; the 1st of the next month if that day is missing.

    Born 7/31 → anniv(b, 2) = 10/1 (September has no 31st); born 2020-02-29 → anniv(b, 12) =
    2021-03-01.
    """
    months = b.month - 1 + m
    year, month = b.year + months // 12, months % 12 + 1
    if b.day <= 28 or b.day <= _MONTH_DAYS[month - 1] or (b.day == 29 and isleap(year)):
        return date(year, month, b.day)
    return date(year + month // 12, month % 12 + 1, 1)


def reach(b: date, m: int) -> date:
    """「生後m月に至った日」: the day before anniv(b, m) (年齢計算ニ関スル法律)."""
    return anniv(b, m) - _ONE_DAY


def after_days(d: date, n: int) -> date:
    """d + n days (「出生X週Y日後」 is after_days(b, 7X + Y))."""
    return d + timedelta(days=n)


def interval_days(prev: date, n: int) -> date:
    """First day allowed after 「N日以上の間隔」 from prev: prev + N + 1 days (27日以上 → +28)."""
    return prev + timedelta(days=n + 1)


def interval_months(prev: date, n: int) -> date:
    """First day allowed after 「Nか月以上の間隔」 from prev: anniv(prev, N)."""
    return anniv(prev, n)


def fiscal_year(d: date) -> int:
    """The fiscal year (年度, April 1 – March 31) of d, named by the year its April 1 falls in."""
    return d.year if d.month >= 4 else d.year - 1


def fiscal_year_start(fy: int) -> date:
    """April 1 of fiscal year fy."""
    return date(fy, 4, 1)


def fiscal_year_end(fy: int) -> date:
    """March 31 that closes fiscal year fy (in calendar year fy + 1)."""
    return date(fy + 1, 3, 31)


def school_entry_year(b: date) -> int:
    """Year of elementary-school entry: b.year + 6 if born on or before April 1, else b.year + 7.

    Someone born on April 1 reaches 6 on March 31 (the day before the birthday), so joins the
    school year that starts the next day — the 早生まれ cut-off.
    """
    return b.year + 6 if (b.month, b.day) <= (4, 1) else b.year + 7


def age_months(b: date, d: date) -> int:
    """Whole months of age on d: the largest m with reach(b, m) ≤ d.

    Under 年齢計算ニ関スル法律 a month of age is completed at the end of the day before the
    monthly anniversary, so a child is m months old from reach(b, m) on (born 1/31: 1 month old
    from 2/28 in a common year, since anniv(b, 1) rolls to 3/1).
    """
    if d < b:
        raise ValueError("age is undefined before the birth date; evaluate on or after it")
    e = d + _ONE_DAY  # reach(b, m) ≤ d  ⇔  anniv(b, m) ≤ d + 1
    months = (e.year - b.year) * 12 + e.month - b.month
    # anniv(b, months) lies in e's month or rolls into the next one; at most one step back.
    if anniv(b, months) > e:
        months -= 1
    return months


def age_years(b: date, d: date) -> int:
    """Whole years of age on d: the largest n with reach(b, 12n) ≤ d (same law as age_months).

    A person is n years old from the day before the n-th birthday on: born 2018-04-01 is 6 on
    2024-03-31; born 2020-02-29 is 1 on 2021-02-28.
    """
    return age_months(b, d) // 12
