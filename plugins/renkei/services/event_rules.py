"""Event notice rules as data: load config/services/event.yaml (lead time and frequency cap)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from renkei.services.rule_file import RuleParser, read_rule_file, rule_path

_KEYS = ("rule_id", "version", "lead_days", "cap")


@dataclass(frozen=True)
class EventRules:
    """The validated event notice rule of one file."""

    source: Path
    rule_id: str
    version: int
    lead_days: int  # events starting D+1 … D+lead_days are announced on D
    cap_notices: int  # at most this many event notices per resident …
    cap_days: int  # … in any this many consecutive days


def load_event_rules(path: Path | str | None = None) -> EventRules:
    """Load and validate the event rule (default <config>/services/event.yaml); cached per path."""
    return _load_cached(rule_path(path, "event.yaml"))


@lru_cache(maxsize=16)
def _load_cached(path: Path) -> EventRules:
    return _parse(RuleParser(path), read_rule_file(path, "event rules"))


def _parse(p: RuleParser, raw: Any) -> EventRules:
    top = p.mapping(raw, "", set(_KEYS))
    p.require(top, _KEYS, "", "at the top level")
    rule_id, version = p.rule_head(top, "")
    cap = p.mapping(top["cap"], "cap", {"notices", "days"})
    p.require(cap, ("notices", "days"), "cap", "e.g. {notices: 3, days: 7}")
    return EventRules(
        source=p.path,
        rule_id=rule_id,
        version=version,
        lead_days=p.integer(top["lead_days"], "lead_days", minimum=1),
        cap_notices=p.integer(cap["notices"], "cap.notices", minimum=1),
        cap_days=p.integer(cap["days"], "cap.days", minimum=1),
    )
