"""Contact tokens: the pipeline's hand-over to delivery, so delivery needs no link key.

For every ERK with a notice and no contact token yet, ``contact_token = AES-SIV(k_contact,
resident_code)`` is made in memory (``KeyRing.reseal_many`` link → contact) and stored in
``notice_contacts``. Delivery opens a token with the contact key to find the resident's contact
in the registry's boundary; the contact key opens no ERK, pseudonym or digest. Runs after each
services run (in proactive_services' ``record`` task, before the outbox asset starts delivery) and is idempotent: a re-run, or a
warehouse whose notices predate the table, only fills what is missing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import sqlalchemy as sa

from renkei.bulk import insert_rows
from renkei.errors import KeyRingError
from renkei.keys.ring import KeyRing
from renkei.sources.values import format_timestamp
from renkei.warehouse import engine, ensure_schema, notice_contacts, notices

log = logging.getLogger(__name__)


def seal_contacts(warehouse_url: str, ring: KeyRing, batch: int = 20_000, run_id: str | None = None) -> dict:
    """Store a contact token for each notified ERK that has none; returns {"sealed", "unopened"}.

    ``run_id``: only the ERKs of the notices that services run created (its own, right after it
    recorded them: a pass over the city's notices costs a third of a second at a million
    residents, the run's own a quarter of that). Without it, every notice: what a full services
    run does, so a token a stopped run left unsealed is made by the next full run at the latest.

    An ERK that does not open under the keyring's link key is counted (``unopened``) and left
    without a token: delivery then waits for it, and the count names the keyring problem.
    """
    if not ring.holds("contact"):
        raise KeyRingError("the keyring holds no contact key, which seals the tokens delivery opens: "
                           "`renkei keys add --purpose contact`, then give delivery `renkei keys export --for delivery`")
    eng = engine(warehouse_url)
    ensure_schema(eng)
    sealed = unopened = 0
    now = format_timestamp(datetime.now(timezone.utc))
    try:
        with eng.begin() as conn:
            missing = (sa.select(notices.c.erk).distinct()
                       .where(~sa.exists().where(notice_contacts.c.erk == notices.c.erk)))
            if run_id is not None:
                missing = missing.where(notices.c.created_run_id == run_id)
            result = conn.execute(missing, execution_options={"yield_per": batch})
            rows = []
            for part in result.scalars().partitions():
                for erk, (token, err) in zip(part, ring.reseal_many("link", list(part), "contact")):
                    if err is None:
                        rows.append((erk, token, now))
                    else:
                        unopened += 1
            for i in range(0, len(rows), batch):
                sealed += insert_rows(conn, notice_contacts, ["erk", "contact_token", "sealed_at"], rows[i:i + batch])
    finally:
        eng.dispose()
    if unopened:
        log.warning("seal_contacts: %d notified ERKs do not open under this keyring's link key", unopened)
    return {"sealed": sealed, "unopened": unopened}
