"""Infant health check-up notices: which 乳幼児健診 a resident child should be told about on D.

Readings of SERVICES.md made here (the windows are data, config/services/checkup.yaml):
- Only a child whose registry status is `resident` on D gets notices; none before birth.
- A check-up's notice is open while window_start ≤ D ≤ window_end (both inclusive) and
  `examined` lacks its code. Any child_health record of the code closes it, whatever its date:
  a child examined outside the window (e.g. a late or early visit) is not asked again.
- Kind `last_chance` from window_end − last_chance_days on, else `due` (as immunization).
- The draft reuses NoticeDraft: vaccine_code is the checkup_code (the notice's subject) and
  dose_number is always 1 (a child has one check-up of each code), so the period key is e.g.
  "M4#1". facts: checkup_code, birth_date, age_months, evaluated_on.
"""

from __future__ import annotations

from datetime import date, timedelta

from renkei.services.checkup_rules import CheckupRules, load_checkup_rules
from renkei.services.dates import age_months
from renkei.services.immunization import NoticeDraft

__all__ = ["CheckupRules", "evaluate_checkups", "load_checkup_rules"]

SERVICE = "checkup"
RESIDENT = "resident"


def evaluate_checkups(
    birth_date: date, status: str, examined: set[str], on: date, rules: CheckupRules
) -> list[NoticeDraft]:
    """The check-up notices open for one child on `on`; `examined` = codes with a record."""
    if status != RESIDENT or on < birth_date:
        return []
    lead = timedelta(days=rules.last_chance_days)
    drafts: list[NoticeDraft] = []
    for rule in rules.checkups:
        if rule.code in examined:
            continue
        start, end = rule.window_start(birth_date), rule.window_end(birth_date)
        if not start <= on <= end:
            continue
        drafts.append(
            NoticeDraft(
                service=SERVICE,
                kind="last_chance" if on >= end - lead else "due",
                rule_id=rule.rule_id,
                rule_version=rule.version,
                vaccine_code=rule.code,
                dose_number=1,
                window_start=start,
                window_end=end,
                facts={
                    "checkup_code": rule.code,
                    "birth_date": birth_date.isoformat(),
                    "age_months": age_months(birth_date, on),
                    "evaluated_on": on.isoformat(),
                },
            )
        )
    return drafts
