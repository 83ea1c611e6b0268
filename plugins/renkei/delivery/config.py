"""Delivery settings as data: load and validate config/delivery.yaml (env overrides SMTP)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from renkei.errors import ConfigError
from renkei.settings import Settings

SENDERS = ("smtp", "unsupported")
_TOP = {"channels", "smtp", "quiet_hours", "rate_per_second", "retry", "adult_age", "opt_out_topics", "city", "names"}


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str  # the From header
    starttls: bool = False  # STARTTLS is required: a server that does not offer it is refused
    timeout_s: float = 10.0
    user: str | None = None  # AUTH (PLAIN/LOGIN, whatever smtplib picks); only over STARTTLS
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # PEM CA(s) the server certificate must chain to; None: the system's


@dataclass(frozen=True)
class Retry:
    max_attempts: int
    backoff_s: int
    factor: int
    max_backoff_s: int

    def wait_s(self, failures: int) -> int:
        """Seconds to wait after the `failures`-th failed attempt before the next one."""
        return min(self.backoff_s * self.factor ** max(failures - 1, 0), self.max_backoff_s)


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time
    tz: ZoneInfo

    def covers(self, local: time) -> bool:
        """True if no message may go out at this local wall time (a span may cross midnight)."""
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


@dataclass(frozen=True)
class DeliveryConfig:
    """The validated delivery settings of one file."""

    source: Path
    preference: tuple[str, ...]
    senders: dict[str, str]  # channel -> smtp | unsupported
    smtp: SmtpSettings
    quiet_hours: QuietHours
    rate_per_second: float
    retry: Retry
    adult_age: int
    opt_out_topics: dict[str, tuple[str, ...]]
    city: dict[str, str]
    vaccine_names: dict[str, str]
    dose_labels: dict[str, dict[int, str]]
    checkup_names: dict[str, str]

    @property
    def templates_dir(self) -> Path:
        return self.source.parent / "templates"


class _Check:
    """Shape checks whose errors name the file, the key and the fix."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key or '(top level)'}: {problem}; Fix: {fix}")

    def mapping(self, node: Any, key: str, allowed: set[str] | None = None) -> dict:
        if not isinstance(node, dict):
            raise self.fail(key, f"expected a mapping, got {type(node).__name__}", "write key: value lines")
        for k in node if allowed else ():
            if k not in allowed:
                raise self.fail(f"{key}.{k}" if key else str(k), "unknown key", f"use one of {', '.join(sorted(allowed))}")
        return node

    def number(self, node: Any, key: str, minimum: float, integer: bool = True) -> Any:
        kinds = (int,) if integer else (int, float)
        if isinstance(node, bool) or not isinstance(node, kinds) or node < minimum:
            raise self.fail(key, f"expected a {'whole ' if integer else ''}number ≥ {minimum}, got {node!r}", "fix the value")
        return node

    def text(self, node: Any, key: str) -> str:
        if not isinstance(node, str) or not node.strip():
            raise self.fail(key, f"expected a non-empty string, got {type(node).__name__}", "write the text")
        return node

    def clock(self, node: Any, key: str) -> time:
        try:
            return time.fromisoformat(str(node))
        except ValueError:
            raise self.fail(key, f"not a time of day: {node!r}", 'write "HH:MM", e.g. "21:00"') from None

    def texts(self, node: Any, key: str) -> dict[str, str]:
        return {str(k): self.text(v, f"{key}.{k}") for k, v in self.mapping(node, key).items()}


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _starttls(c: _Check, node: Any, env_value: str | None) -> bool:
    """smtp.starttls (a YAML boolean), RENKEI_SMTP_STARTTLS (true/false) first."""
    if env_value:
        if env_value.strip().lower() in _TRUE | _FALSE:
            return env_value.strip().lower() in _TRUE
        raise c.fail("smtp.starttls", f"RENKEI_SMTP_STARTTLS is {env_value!r}", "set it to true or false")
    if not isinstance(node, bool):
        raise c.fail("smtp.starttls", f"expected true or false, got {node!r}", "write starttls: true (or false)")
    return node


def _check_smtp_security(c: _Check, smtp: SmtpSettings) -> None:
    """Credentials only together and only over STARTTLS; a CA file only with STARTTLS, and readable."""
    if bool(smtp.user) != bool(smtp.password):
        raise c.fail("smtp", "only one of RENKEI_SMTP_USER and RENKEI_SMTP_PASSWORD is set",
                     "set both (SMTP AUTH) or neither")
    if smtp.user and not smtp.starttls:
        raise c.fail("smtp.starttls", "RENKEI_SMTP_USER is set but STARTTLS is off: the password would cross the "
                     "network in clear", "set smtp.starttls: true (or RENKEI_SMTP_STARTTLS=true)")
    if smtp.ca_file is not None:
        if not smtp.starttls:
            raise c.fail("smtp.ca_file", "a CA file is set but STARTTLS is off, so nothing would be verified",
                         "set smtp.starttls: true or remove the CA file")
        if not Path(smtp.ca_file).is_file():
            raise c.fail("smtp.ca_file", f"{smtp.ca_file} is not a readable file",
                         "point smtp.ca_file / RENKEI_SMTP_CA_FILE at the PEM file of the CA that signed the server certificate")


def delivery_config_path() -> Path:
    return Settings.from_env().config_dir / "delivery.yaml"


def load_delivery_config(path: Path | str | None = None, env: dict[str, str] | None = None) -> DeliveryConfig:
    """Load and validate the delivery settings; RENKEI_SMTP_* in `env` override the file's SMTP."""
    p = Path(path) if path else delivery_config_path()
    env = os.environ if env is None else env
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the delivery settings ({exc.strerror}); Fix: create it or set RENKEI_CONFIG_DIR") from None
    except yaml.YAMLError:
        raise ConfigError(f"{p}: not valid YAML; Fix: correct the syntax") from None
    c = _Check(p)
    top = c.mapping(raw, "", _TOP)
    for key in _TOP:
        if key not in top:
            raise c.fail(key, "missing required key", f"add `{key}:` (see the shipped config/delivery.yaml)")

    ch = c.mapping(top["channels"], "channels", {"preference", "senders"})
    pref = ch.get("preference")
    if not isinstance(pref, list) or not pref or len(set(pref)) != len(pref):
        raise c.fail("channels.preference", "expected a list of distinct channels", "write e.g. [email, line, post]")
    senders = c.texts(ch.get("senders") or {}, "channels.senders")
    for name in pref:
        if senders.get(name) not in SENDERS:
            raise c.fail(f"channels.senders.{name}", f"no sender for channel {name!r}", f"set it to one of {', '.join(SENDERS)}")
    if any(s == "smtp" for n, s in senders.items() if n != "email"):
        raise c.fail("channels.senders", "only the email channel can be sent by smtp", "set the others to unsupported")

    s = c.mapping(top["smtp"], "smtp", {"host", "port", "from", "starttls", "ca_file", "timeout_s"})
    port_text = env.get("RENKEI_SMTP_PORT")
    try:
        port = int(port_text) if port_text else c.number(s.get("port"), "smtp.port", 1)
    except ValueError:
        raise c.fail("smtp.port", "RENKEI_SMTP_PORT is not a number", "set it to a port such as 25 or 587") from None
    smtp = SmtpSettings(
        host=env.get("RENKEI_SMTP_HOST") or c.text(s.get("host"), "smtp.host"),
        port=port,
        sender=env.get("RENKEI_SMTP_FROM") or c.text(s.get("from"), "smtp.from"),
        starttls=_starttls(c, s.get("starttls", False), env.get("RENKEI_SMTP_STARTTLS")),
        timeout_s=float(c.number(s.get("timeout_s", 10), "smtp.timeout_s", 0.1, integer=False)),
        user=env.get("RENKEI_SMTP_USER") or None,
        password=env.get("RENKEI_SMTP_PASSWORD") or None,
        ca_file=env.get("RENKEI_SMTP_CA_FILE") or (c.text(s["ca_file"], "smtp.ca_file") if s.get("ca_file") is not None else None),
    )
    _check_smtp_security(c, smtp)

    q = c.mapping(top["quiet_hours"], "quiet_hours", {"start", "end", "timezone"})
    try:
        tz = ZoneInfo(str(q.get("timezone", "Asia/Tokyo")))
    except (ZoneInfoNotFoundError, ValueError):
        raise c.fail("quiet_hours.timezone", "unknown time zone", "write an IANA name such as Asia/Tokyo") from None
    quiet = QuietHours(c.clock(q.get("start"), "quiet_hours.start"), c.clock(q.get("end"), "quiet_hours.end"), tz)

    r = c.mapping(top["retry"], "retry", {"max_attempts", "backoff_s", "factor", "max_backoff_s"})
    retry = Retry(*(c.number(r.get(k), f"retry.{k}", 1) for k in ("max_attempts", "backoff_s", "factor", "max_backoff_s")))

    opt = c.mapping(top["opt_out_topics"], "opt_out_topics")
    topics: dict[str, tuple[str, ...]] = {}
    for service, node in opt.items():
        if not isinstance(node, list):
            raise c.fail(f"opt_out_topics.{service}", "expected a list of topics", 'write e.g. ["{topic}"] or []')
        topics[str(service)] = tuple(c.text(t, f"opt_out_topics.{service}") for t in node)

    names = c.mapping(top["names"], "names", {"vaccines", "dose_labels", "checkups"})
    labels: dict[str, dict[int, str]] = {}
    for code, per_dose in c.mapping(names.get("dose_labels") or {}, "names.dose_labels").items():
        per = c.mapping(per_dose, f"names.dose_labels.{code}")
        labels[str(code)] = {int(c.number(n, f"names.dose_labels.{code}", 1)): c.text(v, f"names.dose_labels.{code}.{n}") for n, v in per.items()}

    return DeliveryConfig(
        source=p.resolve(),
        preference=tuple(str(x) for x in pref),
        senders=senders,
        smtp=smtp,
        quiet_hours=quiet,
        rate_per_second=float(c.number(top["rate_per_second"], "rate_per_second", 0.001, integer=False)),
        retry=retry,
        adult_age=c.number(top["adult_age"], "adult_age", 1),
        opt_out_topics=topics,
        city=c.texts(top["city"], "city"),
        vaccine_names=c.texts(names.get("vaccines") or {}, "names.vaccines"),
        dose_labels=labels,
        checkup_names=c.texts(names.get("checkups") or {}, "names.checkups"),
    )
