"""The versioned keyring and its recipe-level API: seal, open and digest.

A keyring holds one list of versioned keys per *purpose*:

- ``dept:<department>`` — AES-SIV keys a department uses for its pseudonyms
  (``dept_pseudonym = AES-SIV(k_dept, resident_code)``),
- ``link``   — the AES-SIV key of the encrypted resident key (``ERK = AES-SIV(k_link, code)``),
- ``audit``  — the HMAC key of quasi-identifier digests (names, addresses) and the audit log.

Tokens and digests carry their key version (``v<N>.<payload>``), so rotation adds a version
and old tokens still open while their version is listed (like ``MultiFernet``). AES-SIV is
deterministic: the same plaintext under the same key gives the same token, which is what makes
a pseudonym a join key. The purpose is bound as associated data, so a token sealed for one
purpose never opens under another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from renkei.errors import KeyRingError

FORMAT = "renkei-keyring/1"
SIV_KEY_BYTES = 64  # AES-256-SIV
HMAC_KEY_BYTES = 32
ENV_PATH = "RENKEI_KEYRING"
AIRFLOW_VARIABLE = "renkei_keyring_path"
DEFAULT_DEPARTMENTS = (
    "ward_office",       # registry, registry_contact (住民記録)
    "health_bureau",     # immunization (予防接種)
    "children_bureau",   # child_health (乳幼児健診)
    "nhi",               # national health insurance (国保)
    "digital_office",    # city app subscriptions
)


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class _Purpose:
    current: int
    keys: dict[int, bytes]
    sivs: dict[int, AESSIV] = field(default_factory=dict, repr=False)


class KeyRing:
    """Versioned keys by purpose. Build with :meth:`load` or :meth:`generate`."""

    def __init__(self, purposes: dict[str, _Purpose]):
        self._purposes = purposes

    # -- construction -------------------------------------------------------------------
    @classmethod
    def generate(cls, departments: tuple[str, ...] = DEFAULT_DEPARTMENTS) -> "KeyRing":
        """A fresh keyring: one version-1 key per department, the link key and the audit key."""
        purposes = {f"dept:{d}": _Purpose(1, {1: secrets.token_bytes(SIV_KEY_BYTES)}) for d in departments}
        purposes["link"] = _Purpose(1, {1: secrets.token_bytes(SIV_KEY_BYTES)})
        purposes["audit"] = _Purpose(1, {1: secrets.token_bytes(HMAC_KEY_BYTES)})
        return cls(purposes)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "KeyRing":
        """Load the keyring at ``path`` (else from configuration, see :func:`keyring_path`).

        Refuses a file that group or others can read: keys must be private to their owner.
        """
        p = Path(path) if path else keyring_path()
        try:
            st = p.stat()
        except FileNotFoundError:
            raise KeyRingError(
                f"keyring not found at {p}: create one with `renkei keys init --path {p}` "
                f"or point {ENV_PATH} at the existing file"
            ) from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyRingError(
                f"keyring {p} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
                f"run `chmod 600 {p}`"
            )
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KeyRingError(f"keyring {p} cannot be read as JSON ({type(exc).__name__}): restore it from backup") from None
        return cls.from_dict(doc, origin=str(p))

    @classmethod
    def from_dict(cls, doc: dict, origin: str = "keyring") -> "KeyRing":
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise KeyRingError(f"{origin}: 'format' must be {FORMAT!r}; was this file written by `renkei keys init`?")
        purposes: dict[str, _Purpose] = {}
        for name, spec in (doc.get("purposes") or {}).items():
            try:
                keys = {int(v): _b64d(k) for v, k in spec["keys"].items()}
                current = int(spec["current"])
            except (KeyError, TypeError, ValueError):
                raise KeyRingError(f"{origin}: purposes.{name} needs 'current' and 'keys' {{version: base64}}") from None
            if current not in keys:
                raise KeyRingError(f"{origin}: purposes.{name}.current={current} names no key in 'keys'")
            want = HMAC_KEY_BYTES if name == "audit" else SIV_KEY_BYTES
            for v, k in keys.items():
                if len(k) != want:
                    raise KeyRingError(f"{origin}: purposes.{name}.keys.{v} must be {want} bytes, base64url-encoded")
            purposes[name] = _Purpose(current, keys)
        for needed in ("link", "audit"):
            if needed not in purposes:
                raise KeyRingError(f"{origin}: purpose {needed!r} is missing: regenerate with `renkei keys init`")
        return cls(purposes)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "purposes": {
                name: {"current": p.current, "keys": {str(v): _b64e(k) for v, k in sorted(p.keys.items())}}
                for name, p in sorted(self._purposes.items())
            },
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the keyring with mode 0600 (created atomically, never world-readable)."""
        p = Path(path)
        if p.exists() and not overwrite:
            raise KeyRingError(f"keyring {p} exists: refusing to overwrite keys (use a new path or rotate)")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
        return p

    # -- recipes ------------------------------------------------------------------------
    def purposes(self) -> list[str]:
        return sorted(self._purposes)

    def versions(self, purpose: str) -> dict[str, object]:
        p = self._purpose(purpose)
        return {"current": p.current, "versions": sorted(p.keys)}

    def _purpose(self, purpose: str) -> _Purpose:
        try:
            return self._purposes[purpose]
        except KeyError:
            raise KeyRingError(f"the keyring has no key for purpose {purpose!r}: add it with `renkei keys init` on a new ring") from None

    def _siv(self, purpose: str, version: int) -> AESSIV:
        p = self._purpose(purpose)
        siv = p.sivs.get(version)
        if siv is None:
            if version not in p.keys:
                raise KeyRingError(f"token sealed with {purpose} key version {version}, which this keyring does not hold")
            siv = p.sivs[version] = AESSIV(p.keys[version])
        return siv

    def seal(self, purpose: str, plaintext: str) -> str:
        """Deterministic AES-SIV token of ``plaintext`` under the purpose's current key."""
        p = self._purpose(purpose)
        ct = self._siv(purpose, p.current).encrypt(plaintext.encode("utf-8"), [purpose.encode("ascii")])
        return f"v{p.current}.{_b64e(ct)}"

    def open(self, purpose: str, token: str) -> str:
        """The plaintext of a token; :class:`KeyRingError` for any token that does not open."""
        version, _, body = (token or "").partition(".")
        try:
            v = int(version[1:]) if version.startswith("v") else None
            raw = _b64d(body) if v is not None and body else None
        except ValueError:
            raw = None
        if v is None or raw is None:
            raise KeyRingError(f"not a {purpose} token (expected 'v<N>.<base64url>')")
        try:
            return self._siv(purpose, v).decrypt(raw, [purpose.encode("ascii")]).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise KeyRingError(f"{purpose} token does not authenticate under key version {v} (tampered, truncated or wrong key)") from None

    def reseal(self, from_purpose: str, token: str, to_purpose: str) -> str:
        """Open a token of one purpose and seal its plaintext for another, in memory only."""
        return self.seal(to_purpose, self.open(from_purpose, token))

    def digest(self, normalized_value: str) -> str:
        """Keyed HMAC-SHA256 digest of an already normalised quasi-identifier."""
        p = self._purpose("audit")
        mac = hmac.new(p.keys[p.current], normalized_value.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"v{p.current}.{mac}"

    def mac(self, message: bytes) -> str:
        """HMAC-SHA256 (hex) of raw bytes under the current audit key."""
        p = self._purpose("audit")
        return hmac.new(p.keys[p.current], message, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never print key material
        return f"KeyRing(purposes={self.purposes()})"


def keyring_path() -> Path:
    """Where the keyring lives: ``$RENKEI_KEYRING``, else the Airflow Variable ``renkei_keyring_path``."""
    env = os.environ.get(ENV_PATH)
    if env:
        return Path(env)
    try:  # inside Airflow, a Variable (or a secrets backend behind it) may name the file
        from airflow.sdk import Variable  # noqa: PLC0415 - optional, only inside Airflow

        value = Variable.get(AIRFLOW_VARIABLE, default=None)
    except Exception:  # noqa: BLE001 - no Airflow, or no Variable: fall through to the error
        value = None
    if value:
        return Path(value)
    raise KeyRingError(
        f"no keyring configured: set {ENV_PATH}=/path/to/keyring.json (or the Airflow Variable "
        f"{AIRFLOW_VARIABLE}); create one with `renkei keys init --path ...`"
    )
