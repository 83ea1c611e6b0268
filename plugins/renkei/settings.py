"""Where things are: the warehouse, the extracts, the keyring, config and suites.

Everything comes from the environment (or, inside Airflow, from env vars set on the
deployment), never from code: ``RENKEI_WAREHOUSE_URL``, ``RENKEI_EXTRACTS_URL``,
``RENKEI_KEYRING``, ``RENKEI_CONFIG_DIR``, ``RENKEI_EXPECTATIONS_DIR``. Defaults are embedded
SQLite files under ``var/`` so that nothing needs a server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from renkei.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_var() -> Path:
    return Path(os.environ.get("RENKEI_HOME", REPO_ROOT / "var" / "renkei"))


@dataclass(frozen=True)
class Settings:
    warehouse_url: str
    extracts_url: str
    config_dir: Path
    expectations_dir: Path

    @classmethod
    def from_env(cls) -> "Settings":
        var = _default_var()
        return cls(
            warehouse_url=os.environ.get("RENKEI_WAREHOUSE_URL", f"sqlite:///{var / 'warehouse.db'}"),
            extracts_url=os.environ.get("RENKEI_EXTRACTS_URL", f"sqlite:///{var / 'extracts.db'}"),
            config_dir=Path(os.environ.get("RENKEI_CONFIG_DIR", REPO_ROOT / "config")),
            expectations_dir=Path(os.environ.get("RENKEI_EXPECTATIONS_DIR", REPO_ROOT / "expectations")),
        )


def services_parts(env: dict[str, str] | None = None) -> int:
    """How many parts a full services run is split into (``RENKEI_SERVICES_PARTS``, default 2:
    one per task slot of a two-core worker); each part is an Airflow mapped task."""
    raw = (os.environ if env is None else env).get("RENKEI_SERVICES_PARTS", "2")
    try:
        parts = int(raw)
    except ValueError:
        parts = 0
    if not 1 <= parts <= 64:
        raise ConfigError(f"RENKEI_SERVICES_PARTS={raw!r}: set a whole number from 1 to 64 (the worker slots to use)")
    return parts


def first_scheduled_run_latest(env: dict[str, str] | None = None) -> bool:
    """Whether a DAG that has never run starts with its latest past tick (``latest``) or waits
    for its next one (``next``, the default): ``RENKEI_FIRST_SCHEDULED_RUN``."""
    raw = (os.environ if env is None else env).get("RENKEI_FIRST_SCHEDULED_RUN", "next").strip().lower()
    if raw not in ("next", "latest"):
        raise ConfigError(f"RENKEI_FIRST_SCHEDULED_RUN={raw!r}: set `next` (a new deployment waits for each "
                          "schedule's next tick) or `latest` (it runs the latest past tick at once)")
    return raw == "latest"


def redact_url(url: str) -> str:
    """A database URL without its password, for messages and reports."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415 - keep `import renkei` light

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: show only its scheme
        return url.split(":", 1)[0] + ":…"
