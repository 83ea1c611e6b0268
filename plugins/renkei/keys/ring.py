"""The versioned keyring and its recipe-level API: seal, open and digest.

A keyring holds one list of versioned keys per *purpose*:

- ``dept:<department>`` — AES-SIV keys a department uses for its pseudonyms
  (``dept_pseudonym = AES-SIV(k_dept, resident_code)``),
- ``link``   — the AES-SIV key of the encrypted resident key (``ERK = AES-SIV(k_link, code)``),
- ``audit``  — the HMAC key of quasi-identifier digests (names, addresses) and the audit log.

Tokens and digests carry their key version (``v<N>.<payload>``), so rotation adds a version
and old tokens still open while their version is listed (like ``MultiFernet``). Each version
has a state: ``current`` (seals and opens), ``grace`` (a department's previous key: opens until
its ``grace_until`` date), ``history`` (a previous link or audit key: opens, so re-sealing and
reading history work, but never seals) and ``retired`` (refused with :class:`KeyRetired`). AES-SIV is
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from renkei.errors import KeyRetired, KeyRingError

# /2 adds version states. Files of /1 (no states) still load: a listed older version opens.
# New files are written as /2 so that code which ignores states cannot open a retired key.
FORMAT = "renkei-keyring/2"
READABLE_FORMATS = ("renkei-keyring/1", FORMAT)
CURRENT, GRACE, HISTORY, RETIRED = "current", "grace", "history", "retired"
DEFAULT_GRACE_DAYS = 30
TOKYO = ZoneInfo("Asia/Tokyo")
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
class _State:
    """The state of a version that is not current: grace (until a date), history or retired (on a date)."""

    state: str
    on: date | None = None  # grace: the last day it opens; retired: the day it was retired


@dataclass
class _Purpose:
    current: int
    keys: dict[int, bytes]
    sivs: dict[int, AESSIV] = field(default_factory=dict, repr=False)
    states: dict[int, _State] = field(default_factory=dict)  # non-current versions only


def _today_tokyo() -> date:
    return datetime.now(TOKYO).date()


def is_department(purpose: str) -> bool:
    return purpose.startswith("dept:")


class KeyRing:
    """Versioned keys by purpose. Build with :meth:`load` or :meth:`generate`.

    ``clock`` gives today's date (Asia/Tokyo by default) for grace periods; tests pin it.
    """

    def __init__(self, purposes: dict[str, _Purpose], clock: Callable[[], date] | None = None):
        self._purposes = purposes
        self.clock = clock or _today_tokyo

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
        if not isinstance(doc, dict) or doc.get("format") not in READABLE_FORMATS:
            raise KeyRingError(f"{origin}: 'format' must be one of {READABLE_FORMATS}; was this file written by `renkei keys init`?")
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
            purposes[name] = _Purpose(current, keys, states=_read_states(origin, name, spec.get("states"), keys, current))
        for needed in ("link", "audit"):
            if needed not in purposes:
                raise KeyRingError(f"{origin}: purpose {needed!r} is missing: regenerate with `renkei keys init`")
        return cls(purposes)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "purposes": {
                name: {
                    "current": p.current,
                    "keys": {str(v): _b64e(k) for v, k in sorted(p.keys.items())},
                    **({"states": {str(v): _state_dict(st) for v, st in sorted(p.states.items())}} if p.states else {}),
                }
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

    def current(self, purpose: str) -> int:
        """The version that seals new tokens of ``purpose``."""
        return self._purpose(purpose).current

    def state(self, purpose: str, version: int) -> str:
        """``current``, ``grace``, ``history`` or ``retired`` (a grace period that ended counts as retired)."""
        p = self._purpose(purpose)
        if version not in p.keys:
            raise KeyRingError(f"the keyring holds no {purpose} key version {version}: `renkei keys status` lists the versions")
        if version == p.current:
            return CURRENT
        st = p.states.get(version)
        if st is None:
            return HISTORY
        if st.state == GRACE and st.on is not None and self.clock() > st.on:
            return RETIRED
        return st.state

    def status(self) -> list[dict]:
        """Every purpose's versions with state and dates; never key material."""
        out = []
        for name in self.purposes():
            p = self._purposes[name]
            for v in sorted(p.keys):
                st = p.states.get(v)
                row = {"purpose": name, "version": v, "state": self.state(name, v)}
                if st is not None and st.state == GRACE:
                    row["grace_until"] = st.on.isoformat() if st.on else None
                if st is not None and st.state == RETIRED:
                    row["retired_on"] = st.on.isoformat() if st.on else None
                out.append(row)
        return out

    def rotate(self, purpose: str, grace_days: int | None = None, today: date | None = None) -> int:
        """Add a new version of ``purpose`` and make it current; returns it.

        A department's previous version stays in ``grace`` for ``grace_days`` (default 30) so
        extracts sealed before the department switched still load; the previous ``link`` or
        ``audit`` version becomes ``history``: it opens old tokens (the re-seal, the audit
        chain, a resident's history) and never seals.
        """
        p = self._purpose(purpose)
        if grace_days is not None and not is_department(purpose):
            raise KeyRingError(f"--grace-days applies to department keys only: the previous {purpose} version is kept "
                               f"as history until `renkei keys retire --purpose {purpose} --version N`")
        if grace_days is not None and grace_days < 0:
            raise KeyRingError(f"--grace-days must be 0 or more, not {grace_days}")
        today = today or self.clock()
        new = max(p.keys) + 1
        p.keys[new] = secrets.token_bytes(HMAC_KEY_BYTES if purpose == "audit" else SIV_KEY_BYTES)
        if is_department(purpose):
            days = DEFAULT_GRACE_DAYS if grace_days is None else grace_days
            p.states[p.current] = _State(GRACE, today + timedelta(days=days))
        else:
            p.states[p.current] = _State(HISTORY)
        p.current = new
        return new

    def retire(self, purpose: str, version: int, today: date | None = None) -> None:
        """Refuse tokens of ``version`` from now on (the current version and audit keys cannot be retired)."""
        p = self._purpose(purpose)
        if version not in p.keys:
            raise KeyRingError(f"the keyring holds no {purpose} key version {version}: `renkei keys status` lists the versions")
        if purpose == "audit":
            raise KeyRingError("audit key versions cannot be retired: the audit chain's older entries verify under them")
        if version == p.current:
            raise KeyRingError(f"{purpose} version {version} is current: rotate first (`renkei keys rotate --purpose {purpose}`)")
        p.states[version] = _State(RETIRED, today or self.clock())

    @staticmethod
    def version_of(token: str | None) -> int | None:
        """The key version a token or digest names (``v<N>.…``), None if it names none."""
        head, dot, _ = (token or "").partition(".")
        if not dot or not head.startswith("v") or not head[1:].isdigit():
            return None
        return int(head[1:])

    def _siv(self, purpose: str, version: int) -> AESSIV:
        p = self._purpose(purpose)
        siv = p.sivs.get(version)
        if siv is None:
            if version not in p.keys:
                raise KeyRingError(f"token sealed with {purpose} key version {version}, which this keyring does not hold")
            siv = p.sivs[version] = AESSIV(p.keys[version])
        return siv

    def _refuse_retired(self, purpose: str, version: int) -> None:
        p = self._purpose(purpose)
        if version == p.current or version not in p.states or self.state(purpose, version) != RETIRED:
            return
        st = p.states[version]
        when = f"its grace period ended {st.on.isoformat()}" if st.state == GRACE else f"retired on {st.on.isoformat() if st.on else '?'}"
        fix = (f"the department re-exports with `renkei pseudonymize` under version {p.current}"
               if is_department(purpose) else
               f"re-seal the data under version {p.current} before retiring (`renkei keys reseal --purpose {purpose}`)")
        raise KeyRetired(f"token sealed with {purpose} key version {version}, which is retired ({when}): {fix}")

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
        self._refuse_retired(purpose, v)
        try:
            return self._siv(purpose, v).decrypt(raw, [purpose.encode("ascii")]).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise KeyRingError(f"{purpose} token does not authenticate under key version {v} (tampered, truncated or wrong key)") from None

    def reseal(self, from_purpose: str, token: str, to_purpose: str) -> str:
        """Open a token of one purpose and seal its plaintext for another, in memory only."""
        return self.seal(to_purpose, self.open(from_purpose, token))

    def reseal_many(self, from_purpose: str, tokens: list[str], to_purpose: str) -> list[tuple[str | None, KeyRingError | None]]:
        """:meth:`reseal` for a batch: per token (new token, None) or (None, the error
        :meth:`reseal` would raise). Key lookups and version checks are done once per version,
        so a batch costs little more than its AES-SIV calls."""
        dst = self._purpose(to_purpose)
        seal = self._siv(to_purpose, dst.current).encrypt
        prefix, ad_from, ad_to = f"v{dst.current}.", [from_purpose.encode("ascii")], [to_purpose.encode("ascii")]
        openers: dict[str, object] = {}
        out: list[tuple[str | None, KeyRingError | None]] = []
        for token in tokens:
            version, _, body = (token or "").partition(".")
            try:  # the checks in open()'s order, so each token fails with open()'s error
                raw = _b64d(body) if body and version[1:].isdigit() and version.startswith("v") else None
            except ValueError:
                raw = None
            if raw is None:
                out.append((None, KeyRingError(f"not a {from_purpose} token (expected 'v<N>.<base64url>')")))
                continue
            opener = openers.get(version)
            if opener is None:
                opener = openers[version] = self._opener(from_purpose, version)
            if isinstance(opener, KeyRingError):
                out.append((None, opener))
                continue
            try:
                plain = opener(raw, ad_from)
            except InvalidTag:
                plain = None
            if plain is None:
                out.append((None, KeyRingError(
                    f"{from_purpose} token does not authenticate under key version {version[1:]} (tampered, truncated or wrong key)")))
                continue
            out.append((prefix + _b64e(seal(plain, ad_to)), None))
        return out

    def _opener(self, purpose: str, version: str):
        """The AES-SIV decrypt of a token version (``"v2"``), or the KeyRingError opening it raises."""
        try:
            v = int(version[1:]) if version.startswith("v") and version[1:].isdigit() else None
            if v is None:
                raise KeyRingError(f"not a {purpose} token (expected 'v<N>.<base64url>')")
            self._refuse_retired(purpose, v)
            return self._siv(purpose, v).decrypt
        except KeyRingError as exc:
            return exc

    def lookup_tokens(self, purpose: str, plaintext: str) -> list[str]:
        """The token of ``plaintext`` under every version that still opens, current first.

        For finding history sealed before a rotation; never for writing (that is :meth:`seal`).
        """
        p = self._purpose(purpose)
        versions = [p.current] + sorted((v for v in p.keys if v != p.current and self.state(purpose, v) != RETIRED), reverse=True)
        aad = [purpose.encode("ascii")]
        return [f"v{v}.{_b64e(self._siv(purpose, v).encrypt(plaintext.encode('utf-8'), aad))}" for v in versions]

    def digest(self, normalized_value: str, version: int | None = None) -> str:
        """Keyed HMAC-SHA256 digest of an already normalised quasi-identifier (current audit key
        unless ``version`` names another held one)."""
        v = self._audit_version(version)
        return f"v{v}.{self.mac(normalized_value.encode('utf-8'), version=v)}"

    def mac(self, message: bytes, version: int | None = None) -> str:
        """HMAC-SHA256 (hex) of raw bytes under the current audit key, or under ``version``.

        Any held version verifies: the audit chain's older entries name the version they were
        written under.
        """
        p = self._purpose("audit")
        return hmac.new(p.keys[self._audit_version(version)], message, hashlib.sha256).hexdigest()

    def _audit_version(self, version: int | None) -> int:
        p = self._purpose("audit")
        if version is None:
            return p.current
        if version not in p.keys:
            raise KeyRingError(f"the keyring holds no audit key version {version}: restore the keyring that wrote it")
        return version

    def __repr__(self) -> str:  # never print key material
        return f"KeyRing(purposes={self.purposes()})"


def _read_states(origin: str, name: str, doc: object, keys: dict[int, bytes], current: int) -> dict[int, _State]:
    if doc is None:
        return {}
    out: dict[int, _State] = {}
    try:
        for v, spec in dict(doc).items():
            version, state = int(v), spec["state"]
            on = spec.get("grace_until") if state == GRACE else spec.get("retired_on")
            out[version] = _State(state, date.fromisoformat(on) if on else None)
    except (KeyError, TypeError, ValueError):
        raise KeyRingError(f"{origin}: purposes.{name}.states must map a version to "
                           "{state: grace|history|retired, grace_until|retired_on: YYYY-MM-DD}") from None
    for v, st in out.items():
        if v not in keys or v == current or st.state not in (GRACE, HISTORY, RETIRED) or (st.state == GRACE and st.on is None):
            raise KeyRingError(f"{origin}: purposes.{name}.states.{v} is invalid: only a held, non-current version has a "
                               "state, one of grace (with grace_until), history or retired")
    return out


def _state_dict(st: _State) -> dict:
    out: dict = {"state": st.state}
    if st.on is not None:
        out["grace_until" if st.state == GRACE else "retired_on"] = st.on.isoformat()
    return out


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
