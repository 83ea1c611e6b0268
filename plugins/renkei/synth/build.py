"""`generate`: build the synthetic city and write its departmental sources and manifest."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from renkei.errors import RenkeiError
from renkei.synth.city import build_city
from renkei.synth.defects import plan_defects
from renkei.synth.departments import (
    build_child_health, build_contacts, build_events, build_nhi, build_subscriptions,
)
from renkei.synth.immunization import build_immunization
from renkei.synth.table import SOURCE_ORDER, Table
from renkei.synth.writer import FORMATS, write_table

MAX_DEFECT_RATE = 0.5
# A fixed random stream per part, so one part's draws never shift another's.
_STREAMS = {"city": 1, "registry": 2, "registry_contact": 3, "immunization": 4, "child_health": 5,
            "nhi": 6, "subscriptions": 7, "events": 8, "defects": 9, "eras": 10}
# Department tables first: a registry defect goes only to residents without department rows.
_BUILDERS: dict[str, Callable] = {
    "immunization": build_immunization, "child_health": build_child_health, "nhi": build_nhi,
    "subscriptions": build_subscriptions, "registry_contact": build_contacts, "events": build_events,
}


def generate(residents: int, seed: int, as_of: datetime.date, out: Path, fmt: str = "sqlite",
             defect_rate: float = 0.005, progress: Callable[[str], None] | None = None) -> dict:
    """Write the raw departmental tables of a synthetic city of `residents` into `out`.

    Same arguments give byte-identical files. Returns the manifest (also `out/manifest.json`):
    seed, sizes, row counts per source, and the seeded defects by row number only.
    """
    _check_arguments(residents, seed, as_of, fmt, defect_rate)
    say = progress or (lambda _line: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def stream(part: str, source: str = "") -> np.random.Generator:
        return np.random.default_rng([seed, _STREAMS[part], _STREAMS.get(source, 0)])

    city = build_city(residents, as_of, stream("city"))
    say(f"city: {residents:,} residents")
    counts: dict[str, int] = {}
    entries: dict[str, list[dict]] = {}
    has_department_rows = np.zeros(city.size, dtype=bool)

    def emit(table: Table, eligible: np.ndarray | None = None) -> None:
        defects = plan_defects(table, fmt, defect_rate, stream("defects", table.source), eligible)
        eras = write_table(table, fmt, out, defects, stream("eras", table.source))
        counts[table.source] = table.n_rows
        entries[table.source] = sorted([d.entry(table.source) for d in defects.values()] + eras,
                                       key=lambda e: (e["row"], e["column"] or ""))
        say(f"{table.source}: {table.n_rows:,} rows, {len(defects)} defects, {len(eras)} era dates")

    for source, build in _BUILDERS.items():
        table = build(city, stream(source))
        if source in ("immunization", "child_health", "nhi", "subscriptions"):
            has_department_rows[table.resident] = True
        emit(table)
        del table

    # Registry rows in household order (世帯順); the row → resident map is `order`.
    order = np.argsort(city.household, kind="stable")
    registry = Table("registry", city.size, lambda rows: city.render_registry(order[rows]), order)
    emit(registry, eligible=np.flatnonzero(~has_department_rows[order]))

    manifest = {
        "seed": seed,
        "residents": residents,
        "as_of": as_of.isoformat(),
        "format": fmt,
        "defect_rate": defect_rate,
        "counts": {source: counts[source] for source in SOURCE_ORDER},
        "defects": [e for source in SOURCE_ORDER for e in entries[source]],
    }
    (out / "manifest.json").write_text(_manifest_json(manifest), encoding="utf-8")
    say(f"manifest: {len(manifest['defects']):,} entries → {out / 'manifest.json'}")
    return manifest


def _manifest_json(manifest: dict) -> str:
    """The manifest as JSON with one defect entry per line (diffable, and cheap for large runs)."""
    head = [f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}"
            for key, value in manifest.items() if key != "defects"]
    defects = ",\n".join(f"  {json.dumps(entry, ensure_ascii=False)}" for entry in manifest["defects"])
    return "{\n" + ",\n".join(head) + ',\n "defects": [\n' + defects + "\n ]\n}\n"


def _check_arguments(residents: int, seed: int, as_of: datetime.date, fmt: str, defect_rate: float) -> None:
    if not isinstance(residents, int) or residents < 100:
        raise RenkeiError(f"synth: residents={residents!r} is too small; give a whole number of at least 100")
    if not isinstance(seed, int) or seed < 0:
        raise RenkeiError(f"synth: seed={seed!r} is invalid; give a non-negative whole number")
    if not isinstance(as_of, datetime.date) or isinstance(as_of, datetime.datetime):
        raise RenkeiError("synth: as_of must be a datetime.date (e.g. date(2025, 6, 1))")
    if fmt not in FORMATS:
        raise RenkeiError(f"synth: format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    if not 0 <= defect_rate <= MAX_DEFECT_RATE:
        raise RenkeiError(f"synth: defect_rate={defect_rate!r} is out of range; give 0 to {MAX_DEFECT_RATE}")
