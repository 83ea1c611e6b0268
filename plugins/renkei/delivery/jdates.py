"""Japanese date formats for messages: 2025年6月1日（日）, 令和7年6月1日, 令和7年度."""

from __future__ import annotations

from datetime import date, datetime

WEEKDAYS = "月火水木金土日"
# (name, first day); 令和 and 平成 cover everyone a notice can be about or sent on.
_ERAS = (("令和", date(2019, 5, 1)), ("平成", date(1989, 1, 8)), ("昭和", date(1926, 12, 25)))


def _day(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


def jdate(value: date | datetime) -> str:
    """2025年6月1日（日）."""
    d = _day(value)
    return f"{d.year}年{d.month}月{d.day}日（{WEEKDAYS[d.weekday()]}）"


def _era_year(name: str, start: date, year: int) -> str:
    n = year - start.year + 1
    return f"{name}{'元' if n == 1 else n}"


def wareki(value: date | datetime) -> str:
    """令和7年6月1日 (元年 for the first year of an era)."""
    d = _day(value)
    for name, start in _ERAS:
        if d >= start:
            return f"{_era_year(name, start, d.year)}年{d.month}月{d.day}日"
    return f"{d.year}年{d.month}月{d.day}日"


def fiscal_year_label(fy: int) -> str:
    """令和7年度 for fiscal year 2025 (April 2025 – March 2026), named by the era at its end."""
    end = date(fy + 1, 3, 31)
    for name, start in _ERAS:
        if end >= start:
            return f"{_era_year(name, start, fy)}年度"
    return f"{fy}年度"


def jtime(value: datetime) -> str:
    """10:00 (the wall time of an aware timestamp as stored, i.e. JST)."""
    return f"{value.hour}:{value.minute:02d}"
