"""Reading a service rule file (config/services/*.yaml): its path, its YAML tree, shared checks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

# Package-private helpers of rules.py, shared rather than copied so every rule file fails alike.
from renkei.services.rules import _DOSE_TERMS, DateFn, _Parser, read_rule_file  # noqa: F401 - read_rule_file: the rule modules import it from here
from renkei.settings import Settings

# A compiled date expression of the birth date alone (check-up windows).
BirthFn = Callable[[date], date]
_NO_DOSES: dict[int, date] = {}


def rule_path(path: Path | str | None, filename: str) -> Path:
    """The resolved rule file: `path` if given, else <config>/services/<filename>."""
    if path is None:
        path = Settings.from_env().config_dir / "services" / filename
    return Path(path).resolve()


class RuleParser(_Parser):
    """The immunization validator (errors name file, key path and fix) plus checks other services share."""

    def rule_head(self, spec: dict, at: str) -> tuple[str, int]:
        """The rule's (rule_id, version): recorded on every notice; rule_id is part of the notice id."""
        prefix = f"{at}." if at else ""
        rule_id = self.text(spec["rule_id"], f"{prefix}rule_id")
        if "|" in rule_id:
            raise self.fail(f"{prefix}rule_id", "contains '|', the notice id separator", "remove the '|'")
        return rule_id, self.integer(spec["version"], f"{prefix}version", minimum=1)

    def code(self, node: Any, keypath: str) -> str:
        """A code that becomes part of a notice id: non-empty, without '|' or '#'."""
        code = self.text(node, keypath)
        if "|" in code or "#" in code:
            raise self.fail(keypath, "contains '|' or '#', separators of the notice id", "remove them")
        return code

    def birth_expr(self, node: Any, keypath: str) -> BirthFn:
        """A date expression of the birth date only (the immunization terms without dose terms)."""
        term = _dose_term_in(node)
        if term is not None:
            raise self.fail(
                keypath,
                f"`{term}` refers to a vaccine dose; this window depends on the birth date only",
                "use a term of the birth date, e.g. {reach_months: 3} or {anniv_months: 18}",
            )
        fn: DateFn = self.expr(node, keypath, ())
        return lambda b: fn(b, _NO_DOSES, None)

    def month_day(self, node: Any, keypath: str) -> tuple[int, int]:
        """A (month, day) that exists in every year: February 29 is refused."""
        spec = self.mapping(node, keypath, {"month", "day"})
        self.require(spec, ("month", "day"), keypath, "e.g. {month: 5, day: 15}")
        month = self.integer(spec["month"], f"{keypath}.month", minimum=1)
        day = self.integer(spec["day"], f"{keypath}.day", minimum=1)
        days_in = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
        if month > 12 or day > days_in[month - 1]:
            raise self.fail(
                keypath,
                f"month {month}, day {day} is not a date of every year",
                "write a real month (1-12) and day (February 29 is not allowed)",
            )
        return month, day


def _dose_term_in(node: Any) -> str | None:
    """The first dose term anywhere in an expression tree, or None."""
    if isinstance(node, dict):
        for key, arg in node.items():
            if key in _DOSE_TERMS:
                return str(key)
            found = _dose_term_in(arg)
            if found is not None:
                return found
    elif isinstance(node, list):
        for item in node:
            found = _dose_term_in(item)
            if found is not None:
                return found
    return None
