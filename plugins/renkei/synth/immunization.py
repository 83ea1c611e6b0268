"""Immunization histories of the city's children, drawn around the routine schedule of SERVICES.md."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from renkei.synth.city import RESIDENT, City, updated_timestamps
from renkei.synth.dates import (
    DAY, NAT, anniv, april_first, days, fiscal_year_start, iso_dates, iso_timestamps, reach,
    school_entry_year,
)
from renkei.synth.table import Table

VACCINES = ("HEPB", "ROTA1", "ROTA5", "DPT_IPV_HIB", "DPT_IPV", "HIB", "PCV", "BCG", "MR", "VAR",
            "JE", "DT", "HPV")
CHILD_MAX_AGE = 13
HPV_AGES = (11, 16)
GAP_SHARE = 0.015          # a later dose recorded while an earlier one is missing
LATE_START_SHARE = 0.05    # a series started months after its standard age

# Birth dates from which a series is a routine (定期) vaccination for the child.
ROUTINE_FROM = {
    "HEPB": "2016-04-01", "ROTA": "2020-08-01", "DPT_IPV_HIB": "2024-04-01", "DPT_IPV": "2012-08-01",
    "HIB": "2013-02-01", "PCV": "2013-02-01", "VAR": "2012-10-01",
}

Step = tuple[Callable[[np.ndarray], np.ndarray], float]  # (previous dose → planned next, lateness scale)


def build_immunization(city: City, rng: np.random.Generator) -> Table:
    """The 予防接種台帳: one row per recorded dose, given on or before as_of."""
    age = city.age()
    kids = np.flatnonzero(age <= CHILD_MAX_AGE)
    girls = np.flatnonzero((city.sex == 2) & (age >= HPV_AGES[0]) & (age <= HPV_AGES[1]))
    collected: list[tuple[np.ndarray, int, int, np.ndarray]] = []
    for who, code, dose_dates in [*_child_series(city, kids, rng), *_hpv(city, girls, rng)]:
        for number, on in enumerate(dose_dates, start=1):
            collected.append((who, VACCINES.index(code), number, on))

    cutoff = np.where(city.status == RESIDENT, city.as_of, np.fmin(city.status_date, city.as_of))
    residents, vaccines, doses, dates = [], [], [], []
    for who, vaccine, number, on in collected:
        keep = ~np.isnat(on) & (on <= cutoff[who])
        if number > 1:
            keep &= rng.random(who.size) >= GAP_SHARE
        residents.append(who[keep])
        vaccines.append(np.full(int(keep.sum()), vaccine, dtype=np.int8))
        doses.append(np.full(int(keep.sum()), number, dtype=np.int8))
        dates.append(on[keep])
    resident = np.concatenate(residents)
    vaccine = np.concatenate(vaccines)
    dose = np.concatenate(doses)
    on = np.concatenate(dates).astype(DAY)
    order = np.lexsort((dose, vaccine, resident, on))  # chronological, as record ids are issued
    resident, vaccine, dose, on = resident[order], vaccine[order], dose[order], on[order]
    updated = updated_timestamps(city.as_of, on, rng)
    other_space = rng.random(resident.size) < 0.05

    def render(rows: np.ndarray) -> dict[str, list]:
        who = resident[rows]
        return {
            "record_id": [f"IM{r + 1:09d}" for r in rows.tolist()],
            **city.department_copy(who, other_space[rows]),
            "vaccine_code": [VACCINES[v] for v in vaccine[rows].tolist()],
            "dose_number": dose[rows].tolist(),
            "administered_on": iso_dates(on[rows]),
            "updated_at": iso_timestamps(updated[rows]),
        }

    return Table("immunization", int(resident.size), render, resident)


def _lateness(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Days after the planned date: mostly days, now and then months."""
    late = rng.exponential(scale, n)
    very = rng.random(n) < 0.08
    late[very] += rng.exponential(75.0, int(very.sum()))
    return days(np.floor(late).astype(np.int64))


def _chain(rng: np.random.Generator, first: np.ndarray, first_scale: float, steps: list[Step],
           coverage: list[float], legal_end: list[np.ndarray]) -> list[np.ndarray]:
    """Dose dates of one series; a dose not given (coverage) or past its legal end ends the series."""
    n = first.size
    start_late = np.where(rng.random(n) < LATE_START_SHARE, rng.integers(60, 240, n), 0)
    planned = first + days(start_late)
    out = []
    for k in range(len(coverage)):
        if k:
            step, scale = steps[k - 1]
            planned = step(out[-1])
        else:
            scale = first_scale
        on = planned + _lateness(rng, n, scale)
        given = (rng.random(n) < coverage[k]) & (on <= legal_end[k])
        out.append(np.where(given, on, NAT))
    return out


def _born_from(birth: np.ndarray, series: str) -> np.ndarray:
    return birth >= np.datetime64(ROUTINE_FROM[series], "D")


def _only(mask: np.ndarray, planned: np.ndarray) -> np.ndarray:
    return np.where(mask, planned, NAT)


def _plus(n: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda prev: prev + np.timedelta64(n, "D")


def _months(m: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda prev: anniv(prev, m)


def _child_series(city: City, kids: np.ndarray, rng: np.random.Generator):
    """(resident indices, vaccine code, dose date arrays) for every routine series of ages 0–13."""
    b = city.birth[kids]
    r2, r12, r24, r60, r90 = (reach(b, m) for m in (2, 12, 24, 60, 90))

    yield kids, "HEPB", _chain(rng, _only(_born_from(b, "HEPB"), r2), 10,
                               [(_plus(28), 10), (lambda d1: d1 + np.timedelta64(112, "D"), 14)],
                               [0.97, 0.97, 0.95], [reach(b, 12)] * 3)

    rota = _born_from(b, "ROTA")
    first_rota = np.fmax(r2, b + np.timedelta64(42, "D"))
    one_product = rng.random(b.size) < 0.55
    first_dose_end = b + np.timedelta64(104, "D")
    yield kids, "ROTA1", _chain(rng, _only(rota & one_product, first_rota), 5, [(_plus(28), 5)],
                                [0.93, 0.97], [first_dose_end, b + np.timedelta64(168, "D")])
    end5 = b + np.timedelta64(224, "D")
    yield kids, "ROTA5", _chain(rng, _only(rota & ~one_product, first_rota), 5,
                                [(_plus(28), 5), (_plus(28), 5)], [0.93, 0.97, 0.97],
                                [first_dose_end, end5, end5])

    primary = [(_plus(21), 8), (_plus(21), 8), (_months(6), 60)]
    combined = _born_from(b, "DPT_IPV_HIB")
    yield kids, "DPT_IPV_HIB", _chain(rng, _only(combined, r2), 10, primary,
                                      [0.97, 0.97, 0.96, 0.93], [r90] * 4)
    yield kids, "DPT_IPV", _chain(rng, _only(~combined & _born_from(b, "DPT_IPV"), r2), 10, primary,
                                  [0.97, 0.97, 0.96, 0.93], [r90] * 4)
    hib_booster = (lambda d3: np.maximum(anniv(d3, 7), r12), 45)
    yield kids, "HIB", _chain(rng, _only(~combined & _born_from(b, "HIB"), r2), 10,
                              [(_plus(27), 8), (_plus(27), 8), hib_booster],
                              [0.97, 0.97, 0.96, 0.93], [r60] * 4)

    pcv_booster = (lambda d3: np.maximum(d3 + np.timedelta64(61, "D"), r12), 30)
    yield kids, "PCV", _chain(rng, _only(_born_from(b, "PCV"), r2), 10,
                              [(_plus(28), 8), (_plus(28), 8), pcv_booster],
                              [0.97, 0.97, 0.96, 0.94], [r60, r24, r24, r60])

    yield kids, "BCG", _chain(rng, reach(b, 5), 30, [], [0.97], [reach(b, 12)])

    entry = school_entry_year(b)
    mr2_start, mr2_end = april_first(entry - 1), april_first(entry) - np.timedelta64(1, "D")
    yield kids, "MR", _chain(rng, r12, 20, [(lambda d1: _only(~np.isnat(d1), mr2_start), 60)],
                             [0.96, 0.93], [r24, mr2_end])

    yield kids, "VAR", _chain(rng, _only(_born_from(b, "VAR"), r12), 20, [(_months(6), 60)],
                              [0.95, 0.92], [reach(b, 36)] * 2)

    je_booster = (lambda d2: np.maximum(anniv(d2, 6), reach(b, 48)), 60)
    je_second_period = (lambda d3: _only(~np.isnat(d3), reach(b, 108)), 200)
    r156 = reach(b, 156)
    yield kids, "JE", _chain(rng, reach(b, 36), 60, [(_plus(7), 7), je_booster, je_second_period],
                             [0.90, 0.97, 0.93, 0.75], [r90, r90, r90, r156])

    yield kids, "DT", _chain(rng, reach(b, 132), 120, [], [0.80], [r156])


def _hpv(city: City, girls: np.ndarray, rng: np.random.Generator):
    """HPV for girls from the fiscal year of turning 13 until March 31 of the year of turning 16."""
    b = city.birth[girls]
    start = fiscal_year_start(reach(b, 156))
    fiscal_year_of_16 = fiscal_year_start(reach(b, 192)).astype("datetime64[Y]").astype(np.int64) + 1970
    end = april_first(fiscal_year_of_16 + 1) - np.timedelta64(1, "D")
    two_doses = rng.random(b.size) < 0.5
    yield girls, "HPV", _chain(rng, _only(two_doses, start), 150, [(_months(6), 30)], [0.40, 0.85],
                               [end, end])
    yield girls, "HPV", _chain(rng, _only(~two_doses, start), 150,
                               [(_months(2), 20), (_months(4), 30)], [0.40, 0.88, 0.85],
                               [end, end, end])
