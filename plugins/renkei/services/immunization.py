"""Immunization notices: which routine vaccination a resident child should be told about on D.

Readings of SERVICES.md made here (the rules themselves are data, config/services/immunization.yaml):
- Only a child whose registry status is `resident` on D gets notices; none before birth.
- Doses count in dose-number order. Dose n counts when a record of it (under one of the
  series' `counts` codes) falls on or after the legal window start and the dose's `valid_from`
  (the legal minimum interval after the previous counted dose); with several records for n,
  the earliest that qualifies counts. The next dose is the first dose number that does not
  count, so a dose given too early is asked for again and later records are not considered.
  A dose given after the legal end still counts (the child is protected; no point nagging).
- A notice is open when max(notify_from, legal_start) ≤ D ≤ window end (legal_end, or the
  dose's `until` if earlier). Kind `last_chance` from window end − last_chance_days on, else
  `due` — never both on one day.
- ROTA: while no ROTA1/ROTA5 dose 1 counts, the next dose is "ROTA dose 1"; once it counts the
  product's own series (ROTA1 or ROTA5) takes over.
- DPT_IPV_HIB: any DPT_IPV or HIB record silences the 5種 series; those children finish on
  the DPT_IPV and HIB series, where a later 5種 dose counts too (the switch MHLW allows once 4種
  ran out).
- Branches (PCV, HIB): the doses after the common ones follow the branch of the first counted
  dose's date — the first `started_by_months` M with dose 1 ≤ reach(b, M); dose numbers stay
  as recorded (the 追加 of a 2 + 1 start is dose 3). Without a counted dose 1 only dose 1 is
  asked for, the same notice in every branch.
- PCV/HIB rescue rules of the 実施要領 (初回 not finished by 24 / 12 months → straight to the
  追加) are not modelled: such a child gets no further notice from that series.
- MR, JE, DT: 2期 (MR dose 2, JE dose 4, DT dose 1) are separate series with their own legal
  periods, offered whether or not 1期 was given or complete.
- HPV (girls only: a series with `sex` needs the child's sex; unknown sex → no notice).
  Records carry no product, so dose 3 is not asked for when the history fits the 9価 2-dose
  schedule (dose 1 before the 15th birthday, dose 2 ≥ 5 months later).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from renkei.services.dates import age_months, reach
from renkei.services.rules import DoseRule, ImmunizationRules, SeriesRule, load_immunization_rules

__all__ = [
    "Dose",
    "ImmunizationRules",
    "NoticeDraft",
    "evaluate_child",
    "evaluate_recorded",
    "load_immunization_rules",
    "notice_id",
]

SERVICE = "immunization"
RESIDENT = "resident"
_NO_DOSES: dict[int, date] = {}


@dataclass(frozen=True)
class Dose:
    """One immunization register record of a child."""

    vaccine_code: str
    dose_number: int
    administered_on: date


@dataclass(frozen=True)
class NoticeDraft:
    """A notice the rules open on D, before it gets its id and goes to the outbox."""

    service: str  # "immunization"
    kind: str  # "due" | "last_chance"
    rule_id: str
    rule_version: int
    vaccine_code: str
    dose_number: int
    window_start: date  # notify_from (never before the legal start)
    window_end: date  # legal_end (or the dose's own earlier end)
    facts: dict[str, Any]  # JSON-serialisable facts the rule used

    @property
    def period_key(self) -> str:
        """The period the notice is about, e.g. "DPT_IPV_HIB#2"."""
        return f"{self.vaccine_code}#{self.dose_number}"


def notice_id(rule_id: str, subject_key: str, period_key: str, kind: str) -> str:
    """Deterministic notice id: first 32 hex chars of sha256 of "rule_id|subject_key|period_key|kind".

    The subject key is the resident's stable key of renkei.linkage.subjects, not the ERK, so a
    link-key rotation changes no notice id.
    """
    parts = (rule_id, subject_key, period_key, kind)
    if any("|" in part for part in parts):
        raise ValueError("notice id parts must not contain '|'; it separates them in the digest")
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:32]


def evaluate_child(
    birth_date: date,
    status: str,
    doses: list[Dose],
    on: date,
    rules: ImmunizationRules,
    sex: int | None = None,
) -> list[NoticeDraft]:
    """The immunization notices open for one child on date `on` (see the module docstring).

    `sex` is the registry code (1 male, 2 female); series restricted by sex skip None.
    """
    if status != RESIDENT or on < birth_date:
        return []
    recorded: dict[tuple[str, int], list[date]] = {}
    for dose in doses:
        recorded.setdefault((dose.vaccine_code, dose.dose_number), []).append(dose.administered_on)
    return evaluate_recorded(birth_date, recorded, on, rules, sex)


def evaluate_recorded(
    birth_date: date,
    recorded: dict[tuple[str, int], list[date]],
    on: date,
    rules: ImmunizationRules,
    sex: int | None = None,
) -> list[NoticeDraft]:
    """evaluate_child for a resident child (status checked by the caller, on ≥ birth_date) whose
    doses are given as {(vaccine_code, dose_number): [administered_on, …]}."""
    codes_given = {code for code, _ in recorded}
    lead = timedelta(days=rules.last_chance_days)
    age, windows = _windows(rules, birth_date, on, sex)

    drafts: list[NoticeDraft] = []
    for series, legal_start, legal_end in windows:
        if series.requires_dose_1 and (series.vaccine_code, 1) not in recorded:
            continue
        if not series.not_if_any_dose_of.isdisjoint(codes_given):
            continue
        if series.only_if_any_dose_of and series.only_if_any_dose_of.isdisjoint(codes_given):
            continue
        found = _next_dose(series, birth_date, recorded, legal_start)
        if found is None:
            continue
        dose, counted, picked = found
        draft = _open_notice(series, dose, birth_date, on, age, counted, picked, legal_start, legal_end, lead)
        if draft is not None:
            drafts.append(draft)
    return drafts


# Per rules object (kept alive beside its id): (birth date, day, sex) → the child's age in months
# and the series whose sex and legal window admit the child that day. These checks do not look
# at doses, and a city's children share birth dates, so they are done once per date and sex.
_WINDOWS: dict[int, tuple[ImmunizationRules, dict]] = {}
_WINDOWS_MAX = 100_000


def _windows(
    rules: ImmunizationRules, birth_date: date, on: date, sex: int | None
) -> tuple[int, tuple[tuple[SeriesRule, date, date], ...]]:
    entry = _WINDOWS.get(id(rules))
    if entry is None or entry[0] is not rules:
        if len(_WINDOWS) >= 8:
            _WINDOWS.clear()
        entry = _WINDOWS[id(rules)] = (rules, {})
    cache = entry[1]
    key = (birth_date, on, sex)
    found = cache.get(key)
    if found is not None:
        return found
    age = age_months(birth_date, on)
    admitted = []
    for series in rules.series:
        if series.sex is not None and series.sex != sex:
            continue
        # age ≥ M + 1 means on ≥ reach(b, M + 1) > reach(b, M); age < M means on < reach(b, M).
        if series.legal_end_months is not None and age > series.legal_end_months:
            continue
        if series.legal_start_months is not None and age < series.legal_start_months:
            continue
        legal_end = series.legal_end(birth_date, _NO_DOSES, None)
        if on > legal_end:
            continue
        legal_start = series.legal_start(birth_date, _NO_DOSES, None)
        if on < legal_start:
            continue
        admitted.append((series, legal_start, legal_end))
    if len(cache) >= _WINDOWS_MAX:
        cache.clear()
    found = cache[key] = (age, tuple(admitted))
    return found


def _next_dose(
    series: SeriesRule, birth_date: date, recorded: dict[tuple[str, int], list[date]], legal_start: date
) -> tuple[DoseRule, dict[int, date], list[tuple[str, int, date]]] | None:
    """The first dose that does not count, with the doses that do; None if the series is done."""
    counted: dict[int, date] = {}
    picked: list[tuple[str, int, date]] = []
    prev: date | None = None
    for dose in _schedule(series, birth_date, counted):
        floor = legal_start
        if dose.valid_from is not None:
            floor = max(floor, dose.valid_from(birth_date, counted, prev))
        best_code, best_on = "", None
        for code in series.counts:
            for given_on in recorded.get((code, dose.number), ()):
                if given_on >= floor and (best_on is None or given_on < best_on):
                    best_code, best_on = code, given_on
        if best_on is None:
            return dose, counted, picked
        counted[dose.number] = best_on
        picked.append((best_code, dose.number, best_on))
        prev = best_on
    return None


def _schedule(series: SeriesRule, birth_date: date, counted: dict[int, date]) -> Iterator[DoseRule]:
    """The series' doses in order. Lazy: the branch is chosen from `counted` (filled by the
    caller) only once every common dose counted, i.e. when dose 1's date is known."""
    yield from series.doses
    first = counted[series.doses[0].number]
    for branch in series.branches:
        if first <= reach(birth_date, branch.started_by_months):
            yield from branch.doses
            return


def _open_notice(
    series: SeriesRule,
    dose: DoseRule,
    birth_date: date,
    on: date,
    age: int,
    counted: dict[int, date],
    picked: list[tuple[str, int, date]],
    legal_start: date,
    legal_end: date,
    lead: timedelta,
) -> NoticeDraft | None:
    """The draft for the series' next dose if its notice is open on `on`, else None."""
    if dose.notify_from is None:  # the implicit dose 1 of a product series: notified elsewhere
        return None
    prev = picked[-1][2] if picked else None
    if dose.skip_if and all(t.holds(counted[t.dose], t.when(birth_date, counted, prev)) for t in dose.skip_if):
        return None
    window_end = legal_end
    if dose.until is not None:
        window_end = min(window_end, dose.until(birth_date, counted, prev))
    if on > window_end:
        return None
    window_start = max(dose.notify_from(birth_date, counted, prev), legal_start)
    if on < window_start:
        return None
    return NoticeDraft(
        service=SERVICE,
        kind="last_chance" if on >= window_end - lead else "due",
        rule_id=series.rule_id,
        rule_version=series.version,
        vaccine_code=series.vaccine_code,
        dose_number=dose.number,
        window_start=window_start,
        window_end=window_end,
        facts={
            "birth_date": birth_date.isoformat(),
            "age_months": age,
            "doses_counted": [[code, n, given_on.isoformat()] for code, n, given_on in picked],
            "evaluated_on": on.isoformat(),
        },
    )
