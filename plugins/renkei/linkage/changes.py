"""Which residents a mart build must rebuild: the ERKs touched by ingest runs it has not consumed.

Every ingest run that reached ``loaded`` is identified by (run_id, source, updated_at) in
``ingest_runs``; a mart build records the ones it consumed in ``link_consumed`` (a re-loaded
run has a new updated_at, so it counts again). The residents affected by the runs not yet
consumed are the ERKs of

- staging rows those runs loaded (``loaded_run_id``): the record's ERK now;
- staged rows those runs retired by a department tombstone (``staging_deleted``);
- rows the runs changed without loading them: a rejected update of a known record that the
  source's ``quarantine_fail_safe`` applied to its staged row (an opt-out);
- the ERK a record left when a load re-linked it to another resident (a department correcting
  a mislink): ``staging_moved``, written by the load before its upsert. That old ERK is
  nowhere else to be found; it used to be found by recounting every resident's records in the
  source against ``linkage`` (a GROUP BY over the whole staging table: 1.7 s of a 3.3 s
  incremental build at a million residents).

Nothing of the mart depends on another resident's rows (household keys are copied per
resident, not joined), so rebuilding exactly these ERKs gives the mart a full build gives.
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa

from renkei.config import Source
from renkei.warehouse import (
    ingest_runs,
    link_consumed,
    quarantine,
    staging_deleted,
    staging_key,
    staging_moved,
    staging_table,
)

Run = tuple[str, str, str]  # (run_id, source, updated_at)


def new_ingest_runs(conn: sa.Connection) -> list[Run]:
    """Loaded ingest runs no mart build has consumed yet."""
    r, c = ingest_runs.c, link_consumed.c
    seen = sa.select(c.run_id).where(c.run_id == r.run_id, c.source == r.source, c.updated_at == r.updated_at)
    q = sa.select(r.run_id, r.source, r.updated_at).where(r.state == "loaded", ~seen.exists())
    return [tuple(row) for row in conn.execute(q)]


def consume(conn: sa.Connection, runs: list[Run], build_seq: int) -> None:
    if runs:
        conn.execute(sa.insert(link_consumed), [
            {"run_id": run, "source": src, "updated_at": at, "build_seq": build_seq} for run, src, at in runs])


def affected_erks(srcs: dict[str, Source], runs: list[Run]) -> sa.Select | None:
    """One SELECT of the ERKs the ``runs`` affected (None when they touched no personal source)."""
    by_source: dict[str, set[str]] = defaultdict(set)
    for run_id, source, _ in runs:
        by_source[source].add(run_id)
    parts: list[sa.Select] = []
    for name, run_ids in sorted(by_source.items()):
        src = srcs.get(name)
        if src is None or not (src.ingest and src.personal):
            continue
        st = staging_table(src)
        ids = sorted(run_ids)
        parts.append(sa.select(st.c.erk.label("erk")).where(st.c.loaded_run_id.in_(ids)))
        # records a department deleted (tombstones): their resident, whatever else it holds
        gone = staging_deleted.c
        parts.append(sa.select(gone.erk.label("erk")).where(gone.source == name, gone.deleted_run_id.in_(ids)))
        key = staging_key(src)
        if key == "erk":
            continue  # keyed by the ERK: a record cannot move to another resident
        if src.quarantine_fail_safe:
            q = quarantine.c
            rejected = sa.select(q.record_key).where(q.source == name, q.last_run_id.in_(ids))
            parts.append(sa.select(st.c.erk.label("erk")).where(st.c[key].in_(rejected)))
        moved = staging_moved.c
        parts.append(sa.select(moved.erk.label("erk")).where(moved.source == name, moved.moved_run_id.in_(ids)))
    if not parts:
        return None
    return sa.union(*parts) if len(parts) > 1 else parts[0]
