"""Channels that carry a rendered message to one recipient: the Channel protocol and SMTP e-mail.

Only e-mail is implemented (smtplib). A channel configured `unsupported` (LINE, post by
default) has no Channel object: delivery records suppressed/unsupported_channel for it, so a
sender plugged in later (any object with `name`, `send`, `close`) starts from a clean slate.
Errors carry only the exception class name: SMTP errors may quote the recipient's address.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Protocol

from renkei.delivery.config import SmtpSettings

# Refusals of one message; any other error (smtplib's are OSErrors: connection, HELO, login,
# sender refused) means the server or our settings are at fault, so the run stops using it.
_MESSAGE_ERRORS = (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError)


@dataclass(frozen=True)
class Outgoing:
    """One message to one recipient."""

    notice_id: str
    recipient: str = field(repr=False)
    subject: str
    body: str
    at: datetime


class SendFailed(Exception):
    """A send did not go through; `reason` is the error class name, `channel_down` stops the run's use of it."""

    def __init__(self, reason: str, channel_down: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.channel_down = channel_down


class Channel(Protocol):
    """A way to reach a resident (e-mail, LINE, post …)."""

    name: str

    def send(self, message: Outgoing) -> None:
        """Deliver the message or raise SendFailed."""

    def close(self) -> None:
        """Release connections (called once at the end of a run)."""


class SmtpEmail:
    """E-mail over one SMTP connection per run, opened on the first message."""

    name = "email"

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        if self._smtp is None:
            s = self.settings
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
            try:
                if s.starttls:
                    smtp.starttls()
                if s.user:
                    smtp.login(s.user, s.password or "")
            except BaseException:
                smtp.close()
                raise
            self._smtp = smtp
        return self._smtp

    def build(self, message: Outgoing) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.settings.sender
        msg["To"] = message.recipient
        msg["Subject"] = message.subject
        msg["Date"] = format_datetime(message.at)
        domain = self.settings.sender.rpartition("@")[2].rstrip(">").strip() or "renkei.invalid"
        # A stable Message-ID per notice lets mail clients fold a resend after a crash into one.
        msg["Message-ID"] = f"<{message.notice_id}@{domain}>"
        msg["X-Renkei-Notice"] = message.notice_id
        msg.set_content(message.body, charset="utf-8", cte="base64")
        return msg

    def send(self, message: Outgoing) -> None:
        try:
            self._connect().send_message(self.build(message))
        except _MESSAGE_ERRORS as exc:
            raise SendFailed(type(exc).__name__, channel_down=False) from None
        except OSError as exc:
            self.close()
            raise SendFailed(type(exc).__name__, channel_down=True) from None

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None


def default_channels(senders: dict[str, str], smtp: SmtpSettings) -> dict[str, Channel]:
    """The channels the config enables: e-mail by SMTP when configured so."""
    return {"email": SmtpEmail(smtp)} if senders.get("email") == "smtp" else {}
