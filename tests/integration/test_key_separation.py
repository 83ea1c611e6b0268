"""Key separation against insiders (#14): what a department's keyring can and cannot do.

Two departments export the same resident (same name reading, address, birth date) with their own
keyrings (``renkei keys export --for dept:<name>``). Their extracts must not join on anything
but the public columns, their keyrings must open nothing of the pipeline's, and the pipeline —
which alone holds the match key — must still see the two records as one person's: the same
match digests in staging, equal to HMAC(k_match, normalised value) computed here by hand.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from renkei.cli import main
from renkei.config import load_sources
from renkei.errors import KeyRingError
from renkei.ingest import extract, load, validate
from renkei.keys.adapter import pseudonymize
from renkei.keys.ring import KeyRing
from renkei.settings import Settings

SOURCES = load_sources()
KANA, ADDRESS = "ヤマダ ハナコ", "北九州市戸畑区中本町1番1号"
NORM_KANA, NORM_ADDRESS = "ヤマダ ハナコ", "戸畑区中本町1-1"  # by hand: one space kept; city prefix dropped, 1番1号 → 1-1
CODE = "10000000001"


def _raw_sqlite(path: Path, source, rows: list[dict]) -> str:
    con = sqlite3.connect(path)
    cols = source.raw_columns
    con.execute(f'CREATE TABLE "{source.name}" ({", ".join(f"{c} TEXT" for c in cols)})')
    con.executemany(f'INSERT INTO "{source.name}" VALUES ({", ".join("?" for _ in cols)})',
                    [[r.get(c) for c in cols] for r in rows])
    con.commit()
    con.close()
    return f"sqlite:///{path}"


@pytest.fixture
def holders(tmp_path):
    """The city's full keyring and each holder's own, written by `renkei keys export`."""
    full = KeyRing.generate().save(tmp_path / "full.json")
    out = {}
    for holder in ("dept:health_bureau", "dept:nhi", "pipeline", "delivery", "auditor"):
        path = tmp_path / f"{holder.replace(':', '_')}.json"
        assert main(["keys", "export", "--for", holder, "--keyring", str(full), "--out", str(path)]) == 0
        out[holder] = KeyRing.load(path)
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def exported(request, tmp_path, holders):
    """One resident exported by immunization (health_bureau) and NHI, each with its own keyring
    only; the extracts land in the warehouse's extract database."""
    if request.param == "postgresql":
        wh = request.getfixturevalue("pg_factory")()
    else:
        wh = f"sqlite:///{tmp_path / 'wh.db'}"
    extracts = f"sqlite:///{tmp_path / 'ex.db'}"
    imm, nhi = SOURCES["immunization"], SOURCES["nhi"]
    stamp = "2025-05-01T09:00:00+09:00"
    person = {"resident_code": CODE, "name_kana": KANA, "birth_date": "2024-04-10", "sex": "2", "address": ADDRESS,
              "updated_at": stamp}
    imm_loc = _raw_sqlite(tmp_path / "imm.db", imm, [{**person, "record_id": "IM1", "vaccine_code": "HEPB",
                                                        "dose_number": "1", "administered_on": "2024-06-10"}])
    nhi_row = {**person, "qualified_on": "2024-04-10", "disqualified_on": None, "last_checkup_on": None}
    nhi_loc = _raw_sqlite(tmp_path / "nhi.db", nhi, [nhi_row])
    pseudonymize(imm, imm_loc, extracts, holders["dept:health_bureau"])
    pseudonymize(nhi, nhi_loc, extracts, holders["dept:nhi"])
    settings = Settings(warehouse_url=wh, extracts_url=extracts, config_dir=Settings.from_env().config_dir,
                        expectations_dir=Settings.from_env().expectations_dir)
    return {"settings": settings, "imm": imm, "nhi": nhi}


def _rows(url: str, sql: str) -> list[dict]:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text(sql))]
    eng.dispose()
    return rows


def test_two_departments_extracts_do_not_join_on_names_or_addresses(exported):
    url = exported["settings"].extracts_url
    imm = _rows(url, "SELECT * FROM extract_immunization")[0]
    nhi = _rows(url, "SELECT * FROM extract_nhi")[0]
    # The same resident, name and address: nothing but the public columns agree across extracts.
    shared = {c for c in imm if c in nhi and imm[c] == nhi[c] and imm[c] is not None}
    assert shared <= {"birth_date", "sex", "updated_at", "change_seq", "export_id", "op", "exported_at",
                      "source_row", "parse_errors"}, shared
    assert imm["name_sealed"] != nhi["name_sealed"] and imm["address_sealed"] != nhi["address_sealed"]
    assert imm["dept_pseudonym"] != nhi["dept_pseudonym"]
    assert "name_digest" not in imm and "address_digest" not in imm


def test_a_department_keyring_cannot_make_or_reverse_a_match_digest(exported, holders):
    imm_ring = holders["dept:health_bureau"]
    nhi = _rows(exported["settings"].extracts_url, "SELECT * FROM extract_nhi")[0]
    # Guessing a common name: the department can only seal under its own key, never under NHI's.
    assert imm_ring.seal("dept:health_bureau", "name:" + NORM_KANA) != nhi["name_sealed"]
    with pytest.raises(KeyRingError, match="no key for purpose 'dept:nhi'"):
        imm_ring.open("dept:nhi", nhi["name_sealed"])
    with pytest.raises(KeyRingError, match="no key for purpose 'match'"):
        imm_ring.digest(NORM_KANA)
    with pytest.raises(KeyRingError, match="no key for purpose 'link'"):
        imm_ring.seal("link", CODE)
    # Delivery and the auditor cannot make match digests either.
    for holder in ("delivery", "auditor"):
        with pytest.raises(KeyRingError, match="no key for purpose 'match'"):
            holders[holder].digest(NORM_KANA)


def test_the_pipeline_turns_sealed_values_into_one_match_digest(exported, holders, tmp_path):
    settings, pipeline = exported["settings"], holders["pipeline"]
    for source, run in ((exported["imm"], "r-imm"), (exported["nhi"], "r-nhi")):
        extract(source, run, settings)
        validate(source, run, settings)
        out = load(source, run, pipeline, settings)
        assert (out["loaded"], out["quarantined"]) == (1, 0), source.name
    imm = _rows(settings.warehouse_url, "SELECT erk, name_digest, address_digest FROM staging_immunization")[0]
    nhi = _rows(settings.warehouse_url, "SELECT erk, name_digest, address_digest FROM staging_nhi")[0]
    match_key = json.loads((tmp_path / "pipeline.json").read_text())["purposes"]["match"]
    import base64

    k = base64.urlsafe_b64decode(match_key["keys"]["1"] + "=" * (-len(match_key["keys"]["1"]) % 4))
    by_hand = lambda v: "v1." + hmac.new(k, v.encode(), hashlib.sha256).hexdigest()  # noqa: E731
    assert imm == nhi == {"erk": pipeline.seal("link", CODE), "name_digest": by_hand(NORM_KANA),
                          "address_digest": by_hand(NORM_ADDRESS)}


def test_a_sealed_value_moved_to_another_column_or_department_is_quarantined(exported, holders):
    settings = exported["settings"]
    eng = sa.create_engine(settings.extracts_url)
    with eng.begin() as conn:  # an insider swaps name and address tokens, and plants NHI's name token
        nhi_name = conn.execute(sa.text("SELECT name_sealed FROM extract_nhi")).scalar()
        conn.execute(sa.text("UPDATE extract_immunization SET address_sealed = name_sealed, name_sealed = :n"),
                     {"n": nhi_name})
    eng.dispose()
    imm = exported["imm"]
    extract(imm, "r1", settings)
    validate(imm, "r1", settings)
    out = load(imm, "r1", holders["pipeline"], settings)
    assert (out["loaded"], out["quarantined"]) == (0, 1)
    reasons = _rows(settings.warehouse_url, "SELECT reason FROM quarantine")
    assert [r["reason"] for r in reasons] == ["pseudonym_does_not_authenticate:name_sealed"] or \
        [r["reason"] for r in reasons] == ["pseudonym_does_not_authenticate:address_sealed"]


def test_upgrade_from_shared_key_digests(tmp_path):
    """A city upgrading: its keyring of old (purposes link, audit) and an extract and landing table
    with shared-key digest columns. The adapter refuses the old extract with the way out; after
    the department's fresh export, ingest re-creates the empty landing table and stages the same
    match digests the old adapter made (the old audit key is the match key)."""
    import base64
    import os

    imm = SOURCES["immunization"]
    old = KeyRing.generate().to_dict()
    old["format"] = "renkei-keyring/2"
    old["purposes"]["audit"] = old["purposes"].pop("match")
    del old["purposes"]["chain"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    os.chmod(tmp_path / "old.json", 0o600)
    ring = KeyRing.load(tmp_path / "old.json")
    ring.add("chain")  # `renkei keys add --purpose chain`, as docs/SECURITY.md's migration says
    extracts, wh = f"sqlite:///{tmp_path / 'ex.db'}", f"sqlite:///{tmp_path / 'wh.db'}"
    eng = sa.create_engine(extracts)
    with eng.begin() as conn:  # the old layout: digests, no sealed columns
        conn.execute(sa.text("CREATE TABLE extract_immunization (change_seq INTEGER, name_digest TEXT, address_digest TEXT)"))
    eng.dispose()
    weng = sa.create_engine(wh)
    with weng.begin() as conn:
        conn.execute(sa.text("CREATE TABLE landing_immunization (run_id TEXT, name_digest TEXT)"))
    weng.dispose()
    loc = _raw_sqlite(tmp_path / "imm.db", imm, [{"resident_code": CODE, "name_kana": KANA, "birth_date": "2024-04-10",
                                                  "sex": "2", "address": ADDRESS, "record_id": "IM1", "vaccine_code": "HEPB",
                                                  "dose_number": "1", "administered_on": "2024-06-10",
                                                  "updated_at": "2025-05-01T09:00:00+09:00"}])
    from renkei.errors import SourceError

    with pytest.raises(SourceError, match="Drop extract_immunization .* export again"):
        pseudonymize(imm, loc, extracts, ring.subset(["dept:health_bureau"]))
    eng = sa.create_engine(extracts)
    with eng.begin() as conn:
        conn.execute(sa.text("DROP TABLE extract_immunization"))
    eng.dispose()
    assert pseudonymize(imm, loc, extracts, ring.subset(["dept:health_bureau"])).written == 1
    env = Settings.from_env()
    settings = Settings(warehouse_url=wh, extracts_url=extracts, config_dir=env.config_dir, expectations_dir=env.expectations_dir)
    extract(imm, "u1", settings)
    validate(imm, "u1", settings)
    assert load(imm, "u1", ring, settings)["loaded"] == 1
    k = base64.urlsafe_b64decode(old["purposes"]["audit"]["keys"]["1"] + "==")
    got = _rows(wh, "SELECT name_digest FROM staging_immunization")[0]["name_digest"]
    assert got == "v1." + hmac.new(k, NORM_KANA.encode(), hashlib.sha256).hexdigest()


def test_delivery_finds_a_contact_token_but_cannot_open_an_erk(tmp_path, holders):
    """The pipeline seals a contact token per notified resident; delivery's keyring (contact only)
    opens that token to the resident code it needs, and nothing else: no ERK of the warehouse."""
    from renkei.outputs.contacts import seal_contacts
    from renkei.warehouse import engine, ensure_schema, notices

    url = f"sqlite:///{tmp_path / 'wh.db'}"
    pipeline, delivery = holders["pipeline"], holders["delivery"]
    erk = pipeline.seal("link", CODE)
    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:
        conn.execute(notices.insert(), [{
            "notice_id": "n1", "service": "immunization", "kind": "due", "erk": erk, "rule_id": "imm.hepb",
            "rule_version": 1, "subject": "HEPB", "dose_number": 1, "window_start": __import__("datetime").date(2025, 6, 1),
            "window_end": __import__("datetime").date(2025, 7, 1), "evaluated_on": __import__("datetime").date(2025, 6, 1),
            "facts": "{}", "created_run_id": "r", "created_at": "2025-06-01T06:00:00+09:00"}])
    eng.dispose()
    assert seal_contacts(url, pipeline) == {"sealed": 1, "unopened": 0}
    assert seal_contacts(url, pipeline) == {"sealed": 0, "unopened": 0}  # idempotent
    token = _rows(url, "SELECT erk, contact_token FROM notice_contacts")[0]
    assert token["erk"] == erk and delivery.open("contact", token["contact_token"]) == CODE
    with pytest.raises(KeyRingError, match="no key for purpose 'link'"):
        delivery.open("link", erk)
    with pytest.raises(KeyRingError, match="does not authenticate"):
        delivery.open("contact", erk)  # an ERK is not a contact token, even under the contact purpose
    with pytest.raises(KeyRingError, match="no contact key"):
        seal_contacts(url, holders["dept:nhi"])


def test_a_services_run_seals_its_own_notices_and_a_full_pass_the_rest(tmp_path, holders):
    """An incremental services run seals the contact tokens of the notices it created (not a
    pass over every notice of the city); a full pass (run_id None: a full run's) seals whatever
    an earlier run left, e.g. one that stopped between recording its notices and sealing."""
    from datetime import date

    from renkei.outputs.contacts import seal_contacts
    from renkei.warehouse import engine, ensure_schema, notices

    url = f"sqlite:///{tmp_path / 'wh.db'}"
    pipeline, delivery = holders["pipeline"], holders["delivery"]
    codes = {"left": "10000000011", "own": "10000000012", "own-again": "10000000013"}
    eng = engine(url)
    ensure_schema(eng)
    with eng.begin() as conn:
        conn.execute(notices.insert(), [{
            "notice_id": f"n-{name}", "service": "immunization", "kind": "due", "erk": pipeline.seal("link", code),
            "rule_id": "imm.hepb", "rule_version": 1, "subject": "HEPB", "dose_number": 1,
            "window_start": date(2025, 6, 1), "window_end": date(2025, 7, 1), "evaluated_on": date(2025, 6, 1),
            "facts": "{}", "created_run_id": "services/left" if name == "left" else "services/own",
            "created_at": "2025-06-01T06:00:00+09:00"} for name, code in codes.items()])
    eng.dispose()

    def sealed() -> set[str]:
        return {delivery.open("contact", r["contact_token"]) for r in _rows(url, "SELECT contact_token FROM notice_contacts")}

    assert seal_contacts(url, pipeline, run_id="services/own") == {"sealed": 2, "unopened": 0}
    assert sealed() == {codes["own"], codes["own-again"]}
    assert seal_contacts(url, pipeline, run_id="services/own") == {"sealed": 0, "unopened": 0}
    assert seal_contacts(url, pipeline) == {"sealed": 1, "unopened": 0}
    assert sealed() == set(codes.values())
