"""What the end-to-end tests share: the notices of a newborn computed by hand, the subjects of
their e-mails, and a real SMTP server (aiosmtpd) that requires STARTTLS and AUTH, with a
certificate from a CA made here; a stack started and settled (:func:`started_stack`) and the
bounded wait every test uses."""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import email
import email.policy
import secrets
import socket
import ssl
from datetime import date, timedelta
from pathlib import Path

import pytest

from conftest import need_service

BOUND_S = 240  # generous: a loaded 2-core CI machine; the latency benchmark measures the real figure
STARTUP_BOUND_S = 600  # the start-up runs: ~40 tasks through 4 slots (AIRFLOW__CORE__PARALLELISM)

SMTP_USER = "renkei-e2e"
SMTP_SENDER = "noreply@city.kitakyushu.example"  # config/delivery.yaml smtp.from
# Send at any hour: the test must not depend on the wall clock (quiet hours are 21:00–08:00 JST).
NO_QUIET_HOURS = {"quiet_hours": {"start": "00:00", "end": "00:00", "timezone": "Asia/Tokyo"}}


# -- hand computation (../shared/design/SERVICES.md, config/services/*.yaml) ---------------------

def anniv(b: date, m: int) -> date:
    """SERVICES.md: the same day-of-month m months after b; if that month has no such day, the
    1st of the following month (born 7/31 → 2-month anniversary 10/1)."""
    year, month0 = divmod(b.month - 1 + m, 12)
    year, month = b.year + year, month0 + 1
    if b.day <= calendar.monthrange(year, month)[1]:
        return date(year, month, b.day)
    return date(year + month // 12, month % 12 + 1, 1)


def reach(b: date, m: int) -> date:
    """「生後m月に至った日」 = anniv(b, m) − 1 day."""
    return anniv(b, m) - timedelta(days=1)


def newborn_notices(born: date, d: date) -> list[tuple]:
    """The notices of a resident newborn without doses, subscriptions or NHI membership,
    evaluated on D = born + 70 days (DevStack.add_birth), as
    (service, rule_id, rule_version, subject, dose_number, kind, window_start, window_end).

    - reach(b, 2) = anniv(b, 2) − 1: two calendar months are 59–62 days, so reach(b, 2) falls on
      b+58 … b+61 ≤ D: dose 1 of HEPB (window to reach(12)), DPT_IPV_HIB (to reach(90)) and PCV
      (to reach(60)) is open from reach(2); ROTA dose 1 from max(reach(2), b+42) = reach(2), to
      b+104 (出生14週6日後).
    - kind: `last_chance` only from legal_end − 30: ROTA's from b+74 > D, the others' years
      away → all four `due`.
    - Not yet: BCG (from reach(5) ≥ b+149), the M4 check-up (from reach(3) ≥ b+88), MR1 / VAR
      (reach(12)), JE (reach(36)); no nhi_checkup (not an NHI member), no event notice (no
      subscription).
    - rule ids and versions: config/services/immunization.yaml (PCV is at version 2).

    Worked example, D = 2026-12-05: b = 2026-09-26; reach(2) = 2026-11-26 − 1 = 2026-11-25;
    reach(12) = 2027-09-25; reach(60) = 2031-09-25; reach(90) = 2034-03-26 − 1 = 2034-03-25;
    b+104 = 2027-01-08 (4 + 31 + 30 + 31 + 8 days).
    """
    assert d - born == timedelta(days=70)
    r2 = reach(born, 2)
    # The premises above, checked (a change of add_birth's age must change this function).
    assert born + timedelta(days=58) <= r2 <= d < born + timedelta(days=104 - 30) and d < reach(born, 3)
    return sorted([
        ("immunization", "imm.dpt_ipv_hib", 1, "DPT_IPV_HIB", 1, "due", str(r2), str(reach(born, 90))),
        ("immunization", "imm.hepb", 1, "HEPB", 1, "due", str(r2), str(reach(born, 12))),
        ("immunization", "imm.pcv", 2, "PCV", 1, "due", str(r2), str(reach(born, 60))),
        ("immunization", "imm.rota", 1, "ROTA", 1, "due", str(r2), str(born + timedelta(days=104))),
    ])


# Subjects by hand from config/templates/immunization_due.txt.j2 and config/delivery.yaml names
# (vaccines, dose_labels: DPT_IPV_HIB and PCV dose 1 = 初回1回目; others "<n>回目").
SUBJECTS = {
    ("HEPB", 1): "【北九州市】予防接種のお知らせ（B型肝炎 1回目）",
    ("ROTA", 1): "【北九州市】予防接種のお知らせ（ロタウイルス 1回目）",
    ("DPT_IPV_HIB", 1): "【北九州市】予防接種のお知らせ（5種混合 初回1回目）",
    ("PCV", 1): "【北九州市】予防接種のお知らせ（小児用肺炎球菌 初回1回目）",
}


def jdate(d: date) -> str:
    return f"{d.year}年{d.month}月{d.day}日（{'月火水木金土日'[d.weekday()]}）"


# -- a real SMTP server: STARTTLS and AUTH (PLAIN / LOGIN) required -------------------------------

def make_ca_and_server_cert(folder) -> tuple:
    """A CA and a server certificate it signs for 127.0.0.1 / localhost; returns (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Renkei e2e test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
          .not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class Mailbox:
    """What the SMTP server accepted: each message with its envelope, TLS and login; every AUTH try."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.messages: list[dict] = []
        self.logins: list[tuple[str, str, bool]] = []  # (mechanism, login, accepted)

    def authenticate(self, server, session, envelope, mechanism, auth_data):  # noqa: ANN001 - aiosmtpd hook
        from aiosmtpd.smtp import AuthResult

        login, password = auth_data.login.decode(), auth_data.password.decode()
        ok = (login, password) == (self.user, self.password)
        self.logins.append((mechanism, login, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)  # refused: 535

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, N802 - aiosmtpd hook
        self.messages.append({
            "rcpt": list(envelope.rcpt_tos), "mail_from": envelope.mail_from, "tls": session.ssl is not None,
            "login": session.auth_data.login.decode() if session.authenticated else None,
            "msg": email.message_from_bytes(envelope.content, policy=email.policy.default),
        })
        return "250 OK"

    def to(self, address: str) -> list[dict]:
        return [m for m in self.messages if address in m["rcpt"]]


@contextlib.contextmanager
def smtp_server(folder: Path):
    """An aiosmtpd server that requires STARTTLS (its own CA) and AUTH; yields its Mailbox."""
    from aiosmtpd.controller import Controller

    ca, cert, key = make_ca_and_server_cert(folder)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    box = Mailbox(SMTP_USER, secrets.token_hex(12))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = Controller(box, hostname="127.0.0.1", port=port, tls_context=tls, require_starttls=True,
                     auth_required=True, auth_require_tls=True, authenticator=box.authenticate)
    ctl.start()
    box.port, box.ca_file = port, str(ca)
    box.env = {"RENKEI_SMTP_HOST": "127.0.0.1", "RENKEI_SMTP_PORT": str(port), "RENKEI_SMTP_STARTTLS": "true",
               "RENKEI_SMTP_CA_FILE": str(ca), "RENKEI_SMTP_USER": SMTP_USER, "RENKEI_SMTP_PASSWORD": box.password}
    try:
        yield box
    finally:
        ctl.stop()


CHAIN = ("ingest_", "reconcile_", "link_residents", "proactive_services")


def chain_busy(stack) -> list[tuple]:
    """Queued or running runs of the change chain's DAGs (and asset-queued ones)."""
    return [r for r in stack.unfinished_runs() if (r[1] if r[0] == "queued-by-asset" else r[0]).startswith(CHAIN)]


def startup_over(stack) -> bool:
    """The scheduler made the runs a fresh stack starts with (the latest due sweep and reconcile
    of every source, the daily services run: catchup is off) and they finished."""
    from renkei.config import ingest_sources

    started = [f"{kind}_{src.name}" for src in ingest_sources() for kind in ("ingest", "reconcile")]
    return all(stack.dag_runs(d) for d in (*started, "proactive_services")) and not chain_busy(stack)



def wait(stack, what, check, state=None, bound=BOUND_S):
    """Wait for ``check()``; on a timeout the failure shows ``state()`` (what was seen last)."""
    try:
        return stack.wait_for(what, check, bound, poll=1.0)
    except (TimeoutError, RuntimeError) as exc:
        pytest.fail(f"{exc}" + (f"; last seen: {state()}" if state is not None else ""))


@contextlib.contextmanager
def started_stack(base: Path, pg_factory, smtp, **launch):
    """A DevStack on fresh PostgreSQL databases, delivering to ``smtp`` at any hour, once the
    runs it started with are over and the triggerer's watchers have their consumer groups.

    A fresh stack runs the latest sweep and reconcile of every source and the daily services
    run at start (the dev stack's RENKEI_FIRST_SCHEDULED_RUN=latest): a change made meanwhile
    would wait behind ~40 tasks, outside a test's bound. A test may stop the triggerer only
    once its watchers have made their consumer groups."""
    need_service("Redis", "127.0.0.1", 6379)
    from renkei.devstack import DevStack

    s = DevStack.launch(base, warehouse=pg_factory(), airflow_db=pg_factory(), env=smtp.env,
                        delivery=NO_QUIET_HOURS, **launch)
    try:
        wait(s, "the runs the stack started with to finish", lambda: startup_over(s), lambda: chain_busy(s),
             bound=STARTUP_BOUND_S)
        wait(s, "the change streams' consumer groups", lambda: change_groups_ready(s), bound=STARTUP_BOUND_S)
        yield s
    finally:
        s.shutdown()


def change_groups_ready(stack) -> bool:
    """The triggerer's watchers have created their consumer group on every source's change
    stream (before that, an event published while the triggerer is down has no group to wait in)."""
    from renkei.config import ingest_sources
    from renkei.events.channel import load_channel

    group = load_channel(stack.cfg_dir).group
    return all(group in stack.change_stream(src.name)["groups"] for src in ingest_sources())


def task_logs_saying(stack, text: str) -> tuple[int, list[str]]:
    """How many task logs the stack wrote, and those that contain ``text``."""
    logs = [p for p in (stack.base / "work" / "airflow" / "logs").rglob("*.log") if p.is_file()]
    return len(logs), [str(p) for p in logs if text in p.read_text(errors="replace")]
