"""Raw value parsing: ISO and 和暦 dates, JST timestamps, integers (SOURCES.md)."""

import datetime

import pytest

from renkei.errors import RenkeiError
from renkei.sources.values import ValueParseError, format_timestamp, parse_date, parse_int, parse_timestamp

D = datetime.date
JST = datetime.timezone(datetime.timedelta(hours=9))


def reason(call, text):
    with pytest.raises(ValueParseError) as caught:
        call(text)
    return caught.value.reason


@pytest.mark.parametrize("text", [None, "", "   ", "\u3000"])
def test_blank_date_is_none(text):
    assert parse_date(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-08-22", D(2023, 8, 22)),
        ("2023/08/22", D(2023, 8, 22)),
        ("2023/8/2", D(2023, 8, 2)),
        (" 2023-08-22 ", D(2023, 8, 22)),
        ("２０２３－０８－２２", D(2023, 8, 22)),  # full-width digits and hyphen
        ("令和5年8月22日", D(2023, 8, 22)),
        ("令和５年８月２２日", D(2023, 8, 22)),
        ("R5.8.22", D(2023, 8, 22)),
        ("Ｒ５．８．２２", D(2023, 8, 22)),
        ("r5.8.22", D(2023, 8, 22)),
        ("R05.08.22", D(2023, 8, 22)),
        ("H31.4.30", D(2019, 4, 30)),
        ("S64.1.7", D(1989, 1, 7)),
        ("T15.12.24", D(1926, 12, 24)),
        ("M45.7.29", D(1912, 7, 29)),
        ("平成元年1月8日", D(1989, 1, 8)),
        ("H元.1.8", D(1989, 1, 8)),
        ("令和元年5月1日", D(2019, 5, 1)),
        ("昭和40年3月15日", D(1965, 3, 15)),
        ("㍻3年2月1日", D(1991, 2, 1)),  # the one-character era sign, NFKC → 平成
    ],
)
def test_dates(text, expected):
    assert parse_date(text) == expected


# Each era's first day is valid and the day before it is not a day of that era.
@pytest.mark.parametrize(
    ("first_day", "expected", "day_before"),
    [
        ("明治元年1月25日", D(1868, 1, 25), "明治元年1月24日"),
        ("大正元年7月30日", D(1912, 7, 30), "大正元年7月29日"),
        ("昭和元年12月25日", D(1926, 12, 25), "昭和元年12月24日"),
        ("平成元年1月8日", D(1989, 1, 8), "平成元年1月7日"),
        ("令和元年5月1日", D(2019, 5, 1), "令和元年4月30日"),
        ("M1.1.25", D(1868, 1, 25), "M1.1.24"),
        ("T1.7.30", D(1912, 7, 30), "T1.7.29"),
        ("S1.12.25", D(1926, 12, 25), "S1.12.24"),
        ("H1.1.8", D(1989, 1, 8), "H1.1.7"),
        ("R1.5.1", D(2019, 5, 1), "R1.4.30"),
    ],
)
def test_era_first_day_and_day_before(first_day, expected, day_before):
    assert parse_date(first_day) == expected
    assert reason(parse_date, day_before) == "out_of_era"


@pytest.mark.parametrize(
    "text",
    [
        "H31.5.1",  # 令和's first day is no longer 平成
        "平成31年5月1日",
        "昭和65年1月1日",
        "S64.1.8",  # 平成's first day
        "大正15年12月25日",
        "明治45年7月30日",
        "令和0年5月1日",
        "R0.5.1",
    ],
)
def test_out_of_era(text):
    assert reason(parse_date, text) == "out_of_era"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2024-02-29", D(2024, 2, 29)), ("2000-02-29", D(2000, 2, 29)), ("R6.2.29", D(2024, 2, 29))],
)
def test_feb_29_in_leap_years(text, expected):
    assert parse_date(text) == expected


@pytest.mark.parametrize("text", ["2023-02-29", "1900-02-29", "R5.2.29", "2023-02-30", "2023-13-01", "2023-04-31"])
def test_impossible_dates(text):
    assert reason(parse_date, text) == "invalid_date"


@pytest.mark.parametrize("text", ["yesterday", "2023-08", "20230822x", "X5.8.22", "令和5年8月", "22/08/2023", "2023-08-22T10:00"])
def test_garbage_dates(text):
    assert reason(parse_date, text) == "invalid_format"


def test_error_message_never_contains_the_value():
    for text in ["1999-99-99", "平成31年5月1日", "someone's secret"]:
        with pytest.raises(ValueParseError) as caught:
            parse_date(text)
        assert text not in str(caught.value)
        assert isinstance(caught.value, RenkeiError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-08-22T10:15:00+09:00", datetime.datetime(2023, 8, 22, 10, 15, tzinfo=JST)),
        ("2023-08-22T10:15:00", datetime.datetime(2023, 8, 22, 10, 15, tzinfo=JST)),
        ("2023-08-22 10:15:00", datetime.datetime(2023, 8, 22, 10, 15, tzinfo=JST)),
        ("2023-08-22T01:15:00Z", datetime.datetime(2023, 8, 22, 10, 15, tzinfo=JST)),
        ("2023-08-22T01:15:00+00:00", datetime.datetime(2023, 8, 22, 10, 15, tzinfo=JST)),
        ("2023-08-22", datetime.datetime(2023, 8, 22, 0, 0, tzinfo=JST)),
        ("2023/08/22 10:15", datetime.datetime(2023, 8, 22, 10, 15, tzinfo=JST)),
        ("R5.8.22", datetime.datetime(2023, 8, 22, 0, 0, tzinfo=JST)),
    ],
)
def test_timestamps(text, expected):
    parsed = parse_timestamp(text)
    assert parsed.tzinfo is not None
    assert parsed == expected


def test_timestamp_keeps_the_given_offset():
    parsed = parse_timestamp("2023-08-22T01:15:00+00:00")
    assert parsed.utcoffset() == datetime.timedelta(0)


def test_timestamp_without_offset_is_jst():
    assert parse_timestamp("2023-08-22T10:15:00").utcoffset() == datetime.timedelta(hours=9)


@pytest.mark.parametrize("text", [None, "", "  "])
def test_blank_timestamp_is_none(text):
    assert parse_timestamp(text) is None


def test_timestamp_errors():
    assert reason(parse_timestamp, "soon") == "invalid_timestamp"
    assert reason(parse_timestamp, "2023-02-30T10:00:00") == "invalid_timestamp"
    assert reason(parse_timestamp, "2023-08-22T25:00:00") == "invalid_timestamp"
    # a bare date keeps the date's own reason
    assert reason(parse_timestamp, "2023-02-30") == "invalid_date"
    assert reason(parse_timestamp, "H31.5.1") == "out_of_era"


def test_format_timestamp_is_canonical_jst():
    utc = datetime.timezone.utc
    assert format_timestamp(datetime.datetime(2023, 8, 22, 1, 15, 7, 999999, tzinfo=utc)) == "2023-08-22T10:15:07+09:00"
    assert format_timestamp(datetime.datetime(2023, 8, 22, 10, 15, tzinfo=JST)) == "2023-08-22T10:15:00+09:00"
    assert format_timestamp(datetime.datetime(2023, 8, 22, 10, 15)) == "2023-08-22T10:15:00+09:00"
    # 23:30 UTC on the 21st is already the 22nd in Japan
    assert format_timestamp(datetime.datetime(2023, 8, 21, 23, 30, tzinfo=utc)) == "2023-08-22T08:30:00+09:00"


def test_canonical_string_order_is_time_order():
    utc = datetime.timezone.utc
    # In their own offsets these would sort the wrong way round as strings.
    earlier = datetime.datetime(2023, 8, 22, 9, 0, tzinfo=JST)  # 00:00 UTC
    later = datetime.datetime(2023, 8, 22, 1, 0, tzinfo=utc)  # 10:00 JST
    assert earlier.isoformat() > later.isoformat()
    assert format_timestamp(earlier) < format_timestamp(later)


@pytest.mark.parametrize(
    ("text", "expected"), [("1", 1), (" 2 ", 2), ("９", 9), ("+3", 3), ("-4", -4), ("5.0", 5), ("012", 12), (None, None), ("", None)]
)
def test_parse_int(text, expected):
    assert parse_int(text) == expected


@pytest.mark.parametrize("text", ["1.5", "one", "1e3", "1,000", "0x10"])
def test_parse_int_rejects(text):
    assert reason(parse_int, text) == "invalid_int"
