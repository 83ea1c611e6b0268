"""Immunization rules as data: load config/services/immunization.yaml, validate it, compile it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from renkei.errors import ConfigError
from renkei.services.dates import (
    after_days,
    anniv,
    fiscal_year,
    fiscal_year_end,
    fiscal_year_start,
    reach,
    school_entry_year,
)
from renkei.settings import Settings

# A compiled date expression: (birth date, counted doses of the series by number, previous
# counted dose) → date. Compiled once at load so evaluation never touches the YAML.
DateFn = Callable[[date, Mapping[int, date], "date | None"], date]

_SERIES_KEYS = {
    "rule_id", "version", "vaccine_code", "counts", "not_if_any_dose_of", "only_if_any_dose_of",
    "requires_dose_1", "sex", "legal_start", "legal_end", "doses", "branches",
}
_SERIES_REQUIRED = ("rule_id", "version", "vaccine_code", "legal_start", "legal_end", "doses")
_DOSE_KEYS = {"notify_from", "valid_from", "until", "skip_if"}
_TOP_KEYS = {"last_chance_days", "series"}
_DOSE_TERMS = ("prev_plus_days", "anniv_prev_months", "dose_plus_days", "dose_anniv_months")
_SKIP_TESTS = ("after", "before", "on_or_after")
_SEXES = (1, 2)  # the registry's codes: 1 male, 2 female
_EXAMPLE = "e.g. {reach_months: 12}"


@dataclass(frozen=True)
class SkipTest:
    """One condition of a dose's skip_if: counted dose `dose` compared (`test`) with a day."""

    dose: int
    test: str  # "after" | "before" | "on_or_after"
    when: DateFn

    def holds(self, given_on: date, day: date) -> bool:
        if self.test == "after":
            return given_on > day
        return given_on < day if self.test == "before" else given_on >= day


@dataclass(frozen=True)
class DoseRule:
    """One dose of a series: when its notice opens and when a given dose counts."""

    number: int
    notify_from: DateFn | None  # None only for the implicit dose 1 of a requires_dose_1 series
    valid_from: DateFn | None = None
    until: DateFn | None = None
    skip_if: tuple[SkipTest, ...] = ()  # no notice for this dose when all of them hold


@dataclass(frozen=True)
class Branch:
    """The doses after a series' common ones, for a first dose on or before reach(b, M)."""

    started_by_months: int
    doses: tuple[DoseRule, ...]


@dataclass(frozen=True)
class SeriesRule:
    """One vaccination series (e.g. PCV, MR 2期) with its legal window and doses in order."""

    name: str
    rule_id: str
    version: int
    vaccine_code: str
    counts: tuple[str, ...]
    not_if_any_dose_of: frozenset[str]
    requires_dose_1: bool
    legal_start: DateFn
    legal_end: DateFn
    doses: tuple[DoseRule, ...]
    # M when legal_start / legal_end is exactly {reach_months: M}: the evaluator can then rule
    # a series out by the child's age in months before doing any date arithmetic.
    legal_start_months: int | None = None
    legal_end_months: int | None = None
    only_if_any_dose_of: frozenset[str] = frozenset()
    sex: int | None = None  # None: every child; else only children of this registry sex code
    branches: tuple[Branch, ...] = ()  # by started_by_months, ascending


@dataclass(frozen=True)
class ImmunizationRules:
    """The validated, compiled immunization rule set of one file."""

    source: Path
    last_chance_days: int
    series: tuple[SeriesRule, ...]


def load_immunization_rules(path: Path | None = None) -> ImmunizationRules:
    """Load and validate the immunization rules (default <config>/services/immunization.yaml).

    <config> is RENKEI_CONFIG_DIR, else the repository's config/ (renkei.settings).
    Cached per resolved path: call it freely; edit the file → restart (or clear the cache).
    """
    if path is None:
        path = Settings.from_env().config_dir / "services" / "immunization.yaml"
    return _load_cached(Path(path).resolve())


def read_rule_file(path: Path, what: str) -> Any:
    """The YAML tree of `path`; ConfigError naming the file and the fix if unreadable or not YAML."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the {what} ({exc.strerror}); "
            "Fix: create the file or point RENKEI_CONFIG_DIR at the config directory."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}; Fix: correct the YAML syntax.") from None


@lru_cache(maxsize=16)
def _load_cached(path: Path) -> ImmunizationRules:
    raw = read_rule_file(path, "immunization rules")
    return _Parser(path).rules(raw)


class _Parser:
    """Validates the raw YAML tree; every error names the file, the key path and the fix."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, keypath: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.path}: {keypath or '(top level)'}: {problem}; Fix: {fix}")

    def mapping(self, node: Any, keypath: str, allowed: set[str] | None = None) -> dict:
        if not isinstance(node, dict):
            raise self.fail(keypath, f"expected a mapping, got {_kind(node)}", "write key: value lines")
        for key in node if allowed is not None else ():
            if key not in allowed:
                raise self.fail(
                    f"{keypath}.{key}" if keypath else str(key),
                    "unknown key",
                    f"remove it or use one of {', '.join(sorted(allowed))}",
                )
        return node

    def require(self, spec: dict, keys: tuple[str, ...], keypath: str, example: str) -> None:
        for key in keys:
            if key not in spec:
                where = f"{keypath}.{key}" if keypath else key
                raise self.fail(where, "missing required key", f"add `{key}:`, {example}")

    def integer(self, node: Any, keypath: str, minimum: int = 0) -> int:
        if isinstance(node, bool) or not isinstance(node, int) or node < minimum:
            raise self.fail(
                keypath,
                f"expected an integer ≥ {minimum}, got {_kind(node)}",
                f"write a whole number ≥ {minimum}",
            )
        return node

    def text(self, node: Any, keypath: str) -> str:
        if not isinstance(node, str) or not node.strip():
            raise self.fail(
                keypath, f"expected a non-empty string, got {_kind(node)}", "write e.g. imm.pcv or PCV"
            )
        return node

    def codes(self, spec: dict, key: str, keypath: str) -> tuple[str, ...]:
        node = spec[key]
        if not isinstance(node, list) or not node:
            raise self.fail(
                f"{keypath}.{key}",
                f"expected a list of vaccine codes, got {_kind(node)}",
                "write e.g. [DPT_IPV, HIB]",
            )
        return tuple(self.text(code, f"{keypath}.{key}[{i}]") for i, code in enumerate(node))

    def rules(self, raw: Any) -> ImmunizationRules:
        top = self.mapping(raw, "", _TOP_KEYS)
        self.require(top, ("last_chance_days", "series"), "", "at the top level")
        lead = self.integer(top["last_chance_days"], "last_chance_days")
        series_raw = self.mapping(top["series"], "series")
        if not series_raw:
            raise self.fail("series", "no series defined", "add at least one series")
        series = tuple(self.series(str(name), spec) for name, spec in series_raw.items())
        seen: dict[str, str] = {}
        for rule in series:
            if rule.rule_id in seen:
                raise self.fail(
                    f"series.{rule.name}.rule_id",
                    f"rule_id already used by series {seen[rule.rule_id]}",
                    "give every series its own rule_id",
                )
            seen[rule.rule_id] = rule.name
        return ImmunizationRules(source=self.path, last_chance_days=lead, series=series)

    def series(self, name: str, node: Any) -> SeriesRule:
        at = f"series.{name}"
        spec = self.mapping(node, at, _SERIES_KEYS)
        self.require(spec, _SERIES_REQUIRED, at, f"to series {name}")
        vaccine_code = self.text(spec["vaccine_code"], f"{at}.vaccine_code")
        requires_dose_1 = spec.get("requires_dose_1", False)
        if not isinstance(requires_dose_1, bool):
            raise self.fail(
                f"{at}.requires_dose_1",
                f"expected true or false, got {_kind(requires_dose_1)}",
                "write true or false",
            )
        doses_raw = self.mapping(spec["doses"], f"{at}.doses")
        if not doses_raw:
            raise self.fail(f"{at}.doses", "no doses defined", "list each dose number with its notify_from")
        numbers = self.dose_numbers(doses_raw, f"{at}.doses", after=0)
        if requires_dose_1 and numbers[0] == 1:
            raise self.fail(
                f"{at}.doses.1",
                "dose 1 cannot be notified when requires_dose_1 is true",
                "start at dose 2 (dose 1 is notified by the series that chooses the product)",
            )
        # With requires_dose_1, dose 1 is implicit: it must count, but is never notified here.
        earlier: list[int] = [1] if requires_dose_1 else []
        doses: list[DoseRule] = [DoseRule(number=1, notify_from=None)] if requires_dose_1 else []
        for n in numbers:
            doses.append(self.dose(n, doses_raw[n], f"{at}.doses.{n}", tuple(earlier)))
            earlier.append(n)
        counts = self.codes(spec, "counts", at) if "counts" in spec else (vaccine_code,)
        excluded = self.codes(spec, "not_if_any_dose_of", at) if "not_if_any_dose_of" in spec else ()
        required = self.codes(spec, "only_if_any_dose_of", at) if "only_if_any_dose_of" in spec else ()
        sex = spec.get("sex")
        if sex is not None and (isinstance(sex, bool) or sex not in _SEXES):
            raise self.fail(f"{at}.sex", f"expected 1 or 2, got {_kind(sex)}", "write 1 (male) or 2 (female)")
        branches = self.branches(spec["branches"], f"{at}.branches", tuple(earlier)) if "branches" in spec else ()
        return SeriesRule(
            name=name,
            rule_id=self.text(spec["rule_id"], f"{at}.rule_id"),
            version=self.integer(spec["version"], f"{at}.version", minimum=1),
            vaccine_code=vaccine_code,
            counts=counts,
            not_if_any_dose_of=frozenset(excluded),
            requires_dose_1=requires_dose_1,
            legal_start=self.expr(spec["legal_start"], f"{at}.legal_start", ()),
            legal_end=self.expr(spec["legal_end"], f"{at}.legal_end", ()),
            doses=tuple(doses),
            legal_start_months=_reach_months_only(spec["legal_start"]),
            legal_end_months=_reach_months_only(spec["legal_end"]),
            only_if_any_dose_of=frozenset(required),
            sex=sex,
            branches=branches,
        )

    def dose_numbers(self, doses_raw: dict, at: str, after: int) -> list[int]:
        numbers = [self.integer(n, f"{at}.{n}", minimum=after + 1) for n in doses_raw]
        if numbers != sorted(set(numbers)):
            raise self.fail(at, "dose numbers are not in increasing order", "reorder them")
        return numbers

    def branches(self, node: Any, at: str, common: tuple[int, ...]) -> tuple[Branch, ...]:
        """`branches: {M: {n: dose, ...}}`: doses after the common ones, by age at the first dose."""
        raw = self.mapping(node, at)
        if not raw:
            raise self.fail(at, "no branches defined", "list e.g. 7: {...} and 60: {} or remove `branches:`")
        months = [self.integer(m, f"{at}.{m}", minimum=1) for m in raw]
        if months != sorted(set(months)):
            raise self.fail(at, "branch months are not in increasing order", "reorder them")
        out: list[Branch] = []
        for m in months:
            where = f"{at}.{m}"
            doses_raw = self.mapping(raw[m], where) if raw[m] is not None else {}
            earlier = list(common)
            doses: list[DoseRule] = []
            for n in self.dose_numbers(doses_raw, where, after=max(common)):
                doses.append(self.dose(n, doses_raw[n], f"{where}.{n}", tuple(earlier)))
                earlier.append(n)
            out.append(Branch(started_by_months=m, doses=tuple(doses)))
        return tuple(out)

    def dose(self, n: int, node: Any, at: str, earlier: tuple[int, ...]) -> DoseRule:
        spec = self.mapping(node, at, _DOSE_KEYS)
        self.require(spec, ("notify_from",), at, _EXAMPLE)
        skip = self.skip_if(spec["skip_if"], f"{at}.skip_if", earlier) if "skip_if" in spec else ()
        optional = {
            key: self.expr(spec[key], f"{at}.{key}", earlier) for key in ("valid_from", "until") if key in spec
        }
        return DoseRule(
            number=n,
            notify_from=self.expr(spec["notify_from"], f"{at}.notify_from", earlier),
            valid_from=optional.get("valid_from"),
            until=optional.get("until"),
            skip_if=skip,
        )

    def skip_if(self, node: Any, at: str, earlier: tuple[int, ...]) -> tuple[SkipTest, ...]:
        """One condition {dose: k, after|before|on_or_after: expr}, or a list of them (all must hold)."""
        items = [(node, at)] if not isinstance(node, list) else [(c, f"{at}[{i}]") for i, c in enumerate(node)]
        if not items:
            raise self.fail(at, "empty list of conditions", "write e.g. {dose: 1, after: {reach_months: 7}}")
        tests = []
        for cond, where in items:
            spec = self.mapping(cond, where, {"dose", *_SKIP_TESTS})
            self.require(spec, ("dose",), where, "e.g. {dose: 1, after: {reach_months: 7}}")
            named = [t for t in _SKIP_TESTS if t in spec]
            if len(named) != 1:
                raise self.fail(
                    where, "needs exactly one of after, before, on_or_after", "write e.g. after: {reach_months: 7}"
                )
            (test,) = named
            dose = self.dose_ref(spec["dose"], f"{where}.dose", earlier)
            tests.append(SkipTest(dose=dose, test=test, when=self.expr(spec[test], f"{where}.{test}", earlier)))
        return tuple(tests)

    def dose_ref(self, node: Any, at: str, earlier: tuple[int, ...]) -> int:
        k = self.integer(node, at, minimum=1)
        if k not in earlier:
            raise self.fail(
                at, "must name an earlier dose of this series", "use a dose number listed before this one"
            )
        return k

    def expr(self, node: Any, at: str, earlier: tuple[int, ...]) -> DateFn:
        """Compile one date expression; `earlier` are the dose numbers it may refer to."""
        if not isinstance(node, dict) or len(node) != 1:
            raise self.fail(
                at, f"expected a date expression with exactly one term, got {_kind(node)}", f"write {_EXAMPLE}"
            )
        ((term, arg),) = node.items()
        where = f"{at}.{term}"
        if term in ("max", "min"):
            if not isinstance(arg, list) or not arg:
                raise self.fail(
                    where,
                    f"expected a list of date expressions, got {_kind(arg)}",
                    f"write e.g. {{{term}: [{{reach_months: 2}}, {{birth_plus_days: 42}}]}}",
                )
            parts = tuple(self.expr(item, f"{where}[{i}]", earlier) for i, item in enumerate(arg))
            pick = max if term == "max" else min
            return lambda b, doses, prev: pick(part(b, doses, prev) for part in parts)
        if term in _DOSE_TERMS and not earlier:
            raise self.fail(
                where,
                "refers to an earlier dose, but this is the series' first dose",
                "use a term of the birth date, e.g. {reach_months: 2}",
            )
        if term in ("dose_plus_days", "dose_anniv_months"):
            unit = "days" if term == "dose_plus_days" else "months"
            if not isinstance(arg, list) or len(arg) != 2:
                raise self.fail(
                    where, f"expected [dose number, {unit}], got {_kind(arg)}", "write e.g. [1, 28]"
                )
            k = self.dose_ref(arg[0], f"{where}[0]", earlier)
            n = self.integer(arg[1], f"{where}[1]")
            if term == "dose_plus_days":
                return lambda b, doses, prev: after_days(doses[k], n)
            return lambda b, doses, prev: anniv(doses[k], n)
        builder = _TERMS.get(term)
        if builder is None:
            known = sorted([*_TERMS, "dose_plus_days", "dose_anniv_months", "max", "min"])
            raise self.fail(where, "unknown term", f"use one of {', '.join(known)}")
        return builder(self.integer(arg, where))


def _reach_months_only(node: Any) -> int | None:
    """M if a (validated) expression is exactly {reach_months: M}, else None."""
    return node["reach_months"] if len(node) == 1 and "reach_months" in node else None


def _kind(node: Any) -> str:
    return "nothing" if node is None else type(node).__name__


def _school_year_start(k: int) -> DateFn:
    return lambda b, doses, prev: fiscal_year_start(school_entry_year(b) - k)


def _school_year_end(k: int) -> DateFn:
    return lambda b, doses, prev: fiscal_year_end(school_entry_year(b) - k)


def _fiscal_year_start_at(m: int) -> DateFn:
    return lambda b, doses, prev: fiscal_year_start(fiscal_year(reach(b, m)))


def _fiscal_year_end_at(m: int) -> DateFn:
    return lambda b, doses, prev: fiscal_year_end(fiscal_year(reach(b, m)))


# Term → builder of the compiled function from its integer argument.
_TERMS: dict[str, Callable[[int], DateFn]] = {
    "birth_plus_days": lambda n: lambda b, doses, prev: after_days(b, n),
    "reach_months": lambda m: lambda b, doses, prev: reach(b, m),
    "anniv_months": lambda m: lambda b, doses, prev: anniv(b, m),
    "prev_plus_days": lambda n: lambda b, doses, prev: after_days(prev, n),
    "anniv_prev_months": lambda m: lambda b, doses, prev: anniv(prev, m),
    "school_year_start_before_entry": _school_year_start,
    "school_year_end_before_entry": _school_year_end,
    "fiscal_year_start_at_months": _fiscal_year_start_at,
    "fiscal_year_end_at_months": _fiscal_year_end_at,
}
