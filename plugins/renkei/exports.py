"""Running a department's export adapter on a schedule: the nightly reconcile.

The reconcile reads a source's complete key set and appends what an incremental export cannot
see — rows that vanished (tombstones) and changes whose department timestamp fell behind the
adapter's position — then announces them on the change channel. It runs where the department's
raw tables are reachable (``RENKEI_RAW_DIR``: ``<source>.csv`` or ``<source>.db``), from the DAG
``reconcile_<source>`` or by hand (``renkei pseudonymize --reconcile``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from renkei.errors import SourceError

log = logging.getLogger(__name__)


def reconcile_source(source_name: str, raw_dir: str | None = None, extracts_url: str | None = None) -> dict:
    """Reconcile one source's extract with its raw table and announce what it wrote; returns
    counts {"source", "mode", "read", "upserts", "deletes", "unchanged", "seconds", "announced"}."""
    from renkei.commands.emit import publish_event  # noqa: PLC0415
    from renkei.config import load_sources  # noqa: PLC0415
    from renkei.errors import RenkeiError  # noqa: PLC0415
    from renkei.events import ChangeEvent  # noqa: PLC0415
    from renkei.keys.adapter import RECONCILE, pseudonymize, raw_location  # noqa: PLC0415
    from renkei.keys.ring import KeyRing  # noqa: PLC0415
    from renkei.settings import Settings  # noqa: PLC0415

    source = load_sources()[source_name]
    folder = raw_dir or os.environ.get("RENKEI_RAW_DIR")
    if not folder:
        raise SourceError(f"reconcile {source_name}: RENKEI_RAW_DIR is not set: point it at the folder holding "
                          f"{source_name}.csv or {source_name}.db (the department's raw table)")
    location = raw_location(Path(folder), source_name)
    if location is None:
        raise SourceError(f"reconcile {source_name}: neither {source_name}.csv nor {source_name}.db in {folder}")
    res = pseudonymize(source, location, extracts_url or Settings.from_env().extracts_url, KeyRing.load(),
                       mode=RECONCILE)
    announced = False
    if res.written:
        try:
            publish_event(ChangeEvent(source=source_name, change_seq=res.last_seq, row_count=res.written))
            announced = True
        except RenkeiError as exc:  # the sweep schedule reads the extract anyway
            log.warning("reconcile %s: change event not sent: %s", source_name, exc)
    counts = {"source": source_name, "mode": res.mode, "read": res.read, "upserts": res.upserts,
              "deletes": res.deletes, "unchanged": res.unchanged, "seconds": res.seconds, "announced": announced}
    log.info("reconcile %s: %s", source_name, counts)
    return counts
