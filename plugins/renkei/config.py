"""Loading and validating config/sources.yaml and config/codes.yaml.

Config is data: a city edits these files, not code. Every error names the file, the key and the
fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from renkei.errors import ConfigError
from renkei.settings import Settings

COLUMN_TYPES = {"text", "int", "date", "timestamp", "drop"}
# How a raw personal column becomes an extract column.
EXTRACT_RENAMES = {
    "resident_code": "dept_pseudonym",
    "household_code": "household_pseudonym",
    "name_kana": "name_sealed",
    "address": "address_sealed",
}
# Quasi-identifiers leave the department sealed under its own key (extract column, with the
# plaintext's domain prefix); the pipeline turns them into match digests (staging column) in the
# same pass as pseudonym → ERK, so no department key can make or reverse a match digest.
SEALED_COLUMNS = {"name_sealed": ("name", "name_digest"), "address_sealed": ("address", "address_digest")}


@dataclass(frozen=True)
class Source:
    """One departmental source as configured."""

    name: str
    title: str
    personal: bool
    key: str
    department: str | None
    ingest: bool
    columns: dict[str, str]  # raw column -> type
    max_failure_rate: float
    min_failures_to_halt: int
    chunk_rows: int
    validate_chunk_rows: int
    sweep_cron: str
    quarantine_fail_safe: str | None = None  # staged column set when an update of a record is rejected
    # Change capture (renkei.keys.adapter): the department column that hints at changes (None:
    # diff every export in full), how far before the adapter's position an incremental read
    # starts, how far past the export time an updated_at may be before it is quarantined, and
    # when the reconcile (full key diff, tombstones) runs.
    change_column: str | None = "updated_at"
    change_overlap_minutes: int = 120
    max_clock_skew_minutes: int = 10
    reconcile_cron: str = "30 2 * * *"

    @property
    def raw_columns(self) -> list[str]:
        return list(self.columns)

    def extract_column(self, raw: str) -> str:
        if not self.personal:
            return raw
        if raw == "address" and self.name == "registry_contact":
            return raw
        return EXTRACT_RENAMES.get(raw, raw)

    @property
    def extract_columns(self) -> list[str]:
        """The columns of the pseudonymized extract, in order (without bookkeeping columns)."""
        return [self.extract_column(c) for c, t in self.columns.items() if t != "drop"]

    @property
    def key_purpose(self) -> str:
        return f"dept:{self.department}"


def _load_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found: set RENKEI_CONFIG_DIR to the folder holding the config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}): fix the syntax") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return doc


@lru_cache(maxsize=8)
def load_sources(config_dir: Path | None = None) -> dict[str, Source]:
    """All configured sources by name, validated."""
    cdir = Path(config_dir or Settings.from_env().config_dir)
    path = cdir / "sources.yaml"
    doc = _load_yaml(path)
    defaults = doc.get("defaults") or {}
    out: dict[str, Source] = {}
    for name, spec in (doc.get("sources") or {}).items():
        where = f"{path}: sources.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a mapping")
        cols = spec.get("columns")
        if not isinstance(cols, dict) or not cols:
            raise ConfigError(f"{where}.columns: give the raw columns as {{name: type}}")
        for c, t in cols.items():
            if t not in COLUMN_TYPES:
                raise ConfigError(f"{where}.columns.{c}: unknown type {t!r}; use one of {sorted(COLUMN_TYPES)}")
        personal = bool(spec.get("personal", False))
        if personal and "resident_code" not in cols:
            raise ConfigError(f"{where}: a personal source needs a resident_code column")
        if personal and not spec.get("department"):
            raise ConfigError(f"{where}.department: name the department whose key seals its pseudonyms")
        key = spec.get("key")
        src = Source(
            name=name,
            title=str(spec.get("title", name)),
            personal=personal,
            key=str(key),
            department=spec.get("department"),
            ingest=bool(spec.get("ingest", True)),
            columns=dict(cols),
            max_failure_rate=float(spec.get("max_failure_rate", defaults.get("max_failure_rate", 0.05))),
            min_failures_to_halt=int(spec.get("min_failures_to_halt", defaults.get("min_failures_to_halt", 10))),
            quarantine_fail_safe=spec.get("quarantine_fail_safe"),
            sweep_cron=str(spec.get("sweep_cron", defaults.get("sweep_cron", "*/5 * * * *"))),
            chunk_rows=int(spec.get("chunk_rows", defaults.get("chunk_rows", 50000))),
            validate_chunk_rows=int(spec.get("validate_chunk_rows", defaults.get("validate_chunk_rows", 100000))),
            change_column=spec.get("change_column", defaults.get("change_column", "updated_at" if "updated_at" in cols else None)),
            change_overlap_minutes=int(spec.get("change_overlap_minutes", defaults.get("change_overlap_minutes", 120))),
            max_clock_skew_minutes=int(spec.get("max_clock_skew_minutes", defaults.get("max_clock_skew_minutes", 10))),
            reconcile_cron=str(spec.get("reconcile_cron", defaults.get("reconcile_cron", "30 2 * * *"))),
        )
        if src.change_column is not None and cols.get(src.change_column) != "timestamp":
            raise ConfigError(f"{where}.change_column: {src.change_column!r} is not a timestamp column of the source; "
                              "name one, or null to diff every export in full")
        if src.quarantine_fail_safe and src.quarantine_fail_safe not in src.extract_columns:
            raise ConfigError(f"{where}.quarantine_fail_safe: {src.quarantine_fail_safe!r} is not a column of the source")
        if key not in src.extract_columns:
            raise ConfigError(f"{where}.key: {key!r} is not an extract column; use one of {src.extract_columns}")
        out[name] = src
    if not out:
        raise ConfigError(f"{path}: no sources configured under 'sources'")
    return out


def ingest_sources(config_dir: Path | None = None) -> list[Source]:
    return [s for s in load_sources(config_dir).values() if s.ingest]


@lru_cache(maxsize=8)
def load_codes(config_dir: Path | None = None) -> dict:
    cdir = Path(config_dir or Settings.from_env().config_dir)
    return _load_yaml(cdir / "codes.yaml")
