"""Who may see and decide: Airflow's own login, the configured auth manager, and CSRF tokens.

The user comes from the JWT the Airflow UI keeps (the ``_token`` cookie) or an
``Authorization: Bearer`` header, resolved exactly as Airflow's REST API does
(``airflow.api_fastapi.core_api.security.get_user``). Permissions are asked of the configured
auth manager on the ``link_residents`` Dag — the Dag whose runs apply review decisions — so
they mean the same with SimpleAuthManager, FAB or Keycloak:

- read the Dag (GET)  → every Renkei page: keys, counts, reasons;
- edit the Dag (PUT)  → request an approve or reject of a review item;
- the health-facts permission (:func:`sees_health_facts`) → the facts a notice's rule used
  (birth date, qualification and check-up dates, doses counted) and the notice windows, which
  are derived from them. SimpleAuthManager grants every custom view to every viewer, so there
  the permission is a list of user names, ``[renkei] health_facts_users``
  (``AIRFLOW__RENKEI__HEALTH_FACTS_USERS``); any other auth manager (FAB, Keycloak) is also
  asked for ``GET`` on the custom resource ``Renkei Health Facts`` (FAB: ``can_read``).

A decision posted with the session cookie must also carry a form token bound to the user
(HMAC under ``[api] secret_key``) and come from this origin (``Origin``/``Referer``): the
cookie alone never decides anything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
from airflow.api_fastapi.core_api.security import get_user
from airflow.configuration import conf
from fastapi import HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials

GUARD_DAG = "link_residents"
READ, REVIEW = "GET", "PUT"
HEALTH_FACTS_RESOURCE = "Renkei Health Facts"
CSRF_TTL_S = 8 * 3600
_FALLBACK_SECRET = secrets.token_bytes(32)  # only when [api] secret_key is unset: one process


async def authenticate(request: Request):
    """The Airflow user of this request; HTTPException 401 (none, expired) or 403 (invalid)."""
    creds = None
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        creds = HTTPAuthorizationCredentials(scheme=scheme, credentials=value.strip())
    return await get_user(request, None, creds)


def allowed(user, method: str) -> bool:
    """Whether the auth manager lets ``user`` do ``method`` on the guard Dag."""
    return bool(get_auth_manager().is_authorized_dag(method=method, details=DagDetails(id=GUARD_DAG), user=user))


def health_facts_users() -> set[str]:
    """The user names of ``[renkei] health_facts_users`` (comma separated)."""
    return {u.strip() for u in conf.get("renkei", "health_facts_users", fallback="").split(",") if u.strip()}


def sees_health_facts(user) -> bool:
    """Whether ``user`` may see a notice's health facts (and windows): named in
    ``[renkei] health_facts_users``, or — with an auth manager other than SimpleAuthManager, whose
    custom-view check lets every viewer in — authorized for GET on ``Renkei Health Facts``."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager  # noqa: PLC0415

    if user.get_name() in health_facts_users():
        return True
    manager = get_auth_manager()
    if isinstance(manager, SimpleAuthManager):
        return False
    return bool(manager.is_authorized_custom_view(method="GET", resource_name=HEALTH_FACTS_RESOURCE, user=user))


def login_url(request: Request) -> str:

    return get_auth_manager().get_url_login(next_url=str(request.url))


def _secret() -> bytes:
    key = conf.get("api", "secret_key", fallback="")
    return hashlib.sha256(b"renkei-ui-csrf\0" + key.encode()).digest() if key else _FALLBACK_SECRET


def _mac(user_name: str, issued: int) -> str:
    return hmac.new(_secret(), f"{user_name}\0{issued}".encode(), hashlib.sha256).hexdigest()


def csrf_token(user_name: str, now: float | None = None) -> str:
    """A form token for ``user_name``, valid for CSRF_TTL_S."""
    issued = int(now if now is not None else time.time())
    return f"{issued}.{_mac(user_name, issued)}"


def csrf_valid(token: str, user_name: str, now: float | None = None) -> bool:
    issued_s, _, mac = (token or "").partition(".")
    if not issued_s.isdigit() or not mac:
        return False
    age = int(now if now is not None else time.time()) - int(issued_s)
    return 0 <= age <= CSRF_TTL_S and hmac.compare_digest(mac, _mac(user_name, int(issued_s)))


def _origin(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}".lower()


def check_post(request: Request, user_name: str, token: str) -> None:
    """Refuse a cookie-authenticated POST from another origin or without the user's form token."""
    if request.headers.get("authorization", "").lower().startswith("bearer "):
        return  # a browser never adds this header on its own: no ambient credential to abuse
    mine = {_origin(str(request.base_url))}
    if base := conf.get("api", "base_url", fallback=""):
        mine.add(_origin(base))
    referer = request.headers.get("referer")
    sent = request.headers.get("origin") or (_origin(referer) if referer else "")
    if sent.lower() not in mine:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "cross-origin or origin-less form post refused: submit the form from the Renkei page")
    if not csrf_valid(token, user_name):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "the form token is missing, expired or not yours: reload the review page and submit again")
