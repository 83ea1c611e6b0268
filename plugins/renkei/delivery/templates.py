"""Rendering messages from config/templates/<service>_<kind>.txt.j2 (Jinja2, StrictUndefined).

A template's first line is the subject, written ``件名: …``; then one blank line; the rest is
the body. Filters: ``jdate`` (2025年6月1日（日）), ``wareki`` (令和7年6月1日), ``nendo``
(令和7年度), ``jtime`` (10:00).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from renkei.delivery.jdates import fiscal_year_label, jdate, jtime, wareki
from renkei.errors import ConfigError

SUBJECT_PREFIX = "件名:"


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


def template_name(service: str, kind: str) -> str:
    return f"{service}_{kind}.txt.j2"


class Templates:
    """The message templates of one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.directory),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # plain-text mail, not HTML
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters.update(jdate=jdate, wareki=wareki, nendo=fiscal_year_label, jtime=jtime)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.directory.glob("*.txt.j2"))

    def render(self, context: dict[str, Any], rule: str) -> Rendered:
        """Render the notice in `context` (needs service, kind, notice_id); `rule` is "id vN"."""
        name = template_name(context["service"], context["kind"])
        where = f"notice {context['notice_id']} ({rule})"
        try:
            text = self._env.get_template(name).render(context)
        except jinja2.TemplateNotFound:
            raise ConfigError(
                f"{where}: no template {name} in {self.directory}; Fix: add it "
                f"(first line '{SUBJECT_PREFIX} …', a blank line, then the body)"
            ) from None
        except jinja2.UndefinedError as exc:
            raise ConfigError(
                f"{where}: template {name}: {exc.message}; Fix: use only the variables of the "
                f"{context['service']} payload (renkei.delivery.payload.template_context)"
            ) from None
        except jinja2.TemplateError as exc:
            raise ConfigError(f"{where}: template {name} is invalid ({type(exc).__name__}); Fix: correct its syntax") from None
        first, _, rest = text.partition("\n")
        if not first.startswith(SUBJECT_PREFIX) or not rest.startswith("\n"):
            raise ConfigError(
                f"{where}: template {name} must start with '{SUBJECT_PREFIX} …' and a blank line; Fix: add the subject line"
            )
        subject = first[len(SUBJECT_PREFIX):].strip()
        if not subject:
            raise ConfigError(f"{where}: template {name} renders an empty subject; Fix: write the subject after '{SUBJECT_PREFIX}'")
        return Rendered(subject, rest[1:].rstrip() + "\n")
