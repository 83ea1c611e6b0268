"""Per-value validation gives what GX gives reading every row: the same failing rows, reasons,
success and Data Docs counts, on batches full of odd values (issue 13, item 3).

The oracle is GX itself on the rows: the same suites run with per-value evaluation switched
off (``_Values.of`` returns nothing, so every expectation reads every row, as GX does alone).
"""

import random

import pandas as pd
import pytest
from test_gx_runner import SUITE_SIZES, clean_row

from renkei.quality import gx_runner
from renkei.quality.datadocs import RunValidation
from renkei.quality.gx_runner import RowFailure, validate_frame

# Values a department's system might put in any column: right and wrong types, blanks, edge dates.
TEXT = [
    None, "", " ", "1", "0", "01", "2", "9",
    "2024-02-30", "2024-1-5", "0001-01-01", "9999-12-31", "1868-01-24", "1868-01-25", "2100-01-01", "2100-01-02",
    "２０２４-０１-０１", "2024-01-15T00:00:00", "2025-04-01T09:30:00+09:00", "2025-04-01 09:30:00",
    "401064", "401099", "999999", "resident", "moved_out", "RESIDENT", "DPT_IPV_HIB", "MMR", "M4", "events",
    "x" * 121, "x" * 120, "v1.abc", "name:reason", "row:wrong_column_count",
]
INTS = [1, 2, 9, -1, 0, 10**20]
# Values whose type would make equal-but-different values collapse: these keep a column on the rows.
MIXED = [True, 1.0, -0.0, 0.0]


def odd_frame(source: str, rows: int, seed: int, share: float, pool: list) -> pd.DataFrame:
    """``rows`` clean rows of the source with about ``share`` of each column's cells replaced by
    a value drawn from ``pool``; keys stay unique in most rows, so uniqueness sees real duplicates."""
    rng = random.Random(seed)
    records = [clean_row(source, 1000 + i) for i in range(rows)]
    columns = [c for c in records[0] if c != "source_row"]
    for record in records:
        for column in columns:
            if rng.random() < share:
                record[column] = rng.choice(pool)
    return pd.DataFrame(records, dtype=object)


def outcome_and_docs(source, data, per_value: bool, monkeypatch):
    docs = RunValidation(source, "run-1")
    with monkeypatch.context() as patch:
        if not per_value:
            patch.setattr(gx_runner._Values, "of", classmethod(lambda cls, prepared, loaded: None))
        outcome = validate_frame(source, data, on_result=docs.add)
    pages = {}
    for result in docs.to_gx().results:
        config = result.expectation_config
        key = (config.type, tuple(sorted((k, str(v)) for k, v in config.kwargs.items())))
        pages[key] = (result.success, dict(result.result))
    return outcome, pages


def chosen_columns(source, data) -> set:
    loaded = gx_runner._cached_suite(*gx_runner._suite_key(source, None))
    values = gx_runner._Values.of(gx_runner._prepared(data), loaded)
    return set(values.codes) if values else set()


@pytest.mark.parametrize("source", SUITE_SIZES)
@pytest.mark.parametrize(("seed", "share", "pool"), [
    (1, 0.15, TEXT), (2, 0.5, TEXT), (3, 0.2, TEXT + INTS), (4, 0.3, TEXT + INTS + MIXED),
], ids=["text", "text-dense", "text-ints", "mixed"])
def test_per_value_equals_gx_on_every_row(source, seed, share, pool, monkeypatch):
    data = odd_frame(source, 300, seed, share, pool)
    fast, fast_pages = outcome_and_docs(source, data, True, monkeypatch)
    rows, row_pages = outcome_and_docs(source, data, False, monkeypatch)
    assert fast.failures == rows.failures
    assert (fast.success, fast.evaluated, fast.expectations) == (rows.success, rows.evaluated, rows.expectations)
    assert fast_pages == row_pages
    assert rows.failures, "the odd values must fail somewhere, or the comparison shows nothing"
    if pool is TEXT:  # the fast path really ran: some column was checked per value
        assert chosen_columns(source, data)


def test_mixed_types_stay_on_the_rows():
    """1, True and 1.0 are equal to a hash: such a column is not reduced to distinct values."""
    data = odd_frame("immunization", 40, 7, 0.0, TEXT)
    data["dose_number"] = [1, True, 1.0, 2] * 10
    assert "dose_number" not in chosen_columns("immunization", data)
    assert "vaccine_code" in chosen_columns("immunization", data)


def test_hand_counted_rows_and_counts():
    """10 rows, 3 with the unknown vaccine code MMR, 2 without a dose number: counted by hand."""
    data = odd_frame("immunization", 10, 0, 0.0, TEXT)
    data.loc[[1, 4, 7], "vaccine_code"] = "MMR"
    data.loc[[2, 4], "dose_number"] = None
    docs = RunValidation("immunization", "run-1")
    outcome = validate_frame("immunization", data, on_result=docs.add)
    in_set = RowFailure("expect_column_values_to_be_in_set", "vaccine_code")
    assert {row: fails for row, fails in outcome.failures.items()} == {
        1001: [in_set], 1004: [in_set], 1007: [in_set],
    }  # a missing dose number is no failure of between (GX skips missing values), and no null check is set on it
    counts = {(r.expectation_config.type, r.expectation_config.kwargs.get("column")): r.result
              for r in docs.to_gx().results}
    assert counts[("expect_column_values_to_be_in_set", "vaccine_code")]["unexpected_count"] == 3
    assert counts[("expect_column_values_to_be_in_set", "vaccine_code")]["element_count"] == 10
    assert counts[("expect_column_values_to_be_between", "dose_number")]["missing_count"] == 2
    assert counts[("expect_column_values_to_be_between", "dose_number")]["element_count"] == 10
