"""Shared fixtures: real services when they run here, a clear skip (or failure) when not.

Tests that need PostgreSQL or Redis skip with the reason when the service is absent; with
``RENKEI_REQUIRE_SERVICES=1`` (set by .ci/run) such a skip becomes a failure.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("RENKEI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE = os.environ.get("RENKEI_REQUIRE_SERVICES") == "1"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    if _port_open(host, port):
        return
    msg = f"{name} is not reachable at {host}:{port}; start it (see README, 'Services')"
    if REQUIRE:
        pytest.fail(f"{msg} — RENKEI_REQUIRE_SERVICES=1 turns this skip into a failure")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def pg_factory():
    """Creates fresh PostgreSQL databases on demand; drops them all at the end of the session."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def create() -> str:
        name = f"renkei_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield create
    with admin.connect() as conn:
        for name in made:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_url(request, tmp_path) -> str:
    """An empty database of each warehouse engine in turn (the test runs once per engine):
    SQLite in tmp_path, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return request.getfixturevalue("pg_factory")()


@pytest.fixture(scope="module")
def pg_url(pg_factory):
    """A PostgreSQL database of this test module's own."""
    return pg_factory()


@pytest.fixture
def ring():
    from renkei.keys.ring import KeyRing

    return KeyRing.generate()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under RENKEI_REQUIRE_SERVICES=1 every skip is a failure, whatever raised it (a skip marker,
    ``pytest.skip`` in a fixture, an import guard): CI proves the whole suite ran."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under RENKEI_REQUIRE_SERVICES=1 (CI runs every test): {reason}"


@pytest.fixture(scope="session", autouse=True)
def _audit_anchor_dir(tmp_path_factory):
    """Audit-trail anchors (renkei.audit.anchor) go to this session's tmp dir, not beside a
    keyring outside it or to ~/.local/state; each warehouse still gets its own anchor file.
    A test that sets RENKEI_AUDIT_ANCHOR itself (monkeypatch) wins."""
    anchors = tmp_path_factory.mktemp("audit-anchors")
    before = os.environ.get("RENKEI_AUDIT_ANCHOR")
    os.environ["RENKEI_AUDIT_ANCHOR"] = str(anchors)
    yield anchors
    if before is None:
        os.environ.pop("RENKEI_AUDIT_ANCHOR", None)
    else:
        os.environ["RENKEI_AUDIT_ANCHOR"] = before


@pytest.fixture(scope="session", autouse=True)
def _data_docs_dir(tmp_path_factory):
    """GX Data Docs (renkei.quality.datadocs) that ingest steps build go to this session's tmp dir,
    not to var/ in the repo. A test that sets RENKEI_DATA_DOCS itself (monkeypatch) wins."""
    site = tmp_path_factory.mktemp("data-docs")
    before = os.environ.get("RENKEI_DATA_DOCS")
    os.environ["RENKEI_DATA_DOCS"] = str(site)
    yield site
    if before is None:
        os.environ.pop("RENKEI_DATA_DOCS", None)
    else:
        os.environ["RENKEI_DATA_DOCS"] = before
