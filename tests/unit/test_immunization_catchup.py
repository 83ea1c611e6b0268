"""Hand-computed notices for the later routine series: JE 2期, DT 2期, HPV, and the late-start
branches of PCV and Hib with 4種 (DPT_IPV) — SERVICES.md "Immunization notices".

Every expected date was computed by hand; the comment beside it shows the arithmetic.
reach(b, m) = anniv(b, m) − 1 day; "lc" = last_chance (window end − 30 days); FY = fiscal
year (April 1 – March 31); sex codes are the registry's (1 male, 2 female).
"""

from datetime import date, timedelta
from pathlib import Path

import pytest

from renkei.errors import ConfigError
from renkei.services.dates import fiscal_year_end, fiscal_year_start, school_entry_year
from renkei.services.immunization import Dose, evaluate_child, load_immunization_rules

D = date
RULES = load_immunization_rules()
GIRL, BOY = 2, 1


def notices(b: date, on: date, doses=(), only: tuple[str, ...] = ("",), sex: int | None = None):
    """The child's notices on `on` as sorted (vaccine, dose, kind, window_start, window_end)."""
    drafts = evaluate_child(b, "resident", [Dose(c, n, d) for c, n, d in doses], on, RULES, sex=sex)
    return sorted(
        (x.vaccine_code, x.dose_number, x.kind, x.window_start, x.window_end)
        for x in drafts
        if x.vaccine_code.startswith(only)
    )


def series(code: str, *dates: date) -> list[tuple[str, int, date]]:
    """Doses 1, 2, … of one code on the given days."""
    return [(code, n, d) for n, d in enumerate(dates, 1)]


# --- JE 2期 (dose 4): reach(108) … reach(156) ------------------------------------------------


def test_je2_opens_at_nine_for_a_child_born_on_the_31st() -> None:
    b = D(2014, 1, 31)
    # reach(108) = anniv 2023-01-31 − 1 = 2023-01-30; reach(156) = anniv 2027-01-31 − 1 = 2027-01-30.
    # Everything else is over (JE 1期 at reach(90) = 2021-07-30) or not yet (DT at reach(132)).
    assert notices(b, D(2023, 1, 29)) == []
    assert notices(b, D(2023, 1, 30)) == [("JE", 4, "due", D(2023, 1, 30), D(2027, 1, 30))]


def test_je2_last_chance_then_gone() -> None:
    b = D(2014, 1, 31)
    window = (D(2023, 1, 30), D(2027, 1, 30))
    # lc from 2027-01-30 − 30 = 2026-12-31 (1 + 29 days of January back to Dec 31).
    assert notices(b, D(2026, 12, 30), only=("JE",)) == [("JE", 4, "due", *window)]
    assert notices(b, D(2026, 12, 31), only=("JE",)) == [("JE", 4, "last_chance", *window)]
    assert notices(b, D(2027, 1, 30), only=("JE",)) == [("JE", 4, "last_chance", *window)]
    assert notices(b, D(2027, 1, 31)) == []  # 13: JE 2期 and DT 2期 are both over


def test_je2_for_a_leap_day_child() -> None:
    b = D(2016, 2, 29)
    # reach(108) = anniv 2025-02-29 → 3/1, − 1 = 2025-02-28; reach(156) = 2029-03-01 − 1 = 2029-02-28.
    assert notices(b, D(2025, 2, 27), only=("JE",)) == []
    assert notices(b, D(2025, 2, 28), only=("JE",)) == [("JE", 4, "due", D(2025, 2, 28), D(2029, 2, 28))]


def test_je2_is_offered_although_1ki_is_incomplete() -> None:
    b = D(2014, 1, 31)
    doses = series("JE", D(2017, 3, 1), D(2017, 3, 8))  # 1期 dose 3 never given
    # JE 1期 ended at reach(90) = 2021-07-30; 2期 is its own period (like MR 2期).
    assert notices(b, D(2023, 2, 1), doses) == [("JE", 4, "due", D(2023, 1, 30), D(2027, 1, 30))]


def test_je2_dose_before_nine_does_not_count_and_one_on_time_does() -> None:
    b = D(2014, 1, 31)
    early = [("JE", 4, D(2023, 1, 29))]  # the day before reach(108) = 2023-01-30
    assert notices(b, D(2023, 2, 1), early, only=("JE",)) == [("JE", 4, "due", D(2023, 1, 30), D(2027, 1, 30))]
    assert notices(b, D(2023, 2, 1), [("JE", 4, D(2023, 1, 30))], only=("JE",)) == []


# --- DT 2期: reach(132) … reach(156) ----------------------------------------------------------


def test_dt2_opens_at_eleven_with_je2_already_open() -> None:
    b = D(2013, 10, 31)
    # DT: reach(132) = anniv 2024-10-31 − 1 = 2024-10-30 … reach(156) = 2026-10-30.
    # JE 2期: reach(108) = 2022-10-30 … 2026-10-30.
    je2 = ("JE", 4, "due", D(2022, 10, 30), D(2026, 10, 30))
    assert notices(b, D(2024, 10, 29)) == [je2]
    assert notices(b, D(2024, 10, 30)) == [("DT", 1, "due", D(2024, 10, 30), D(2026, 10, 30)), je2]


def test_dt2_last_chance_edges() -> None:
    b = D(2013, 10, 31)
    window = (D(2024, 10, 30), D(2026, 10, 30))
    # lc from 2026-10-30 − 30 = 2026-09-30.
    assert notices(b, D(2026, 9, 29), only=("DT",)) == [("DT", 1, "due", *window)]
    assert notices(b, D(2026, 9, 30), only=("DT",)) == [("DT", 1, "last_chance", *window)]
    assert notices(b, D(2026, 10, 30), only=("DT",)) == [("DT", 1, "last_chance", *window)]
    assert notices(b, D(2026, 10, 31), only=("DT",)) == []


def test_dt2_given_at_ten_does_not_count() -> None:
    b = D(2013, 10, 31)
    assert notices(b, D(2024, 11, 5), [("DT", 1, D(2024, 10, 1))], only=("DT",)) == [
        ("DT", 1, "due", D(2024, 10, 30), D(2026, 10, 30))
    ]
    assert notices(b, D(2024, 11, 5), [("DT", 1, D(2024, 11, 1))], only=("DT",)) == []


# --- HPV (girls): FY of reaching 12 … FY of reaching 16; notified from the FY of reaching 13 --


def test_hpv_girl_born_april_1_is_a_year_ahead_of_april_2() -> None:
    early, late = D(2012, 4, 1), D(2012, 4, 2)
    # April 1: reach(156) = 2025-03-31 → FY2024 → notify 2024-04-01; reach(192) = 2028-03-31 →
    # FY2027 → end 2028-03-31. April 2: reach(156) = 2025-04-01 → FY2025; reach(192) =
    # 2028-04-01 → FY2028 → end 2029-03-31.
    assert notices(early, D(2024, 3, 31), only=("HPV",), sex=GIRL) == []
    assert notices(early, D(2024, 4, 1), only=("HPV",), sex=GIRL) == [("HPV", 1, "due", D(2024, 4, 1), D(2028, 3, 31))]
    assert notices(late, D(2024, 4, 1), only=("HPV",), sex=GIRL) == []
    assert notices(late, D(2025, 3, 31), only=("HPV",), sex=GIRL) == []
    assert notices(late, D(2025, 4, 1), only=("HPV",), sex=GIRL) == [("HPV", 1, "due", D(2025, 4, 1), D(2029, 3, 31))]


def test_hpv_full_list_girl_boy_and_unknown_sex() -> None:
    b = D(2012, 4, 2)
    # On 2025-04-01: JE 2期 reach(108) = 2021-04-01 … reach(156) = anniv 2025-04-02 − 1 =
    # 2025-04-01 (lc); DT reach(132) = 2023-04-01 … 2025-04-01 (lc); HPV opens (as above).
    closing = [
        ("DT", 1, "last_chance", D(2023, 4, 1), D(2025, 4, 1)),
        ("JE", 4, "last_chance", D(2021, 4, 1), D(2025, 4, 1)),
    ]
    hpv = ("HPV", 1, "due", D(2025, 4, 1), D(2029, 3, 31))
    assert notices(b, D(2025, 4, 1), sex=GIRL) == sorted([*closing, hpv])
    assert notices(b, D(2025, 4, 1), sex=BOY) == closing
    assert notices(b, D(2025, 4, 1), sex=None) == closing  # unknown sex: no HPV notice
    assert notices(b, D(2025, 4, 1)) == closing  # evaluate_child without sex, as before


def test_hpv_last_chance_and_end_of_the_kou1_year() -> None:
    b = D(2012, 4, 1)
    window = (D(2024, 4, 1), D(2028, 3, 31))
    # lc from 2028-03-31 − 30 = 2028-03-01 (2028 is a leap year: 2/29 is the day before).
    assert notices(b, D(2028, 2, 29), only=("HPV",), sex=GIRL) == [("HPV", 1, "due", *window)]
    assert notices(b, D(2028, 3, 1), only=("HPV",), sex=GIRL) == [("HPV", 1, "last_chance", *window)]
    assert notices(b, D(2028, 3, 31), only=("HPV",), sex=GIRL) == [("HPV", 1, "last_chance", *window)]
    assert notices(b, D(2028, 4, 1), only=("HPV",), sex=GIRL) == []


def test_hpv_dose_1_in_sho6_counts_but_not_in_sho5() -> None:
    b = D(2012, 4, 1)
    # legal start: reach(144) = 2024-03-31 → FY2023 → 2023-04-01 (小6 = entry 2018 + 5).
    counted = [("HPV", 1, D(2023, 5, 1))]
    # HPV#2 from anniv(5/1, 1) = 2023-06-01 (already open in 小6) to 2028-03-31.
    assert notices(b, D(2023, 6, 1), counted, only=("HPV",), sex=GIRL) == [("HPV", 2, "due", D(2023, 6, 1), D(2028, 3, 31))]
    too_early = [("HPV", 1, D(2023, 3, 31))]  # FY2022, 小5
    assert notices(b, D(2024, 4, 1), too_early, only=("HPV",), sex=GIRL) == [("HPV", 1, "due", D(2024, 4, 1), D(2028, 3, 31))]


HPV_B = D(2011, 6, 15)  # entry 2018: 小6 FY2023, 中1 FY2024, 高1 FY2027 → legal end 2028-03-31


def test_hpv_second_dose_one_month_after_the_first() -> None:
    # d1 2024-06-01: d2 from anniv(6/1, 1) = 7/1. A d2 on 6/20 is too soon and does not count.
    doses = [("HPV", 1, D(2024, 6, 1)), ("HPV", 2, D(2024, 6, 20))]
    assert notices(HPV_B, D(2024, 6, 30), doses[:1], only=("HPV",), sex=GIRL) == []
    assert notices(HPV_B, D(2024, 7, 1), doses, only=("HPV",), sex=GIRL) == [("HPV", 2, "due", D(2024, 7, 1), D(2028, 3, 31))]


def test_hpv_two_dose_schedule_is_complete() -> None:
    # d1 2024-06-01 before the 15th birthday anniv(b, 180) = 2026-06-15; d2 2024-11-01 =
    # anniv(d1, 5): 5 months apart → the 9価 2-dose schedule → no dose 3.
    doses = [("HPV", 1, D(2024, 6, 1)), ("HPV", 2, D(2024, 11, 1))]
    assert notices(HPV_B, D(2024, 12, 1), doses, only=("HPV",), sex=GIRL) == []
    assert notices(HPV_B, D(2025, 6, 1), doses, only=("HPV",), sex=GIRL) == []


def test_hpv_second_dose_under_five_months_needs_a_third() -> None:
    # d2 2024-10-31 < anniv(6/1, 5) = 11/1 → dose 3 from anniv(d1, 6) = 2024-12-01.
    doses = [("HPV", 1, D(2024, 6, 1)), ("HPV", 2, D(2024, 10, 31))]
    assert notices(HPV_B, D(2024, 11, 30), doses, only=("HPV",), sex=GIRL) == []
    assert notices(HPV_B, D(2024, 12, 1), doses, only=("HPV",), sex=GIRL) == [("HPV", 3, "due", D(2024, 12, 1), D(2028, 3, 31))]


def test_hpv_first_dose_on_the_15th_birthday_needs_a_third() -> None:
    # d1 on anniv(b, 180) = 2026-06-15 (no longer before the birthday); d2 2026-12-15 ≥ 5 months.
    # Dose 3 from anniv(2026-06-15, 6) = 2026-12-15 to 2028-03-31.
    doses = [("HPV", 1, D(2026, 6, 15)), ("HPV", 2, D(2026, 12, 15))]
    assert notices(HPV_B, D(2026, 12, 15), doses, only=("HPV",), sex=GIRL) == [("HPV", 3, "due", D(2026, 12, 15), D(2028, 3, 31))]
    # d1 the day before, 2026-06-14 (= reach(180), still 「15歳に至るまで」), d2 2026-12-14 ≥
    # anniv(6/14, 5) = 11/14: 2 doses suffice.
    in_time = [("HPV", 1, D(2026, 6, 14)), ("HPV", 2, D(2026, 12, 14))]
    assert notices(HPV_B, D(2027, 1, 1), in_time, only=("HPV",), sex=GIRL) == []


def test_hpv_third_dose_that_would_open_after_the_legal_end_is_never_notified() -> None:
    # d1 2027-12-01 (高1), d2 2028-01-05 (< 5 months): dose 3 from anniv(d1, 6) = 2028-06-01,
    # after the legal end 2028-03-31 — no notice on any day.
    doses = [("HPV", 1, D(2027, 12, 1)), ("HPV", 2, D(2028, 1, 5))]
    for on in (D(2028, 3, 31), D(2028, 6, 1)):
        assert notices(HPV_B, on, doses, only=("HPV",), sex=GIRL) == []


def test_hpv_fiscal_year_terms_equal_the_school_years() -> None:
    # 「12歳となる日の属する年度」 = 小6 = entry + 5, 13 → 中1 = entry + 6, 16 → 高1 = entry + 9,
    # for every birth date of four years (including two leap days).
    hpv = next(s for s in RULES.series if s.name == "HPV")
    b = D(2010, 1, 1)
    while b < D(2014, 1, 1):
        entry = school_entry_year(b)
        assert hpv.legal_start(b, {}, None) == fiscal_year_start(entry + 5), b
        assert hpv.doses[0].notify_from(b, {}, None) == fiscal_year_start(entry + 6), b
        assert hpv.legal_end(b, {}, None) == fiscal_year_end(entry + 9), b
        b += timedelta(days=1)


# --- PCV by the age at the first dose ---------------------------------------------------------
# b 2023-01-10: reach(2) = 2023-03-09, reach(7) = 8/9, reach(12) = 2024-01-09,
# reach(24) = 2025-01-09, reach(60) = 2028-01-09.
PCV_B = D(2023, 1, 10)


def test_pcv_started_at_six_months_takes_three_plus_one() -> None:
    d1, d2, d3 = D(2023, 7, 15), D(2023, 8, 12), D(2023, 9, 9)  # ≤ reach(7); + 28 (16 + 12); + 28 (19 + 9)
    # PCV#3 from 8/12 + 28 = 9/9 to until reach(24) = 2025-01-09.
    assert notices(PCV_B, D(2023, 9, 9), series("PCV", d1, d2), only=("PCV",)) == [
        ("PCV", 3, "due", D(2023, 9, 9), D(2025, 1, 9))
    ]
    # PCV#4 from max(9/9 + 61 = 11/9 (21 + 31 + 9), reach(12) = 2024-01-09) to reach(60).
    assert notices(PCV_B, D(2024, 1, 8), series("PCV", d1, d2, d3), only=("PCV",)) == []
    assert notices(PCV_B, D(2024, 1, 9), series("PCV", d1, d2, d3), only=("PCV",)) == [
        ("PCV", 4, "due", D(2024, 1, 9), D(2028, 1, 9))
    ]


def test_pcv_started_at_eight_months_takes_two_plus_one() -> None:
    d1, d2 = D(2023, 9, 15), D(2023, 10, 13)  # > reach(7) = 8/9; 9/15 + 28 (15 + 13)
    # PCV#2 from 10/13 until reach(24) = 2025-01-09.
    assert notices(PCV_B, D(2023, 10, 13), series("PCV", d1), only=("PCV",)) == [
        ("PCV", 2, "due", D(2023, 10, 13), D(2025, 1, 9))
    ]
    # The 追加 is dose 3: from max(10/13 + 61 = 12/13 (18 + 30 + 13), reach(12) = 2024-01-09).
    assert notices(PCV_B, D(2024, 1, 8), series("PCV", d1, d2), only=("PCV",)) == []
    assert notices(PCV_B, D(2024, 1, 9), series("PCV", d1, d2), only=("PCV",)) == [
        ("PCV", 3, "due", D(2024, 1, 9), D(2028, 1, 9))
    ]
    assert notices(PCV_B, D(2024, 6, 1), series("PCV", d1, d2, D(2024, 1, 9)), only=("PCV",)) == []  # complete


def test_pcv_booster_of_a_late_start_before_one_year_does_not_count() -> None:
    doses = series("PCV", D(2023, 9, 15), D(2023, 10, 13), D(2024, 1, 8))  # 1/8 < reach(12) = 1/9
    assert notices(PCV_B, D(2024, 1, 10), doses, only=("PCV",)) == [("PCV", 3, "due", D(2024, 1, 9), D(2028, 1, 9))]


def test_pcv_started_at_thirteen_months_takes_two_doses_60_days_apart() -> None:
    d1 = D(2024, 2, 15)  # > reach(12) = 2024-01-09
    # PCV#2 from 2/15 + 61 = 4/16 (14 + 31 + 16; 2024 is a leap year) to reach(60).
    assert notices(PCV_B, D(2024, 4, 15), series("PCV", d1), only=("PCV",)) == []
    assert notices(PCV_B, D(2024, 4, 16), series("PCV", d1), only=("PCV",)) == [
        ("PCV", 2, "due", D(2024, 4, 16), D(2028, 1, 9))
    ]
    # a dose 2 after only 60 days does not count; after 61 the series is complete
    assert notices(PCV_B, D(2024, 5, 1), series("PCV", d1, D(2024, 4, 15)), only=("PCV",)) == [
        ("PCV", 2, "due", D(2024, 4, 16), D(2028, 1, 9))
    ]
    assert notices(PCV_B, D(2024, 5, 1), series("PCV", d1, D(2024, 4, 16)), only=("PCV",)) == []


def test_pcv_started_at_thirty_months_is_one_dose() -> None:
    assert notices(PCV_B, D(2025, 10, 1), series("PCV", D(2025, 7, 20)), only=("PCV",)) == []  # > reach(24)


def test_pcv_branch_edges_on_reach_12_and_reach_24() -> None:
    # Started on reach(12) = 2024-01-09 itself: still 2 + 1; PCV#2 from 1/9 + 28 = 2/6.
    assert notices(PCV_B, D(2024, 2, 6), series("PCV", D(2024, 1, 9)), only=("PCV",)) == [
        ("PCV", 2, "due", D(2024, 2, 6), D(2025, 1, 9))
    ]
    # Started on reach(24) = 2025-01-09: 2 doses; PCV#2 from 1/9 + 61 = 3/11 (22 + 28 + 11).
    assert notices(PCV_B, D(2025, 3, 11), series("PCV", D(2025, 1, 9)), only=("PCV",)) == [
        ("PCV", 2, "due", D(2025, 3, 11), D(2028, 1, 9))
    ]
    # Started the day after, 2025-01-10: one dose, complete.
    assert notices(PCV_B, D(2025, 3, 11), series("PCV", D(2025, 1, 10)), only=("PCV",)) == []


def test_never_started_at_eight_months_full_list() -> None:
    # On 2023-09-15: BCG reach(5) = 6/9 … reach(12); HEPB reach(2) … reach(12); ROTA ended at
    # b+104 = 2023-04-24; DPT_IPV_HIB to reach(90) = anniv 2030-07-10 − 1; PCV#1 as ever.
    assert notices(PCV_B, D(2023, 9, 15)) == [
        ("BCG", 1, "due", D(2023, 6, 9), D(2024, 1, 9)),
        ("DPT_IPV_HIB", 1, "due", D(2023, 3, 9), D(2030, 7, 9)),
        ("HEPB", 1, "due", D(2023, 3, 9), D(2024, 1, 9)),
        ("PCV", 1, "due", D(2023, 3, 9), D(2028, 1, 9)),
    ]


def test_never_started_at_thirteen_months_full_list() -> None:
    # On 2024-02-15: HEPB/BCG over (reach(12) = 1/9); MR 1期 to reach(24) = 2025-01-09; VAR to
    # reach(36) = 2026-01-09.
    assert notices(PCV_B, D(2024, 2, 15)) == [
        ("DPT_IPV_HIB", 1, "due", D(2023, 3, 9), D(2030, 7, 9)),
        ("MR", 1, "due", D(2024, 1, 9), D(2025, 1, 9)),
        ("PCV", 1, "due", D(2023, 3, 9), D(2028, 1, 9)),
        ("VAR", 1, "due", D(2024, 1, 9), D(2026, 1, 9)),
    ]


def test_never_started_at_thirty_months_full_list() -> None:
    # On 2025-07-20: MR 1期 over; JE from reach(36) = 2026-01-09 (not yet); entry 2030 (MR 2期 later).
    assert notices(PCV_B, D(2025, 7, 20)) == [
        ("DPT_IPV_HIB", 1, "due", D(2023, 3, 9), D(2030, 7, 9)),
        ("PCV", 1, "due", D(2023, 3, 9), D(2028, 1, 9)),
        ("VAR", 1, "due", D(2024, 1, 9), D(2026, 1, 9)),
    ]


def test_pcv_never_started_last_chance() -> None:
    # lc from reach(60) − 30 = 2028-01-09 − 30 = 2027-12-10.
    assert notices(PCV_B, D(2027, 12, 9), only=("PCV",)) == [("PCV", 1, "due", D(2023, 3, 9), D(2028, 1, 9))]
    assert notices(PCV_B, D(2027, 12, 10), only=("PCV",)) == [("PCV", 1, "last_chance", D(2023, 3, 9), D(2028, 1, 9))]
    assert notices(PCV_B, D(2028, 1, 10), only=("PCV",)) == []


# --- Hib and 4種 for children who started on 4種 + Hib ------------------------------------------
# b 2022-05-20: reach(2) = 2022-07-19, reach(7) = 12/19, reach(12) = 2023-05-19,
# reach(60) = 2027-05-19, reach(90) = anniv 2029-11-20 − 1 = 2029-11-19.
HIB_B = D(2022, 5, 20)
FOUR = series("DPT_IPV", D(2022, 7, 20), D(2022, 8, 10), D(2022, 8, 31), D(2023, 3, 1))  # + 21, + 21, anniv(8/31, 6) = 2/31 → 3/1
HIB_ONLY = ("HIB",)


def test_hib_started_at_six_months_takes_three_plus_one() -> None:
    d1, d2, d3 = D(2022, 11, 25), D(2022, 12, 23), D(2023, 1, 20)  # ≤ reach(7); + 28 (5 + 23); + 28 (8 + 20)
    # HIB#2 from 11/25 + 28 = 12/23 until reach(12) = 2023-05-19.
    assert notices(HIB_B, D(2022, 12, 23), FOUR + series("HIB", d1), only=HIB_ONLY) == [
        ("HIB", 2, "due", D(2022, 12, 23), D(2023, 5, 19))
    ]
    # 追加 from anniv(1/20, 7) = 2023-08-20 to reach(60).
    three = FOUR + series("HIB", d1, d2, d3)
    assert notices(HIB_B, D(2023, 8, 19), three, only=HIB_ONLY) == []
    assert notices(HIB_B, D(2023, 8, 20), three, only=HIB_ONLY) == [("HIB", 4, "due", D(2023, 8, 20), D(2027, 5, 19))]


def test_hib_initial_doses_end_at_twelve_months() -> None:
    doses = FOUR + series("HIB", D(2022, 11, 25))
    # HIB#2 until reach(12) = 2023-05-19: lc from 4/19; gone after (the 実施要領's rescue, a
    # booster 27 days after the last 初回 dose, is not modelled).
    assert notices(HIB_B, D(2023, 4, 18), doses, only=HIB_ONLY) == [("HIB", 2, "due", D(2022, 12, 23), D(2023, 5, 19))]
    assert notices(HIB_B, D(2023, 4, 19), doses, only=HIB_ONLY) == [("HIB", 2, "last_chance", D(2022, 12, 23), D(2023, 5, 19))]
    assert notices(HIB_B, D(2023, 5, 20), doses, only=HIB_ONLY) == []


def test_hib_started_at_eight_months_takes_two_plus_one() -> None:
    d1, d2 = D(2023, 1, 25), D(2023, 2, 22)  # > reach(7) = 12/19; + 28 (6 + 22)
    assert notices(HIB_B, D(2023, 2, 22), FOUR + series("HIB", d1), only=HIB_ONLY) == [
        ("HIB", 2, "due", D(2023, 2, 22), D(2023, 5, 19))
    ]
    # 追加 (dose 3) from anniv(2/22, 7) = 2023-09-22.
    assert notices(HIB_B, D(2023, 9, 21), FOUR + series("HIB", d1, d2), only=HIB_ONLY) == []
    assert notices(HIB_B, D(2023, 9, 22), FOUR + series("HIB", d1, d2), only=HIB_ONLY) == [
        ("HIB", 3, "due", D(2023, 9, 22), D(2027, 5, 19))
    ]
    assert notices(HIB_B, D(2024, 1, 1), FOUR + series("HIB", d1, d2, D(2023, 9, 22)), only=HIB_ONLY) == []


@pytest.mark.parametrize("first", [D(2023, 6, 25), D(2024, 12, 1)])  # at 13 and at 30 months
def test_hib_started_after_one_year_is_one_dose(first: date) -> None:
    assert notices(HIB_B, D(2025, 1, 1), FOUR + [("HIB", 1, first)], only=HIB_ONLY) == []


@pytest.mark.parametrize("on", [D(2023, 1, 25), D(2023, 6, 25), D(2024, 11, 25)])  # 8, 13, 30 months
def test_hib_never_started_on_a_four_in_one_history(on: date) -> None:
    assert notices(HIB_B, on, FOUR, only=HIB_ONLY) == [("HIB", 1, "due", D(2022, 7, 19), D(2027, 5, 19))]


def test_hib_never_started_last_chance() -> None:
    # lc from 2027-05-19 − 30 = 2027-04-19.
    assert notices(HIB_B, D(2027, 4, 18), FOUR, only=HIB_ONLY) == [("HIB", 1, "due", D(2022, 7, 19), D(2027, 5, 19))]
    assert notices(HIB_B, D(2027, 4, 19), FOUR, only=HIB_ONLY) == [("HIB", 1, "last_chance", D(2022, 7, 19), D(2027, 5, 19))]


def test_hib_booster_six_months_after_the_third_dose_is_too_soon() -> None:
    # child U of the integration test: b 2024-02-29, reach(2) = anniv 4/29 − 1 = 4/28.
    b = D(2024, 2, 29)
    doses = series("HIB", D(2024, 4, 29), D(2024, 5, 29), D(2024, 6, 29), D(2025, 1, 10))
    # the 追加 counts from anniv(6/29, 7) = 2025-01-29; 1/10 is too soon → HIB#4 again, to
    # reach(60) = anniv 2029-02-29 → 3/1, − 1 = 2029-02-28.
    assert notices(b, D(2025, 6, 1), doses, only=HIB_ONLY) == [("HIB", 4, "due", D(2025, 1, 29), D(2029, 2, 28))]


def test_no_hib_or_four_in_one_notice_without_such_a_record() -> None:
    # a 5種 child (or one with no record at all) is told about DPT_IPV_HIB only
    for doses in ([], series("DPT_IPV_HIB", D(2022, 7, 20))):
        codes = {code for code, *_ in notices(HIB_B, D(2023, 1, 25), doses)}
        assert "DPT_IPV_HIB" in codes and not codes & {"DPT_IPV", "HIB"}


def test_four_in_one_series_runs_to_its_booster() -> None:
    three = FOUR[:3]
    # DPT_IPV#4 from anniv(8/31, 6) = 2023-02-31 → 3/1 to reach(90) = 2029-11-19.
    assert notices(HIB_B, D(2023, 2, 28), three, only=("DPT",)) == []
    assert notices(HIB_B, D(2023, 3, 1), three, only=("DPT",)) == [("DPT_IPV", 4, "due", D(2023, 3, 1), D(2029, 11, 19))]


def test_four_in_one_second_dose_20_days_after_does_not_count() -> None:
    doses = [FOUR[0], ("DPT_IPV", 2, D(2022, 8, 9))]  # 7/20 + 20 < 7/20 + 21 = 8/10
    assert notices(HIB_B, D(2022, 8, 15), doses, only=("DPT",)) == [("DPT_IPV", 2, "due", D(2022, 8, 10), D(2029, 11, 19))]


def test_four_in_one_on_a_hib_only_history_and_its_last_chance() -> None:
    hib = series("HIB", D(2022, 7, 20))
    # DPT_IPV#1 from reach(2) = 2022-07-19 to reach(90) = 2029-11-19; lc from 2029-10-20.
    assert notices(HIB_B, D(2029, 10, 19), hib, only=("DPT",)) == [("DPT_IPV", 1, "due", D(2022, 7, 19), D(2029, 11, 19))]
    assert notices(HIB_B, D(2029, 10, 20), hib, only=("DPT",)) == [("DPT_IPV", 1, "last_chance", D(2022, 7, 19), D(2029, 11, 19))]
    assert notices(HIB_B, D(2029, 11, 20), hib, only=("DPT",)) == []


def test_a_five_in_one_booster_finishes_both_series() -> None:
    hib = series("HIB", D(2022, 7, 20), D(2022, 8, 17), D(2022, 9, 14))  # + 28 (11 + 17), + 28 (14 + 14)
    five = [("DPT_IPV_HIB", 4, D(2023, 9, 1))]  # ≥ anniv(8/31, 6) = 3/1 and ≥ anniv(9/14, 7) = 2023-04-14
    # On 2023-10-01 only the other series speak: MR 1期 reach(12) = 2023-05-19 … reach(24) =
    # 2024-05-19; VAR … reach(36) = 2025-05-19; PCV#1 reach(2) … reach(60).
    assert notices(HIB_B, D(2023, 10, 1), FOUR[:3] + hib + five) == [
        ("MR", 1, "due", D(2023, 5, 19), D(2024, 5, 19)),
        ("PCV", 1, "due", D(2022, 7, 19), D(2027, 5, 19)),
        ("VAR", 1, "due", D(2023, 5, 19), D(2025, 5, 19)),
    ]


def test_branch_and_sex_facts_stay_json_and_rule_ids_are_distinct() -> None:
    drafts = evaluate_child(HPV_B, "resident", [], D(2024, 6, 1), RULES, sex=GIRL)
    hpv = next(x for x in drafts if x.vaccine_code == "HPV")
    assert (hpv.rule_id, hpv.rule_version, hpv.period_key) == ("imm.hpv", 1, "HPV#1")
    je = evaluate_child(D(2014, 1, 31), "resident", [], D(2023, 2, 1), RULES)
    assert [(x.rule_id, x.period_key) for x in je] == [("imm.je.2", "JE#4")]


# --- the rule file: the new vocabulary's errors -------------------------------------------------

BRANCHED = """\
last_chance_days: 30
series:
  PCV:
    rule_id: imm.pcv
    version: 1
    vaccine_code: PCV
    legal_start: {reach_months: 2}
    legal_end: {reach_months: 60}
    doses:
      1: {notify_from: {reach_months: 2}}
    branches:
      7:
        2: {notify_from: {prev_plus_days: 28}}
        3: {notify_from: {dose_anniv_months: [1, 6]}, skip_if: [{dose: 1, before: {anniv_months: 180}}]}
      60: {}
"""


def test_a_minimal_branched_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "imm.yaml"
    path.write_text(BRANCHED, encoding="utf-8")
    (pcv,) = load_immunization_rules(path).series
    assert [(br.started_by_months, [d.number for d in br.doses]) for br in pcv.branches] == [(7, [2, 3]), (60, [])]


@pytest.mark.parametrize(
    ("text", "keypath", "hint"),
    [
        (BRANCHED.replace("      60: {}", "      6: {}"), "series.PCV.branches", "reorder"),
        (BRANCHED.replace("        2: {notify", "        1: {notify"), "series.PCV.branches.7.1", "whole number ≥ 2"),
        (BRANCHED.replace("before: {anniv", "after: {reach_months: 1}, before: {anniv"), "series.PCV.branches.7.3.skip_if[0]", "exactly one of"),
        (BRANCHED.replace("[1, 6]", "[4, 6]"), "series.PCV.branches.7.3.notify_from.dose_anniv_months[0]", "earlier dose"),
        (BRANCHED.replace("      1: {notify_from: {reach_months: 2}}", "      1: {notify_from: {dose_anniv_months: [1, 1]}}"),
         "series.PCV.doses.1.notify_from.dose_anniv_months", "first dose"),
        (BRANCHED.replace("    doses:", "    sex: 3\n    doses:"), "series.PCV.sex", "2 (female)"),
        (BRANCHED.replace("    doses:", "    only_if_any_dose_of: HIB\n    doses:"), "series.PCV.only_if_any_dose_of", "[DPT_IPV, HIB]"),
        (BRANCHED.replace("{reach_months: 60}", "{fiscal_year_end_at_months: -1}"), "series.PCV.legal_end.fiscal_year_end_at_months", "whole number"),
    ],
)
def test_new_vocabulary_errors_name_file_key_and_fix(tmp_path: Path, text: str, keypath: str, hint: str) -> None:
    path = tmp_path / "immunization.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_immunization_rules(path)
    message = str(caught.value)
    assert str(path) in message and f": {keypath}:" in message
    assert "Fix:" in message and hint in message
