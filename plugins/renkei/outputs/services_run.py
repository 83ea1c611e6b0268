"""Finishing a proactive_services run: record it (the base of the next incremental run), append
its ``notice_published`` entry to the audit trail, and store a contact token for each newly
notified resident (renkei.outputs.contacts) — in that order, before the outbox asset event, so a
delivery run that the event starts finds every token it needs."""

from __future__ import annotations

from datetime import date


def finish_run(warehouse_url: str, plan: dict, results: list[dict]) -> dict:
    """Record the run of ``plan`` whose parts reported ``results``; returns its counts (those of
    renkei.outputs.outbox.record_services, plus ``contacts``)."""
    from renkei.audit.records import record_notices_published  # noqa: PLC0415 - task-time imports
    from renkei.keys.ring import KeyRing  # noqa: PLC0415
    from renkei.outputs.contacts import seal_contacts  # noqa: PLC0415
    from renkei.outputs.outbox import record_services  # noqa: PLC0415

    counts = record_services(warehouse_url, plan, results)
    ring = KeyRing.load()
    record_notices_published(warehouse_url, plan["run_id"], date.fromisoformat(plan["as_of"]), counts, ring=ring)
    counts["contacts"] = seal_contacts(warehouse_url, ring)
    return counts
