"""Finishing a proactive_services run: record it (the base of the next incremental run), append
its ``notice_published`` entry to the audit trail, and store a contact token for each newly
notified resident (renkei.outputs.contacts) — in that order, before the outbox asset event, so a
delivery run that the event starts finds every token it needs. Then, for a run started by a
change (:func:`relay_at_once`), its notices go to the stream from the same task."""

from __future__ import annotations

from datetime import date


def finish_run(warehouse_url: str, plan: dict, results: list[dict]) -> dict:
    """Record the run of ``plan`` whose parts reported ``results``; returns its counts (those of
    renkei.outputs.outbox.record_services, plus ``contacts``)."""
    from renkei.audit.records import record_notices_published  # noqa: PLC0415 - task-time imports
    from renkei.keys.ring import KeyRing  # noqa: PLC0415
    from renkei.outputs.contacts import seal_contacts  # noqa: PLC0415
    from renkei.outputs.outbox import INCREMENTAL, record_services  # noqa: PLC0415

    counts = record_services(warehouse_url, plan, results)
    ring = KeyRing.load()
    record_notices_published(warehouse_url, plan["run_id"], date.fromisoformat(plan["as_of"]), counts, ring=ring)
    # An incremental run seals its own notices' ERKs; a full one (a new day's first, at least)
    # every notified ERK without a token, whichever run left it.
    own = plan["run_id"] if plan["mode"] == INCREMENTAL else None
    counts["contacts"] = seal_contacts(warehouse_url, ring, run_id=own)
    return counts


def relay_at_once(warehouse_url: str) -> dict:
    """Publish the outbox now, from the task that wrote it, instead of after the scheduler has
    started relay_notices for the outbox event: one scheduler hand-over and one task start fewer
    between a change and its notice (~1 s each on a loaded 2-core machine). relay_notices still
    runs for the event and finds what this left, if anything.

    Never fails the run, whose notices are recorded already: a relay holding the lock (counts
    ``skipped``), a broker outage (``errors``, as relay_notices reports it) or any other error
    (logged by type only) leaves the notices to relay_notices."""
    import logging  # noqa: PLC0415

    from renkei.outputs.relay import relay_notices  # noqa: PLC0415

    try:
        return relay_notices(warehouse_url, wait=False)
    except Exception as exc:  # noqa: BLE001 - the relay DAG publishes them; this was a shortcut
        logging.getLogger(__name__).warning("relay after services failed (%s): relay_notices will publish",
                                            type(exc).__name__)
        return {"errors": 1, "error": type(exc).__name__}
