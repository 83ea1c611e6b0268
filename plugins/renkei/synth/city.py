"""The synthetic population: residents, households, wards, names, addresses and registry status."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from renkei.synth import pools
from renkei.synth.dates import DAY, SECOND, anniv, day, days, iso_dates, iso_timestamps

# Relative head-count per single year of age (an old-age-heavy pyramid with the 1947–49 boom at
# 76–78); rescaled below so that 65+ is AGED_SHARE and age 0 is BIRTHS_PER_RESIDENT.
AGE_ANCHORS = {0: 6.1, 5: 6.8, 10: 7.6, 15: 8.0, 20: 8.5, 25: 8.3, 30: 8.6, 35: 9.5, 40: 10.8,
               45: 12.5, 50: 13.5, 55: 12.0, 60: 11.8, 64: 12.3, 65: 12.5, 70: 14.0, 75: 16.0,
               78: 15.5, 80: 11.5, 85: 8.5, 90: 4.8, 95: 1.6, 100: 0.3, 105: 0.02}
MAX_AGE = 105
AGED_SHARE = 0.31
BIRTHS_PER_RESIDENT = 5500 / 900_000

STATUSES = ("resident", "moved_out", "deceased")
RESIDENT, MOVED_OUT, DECEASED = 0, 1, 2
KANA_SPACES = ("\u3000", " ")  # full-width, half-width; style 2 = no reading registered
MOVED_OUT_HOUSEHOLD_SHARE = 0.015
STATUS_LOOKBACK_DAYS = 730

_FAMILY_KANJI = [f[0] for f in pools.FAMILY_NAMES]
_FAMILY_VARIANT = [f[3] or f[0] for f in pools.FAMILY_NAMES]
_FAMILY_KANA = [f[1] for f in pools.FAMILY_NAMES]
_GIVEN = [name for sex in (1, 2) for cohort in pools.GIVEN_NAMES[sex] for name in cohort]
_GIVEN_KANJI = [g[0] for g in _GIVEN]
_GIVEN_KANA = [g[1] for g in _GIVEN]
_TOWNS = [town for ward in pools.TOWNS for town in ward]
_TOWN_OFFSET = np.cumsum([0] + [len(ward) for ward in pools.TOWNS])
_WARD_CODES = [w[0] for w in pools.WARDS]
_TOWN_PREFIX = [f"北九州市{pools.WARDS[w][1]}{town}" for w, ward in enumerate(pools.TOWNS) for town, _ in ward]


@dataclass(frozen=True)
class City:
    """Column arrays of the population; per-resident arrays are indexed by resident index."""

    as_of: np.datetime64
    code: np.ndarray          # int64, rendered as 11 zero-padded digits
    birth: np.ndarray         # datetime64[D]
    sex: np.ndarray           # int8: 1 male, 2 female
    household: np.ndarray     # int64 household index
    given: np.ndarray         # int64 index into the given-name pool
    kana_style: np.ndarray    # int8: 0 full-width space, 1 half-width space, 2 empty reading
    status: np.ndarray        # int8 index into STATUSES
    status_date: np.ndarray   # datetime64[D], NaT when none
    updated_at: np.ndarray    # datetime64[s], JST wall clock
    household_code: np.ndarray  # int64, rendered as 10 zero-padded digits
    household_ward: np.ndarray  # int64 index into pools.WARDS
    household_town: np.ndarray  # int64 index into the flattened town list
    household_block: np.ndarray  # int64 (n, 3): 丁目 (0 = none), 番, 号
    household_family: np.ndarray  # int64 index into pools.FAMILY_NAMES
    household_variant: np.ndarray  # bool: the family writes its name with the 外字 variant

    @property
    def size(self) -> int:
        return int(self.code.size)

    def age(self) -> np.ndarray:
        """Age in completed years on as_of."""
        return age_on(self.birth, self.as_of)

    def ward(self, idx: np.ndarray) -> np.ndarray:
        """Ward index of each resident."""
        return self.household_ward[self.household[idx]]

    def department_copy(self, idx: np.ndarray, other_space: np.ndarray) -> dict[str, list]:
        """A department's own copy of the basic attributes (SOURCES.md) for residents ``idx``."""
        return {
            "resident_code": self.resident_codes(idx),
            "name_kana": self.name_kana(idx, other_space),
            "birth_date": self.birth_dates(idx),
            "sex": self.sexes(idx),
            "address": self.address(idx),
        }

    def resident_codes(self, idx: np.ndarray) -> list[str]:
        return [f"{c:011d}" for c in self.code[idx].tolist()]

    def household_codes(self, idx: np.ndarray) -> list[str]:
        return [f"{c:010d}" for c in self.household_code[self.household[idx]].tolist()]

    def ward_codes(self, idx: np.ndarray) -> list[str]:
        return [_WARD_CODES[w] for w in self.ward(idx).tolist()]

    def name_kana(self, idx: np.ndarray, other_space: np.ndarray | None = None) -> list[str]:
        """Readings "姓 名"; `other_space` marks department copies that use the other space width."""
        style = self.kana_style[idx]
        if other_space is not None:
            style = np.where((style < 2) & other_space, 1 - style, style)
        family = self.household_family[self.household[idx]].tolist()
        return [
            "" if s == 2 else f"{_FAMILY_KANA[f]}{KANA_SPACES[s]}{_GIVEN_KANA[g]}"
            for f, g, s in zip(family, self.given[idx].tolist(), style.tolist())
        ]

    def name_kanji(self, idx: np.ndarray) -> list[str]:
        hh = self.household[idx]
        family = self.household_family[hh].tolist()
        variant = self.household_variant[hh].tolist()
        return [
            f"{_FAMILY_VARIANT[f] if v else _FAMILY_KANJI[f]}\u3000{_GIVEN_KANJI[g]}"
            for f, v, g in zip(family, variant, self.given[idx].tolist())
        ]

    def address(self, idx: np.ndarray) -> list[str]:
        hh = self.household[idx]
        towns = self.household_town[hh].tolist()
        blocks = self.household_block[hh].tolist()
        return [
            f"{_TOWN_PREFIX[t]}{chome}丁目{ban}番{go}号" if chome else f"{_TOWN_PREFIX[t]}{ban}番{go}号"
            for t, (chome, ban, go) in zip(towns, blocks)
        ]

    def birth_dates(self, idx: np.ndarray) -> list[str | None]:
        return iso_dates(self.birth[idx])

    def sexes(self, idx: np.ndarray) -> list[int]:
        return self.sex[idx].tolist()

    def render_registry(self, rows: np.ndarray) -> dict[str, list]:
        """Registry columns for resident indices `rows` (the registry row index is the resident index)."""
        return {
            "resident_code": self.resident_codes(rows),
            "name_kana": self.name_kana(rows),
            "name_kanji": self.name_kanji(rows),
            "birth_date": self.birth_dates(rows),
            "sex": self.sexes(rows),
            "ward_code": self.ward_codes(rows),
            "address": self.address(rows),
            "household_code": self.household_codes(rows),
            "status": [STATUSES[s] for s in self.status[rows].tolist()],
            "status_date": iso_dates(self.status_date[rows]),
            "updated_at": iso_timestamps(self.updated_at[rows]),
        }


def age_on(birth: np.ndarray, when: np.datetime64) -> np.ndarray:
    """Completed years of age on `when` (the birthday counted from its anniversary)."""
    when = np.datetime64(when, "D")
    years = when.astype("datetime64[Y]").astype(np.int64) - birth.astype("datetime64[Y]").astype(np.int64)
    return years - (anniv(birth, years * 12) > when)


def build_city(residents: int, as_of: datetime.date, rng: np.random.Generator) -> City:
    """Draw a population of `residents` people living in Kitakyushu-like wards on `as_of`."""
    today = day(as_of)
    age = _ages(residents, rng)
    # Birth day uniform within the year of age; age 0 covers the last 365 days.
    days_back = np.floor(age * 365.2425 + rng.random(residents) * 365).astype(np.int64)
    birth = today - days(days_back)
    sex = np.where(rng.random(residents) < _female_share(age), 2, 1).astype(np.int8)

    household, n_households = _households(age, sex, rng)
    household_size = np.bincount(household, minlength=n_households)
    household_ward = _wards_for(household_size, rng)
    n_towns = np.diff(_TOWN_OFFSET)[household_ward]
    household_town = _TOWN_OFFSET[household_ward] + np.floor(rng.random(n_households) * n_towns).astype(np.int64)
    max_chome = np.array([chome for _, chome in _TOWNS])[household_town]
    chome = np.where(max_chome > 0, 1 + np.floor(rng.random(n_households) * np.maximum(max_chome, 1)), 0)
    household_block = np.stack(
        [chome, rng.integers(1, 41, n_households), rng.integers(1, 26, n_households)], axis=1
    ).astype(np.int64)
    weights = np.array([f[2] for f in pools.FAMILY_NAMES], dtype=float)
    household_family = rng.choice(len(weights), size=n_households, p=weights / weights.sum())
    has_variant = np.array([bool(f[3]) for f in pools.FAMILY_NAMES])[household_family]
    household_variant = has_variant & (rng.random(n_households) < 0.15)

    given = _given_names(birth, sex, rng)
    kana_style = rng.choice(3, size=residents, p=(0.75, 0.18, 0.07)).astype(np.int8)
    status, status_date = _statuses(today, age, birth, household, n_households, rng)
    updated_at = updated_timestamps(today, np.fmax(birth, status_date), rng)

    return City(
        as_of=today, code=unique_random_ints(rng, residents, 10**11), birth=birth, sex=sex,
        household=household, given=given, kana_style=kana_style, status=status,
        status_date=status_date, updated_at=updated_at,
        household_code=unique_random_ints(rng, n_households, 10**10),
        household_ward=household_ward, household_town=household_town,
        household_block=household_block, household_family=household_family,
        household_variant=household_variant,
    )


def unique_random_ints(rng: np.random.Generator, n: int, high: int) -> np.ndarray:
    """`n` distinct random integers in [0, high), in random order."""
    values = rng.integers(0, high, n, dtype=np.int64)
    while True:
        _, first = np.unique(values, return_index=True)
        if first.size == n:
            return values
        repeated = np.ones(n, dtype=bool)
        repeated[first] = False
        values[repeated] = rng.integers(0, high, int(repeated.sum()), dtype=np.int64)


def updated_timestamps(today: np.datetime64, floor: np.ndarray, rng: np.random.Generator,
                       lookback_days: int = 3 * 365) -> np.ndarray:
    """Change watermarks: a day in [max(floor, today − lookback), today] at an office-hours time."""
    lower = np.fmax(np.where(np.isnat(floor), today, floor), today - np.timedelta64(lookback_days, "D"))
    lower = np.fmin(lower, today)
    span = (today - lower).astype(np.int64) + 1
    when = lower + days(np.floor(rng.random(floor.size) * span).astype(np.int64))
    seconds = rng.integers(8 * 3600 + 1800, 19 * 3600, floor.size)
    stamps = when.astype(SECOND) + seconds.astype("timedelta64[s]")
    # A city generated for today is stamped no later than now (JST wall clock): a department
    # never records a change in its future, and ingest quarantines stamps past the export time.
    now = np.datetime64(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(hours=9), "s")
    return np.minimum(stamps, now - np.timedelta64(60, "s"))




def _ages(residents: int, rng: np.random.Generator) -> np.ndarray:
    """Ages allocated exactly to the pyramid's shares (largest remainder), in random order."""
    grid = np.arange(MAX_AGE + 1)
    anchors = sorted(AGE_ANCHORS.items())
    weight = np.interp(grid, [a for a, _ in anchors], [w for _, w in anchors])
    share = np.empty_like(weight)
    share[0] = BIRTHS_PER_RESIDENT
    share[1:65] = weight[1:65] / weight[1:65].sum() * (1 - AGED_SHARE - BIRTHS_PER_RESIDENT)
    share[65:] = weight[65:] / weight[65:].sum() * AGED_SHARE
    counts = allocate(residents, share)
    return rng.permutation(np.repeat(grid, counts))


def allocate(total: int, shares: np.ndarray) -> np.ndarray:
    """Split `total` into integer counts proportional to `shares` (largest remainder)."""
    raw = shares / shares.sum() * total
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _female_share(age: np.ndarray) -> np.ndarray:
    return np.interp(age, [0, 50, 70, 85, 95], [0.487, 0.49, 0.52, 0.60, 0.75])


def _group_sizes(rng: np.random.Generator, total: int, sizes: tuple[int, ...],
                 p: tuple[float, ...]) -> np.ndarray:
    """Group sizes drawn from `sizes` that add up to exactly `total` (the last one truncated)."""
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    mean = float(np.dot(sizes, p))
    drawn = rng.choice(sizes, size=int(total / mean * 1.2) + 10, p=p)
    ends = np.cumsum(drawn)
    k = int(np.searchsorted(ends, total))
    groups = drawn[: k + 1].copy()
    groups[-1] -= ends[k] - total
    return groups[groups > 0]


def _households(age: np.ndarray, sex: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Household index per person: children with 1–2 parents, elderly mostly alone or in pairs."""
    n = age.size
    household = np.full(n, -1, dtype=np.int64)
    # Children sorted by age with noise so that siblings are a few years apart.
    kids = np.flatnonzero(age < 18)
    kids = kids[np.argsort(age[kids] + rng.normal(0, 2.0, kids.size), kind="stable")]
    family_sizes = _group_sizes(rng, kids.size, (1, 2, 3, 4), (0.42, 0.42, 0.13, 0.03))
    household[kids] = np.repeat(np.arange(family_sizes.size), family_sizes)
    n_households = family_sizes.size

    adults = np.flatnonzero((age >= 20) & (age <= 64))
    adults = adults[rng.permutation(adults.size)]
    pool: dict[tuple[int, int], list[int]] = {}
    for person, a, s in zip(adults.tolist(), age[adults].tolist(), sex[adults].tolist()):
        pool.setdefault((a, s), []).append(person)

    def take(target: int, person_sex: int) -> int:
        for delta in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6):
            members = pool.get((target + delta, person_sex))
            if members:
                return members.pop()
        return -1

    starts = np.concatenate([[0], np.cumsum(family_sizes)[:-1]]) if family_sizes.size else np.zeros(0, np.int64)
    eldest = np.maximum.reduceat(age[kids], starts).tolist() if kids.size else []
    mother_gap = rng.integers(23, 38, family_sizes.size).tolist()
    father_gap = rng.integers(-2, 6, family_sizes.size).tolist()
    two_parents = (rng.random(family_sizes.size) < 0.88).tolist()
    for family, oldest in enumerate(eldest):
        mother_age = min(oldest + mother_gap[family], 58)
        mother = take(mother_age, 2)
        if mother >= 0:
            household[mother] = family
        if two_parents[family]:
            father = take(min(mother_age + father_gap[family], 64), 1)
            if father >= 0:
                household[father] = family

    for members, sizes, p in (
        (np.flatnonzero((household < 0) & (age >= 65)), (1, 2, 3), (0.42, 0.52, 0.06)),
        (np.flatnonzero((household < 0) & (age < 65)), (1, 2, 3, 4), (0.50, 0.33, 0.12, 0.05)),
    ):
        members = members[np.argsort(age[members] + rng.normal(0, 3.0, members.size), kind="stable")]
        sizes_drawn = _group_sizes(rng, members.size, sizes, p)
        household[members] = n_households + np.repeat(np.arange(sizes_drawn.size), sizes_drawn)
        n_households += sizes_drawn.size
    # Relabel so that household order (and so registry order) is mixed.
    return rng.permutation(n_households)[household], n_households


def _wards_for(household_size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A ward per household so that the head-count per ward follows the ward populations."""
    order = rng.permutation(household_size.size)
    population = np.array([w[2] for w in pools.WARDS], dtype=float)
    bounds = np.cumsum(population / population.sum()) * household_size.sum()
    midpoints = np.cumsum(household_size[order]) - household_size[order] / 2
    ward = np.empty(household_size.size, dtype=np.int64)
    ward[order] = np.minimum(np.searchsorted(bounds, midpoints), len(pools.WARDS) - 1)
    return ward


def _given_names(birth: np.ndarray, sex: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    year = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    cohort = np.searchsorted(np.array(pools.COHORT_STARTS), year, side="right")
    offsets, sizes = [], []
    start = 0
    for s in (1, 2):
        for names in pools.GIVEN_NAMES[s]:
            offsets.append(start)
            sizes.append(len(names))
            start += len(names)
    table = (sex.astype(np.int64) - 1) * len(pools.COHORT_STARTS + (0,)) + cohort
    offset = np.array(offsets)[table]
    size = np.array(sizes)[table]
    return offset + np.floor(rng.random(birth.size) * size).astype(np.int64)


def _statuses(today: np.datetime64, age: np.ndarray, birth: np.ndarray, household: np.ndarray,
              n_households: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Registry status and its date: whole households move out; deaths weigh on the old."""
    n = age.size
    status = np.zeros(n, dtype=np.int8)
    status_date = np.full(n, np.datetime64("NaT"), dtype=DAY)

    moved_household = rng.random(n_households) < MOVED_OUT_HOUSEHOLD_SHARE
    moved_on = today - days(rng.integers(0, STATUS_LOOKBACK_DAYS, n_households))
    moved = moved_household[household]
    status[moved] = MOVED_OUT
    status_date[moved] = np.fmin(np.fmax(moved_on[household[moved]], birth[moved] + np.timedelta64(14, "D")), today)

    death_risk = np.interp(age, [0, 64, 65, 75, 85, 95], [0.001, 0.004, 0.015, 0.04, 0.10, 0.25])
    died = ~moved & (rng.random(n) < death_risk)
    status[died] = DECEASED
    died_on = today - days(rng.integers(0, STATUS_LOOKBACK_DAYS, n))
    status_date[died] = np.fmax(died_on[died], birth[died])

    # About a quarter of residents moved in at some point: the move-in is their last change.
    moved_in = (status == RESIDENT) & (rng.random(n) < 0.25)
    span = (today - birth).astype(np.int64) + 1
    moved_in_on = birth + days(np.floor(rng.random(n) * span).astype(np.int64))
    status_date[moved_in] = moved_in_on[moved_in]
    return status, status_date
