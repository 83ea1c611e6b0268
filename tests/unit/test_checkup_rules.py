"""Hand-computed infant check-up notices (SERVICES.md "Infant health check-ups") and rule-file errors.

Every expected date below was computed by hand from the table; the comment beside it shows the
arithmetic. reach(b, m) = anniv(b, m) − 1 day; anniv rolls a missing day to the 1st of the next
month; "lc" = last_chance (window end − 30 days).
M4 reach(3) … reach(6); M7 reach(6) … reach(11); Y1M6 anniv(18) … reach(24); Y3 anniv(36) … reach(48).
"""

from datetime import date
from pathlib import Path

import pytest

from renkei.errors import ConfigError
from renkei.services.checkup import evaluate_checkups, load_checkup_rules
from renkei.services.immunization import NoticeDraft, notice_id

D = date
RULES = load_checkup_rules()


def notices(b: date, on: date, examined: set[str] = frozenset(), status: str = "resident"):
    """The child's check-up notices on `on` as sorted (code, kind, window_start, window_end)."""
    drafts = evaluate_checkups(b, status, set(examined), on, RULES)
    return sorted((x.vaccine_code, x.kind, x.window_start, x.window_end) for x in drafts)


# b 2024-01-15: M4 = reach(3) 4/15 − 1 = 2024-04-14 … reach(6) 7/15 − 1 = 2024-07-14, lc from
# 7/14 − 30 = 6/14; M7 = 2024-07-14 … reach(11) 12/15 − 1 = 2024-12-14, lc from 11/14.
B = D(2024, 1, 15)
M4 = (D(2024, 4, 14), D(2024, 7, 14))
M7 = (D(2024, 7, 14), D(2024, 12, 14))


def test_m4_opens_on_reach_3_not_the_day_before() -> None:
    assert notices(B, D(2024, 4, 13)) == []
    assert notices(B, D(2024, 4, 14)) == [("M4", "due", *M4)]


def test_m4_turns_last_chance_30_days_before_its_end() -> None:
    assert notices(B, D(2024, 6, 13)) == [("M4", "due", *M4)]
    assert notices(B, D(2024, 6, 14)) == [("M4", "last_chance", *M4)]


def test_reach_6_is_the_last_day_of_m4_and_the_first_of_m7() -> None:
    assert notices(B, D(2024, 7, 14)) == [("M4", "last_chance", *M4), ("M7", "due", *M7)]
    assert notices(B, D(2024, 7, 15)) == [("M7", "due", *M7)]


def test_m7_last_day_and_the_day_after() -> None:
    assert notices(B, D(2024, 11, 13)) == [("M7", "due", *M7)]
    assert notices(B, D(2024, 11, 14)) == [("M7", "last_chance", *M7)]  # 12/14 − 30
    assert notices(B, D(2024, 12, 14)) == [("M7", "last_chance", *M7)]
    assert notices(B, D(2024, 12, 15)) == []


def test_y1m6_opens_over_one_year_six_months() -> None:
    # 「1歳6か月を超え」: reach(18) = 2025-07-14 is 1y6m reached, not yet over; anniv(18) = 2025-07-15.
    # End reach(24) = 2026-01-15 − 1 = 2026-01-14; lc from 1/14 − 30 = 2025-12-15.
    y1m6 = (D(2025, 7, 15), D(2026, 1, 14))
    assert notices(B, D(2025, 7, 14)) == []
    assert notices(B, D(2025, 7, 15)) == [("Y1M6", "due", *y1m6)]
    assert notices(B, D(2025, 12, 14)) == [("Y1M6", "due", *y1m6)]
    assert notices(B, D(2025, 12, 15)) == [("Y1M6", "last_chance", *y1m6)]
    assert notices(B, D(2026, 1, 14)) == [("Y1M6", "last_chance", *y1m6)]
    assert notices(B, D(2026, 1, 15)) == []  # 2 years old: 1y6m check-up over


def test_y3_from_anniv_36_to_reach_48() -> None:
    # anniv(36) = 2027-01-15 … reach(48) = 2028-01-15 − 1 = 2028-01-14.
    y3 = (D(2027, 1, 15), D(2028, 1, 14))
    assert notices(B, D(2027, 1, 14)) == []
    assert notices(B, D(2027, 1, 15)) == [("Y3", "due", *y3)]
    assert notices(B, D(2028, 1, 14)) == [("Y3", "last_chance", *y3)]
    assert notices(B, D(2028, 1, 15)) == []


def test_born_on_the_31st_m4_and_m7() -> None:
    b = D(2023, 7, 31)
    # M4: reach(3) = anniv 10/31 − 1 = 2023-10-30; reach(6) = anniv 2024-01-31 − 1 = 2024-01-30.
    # M7: 2024-01-30 … reach(11) = anniv 2024-06-31 → 07-01, − 1 = 2024-06-30; lc 6/30 − 30 = 5/31.
    assert notices(b, D(2023, 10, 29)) == []
    assert notices(b, D(2023, 10, 30)) == [("M4", "due", D(2023, 10, 30), D(2024, 1, 30))]
    m7 = (D(2024, 1, 30), D(2024, 6, 30))
    assert notices(b, D(2024, 5, 30)) == [("M7", "due", *m7)]
    assert notices(b, D(2024, 5, 31)) == [("M7", "last_chance", *m7)]
    assert notices(b, D(2024, 6, 30)) == [("M7", "last_chance", *m7)]
    assert notices(b, D(2024, 7, 1)) == []


def test_born_on_the_31st_m4_ends_on_a_leap_day() -> None:
    b = D(2023, 8, 31)
    # M4: reach(3) = anniv 11/31 → 12/1, − 1 = 2023-11-30; reach(6) = anniv 2024-02-31 → 03-01,
    # − 1 = 2024-02-29. M7: 2024-02-29 … reach(11) = anniv 2024-07-31 − 1 = 2024-07-30.
    assert notices(b, D(2024, 2, 29)) == [
        ("M4", "last_chance", D(2023, 11, 30), D(2024, 2, 29)),
        ("M7", "due", D(2024, 2, 29), D(2024, 7, 30)),
    ]
    assert notices(b, D(2024, 3, 1)) == [("M7", "due", D(2024, 2, 29), D(2024, 7, 30))]


def test_born_on_the_31st_y1m6_starts_on_march_1() -> None:
    b = D(2023, 8, 31)
    # anniv(18) = 2025-02-31 → 2025-03-01; reach(24) = anniv 2025-08-31 − 1 = 2025-08-30.
    assert notices(b, D(2025, 2, 28)) == []
    assert notices(b, D(2025, 3, 1)) == [("Y1M6", "due", D(2025, 3, 1), D(2025, 8, 30))]


def test_born_on_the_30th_m4_starts_on_february_28() -> None:
    b = D(2022, 11, 30)
    # reach(3) = anniv 2023-02-30 → 03-01, − 1 = 2023-02-28; reach(6) = 2023-05-30 − 1 = 2023-05-29.
    assert notices(b, D(2023, 2, 27)) == []
    assert notices(b, D(2023, 2, 28)) == [("M4", "due", D(2023, 2, 28), D(2023, 5, 29))]


def test_born_on_the_29th_y1m6_common_and_leap_february() -> None:
    # b 2023-08-29: anniv(18) = 2025-02-29 → 2025-03-01 (2025 is common); reach(24) = 2025-08-28.
    assert notices(D(2023, 8, 29), D(2025, 2, 28)) == []
    assert notices(D(2023, 8, 29), D(2025, 3, 1)) == [("Y1M6", "due", D(2025, 3, 1), D(2025, 8, 28))]
    # b 2022-08-29: anniv(18) = 2024-02-29 exists (leap); reach(24) = 2024-08-28.
    assert notices(D(2022, 8, 29), D(2024, 2, 28)) == []
    assert notices(D(2022, 8, 29), D(2024, 2, 29)) == [("Y1M6", "due", D(2024, 2, 29), D(2024, 8, 28))]


def test_born_on_a_leap_day_y3() -> None:
    b = D(2024, 2, 29)
    # Y1M6 ends reach(24) = anniv 2026-02-29 → 03-01, − 1 = 2026-02-28.
    # Y3: anniv(36) = 2027-02-29 → 2027-03-01; reach(48) = anniv 2028-02-29 (leap) − 1 = 2028-02-28;
    # lc from 2/28 − 30 = 2028-01-29 (28 days back to 1/31, 2 more).
    y3 = (D(2027, 3, 1), D(2028, 2, 28))
    assert notices(b, D(2026, 2, 28)) == [("Y1M6", "last_chance", D(2025, 8, 29), D(2026, 2, 28))]
    assert notices(b, D(2027, 2, 28)) == []
    assert notices(b, D(2027, 3, 1)) == [("Y3", "due", *y3)]
    assert notices(b, D(2028, 1, 28)) == [("Y3", "due", *y3)]
    assert notices(b, D(2028, 1, 29)) == [("Y3", "last_chance", *y3)]
    assert notices(b, D(2028, 2, 29)) == []


def test_born_on_a_leap_day_m4() -> None:
    # reach(3) = anniv 2024-05-29 − 1 = 2024-05-28; reach(6) = 2024-08-29 − 1 = 2024-08-28.
    assert notices(D(2024, 2, 29), D(2024, 5, 28)) == [("M4", "due", D(2024, 5, 28), D(2024, 8, 28))]


def test_a_record_of_the_code_closes_its_notice_only() -> None:
    on = D(2024, 7, 14)  # both M4 (last day) and M7 (first day) open for B
    assert notices(B, on, {"M4"}) == [("M7", "due", *M7)]
    assert notices(B, on, {"M7"}) == [("M4", "last_chance", *M4)]
    assert notices(B, on, {"M4", "M7"}) == []
    assert notices(B, on, {"Y3"}) == [("M4", "last_chance", *M4), ("M7", "due", *M7)]


@pytest.mark.parametrize("status", ["moved_out", "deceased"])
def test_no_notice_for_a_child_who_moved_out_or_died(status: str) -> None:
    assert notices(B, D(2024, 5, 1), status=status) == []
    assert notices(B, D(2024, 5, 1)) == [("M4", "due", *M4)]


def test_the_draft_carries_rule_window_and_facts() -> None:
    (draft,) = evaluate_checkups(B, "resident", set(), D(2024, 4, 14), RULES)
    assert draft == NoticeDraft(
        service="checkup",
        kind="due",
        rule_id="chk.m4",
        rule_version=1,
        vaccine_code="M4",
        dose_number=1,
        window_start=D(2024, 4, 14),
        window_end=D(2024, 7, 14),
        facts={"checkup_code": "M4", "birth_date": "2024-01-15", "age_months": 3, "evaluated_on": "2024-04-14"},
    )
    assert draft.period_key == "M4#1"
    # Same rule, child, period and kind → same id on any day of the window.
    (later,) = evaluate_checkups(B, "resident", set(), D(2024, 5, 20), RULES)
    assert notice_id(later.rule_id, "erk", later.period_key, later.kind) == notice_id("chk.m4", "erk", "M4#1", "due")


def test_default_rules_list_the_four_checkups() -> None:
    assert RULES.last_chance_days == 30
    assert [(c.code, c.rule_id) for c in RULES.checkups] == [
        ("M4", "chk.m4"), ("M7", "chk.m7"), ("Y1M6", "chk.y1m6"), ("Y3", "chk.y3"),
    ]
    assert load_checkup_rules() is RULES


MINIMAL = """\
last_chance_days: 30
checkups:
  M4:
    rule_id: chk.m4
    version: 1
    window_start: {reach_months: 3}
    window_end: {reach_months: 6}
"""


def test_a_city_edit_changes_the_window_without_code(tmp_path: Path) -> None:
    path = tmp_path / "checkup.yaml"
    path.write_text(MINIMAL.replace("{reach_months: 6}", "{reach_months: 5}").replace("30", "10"), encoding="utf-8")
    rules = load_checkup_rules(path)
    # reach(5) for B = 6/15 − 1 = 2024-06-14; lc from 6/14 − 10 = 6/4.
    drafts = evaluate_checkups(B, "resident", set(), D(2024, 6, 4), rules)
    assert [(x.vaccine_code, x.kind, x.window_end) for x in drafts] == [("M4", "last_chance", D(2024, 6, 14))]


@pytest.mark.parametrize(
    ("text", "keypath", "hint"),
    [
        (MINIMAL.replace("{reach_months: 3}", "{prev_plus_days: 28}"), "checkups.M4.window_start", "birth date"),
        (MINIMAL.replace("    window_end: {reach_months: 6}\n", ""), "checkups.M4.window_end", "add `window_end:`"),
        (MINIMAL.replace("    version: 1\n", "    version: 1\n    windows: 2\n"), "checkups.M4.windows", "remove it"),
        (MINIMAL.replace("  M4:", "  M4|X:"), "checkups.M4|X", "remove them"),
        (MINIMAL.replace("{reach_months: 6}", "{reach_month: 6}"), "checkups.M4.window_end.reach_month", "reach_months"),
        (MINIMAL.replace("checkups:\n", "checkups: {}\n").split("  M4")[0], "checkups", "add at least one"),
        (MINIMAL.replace("last_chance_days: 30", "last_chance_days: -1"), "last_chance_days", "whole number"),
        (MINIMAL + MINIMAL.split("checkups:\n")[1].replace("  M4:", "  M7:"), "checkups.M7.rule_id", "own rule_id"),
    ],
)
def test_rule_file_errors_name_file_key_and_fix(tmp_path: Path, text: str, keypath: str, hint: str) -> None:
    path = tmp_path / "checkup.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_checkup_rules(path)
    message = str(caught.value)
    assert str(path) in message and f": {keypath}:" in message
    assert "Fix:" in message and hint in message


def test_rule_file_not_yaml_or_missing(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("checkups: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_checkup_rules(broken)
    with pytest.raises(ConfigError, match="cannot read the check-up rules"):
        load_checkup_rules(tmp_path / "absent.yaml")
