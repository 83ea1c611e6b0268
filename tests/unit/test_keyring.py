"""The keyring: deterministic pseudonyms, authenticated tokens, versions, file safety."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from renkei.errors import KeyRingError
from renkei.keys.ring import KeyRing

FIXED = {
    "format": "renkei-keyring/1",
    "purposes": {
        "dept:health_bureau": {"current": 1, "keys": {"1": base64.urlsafe_b64encode(bytes(range(64))).decode().rstrip("=")}},
        "link": {"current": 1, "keys": {"1": base64.urlsafe_b64encode(bytes(range(64, 128))).decode().rstrip("=")}},
        "audit": {"current": 1, "keys": {"1": base64.urlsafe_b64encode(b"\x0b" * 32).decode().rstrip("=")}},
    },
}


def test_rfc5297_vector_through_the_primitive_we_use():
    # RFC 5297 A.1 (deterministic authenticated encryption example).
    key = bytes.fromhex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    ad = bytes.fromhex("101112131415161718191a1b1c1d1e1f2021222324252627")
    pt = bytes.fromhex("112233445566778899aabbccddee")
    out = AESSIV(key).encrypt(pt, [ad])
    assert out.hex() == "85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c"


def test_erk_is_deterministic_and_purpose_bound():
    ring = KeyRing.from_dict(FIXED)
    a = ring.seal("link", "12345678901")
    assert a == ring.seal("link", "12345678901")
    assert a.startswith("v1.") and "12345678901" not in a
    assert ring.seal("link", "12345678902") != a
    # Same plaintext, other purpose: a different token that does not open as the first.
    d = ring.seal("dept:health_bureau", "12345678901")
    assert d != a
    with pytest.raises(KeyRingError):
        ring.open("link", d)


def test_known_answer_erk_matches_independent_computation():
    ring = KeyRing.from_dict(FIXED)
    raw = AESSIV(bytes(range(64, 128))).encrypt(b"12345678901", [b"link"])
    expected = "v1." + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert ring.seal("link", "12345678901") == expected


def test_reseal_converts_department_pseudonym_to_erk():
    ring = KeyRing.from_dict(FIXED)
    dept = ring.seal("dept:health_bureau", "00000000042")
    assert ring.reseal("dept:health_bureau", dept, "link") == ring.seal("link", "00000000042")


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2],                                   # truncated
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # tampered
    lambda t: "v9" + t[2:],                             # unknown key version
    lambda t: "garbage",                                # not a token
    lambda t: "",                                       # empty
])
def test_bad_tokens_are_refused_without_revealing_anything(mangle):
    ring = KeyRing.from_dict(FIXED)
    token = ring.seal("link", "12345678901")
    with pytest.raises(KeyRingError) as exc:
        ring.open("link", mangle(token))
    assert "12345678901" not in str(exc.value)


def test_digest_is_hmac_sha256_of_normalized_value():
    ring = KeyRing.from_dict(FIXED)
    expected = hmac.new(b"\x0b" * 32, "ヤマダ タロウ".encode(), hashlib.sha256).hexdigest()
    assert ring.digest("ヤマダ タロウ") == f"v1.{expected}"


def test_rotation_keeps_old_tokens_readable():
    doc = json.loads(json.dumps(FIXED))
    ring_v1 = KeyRing.from_dict(doc)
    old = ring_v1.seal("link", "12345678901")
    doc["purposes"]["link"]["keys"]["2"] = base64.urlsafe_b64encode(bytes(64)).decode().rstrip("=")
    doc["purposes"]["link"]["current"] = 2
    ring_v2 = KeyRing.from_dict(doc)
    assert ring_v2.open("link", old) == "12345678901"
    assert ring_v2.seal("link", "12345678901").startswith("v2.")


def test_save_writes_0600_and_load_refuses_open_permissions(tmp_path):
    path = KeyRing.generate().save(tmp_path / "ring.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyRing.load(path).purposes()
    os.chmod(path, 0o644)
    with pytest.raises(KeyRingError, match="chmod 600"):
        KeyRing.load(path)


def test_save_refuses_to_overwrite(tmp_path):
    path = KeyRing.generate().save(tmp_path / "ring.json")
    with pytest.raises(KeyRingError, match="refusing to overwrite"):
        KeyRing.generate().save(path)


def test_missing_keyring_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("RENKEI_KEYRING", str(tmp_path / "nope.json"))
    with pytest.raises(KeyRingError, match="renkei keys init"):
        KeyRing.load()


def test_repr_never_shows_keys():
    ring = KeyRing.from_dict(FIXED)
    assert "AAEC" not in repr(ring) and "link" in repr(ring)
