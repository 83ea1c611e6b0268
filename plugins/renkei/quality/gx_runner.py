"""Validating an extract batch with its GX suite and turning failures into per-row quarantine reasons.

Great Expectations is imported lazily (≈3.5 s): importing this module is cheap. GX results
carry the offending values; this module keeps only which rows failed which expectation.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Suite:
    full: Any  # the gx ExpectationSuite as written in the file
    plain: Any  # the part run on the extract as it is
    # Between-expectations with date bounds: GX 1.x coerces such bounds to dates and refuses
    # to compare dates with strings, so these run on a view where ISO date strings are dates.
    dated: Any | None
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
        plain=gx.ExpectationSuite(name=suite.name, expectations=plain),
        dated=gx.ExpectationSuite(name=f"{suite.name}.dated", expectations=dated) if dated else None,
        dated_columns=tuple(dict.fromkeys(dated_columns)),
    )


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
        # nanoseconds: GX compares only datetime64[ns] vectorised (pandas 3 infers [us])
        parsed = pd.to_datetime(values.where(iso), format="%Y-%m-%d", errors="coerce").astype("datetime64[ns]")
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
    batch_definition = _batch_definition()
    plain = batch_definition.get_batch(batch_parameters={"dataframe": prepared}).validate(
        loaded.plain, result_format=_RESULT_FORMAT
    )
    all_passed = _collect(plain, rows, flagged)
    if on_result is not None:
        on_result(plain)
    if loaded.dated is not None:
        view = _dated_view(prepared, loaded.dated_columns)
        dated = batch_definition.get_batch(batch_parameters={"dataframe": view}).validate(
            loaded.dated, result_format=_RESULT_FORMAT
        )
        all_passed = _collect(dated, rows, flagged) and all_passed
        if on_result is not None:
            on_result(dated)

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
