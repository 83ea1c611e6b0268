"""The synthetic city generator (`renkei synth`): shape, contract, seeded defects, determinism.

Expectations come from SOURCES.md / SERVICES.md and config/*.yaml, not from the generator.
"""

from __future__ import annotations

import collections
import csv
import datetime
import functools
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml

from renkei.errors import RenkeiError
from renkei.synth import generate
from renkei.synth.dates import anniv, reach
from renkei.synth.eras import to_era

CONFIG = Path(__file__).resolve().parents[2] / "config"
SOURCES_YAML = yaml.safe_load((CONFIG / "sources.yaml").read_text(encoding="utf-8"))["sources"]
CODES = yaml.safe_load((CONFIG / "codes.yaml").read_text(encoding="utf-8"))
SOURCES = list(SOURCES_YAML)
AS_OF = datetime.date(2025, 6, 1)
SEED = 7

# SOURCES.md: ward populations in thousands.
WARD_POPULATION = {"401013": 89, "401030": 77, "401056": 57, "401064": 180, "401072": 204,
                   "401081": 65, "401099": 250}
ERA_STARTS = [("明治", "M", datetime.date(1868, 1, 25)), ("大正", "T", datetime.date(1912, 7, 30)),
              ("昭和", "S", datetime.date(1926, 12, 25)), ("平成", "H", datetime.date(1989, 1, 8)),
              ("令和", "R", datetime.date(2019, 5, 1))]
KANJI_ERA = re.compile(r"^(明治|大正|昭和|平成|令和)(元|\d+)年(\d+)月(\d+)日$")
LETTER_ERA = re.compile(r"^([MTSHR])(\d+)\.(\d+)\.(\d+)$")
LENIENT_ERA = re.compile(r"^(明治|大正|昭和|平成|令和|[MTSHR])(元|\d+)[年.](\d+)[月.](\d+)日?$")
EVENT_DATE = {"immunization": "administered_on", "child_health": "examined_on", "nhi": "qualified_on"}
KEY = {"registry": "resident_code", "immunization": "record_id", "child_health": "record_id",
       "nhi": "resident_code", "subscriptions": "subscription_id", "events": "event_id"}


# ---------------------------------------------------------------- independent readers of the spec

def iso_date(value: str | None) -> datetime.date | None:
    if not value or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        return None


def era_date(value: str | None, pattern: re.Pattern = LENIENT_ERA) -> datetime.date | None:
    """An era-form date if it names a real day inside its era (元年 = 1), else None."""
    match = pattern.fullmatch(value or "")
    if not match:
        return None
    era, year_text, month, day_ = match.groups()
    index = next(i for i, (kanji, letter, _) in enumerate(ERA_STARTS) if era in (kanji, letter))
    year = 1 if year_text == "元" else int(year_text)
    if year < 1:
        return None
    try:
        value_date = datetime.date(ERA_STARTS[index][2].year + year - 1, int(month), int(day_))
    except ValueError:
        return None
    next_start = ERA_STARTS[index + 1][2] if index + 1 < len(ERA_STARTS) else datetime.date.max
    return value_date if ERA_STARTS[index][2] <= value_date < next_start else None


def any_date(value: str | None) -> datetime.date | None:
    return iso_date(value) or era_date(value)


def ward_check_digit(code: str) -> int:
    return (11 - sum(int(d) * w for d, w in zip(code[:5], (6, 5, 4, 3, 2))) % 11) % 10


def age_on(birth: datetime.date, when: datetime.date) -> int:
    return when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))


def valid_codes(column: str) -> set:
    return {
        "sex": set(CODES["sex"]),
        "ward_code": set(CODES["wards"]),
        "status": set(CODES["registry_status"]),
        "vaccine_code": set(CODES["vaccine_codes"]),
        "checkup_code": set(CODES["checkup_codes"]),
        "topic": set(CODES["topics"]),
        "channel": set(CODES["contact_channels"]),
    }[column]


@functools.lru_cache(maxsize=None)
def read_sqlite(directory: Path, source: str) -> list[dict]:
    with sqlite3.connect(directory / f"{source}.db") as connection:
        connection.row_factory = sqlite3.Row
        return [dict(r) for r in connection.execute(f'SELECT * FROM "{source}" ORDER BY rowid')]


def read_csv(directory: Path, source: str, encoding: str = "utf-8-sig") -> tuple[list[str], list[list[str]]]:
    with (directory / f"{source}.csv").open(encoding=encoding, newline="") as handle:
        lines = list(csv.reader(handle))
    return lines[0], lines[1:]


@functools.lru_cache(maxsize=None)
def csv_dicts(directory: Path, source: str, encoding: str = "utf-8-sig") -> list[dict | None]:
    """Rows as dicts (empty field → None, int columns as int); None for a wrong field count."""
    header, lines = read_csv(directory, source, encoding)
    ints = [c for c, t in SOURCES_YAML[source]["columns"].items() if t == "int"]
    rows: list[dict | None] = []
    for fields in lines:
        if len(fields) != len(header):
            rows.append(None)
            continue
        row = {c: (v if v != "" else None) for c, v in zip(header, fields)}
        for c in ints:
            row[c] = int(row[c]) if row[c] is not None and row[c].lstrip("-").isdigit() else row[c]
        rows.append(row)
    return rows


def entries_by_source(manifest: dict) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = collections.defaultdict(dict)
    for entry in manifest["defects"]:
        assert entry["row"] not in out[entry["source"]], f"row listed twice: {entry}"
        out[entry["source"]][entry["row"]] = entry
    return out


# ---------------------------------------------------------------- fixtures (generated once per module)

@pytest.fixture(scope="module")
def city_sqlite(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sqlite20k")
    return out, generate(20_000, SEED, AS_OF, out, fmt="sqlite")


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("csv")
    return out, generate(3_000, SEED, AS_OF, out, fmt="csv", defect_rate=0.01)


@pytest.fixture(scope="module")
def small_cp932(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cp932")
    return out, generate(3_000, SEED, AS_OF, out, fmt="csv-cp932", defect_rate=0.01)


@pytest.fixture(scope="module")
def registry_20k(city_sqlite) -> list[dict]:
    return read_sqlite(city_sqlite[0], "registry")


# ---------------------------------------------------------------- known answers of the helpers

def test_era_rendering_known_answers():
    assert to_era("2023-08-22", "kanji") == "令和5年8月22日"
    assert to_era("2023-08-22", "letter") == "R5.8.22"
    assert to_era("2019-04-30", "letter") == "H31.4.30"
    assert to_era("2019-05-01", "kanji") == "令和元年5月1日"
    assert to_era("1989-01-08", "kanji") == "平成元年1月8日"
    assert to_era("1989-01-07", "kanji") == "昭和64年1月7日"
    assert to_era("1926-12-24", "letter") == "T15.12.24"


def test_date_arithmetic_follows_services_md():
    birth = np.array(["2018-04-01", "2024-07-31"], dtype="datetime64[D]")
    # SERVICES.md worked example: born 2018-04-01, 生後2月〜60月 → 2018-05-31 … 2023-03-31.
    assert str(reach(birth[:1], 2)[0]) == "2018-05-31"
    assert str(reach(birth[:1], 60)[0]) == "2023-03-31"
    # Born 7/31 → the 2-month anniversary is 10/1 (September has no 31st).
    assert str(anniv(birth[1:], 2)[0]) == "2024-10-01"


def test_codes_yaml_wards_carry_their_check_digit():
    for code in CODES["wards"]:
        assert int(code[5]) == ward_check_digit(code), code
    assert set(CODES["wards"]) == set(WARD_POPULATION)


# ---------------------------------------------------------------- contract: files and columns

@pytest.mark.parametrize("source", SOURCES)
def test_sqlite_table_has_exactly_the_contract_columns(city_sqlite, source):
    out, _ = city_sqlite
    with sqlite3.connect(out / f"{source}.db") as connection:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        info = connection.execute(f'PRAGMA table_info("{source}")').fetchall()
    assert tables == [source]
    expected = SOURCES_YAML[source]["columns"]
    assert [r[1] for r in info] == list(expected)
    for _, name, type_, *_ in info:
        assert type_ == ("INTEGER" if expected[name] == "int" else "TEXT"), name


@pytest.mark.parametrize("source", SOURCES)
def test_csv_header_is_exactly_the_contract_columns(small_csv, source):
    header, _ = read_csv(small_csv[0], source)
    assert header == list(SOURCES_YAML[source]["columns"])


def test_only_the_registry_csv_has_a_bom(small_csv, small_cp932):
    for source in SOURCES:
        head = (small_csv[0] / f"{source}.csv").read_bytes()[:3]
        assert (head == b"\xef\xbb\xbf") == (source == "registry"), source
        assert not (small_cp932[0] / f"{source}.csv").read_bytes().startswith(b"\xef\xbb\xbf")


def test_manifest_counts_match_the_files(small_csv, city_sqlite):
    out, manifest = small_csv
    for source in SOURCES:
        assert manifest["counts"][source] == len(read_csv(out, source)[1]), source
    out, manifest = city_sqlite
    for source in SOURCES:
        assert manifest["counts"][source] == len(read_sqlite(out, source)), source
    assert manifest["seed"] == SEED and manifest["residents"] == 20_000
    assert manifest["as_of"] == "2025-06-01" and manifest["format"] == "sqlite"


# ---------------------------------------------------------------- shape of the city

def test_ward_shares_follow_the_ward_populations(registry_20k):
    wards = collections.Counter(r["ward_code"] for r in registry_20k)
    total = sum(WARD_POPULATION.values())
    for code, population in WARD_POPULATION.items():
        assert wards[code] / len(registry_20k) == pytest.approx(population / total, abs=0.01), code


def test_about_31_percent_are_65_or_older(registry_20k):
    births = [iso_date(r["birth_date"]) for r in registry_20k]
    ages = [age_on(b, AS_OF) for b in births if b]
    assert sum(a >= 65 for a in ages) / len(ages) == pytest.approx(0.31, abs=0.015)
    assert max(ages) <= 110 and min(ages) >= 0


def test_births_per_year_scale_from_5500_per_900k(registry_20k):
    year_ago = AS_OF - datetime.timedelta(days=365)
    born = sum(1 for r in registry_20k if (b := iso_date(r["birth_date"])) and year_ago < b <= AS_OF)
    expected = 20_000 * 5_500 / 900_000  # ≈ 122
    assert born == pytest.approx(expected, rel=0.12)


def test_statuses_mostly_resident_with_some_moved_out_and_deceased(registry_20k):
    statuses = collections.Counter(r["status"] for r in registry_20k)
    assert statuses["resident"] / len(registry_20k) > 0.93
    assert statuses["moved_out"] >= 50 and statuses["deceased"] >= 50
    for r in registry_20k:
        if r["status"] in ("moved_out", "deceased") and iso_date(r["birth_date"]):
            assert iso_date(r["status_date"]) is not None
            assert iso_date(r["birth_date"]) <= iso_date(r["status_date"]) <= AS_OF
    infants_moved = [r for r in registry_20k if r["status"] == "moved_out" and (b := iso_date(r["birth_date"]))
                     and age_on(b, AS_OF) <= 5]
    assert infants_moved, "some young children moved out"


def test_households_group_children_with_adults_and_elderly_live_small(registry_20k):
    members = collections.defaultdict(list)
    for r in registry_20k:
        if (b := iso_date(r["birth_date"])):
            members[r["household_code"]].append(age_on(b, AS_OF))
    with_children = [ages for ages in members.values() if min(ages) < 18]
    assert sum(max(ages) >= 20 for ages in with_children) / len(with_children) > 0.85
    elderly_household_sizes = [len(ages) for ages in members.values() for a in ages if a >= 65]
    assert sum(s <= 2 for s in elderly_household_sizes) / len(elderly_household_sizes) > 0.8
    addresses = collections.defaultdict(set)
    for r in registry_20k:
        addresses[r["household_code"]].add(r["address"])
    assert sum(len(a) == 1 for a in addresses.values()) / len(addresses) > 0.99


def test_registry_names_codes_and_addresses_look_real(registry_20k, city_sqlite):
    listed = entries_by_source(city_sqlite[1])["registry"]
    clean = [r for i, r in enumerate(registry_20k) if i not in listed]
    codes = [r["resident_code"] for r in clean]
    assert all(re.fullmatch(r"\d{11}", c) for c in codes) and len(set(codes)) == len(codes)
    kana = [r["name_kana"] for r in clean]
    assert all(k == "" or re.fullmatch(r"[ァ-ヶー]+[ \u3000][ァ-ヶー]+", k) for k in kana)
    assert any(k == "" for k in kana) and any(" " in k for k in kana) and any("\u3000" in k for k in kana)
    assert any("𠮷" in r["name_kanji"] or "髙" in r["name_kanji"] for r in clean)
    for r in clean:
        assert r["address"].startswith("北九州市" + CODES["wards"][r["ward_code"]]), r["ward_code"]
        assert r["sex"] in (1, 2)


# ---------------------------------------------------------------- departments

def _clean(rows: list[dict], listed: dict[int, dict]) -> list[dict]:
    return [r for i, r in enumerate(rows) if i not in listed]


def test_immunization_histories_follow_the_schedule(city_sqlite, registry_20k):
    out, manifest = city_sqlite
    rows = _clean(read_sqlite(out, "immunization"), entries_by_source(manifest)["immunization"])
    birth = {r["resident_code"]: iso_date(r["birth_date"]) for r in registry_20k}
    doses = collections.defaultdict(dict)
    for r in rows:
        given = iso_date(r["administered_on"])
        born = iso_date(r["birth_date"])
        assert born <= given <= AS_OF
        assert r["vaccine_code"] in valid_codes("vaccine_code")
        doses[(r["resident_code"], r["vaccine_code"])][r["dose_number"]] = given
        if r["vaccine_code"] == "DPT_IPV_HIB":
            assert born >= datetime.date(2024, 4, 1)
        if r["vaccine_code"] in ("DPT_IPV", "HIB"):
            assert born < datetime.date(2024, 4, 1)
        if r["vaccine_code"] == "HPV":
            assert r["sex"] == 2
        if r["vaccine_code"] == "MR" and r["dose_number"] == 2:
            entry = born.year + (6 if (born.month, born.day) <= (4, 1) else 7)
            assert datetime.date(entry - 1, 4, 1) <= given <= datetime.date(entry, 3, 31)
        if r["vaccine_code"] == "BCG":
            assert given <= anniv(np.array([born], dtype="datetime64[D]"), 12)[0].astype(datetime.date)
    for (_, _), series in doses.items():
        dates = [series[n] for n in sorted(series)]
        assert dates == sorted(dates)
    rota = collections.defaultdict(set)
    for code, vaccine in doses:
        if vaccine.startswith("ROTA"):
            rota[code].add(vaccine)
    assert rota and all(len(products) == 1 for products in rota.values())
    # Gaps: a later dose on record while an earlier one is missing.
    assert any(max(s) > len(s) for s in doses.values())
    # Coverage of BCG and MR 1 among resident children aged 2–13: ~90–97%.
    children = {r["resident_code"] for r in registry_20k if r["status"] == "resident"
                and (b := birth[r["resident_code"]]) and 2 <= age_on(b, AS_OF) <= 13}
    for vaccine in ("BCG", "MR"):
        covered = sum(1 for c in children if 1 in doses.get((c, vaccine), {}))
        assert 0.85 <= covered / len(children) <= 0.99, vaccine
    assert len({(c, v) for c, v in doses if v == "HEPB"}) > 0


def test_no_records_after_a_child_left_or_died(city_sqlite, registry_20k):
    out, manifest = city_sqlite
    left = {r["resident_code"]: iso_date(r["status_date"]) for r in registry_20k
            if r["status"] in ("moved_out", "deceased")}
    for source, column in (("immunization", "administered_on"), ("child_health", "examined_on")):
        rows = _clean(read_sqlite(out, source), entries_by_source(manifest)[source])
        seen = 0
        for r in rows:
            if r["resident_code"] in left and left[r["resident_code"]]:
                seen += 1
                assert iso_date(r[column]) <= left[r["resident_code"]]
        assert seen > 0, source


def test_child_health_checkups_at_their_ages(city_sqlite):
    out, manifest = city_sqlite
    rows = _clean(read_sqlite(out, "child_health"), entries_by_source(manifest)["child_health"])
    earliest_months = {"M4": 3, "M7": 6, "Y1M6": 18, "Y3": 36}
    seen = collections.Counter()
    for r in rows:
        born = np.array([r["birth_date"]], dtype="datetime64[D]")
        examined = np.datetime64(r["examined_on"], "D")
        assert reach(born, earliest_months[r["checkup_code"]])[0] <= examined <= np.datetime64(AS_OF)
        seen[r["checkup_code"]] += 1
    assert set(seen) == set(CODES["checkup_codes"])


def test_nhi_covers_about_22_percent_mostly_60_to_74(city_sqlite, registry_20k):
    out, manifest = city_sqlite
    rows = _clean(read_sqlite(out, "nhi"), entries_by_source(manifest)["nhi"])
    assert 0.18 <= len(rows) / 20_000 <= 0.26
    members = {r["resident_code"] for r in rows}
    young_old = [r for r in registry_20k if (b := iso_date(r["birth_date"])) and 65 <= age_on(b, AS_OF) <= 74]
    assert sum(r["resident_code"] in members for r in young_old) / len(young_old) > 0.8
    assert any(r["disqualified_on"] for r in rows)
    last_fy = (datetime.date(2024, 4, 1), datetime.date(2025, 3, 31))
    eligible = [r for r in rows if 40 <= age_on(iso_date(r["birth_date"]), AS_OF) <= 74]
    checked = sum(1 for r in eligible if r["last_checkup_on"]
                  and last_fy[0] <= iso_date(r["last_checkup_on"]) <= last_fy[1])
    assert 0.25 <= checked / len(eligible) <= 0.45
    for r in rows:
        assert iso_date(r["qualified_on"]) <= AS_OF
        if r["disqualified_on"]:
            assert iso_date(r["qualified_on"]) <= iso_date(r["disqualified_on"])


def test_subscriptions_about_15_percent_of_adults(city_sqlite, registry_20k):
    out, manifest = city_sqlite
    rows = _clean(read_sqlite(out, "subscriptions"), entries_by_source(manifest)["subscriptions"])
    adults = {r["resident_code"] for r in registry_20k if (b := iso_date(r["birth_date"])) and age_on(b, AS_OF) >= 18}
    subscribers = {r["resident_code"] for r in rows}
    assert subscribers <= adults | {r["resident_code"] for r in registry_20k}
    assert 0.10 <= len(subscribers & adults) / len(adults) <= 0.20
    assert {r["topic"] for r in rows} == valid_codes("topic")
    assert any(r["ward_code"] is None for r in rows) and any(r["ward_code"] for r in rows)
    opted_out = [r for r in rows if r["opted_out_at"]]
    assert 0.05 <= len(opted_out) / len(rows) <= 0.15
    for r in opted_out:
        assert datetime.datetime.fromisoformat(r["opted_in_at"]) < datetime.datetime.fromisoformat(r["opted_out_at"])


def test_contacts_zero_to_three_per_resident_some_unverified(city_sqlite):
    rows = read_sqlite(city_sqlite[0], "registry_contact")
    per_resident = collections.Counter(r["resident_code"] for r in rows)
    assert max(per_resident.values()) <= 3
    assert all(r["channel"] in valid_codes("channel") for r in rows)
    assert 0.05 <= sum(r["verified_at"] is None for r in rows) / len(rows) <= 0.15
    assert all("@example." in r["address"] for r in rows if r["channel"] == "email")


def test_events_scale_and_fall_in_the_window(city_sqlite, small_csv):
    rows = read_sqlite(city_sqlite[0], "events")
    assert len(rows) == 40  # 2 per 1,000 residents
    assert len(read_csv(small_csv[0], "events")[1]) == 20  # the minimum
    for r in rows:
        start = datetime.datetime.fromisoformat(r["starts_at"])
        assert AS_OF - datetime.timedelta(days=30) <= start.date() <= AS_OF + datetime.timedelta(days=60)
        assert datetime.datetime.fromisoformat(r["ends_at"]) > start
        assert r["ward_code"] in valid_codes("ward_code") and r["topic"] in valid_codes("topic")
        assert r["venue"] in r["title"]


def test_timestamps_are_jst_and_not_after_as_of(city_sqlite):
    out, _ = city_sqlite
    for source in SOURCES:
        columns = [c for c, t in SOURCES_YAML[source]["columns"].items() if t == "timestamp"]
        for r in read_sqlite(out, source):
            for c in columns:
                if r[c] is None:
                    continue
                stamp = datetime.datetime.fromisoformat(r[c])
                assert stamp.utcoffset() == datetime.timedelta(hours=9), (source, c)
                if c not in ("starts_at", "ends_at"):
                    assert stamp.date() <= AS_OF, (source, c)


# ---------------------------------------------------------------- seeded defects

def _check_manifest_points_at_real_defects(out: Path, manifest: dict, fmt: str) -> None:
    encoding = "cp932" if fmt == "csv-cp932" else "utf-8-sig"
    listed = entries_by_source(manifest)
    tables = {s: (read_sqlite(out, s) if fmt == "sqlite" else csv_dicts(out, s, encoding)) for s in SOURCES}
    registry = {r["resident_code"]: (any_date(r["birth_date"]), r["sex"])
                for i, r in enumerate(tables["registry"])
                if listed["registry"].get(i, {"defect": "era_date"})["defect"] == "era_date"}
    kinds_seen = collections.Counter()
    for source, rows in tables.items():
        entries = listed.get(source, {})
        assert source != "registry_contact" or not entries
        key_rows = collections.defaultdict(list)
        for i, row in enumerate(rows):
            if row is not None and source in KEY:
                key_rows[row[KEY[source]]].append(i)
        for i, row in enumerate(rows):
            entry = entries.get(i)
            kind = entry["defect"] if entry else None
            kinds_seen[(source, kind)] += 1
            if kind == "malformed_row":
                if fmt == "sqlite":
                    code = row["resident_code"]
                    assert code is None or not re.fullmatch(r"\d{11}", code), (source, i)
                else:
                    assert row is None, (source, i)
                continue
            assert row is not None, f"{source} row {i}: wrong field count but not listed"
            if source in KEY:
                shared = key_rows[row[KEY[source]]]
                if kind == "duplicate_id":
                    assert len(shared) >= 2 and all(entries[j]["defect"] == "duplicate_id" for j in shared)
                else:
                    assert shared == [i], f"{source} row {i}: duplicate key not listed"
            if "resident_code" in row:
                assert re.fullmatch(r"\d{11}", row["resident_code"]), (source, i)
            for column, type_ in SOURCES_YAML[source]["columns"].items():
                value = row[column]
                if type_ == "date" and value is not None:
                    if kind == "bad_date" and entry["column"] == column:
                        assert iso_date(value) is None and era_date(value) is None, (source, i, column)
                    elif kind == "era_date" and entry["column"] == column:
                        assert fmt != "sqlite" and iso_date(value) is None
                        assert era_date(value, KANJI_ERA) or era_date(value, LETTER_ERA), (source, i)
                    else:
                        assert iso_date(value), f"{source} row {i} {column}: not ISO and not listed"
                if column in ("sex", "ward_code", "status", "vaccine_code", "checkup_code", "topic") \
                        and value is not None:
                    bad = kind == "unknown_code" and entry["column"] == column
                    assert (value not in valid_codes(column)) == bad, (source, i, column)
                    if bad and column == "ward_code":
                        assert re.fullmatch(r"\d{6}", value) and int(value[5]) != ward_check_digit(value)
            if source in EVENT_DATE and row["resident_code"] in registry:
                copy = (any_date(row["birth_date"]), row["sex"])
                if kind == "mislink":
                    assert copy != registry[row["resident_code"]], (source, i)
                    assert copy[1] in (1, 2) and copy[0] is not None
                    assert copy[0] <= any_date(row[EVENT_DATE[source]]), (source, i)
                elif kind is None or kind == "era_date":
                    assert copy == registry[row["resident_code"]], f"{source} row {i}: unlisted mislink"
            if kind == "mislink":
                assert source in EVENT_DATE and row["resident_code"] in registry
        for entry in entries.values():
            assert entry["expect"] == {"bad_date": "quarantine", "unknown_code": "quarantine",
                                       "duplicate_id": "quarantine", "malformed_row": "quarantine",
                                       "mislink": "flag", "era_date": "load"}[entry["defect"]]
            assert 0 <= entry["row"] < len(rows)
    for source in ("registry", "immunization"):
        for kind in ("bad_date", "unknown_code", "duplicate_id", "malformed_row"):
            assert kinds_seen[(source, kind)] > 0, (source, kind)
    assert kinds_seen[("immunization", "mislink")] > 0


def test_manifest_rows_carry_their_defects_in_csv(small_csv):
    _check_manifest_points_at_real_defects(*small_csv, fmt="csv")


def test_manifest_rows_carry_their_defects_in_cp932(small_cp932):
    _check_manifest_points_at_real_defects(*small_cp932, fmt="csv-cp932")


def test_manifest_rows_carry_their_defects_in_sqlite(city_sqlite):
    _check_manifest_points_at_real_defects(*city_sqlite, fmt="sqlite")


def test_defect_rate_is_about_as_asked(city_sqlite):
    out, manifest = city_sqlite
    listed = entries_by_source(manifest)
    for source in ("registry", "immunization"):
        share = len(listed[source]) / manifest["counts"][source]
        assert 0.003 <= share <= 0.01, source
    assert all(e["defect"] != "era_date" for e in manifest["defects"])  # era forms are CSV-only


def test_era_dates_are_about_3_percent_of_csv_date_cells(small_csv):
    out, manifest = small_csv
    eras = sum(1 for e in manifest["defects"] if e["defect"] == "era_date")
    cells = 0
    for source in SOURCES:
        columns = [c for c, t in SOURCES_YAML[source]["columns"].items() if t == "date"]
        cells += sum(1 for r in csv_dicts(out, source) if r for c in columns if r[c])
    assert 0.02 <= eras / cells <= 0.04
    registry = csv_dicts(out, "registry")
    spellings = {("kanji" if "年" in registry[e["row"]][e["column"]] else "letter")
                 for e in manifest["defects"] if e["source"] == "registry" and e["defect"] == "era_date"}
    assert spellings == {"kanji", "letter"}


def test_no_defects_at_rate_zero(tmp_path):
    manifest = generate(500, SEED, AS_OF, tmp_path, fmt="sqlite", defect_rate=0)
    assert manifest["defects"] == []


def test_manifest_holds_no_plaintext_identifiers(small_csv):
    out, _ = small_csv
    text = (out / "manifest.json").read_text(encoding="utf-8")
    rows = [r for r in csv_dicts(out, "registry") if r]
    assert rows
    for r in rows:
        for column in ("resident_code", "name_kanji", "address", "household_code"):
            assert r[column] not in text, column
        if r["name_kana"]:
            assert r["name_kana"] not in text


# ---------------------------------------------------------------- encodings and determinism

def test_cp932_output_round_trips_and_matches_the_utf8_output(small_csv, small_cp932):
    for source in SOURCES:
        raw = (small_cp932[0] / f"{source}.csv").read_bytes()
        text = raw.decode("cp932")  # strict: every byte sequence is valid CP932
        assert text.encode("cp932") == raw
        utf8 = (small_csv[0] / f"{source}.csv").read_bytes().decode("utf-8-sig")
        assert text == utf8.replace("𠮷", "吉"), source
    assert "𠮷" in (small_csv[0] / "registry.csv").read_bytes().decode("utf-8-sig")


def test_same_arguments_give_identical_bytes(tmp_path, small_csv):
    first, second = tmp_path / "a", tmp_path / "b"
    assert generate(3_000, SEED, AS_OF, first) == generate(3_000, SEED, AS_OF, second)
    for name in sorted(p.name for p in first.iterdir()):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    again = tmp_path / "csv"
    generate(3_000, SEED, AS_OF, again, fmt="csv", defect_rate=0.01)
    for name in sorted(p.name for p in again.iterdir()):
        assert (again / name).read_bytes() == (small_csv[0] / name).read_bytes(), name
    other = tmp_path / "other"
    generate(3_000, SEED + 1, AS_OF, other)
    assert (other / "registry.db").read_bytes() != (first / "registry.db").read_bytes()


@pytest.mark.parametrize("arguments", [
    {"residents": 0}, {"seed": -1}, {"fmt": "xlsx"}, {"defect_rate": 0.9},
    {"as_of": datetime.datetime(2025, 6, 1)},
])
def test_bad_arguments_raise_renkei_error(tmp_path, arguments):
    call = {"residents": 500, "seed": SEED, "as_of": AS_OF, "out": tmp_path, **arguments}
    with pytest.raises(RenkeiError):
        generate(**call)
