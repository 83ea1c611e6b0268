"""Parsing raw source values: ISO and 和暦 (Japanese era) dates, JST timestamps, integers."""

from __future__ import annotations

import datetime
import re
import unicodedata

from renkei.errors import RenkeiError

JST = datetime.timezone(datetime.timedelta(hours=9), "JST")
INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # PostgreSQL integer, the narrowest engine we write to


class ValueParseError(RenkeiError):
    """A raw value breaks the source contract; `reason` is a short code for the quarantine.

    The message names the rule, never the value (a raw value may be personal data).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# (name, letter, first day); an era ends the day before the next one starts.
# 明治 starts on 1868-01-25 as registers use it (the Gregorian day of 慶応4年1月1日).
_ERAS: tuple[tuple[str, str, datetime.date], ...] = (
    ("明治", "M", datetime.date(1868, 1, 25)),
    ("大正", "T", datetime.date(1912, 7, 30)),
    ("昭和", "S", datetime.date(1926, 12, 25)),
    ("平成", "H", datetime.date(1989, 1, 8)),
    ("令和", "R", datetime.date(2019, 5, 1)),
)
_ERA_BY_NAME = {name: i for i, (name, _, _) in enumerate(_ERAS)}
_ERA_BY_LETTER = {letter: i for i, (_, letter, _) in enumerate(_ERAS)}

_WESTERN_DATE = re.compile(r"(\d{4})(?:-(\d{1,2})-(\d{1,2})|/(\d{1,2})/(\d{1,2})|年(\d{1,2})月(\d{1,2})日)")
_ERA_KANJI_DATE = re.compile(r"(明治|大正|昭和|平成|令和)\s*(元|\d{1,2})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日")
_ERA_LETTER_DATE = re.compile(
    r"([MTSHR])\s*(元|\d{1,2})(?:\.(\d{1,2})\.(\d{1,2})|/(\d{1,2})/(\d{1,2})|-(\d{1,2})-(\d{1,2}))",
    re.IGNORECASE,
)
_SLASH_TIMESTAMP = re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?")
_INTEGER = re.compile(r"[+-]?\d+(?:\.0*)?")


def _normalize(text: str) -> str:
    # NFKC turns full-width digits and letters into ASCII and ㋿/㍻ into 令和/平成.
    return unicodedata.normalize("NFKC", text).strip()


def _calendar_date(year: int, month: int, day: int) -> datetime.date:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        raise ValueParseError(
            "invalid_date", "not a calendar date (month 1-12, day within the month); fix the source value"
        ) from None


def _era_date(era: int, year_text: str, month: int, day: int) -> datetime.date:
    name, _, start = _ERAS[era]
    era_year = 1 if year_text == "元" else int(year_text)
    if era_year < 1:
        raise ValueParseError("out_of_era", f"{name} years start at 元年 (1); fix the source value")
    date = _calendar_date(start.year + era_year - 1, month, day)
    next_start = _ERAS[era + 1][2] if era + 1 < len(_ERAS) else None
    if date < start or (next_start is not None and date >= next_start):
        raise ValueParseError(
            "out_of_era",
            f"date outside the {name} era ({start.isoformat()} to "
            f"{'today' if next_start is None else (next_start - datetime.timedelta(days=1)).isoformat()}); "
            "fix the era or the year in the source value",
        )
    return date


def parse_date(text: str | None) -> datetime.date | None:
    """Parse an ISO (YYYY-MM-DD, YYYY/MM/DD) or 和暦 date (令和5年8月22日, R5.8.22, 平成元年1月8日).

    None or a blank string is None. Raises ValueParseError with reason "invalid_format",
    "invalid_date" (no such calendar day) or "out_of_era" (not a day of the named era).
    """
    if text is None:
        return None
    value = _normalize(text)
    if not value:
        return None
    if match := _WESTERN_DATE.fullmatch(value):
        year, *parts = match.groups()
        month, day = (int(p) for p in parts if p is not None)
        return _calendar_date(int(year), month, day)
    if match := _ERA_KANJI_DATE.fullmatch(value):
        name, year_text, month, day = match.groups()
        return _era_date(_ERA_BY_NAME[name], year_text, int(month), int(day))
    if match := _ERA_LETTER_DATE.fullmatch(value):
        letter, year_text, *parts = match.groups()
        month, day = (int(p) for p in parts if p is not None)
        return _era_date(_ERA_BY_LETTER[letter.upper()], year_text, month, day)
    raise ValueParseError(
        "invalid_format", "not a date: write YYYY-MM-DD, YYYY/MM/DD or an era form such as 令和5年8月22日 / R5.8.22"
    )


def parse_timestamp(text: str | None) -> datetime.datetime | None:
    """Parse an ISO 8601 timestamp (or a bare date, meaning midnight) into an aware datetime.

    A timestamp without an offset is JST (+09:00). None or a blank string is None. Raises
    ValueParseError ("invalid_timestamp", or the date reasons for a bare date).
    """
    if text is None:
        return None
    value = _normalize(text)
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None and (match := _SLASH_TIMESTAMP.fullmatch(value)):
        # Spreadsheet exports write "2023/08/22 10:15"; read it as the same wall time.
        year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups())
        try:
            parsed = datetime.datetime(year, month, day, hour, minute, second)
        except ValueError:
            parsed = None
    if parsed is None:
        try:
            date = parse_date(value)
        except ValueParseError as error:
            if error.reason != "invalid_format":
                raise
            raise ValueParseError(
                "invalid_timestamp", "not a timestamp: write ISO 8601 such as 2023-08-22T10:15:00+09:00"
            ) from None
        assert date is not None
        parsed = datetime.datetime.combine(date, datetime.time())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=JST)
    try:
        parsed.astimezone(JST)  # stored in JST: near year 1 or 9999 the shift can overflow
    except OverflowError:
        raise ValueParseError(
            "invalid_timestamp", "timestamp out of range once converted to JST; fix the source value"
        ) from None
    return parsed


def format_timestamp(dt: datetime.datetime) -> str:
    """Canonical 'YYYY-MM-DDTHH:MM:SS+09:00' in JST, so that string order is time order.

    A naive datetime is taken as JST; fractions of a second are dropped.
    """
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=JST)
    return dt.astimezone(JST).replace(microsecond=0).isoformat(timespec="seconds")


def parse_int(text: str | None) -> int | None:
    """Parse an integer ("3", "３", "+3", and "3.0" as spreadsheets write it); blank is None.

    Raises ValueParseError "invalid_int" for anything else, "out_of_range" beyond 32 bits.
    """
    if text is None:
        return None
    value = _normalize(text)
    if not value:
        return None
    if not _INTEGER.fullmatch(value):
        raise ValueParseError("invalid_int", "not an integer: write digits only, such as 1 or 2")
    number = int(value.split(".", 1)[0])
    if not INT_MIN <= number <= INT_MAX:
        # else the insert fails for the whole extract (SQLite and PostgreSQL integers are bounded)
        raise ValueParseError("out_of_range", "integer out of range for a database integer; fix the source value")
    return number
