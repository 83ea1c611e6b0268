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


# -- versions, states and rotation ------------------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_format_1_file_without_states_still_loads_and_older_versions_open(tmp_path):
    doc = json.loads(json.dumps(FIXED))
    old = KeyRing.from_dict(doc).seal("link", "12345678901")
    doc["purposes"]["link"]["keys"]["2"] = _b64(bytes(64))
    doc["purposes"]["link"]["current"] = 2
    ring = KeyRing.from_dict(doc)
    assert ring.state("link", 1) == "history" and ring.open("link", old) == "12345678901"
    saved = KeyRing.load(ring.save(tmp_path / "ring.json"))
    assert json.loads((tmp_path / "ring.json").read_text())["format"] == "renkei-keyring/3"
    assert saved.status() == ring.status()


def test_department_rotation_opens_the_old_version_until_the_grace_date_then_refuses_it():
    from datetime import date

    from renkei.errors import KeyRetired

    ring = KeyRing.from_dict(FIXED)
    old = ring.seal("dept:health_bureau", "12345678901")
    assert ring.rotate("dept:health_bureau", grace_days=10, today=date(2025, 6, 1)) == 2
    assert ring.seal("dept:health_bureau", "12345678901").startswith("v2.")
    ring.clock = lambda: date(2025, 6, 11)  # the last day of grace
    assert ring.state("dept:health_bureau", 1) == "grace"
    assert ring.reseal("dept:health_bureau", old, "link") == ring.seal("link", "12345678901")
    ring.clock = lambda: date(2025, 6, 12)
    with pytest.raises(KeyRetired) as exc:
        ring.open("dept:health_bureau", old)
    msg = str(exc.value)
    assert "dept:health_bureau key version 1" in msg and "2025-06-11" in msg and "renkei pseudonymize" in msg
    assert "12345678901" not in msg
    assert {"purpose": "dept:health_bureau", "version": 1, "state": "retired", "grace_until": "2025-06-11"} in ring.status()


def test_link_rotation_keeps_the_old_version_as_history_until_retired():
    from datetime import date

    from renkei.errors import KeyRetired

    ring = KeyRing.from_dict(FIXED)
    old = ring.seal("link", "12345678901")
    with pytest.raises(KeyRingError, match="department keys only"):
        ring.rotate("link", grace_days=5)
    ring.rotate("link")
    assert ring.state("link", 1) == "history" and ring.open("link", old) == "12345678901"
    assert ring.lookup_tokens("link", "12345678901") == [ring.seal("link", "12345678901"), old]
    with pytest.raises(KeyRingError, match="is current"):
        ring.retire("link", 2)
    with pytest.raises(KeyRingError, match="match key versions cannot be retired"):
        ring.retire("match", 1)
    ring.retire("link", 1, today=date(2025, 7, 1))
    with pytest.raises(KeyRetired, match="renkei keys reseal"):
        ring.open("link", old)
    assert ring.lookup_tokens("link", "12345678901") == [ring.seal("link", "12345678901")]
    again = KeyRing.from_dict(ring.to_dict())
    assert again.state("link", 1) == "retired" and {"purpose": "link", "version": 1, "state": "retired",
                                                    "retired_on": "2025-07-01"} in again.status()


def test_mac_and_digest_under_an_older_match_version():
    ring = KeyRing.from_dict(FIXED)  # a /2 file: its "audit" purpose loads as the match key
    ring.rotate("match")
    expected = hmac.new(b"\x0b" * 32, b"message", hashlib.sha256).hexdigest()
    assert ring.mac(b"message", version=1) == expected and ring.mac(b"message") != expected
    assert ring.digest("ヤマダ タロウ").startswith("v2.") and ring.digest("ヤマダ タロウ", version=1).startswith("v1.")
    with pytest.raises(KeyRingError, match="no match key version 7"):
        ring.mac(b"message", version=7)


def test_states_are_validated_and_status_never_shows_keys():
    doc = json.loads(json.dumps(FIXED))
    doc["purposes"]["link"]["states"] = {"1": {"state": "retired"}}
    with pytest.raises(KeyRingError, match="only a held, non-current version has a state"):
        KeyRing.from_dict(doc)
    ring = KeyRing.from_dict(FIXED)
    ring.rotate("dept:health_bureau")
    shown = json.dumps(ring.status())
    for spec in ring.to_dict()["purposes"].values():
        assert not any(k in shown for k in spec["keys"].values())


def test_cli_rotate_status_retire(tmp_path, capsys):
    from renkei.cli import main

    path = str(tmp_path / "ring.json")
    assert main(["keys", "init", "--path", path]) == 0
    assert main(["keys", "rotate", "--purpose", "dept:nhi", "--grace-days", "7", "--keyring", path]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert main(["keys", "rotate", "--purpose", "link", "--grace-days", "7", "--keyring", path]) == 2
    assert main(["keys", "retire", "--purpose", "link", "--version", "1", "--keyring", path]) == 2  # needs the warehouse
    assert main(["keys", "retire", "--purpose", "dept:nhi", "--version", "1", "--keyring", path]) == 0
    capsys.readouterr()
    assert main(["keys", "status", "--keyring", path]) == 0
    out = capsys.readouterr().out
    assert "dept:nhi                       1  retired  since" in out and "dept:nhi                       2  current" in out
    for spec in json.loads(open(path).read())["purposes"].values():
        assert not any(k in out for k in spec["keys"].values())


def test_reseal_many_matches_reseal_token_by_token():
    """The batch re-seal gives what reseal gives, or the error reseal raises, for every kind of token."""
    from datetime import date

    from renkei.errors import KeyRetired, KeyRingError
    from renkei.keys.ring import KeyRing

    ring = KeyRing.generate()
    old = ring.seal("dept:nhi", "10000000001")
    ring.rotate("dept:nhi", grace_days=0, today=date(2025, 1, 1))  # v1 is retired from 2025-01-01 on
    good = [ring.seal("dept:nhi", f"1000000{i:04d}") for i in range(50)]
    body = good[0].split(".", 1)[1]
    tampered = good[0][:-2] + ("AA" if not good[0].endswith("AA") else "BB")
    tokens = good + [old, tampered, good[1][:20], "v9." + body, "x1." + body, "v1.", "", "v1.@@@"]
    batch = ring.reseal_many("dept:nhi", tokens, "link")
    assert len(batch) == len(tokens)
    for token, (erk, err) in zip(tokens, batch):
        try:
            expected = ring.reseal("dept:nhi", token, "link")
        except KeyRingError as exc:
            assert erk is None and type(err) is type(exc), token
            assert isinstance(err, KeyRetired) == isinstance(exc, KeyRetired)
        else:
            assert (erk, err) == (expected, None)
    assert sum(err is None for _, err in batch) >= 50


# -- keyrings per holder ------------------------------------------------------------------------
def test_a_department_keyring_holds_its_own_key_only_and_opens_nothing_of_the_pipeline(tmp_path):
    from renkei.cli import main

    full = KeyRing.generate().save(tmp_path / "full.json")
    assert main(["keys", "export", "--for", "dept:nhi", "--keyring", str(full), "--out", str(tmp_path / "nhi.json")]) == 0
    dept = KeyRing.load(tmp_path / "nhi.json")
    assert dept.purposes() == ["dept:nhi"]
    pipeline = KeyRing.load(full)
    erk = pipeline.seal("link", "12345678901")
    other = pipeline.seal("dept:ward_office", "12345678901")
    # The attacks a department's insider would try with its keyring: open an ERK, open another
    # department's pseudonym, make the match digests that would join two extracts, sign the trail.
    with pytest.raises(KeyRingError, match="no key for purpose 'link'"):
        dept.open("link", erk)
    with pytest.raises(KeyRingError, match="no key for purpose 'dept:ward_office'"):
        dept.open("dept:ward_office", other)
    with pytest.raises(KeyRingError, match="no key for purpose 'match'"):
        dept.digest("ヤマダ タロウ")
    with pytest.raises(KeyRingError, match="no key for purpose 'chain'"):
        dept.mac(b"entry", purpose="chain")
    # Its own pseudonyms still seal exactly as the pipeline's copy of the key seals them.
    assert dept.seal("dept:nhi", "12345678901") == pipeline.seal("dept:nhi", "12345678901")


@pytest.mark.parametrize("holder,expected", [
    ("pipeline", ["chain", "contact", "dept:children_bureau", "dept:digital_office", "dept:health_bureau", "dept:nhi",
                  "dept:ward_office", "link", "match"]),
    ("auditor", ["chain"]),
    ("delivery", ["contact"]),
    ("dept:ward_office", ["dept:ward_office"]),
])
def test_each_holder_gets_only_its_purposes(tmp_path, holder, expected):
    from renkei.cli import main

    full = KeyRing.generate().save(tmp_path / "full.json")
    assert main(["keys", "export", "--for", holder, "--keyring", str(full), "--out", str(tmp_path / "h.json")]) == 0
    assert KeyRing.load(tmp_path / "h.json").purposes() == expected
    assert oct((tmp_path / "h.json").stat().st_mode & 0o777) == "0o600"


def test_an_unknown_holder_or_missing_purpose_is_a_clear_error(tmp_path):
    ring = KeyRing.generate()
    with pytest.raises(KeyRingError, match="unknown key holder"):
        from renkei.keys.ring import holder_purposes

        holder_purposes("everyone", ring.purposes())
    with pytest.raises(KeyRingError, match="no dept:parks key for holder dept:parks"):
        holder_purposes("dept:parks", ring.purposes())


def test_a_keyring_written_before_the_chain_key_loads_and_gains_it(tmp_path):
    from renkei.cli import main

    path = tmp_path / "old.json"
    path.write_text(json.dumps(FIXED))
    os.chmod(path, 0o600)
    old = KeyRing.load(path)
    assert "match" in old.purposes() and "chain" not in old.purposes() and "audit" not in old.purposes()
    assert main(["keys", "add", "--purpose", "chain", "--keyring", str(path)]) == 0
    again = KeyRing.load(path)
    assert "chain" in again.purposes() and json.loads(path.read_text())["format"] == "renkei-keyring/3"
    assert again.digest("ヤマダ タロウ") == old.digest("ヤマダ タロウ")  # the match key is the old audit key
    with pytest.raises(KeyRingError, match="already holds chain"):
        again.add("chain")


def test_save_writes_through_a_fresh_temp_file_and_leaves_none_behind(tmp_path):
    ring = KeyRing.generate()
    ring.save(tmp_path / "k.json")
    (tmp_path / "k.json.tmp").write_text("a stale file of an older writer")  # the fixed name of the old code
    ring.save(tmp_path / "k.json", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json", "k.json.tmp"]
    assert (tmp_path / "k.json.tmp").read_text() == "a stale file of an older writer"
    assert KeyRing.load(tmp_path / "k.json").purposes() == ring.purposes()
