"""NHI specific check-up invitation rules as data: load config/services/nhi_checkup.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from renkei.services.rule_file import RuleParser, read_rule_file, rule_path

_KEYS = ("rule_id", "version", "min_age", "max_age", "campaign_start")


@dataclass(frozen=True)
class NhiCheckupRules:
    """The validated 特定健診 invitation rule of one file."""

    source: Path
    rule_id: str
    version: int
    min_age: int  # reached (legal age) by the fiscal year's March 31
    max_age: int  # eligible until the day before the (max_age + 1)th birthday
    campaign_month: int
    campaign_day: int

    def campaign_start(self, fy: int) -> date:
        """The campaign's first day in fiscal year fy (January–March fall in calendar year fy + 1)."""
        return date(fy if self.campaign_month >= 4 else fy + 1, self.campaign_month, self.campaign_day)


def load_nhi_checkup_rules(path: Path | str | None = None) -> NhiCheckupRules:
    """Load and validate the rule (default <config>/services/nhi_checkup.yaml); cached per path."""
    return _load_cached(rule_path(path, "nhi_checkup.yaml"))


@lru_cache(maxsize=16)
def _load_cached(path: Path) -> NhiCheckupRules:
    return _parse(RuleParser(path), read_rule_file(path, "NHI check-up rules"))


def _parse(p: RuleParser, raw: Any) -> NhiCheckupRules:
    top = p.mapping(raw, "", set(_KEYS))
    p.require(top, _KEYS, "", "at the top level")
    rule_id, version = p.rule_head(top, "")
    min_age = p.integer(top["min_age"], "min_age", minimum=1)
    max_age = p.integer(top["max_age"], "max_age", minimum=1)
    if max_age < min_age:
        raise p.fail(
            "max_age", f"{max_age} is below min_age {min_age}", "write max_age ≥ min_age (default 40 and 74)"
        )
    month, day = p.month_day(top["campaign_start"], "campaign_start")
    return NhiCheckupRules(
        source=p.path,
        rule_id=rule_id,
        version=version,
        min_age=min_age,
        max_age=max_age,
        campaign_month=month,
        campaign_day=day,
    )
