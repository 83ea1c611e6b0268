"""Anchors for the audit trail's head, kept where the warehouse's writers cannot rewrite them.

After every append the head (seq, entry_hash, head_mac, time, warehouse id) is exported to the
anchor named by ``$RENKEI_AUDIT_ANCHOR``:

* a directory (the default): one append-only JSON-lines file per warehouse, ``<id>.jsonl``,
  where ``<id>`` hashes the warehouse URL without its password. Lines are written with
  ``O_APPEND`` and fsynced, the file is mode 0600; ``chattr +a`` on it makes it append-only
  for root-less writers too (docs/OPERATIONS.md).
* an ``http(s)://`` URL: an auditor's endpoint. The head is POSTed as JSON; verification GETs
  ``<url>?warehouse=<id>`` and accepts the latest record (a JSON object), a list of records,
  or 404 / ``null`` for none. ``$RENKEI_AUDIT_ANCHOR_TOKEN``, when set, is sent as a bearer token.

Unset, the directory is ``audit-anchors/`` next to the keyring file
(:func:`renkei.keys.ring.keyring_path`) when that can be used, else
``~/.local/state/renkei/audit-anchors``.

Each record carries ``mac``, an HMAC under the chain key over all its fields, so a line that was
edited, forged or copied from another warehouse's anchor does not authenticate. This module only
moves records; :mod:`renkei.audit.trail` builds and checks them.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa

from renkei.errors import RenkeiError
from renkei.keys.ring import keyring_path

ENV = "RENKEI_AUDIT_ANCHOR"
ENV_TOKEN = "RENKEI_AUDIT_ANCHOR_TOKEN"
FORMAT = "renkei-audit-anchor/1"
DIRNAME = "audit-anchors"
HOME_DEFAULT = Path("~/.local/state/renkei") / DIRNAME
TAIL_BYTES = 64 * 1024  # what append reads of a file anchor to learn the anchored seq
HTTP_TIMEOUT = 10


class AnchorError(RenkeiError):
    """The anchor cannot be read or written."""


class Sink(Protocol):
    """Where anchored heads go: ``write`` one record, ``read`` a warehouse's records."""

    def check(self) -> None: ...

    def write(self, record: dict) -> None: ...

    def read(self, warehouse: str, tail: bool = False) -> list[tuple[str, dict | None]]:
        """(where, record) per stored record; record None when it does not parse. ``tail``: the
        recent ones suffice (append's check), else all."""
        ...

    def describe(self, warehouse: str) -> str: ...


def warehouse_id(url: str) -> str:
    """The warehouse's anchor id: a hash of its URL without password, driver or options (a
    SQLite path made absolute), so every writer and verifier of one warehouse agrees on it."""
    u = sa.engine.make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        db = u.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            db = str(Path(db).resolve())
        canonical = f"sqlite:///{db}"
    else:
        port = u.port or {"postgresql": 5432, "mysql": 3306}.get(backend)
        canonical = f"{backend}://{u.username or ''}@{(u.host or '').lower()}:{port or ''}/{u.database or ''}"
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


class FileAnchor:
    """Append-only JSON-lines files, one per warehouse, in ``directory``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()

    def path(self, warehouse: str) -> Path:
        return self.directory / f"{warehouse}.jsonl"

    def describe(self, warehouse: str) -> str:
        return str(self.path(warehouse))

    def check(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise AnchorError(f"the audit anchor directory {self.directory} cannot be created ({exc}): "
                              f"set {ENV} to a writable directory or an auditor's http(s) URL") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise AnchorError(f"the audit anchor directory {self.directory} is not writable: "
                              f"set {ENV} to a writable directory or an auditor's http(s) URL")

    def write(self, record: dict) -> None:
        self.check()
        path = self.path(record["warehouse"])
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")
        created = not path.exists()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one write of one line: O_APPEND keeps concurrent lines whole
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                dfd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            raise AnchorError(f"cannot append to the audit anchor {path}: {exc}") from None

    def read(self, warehouse: str, tail: bool = False) -> list[tuple[str, dict | None]]:
        path = self.path(warehouse)
        try:
            with open(path, "rb") as f:
                start = 0
                if tail:
                    size = f.seek(0, os.SEEK_END)
                    start = max(0, size - TAIL_BYTES)
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise AnchorError(f"cannot read the audit anchor {path}: {exc}") from None
        lines = data.split(b"\n")
        first = 1
        if start:
            lines = lines[1:]  # the first line read from mid-file may be partial
            first = None
        out: list[tuple[str, dict | None]] = []
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            where = f"{path}:{first + i}" if first else f"{path} (near the end)"
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = None
            out.append((where, rec if isinstance(rec, dict) else None))
        return out


class HttpAnchor:
    """An auditor's endpoint: POST a record, GET ``?warehouse=<id>`` for the latest (or all)."""

    def __init__(self, url: str):
        self.url = url

    def describe(self, warehouse: str) -> str:
        return f"{self._safe_url()} (warehouse {warehouse})"

    def _safe_url(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def _request(self, req: urllib.request.Request) -> tuple[int, bytes]:
        token = os.environ.get(ENV_TOKEN)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 - http(s) only, checked by sink()
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except (urllib.error.URLError, OSError) as exc:
            raise AnchorError(f"the audit anchor {self._safe_url()} is unreachable: {exc}") from None

    def check(self) -> None:
        return None  # reachability shows in read (before an append) and write

    def write(self, record: dict) -> None:
        body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")
        req = urllib.request.Request(self.url, data=body, method="POST", headers={"Content-Type": "application/json"})
        status, _ = self._request(req)
        if not 200 <= status < 300:
            raise AnchorError(f"the audit anchor {self._safe_url()} refused the head (HTTP {status})")

    def read(self, warehouse: str, tail: bool = False) -> list[tuple[str, dict | None]]:
        sep = "&" if urllib.parse.urlsplit(self.url).query else "?"
        req = urllib.request.Request(f"{self.url}{sep}warehouse={warehouse}", headers={"Accept": "application/json"})
        status, body = self._request(req)
        if status == 404:
            return []
        if not 200 <= status < 300:
            raise AnchorError(f"the audit anchor {self._safe_url()} answered HTTP {status} for warehouse {warehouse}")
        try:
            doc = json.loads(body or b"null")
        except ValueError:
            return [(self._safe_url(), None)]
        if doc is None:
            return []
        if isinstance(doc, dict) and isinstance(doc.get("anchors"), list):
            doc = doc["anchors"]
        records = doc if isinstance(doc, list) else [doc]
        return [(f"{self._safe_url()} record {i + 1}", r if isinstance(r, dict) else None) for i, r in enumerate(records)]


def default_directory(keyring: str | os.PathLike | None = None, create: bool = False) -> Path:
    """``audit-anchors/`` next to the keyring file when it exists or can be made (``create``),
    else ``~/.local/state/renkei/audit-anchors``."""
    home = HOME_DEFAULT.expanduser()
    if keyring is None:
        try:
            keyring = keyring_path()
        except RenkeiError:
            return home
    beside = Path(keyring).expanduser().resolve().parent / DIRNAME
    if beside.is_dir() and os.access(beside, os.W_OK | os.X_OK):
        return beside
    if create:
        try:
            beside.mkdir(mode=0o700, parents=True, exist_ok=True)
            return beside
        except OSError:
            return home
    if beside.is_dir() or not home.is_dir():
        return beside
    return home


def sink(spec: str | os.PathLike | Sink | None = None, keyring: str | os.PathLike | None = None,
         create: bool = False) -> Sink:
    """The anchor: ``spec`` (a sink, a directory or an http(s) URL), else ``$RENKEI_AUDIT_ANCHOR``,
    else :func:`default_directory` for ``keyring`` (default: the configured keyring path)."""
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        return spec
    spec = os.fspath(spec) if spec is not None else os.environ.get(ENV, "").strip()
    if spec.startswith(("http://", "https://")):
        return HttpAnchor(spec)
    if spec:
        return FileAnchor(spec)
    return FileAnchor(default_directory(keyring, create=create))
