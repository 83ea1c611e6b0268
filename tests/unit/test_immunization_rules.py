"""Hand-computed immunization notices (SERVICES.md "Immunization notices") and rule-file errors.

Every expected date below was computed by hand from the table; the comment beside it shows
the arithmetic. reach(b, m) = anniv(b, m) − 1 day; "lc" = last_chance (window end − 30 days).
"""

import json
from datetime import date
from pathlib import Path

import pytest

from renkei.errors import ConfigError
from renkei.services.immunization import (
    Dose,
    NoticeDraft,
    evaluate_child,
    load_immunization_rules,
    notice_id,
)

D = date
RULES = load_immunization_rules()


def notices(b: date, on: date, doses: list[tuple[str, int, date]] = (), status: str = "resident", only: str = ""):
    """The child's notices on `on` as sorted (vaccine, dose, kind, window_start, window_end)."""
    drafts = evaluate_child(b, status, [Dose(c, n, d) for c, n, d in doses], on, RULES)
    return sorted(
        (x.vaccine_code, x.dose_number, x.kind, x.window_start, x.window_end)
        for x in drafts
        if x.vaccine_code.startswith(only)
    )


# --- full notice lists: one child per test, every open notice on D --------------------------


def test_newborn_before_any_window_opens() -> None:
    # b 2024-05-10: reach(2) = 7/10 − 1 = 7/9; ROTA from b+42 = 6/21; BCG reach(5) = 10/9.
    assert notices(D(2024, 5, 10), D(2024, 6, 1)) == []


def test_worked_example_child_on_the_last_day_of_pcv() -> None:
    # b 2018-04-01, PCV 1-3 given; complete 4種 + Hib history → no 5種 notice.
    b = D(2018, 4, 1)
    doses = [
        ("DPT_IPV", 1, D(2018, 6, 1)), ("DPT_IPV", 2, D(2018, 6, 22)),  # + 21
        ("DPT_IPV", 3, D(2018, 7, 13)), ("DPT_IPV", 4, D(2019, 1, 13)),  # + 21; anniv(7/13, 6)
        ("HIB", 1, D(2018, 6, 1)), ("HIB", 2, D(2018, 6, 29)),  # + 28
        ("HIB", 3, D(2018, 7, 27)), ("HIB", 4, D(2019, 2, 27)),  # + 28; anniv(7/27, 7)
        ("PCV", 1, D(2018, 6, 1)),  # ≥ reach(2) = 5/31
        ("PCV", 2, D(2018, 7, 2)),  # ≥ 6/1 + 28 = 6/29
        ("PCV", 3, D(2018, 8, 6)),  # ≥ 7/2 + 28 = 7/30
    ]
    # PCV#4 from max(8/6 + 61 = 10/6, reach(12) = 2019-03-31) to reach(60) = 2023-03-31;
    # lc from 2023-03-31 − 30 = 2023-03-01.
    # JE 1期 #1 from reach(36) = 2021-03-31 to reach(90) = anniv 2025-10-01 − 1 = 2025-09-30.
    pcv4 = ("PCV", 4, "last_chance", D(2019, 3, 31), D(2023, 3, 31))
    je1 = ("JE", 1, "due", D(2021, 3, 31), D(2025, 9, 30))
    assert notices(b, D(2023, 3, 31), doses) == [je1, pcv4]
    assert notices(b, D(2023, 3, 1), doses) == [je1, pcv4]  # the last_chance switch day
    assert notices(b, D(2023, 2, 28), doses) == [je1, ("PCV", 4, "due", D(2019, 3, 31), D(2023, 3, 31))]
    # The day after reach(60): PCV is over; MR 2期 opens (entry 2024 → FY2023 = 2023-04-01 … 2024-03-31).
    assert notices(b, D(2023, 4, 1), doses) == [je1, ("MR", 2, "due", D(2023, 4, 1), D(2024, 3, 31))]


def test_born_on_the_31st_opens_on_the_30th() -> None:
    b = D(2023, 7, 31)
    # reach(2) = anniv 9/31 → 10/1, − 1 = 9/30. ROTA from max(9/30, b+42 = 9/11) to
    # b+104 = 11/12 (7/31 + 31 = 8/31, + 30 = 9/30, + 31 = 10/31, + 12 = 11/12).
    # HEPB to reach(12) = 2024-07-30; DPT_IPV_HIB to reach(90) = anniv 2031-01-31 − 1;
    # PCV to reach(60) = 2028-07-30; BCG from reach(5) = anniv 12/31 − 1 = 12/30 (not yet).
    assert notices(b, D(2023, 9, 30)) == [
        ("DPT_IPV_HIB", 1, "due", D(2023, 9, 30), D(2031, 1, 30)),
        ("HEPB", 1, "due", D(2023, 9, 30), D(2024, 7, 30)),
        ("PCV", 1, "due", D(2023, 9, 30), D(2028, 7, 30)),
        ("ROTA", 1, "due", D(2023, 9, 30), D(2023, 11, 12)),
    ]
    assert notices(b, D(2023, 9, 29)) == []  # the day before notify_from (ROTA's legal window is open, its notice is not)


def test_born_on_the_29th_in_a_common_year() -> None:
    b = D(2022, 12, 29)
    # reach(2) = anniv 2023-02-29 → 3/1, − 1 = 2/28. ROTA: b+42 = 2/9 (2 + 31 + 9); b+104 =
    # 4/12 (2 + 31 + 28 + 31 + 12). reach(12) = 2023-12-28; reach(60) = 2027-12-28;
    # reach(90): month 11 + 90 = 101 → 2030-06-29, − 1.
    assert notices(b, D(2023, 2, 28)) == [
        ("DPT_IPV_HIB", 1, "due", D(2023, 2, 28), D(2030, 6, 28)),
        ("HEPB", 1, "due", D(2023, 2, 28), D(2023, 12, 28)),
        ("PCV", 1, "due", D(2023, 2, 28), D(2027, 12, 28)),
        ("ROTA", 1, "due", D(2023, 2, 28), D(2023, 4, 12)),
    ]
    assert notices(b, D(2023, 2, 27)) == []


def test_born_on_the_30th_reaches_two_months_on_a_leap_day() -> None:
    b = D(2023, 12, 30)
    doses = [("HEPB", 1, D(2024, 1, 15))]  # HEPB counts from birth, so an early dose 1 counts
    # reach(2) = anniv 2024-02-30 → 3/1, − 1 = 2/29. HEPB#2 from 1/15 + 28 = 2/12 to reach(12)
    # = 2024-12-29. ROTA: b+42 = 2/10 (1 + 31 + 10), b+104 = 4/12 (1 + 31 + 29 + 31 + 12).
    # reach(90): 11 + 90 = 101 → 2031-06-30, − 1. reach(60) = 2028-12-29.
    assert notices(b, D(2024, 2, 29), doses) == [
        ("DPT_IPV_HIB", 1, "due", D(2024, 2, 29), D(2031, 6, 29)),
        ("HEPB", 2, "due", D(2024, 2, 12), D(2024, 12, 29)),
        ("PCV", 1, "due", D(2024, 2, 29), D(2028, 12, 29)),
        ("ROTA", 1, "due", D(2024, 2, 29), D(2024, 4, 12)),
    ]


def test_leap_day_child_on_the_last_day_of_the_first_year() -> None:
    b = D(2020, 2, 29)
    doses = [
        ("HEPB", 1, D(2020, 5, 1)), ("HEPB", 2, D(2020, 6, 1)),  # 5/1 + 28 = 5/29 ≤ 6/1
        ("DPT_IPV_HIB", 1, D(2020, 5, 1)),  # reach(2) = anniv 4/29 − 1 = 4/28
        ("DPT_IPV_HIB", 2, D(2020, 5, 22)),  # 5/1 + 21
        ("DPT_IPV_HIB", 3, D(2020, 6, 12)),  # 5/22 + 21
        ("DPT_IPV_HIB", 4, D(2020, 12, 12)),  # anniv(6/12, 6)
        ("PCV", 1, D(2020, 5, 1)), ("PCV", 2, D(2020, 5, 29)), ("PCV", 3, D(2020, 6, 26)),
    ]
    # reach(12) = anniv 2021-03-01 − 1 = 2021-02-28: last day of HEPB and BCG (both lc).
    # HEPB#3 from 5/1 + 140 = 9/18 (30 + 30 + 31 + 31 + 18). BCG from reach(5) = 7/28.
    # MR 1期 to reach(24) = anniv 2022-03-01 − 1; VAR to reach(36) = 2023-02-28.
    # PCV#4 from max(6/26 + 61 = 8/26, reach(12)) to reach(60) = anniv 2025-03-01 − 1.
    # JE from reach(36) = 2023-02-28 (not yet); MR 2期: entry 2026 (not yet).
    later = [
        ("MR", 1, "due", D(2021, 2, 28), D(2022, 2, 28)),
        ("PCV", 4, "due", D(2021, 2, 28), D(2025, 2, 28)),
        ("VAR", 1, "due", D(2021, 2, 28), D(2023, 2, 28)),
    ]
    closing = [
        ("BCG", 1, "last_chance", D(2020, 7, 28), D(2021, 2, 28)),
        ("HEPB", 3, "last_chance", D(2020, 9, 18), D(2021, 2, 28)),
    ]
    assert notices(b, D(2021, 2, 27), doses) == closing
    assert notices(b, D(2021, 2, 28), doses) == sorted(closing + later)
    assert notices(b, D(2021, 3, 1), doses) == later  # legal_end + 1: HEPB and BCG are gone


def test_rota_product_fixed_by_dose_1_with_the_other_first_doses() -> None:
    b = D(2024, 1, 15)
    given = D(2024, 3, 14)  # reach(2) = anniv 3/15 − 1
    doses = [("ROTA1", 1, given), ("HEPB", 1, given), ("DPT_IPV_HIB", 1, given), ("PCV", 1, given)]
    # ROTA1#2 from 3/14 + 28 = 4/11 to b+168 = 7/1 (16 + 29 + 31 + 30 + 31 + 30 = 167 → 6/30, +1).
    # HEPB#2 from 4/11 to reach(12) = 2025-01-14; DPT#2 from 3/14 + 21 = 4/4 to reach(90) =
    # anniv 2031-07-15 − 1; PCV#2 from 4/11 to reach(24) = 2026-01-14 (d2's own end).
    assert notices(b, D(2024, 4, 11), doses) == [
        ("DPT_IPV_HIB", 2, "due", D(2024, 4, 4), D(2031, 7, 14)),
        ("HEPB", 2, "due", D(2024, 4, 11), D(2025, 1, 14)),
        ("PCV", 2, "due", D(2024, 4, 11), D(2026, 1, 14)),
        ("ROTA1", 2, "due", D(2024, 4, 11), D(2024, 7, 1)),
    ]


def test_four_in_one_history_continues_on_its_own_series_not_five_in_one() -> None:
    b = D(2023, 6, 10)
    doses = [("DPT_IPV", 1, D(2023, 8, 10)), ("HIB", 1, D(2023, 8, 10))]
    # reach(2) = anniv 8/10 − 1 = 8/9. ROTA: b+42 = 7/22, b+104 = 9/22 (20 + 31 + 31 + 22);
    # lc from 9/22 − 30 = 8/23, so on 9/15 it is last_chance. BCG from reach(5) = 11/9.
    # DPT_IPV#2 from 8/10 + 21 = 8/31 to reach(90): 5 + 90 = 95 → 2030-12-10 − 1. HIB started
    # by reach(7) (3 + 1): HIB#2 from 8/10 + 28 = 9/7 (21 + 7) to until reach(12) = 2024-06-09.
    assert notices(b, D(2023, 9, 15), doses) == [
        ("DPT_IPV", 2, "due", D(2023, 8, 31), D(2030, 12, 9)),
        ("HEPB", 1, "due", D(2023, 8, 9), D(2024, 6, 9)),
        ("HIB", 2, "due", D(2023, 9, 7), D(2024, 6, 9)),
        ("PCV", 1, "due", D(2023, 8, 9), D(2028, 6, 9)),
        ("ROTA", 1, "last_chance", D(2023, 8, 9), D(2023, 9, 22)),
    ]


def test_a_hib_dose_alone_also_silences_five_in_one() -> None:
    b = D(2023, 6, 10)
    assert notices(b, D(2023, 9, 15), [("HIB", 1, D(2023, 8, 10))], only="DPT_IPV_HIB") == []
    assert notices(b, D(2023, 9, 15), [("DPT_IPV", 1, D(2023, 8, 10))], only="DPT_IPV_HIB") == []
    # without either, the 5種 dose 1 is due (reach(2) = 8/9, reach(90): 5 + 90 → 2030-12-10 − 1)
    assert notices(b, D(2023, 9, 15), only="DPT") == [("DPT_IPV_HIB", 1, "due", D(2023, 8, 9), D(2030, 12, 9))]


def test_late_starter_at_three_with_no_doses() -> None:
    b = D(2022, 8, 20)
    # On 2025-09-01: HEPB/BCG (reach(12) = 2023-08-19), MR 1期 (reach(24) = 2024-08-19) and
    # VAR (reach(36) = 2025-08-19) are over. reach(2) = 10/19; reach(60) = 2027-08-19;
    # reach(90): 7 + 90 = 97 → 2030-02-20, − 1. JE#1 from reach(36) = 2025-08-19.
    # MR 2期: born after April 1 → entry 2029 → FY2028 (not yet).
    assert notices(b, D(2025, 9, 1)) == [
        ("DPT_IPV_HIB", 1, "due", D(2022, 10, 19), D(2030, 2, 19)),
        ("JE", 1, "due", D(2025, 8, 19), D(2030, 2, 19)),
        ("PCV", 1, "due", D(2022, 10, 19), D(2027, 8, 19)),
    ]


def test_mr_second_period_without_the_first() -> None:
    b = D(2019, 9, 15)
    doses = [
        ("DPT_IPV_HIB", 1, D(2019, 11, 15)),  # reach(2) = 11/14
        ("DPT_IPV_HIB", 2, D(2019, 12, 6)),  # 11/15 + 21
        ("DPT_IPV_HIB", 3, D(2019, 12, 27)),  # 12/6 + 21
        ("DPT_IPV_HIB", 4, D(2020, 6, 27)),  # anniv(12/27, 6)
        ("JE", 1, D(2022, 9, 20)), ("JE", 2, D(2022, 9, 27)),  # + 7
        ("JE", 3, D(2023, 9, 27)),  # ≥ anniv(9/27, 6) = 2023-03-27
    ]
    # No MR at all; 1期 ended at reach(24) = 2021-09-14. Born after April 1 → entry 2026 →
    # 2期 is FY2025 = 2025-04-01 … 2026-03-31, offered although 1期 was missed.
    # PCV ended at reach(60) = 2024-09-14; VAR at reach(36).
    assert notices(b, D(2025, 3, 31), doses) == []
    assert notices(b, D(2025, 4, 1), doses) == [("MR", 2, "due", D(2025, 4, 1), D(2026, 3, 31))]


def test_var_second_dose_six_months_after_a_month_end_first() -> None:
    b = D(2022, 2, 28)
    doses = [
        ("DPT_IPV", 1, D(2022, 4, 27)), ("DPT_IPV", 2, D(2022, 5, 18)),  # + 21 (3 + 18)
        ("DPT_IPV", 3, D(2022, 6, 8)), ("DPT_IPV", 4, D(2022, 12, 8)),  # + 21 (13 + 8); anniv 6
        ("HIB", 1, D(2022, 4, 27)), ("HIB", 2, D(2022, 5, 25)),  # + 28 (3 + 25)
        ("HIB", 3, D(2022, 6, 22)), ("HIB", 4, D(2023, 1, 22)),  # + 28 (6 + 22); anniv(6/22, 7)
        ("PCV", 1, D(2022, 4, 28)),  # reach(2) = anniv 4/28 − 1 = 4/27
        ("PCV", 2, D(2022, 5, 26)),  # 4/28 + 28
        ("PCV", 3, D(2022, 6, 23)),  # 5/26 + 28
        ("PCV", 4, D(2023, 2, 27)),  # max(6/23 + 61 = 8/23, reach(12) = 2023-02-27)
        ("MR", 1, D(2023, 3, 1)),
        ("VAR", 1, D(2023, 8, 31)),  # ≥ reach(12)
    ]
    # VAR#2 from anniv(8/31, 6) = 2024-02-31 → 3/1 to reach(36) = anniv 2025-02-28 − 1.
    assert notices(b, D(2024, 2, 29), doses) == []
    assert notices(b, D(2024, 3, 1), doses) == [("VAR", 2, "due", D(2024, 3, 1), D(2025, 2, 27))]


def test_je_third_dose_waits_for_four_years() -> None:
    b = D(2020, 6, 15)
    doses = [
        ("DPT_IPV", 1, D(2020, 8, 14)), ("DPT_IPV", 2, D(2020, 9, 4)),  # + 21 (17 + 4)
        ("DPT_IPV", 3, D(2020, 9, 25)), ("DPT_IPV", 4, D(2021, 3, 25)),  # + 21; anniv(9/25, 6)
        ("HIB", 1, D(2020, 8, 14)), ("HIB", 2, D(2020, 9, 11)),  # + 28 (17 + 11)
        ("HIB", 3, D(2020, 10, 9)), ("HIB", 4, D(2021, 5, 9)),  # + 28 (19 + 9); anniv(10/9, 7)
        ("PCV", 1, D(2020, 8, 14)),  # reach(2) = anniv 8/15 − 1
        ("PCV", 2, D(2020, 9, 11)),  # 8/14 + 28 = 17 + 11
        ("PCV", 3, D(2020, 10, 9)),  # 9/11 + 28 = 19 + 9
        ("PCV", 4, D(2021, 6, 14)),  # max(10/9 + 61 = 12/9, reach(12) = 2021-06-14)
        ("JE", 1, D(2023, 6, 20)), ("JE", 2, D(2023, 6, 27)),
    ]
    # JE#3 from max(anniv(6/27, 6) = 2023-12-27, reach(48) = 2024-06-14) to reach(90):
    # 5 + 90 = 95 → 2027-12-15, − 1. MR 2期: entry 2027 (FY2026, not yet); VAR ended.
    assert notices(b, D(2024, 6, 13), doses) == []
    assert notices(b, D(2024, 6, 14), doses) == [("JE", 3, "due", D(2024, 6, 14), D(2027, 12, 14))]


def test_fully_vaccinated_toddler_has_nothing_until_var_2() -> None:
    b = D(2023, 4, 10)
    doses = [
        ("HEPB", 1, D(2023, 6, 9)),  # reach(2) = anniv 6/10 − 1
        ("HEPB", 2, D(2023, 7, 7)),  # 6/9 + 28 = 21 + 7
        ("HEPB", 3, D(2023, 10, 27)),  # 6/9 + 140 = 21 + 31 + 31 + 30 + 27
        ("ROTA1", 1, D(2023, 6, 9)), ("ROTA1", 2, D(2023, 7, 7)),  # ≥ b+42 = 5/22; + 28
        ("DPT_IPV_HIB", 1, D(2023, 6, 9)), ("DPT_IPV_HIB", 2, D(2023, 6, 30)),  # + 21
        ("DPT_IPV_HIB", 3, D(2023, 7, 21)), ("DPT_IPV_HIB", 4, D(2024, 1, 21)),  # + 21; anniv 6
        ("PCV", 1, D(2023, 6, 9)), ("PCV", 2, D(2023, 7, 7)), ("PCV", 3, D(2023, 8, 4)),
        ("PCV", 4, D(2024, 4, 9)),  # max(8/4 + 61 = 10/4, reach(12) = 2024-04-09)
        ("BCG", 1, D(2023, 9, 9)),
        ("MR", 1, D(2024, 4, 9)), ("VAR", 1, D(2024, 4, 9)),
    ]
    assert notices(b, D(2024, 10, 1), doses) == []
    # VAR#2 from anniv(2024-04-09, 6) = 10/9 to reach(36) = anniv 2026-04-10 − 1.
    assert notices(b, D(2024, 10, 9), doses) == [("VAR", 2, "due", D(2024, 10, 9), D(2026, 4, 9))]


def test_je_dose_before_six_months_does_not_count() -> None:
    b = D(2020, 5, 20)
    doses = [
        ("DPT_IPV", 1, D(2020, 7, 19)), ("DPT_IPV", 2, D(2020, 8, 9)),  # + 21 (12 + 9)
        ("DPT_IPV", 3, D(2020, 8, 30)), ("DPT_IPV", 4, D(2021, 3, 1)),  # + 21; anniv 2021-02-30 → 3/1
        ("HIB", 1, D(2020, 7, 19)), ("HIB", 2, D(2020, 8, 16)),  # + 28 (12 + 16)
        ("HIB", 3, D(2020, 9, 13)), ("HIB", 4, D(2021, 4, 13)),  # + 28 (15 + 13); anniv(9/13, 7)
        ("PCV", 1, D(2020, 7, 19)),  # reach(2) = anniv 7/20 − 1
        ("PCV", 2, D(2020, 8, 16)),  # 7/19 + 28 = 12 + 16
        ("PCV", 3, D(2020, 9, 13)),  # 8/16 + 28 = 15 + 13
        ("PCV", 4, D(2021, 5, 19)),  # max(9/13 + 61 = 11/13, reach(12) = 2021-05-19)
        ("JE", 1, D(2020, 10, 1)),  # before reach(6) = anniv 11/20 − 1 = 11/19: too early
    ]
    # JE#1 again, from reach(36) = 2023-05-19 to reach(90): 4 + 90 = 94 → 2027-11-20, − 1.
    # VAR ended at reach(36) = 2023-05-19; MR 2期: entry 2027.
    assert notices(b, D(2023, 6, 1), doses) == [("JE", 1, "due", D(2023, 5, 19), D(2027, 11, 19))]


def test_dose_given_one_day_short_of_the_interval_does_not_count() -> None:
    b = D(2024, 1, 15)
    first = D(2024, 3, 14)
    doses = [
        ("DPT_IPV_HIB", 1, first), ("DPT_IPV_HIB", 2, D(2024, 4, 3)),  # 3/14 + 20: one day short
        ("HEPB", 1, first), ("PCV", 1, first), ("ROTA5", 1, first),
    ]
    # DPT#2 is asked for again from 3/14 + 21 = 4/4. HEPB#2, PCV#2 and ROTA5#2 open on
    # 3/14 + 28 = 4/11 (not yet); BCG on reach(5) = 6/14; ROTA dose 1 counts (≥ b+42 = 2/26).
    assert notices(b, D(2024, 4, 10), doses) == [("DPT_IPV_HIB", 2, "due", D(2024, 4, 4), D(2031, 7, 14))]
    on_time = [d if d[1] != 2 else ("DPT_IPV_HIB", 2, D(2024, 4, 4)) for d in doses]
    # given on 4/4 it counts; DPT#3 then opens on 4/4 + 21 = 4/25
    assert notices(b, D(2024, 4, 10), on_time) == []


def test_hepb_third_dose_counts_from_the_first() -> None:
    b = D(2024, 1, 15)
    doses = [("HEPB", 1, D(2024, 3, 14)), ("HEPB", 2, D(2024, 4, 11))]
    # HEPB#3 from 3/14 + 140 = 8/1 (17 + 30 + 31 + 30 + 31 = 139 → 7/31, + 1). ROTA ended at
    # b+104 = 4/28. DPT#1/PCV#1 from reach(2) = 3/14; BCG from reach(5) = 6/14 to reach(12).
    others = [
        ("BCG", 1, "due", D(2024, 6, 14), D(2025, 1, 14)),
        ("DPT_IPV_HIB", 1, "due", D(2024, 3, 14), D(2031, 7, 14)),
        ("PCV", 1, "due", D(2024, 3, 14), D(2029, 1, 14)),
    ]
    assert notices(b, D(2024, 7, 31), doses) == others
    assert notices(b, D(2024, 8, 1), doses) == sorted(others + [("HEPB", 3, "due", D(2024, 8, 1), D(2025, 1, 14))])


def test_early_hepb_counts_and_sets_the_second_dose() -> None:
    b = D(2024, 1, 15)
    # HEPB is legal from birth: 1/20 counts; HEPB#2 from 1/20 + 28 = 2/17 (11 + 17).
    assert notices(b, D(2024, 3, 14), [("HEPB", 1, D(2024, 1, 20))]) == [
        ("DPT_IPV_HIB", 1, "due", D(2024, 3, 14), D(2031, 7, 14)),
        ("HEPB", 2, "due", D(2024, 2, 17), D(2025, 1, 14)),
        ("PCV", 1, "due", D(2024, 3, 14), D(2029, 1, 14)),
        ("ROTA", 1, "due", D(2024, 3, 14), D(2024, 4, 28)),
    ]


def test_rota_dose_1_before_six_weeks_does_not_fix_the_product() -> None:
    b = D(2024, 1, 15)
    # ROTA1 on 2/25 is before b+42 = 2/26 (16 + 26): it does not count, so ROTA dose 1 is still
    # due (to b+104 = 4/28) and the ROTA1 series says nothing.
    assert notices(b, D(2024, 3, 14), [("ROTA1", 1, D(2024, 2, 25))]) == [
        ("DPT_IPV_HIB", 1, "due", D(2024, 3, 14), D(2031, 7, 14)),
        ("HEPB", 1, "due", D(2024, 3, 14), D(2025, 1, 14)),
        ("PCV", 1, "due", D(2024, 3, 14), D(2029, 1, 14)),
        ("ROTA", 1, "due", D(2024, 3, 14), D(2024, 4, 28)),
    ]


def test_single_late_pcv_dose_after_two_years_ends_pcv_notices() -> None:
    b = D(2020, 2, 29)
    doses = [
        ("DPT_IPV", 1, D(2020, 5, 1)), ("DPT_IPV", 2, D(2020, 5, 22)),  # reach(2) = 4/28; + 21
        ("DPT_IPV", 3, D(2020, 6, 12)), ("DPT_IPV", 4, D(2020, 12, 12)),  # + 21; anniv(6/12, 6)
        ("HIB", 1, D(2020, 5, 1)), ("HIB", 2, D(2020, 5, 29)),  # + 28
        ("HIB", 3, D(2020, 6, 26)), ("HIB", 4, D(2021, 1, 26)),  # + 28 (2 + 26); anniv(6/26, 7)
        ("PCV", 1, D(2022, 3, 15)),  # after reach(24) = 2022-02-28: a 24–60 m start (1 dose)
        ("JE", 1, D(2023, 3, 1)), ("JE", 2, D(2023, 3, 8)),  # + 7
    ]
    # Started after reach(24): the 1-dose branch, PCV is complete. JE#3 from max(anniv(3/8, 6) = 9/8,
    # reach(48) = anniv 2024-02-29 − 1 = 2/28) to reach(90): 1 + 90 = 91 → 2027-08-29, − 1.
    assert notices(b, D(2024, 2, 27), doses) == []
    assert notices(b, D(2024, 2, 28), doses) == [("JE", 3, "due", D(2024, 2, 28), D(2027, 8, 28))]


def test_five_in_one_booster_six_months_after_a_month_end_dose() -> None:
    b = D(2023, 1, 5)
    doses = [
        ("DPT_IPV_HIB", 1, D(2023, 3, 4)),  # reach(2) = anniv 3/5 − 1
        ("DPT_IPV_HIB", 2, D(2023, 4, 10)),  # ≥ 3/4 + 21 = 3/25
        ("DPT_IPV_HIB", 3, D(2023, 8, 31)),  # ≥ 4/10 + 21 = 5/1
    ]
    # DPT#4 from anniv(8/31, 6) = 2024-02-31 → 3/1 to reach(90): 0 + 90 → 2030-07-05, − 1.
    # MR 1期 reach(12) = 2024-01-04 … reach(24) = 2025-01-04; VAR to reach(36) = 2026-01-04;
    # PCV (none given) reach(2) = 2023-03-04 … reach(60) = 2028-01-04. HEPB/BCG ended 2024-01-04.
    base = [
        ("MR", 1, "due", D(2024, 1, 4), D(2025, 1, 4)),
        ("PCV", 1, "due", D(2023, 3, 4), D(2028, 1, 4)),
        ("VAR", 1, "due", D(2024, 1, 4), D(2026, 1, 4)),
    ]
    assert notices(b, D(2024, 2, 29), doses) == base
    assert notices(b, D(2024, 3, 1), doses) == sorted(base + [("DPT_IPV_HIB", 4, "due", D(2024, 3, 1), D(2030, 7, 4))])


@pytest.mark.parametrize("status", ["moved_out", "deceased"])
def test_only_residents_are_notified(status: str) -> None:
    b = D(2023, 7, 31)  # the child of test_born_on_the_31st_opens_on_the_30th: four notices as resident
    assert notices(b, D(2023, 9, 30), status=status) == []
    assert len(notices(b, D(2023, 9, 30))) == 4


# --- targeted rules ---------------------------------------------------------------------------


def test_rota_due_then_last_chance_then_gone() -> None:
    b = D(2024, 1, 15)
    # notify max(reach(2) = 3/14, b+42 = 2/26) = 3/14; end b+104 = 4/28; lc from 4/28 − 30 = 3/29.
    assert notices(b, D(2024, 3, 13), only="ROTA") == []
    assert notices(b, D(2024, 3, 14), only="ROTA") == [("ROTA", 1, "due", D(2024, 3, 14), D(2024, 4, 28))]
    assert notices(b, D(2024, 3, 28), only="ROTA") == [("ROTA", 1, "due", D(2024, 3, 14), D(2024, 4, 28))]
    assert notices(b, D(2024, 3, 29), only="ROTA") == [("ROTA", 1, "last_chance", D(2024, 3, 14), D(2024, 4, 28))]
    assert notices(b, D(2024, 4, 28), only="ROTA") == [("ROTA", 1, "last_chance", D(2024, 3, 14), D(2024, 4, 28))]
    assert notices(b, D(2024, 4, 29), only="ROTA") == []


def test_rota5_takes_three_doses_to_32_weeks() -> None:
    b = D(2024, 1, 15)
    doses = [("ROTA5", 1, D(2024, 3, 14)), ("ROTA5", 2, D(2024, 4, 11))]  # 3/14 + 28
    # ROTA5#3 from 4/11 + 28 = 5/9 to b+224 = 8/26 (16 + 29 + 31 + 30 + 31 + 30 + 31 = 198, + 26).
    assert notices(b, D(2024, 5, 8), doses, only="ROTA") == []
    assert notices(b, D(2024, 5, 9), doses, only="ROTA") == [("ROTA5", 3, "due", D(2024, 5, 9), D(2024, 8, 26))]
    # a ROTA1 child is complete after 2 doses
    done = [("ROTA1", 1, D(2024, 3, 14)), ("ROTA1", 2, D(2024, 4, 11))]
    assert notices(b, D(2024, 5, 9), done, only="ROTA") == []


def test_pcv_first_dose_before_two_months_does_not_count() -> None:
    b = D(2024, 1, 15)
    # reach(2) = 3/14: a dose on 3/13 is too early; PCV#1 is still due.
    assert notices(b, D(2024, 3, 20), [("PCV", 1, D(2024, 3, 13))], only="PCV") == [
        ("PCV", 1, "due", D(2024, 3, 14), D(2029, 1, 14))
    ]


def test_pcv_start_after_seven_months_takes_the_booster_as_dose_3() -> None:
    b = D(2023, 1, 10)
    # reach(7) = anniv 8/10 − 1 = 8/9. Started 8/10 (after): 2 + 1, so PCV#3 is the 追加, from
    # max(9/7 + 61 = 11/7 (23 + 31 + 7), reach(12) = 2024-01-09) to reach(60) = 2028-01-09.
    late = [("PCV", 1, D(2023, 8, 10)), ("PCV", 2, D(2023, 9, 7))]  # 8/10 + 28 = 21 + 7
    assert notices(b, D(2023, 10, 10), late, only="PCV") == []
    assert notices(b, D(2024, 1, 9), late, only="PCV") == [("PCV", 3, "due", D(2024, 1, 9), D(2028, 1, 9))]
    # Started on reach(7) itself: the 3 + 1 schedule. PCV#3 from 9/6 + 28 = 10/4 (24 + 4) to
    # reach(24) = anniv 2025-01-10 − 1.
    on_time = [("PCV", 1, D(2023, 8, 9)), ("PCV", 2, D(2023, 9, 6))]
    assert notices(b, D(2023, 10, 10), on_time, only="PCV") == [("PCV", 3, "due", D(2023, 10, 4), D(2025, 1, 9))]


def test_pcv_second_dose_only_until_24_months() -> None:
    b = D(2022, 1, 10)
    doses = [("PCV", 1, D(2022, 3, 9))]  # reach(2) = anniv 3/10 − 1
    # PCV#2 from 3/9 + 28 = 4/6 (22 + 6) to reach(24) = anniv 2024-01-10 − 1 = 1/9.
    assert notices(b, D(2024, 1, 9), doses, only="PCV") == [("PCV", 2, "last_chance", D(2022, 4, 6), D(2024, 1, 9))]
    assert notices(b, D(2024, 1, 10), doses, only="PCV") == []


def test_pcv_booster_waits_61_days_after_dose_3() -> None:
    b = D(2023, 1, 10)
    doses = [("PCV", 1, D(2023, 7, 1)), ("PCV", 2, D(2023, 7, 29)), ("PCV", 3, D(2023, 12, 20))]
    # PCV#4 from max(12/20 + 61 = 2024-02-19 (11 + 31 + 19), reach(12) = 2024-01-09) to
    # reach(60) = 2028-01-09.
    assert notices(b, D(2024, 2, 18), doses, only="PCV") == []
    assert notices(b, D(2024, 2, 19), doses, only="PCV") == [("PCV", 4, "due", D(2024, 2, 19), D(2028, 1, 9))]


def test_var_second_dose_counts_from_three_months() -> None:
    b = D(2022, 2, 28)
    first = ("VAR", 1, D(2023, 8, 31))
    # minimum interval: anniv(8/31, 3) = 11/31 → 12/1. On 11/30 it is too early and VAR#2 is
    # still due from anniv(8/31, 6) = 2024-03-01; on 12/1 it counts.
    assert notices(b, D(2024, 3, 1), [first, ("VAR", 2, D(2023, 11, 30))], only="VAR") == [
        ("VAR", 2, "due", D(2024, 3, 1), D(2025, 2, 27))
    ]
    assert notices(b, D(2024, 3, 1), [first, ("VAR", 2, D(2023, 12, 1))], only="VAR") == []


def test_je_second_dose_six_days_after_the_first_does_not_count() -> None:
    b = D(2020, 6, 15)
    doses = [("JE", 1, D(2023, 6, 20)), ("JE", 2, D(2023, 6, 26))]  # 6/20 + 6 < 6/20 + 7
    assert notices(b, D(2023, 7, 1), doses, only="JE") == [("JE", 2, "due", D(2023, 6, 27), D(2027, 12, 14))]


def test_a_redone_dose_recorded_under_the_same_number_counts() -> None:
    b = D(2024, 1, 15)
    doses = [("DPT_IPV_HIB", 1, D(2024, 3, 14)), ("DPT_IPV_HIB", 2, D(2024, 4, 3)), ("DPT_IPV_HIB", 2, D(2024, 4, 5))]
    # 4/3 is too early (< 4/4) but 4/5 counts: DPT#3 from 4/5 + 21 = 4/26.
    assert notices(b, D(2024, 4, 25), doses, only="DPT") == []
    assert notices(b, D(2024, 4, 26), doses, only="DPT") == [("DPT_IPV_HIB", 3, "due", D(2024, 4, 26), D(2031, 7, 14))]


def test_mr_second_period_follows_the_school_year_april_1_vs_april_2() -> None:
    early, late = D(2018, 4, 1), D(2018, 4, 2)
    # April 1: entry 2024 → 2期 = 2023-04-01 … 2024-03-31 (lc from 3/1). April 2: entry 2025.
    assert notices(early, D(2024, 3, 31), only="MR") == [("MR", 2, "last_chance", D(2023, 4, 1), D(2024, 3, 31))]
    assert notices(late, D(2024, 3, 31), only="MR") == []
    assert notices(early, D(2024, 4, 1), only="MR") == []
    assert notices(late, D(2024, 4, 1), only="MR") == [("MR", 2, "due", D(2024, 4, 1), D(2025, 3, 31))]
    given = [("MR", 1, D(2019, 4, 5)), ("MR", 2, D(2023, 5, 1))]
    assert notices(early, D(2023, 6, 1), given, only="MR") == []


def test_mr_second_period_given_before_the_nencho_year_does_not_count() -> None:
    b = D(2018, 4, 2)
    early_dose = [("MR", 2, D(2024, 3, 1))]  # before 2期 opens on 2024-04-01
    assert notices(b, D(2024, 4, 1), early_dose, only="MR") == [("MR", 2, "due", D(2024, 4, 1), D(2025, 3, 31))]


def test_no_notice_before_birth() -> None:
    assert notices(D(2024, 5, 10), D(2024, 5, 9)) == []


# --- the draft itself ---------------------------------------------------------------------


def test_draft_carries_rule_period_and_json_facts() -> None:
    b = D(2024, 1, 15)
    doses = [Dose("PCV", 1, D(2024, 3, 14)), Dose("HEPB", 1, D(2024, 3, 14))]
    drafts = evaluate_child(b, "resident", doses, D(2024, 4, 11), RULES)
    pcv = next(x for x in drafts if x.vaccine_code == "PCV")
    assert pcv.service == "immunization"
    assert (pcv.rule_id, pcv.rule_version, pcv.period_key) == ("imm.pcv", 2, "PCV#2")
    # age on 4/11: reach(2) = 3/14 ≤ 4/11 < reach(3) = 4/14 → 2 months
    assert pcv.facts == {
        "birth_date": "2024-01-15",
        "age_months": 2,
        "doses_counted": [["PCV", 1, "2024-03-14"]],
        "evaluated_on": "2024-04-11",
    }
    json.dumps(pcv.facts)  # serialisable as is


def test_rota_dose_1_records_the_product_code_that_fixed_it() -> None:
    b = D(2024, 1, 15)
    drafts = evaluate_child(b, "resident", [Dose("ROTA5", 1, D(2024, 3, 14))], D(2024, 4, 11), RULES)
    rota = next(x for x in drafts if x.vaccine_code.startswith("ROTA"))
    assert (rota.rule_id, rota.period_key) == ("imm.rota5", "ROTA5#2")
    assert rota.facts["doses_counted"] == [["ROTA5", 1, "2024-03-14"]]


def test_period_key() -> None:
    draft = NoticeDraft("immunization", "due", "imm.dpt_ipv_hib", 1, "DPT_IPV_HIB", 2, D(2024, 4, 4), D(2031, 7, 14), {})
    assert draft.period_key == "DPT_IPV_HIB#2"


def test_notice_id_known_answer() -> None:
    # printf 'imm.pcv|ERK-1|PCV#2|due' | sha256sum → first 32 hex chars
    assert notice_id("imm.pcv", "ERK-1", "PCV#2", "due") == "e47c81e1b65bc57d0d8c2b1497be62e6"


def test_notice_id_is_deterministic_and_kind_sensitive() -> None:
    due = notice_id("imm.pcv", "ERK-1", "PCV#2", "due")
    assert due == notice_id("imm.pcv", "ERK-1", "PCV#2", "due")
    assert len(due) == 32 and int(due, 16) >= 0
    assert due != notice_id("imm.pcv", "ERK-1", "PCV#2", "last_chance")
    assert due != notice_id("imm.pcv", "ERK-2", "PCV#2", "due")


def test_notice_id_rejects_the_separator_in_a_part() -> None:
    with pytest.raises(ValueError):
        notice_id("imm.pcv", "ERK|1", "PCV#2", "due")


# --- the rule file ------------------------------------------------------------------------


def test_default_rules_cover_the_routine_series() -> None:
    assert RULES.last_chance_days == 30
    names = [s.name for s in RULES.series]
    assert names == [
        "HEPB", "ROTA", "ROTA1", "ROTA5", "DPT_IPV_HIB", "DPT_IPV", "HIB", "PCV", "BCG", "MR1", "MR2",
        "VAR", "JE1", "JE2", "DT2", "HPV",
    ]
    assert len({s.rule_id for s in RULES.series}) == len(names)


def test_rules_are_cached_per_path_and_follow_renkei_config_dir(tmp_path: Path, monkeypatch) -> None:
    assert load_immunization_rules() is RULES
    (tmp_path / "services").mkdir()
    text = MINIMAL.replace("last_chance_days: 30", "last_chance_days: 14")
    (tmp_path / "services" / "immunization.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setenv("RENKEI_CONFIG_DIR", str(tmp_path))
    custom = load_immunization_rules()
    assert custom.last_chance_days == 14 and custom is load_immunization_rules()


def test_a_city_edit_changes_the_window_without_code(tmp_path: Path) -> None:
    path = tmp_path / "imm.yaml"
    path.write_text(MINIMAL.replace("{reach_months: 5}", "{reach_months: 3}"), encoding="utf-8")
    rules = load_immunization_rules(path)
    # reach(3) for b 2024-01-15 = anniv 4/15 − 1 = 4/14; end reach(12) = 2025-01-14
    drafts = evaluate_child(D(2024, 1, 15), "resident", [], D(2024, 4, 14), rules)
    assert [(x.vaccine_code, x.window_start, x.window_end) for x in drafts] == [("BCG", D(2024, 4, 14), D(2025, 1, 14))]


MINIMAL = """\
last_chance_days: 30
series:
  BCG:
    rule_id: imm.bcg
    version: 1
    vaccine_code: BCG
    legal_start: {birth_plus_days: 0}
    legal_end: {reach_months: 12}
    doses:
      1: {notify_from: {reach_months: 5}}
"""

TWO_DOSES = """\
last_chance_days: 30
series:
  VAR:
    rule_id: imm.var
    version: 1
    vaccine_code: VAR
    legal_start: {reach_months: 12}
    legal_end: {reach_months: 36}
    doses:
      1: {notify_from: {reach_months: 12}}
      2: {notify_from: {anniv_prev_months: 6}}
"""


@pytest.mark.parametrize(
    ("text", "keypath", "hint"),
    [
        # unknown term (a typo of reach_months)
        (MINIMAL.replace("{reach_months: 5}", "{reach_month: 5}"), "series.BCG.doses.1.notify_from.reach_month", "reach_months"),
        # unknown key in a series
        (MINIMAL.replace("    version: 1\n", "    version: 1\n    windows: 2\n"), "series.BCG.windows", "remove it"),
        # missing field
        (MINIMAL.replace("    legal_end: {reach_months: 12}\n", ""), "series.BCG.legal_end", "add `legal_end:`"),
        # bad type
        (MINIMAL.replace("version: 1", "version: one"), "series.BCG.version", "whole number"),
        (MINIMAL.replace("{reach_months: 5}", "{reach_months: five}"), "series.BCG.doses.1.notify_from.reach_months", "whole number"),
        (MINIMAL.replace("last_chance_days: 30", "last_chance_days: true"), "last_chance_days", "whole number"),
        # two terms in one expression
        (MINIMAL.replace("{reach_months: 5}", "{reach_months: 5, birth_plus_days: 3}"), "series.BCG.doses.1.notify_from", "exactly one term"),
        # a dose term on the first dose
        (MINIMAL.replace("{reach_months: 5}", "{prev_plus_days: 28}"), "series.BCG.doses.1.notify_from.prev_plus_days", "first dose"),
        # a dose reference to a later dose
        (TWO_DOSES.replace("{anniv_prev_months: 6}", "{dose_plus_days: [2, 28]}"), "series.VAR.doses.2.notify_from.dose_plus_days[0]", "earlier dose"),
        # missing notify_from
        (TWO_DOSES.replace("{notify_from: {anniv_prev_months: 6}}", "{valid_from: {anniv_prev_months: 3}}"), "series.VAR.doses.2.notify_from", "add `notify_from:`"),
        # unknown top-level key
        (MINIMAL.replace("series:", "serie:"), "serie", "remove it"),
        # a product series listing dose 1
        (MINIMAL.replace("    doses:", "    requires_dose_1: true\n    doses:"), "series.BCG.doses.1", "start at dose 2"),
        # a code list that is not a list
        (MINIMAL.replace("    doses:", "    not_if_any_dose_of: HIB\n    doses:"), "series.BCG.not_if_any_dose_of", "[DPT_IPV, HIB]"),
        # skip_if naming a later dose
        (TWO_DOSES.replace("{notify_from: {anniv_prev_months: 6}}", "{notify_from: {anniv_prev_months: 6}, skip_if: {dose: 3, after: {reach_months: 7}}}"), "series.VAR.doses.2.skip_if.dose", "earlier dose"),
        # missing top-level key
        (MINIMAL.replace("last_chance_days: 30\n", ""), "last_chance_days", "add `last_chance_days:`"),
    ],
)
def test_rule_file_errors_name_file_key_and_fix(tmp_path: Path, text: str, keypath: str, hint: str) -> None:
    path = tmp_path / "immunization.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_immunization_rules(path)
    message = str(caught.value)
    assert str(path) in message
    assert f": {keypath}:" in message
    assert "Fix:" in message and hint in message


def test_rule_file_duplicate_rule_id(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(MINIMAL + MINIMAL.split("series:\n")[1].replace("  BCG:", "  BCG2:"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"series\.BCG2\.rule_id: rule_id already used by series BCG"):
        load_immunization_rules(path)


def test_rule_file_not_yaml_or_missing(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("series: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_immunization_rules(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_immunization_rules(tmp_path / "absent.yaml")
