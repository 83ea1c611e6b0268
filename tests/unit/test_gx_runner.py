"""GX validation of extract batches: suites load whole, failing rows map back to source_row."""

import json
import shutil

import pandas as pd
import pytest

from renkei.errors import ConfigError, SourceError
from renkei.quality.gx_runner import RowFailure, load_suite, quarantine_reason, validate_frame

IN_SET = "expect_column_values_to_be_in_set"
UNIQUE = "expect_column_values_to_be_unique"
NOT_NULL = "expect_column_values_to_not_be_null"
IS_NULL = "expect_column_values_to_be_null"
REGEX = "expect_column_values_to_match_regex"
BETWEEN = "expect_column_values_to_be_between"
A_AFTER_B = "expect_column_pair_values_a_to_be_greater_than_b"
COLUMNS = "expect_table_columns_to_match_set"

TS = "2025-04-01T09:30:00+09:00"


def clean_row(source: str, n: int) -> dict:
    """A valid extract row of each source (n keeps keys unique)."""
    person = {
        "dept_pseudonym": f"v1.cHNldWRv{n}",
        "name_sealed": f"v1.c2VhbGVkbmFtZQ{n}",
        "address_sealed": f"v1.c2VhbGVkYWRkcg{n}",
        "birth_date": "2024-01-15",
        "sex": 2,
    }
    rows = {
        "registry": {
            **person,
            "household_pseudonym": f"v1.aG91c2U{n}",
            "ward_code": "401064",
            "status": "resident",
            "status_date": "2024-01-20",
        },
        "immunization": {
            **person,
            "record_id": f"IM{n}",
            "vaccine_code": "DPT_IPV_HIB",
            "dose_number": 1,
            "administered_on": "2024-03-15",
        },
        "child_health": {**person, "record_id": f"CH{n}", "checkup_code": "M4", "examined_on": "2024-05-20"},
        "nhi": {
            **person,
            "birth_date": "1950-06-01",
            "qualified_on": "2015-06-01",
            "disqualified_on": None,
            "last_checkup_on": "2024-09-01",
        },
        "subscriptions": {
            "subscription_id": f"SUB{n}",
            "dept_pseudonym": f"v1.cHNldWRv{n}",
            "topic": "events",
            "ward_code": "401099",
            "opted_in_at": "2025-01-05T12:00:00+09:00",
            "opted_out_at": None,
        },
        "events": {
            "event_id": f"EV{n}",
            "title": "勝山公園 冬のイルミネーション",
            "topic": "events",
            "ward_code": "401064",
            "venue": "勝山公園",
            "starts_at": "2025-12-01T17:00:00+09:00",
            "ends_at": "2025-12-01T22:00:00+09:00",
        },
    }
    return {"source_row": n, **rows[source], "updated_at": TS, "parse_errors": None}


def frame(source: str, rows: int = 4, first_row: int = 100, **changes) -> pd.DataFrame:
    """`rows` clean rows numbered from first_row; changes={column: {source_row: value}}."""
    records = [clean_row(source, first_row + i) for i in range(rows)]
    for column, by_row in changes.items():
        for source_row, value in by_row.items():
            records[source_row - first_row][column] = value
    return pd.DataFrame(records, dtype=object)


# Counted by hand from each suite file: 5-15 expectations each.
SUITE_SIZES = {"registry": 15, "immunization": 16, "child_health": 15, "nhi": 15, "subscriptions": 14, "events": 15}


@pytest.mark.parametrize(("source", "size"), SUITE_SIZES.items())
def test_each_suite_loads_whole(source, size):
    suite = load_suite(source)
    assert suite.name == source
    assert len(suite.expectations) == size


@pytest.mark.parametrize("source", SUITE_SIZES)
def test_clean_frame_passes(source):
    outcome = validate_frame(source, frame(source))
    assert outcome.failures == {}
    assert outcome.success
    assert outcome.evaluated == 4
    assert outcome.expectations == SUITE_SIZES[source]


@pytest.mark.parametrize("source", SUITE_SIZES)
def test_empty_frame(source):
    empty = pd.DataFrame({column: pd.Series(dtype=object) for column in clean_row(source, 0)})
    outcome = validate_frame(source, empty)
    assert (outcome.evaluated, outcome.failures, outcome.success) == (0, {}, True)


def failures_of(source, **changes):
    return validate_frame(source, frame(source, **changes)).failures


def test_one_bad_code_flags_only_that_row():
    assert failures_of("immunization", vaccine_code={102: "MMR"}) == {102: [RowFailure(IN_SET, "vaccine_code")]}


def test_duplicate_key_flags_both_rows():
    assert failures_of("immunization", record_id={101: "IM103"}) == {
        101: [RowFailure(UNIQUE, "record_id")],
        103: [RowFailure(UNIQUE, "record_id")],
    }


def test_duplicate_dept_pseudonym_is_the_key_of_registry_and_nhi():
    for source in ("registry", "nhi"):
        assert failures_of(source, dept_pseudonym={100: "v1.cHNldWRv101"}) == {
            100: [RowFailure(UNIQUE, "dept_pseudonym")],
            101: [RowFailure(UNIQUE, "dept_pseudonym")],
        }


def test_null_pseudonym():
    for source in ("registry", "immunization", "child_health", "nhi", "subscriptions"):
        assert RowFailure(NOT_NULL, "dept_pseudonym") in failures_of(source, dept_pseudonym={101: None})[101]


def test_bad_date_format():
    assert failures_of("immunization", administered_on={103: "2024/03/15"}) == {103: [RowFailure(REGEX, "administered_on")]}
    assert failures_of("registry", status_date={100: "R6.1.20"}) == {100: [RowFailure(REGEX, "status_date")]}


def test_bad_timestamp_format():
    # an offset other than the canonical +09:00 breaks the string ordering that the future-stamp
    # check (updated_at after the export time) and the adapter's change-column position rely on
    assert failures_of("events", updated_at={101: "2025-04-01T00:30:00Z"}) == {101: [RowFailure(REGEX, "updated_at")]}


def test_administered_before_birth():
    assert failures_of("immunization", administered_on={100: "2024-01-14"}) == {100: [RowFailure(A_AFTER_B, "administered_on")]}
    # the day of birth itself is allowed (or_equal)
    assert failures_of("immunization", administered_on={100: "2024-01-15"}) == {}


def test_examined_before_birth():
    assert failures_of("child_health", examined_on={102: "2023-12-31"}) == {102: [RowFailure(A_AFTER_B, "examined_on")]}


def test_birth_date_range_bounds():
    changes = {"birth_date": {100: "1868-01-25", 101: "1868-01-24", 102: "2100-01-01", 103: "2100-01-02"}}
    assert failures_of("nhi", **changes) == {101: [RowFailure(BETWEEN, "birth_date")], 103: [RowFailure(BETWEEN, "birth_date")]}


def test_malformed_birth_date_is_a_format_failure_not_a_crash_of_the_range_check():
    assert failures_of("registry", birth_date={100: "not a date"}) == {100: [RowFailure(REGEX, "birth_date")]}


def test_parse_errors_always_fail():
    found = failures_of("immunization", parse_errors={101: "birth_date:out_of_era;sex:invalid_int"})
    assert found == {
        101: [
            RowFailure(IS_NULL, "parse_errors"),
            RowFailure("parse_error", "birth_date"),
            RowFailure("parse_error", "sex"),
        ]
    }


def test_dose_number_between_1_and_5():
    found = failures_of("immunization", dose_number={100: 0, 101: 1, 102: 5, 103: 6})
    assert found == {100: [RowFailure(BETWEEN, "dose_number")], 103: [RowFailure(BETWEEN, "dose_number")]}


def test_code_sets():
    assert failures_of("registry", sex={100: 3}, status={101: "emigrated"}, ward_code={102: "401005"}) == {
        100: [RowFailure(IN_SET, "sex")],
        101: [RowFailure(IN_SET, "status")],
        102: [RowFailure(IN_SET, "ward_code")],  # the city itself is not a ward
    }
    assert failures_of("child_health", checkup_code={103: "Y5"}) == {103: [RowFailure(IN_SET, "checkup_code")]}
    assert failures_of("events", topic={100: "sports"}) == {100: [RowFailure(IN_SET, "topic")]}


def test_null_ward_code_means_all_wards_in_subscriptions_only():
    assert failures_of("subscriptions", ward_code={100: None}) == {}
    assert failures_of("subscriptions", ward_code={100: "401000"}) == {100: [RowFailure(IN_SET, "ward_code")]}
    assert failures_of("registry", ward_code={100: None}) == {100: [RowFailure(NOT_NULL, "ward_code")]}


def test_null_updated_at():
    assert failures_of("events", updated_at={102: None}) == {102: [RowFailure(NOT_NULL, "updated_at")]}


def test_nullable_integer_and_string_dtypes():
    data = frame("immunization", sex={100: None}, dose_number={101: 9})
    data = data.astype({"sex": "Int64", "dose_number": "Int64", "record_id": "string", "source_row": "int64"})
    data.index = [7, 3, 5, 1]  # the caller's index does not matter
    assert validate_frame("immunization", data).failures == {101: [RowFailure(BETWEEN, "dose_number")]}


def test_unexpected_column_flags_every_row():
    data = frame("registry", rows=2)
    data["resident_code"] = "12345678901"
    failures = validate_frame("registry", data).failures
    assert failures == {100: [RowFailure(COLUMNS, "*")], 101: [RowFailure(COLUMNS, "*")]}


def test_missing_column_fails_every_row_not_silently():
    data = frame("immunization", rows=2).drop(columns=["vaccine_code"])
    failures = validate_frame("immunization", data).failures
    assert set(failures) == {100, 101}
    assert RowFailure(IN_SET, "vaccine_code") in failures[100]
    assert RowFailure(COLUMNS, "*") in failures[100]


def test_neither_outcome_nor_log_carries_values(caplog):
    secret = "v1.SECRETTOKEN"
    changes = {"dept_pseudonym": {100: secret, 101: secret}, "status": {102: "ZZSECRET"}, "sex": {103: "SECRETSEX"}}
    with caplog.at_level("DEBUG"):
        outcome = validate_frame("registry", frame("registry", **changes))
    assert set(outcome.failures) == {100, 101, 102, 103}
    assert "SECRET" not in repr(outcome)
    assert "SECRET" not in caplog.text


def test_source_row_must_identify_rows():
    with pytest.raises(SourceError, match="source_row"):
        validate_frame("events", frame("events").drop(columns=["source_row"]))
    with pytest.raises(SourceError, match="unique"):
        validate_frame("events", frame("events", source_row={101: 100}))


def test_quarantine_reason_is_sorted_and_unique():
    failures = [
        RowFailure("parse_error", "birth_date"),
        RowFailure(IN_SET, "vaccine_code"),
        RowFailure("parse_error", "birth_date"),
    ]
    assert quarantine_reason(failures) == f"{IN_SET}:vaccine_code; parse_error:birth_date"
    assert quarantine_reason([]) == ""


def copy_suites(tmp_path):
    target = tmp_path / "expectations"
    shutil.copytree(load_suite_dir(), target)
    return target


def load_suite_dir():
    from renkei.settings import Settings

    return Settings.from_env().expectations_dir


def test_missing_suite_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nhi\.json.*RENKEI_EXPECTATIONS_DIR"):
        load_suite("nhi", tmp_path)


def test_unknown_expectation_type_is_not_dropped_silently(tmp_path):
    target = copy_suites(tmp_path)
    path = target / "events.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["expectations"].append({"type": "expect_column_values_to_be_sensible", "kwargs": {"column": "title"}})
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"accepted 15 of 16.*expect_column_values_to_be_sensible"):
        load_suite("events", target)


def test_invalid_json(tmp_path):
    target = copy_suites(tmp_path)
    (target / "nhi.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="nhi.json"):
        validate_frame("nhi", frame("nhi"), target)


def test_code_set_must_match_codes_yaml(tmp_path):
    target = copy_suites(tmp_path)
    path = target / "immunization.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    for entry in doc["expectations"]:
        if entry["kwargs"].get("column") == "vaccine_code" and entry["type"] == IN_SET:
            entry["kwargs"]["value_set"].remove("HPV")
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match="vaccine_codes"):
        load_suite("immunization", target)


def test_fifty_thousand_rows_find_the_one_bad_row():
    # Speed is measured in bench/, never asserted here; this checks the large-batch mapping.
    validate_frame("immunization", frame("immunization", rows=2))  # warm: GX import and suite build
    rows = 50_000
    records = [clean_row("immunization", i) for i in range(rows)]
    records[31_337]["vaccine_code"] = "NOPE"
    data = pd.DataFrame(records, dtype=object)
    outcome = validate_frame("immunization", data)
    assert outcome.failures == {31_337: [RowFailure(IN_SET, "vaccine_code")]}
    assert outcome.evaluated == rows


def test_department_text_in_parse_errors_never_reaches_the_reason():
    """parse_errors is written by the department: an insider's text (a name, a phone number, a
    long string) must not travel into the quarantine reason, logs or the UI — only known columns."""
    hostile = "ヤマダ ハナコ:090-1234-5678;name_kana:bad;" + "x" * 500 + ":y"
    found = failures_of("immunization", parse_errors={101: hostile})
    assert found == {101: [RowFailure(IS_NULL, "parse_errors"), RowFailure("parse_error", "name_kana"),
                           RowFailure("parse_error", "unrecognised")]}
    assert quarantine_reason(found[101]) == f"{IS_NULL}:parse_errors; parse_error:name_kana; parse_error:unrecognised"


@pytest.mark.parametrize("source,column", [("immunization", "record_id"), ("registry", "dept_pseudonym"),
                                           ("subscriptions", "subscription_id"), ("events", "event_id")])
def test_an_overlong_key_is_quarantined_not_a_failed_load(source, column):
    """The staging key columns are VARCHAR(120): a longer key would abort every PostgreSQL load."""
    found = failures_of(source, **{column: {100: "k" * 121, 101: "k" * 120}})
    assert found == {100: [RowFailure("expect_column_value_lengths_to_be_between", column)]}


def test_placeholder_dates_outside_datetime64_fail_between_on_their_rows_only():
    """0001-01-01 and 9999-12-31 (a system's "unknown" and "forever") are ISO dates outside
    datetime64[ns]'s years: they fail the 1868–2100 bound on their rows; they used to raise
    OutOfBoundsDatetime and fail the whole extract."""
    data = frame("registry", rows=5, birth_date={101: "0001-01-01", 103: "9999-12-31"})
    assert validate_frame("registry", data).failures == {
        101: [RowFailure(BETWEEN, "birth_date")], 103: [RowFailure(BETWEEN, "birth_date")],
    }
