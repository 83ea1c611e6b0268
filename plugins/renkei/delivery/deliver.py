"""Delivering the outbox: notices → contacts → rendered messages → channels, with receipts.

One run, for the clock reading `now`, takes every notice without a final receipt and decides,
in this order (the first that applies wins; each decision is one receipt):

0. withdrawn or superseded in the warehouse (renkei.outputs.lifecycle)
                                                           → suppressed/withdrawn (final unless reinstated)
1. failed before and its backoff has not elapsed            → skipped this run, no receipt
2. window_end before today (Asia/Tokyo)                     → suppressed/expired (final)
3. opted out of the notice's topic(s) (optouts.py)          → suppressed/opted_out (final)
4. the resident is no longer `resident` in the registry     → suppressed/not_resident (final)
5. no verified contact (contacts.py: a child's is the household adult's)
                                                           → suppressed/no_verified_contact (final)
6. the first preferred contact's channel has no sender      → suppressed/unsupported_channel (final)
7. quiet hours                                              → suppressed/quiet_hours (deferred)
8. send: `sent`, or `failed` with the error class (retried with backoff up to max_attempts);
   after an error that means the channel itself is down, the rest wait for the next run. A
   settings problem no retry cures (STARTTLS not offered or its certificate untrusted, the
   login refused, the server demanding authentication: channels.ChannelSetupError) stops the
   run with that error and records nothing for the notice — the DAG task fails, naming the
   setting to fix; no attempt of any notice is spent on it.

Immediately before each send the notice's state is read from the warehouse again, so a
withdrawal committed after this run read the outbox still stops it (suppressed/withdrawn). A
notice reinstated after its suppression/withdrawn is delivered like a pending one.

A dry run decides the same way (without the re-check: it sends nothing), writes one JSON line
per message it would send and records nothing. Sending is at-least-once at the SMTP boundary (a
crash between the send and its receipt resends once, under the same Message-ID); receipts allow
one `sent` per notice.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import sqlalchemy as sa

from renkei.config import load_sources
from renkei.delivery import receipts
from renkei.delivery.channels import Channel, Outgoing, SendFailed, default_channels
from renkei.delivery.config import DeliveryConfig, load_delivery_config
from renkei.delivery.contacts import ContactIndex, UnopenableErk, build_index
from renkei.delivery.optouts import is_opted_out, load_subscriptions, notice_topics
from renkei.delivery.pacing import RateLimiter, in_quiet_hours, retry_due
from renkei.delivery.payload import facts_of, message_fields, template_context
from renkei.delivery.settings import DeliverySettings
from renkei.delivery.templates import Templates
from renkei.errors import KeyRingError, RenkeiError
from renkei.keys.ring import KeyRing
from renkei.outputs import lifecycle
from renkei.settings import redact_url
from renkei.sources.values import JST
from renkei.warehouse import engine, notice_contacts, notice_events, notices, staging_table

log = logging.getLogger(__name__)

_NOTICE_COLUMNS = ("notice_id", "service", "kind", "erk", "rule_id", "rule_version", "subject", "dose_number",
                   "window_start", "window_end", "evaluated_on", "facts", "created_at")


@dataclass
class DeliveryReport:
    """Counts of one run by service and outcome, and one sample message (never logged)."""

    dry_run: bool
    outcomes: Counter = field(default_factory=Counter)  # (service, outcome) -> n
    sample: dict | None = field(default=None, repr=False)

    def add(self, service: str, outcome: str) -> None:
        self.outcomes[(service, outcome)] += 1

    def counts(self) -> dict[str, Any]:
        """{"dry_run", "considered", "<outcome>": n …, "by_service": {service: {outcome: n}}}."""
        total: Counter = Counter()
        by_service: dict[str, dict[str, int]] = {}
        for (service, outcome), n in sorted(self.outcomes.items()):
            total[outcome] += n
            by_service.setdefault(service, {})[outcome] = n
        return {"dry_run": self.dry_run, "considered": sum(total.values()), **dict(sorted(total.items())),
                "by_service": by_service}


def _aware(now: datetime) -> datetime:
    return now.replace(tzinfo=JST) if now.tzinfo is None else now


def _final(state: receipts.NoticeState | None, notice: dict, max_attempts: int) -> bool:
    """Nothing left to do for the notice: sent, finally suppressed, out of attempts, or
    withdrawn in the warehouse and already recorded so."""
    if state is None:
        return False
    if state.sent or state.final_suppression or state.failures >= max_attempts:
        return True
    return state.withdrawn and notice["state"] in lifecycle.CLOSED


def read_notices(conn: sa.Connection) -> list[dict]:
    """Every outbox notice with its lifecycle ``state``, in created order."""
    states = lifecycle.latest_states(conn)
    q = sa.select(*(notices.c[n] for n in _NOTICE_COLUMNS)).order_by(notices.c.created_at, notices.c.notice_id)
    return [{**r._mapping, "state": states.get(r.notice_id, lifecycle.PENDING)} for r in conn.execute(q)]


def event_titles(conn: sa.Connection, event_ids: set[str]) -> dict[str, str | None]:
    """Titles from the public event calendar (staging_events), where it is loaded."""
    table = staging_table(load_sources()["events"])
    if not event_ids or not sa.inspect(conn).has_table(table.name):
        return {}
    q = sa.select(table.c.event_id, table.c.title).where(table.c.event_id.in_(sorted(event_ids)))
    return {eid: title for eid, title in conn.execute(q)}


def deliver(
    settings: DeliverySettings,
    now: datetime,
    *,
    config: DeliveryConfig | None = None,
    ring: KeyRing | None = None,
    channels: Mapping[str, Channel] | None = None,
    dry_run_out: IO[str] | None = None,
    limiter: RateLimiter | None = None,
) -> DeliveryReport:
    """Deliver every notice of the warehouse that has no final receipt yet (see the module doc).

    `dry_run_out`: write the would-be messages there as JSON lines instead of sending and
    recording. `channels` replaces the configured senders (channel name → Channel).
    """
    cfg = config or load_delivery_config()
    now = _aware(now)
    today = now.astimezone(cfg.quiet_hours.tz).date()
    dry_run = dry_run_out is not None
    report = DeliveryReport(dry_run=dry_run)

    wh = engine(settings.warehouse_url)
    try:
        with wh.connect() as conn:
            if not sa.inspect(conn).has_table(notices.name):
                raise RenkeiError(f"the warehouse {redact_url(settings.warehouse_url)} has no notices table: run `renkei run` first")
            if not sa.inspect(conn).has_table(notice_events.name):
                raise RenkeiError(f"the warehouse {redact_url(settings.warehouse_url)} has no notice_events table: "
                                  "run `renkei run` (or the proactive_services DAG) once to update its schema")
            all_notices = read_notices(conn)
            tokens = contact_tokens(conn)
            titles = event_titles(conn, {n["subject"] for n in all_notices if n["service"] == "event"})
            subs_by_erk = load_subscriptions(conn, {n["erk"] for n in all_notices})
    except BaseException:
        wh.dispose()
        raise

    dl: sa.Engine | None = None
    state: dict[str, receipts.NoticeState] = {}
    if not dry_run or receipts.exists(settings.delivery_url):
        dl = engine(settings.delivery_url)
        if not dry_run:
            receipts.ensure_receipts(dl)
        with dl.connect() as conn:
            state = receipts.states(conn)

    pending = [n for n in all_notices if not _final(state.get(n["notice_id"]), n, cfg.retry.max_attempts)]
    sendable: list[dict] = []
    for n in pending:
        nid, service = n["notice_id"], n["service"]
        if n["state"] in lifecycle.CLOSED:
            _suppress(dl, report, n, receipts.WITHDRAWN, None, now)
        elif not retry_due(state.get(nid), now, cfg.retry):
            report.add(service, "waiting_backoff")
        elif n["window_end"] < today:
            _suppress(dl, report, n, "expired", None, now)
        elif is_opted_out(subs_by_erk.get(n["erk"], ()), notice_topics(service, facts_of(n), cfg.opt_out_topics),
                          facts_of(n).get("ward_code"), now):
            _suppress(dl, report, n, "opted_out", None, now)
        elif n["erk"] not in tokens:
            # the pipeline has not sealed its contact token yet (proactive_services' seal_contacts):
            # nothing is recorded, the next run tries again
            report.add(service, "awaiting_contact_token")
        else:
            sendable.append(n)

    index = _contacts(settings, ring, sendable, tokens, cfg, today) if sendable else ContactIndex({}, frozenset())
    enabled = dict(channels) if channels is not None else default_channels(cfg.senders, cfg.smtp)
    templates = Templates(cfg.templates_dir)
    limiter = limiter or RateLimiter(cfg.rate_per_second)
    down: set[str] = set()
    quiet = in_quiet_hours(now, cfg.quiet_hours)
    try:
        for n in sendable:
            nid, service = n["notice_id"], n["service"]
            contacts = index.contacts.get(n["erk"], ())
            if n["erk"] not in index.residents:
                _suppress(dl, report, n, "not_resident", None, now)
                continue
            if not contacts:
                _suppress(dl, report, n, "no_verified_contact", None, now)
                continue
            contact = contacts[0]
            channel = enabled.get(contact.channel)
            if channel is None:
                _suppress(dl, report, n, "unsupported_channel", contact.channel, now)
                continue
            if quiet:
                _suppress(dl, report, n, "quiet_hours", contact.channel, now)
                continue
            if contact.channel in down:
                report.add(service, "held")
                continue
            rule = f"{n['rule_id']} v{n['rule_version']}"
            rendered = templates.render(template_context(n, cfg, titles, contact.via_household), rule)
            message = Outgoing(nid, contact.address, rendered.subject, rendered.body, now)
            if dry_run:
                line = {"notice_id": nid, "service": service, "kind": n["kind"], "channel": contact.channel,
                        "recipient": contact.address, "subject": rendered.subject, "body": rendered.body,
                        **message_fields(n)}
                dry_run_out.write(json.dumps(line, ensure_ascii=False) + "\n")
                report.add(service, "would_send")
                report.sample = report.sample or line
                continue
            limiter.wait()
            if _withdrawn_since(wh, nid):
                _suppress(dl, report, n, receipts.WITHDRAWN, contact.channel, now)
                continue
            try:
                channel.send(message)
            except SendFailed as exc:
                log.warning("notice %s (%s): %s send failed with %s; retried after backoff",
                            nid, rule, contact.channel, exc.reason)
                _record(dl, report, n, receipts.FAILED, exc.reason, contact.channel, now)
                if exc.channel_down:
                    down.add(contact.channel)
                continue
            _record(dl, report, n, receipts.SENT, None, contact.channel, now)
            report.sample = report.sample or {"notice_id": nid, "service": service, "channel": contact.channel,
                                              "subject": rendered.subject, "body": rendered.body}
    finally:
        for ch in enabled.values():
            ch.close()
        if dl is not None:
            dl.dispose()
        wh.dispose()
    log.info("deliver_notices at %s: %s", now.isoformat(), report.counts())
    return report


def _withdrawn_since(wh: sa.Engine, notice_id: str) -> bool:
    """The notice was withdrawn or superseded since this run read the outbox (one small query)."""
    with wh.connect() as conn:
        return lifecycle.state_of(conn, notice_id) in lifecycle.CLOSED


def contact_tokens(conn: sa.Connection) -> dict[str, str]:
    """ERK → contact token of every notified resident the pipeline has sealed one for."""
    if not sa.inspect(conn).has_table(notice_contacts.name):
        return {}
    return dict(conn.execute(sa.select(notice_contacts.c.erk, notice_contacts.c.contact_token)).all())


def _contacts(settings: DeliverySettings, ring: KeyRing | None, batch: list[dict], tokens: dict[str, str],
              cfg: DeliveryConfig, today) -> ContactIndex:
    ring = ring or KeyRing.load(settings.keyring_path)
    try:
        return build_index(settings.raw_dir, ring, {n["erk"]: tokens[n["erk"]] for n in batch}, today,
                           cfg.preference, cfg.adult_age)
    except UnopenableErk as exc:
        nid = next(n["notice_id"] for n in batch if n["erk"] == exc.erk)
        raise KeyRingError(
            f"notice {nid}: its contact token does not open under the contact key of this keyring: deliver with "
            "the delivery keyring of this city (`renkei keys export --for delivery`; --keyring / RENKEI_KEYRING)"
        ) from None


def _suppress(dl: sa.Engine | None, report: DeliveryReport, n: dict, reason: str, channel: str | None, now: datetime) -> None:
    _record(dl, report, n, receipts.SUPPRESSED, reason, channel, now)


def _record(dl: sa.Engine | None, report: DeliveryReport, n: dict, status: str, reason: str | None,
            channel: str | None, now: datetime) -> None:
    outcome = status if reason is None or status == receipts.FAILED else f"{status}:{reason}"
    if report.dry_run:
        report.add(n["service"], outcome)
        return
    assert dl is not None
    try:
        with dl.begin() as conn:
            receipts.record(conn, n["notice_id"], status, reason, channel, now)
    except (receipts.AlreadySent, sa.exc.IntegrityError):
        # Another run recorded this notice concurrently; its receipt stands.
        log.warning("notice %s: a concurrent run already recorded it; this %s receipt is dropped", n["notice_id"], status)
        report.add(n["service"], "concurrent")
        return
    report.add(n["service"], outcome)


def deliver_from_env(now: datetime) -> dict:
    """The DAG's entry point: settings from the environment, counts only."""
    return deliver(DeliverySettings.from_env(), now).counts()
