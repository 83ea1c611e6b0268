"""Hand-computed 特定健診 invitations (SERVICES.md "Specific health check-up invitations").

Fiscal year FY2025 = 2025-04-01 … 2026-03-31; campaign start May 15 (default). Ages are legal
ages: a person reaches age n on reach(b, 12n) = the day before the n-th birthday, so one born
April 1 reaches 40 on March 31. The upper end is the day before the 75th birthday.
"""

from datetime import date
from pathlib import Path

import pytest

from renkei.errors import ConfigError
from renkei.services.immunization import notice_id
from renkei.services.nhi_checkup import NhiInvitation, evaluate_nhi_checkup, load_nhi_checkup_rules

D = date
RULES = load_nhi_checkup_rules()
MEMBER_SINCE = D(2000, 1, 1)
FY2025 = ("invitation", "FY2025", D(2025, 5, 15), D(2026, 3, 31))


def invite(
    b: date,
    on: date,
    *,
    qualified: date | None = MEMBER_SINCE,
    disqualified: date | None = None,
    last: date | None = None,
    status: str = "resident",
    rules=RULES,
):
    """The member's invitations on `on` as (kind, period_key, window_start, window_end)."""
    drafts = evaluate_nhi_checkup(b, status, qualified, disqualified, last, on, rules)
    return [(x.kind, x.period_key, x.window_start, x.window_end) for x in drafts]


# --- age 40 -----------------------------------------------------------------------------------


def test_born_april_1_reaches_40_on_march_31_and_is_invited_that_year() -> None:
    # b 1986-04-01: 40th birthday 2026-04-01, age 40 reached 2026-03-31 = FY2025's last day.
    assert invite(D(1986, 4, 1), D(2025, 6, 1)) == [FY2025]


def test_born_april_2_reaches_40_on_april_1_and_waits_a_year() -> None:
    # b 1986-04-02: age 40 reached 2026-04-01 = FY2026's first day → not in FY2025.
    assert invite(D(1986, 4, 2), D(2025, 6, 1)) == []
    # FY2026: campaign 2026-05-15 … 2027-03-31.
    assert invite(D(1986, 4, 2), D(2026, 5, 15)) == [("invitation", "FY2026", D(2026, 5, 15), D(2027, 3, 31))]


def test_birthday_on_march_31_is_invited() -> None:
    # b 1986-03-31: age 40 reached 2026-03-30 ≤ 2026-03-31.
    assert invite(D(1986, 3, 31), D(2025, 6, 1)) == [FY2025]


def test_turning_40_in_january_is_invited_from_the_campaign_start() -> None:
    # b 1986-01-20: age 40 reached 2026-01-19, inside FY2025 → invited already in June, at 39.
    assert invite(D(1986, 1, 20), D(2025, 6, 1)) == [FY2025]


def test_still_39_at_the_fiscal_year_end() -> None:
    # b 1987-01-01: age 40 reached 2026-12-31 (FY2026) → nothing in FY2025.
    assert invite(D(1987, 1, 1), D(2025, 6, 1)) == []


# --- age 75 -----------------------------------------------------------------------------------


def test_turning_75_mid_year_is_invited_until_the_day_before_the_birthday() -> None:
    # b 1950-10-10: 75th birthday 2025-10-10 → window 2025-05-15 … 2025-10-09.
    window = ("invitation", "FY2025", D(2025, 5, 15), D(2025, 10, 9))
    assert invite(D(1950, 10, 10), D(2025, 6, 1)) == [window]
    assert invite(D(1950, 10, 10), D(2025, 10, 9)) == [window]
    assert invite(D(1950, 10, 10), D(2025, 10, 10)) == []


def test_75th_birthday_on_april_1_keeps_the_whole_year() -> None:
    # b 1951-04-01: 75th birthday 2026-04-01 → eligible through 2026-03-31 = FY end.
    assert invite(D(1951, 4, 1), D(2026, 3, 31)) == [FY2025]


def test_75th_birthday_before_the_campaign_start_gets_no_invitation() -> None:
    # b 1950-05-15: 75th birthday 2025-05-15 → last day 2025-05-14 < campaign start 5/15.
    assert invite(D(1950, 5, 15), D(2025, 5, 15)) == []
    # b 1950-05-16: last day 2025-05-15 = campaign start → a one-day window.
    assert invite(D(1950, 5, 16), D(2025, 5, 15)) == [("invitation", "FY2025", D(2025, 5, 15), D(2025, 5, 15))]
    assert invite(D(1950, 5, 16), D(2025, 5, 16)) == []


def test_already_75_when_the_year_starts() -> None:
    # b 1949-06-01: 75th birthday 2024-06-01, before FY2025.
    assert invite(D(1949, 6, 1), D(2025, 6, 1)) == []


def test_leap_day_born_75th_birthday_rolls_to_march_1() -> None:
    # b 1952-02-29: 75th birthday anniv(900) = 2027-02-29 → 2027-03-01; last day 2027-02-28.
    window = ("invitation", "FY2026", D(2026, 5, 15), D(2027, 2, 28))
    assert invite(D(1952, 2, 29), D(2027, 2, 28)) == [window]
    assert invite(D(1952, 2, 29), D(2027, 3, 1)) == []


# --- membership, status, last check-up, campaign ------------------------------------------------


def test_disqualified_the_day_after_d_is_still_a_member_on_d() -> None:
    on = D(2025, 6, 1)
    assert invite(D(1970, 7, 7), on, disqualified=D(2025, 6, 2)) == [FY2025]
    assert invite(D(1970, 7, 7), on, disqualified=D(2025, 6, 1)) == []  # 資格喪失日 = D: not a member
    assert invite(D(1970, 7, 7), on, disqualified=D(2025, 5, 31)) == []


def test_qualified_on_d_is_invited_the_day_before_not() -> None:
    on = D(2025, 6, 1)
    assert invite(D(1970, 7, 7), on, qualified=D(2025, 6, 1)) == [FY2025]
    assert invite(D(1970, 7, 7), on, qualified=D(2025, 6, 2)) == []
    assert invite(D(1970, 7, 7), on, qualified=None) == []


def test_last_checkup_on_march_31_vs_april_1() -> None:
    on = D(2025, 6, 1)
    assert invite(D(1970, 7, 7), on, last=D(2025, 3, 31)) == [FY2025]  # FY2024's check-up
    assert invite(D(1970, 7, 7), on, last=D(2025, 4, 1)) == []  # already checked in FY2025


def test_before_the_campaign_start() -> None:
    assert invite(D(1970, 7, 7), D(2025, 4, 1)) == []
    assert invite(D(1970, 7, 7), D(2025, 5, 14)) == []
    assert invite(D(1970, 7, 7), D(2025, 5, 15)) == [FY2025]


def test_last_day_of_the_fiscal_year_and_the_next_april() -> None:
    assert invite(D(1970, 7, 7), D(2026, 3, 31)) == [FY2025]
    # 2026-04-01 is FY2026, whose campaign opens 2026-05-15; a FY2025 check-up does not block it.
    assert invite(D(1970, 7, 7), D(2026, 4, 1)) == []
    assert invite(D(1970, 7, 7), D(2026, 5, 15), last=D(2025, 9, 1)) == [
        ("invitation", "FY2026", D(2026, 5, 15), D(2027, 3, 31))
    ]


@pytest.mark.parametrize("status", ["moved_out", "deceased"])
def test_no_invitation_for_a_member_who_moved_out_or_died(status: str) -> None:
    assert invite(D(1970, 7, 7), D(2025, 6, 1), status=status) == []


def test_the_draft_carries_the_fiscal_year_and_one_id_per_year() -> None:
    (draft,) = evaluate_nhi_checkup(D(1970, 7, 7), "resident", D(2010, 4, 1), None, D(2024, 6, 3), D(2025, 6, 1), RULES)
    assert isinstance(draft, NhiInvitation)
    assert (draft.service, draft.kind, draft.rule_id, draft.rule_version, draft.vaccine_code) == (
        "nhi_checkup", "invitation", "nhi.checkup", 1, "NHI_CHECKUP",
    )
    assert draft.period_key == "FY2025"
    assert draft.facts == {
        "fiscal_year": 2025,
        "birth_date": "1970-07-07",
        "age_at_fiscal_year_end": 55,  # 55 reached 2025-07-06 ≤ 2026-03-31; 56 only in 2026-07
        "qualified_on": "2010-04-01",
        "last_checkup_on": "2024-06-03",
        "evaluated_on": "2025-06-01",
    }
    # Every day of the window drafts the same notice: one id per member and year.
    (later,) = evaluate_nhi_checkup(D(1970, 7, 7), "resident", D(2010, 4, 1), None, None, D(2026, 2, 1), RULES)
    assert notice_id(later.rule_id, "erk", later.period_key, later.kind) == notice_id(
        "nhi.checkup", "erk", "FY2025", "invitation"
    )


# --- rule file ----------------------------------------------------------------------------------

MINIMAL = """\
rule_id: nhi.checkup
version: 1
min_age: 40
max_age: 74
campaign_start: {month: 5, day: 15}
"""


def test_default_rule() -> None:
    assert (RULES.rule_id, RULES.min_age, RULES.max_age, RULES.campaign_start(2025)) == (
        "nhi.checkup", 40, 74, D(2025, 5, 15),
    )


def test_a_campaign_start_in_january_falls_in_the_next_calendar_year(tmp_path: Path) -> None:
    path = tmp_path / "nhi.yaml"
    path.write_text(MINIMAL.replace("{month: 5, day: 15}", "{month: 1, day: 10}"), encoding="utf-8")
    rules = load_nhi_checkup_rules(path)
    # FY2025 campaign: 2026-01-10 … 2026-03-31.
    assert invite(D(1970, 7, 7), D(2026, 1, 9), rules=rules) == []
    assert invite(D(1970, 7, 7), D(2026, 1, 10), rules=rules) == [("invitation", "FY2025", D(2026, 1, 10), D(2026, 3, 31))]


@pytest.mark.parametrize(
    ("text", "keypath", "hint"),
    [
        (MINIMAL.replace("{month: 5, day: 15}", "{month: 2, day: 29}"), "campaign_start", "February 29"),
        (MINIMAL.replace("{month: 5, day: 15}", "{month: 13, day: 1}"), "campaign_start", "real month"),
        (MINIMAL.replace("{month: 5, day: 15}", "{month: 5}"), "campaign_start.day", "add `day:`"),
        (MINIMAL.replace("max_age: 74", "max_age: 39"), "max_age", "max_age ≥ min_age"),
        (MINIMAL.replace("min_age: 40\n", ""), "min_age", "add `min_age:`"),
        (MINIMAL.replace("version: 1", "version: 0"), "version", "whole number ≥ 1"),
        (MINIMAL + "lead_days: 3\n", "lead_days", "remove it"),
    ],
)
def test_rule_file_errors_name_file_key_and_fix(tmp_path: Path, text: str, keypath: str, hint: str) -> None:
    path = tmp_path / "nhi_checkup.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_nhi_checkup_rules(path)
    message = str(caught.value)
    assert str(path) in message and f": {keypath}:" in message
    assert "Fix:" in message and hint in message
