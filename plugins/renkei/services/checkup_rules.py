"""Infant check-up rules as data: load config/services/checkup.yaml, validate it, compile it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from renkei.services.rule_file import BirthFn, RuleParser, read_rule_file, rule_path

_TOP_KEYS = {"last_chance_days", "checkups"}
_CHECKUP_KEYS = {"rule_id", "version", "window_start", "window_end"}


@dataclass(frozen=True)
class CheckupRule:
    """One check-up (e.g. Y1M6): its code in child_health and its window from the birth date."""

    code: str
    rule_id: str
    version: int
    window_start: BirthFn
    window_end: BirthFn


@dataclass(frozen=True)
class CheckupRules:
    """The validated, compiled check-up rule set of one file."""

    source: Path
    last_chance_days: int
    checkups: tuple[CheckupRule, ...]


def load_checkup_rules(path: Path | str | None = None) -> CheckupRules:
    """Load and validate the check-up rules (default <config>/services/checkup.yaml); cached per path."""
    return _load_cached(rule_path(path, "checkup.yaml"))


@lru_cache(maxsize=16)
def _load_cached(path: Path) -> CheckupRules:
    return _parse(RuleParser(path), read_rule_file(path, "check-up rules"))


def _parse(p: RuleParser, raw: Any) -> CheckupRules:
    top = p.mapping(raw, "", _TOP_KEYS)
    p.require(top, ("last_chance_days", "checkups"), "", "at the top level")
    lead = p.integer(top["last_chance_days"], "last_chance_days")
    checkups_raw = p.mapping(top["checkups"], "checkups")
    if not checkups_raw:
        raise p.fail("checkups", "no check-up defined", "add at least one, e.g. M4")
    checkups: list[CheckupRule] = []
    seen: dict[str, str] = {}
    for name, node in checkups_raw.items():
        at = f"checkups.{name}"
        spec = p.mapping(node, at, _CHECKUP_KEYS)
        p.require(spec, ("rule_id", "version", "window_start", "window_end"), at, f"to check-up {name}")
        code = p.code(name, at)
        rule_id, version = p.rule_head(spec, at)
        if rule_id in seen:
            raise p.fail(
                f"{at}.rule_id", f"rule_id already used by check-up {seen[rule_id]}", "give every check-up its own rule_id"
            )
        seen[rule_id] = code
        checkups.append(
            CheckupRule(
                code=code,
                rule_id=rule_id,
                version=version,
                window_start=p.birth_expr(spec["window_start"], f"{at}.window_start"),
                window_end=p.birth_expr(spec["window_end"], f"{at}.window_end"),
            )
        )
    return CheckupRules(source=p.path, last_chance_days=lead, checkups=tuple(checkups))
