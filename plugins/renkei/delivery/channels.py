"""Channels that carry a rendered message to one recipient: the Channel protocol and SMTP e-mail.

Only e-mail is implemented (smtplib). A channel configured `unsupported` (LINE, post by
default) has no Channel object: delivery records suppressed/unsupported_channel for it, so a
sender plugged in later (any object with `name`, `send`, `close`) starts from a clean slate.
Errors carry only the exception class name: SMTP errors may quote the recipient's address.

With `starttls` the connection must be upgraded before anything else is said: a server that
does not offer STARTTLS is refused, and its certificate must chain to `ca_file` (or the system's
CAs) and name the configured host. Credentials (AUTH, only over STARTTLS) are sent right after.
A refusal that no retry can cure — STARTTLS missing, an untrusted certificate, the login refused
or AUTH not offered, the server demanding authentication (530) — raises ChannelSetupError: the
run stops there and records nothing for the message it was sending (no attempt is spent on a
settings problem). Its message names the server and the setting to fix, never a recipient.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Protocol

from renkei.delivery.config import SmtpSettings
from renkei.errors import RenkeiError

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


class ChannelSetupError(RenkeiError):
    """The channel's settings do not let it send at all (TLS, authentication): fix them and run again."""


class Channel(Protocol):
    """A way to reach a resident (e-mail, LINE, post …)."""

    name: str

    def send(self, message: Outgoing) -> None:
        """Deliver the message or raise SendFailed (ChannelSetupError: the settings keep it from sending at all)."""

    def close(self) -> None:
        """Release connections (called once at the end of a run)."""


class SmtpEmail:
    """E-mail over one SMTP connection per run, opened on the first message."""

    name = "email"

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None

    @property
    def _where(self) -> str:
        return f"email: the SMTP server {self.settings.host}:{self.settings.port}"

    def tls_context(self) -> ssl.SSLContext:
        """Certificate and host name verified, against ``ca_file`` if set, else the system's CAs."""
        return ssl.create_default_context(cafile=self.settings.ca_file)

    def _connect(self) -> smtplib.SMTP:
        if self._smtp is None:
            s = self.settings
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
            try:
                if s.starttls:
                    smtp.ehlo()
                    if not smtp.has_extn("starttls"):
                        raise ChannelSetupError(f"{self._where} does not offer STARTTLS, which smtp.starttls requires: "
                                                "enable it on the server or use its submission port (587)")
                    smtp.starttls(context=self.tls_context())
                if s.user:
                    smtp.login(s.user, s.password or "")
            except BaseException as exc:
                smtp.close()
                setup = self._setup_error(exc)
                if setup is None:
                    raise
                raise setup from None
            self._smtp = smtp
        return self._smtp

    def _setup_error(self, exc: BaseException) -> ChannelSetupError | None:
        """The ChannelSetupError for a connect-time refusal no retry can cure, else None."""
        if isinstance(exc, ChannelSetupError):
            return exc
        if isinstance(exc, ssl.SSLCertVerificationError):
            return ChannelSetupError(
                f"{self._where}: its TLS certificate is not trusted ({exc.verify_message}): set smtp.ca_file / "
                "RENKEI_SMTP_CA_FILE to the CA that signed it, and RENKEI_SMTP_HOST to a name the certificate holds")
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return ChannelSetupError(f"{self._where} refused the login ({exc.smtp_code}): "
                                     "check RENKEI_SMTP_USER / RENKEI_SMTP_PASSWORD")
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return ChannelSetupError(f"{self._where} offers no AUTH mechanism smtplib can use (after STARTTLS): "
                                     "enable AUTH PLAIN or LOGIN on the server, or unset RENKEI_SMTP_USER")
        return None

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
        """Send or raise SendFailed (this message, or the channel is down) / ChannelSetupError (the settings)."""
        try:
            self._connect().send_message(self.build(message))
        except smtplib.SMTPSenderRefused as exc:
            self.close()
            if exc.smtp_code == 530:  # 5.7.0: STARTTLS or authentication required before MAIL
                if not self.settings.starttls:
                    fix = ("STARTTLS is off: set smtp.starttls: true (RENKEI_SMTP_STARTTLS=true) and, if the server "
                           "also asks for it, RENKEI_SMTP_USER / RENKEI_SMTP_PASSWORD")
                else:
                    fix = "no login is configured: set RENKEI_SMTP_USER / RENKEI_SMTP_PASSWORD"
                raise ChannelSetupError(f"{self._where} refuses mail before STARTTLS or authentication (530); {fix}") from None
            raise SendFailed(type(exc).__name__, channel_down=True) from None
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
