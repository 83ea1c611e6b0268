"""Hand-computed cases for the legal date arithmetic of SERVICES.md ("Date arithmetic")."""

from datetime import date, timedelta

import pytest

from renkei.services.dates import (
    after_days,
    age_months,
    age_years,
    anniv,
    fiscal_year,
    fiscal_year_end,
    fiscal_year_start,
    interval_days,
    interval_months,
    reach,
    school_entry_year,
)

D = date


@pytest.mark.parametrize(
    ("b", "m", "expected"),
    [
        (D(2018, 4, 1), 2, D(2018, 6, 1)),  # plain: same day two months on
        (D(2018, 4, 1), 0, D(2018, 4, 1)),  # zero months: the birth date itself
        (D(2023, 7, 31), 2, D(2023, 10, 1)),  # 9/31 does not exist → 10/1 (the doc's example)
        (D(2023, 7, 31), 1, D(2023, 8, 31)),  # August has a 31st
        (D(2023, 1, 29), 1, D(2023, 3, 1)),  # 2023-02-29 does not exist → 3/1
        (D(2024, 1, 29), 1, D(2024, 2, 29)),  # 2024 is a leap year: 2/29 exists
        (D(2023, 1, 30), 1, D(2023, 3, 1)),  # 2/30 → 3/1
        (D(2023, 1, 30), 2, D(2023, 3, 30)),  # the roll does not carry over to later months
        (D(2023, 1, 31), 3, D(2023, 5, 1)),  # 4/31 → 5/1
        (D(2023, 12, 31), 2, D(2024, 3, 1)),  # across the year end: 2024-02-31 → 3/1
        (D(2023, 12, 31), 1, D(2024, 1, 31)),  # across the year end, no roll
        (D(2023, 11, 30), 3, D(2024, 3, 1)),  # 2024-02-30 → 3/1
        (D(2020, 2, 29), 12, D(2021, 3, 1)),  # leap-day birth in a common year → 3/1
        (D(2020, 2, 29), 48, D(2024, 2, 29)),  # four years on: a leap year again
        (D(2020, 2, 29), 1, D(2020, 3, 29)),
        (D(2018, 4, 1), 90, D(2025, 10, 1)),  # 4 + 90 = 94th month → 2025-10
    ],
)
def test_anniv(b: date, m: int, expected: date) -> None:
    assert anniv(b, m) == expected


@pytest.mark.parametrize(
    ("b", "m", "expected"),
    [
        (D(2018, 4, 1), 2, D(2018, 5, 31)),  # worked example: 生後2月 = 6/1 − 1
        (D(2018, 4, 1), 60, D(2023, 3, 31)),  # worked example: 生後60月 = 2023-04-01 − 1
        (D(2023, 7, 31), 2, D(2023, 9, 30)),  # anniv 10/1 − 1
        (D(2023, 1, 31), 1, D(2023, 2, 28)),  # anniv 3/1 − 1
        (D(2023, 8, 31), 6, D(2024, 2, 29)),  # anniv 2024-02-31 → 3/1; − 1 = leap day
        (D(2020, 2, 29), 12, D(2021, 2, 28)),  # anniv 2021-03-01 − 1
        (D(2020, 2, 29), 48, D(2024, 2, 28)),  # anniv 2024-02-29 − 1
        (D(2024, 1, 1), 0, D(2023, 12, 31)),  # reach(b, 0) is the day before birth
    ],
)
def test_reach(b: date, m: int, expected: date) -> None:
    assert reach(b, m) == expected


def test_worked_example_window() -> None:
    # 生後2月〜60月 for a child born 2018-04-01 is 2018-05-31 … 2023-03-31, both inclusive.
    b = D(2018, 4, 1)
    assert (reach(b, 2), reach(b, 60)) == (D(2018, 5, 31), D(2023, 3, 31))


def test_after_days() -> None:
    assert after_days(D(2024, 2, 20), 10) == D(2024, 3, 1)  # 2/20 + 9 = 2/29 (leap), + 1 = 3/1
    assert after_days(D(2023, 2, 20), 10) == D(2023, 3, 2)  # 2/20 + 8 = 2/28, + 2 = 3/2
    assert after_days(D(2024, 1, 15), 104) == D(2024, 4, 28)  # 出生14週6日後: 16+29+31 = 76 → 4/28


def test_interval_days_counts_n_days_strictly_between() -> None:
    assert interval_days(D(2024, 1, 10), 27) == D(2024, 2, 7)  # 27日以上 → +28: 1/10 + 21 = 1/31, + 7
    assert interval_days(D(2024, 5, 1), 6) == D(2024, 5, 8)  # 6日以上 → +7
    assert interval_days(D(2023, 12, 20), 60) == D(2024, 2, 19)  # +61: 11 + 31 + 19


def test_interval_months_is_anniv() -> None:
    assert interval_months(D(2024, 8, 31), 6) == D(2025, 3, 1)  # 2025-02-31 → 3/1
    assert interval_months(D(2024, 5, 15), 3) == D(2024, 8, 15)


@pytest.mark.parametrize(
    ("d", "fy"),
    [
        (D(2024, 3, 31), 2023),  # the last day of FY2023
        (D(2024, 4, 1), 2024),  # FY2024 starts
        (D(2025, 1, 1), 2024),  # January belongs to the FY that began the April before
        (D(2024, 12, 31), 2024),
    ],
)
def test_fiscal_year(d: date, fy: int) -> None:
    assert fiscal_year(d) == fy


def test_fiscal_year_bounds() -> None:
    assert fiscal_year_start(2024) == D(2024, 4, 1)
    assert fiscal_year_end(2024) == D(2025, 3, 31)


@pytest.mark.parametrize(
    ("b", "entry"),
    [
        (D(2018, 4, 1), 2024),  # born April 1: 早生まれ, enters with the children born before
        (D(2018, 4, 2), 2025),  # one day later: a year later
        (D(2018, 1, 1), 2024),
        (D(2018, 3, 31), 2024),
        (D(2018, 12, 31), 2025),
        (D(2020, 2, 29), 2026),
    ],
)
def test_school_entry_year(b: date, entry: int) -> None:
    assert school_entry_year(b) == entry


@pytest.mark.parametrize(
    ("b", "d", "months"),
    [
        (D(2018, 4, 1), D(2018, 5, 30), 1),  # reach(b, 1) = 4/30 ≤ 5/30 < reach(b, 2) = 5/31
        (D(2018, 4, 1), D(2018, 5, 31), 2),  # 2 months old on reach(b, 2)
        (D(2023, 1, 31), D(2023, 2, 27), 0),  # reach(b, 1) = 2/28
        (D(2023, 1, 31), D(2023, 2, 28), 1),
        (D(2023, 1, 31), D(2023, 3, 29), 1),  # reach(b, 2) = 3/31 − 1 = 3/30
        (D(2023, 1, 31), D(2023, 3, 30), 2),
        (D(2024, 6, 10), D(2024, 6, 10), 0),  # the day of birth
    ],
)
def test_age_months(b: date, d: date, months: int) -> None:
    assert age_months(b, d) == months


@pytest.mark.parametrize(
    ("b", "d", "years"),
    [
        (D(2018, 4, 1), D(2024, 3, 30), 5),
        (D(2018, 4, 1), D(2024, 3, 31), 6),  # 6 on the day before the 6th birthday
        (D(2020, 2, 29), D(2021, 2, 27), 0),
        (D(2020, 2, 29), D(2021, 2, 28), 1),  # reach(b, 12) = 2021-02-28
        (D(2020, 2, 29), D(2024, 2, 27), 3),
        (D(2020, 2, 29), D(2024, 2, 28), 4),  # reach(b, 48) = 2024-02-28
    ],
)
def test_age_years(b: date, d: date, years: int) -> None:
    assert age_years(b, d) == years


def test_age_before_birth_is_an_error() -> None:
    with pytest.raises(ValueError):
        age_months(D(2024, 6, 10), D(2024, 6, 9))


def test_age_months_agrees_with_reach_for_every_birth_date() -> None:
    # The law's single reading: a child is m months old exactly from reach(b, m) on.
    b = D(2019, 1, 1)
    while b <= D(2021, 12, 31):  # covers a leap year and every month end
        for m in (1, 2, 7, 12, 24, 59, 60, 90):
            assert age_months(b, reach(b, m)) == m
            assert age_months(b, reach(b, m) - timedelta(days=1)) == m - 1
        b += timedelta(days=1)
