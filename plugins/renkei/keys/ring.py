"""The versioned keyring and its recipe-level API: seal, open and digest.

A keyring holds one list of versioned keys per *purpose*:

- ``dept:<department>`` — AES-SIV keys a department uses for its pseudonyms
  (``dept_pseudonym = AES-SIV(k_dept, resident_code)``),
- ``link``   — the AES-SIV key of the encrypted resident key (``ERK = AES-SIV(k_link, code)``),
- ``match``  — the HMAC key of the pipeline's quasi-identifier digests (names, addresses), made
  inside the pipeline from values the department sealed under its own key,
- ``chain``  — the HMAC key of the audit trail's chain and head (the pipeline's writers only),
- ``contact`` — the AES-SIV key of the contact token (``AES-SIV(k_contact, code)``) the pipeline
  puts beside each notified ERK, so delivery finds a contact without the link key.

A keyring holds only the purposes its holder needs (:data:`HOLDERS`, ``renkei keys export
--for``): a department holds its ``dept:`` key and nothing else. Each operation checks for the
purpose it uses when it uses it. Files written before purposes were split name the match key
``audit``; they load with it as ``match`` (the trail entries it signed still verify).

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
import tempfile
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
# /3 renames the digest key ``audit`` to ``match`` and adds ``chain``; /1 and /2 files still load.
FORMAT = "renkei-keyring/3"
READABLE_FORMATS = ("renkei-keyring/1", "renkei-keyring/2", FORMAT)
CURRENT, GRACE, HISTORY, RETIRED = "current", "grace", "history", "retired"
DEFAULT_GRACE_DAYS = 30
TOKYO = ZoneInfo("Asia/Tokyo")
SIV_KEY_BYTES = 64  # AES-256-SIV
HMAC_KEY_BYTES = 32
HMAC_PURPOSES = ("match", "chain")
LEGACY_NAMES = {"audit": "match"}  # the purpose's name in files written before /3
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


def holder_purposes(holder: str, available: list[str]) -> list[str]:
    """The purposes a key holder receives (``renkei keys export --for``).

    ``dept:<name>``: that department's key only — it pseudonymizes and seals its quasi-
    identifiers, and can open nothing of the pipeline's. ``pipeline``: every department key (to
    re-seal pseudonyms into ERKs and sealed values into match digests), ``link``, ``match``,
    ``chain`` and ``contact`` (to seal contact tokens). ``auditor``: ``chain`` only (verifies the
    trail, can open and link nothing). ``delivery``: ``contact`` only — it opens the contact
    tokens of the notices it delivers, to find the contact in the registry's boundary, and
    cannot open an ERK.
    """
    if is_department(holder):
        wanted = [holder]
    elif holder == "pipeline":
        wanted = [p for p in available if is_department(p)] + ["link", "match", "chain", "contact"]
    elif holder == "auditor":
        wanted = ["chain"]
    elif holder == "delivery":
        wanted = ["contact"]
    else:
        raise KeyRingError(f"unknown key holder {holder!r}: use dept:<department>, pipeline, delivery or auditor")
    missing = [p for p in wanted if p not in available]
    if missing:
        raise KeyRingError(f"the keyring has no {', '.join(missing)} key for holder {holder}: "
                           "`renkei keys status` lists its purposes; `renkei keys add --purpose P` adds one")
    return wanted


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
        """A fresh keyring: one version-1 key per department, the link, match and chain keys."""
        purposes = {f"dept:{d}": _Purpose(1, {1: secrets.token_bytes(SIV_KEY_BYTES)}) for d in departments}
        for name in ("link", "contact", *HMAC_PURPOSES):
            purposes[name] = _Purpose(1, {1: secrets.token_bytes(_key_bytes(name))})
        return cls(purposes)

    def subset(self, purposes: list[str]) -> "KeyRing":
        """A keyring of only ``purposes`` (every version and state of each), for one holder."""
        return KeyRing({n: _Purpose(self._purpose(n).current, dict(self._purpose(n).keys),
                                    states=dict(self._purpose(n).states)) for n in purposes}, self.clock)

    def add(self, purpose: str) -> None:
        """Add a purpose the keyring does not hold yet (version 1), e.g. ``chain`` to a /2 keyring."""
        if purpose in self._purposes:
            raise KeyRingError(f"the keyring already holds {purpose}: rotate it instead (`renkei keys rotate --purpose {purpose}`)")
        if purpose not in ("link", "contact", *HMAC_PURPOSES) and not is_department(purpose):
            raise KeyRingError(f"unknown purpose {purpose!r}: one of link, contact, match, chain or dept:<department>")
        self._purposes[purpose] = _Purpose(1, {1: secrets.token_bytes(_key_bytes(purpose))})

    def holds(self, purpose: str) -> bool:
        return purpose in self._purposes

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
        for stored_name, spec in (doc.get("purposes") or {}).items():
            name = LEGACY_NAMES.get(stored_name, stored_name)
            if name in purposes:
                raise KeyRingError(f"{origin}: purposes {stored_name!r} and {name!r} are the same key: keep one")
            try:
                keys = {int(v): _b64d(k) for v, k in spec["keys"].items()}
                current = int(spec["current"])
            except (KeyError, TypeError, ValueError):
                raise KeyRingError(f"{origin}: purposes.{name} needs 'current' and 'keys' {{version: base64}}") from None
            if current not in keys:
                raise KeyRingError(f"{origin}: purposes.{name}.current={current} names no key in 'keys'")
            want = _key_bytes(name)
            for v, k in keys.items():
                if len(k) != want:
                    raise KeyRingError(f"{origin}: purposes.{name}.keys.{v} must be {want} bytes, base64url-encoded")
            purposes[name] = _Purpose(current, keys, states=_read_states(origin, name, spec.get("states"), keys, current))
        if not purposes:
            raise KeyRingError(f"{origin}: the keyring holds no purpose: write one with `renkei keys init` or `renkei keys export`")
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
        """Write the keyring with mode 0600: a new temporary file in the same directory (never
        world-readable), fsynced, renamed over ``path``, and the directory fsynced — a crash
        leaves the old keyring or the new one, never a torn or empty file."""
        p = Path(path)
        if p.exists() and not overwrite:
            raise KeyRingError(f"keyring {p} exists: refusing to overwrite keys (use a new path or rotate)")
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_dict(), fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
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
        p.keys[new] = secrets.token_bytes(_key_bytes(purpose))
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
        if purpose in HMAC_PURPOSES:
            raise KeyRingError(f"{purpose} key versions cannot be retired: digests and trail entries made under them verify under them")
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

    def digest_sealed_many(self, purpose: str, tokens: list[str], domain: str) -> list[tuple[str | None, KeyRingError | None]]:
        """Per token sealed by a department (``purpose``) over ``"<domain>:<normalised value>"``:
        (the value's match digest, None) or (None, the error). The plaintext exists only here,
        in memory; a token of another domain (a name sealed into the address column) is refused."""
        prefix = f"{domain}:".encode("utf-8")
        ad = [purpose.encode("ascii")]
        key = self._purpose("match")
        match_key, version = key.keys[key.current], key.current
        openers: dict[str, object] = {}
        out: list[tuple[str | None, KeyRingError | None]] = []
        for token in tokens:
            head, _, body = (token or "").partition(".")
            try:
                raw = _b64d(body) if body and head.startswith("v") and head[1:].isdigit() else None
            except ValueError:
                raw = None
            opener = None if raw is None else openers.get(head)
            if raw is not None and opener is None:
                opener = openers[head] = self._opener(purpose, head)
            if raw is None or isinstance(opener, KeyRingError):
                out.append((None, opener if isinstance(opener, KeyRingError) else
                            KeyRingError(f"not a sealed {domain} (expected 'v<N>.<base64url>')")))
                continue
            try:
                plain = opener(raw, ad)
            except InvalidTag:
                plain = None
            if plain is None or not plain.startswith(prefix):
                out.append((None, KeyRingError(f"a sealed {domain} does not authenticate under {purpose} version {head[1:]} "
                                               "(tampered, another column's value, or wrong key)")))
                continue
            mac = hmac.new(match_key, plain[len(prefix):], hashlib.sha256).hexdigest()
            out.append((f"v{version}.{mac}", None))
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
        """Keyed HMAC-SHA256 match digest of an already normalised quasi-identifier (current
        match key unless ``version`` names another held one)."""
        v = self._hmac_version("match", version)
        return f"v{v}.{self.mac(normalized_value.encode('utf-8'), version=v)}"

    def mac(self, message: bytes, version: int | None = None, purpose: str = "match") -> str:
        """HMAC-SHA256 (hex) of raw bytes under the current key of ``purpose`` (``match`` or
        ``chain``), or under ``version``: any held version verifies, so entries written before a
        rotation verify under the version they name."""
        if purpose not in HMAC_PURPOSES:
            raise KeyRingError(f"{purpose} is not an HMAC purpose (one of {', '.join(HMAC_PURPOSES)})")
        p = self._purpose(purpose)
        return hmac.new(p.keys[self._hmac_version(purpose, version)], message, hashlib.sha256).hexdigest()

    def _hmac_version(self, purpose: str, version: int | None) -> int:
        p = self._purpose(purpose)
        if version is None:
            return p.current
        if version not in p.keys:
            raise KeyRingError(f"the keyring holds no {purpose} key version {version}: restore the keyring that wrote it")
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


def _key_bytes(purpose: str) -> int:
    return HMAC_KEY_BYTES if purpose in HMAC_PURPOSES else SIV_KEY_BYTES


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
