"""Validating an extract batch with its GX suite and turning failures into per-row quarantine reasons.

Great Expectations is imported lazily (≈3.5 s): importing this module is cheap. GX results
carry the offending values; this module keeps only which rows failed which expectation.

GX evaluates every expectation; what it is given differs by kind. A *per-value* expectation
(a column-map one without ``mostly`` or a row condition: null, in set, between, regex,
lengths) gives a row the verdict its value gets, whatever the other rows hold. For a column
with few distinct values in the batch (vaccine codes, dates, wards), GX checks each distinct
value once and the verdicts are mapped back to the rows; the results handed on are in row
terms (counts and row positions), as if GX had read every row. Everything else — uniqueness,
column pairs, row counts, columns with mostly-distinct values — runs on the rows themselves.
The quarantine reasons and Data Docs counts are the same either way (tests/unit/test_gx_per_value.py).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renkei.config import EXTRACT_RENAMES
from renkei.errors import ConfigError, SourceError

if TYPE_CHECKING:
    import pandas
    from great_expectations.core import ExpectationSuite

log = logging.getLogger(__name__)

# COMPLETE gives every failing row; exclude_unexpected_values keeps the values out of the
# result. Rows are found by position in a RangeIndex, so GX never reads source_row either.
_RESULT_FORMAT = {
    "result_format": "COMPLETE",
    "exclude_unexpected_values": True,
    "include_unexpected_rows": False,
    "partial_unexpected_count": 0,
    "return_unexpected_index_query": False,
}
PARSE_ERROR = "parse_error"
TABLE = "*"  # the column of a failure that concerns the whole batch


@dataclass(frozen=True, order=True)
class RowFailure:
    """One reason a row failed: the expectation type (or "parse_error") and the column checked.

    For a column-pair expectation the column is column_A (the one expected to be later); for
    a failure of the whole batch (e.g. the column set) it is "*".
    """

    expectation: str
    column: str


@dataclass(frozen=True)
class ValidationOutcome:
    """What validating one batch found."""

    evaluated: int  # rows in the batch
    failures: dict[int, list[RowFailure]]  # source_row -> failures, failing rows only
    expectations: int  # expectations run
    success: bool


# Column-map expectations whose verdict on a row depends on that row's value in one column
# alone (GX's ColumnMapExpectation with a pure per-value condition).
PER_VALUE = frozenset({
    "expect_column_values_to_be_null",
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_not_be_in_set",
    "expect_column_values_to_be_between",
    "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex",
    "expect_column_value_lengths_to_be_between",
    "expect_column_value_lengths_to_equal",
})
# Expectations about the column names only: the per-value frame has the batch's columns.
COLUMN_NAMES = frozenset({
    "expect_table_columns_to_match_set",
    "expect_table_columns_to_match_ordered_list",
    "expect_table_column_count_to_equal",
    "expect_column_to_exist",
})
# A column whose distinct values are at most this share of the batch's rows is checked per value.
PER_VALUE_SHARE = 0.5
# Value kinds for which equal (hash-equal) values are the same value to every expectation:
# not floats (0.0 == -0.0, yet their text differs) nor mixes (1 == True == 1.0).
_SAME_WHEN_EQUAL = frozenset({"string", "integer", "empty"})


@dataclass(frozen=True)
class _Part:
    """Expectations run on one view of the batch (as written, or with ISO dates as dates)."""

    entries: tuple[dict, ...]  # expectation configurations as JSON dicts
    per_value: tuple[str | None, ...]  # per entry: the column when it may run per value, else None
    name_only: tuple[bool, ...]  # per entry: it reads the column names only
    suites: dict = field(default_factory=dict, compare=False)  # chosen entries -> gx ExpectationSuite

    def suite(self, gx: Any, name: str, chosen: tuple[int, ...]) -> Any:
        found = self.suites.get(chosen)
        if found is None:
            found = self.suites[chosen] = gx.ExpectationSuite(
                name=name, expectations=[self.entries[i] for i in chosen])
        return found


@dataclass(frozen=True)
class _Suite:
    full: Any  # the gx ExpectationSuite as written in the file
    plain: _Part  # the part run on the extract as it is
    # Between-expectations with date bounds: GX 1.x coerces such bounds to dates and refuses
    # to compare dates with strings, so these run on a view where ISO date strings are dates.
    dated: _Part | None
    dated_columns: tuple[str, ...]


def _expectations_dir(expectations_dir: Path | None) -> Path:
    if expectations_dir is not None:
        return Path(expectations_dir)
    from renkei.settings import Settings

    return Settings.from_env().expectations_dir


def load_suite(source: str, expectations_dir: Path | None = None) -> ExpectationSuite:
    """The GX ExpectationSuite of a source from `<expectations_dir>/<source>.json`.

    Raises ConfigError (naming the file, the key and the fix) when the file is missing or
    invalid, when GX did not accept every expectation in it, or when a code set in it no
    longer matches config/codes.yaml.
    """
    return _cached_suite(*_suite_key(source, expectations_dir)).full


def suite_fingerprint(source: str, expectations_dir: Path | None = None) -> str:
    """SHA-256 of the source's suite file: results computed under another fingerprint are stale."""
    path, _ = _suite_key(source, expectations_dir)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _suite_key(source: str, expectations_dir: Path | None) -> tuple[Path, int]:
    path = _expectations_dir(expectations_dir) / f"{source}.json"
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        raise ConfigError(
            f"{path}: suite file not found for source {source!r}; write it (one GX suite per source) "
            "or point RENKEI_EXPECTATIONS_DIR at the folder holding the suites"
        ) from None
    return path, mtime


@lru_cache(maxsize=32)
def _cached_suite(path: Path, mtime_ns: int) -> _Suite:
    import great_expectations as gx

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable JSON file ({type(error).__name__}); fix the syntax") from None
    if not isinstance(document, dict) or not isinstance(document.get("expectations"), list):
        raise ConfigError(f"{path}: key 'expectations' must be a list of {{type, kwargs, meta}}")
    if document.get("name") != path.stem:
        raise ConfigError(f"{path}: key 'name' must be {path.stem!r}, the file's own name")
    entries = document["expectations"]
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ConfigError(f"{path}: expectations[{number}] needs a 'type' and 'kwargs'")
    _check_code_sets(path, entries)
    suite = gx.ExpectationSuite(name=document["name"], expectations=entries, meta=document.get("meta") or {})
    if len(suite.expectations) != len(entries):
        accepted = {e.configuration.type for e in suite.expectations}
        dropped = sorted({e["type"] for e in entries} - accepted) or ["(an entry with invalid kwargs)"]
        raise ConfigError(
            f"{path}: GX accepted {len(suite.expectations)} of {len(entries)} expectations; "
            f"rejected: {', '.join(dropped)}; fix the type name or kwargs (GX 1.x names)"
        )
    return _split(gx, suite)


def _check_code_sets(path: Path, entries: list[dict]) -> None:
    """A value_set tagged meta.codes must equal that key of codes.yaml (the city's code list)."""
    tagged = [entry for entry in entries if (entry.get("meta") or {}).get("codes")]
    if not tagged:
        return
    from renkei.config import load_codes

    codes = load_codes()
    for entry in tagged:
        key = entry["meta"]["codes"]
        if key not in codes:
            raise ConfigError(f"{path}: meta.codes {key!r} is not a key of config/codes.yaml; fix the key")
        # a mapping (wards: code -> name) contributes its keys
        if set(entry.get("kwargs", {}).get("value_set") or []) != set(codes[key]):
            raise ConfigError(
                f"{path}: value_set of {entry['type']} on {entry.get('kwargs', {}).get('column')!r} differs "
                f"from config/codes.yaml key {key!r}; copy the codes from codes.yaml into the suite"
            )


def _is_date_bound(value: Any) -> bool:
    return isinstance(value, datetime.date)


def _split(gx: Any, suite: Any) -> _Suite:
    plain, dated, dated_columns = [], [], []
    for expectation in suite.expectations:
        kwargs = expectation.configuration.kwargs
        if expectation.configuration.type == "expect_column_values_to_be_between" and (
            _is_date_bound(kwargs.get("min_value")) or _is_date_bound(kwargs.get("max_value"))
        ):
            entry = expectation.configuration.to_json_dict()
            for bound in ("min_value", "max_value"):  # midnight: compared with the datetime64 view
                if _is_date_bound(kwargs.get(bound)):
                    entry["kwargs"][bound] = datetime.datetime.combine(kwargs[bound], datetime.time())
            dated.append(entry)
            dated_columns.append(kwargs["column"])
        else:
            plain.append(expectation.configuration.to_json_dict())
    return _Suite(
        full=suite,
        plain=_part(plain),
        dated=_part(dated) if dated else None,
        dated_columns=tuple(dict.fromkeys(dated_columns)),
    )


def _part(entries: list[dict]) -> _Part:
    def per_value(entry: dict) -> str | None:
        kwargs = entry.get("kwargs") or {}
        if entry["type"] not in PER_VALUE or kwargs.get("row_condition") or kwargs.get("mostly") not in (None, 1, 1.0):
            return None
        return str(kwargs["column"]) if "column" in kwargs else None

    return _Part(entries=tuple(entries), per_value=tuple(per_value(e) for e in entries),
                 name_only=tuple(e["type"] in COLUMN_NAMES for e in entries))


@lru_cache(maxsize=1)
def _batch_definition() -> Any:
    """One ephemeral GX context per process, with one whole-dataframe batch definition."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("renkei").add_dataframe_asset("extract")
    return asset.add_batch_definition_whole_dataframe("batch")


def _prepared(frame: pandas.DataFrame) -> pandas.DataFrame:
    """The frame as plain Python objects (None for missing) on a 0..n-1 index."""
    prepared = frame.reset_index(drop=True).astype(object)
    return prepared.where(prepared.notna(), None)


_ISO_DATE = r"\d{4}-\d{2}-\d{2}"
_NS_FIRST_DAY, _NS_LAST_DAY = "1677-09-22", "2262-04-10"  # whole days inside datetime64[ns]


def _as_date(value: Any) -> Any:
    # A value that is not an ISO date is the format expectation's to report, not this one's.
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _dated_view(prepared: pandas.DataFrame, columns: tuple[str, ...]) -> pandas.DataFrame:
    """The date columns as datetime64 (NaT where not a date), so that GX compares them with
    the bounds vectorised instead of value by value; the same dates as ``date.fromisoformat``."""
    import pandas as pd

    present = {}
    for column in columns:
        if column not in prepared.columns:
            continue  # an absent column stays absent, so that its expectation fails loudly for the batch
        values = prepared[column]
        iso = values.str.fullmatch(_ISO_DATE).fillna(False).astype(bool)
        dates = values.where(iso)
        # nanoseconds: GX compares only datetime64[ns] vectorised (pandas 3 infers [us]). A date
        # outside its years 1677–2262 (a placeholder 0001-01-01) stands in as its first or last
        # whole day: the bounds lie inside, so the verdict is the same (ISO text sorts as dates).
        text = values[iso]  # ISO strings only: another type does not compare with text
        dates[text.index[text < _NS_FIRST_DAY]] = _NS_FIRST_DAY
        dates[text.index[text > _NS_LAST_DAY]] = _NS_LAST_DAY
        parsed = pd.to_datetime(dates, format="%Y-%m-%d", errors="coerce").astype("datetime64[ns]")
        # The rest value by value: other ISO forms fromisoformat reads, and dates outside
        # datetime64's years 1677–2262, which stand in as its ends (the bounds lie inside).
        for position in (parsed.isna() & values.notna()).to_numpy().nonzero()[0]:
            found = _as_date(values.iat[position])
            if found is not None:
                try:
                    parsed.iat[position] = pd.Timestamp(found)
                except (OverflowError, ValueError):
                    parsed.iat[position] = pd.Timestamp.min if found.year < 1677 else pd.Timestamp.max
        present[column] = parsed
    return pd.DataFrame(present, index=prepared.index)


def _column_of(config: Any) -> str:
    kwargs = config.kwargs
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_A" in kwargs:
        return str(kwargs["column_A"])
    if "column_list" in kwargs:
        return ",".join(kwargs["column_list"])
    return TABLE


def _collect(results: Any, rows: int, flagged: dict[int, set[RowFailure]]) -> bool:
    """Add each result's failing row positions to `flagged`; True when every expectation passed."""
    all_passed = True
    for result in results.results:
        config = result.expectation_config
        failure = RowFailure(config.type, _column_of(config))
        raised = any(info.get("raised_exception") for info in _exception_infos(result))
        positions = (result.result or {}).get("unexpected_index_list") or []
        if raised or (not result.success and not positions):
            # No row positions (an error, or a batch-level expectation): every row carries it.
            # The exception text is not logged: it may quote a value.
            log.warning("%s on %s failed for the whole batch (raised: %s)", failure.expectation, failure.column, raised)
            positions = range(rows)
        for position in positions:
            flagged.setdefault(int(position), set()).add(failure)
        all_passed = all_passed and bool(result.success) and not raised
    return all_passed


def _exception_infos(result: Any) -> list[dict]:
    info = result.exception_info or {}
    if "raised_exception" in info:
        return [info]
    return [value for value in info.values() if isinstance(value, dict)]


def validate_frame(
    source: str, frame: pandas.DataFrame, expectations_dir: Path | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> ValidationOutcome:
    """Run the source's suite on an extract batch and report the failing rows by source_row.

    Rows whose parse_errors lists "column:reason" items also get RowFailure("parse_error",
    column) per column. An expectation that fails without row positions (an error, or a
    batch-level expectation) is reported against every row. Raises ConfigError for a bad
    suite and SourceError when source_row is missing, null or not unique. ``on_result`` gets
    each GX result as it is (e.g. renkei.quality.datadocs.RunValidation.add).
    """
    loaded = _cached_suite(*_suite_key(source, expectations_dir))
    if "source_row" not in frame.columns:
        raise SourceError(
            f"extract batch of {source!r} has no source_row column; the export adapter must number its rows"
        )
    prepared = _prepared(frame)
    source_rows = prepared["source_row"].tolist()
    if any(row is None for row in source_rows) or len(set(source_rows)) != len(source_rows):
        raise SourceError(
            f"extract batch of {source!r}: source_row must be set and unique in a batch; "
            "fix the export adapter's row numbering"
        )
    rows = len(prepared)
    flagged: dict[int, set[RowFailure]] = {}
    values = _Values.of(prepared, loaded)
    all_passed = _run_part(source, loaded.plain, prepared, values, None, rows, flagged, on_result)
    if loaded.dated is not None:
        all_passed = _run_part(
            f"{source}.dated", loaded.dated, prepared, values, loaded.dated_columns, rows, flagged, on_result
        ) and all_passed

    if "parse_errors" in prepared.columns:
        known = set(prepared.columns) | set(EXTRACT_RENAMES) | {WHOLE_ROW}
        for position, listed in enumerate(prepared["parse_errors"].tolist()):
            for item in _parse_error_items(listed, known):
                flagged.setdefault(position, set()).add(RowFailure(PARSE_ERROR, item))

    failures = {int(source_rows[position]): sorted(found) for position, found in sorted(flagged.items())}
    if failures:
        log.info("%s: %d of %d rows failed validation", source, len(failures), rows)
    return ValidationOutcome(
        evaluated=rows, failures=failures, expectations=len(loaded.full.expectations), success=all_passed and not failures
    )


@dataclass(frozen=True)
class _Values:
    """The batch's columns with few distinct values: each column's distinct values (a frame
    padded to the longest with the column's first value) and each row's index into them."""

    frame: Any  # pandas.DataFrame: every column of the batch; the chosen ones hold distinct values
    codes: dict[str, Any]  # column -> numpy array: row -> position of its value in the frame
    counts: dict[str, int]  # column -> number of distinct values

    @classmethod
    def of(cls, prepared: pandas.DataFrame, loaded: _Suite) -> _Values | None:
        import pandas as pd

        rows = len(prepared)
        if not rows:
            return None
        wanted = {c for part in (loaded.plain, loaded.dated) if part for c in part.per_value if c}
        codes, uniques = {}, {}
        for column in sorted(wanted & set(prepared.columns)):
            series = prepared[column]
            if pd.api.types.infer_dtype(series, skipna=True) not in _SAME_WHEN_EQUAL:
                continue
            found, distinct = pd.factorize(series, use_na_sentinel=False)
            if len(distinct) > max(1, rows * PER_VALUE_SHARE):
                continue
            distinct = pd.Series(distinct, dtype=object)
            codes[column] = found
            uniques[column] = distinct.where(distinct.notna(), None).tolist()
        if not codes:
            return None
        length = max(len(v) for v in uniques.values())
        # A padded place repeats the column's first value: a repeat changes no verdict, and
        # only the first len(distinct) positions are mapped back.
        data = {c: (uniques[c] + [uniques[c][0]] * (length - len(uniques[c]))) if c in uniques
                else [None] * length for c in prepared.columns}
        frame = pd.DataFrame(data, columns=prepared.columns, dtype=object)
        return cls(frame=frame, codes=codes, counts={c: len(v) for c, v in uniques.items()})

    def to_rows(self, item: Any, rows: int, view: pandas.DataFrame) -> None:
        """Rewrite one per-value result in row terms: positions and counts of the rows.
        ``view`` is the frame GX read (missing there: null, or no date in the dated view)."""
        import numpy as np

        column = str(item.expectation_config.kwargs["column"])
        found = item.result
        if found is None:
            return
        distinct = self.counts[column]
        positions = [int(p) for p in found.get("unexpected_index_list") or [] if int(p) < distinct]
        failing = np.isin(self.codes[column], positions).nonzero()[0].tolist() if positions else []
        found["unexpected_index_list"] = failing
        found["element_count"] = rows
        found["unexpected_count"] = len(failing)
        if "missing_count" in found:
            absent = view[column].isna().to_numpy()[:distinct].nonzero()[0]
            found["missing_count"] = int(np.isin(self.codes[column], absent).sum()) if len(absent) else 0
        missing = found.get("missing_count", 0)
        for key, value in (
            ("missing_percent", 100.0 * missing / rows if rows else None),
            ("unexpected_percent_total", 100.0 * len(failing) / rows if rows else None),
            ("unexpected_percent_nonmissing", 100.0 * len(failing) / (rows - missing) if rows - missing else None),
        ):
            if key in found:
                found[key] = value
        if "unexpected_percent" in found:
            # GX: of the non-missing rows when it counts missing ones, else of all rows
            base = rows - missing if "missing_count" in found else rows
            found["unexpected_percent"] = 100.0 * len(failing) / base if base else None
        found.pop("partial_unexpected_list", None)


_COLUMN_KWARGS = ("column", "column_A", "column_B")


def _columns_for(part: _Part, chosen: tuple[int, ...], prepared: pandas.DataFrame) -> pandas.DataFrame:
    """The batch with only the columns the chosen expectations read (GX hashes the whole frame
    it is given, which costs as much as checking it); all of it when one reads the table."""
    wanted: list[str] = []
    for i in chosen:
        kwargs = part.entries[i].get("kwargs") or {}
        named = [kwargs[k] for k in _COLUMN_KWARGS if k in kwargs] + list(kwargs.get("column_list") or [])
        if not named or part.name_only[i] or kwargs.get("row_condition"):
            return prepared
        wanted.extend(str(c) for c in named)
    return prepared[[c for c in prepared.columns if c in set(wanted)]]


def _run_part(
    name: str, part: _Part, prepared: pandas.DataFrame, values: _Values | None,
    dated_columns: tuple[str, ...] | None, rows: int, flagged: dict[int, set[RowFailure]],
    on_result: Callable[[Any], None] | None,
) -> bool:
    """Validate one part of the suite: per value where it can, the rest on the rows."""
    import great_expectations as gx

    per_value = tuple(i for i, column in enumerate(part.per_value)
                      if values is not None and column in values.codes)
    # Column-name checks ride along with the per-value frame (it has the batch's columns).
    if per_value:
        per_value += tuple(i for i, names in enumerate(part.name_only) if names)
    on_rows = tuple(i for i in range(len(part.entries)) if i not in per_value)
    all_passed = True
    batch_definition = _batch_definition()
    for chosen, frame in ((on_rows, _columns_for(part, on_rows, prepared)),
                          (tuple(sorted(per_value)), values.frame if per_value else None)):
        if not chosen:
            continue
        view = _dated_view(frame, dated_columns) if dated_columns is not None else frame
        result = batch_definition.get_batch(batch_parameters={"dataframe": view}).validate(
            part.suite(gx, name, chosen), result_format=_RESULT_FORMAT
        )
        if chosen is not on_rows:
            for item in result.results:
                if item.expectation_config.type not in COLUMN_NAMES:
                    values.to_rows(item, rows, view)
        all_passed = _collect(result, rows, flagged) and all_passed
        if on_result is not None:
            on_result(result)
    return all_passed


UNRECOGNISED = "unrecognised"  # a parse_errors item naming no column of the source
WHOLE_ROW = "row"  # the adapter's item for a row it could not split (row:wrong_column_count)


def _parse_error_items(listed: Any, known: set[str]) -> list[str]:
    """The column names in "column:reason;column:reason" (a column alone when no reason).

    parse_errors is department-written text: only a column the source has is named back (in
    the quarantine reason, logs, XCom and the UI); anything else becomes ``unrecognised``."""
    if not isinstance(listed, str) or not listed.strip():
        return []
    items = (item.split(":", 1)[0].strip() or TABLE for item in listed.split(";") if item.strip())
    return sorted({item if item in known or item == TABLE else UNRECOGNISED for item in items})


def quarantine_reason(failures: list[RowFailure], landed: str | None = None) -> str:
    """One line for the quarantine table, e.g. "expect_column_values_to_be_in_set:vaccine_code; parse_error:birth_date"
    (with ``landed``: that reason's items and the failures', each once)."""
    items = {f"{failure.expectation}:{failure.column}" for failure in failures}
    return "; ".join(sorted(items.union(landed.split("; ") if landed else ())))
