"""What a message may say about its notice: the payload fields and the template context.

Only the notice itself goes into a message — the service's subject (vaccine and dose, check-up,
fiscal year, event), its window and kind — never the linked facts behind it (birth date, dose
history, ages). Event titles come from the public event calendar (staging_events).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any

from renkei.delivery.config import DeliveryConfig
from renkei.errors import ConfigError
from renkei.sources.values import JST, parse_timestamp


def facts_of(notice: Mapping[str, Any]) -> dict:
    try:
        facts = json.loads(notice["facts"] or "{}")
    except ValueError:
        facts = {}
    return facts if isinstance(facts, dict) else {}


def message_fields(notice: Mapping[str, Any]) -> dict:
    """The service-specific payload fields (None where they do not apply) and the window."""
    service, subject, dose = notice["service"], notice["subject"], notice["dose_number"]
    facts = facts_of(notice)
    return {
        "vaccine_code": subject if service == "immunization" else None,
        "dose_number": dose if service == "immunization" else None,
        "checkup_code": subject if service == "checkup" else None,
        "fiscal_year": int(facts.get("fiscal_year", dose)) if service == "nhi_checkup" else None,
        "event_id": subject if service == "event" else None,
        "window": {"start": _iso(notice["window_start"]), "end": _iso(notice["window_end"])},
    }


def template_context(
    notice: Mapping[str, Any], cfg: DeliveryConfig, event_titles: Mapping[str, str | None], via_household: bool
) -> dict:
    """The variables a template of the notice's service may use."""
    service = notice["service"]
    ctx: dict[str, Any] = {
        "notice_id": notice["notice_id"],
        "service": service,
        "kind": notice["kind"],
        "window_start": _as_date(notice["window_start"]),
        "window_end": _as_date(notice["window_end"]),
        "to_guardian": via_household,
        "city": cfg.city,
    }
    fields = message_fields(notice)
    if service == "immunization":
        code, n = fields["vaccine_code"], int(fields["dose_number"])
        ctx.update(vaccine_code=code, vaccine_name=_name(cfg.vaccine_names, code, "vaccines", cfg),
                   dose_number=n, dose_label=cfg.dose_labels.get(code, {}).get(n, f"{n}回目"))
    elif service == "checkup":
        code = fields["checkup_code"]
        ctx.update(checkup_code=code, checkup_name=_name(cfg.checkup_names, code, "checkups", cfg))
    elif service == "nhi_checkup":
        ctx.update(fiscal_year=fields["fiscal_year"])
    elif service == "event":
        facts = facts_of(notice)
        starts = parse_timestamp(facts["starts_at"]) if facts.get("starts_at") else None
        ctx.update(event_id=fields["event_id"], event_title=event_titles.get(fields["event_id"]),
                   venue=facts.get("venue") or "", topic=facts.get("topic"),
                   # Messages show Japan time whatever offset the calendar stored.
                   starts_at=starts.astimezone(JST) if starts else datetime.combine(ctx["window_end"], time(), JST))
    return ctx


def _name(names: Mapping[str, str], code: str, section: str, cfg: DeliveryConfig) -> str:
    try:
        return names[code]
    except KeyError:
        raise ConfigError(f"{cfg.source}: names.{section}: no Japanese name for {code!r}; Fix: add `{code}: <名称>`") from None


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _iso(value: Any) -> str | None:
    return None if value is None else _as_date(value).isoformat()
