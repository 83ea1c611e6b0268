"""NHI specific check-up invitations: which NHI member is invited to 特定健診 on D.

Readings of SERVICES.md made here (the ages and campaign start are data,
config/services/nhi_checkup.yaml):
- Only a `resident` (registry status on D) who is an NHI member on D: qualified_on ≤ D and
  disqualified_on null or later than D (資格喪失日 is the first day without membership).
- Ages are legal ages (dates.age_years): invited in fiscal year FY when aged ≥ min_age (40) on
  FY's March 31 — born April 1 reaches 40 on March 31, so joins that year; born April 2 the
  next. The upper end is a date, not an age: the day before the (max_age + 1)th (75th)
  birthday, the last day before 後期高齢者医療; one whose 75th birthday is April 1 is invited
  through March 31, one whose 75th birthday is before the campaign start not at all.
- Not invited if last_checkup_on is on or after FY's April 1 (checked this year already).
- Open from the campaign start (rules.campaign_start(FY)) to min(FY's March 31, the day before
  the 75th birthday); a member who joins NHI mid-year is invited from the day of joining, the
  window still starting at the campaign start.
- "One invitation per member per FY": the same draft is returned on every eligible day and the
  deterministic notice id (rule, ERK, "FY2025", "invitation") makes it one notice.
- The draft reuses NoticeDraft: vaccine_code "NHI_CHECKUP" (the subject), dose_number the
  fiscal year, period_key "FY<year>" (NhiInvitation). facts: fiscal_year, birth_date,
  age_at_fiscal_year_end, qualified_on, last_checkup_on, evaluated_on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from renkei.services.dates import age_years, fiscal_year, fiscal_year_end, fiscal_year_start, reach
from renkei.services.immunization import NoticeDraft
from renkei.services.nhi_checkup_rules import NhiCheckupRules, load_nhi_checkup_rules

__all__ = ["NhiCheckupRules", "NhiInvitation", "evaluate_nhi_checkup", "load_nhi_checkup_rules"]

SERVICE = "nhi_checkup"
SUBJECT = "NHI_CHECKUP"
RESIDENT = "resident"


@dataclass(frozen=True)
class NhiInvitation(NoticeDraft):
    """A 特定健診 invitation: its period is the fiscal year held in dose_number."""

    @property
    def period_key(self) -> str:
        """The fiscal year the invitation is for, e.g. "FY2025"."""
        return f"FY{self.dose_number}"


def evaluate_nhi_checkup(
    birth_date: date,
    status: str,
    qualified_on: date | None,
    disqualified_on: date | None,
    last_checkup_on: date | None,
    on: date,
    rules: NhiCheckupRules,
) -> list[NoticeDraft]:
    """The invitation open for one NHI member on `on` (at most one; see the module docstring)."""
    if status != RESIDENT or on < birth_date:
        return []
    if qualified_on is None or qualified_on > on or (disqualified_on is not None and disqualified_on <= on):
        return []
    fy = fiscal_year(on)
    fy_start, fy_end = fiscal_year_start(fy), fiscal_year_end(fy)
    age_at_end = age_years(birth_date, fy_end)
    if age_at_end < rules.min_age:
        return []
    if last_checkup_on is not None and last_checkup_on >= fy_start:
        return []
    start = rules.campaign_start(fy)
    end = min(fy_end, reach(birth_date, 12 * (rules.max_age + 1)))
    if not start <= on <= end:
        return []
    return [
        NhiInvitation(
            service=SERVICE,
            kind="invitation",
            rule_id=rules.rule_id,
            rule_version=rules.version,
            vaccine_code=SUBJECT,
            dose_number=fy,
            window_start=start,
            window_end=end,
            facts={
                "fiscal_year": fy,
                "birth_date": birth_date.isoformat(),
                "age_at_fiscal_year_end": age_at_end,
                "qualified_on": qualified_on.isoformat(),
                "last_checkup_on": last_checkup_on.isoformat() if last_checkup_on else None,
                "evaluated_on": on.isoformat(),
            },
        )
    ]
