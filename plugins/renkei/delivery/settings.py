"""Where delivery reads and writes: the warehouse, the delivery DB, the raw registry, the keyring."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from renkei.delivery.receipts import default_url
from renkei.errors import RenkeiError
from renkei.keys.ring import ENV_PATH
from renkei.settings import REPO_ROOT, Settings


@dataclass(frozen=True)
class DeliverySettings:
    warehouse_url: str
    delivery_url: str
    raw_dir: Path  # the registry's raw drop (registry, registry_contact)
    keyring_path: Path | None  # None: $RENKEI_KEYRING or the Airflow Variable

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "DeliverySettings":
        """RENKEI_WAREHOUSE_URL, RENKEI_DELIVERY_URL, RENKEI_RAW_DIR (required), RENKEI_KEYRING."""
        env = os.environ if env is None else env
        raw = env.get("RENKEI_RAW_DIR")
        if not raw:
            raise RenkeiError("RENKEI_RAW_DIR is not set: point it at the folder holding registry and registry_contact")
        home = Path(env.get("RENKEI_HOME", REPO_ROOT / "var" / "renkei"))
        return cls(
            warehouse_url=env.get("RENKEI_WAREHOUSE_URL") or Settings.from_env().warehouse_url,
            delivery_url=env.get("RENKEI_DELIVERY_URL") or default_url(home),
            raw_dir=Path(raw),
            keyring_path=Path(env[ENV_PATH]) if env.get(ENV_PATH) else None,
        )

    @classmethod
    def from_work(cls, work: Path, warehouse: str | None = None, keyring: str | None = None,
                  env: dict[str, str] | None = None) -> "DeliverySettings":
        """The settings of a `renkei run` work dir (its run_report.json), flags and env first."""
        env = os.environ if env is None else env
        work = Path(work)
        report_path = work / "run_report.json"
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RenkeiError(f"{report_path} not found: run `renkei run --raw DIR --as-of D --work {work}` first") from None
        except ValueError:
            raise RenkeiError(f"{report_path} is not JSON: re-run `renkei run` for this work dir") from None
        return cls(
            warehouse_url=warehouse_url_of(work, report, warehouse, env),
            delivery_url=env.get("RENKEI_DELIVERY_URL") or default_url(work),
            raw_dir=raw_dir_of(report, report_path),
            keyring_path=Path(keyring or env.get(ENV_PATH) or work / "keyring.json"),
        )


def warehouse_url_of(work: Path, report: dict, given: str | None, env: dict[str, str]) -> str:
    """--warehouse, else the report's URL unless its password was redacted, else $RENKEI_WAREHOUSE_URL."""
    if given:
        return given
    url = report.get("warehouse_url")
    if url and "***" not in url:
        return url
    if env.get("RENKEI_WAREHOUSE_URL"):
        return env["RENKEI_WAREHOUSE_URL"]
    if not url and (work / "warehouse.db").exists():
        return f"sqlite:///{(work / 'warehouse.db').resolve()}"
    raise RenkeiError(f"{work}/run_report.json has no usable warehouse URL (the password is redacted): pass --warehouse URL")


def raw_dir_of(report: dict, report_path: Path) -> Path:
    if report.get("raw_dir"):
        return Path(report["raw_dir"])
    registry = (report.get("raw_sources") or {}).get("registry")
    if registry:
        return Path(registry).parent
    raise RenkeiError(f"{report_path} names no raw folder (raw_dir / raw_sources.registry): re-run `renkei run`")
