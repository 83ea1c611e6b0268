"""Rendering of dates in Japanese era form (和暦) as municipal CSV exports write them."""

from __future__ import annotations

import datetime

# (kanji name, letter, first day); newest first so the first era starting on or before a date wins.
ERAS: tuple[tuple[str, str, datetime.date], ...] = (
    ("令和", "R", datetime.date(2019, 5, 1)),
    ("平成", "H", datetime.date(1989, 1, 8)),
    ("昭和", "S", datetime.date(1926, 12, 25)),
    ("大正", "T", datetime.date(1912, 7, 30)),
    ("明治", "M", datetime.date(1868, 1, 25)),
)

# The spellings seen in exports: `令和5年8月22日` / `平成元年1月8日` and `R5.8.22`.
STYLES = ("kanji", "letter")


def to_era(iso_date: str, style: str) -> str:
    """An ISO date in era form: style "kanji" (令和5年8月22日, 元年 for year 1) or "letter" (R5.8.22)."""
    value = datetime.date.fromisoformat(iso_date)
    for kanji, letter, start in ERAS:
        if value >= start:
            year = value.year - start.year + 1
            if style == "kanji":
                year_text = "元" if year == 1 else str(year)
                return f"{kanji}{year_text}年{value.month}月{value.day}日"
            if style == "letter":
                return f"{letter}{year}.{value.month}.{value.day}"
            raise ValueError(f"era style {style!r}: use one of {STYLES}")
    raise ValueError(f"date {iso_date} precedes 明治 (1868-01-25): keep it in ISO form")
