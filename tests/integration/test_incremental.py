"""Incremental link and services: a few changed records give exactly what a full rebuild gives.

One warehouse goes through a first run on a synthetic city (ingest, link, services), review
decisions, and changes to a few records in five sources that are ingested again: a status and a
birth date in the registry, a newborn, an immunization record changed and one moved to another
child (a corrected mislink), an immunization record deleted, a check-up, NHI membership, an
opt-out and an unreadable update of a subscription (the fail-safe opt-out). The changes are made
in the departments' raw tables and reach the extracts through the export adapter (incremental
exports, and a reconcile for the deletion's tombstone), as in production. Then it is cloned: one copy links and serves
incrementally, the other fully (``full=True``). Every mart table, link_flags, the review queue
and the notices must be equal, and the incremental run must report touching exactly the
residents whose records changed — a small share of the city. SQLite and PostgreSQL.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from renkei.config import ingest_sources, load_sources
from renkei.keys.adapter import convert_row, now_jst, pseudonymize, raw_location
from renkei.linkage.mart import build_mart
from renkei.outputs.outbox import plan_services, run_services
from renkei.warehouse import (engine, ingest_runs, link_builds, mart_changes, mart_residents, services_held,
                              staging_deleted, staging_table, subjects)

AS_OF = date(2025, 6, 1)
RESIDENTS = 1500
RUN1, RUN2 = "ingest/first", "ingest/changes"
# Provenance columns: which run (re)built a row, when a notice was stored. They differ by design.
# A notice id hashes its resident's random subject key (renkei.linkage.subjects), which each copy
# gives a resident first seen after the copy was made: the notices compare by their content.
PROVENANCE = {"built_run_id", "created_at", "notice_id"}
COMPARED = ("mart_residents", "mart_doses", "linkage", "link_flags", "review_queue", "notices")


def _settings(warehouse_url: str, extracts_url: str):
    from renkei.settings import Settings

    env = Settings.from_env()
    return Settings(warehouse_url=warehouse_url, extracts_url=extracts_url, config_dir=env.config_dir,
                    expectations_dir=env.expectations_dir)


def _ingest(settings, ring, run_id: str) -> None:
    from renkei import ingest

    for src in ingest_sources():
        ingest.extract(src, run_id, settings)
        ingest.validate(src, run_id, settings)
        ingest.load(src, run_id, ring, settings)


def _tables(url: str) -> dict[str, set[tuple]]:
    eng = engine(url)
    md = sa.MetaData()
    out = {}
    with eng.connect() as conn:
        md.reflect(conn, only=list(COMPARED))
        for name in COMPARED:
            t = md.tables[name]
            cols = [c for c in t.columns if c.name not in PROVENANCE]
            out[name] = {tuple(r) for r in conn.execute(sa.select(*cols))}
    eng.dispose()
    return out


def _scalars(url: str, query) -> set:
    eng = engine(url)
    with eng.connect() as conn:
        found = set(conn.execute(query).scalars())
    eng.dispose()
    return found


class Departments:
    """The departments' raw SQLite tables (plaintext, inside their boundary), changed the way
    their own systems would: rows updated, inserted and deleted, ``updated_at`` stamped with the
    department's clock (the real JST time). The export adapter then carries the changes out."""

    def __init__(self, raw: Path, ring) -> None:
        self.raw, self.ring, self.srcs = raw, ring, load_sources()
        self.dbs: dict[str, sqlite3.Connection] = {}

    def db(self, source: str) -> sqlite3.Connection:
        if source not in self.dbs:
            self.dbs[source] = sqlite3.connect(self.raw / f"{source}.db")
            self.dbs[source].row_factory = sqlite3.Row
        return self.dbs[source]

    def rows(self, source: str, where: str = "1=1", params: tuple = ()) -> list[dict]:
        return [dict(r) for r in self.db(source).execute(
            f'SELECT rowid AS "_rowid", * FROM "{source}" WHERE {where} ORDER BY rowid', params)]

    def clean(self, source: str) -> list[tuple[dict, dict]]:
        """(raw row, its extract row) of the rows the adapter converts without a parse error and
        whose natural key the table holds once (no seeded defect of either kind)."""
        src = self.srcs[source]
        # as the adapter reads a SQL row: every value as text
        out = [(r, convert_row(src, self.ring, {k: None if v is None else str(v) for k, v in r.items()}))
               for r in self.rows(source)]
        counts = Counter(x[src.key] for _, x in out)
        return [(r, x) for r, x in out if x["parse_errors"] is None and counts[x[src.key]] == 1]

    def update(self, source: str, raw: dict, **values) -> None:
        values["updated_at"] = now_jst()
        sets = ", ".join(f'"{k}" = ?' for k in values)
        self.db(source).execute(f'UPDATE "{source}" SET {sets} WHERE rowid = ?', (*values.values(), raw["_rowid"]))

    def add(self, source: str, raw: dict, **values) -> None:
        row = {k: v for k, v in raw.items() if k != "_rowid"} | values | {"updated_at": now_jst()}
        cols = ", ".join(f'"{k}"' for k in row)
        self.db(source).execute(f'INSERT INTO "{source}" ({cols}) VALUES ({", ".join("?" * len(row))})', tuple(row.values()))

    def delete(self, source: str, raw: dict) -> None:
        self.db(source).execute(f'DELETE FROM "{source}" WHERE rowid = ?', (raw["_rowid"],))

    def close(self) -> None:
        for db in self.dbs.values():
            db.commit()
            db.close()


def _change_city(dept: Departments) -> dict:
    """Change a few records in five sources at the departments; returns what changed: the keys
    whose ERK moves, the fail-safe subscription, the newborn's code, the deleted record, and the
    changes each source's export must carry (upserts, tombstones)."""
    cutoff = (AS_OF - timedelta(days=3 * 365)).isoformat()
    imm_clean = dept.clean("immunization")
    imm_of: dict[str, list[dict]] = {}
    for raw, _ in imm_clean:
        imm_of.setdefault(raw["resident_code"], []).append(raw)
    # Every immunization row of a chosen child is clean, so each change below is the only one.
    imm_rows = Counter(r["resident_code"] for r in dept.rows("immunization"))
    kids = [(raw, x) for raw, x in dept.clean("registry")
            if x["status"] == "resident" and x["birth_date"] > cutoff
            and raw["resident_code"] in imm_of and len(imm_of[raw["resident_code"]]) == imm_rows[raw["resident_code"]]]
    assert len(kids) >= 6
    (moved_out, _), (rebirth, rebirth_x), (donor, _), (receiver, _), (mislinked, _), (erased, _) = kids[:6]
    dept.update("registry", moved_out, status="moved_out", status_date=(AS_OF - timedelta(days=3)).isoformat())
    dept.update("registry", rebirth, birth_date=(date.fromisoformat(rebirth_x["birth_date"]) - timedelta(days=40)).isoformat())
    # A newborn (a new resident code) in the receiver's household, with a first dose.
    code = "99999900001"
    born = (AS_OF - timedelta(days=75)).isoformat()
    dept.add("registry", receiver, resident_code=code, birth_date=born, status_date=born)

    donor_imm = imm_of[donor["resident_code"]][0]
    dept.update("immunization", donor_imm, administered_on=(AS_OF - timedelta(days=10)).isoformat())
    # A record of another child moves to `receiver` (the department corrects a mislink): nothing
    # else of that child changes, so only the record's old ERK says the child is affected.
    wrong = imm_of[mislinked["resident_code"]][0]
    receiver_imm = imm_of[receiver["resident_code"]][0]
    dept.update("immunization", wrong, resident_code=receiver["resident_code"],
                **{c: receiver_imm[c] for c in ("birth_date", "sex", "administered_on", "name_kana", "address")})
    dept.add("immunization", donor_imm, record_id="IMNEW000001", resident_code=code, birth_date=born,
             vaccine_code="HEPB", dose_number=1, administered_on=(AS_OF - timedelta(days=20)).isoformat())
    # A record the department deletes: it reaches the pipeline as a tombstone of the reconcile.
    gone = imm_of[erased["resident_code"]][0]
    dept.delete("immunization", gone)

    chk = dept.clean("child_health")
    dept.update("child_health", chk[0][0], examined_on=(AS_OF - timedelta(days=2)).isoformat())
    nhi = [raw for raw, x in dept.clean("nhi") if x["disqualified_on"] is None]
    dept.update("nhi", nhi[0], last_checkup_on=(AS_OF - timedelta(days=5)).isoformat())
    dept.update("nhi", nhi[1], disqualified_on=(AS_OF - timedelta(days=1)).isoformat())
    subs = [raw for raw, x in dept.clean("subscriptions") if x["opted_out_at"] is None]
    dept.update("subscriptions", subs[0], opted_out_at="2025-05-31T09:00:00+09:00")
    dept.update("subscriptions", subs[1], topic="not-a-topic")  # rejected → fail-safe opt-out
    return {"moved": {"immunization": [wrong["record_id"]]}, "fail_safe": subs[1]["subscription_id"], "newborn": code,
            "deleted": {"record_id": gone["record_id"], "code": erased["resident_code"]},
            "upserts": {"registry": 3, "immunization": 3, "child_health": 1, "nhi": 2, "subscriptions": 2, "events": 0}}


def _repeated_keys(raw: Path, source: str) -> int:
    """Raw rows whose record key the table holds more than once (a reconcile exports them again)."""
    key = load_sources()[source].key
    db = sqlite3.connect(raw / f"{source}.db")
    try:
        return db.execute(f'SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM "{source}" '
                          f'WHERE "{key}" IS NOT NULL GROUP BY "{key}" HAVING count(*) > 1)').fetchone()[0]
    finally:
        db.close()


def _clone(url: str, pg_factory, tmp_path: Path) -> str:
    if url.startswith("sqlite"):
        src = Path(url.removeprefix("sqlite:///"))
        dst = tmp_path / "full.db"
        con = sqlite3.connect(src)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        shutil.copy(src, dst)
        return f"sqlite:///{dst}"
    name = url.rsplit("/", 1)[1]
    clone = pg_factory()
    admin = sa.create_engine(url.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # Only this test's own idle pooled connections are on it; a template must have none.
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
        conn.execute(sa.text(f'DROP DATABASE "{clone.rsplit("/", 1)[1]}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{clone.rsplit("/", 1)[1]}" TEMPLATE "{name}"'))
    admin.dispose()
    return clone


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def history(request, tmp_path_factory):
    """A warehouse after a first run, review decisions and an ingest of changes (not yet linked)."""
    from renkei.keys.ring import KeyRing
    from renkei.linkage.review import decide, list_items
    from renkei.synth import generate

    base = tmp_path_factory.mktemp(f"incremental-{request.param}")
    pg_factory = request.getfixturevalue("pg_factory") if request.param == "postgres" else None
    url = pg_factory() if pg_factory else f"sqlite:///{base / 'warehouse.db'}"
    generate(RESIDENTS, 5, AS_OF, base / "raw", fmt="sqlite", defect_rate=0.01)
    ring = KeyRing.generate()
    extracts_url = f"sqlite:///{base / 'extracts.db'}"
    for src in ingest_sources():
        pseudonymize(src, raw_location(base / "raw", src.name), extracts_url, ring)
    settings = _settings(url, extracts_url)
    _ingest(settings, ring, RUN1)
    first_link = build_mart(url, AS_OF, "link/first")
    first_services = run_services(url, AS_OF, "services/first")
    items = [i for i in list_items(url) if i["severity"] == "hold"]
    per_erk = {i["erk"]: [j for j in items if j["erk"] == i["erk"]] for i in items}
    holds = sorted((i for i in items if len(per_erk[i["erk"]]) == 1), key=lambda i: i["item_id"])
    assert len(holds) >= 2
    decide(url, holds[0]["item_id"], "approved", "kensa-01", "checked", ring=ring)
    decide(url, holds[1]["item_id"], "rejected", "kensa-01", "checked", ring=ring)

    dept = Departments(base / "raw", ring)
    changed = _change_city(dept)
    dept.close()
    # The departments' export jobs: an incremental export of every source carries exactly the
    # rows that changed (SQL sources: read by updated_at from the adapter's position; a key held
    # twice would go again only inside that window), the immunization reconcile adds the tombstone.
    for src in ingest_sources():
        res = pseudonymize(src, raw_location(base / "raw", src.name), extracts_url, ring)
        assert (res.mode, res.upserts, res.deletes) == ("incremental", changed["upserts"][src.name], 0), src.name
    imm_src = load_sources()["immunization"]
    rec = pseudonymize(imm_src, raw_location(base / "raw", "immunization"), extracts_url, ring, mode="reconcile")
    # the reconcile reads every row: the one deleted record becomes a tombstone, and the record
    # ids the department holds twice go again (both copies), as in every full read
    assert (rec.deletes, rec.upserts) == (1, _repeated_keys(base / "raw", "immunization"))
    srcs = load_sources()
    imm = staging_table(srcs["immunization"])
    old_erks = _scalars(url, sa.select(imm.c.erk).where(imm.c.record_id.in_(changed["moved"]["immunization"])))
    before = _tables(url)
    _ingest(settings, ring, RUN2)
    gone = changed["deleted"]
    retired = _scalars(url, sa.select(staging_deleted.c.erk).where(
        staging_deleted.c.source == "immunization", staging_deleted.c.record_key == gone["record_id"],
        staging_deleted.c.deleted_run_id == RUN2))
    assert retired == {ring.seal("link", gone["code"])}, "the tombstone retired the staged record"
    assert not _scalars(url, sa.select(imm.c.record_id).where(imm.c.record_id == gone["record_id"]))
    now = _scalars(url, sa.select(imm.c.erk).where(imm.c.record_id.in_(changed["moved"]["immunization"])))
    assert now and not now & old_erks, "the corrected record now belongs to another child"
    return {"url": url, "ring": ring, "changed": changed, "old_erks": old_erks, "before": before,
            "first": (first_link, first_services), "pg_factory": pg_factory, "base": base,
            "extracts_url": extracts_url}


@pytest.fixture(scope="module")
def both(history):
    """The same history linked and served incrementally (url) and fully (full_url)."""
    full_url = _clone(history["url"], history["pg_factory"], history["base"])
    held_before = _scalars(history["url"], sa.text("SELECT erk FROM services_held"))
    inc = (build_mart(history["url"], AS_OF, "link/changes"), run_services(history["url"], AS_OF, "services/changes"))
    # The full copy's services run in three parts (PostgreSQL splits by ERK hash; SQLite runs one).
    full = (build_mart(full_url, AS_OF, "link/changes", full=True),
            run_services(full_url, AS_OF, "services/changes", full=True, parts=3))
    return {**history, "full_url": full_url, "inc": inc, "full": full, "held_before": held_before}


def _expected_touched(h: dict) -> set[str]:
    """The residents the changes affected: every ERK a row loaded by the second run has now, the
    ERK a moved record had before, and the subscription the fail-safe opted out."""
    url = h["url"]
    touched = set(h["old_erks"])
    for src in ingest_sources():
        if src.personal:
            st = staging_table(src)
            touched |= _scalars(url, sa.select(st.c.erk).where(st.c.loaded_run_id == RUN2))
    # the resident whose record the department deleted (its other records are unchanged)
    touched |= _scalars(url, sa.select(staging_deleted.c.erk).where(staging_deleted.c.deleted_run_id == RUN2))
    from renkei.warehouse import quarantine

    sub = staging_table(load_sources()["subscriptions"])
    rejected = sa.select(quarantine.c.record_key).where(quarantine.c.source == "subscriptions",
                                                         quarantine.c.last_run_id == RUN2)
    assert h["changed"]["fail_safe"] in _scalars(url, rejected)
    touched |= _scalars(url, sa.select(sub.c.erk).where(sub.c.subscription_id.in_(rejected)))
    return touched


def test_first_runs_are_full(history):
    link, services = history["first"]
    assert link["mode"] == "full" and link["residents_touched"] == link["residents"]
    assert services["mode"] == "full" and services["new"] > 0


def test_incremental_equals_full_rebuild(both):
    inc, full = _tables(both["url"]), _tables(both["full_url"])
    for name in COMPARED:
        assert inc[name] == full[name], (
            f"{name}: only incremental {sorted(inc[name] - full[name])[:3]}, only full {sorted(full[name] - inc[name])[:3]}")
    # The changes did change the mart and the outbox (an equality of unchanged tables proves nothing).
    for name in ("mart_residents", "mart_doses", "linkage", "notices"):
        assert inc[name] != both["before"][name], f"{name} did not change"
    newborn = both["ring"].seal("link", both["changed"]["newborn"])
    assert newborn in {r[2] for r in inc["notices"]}, "the newborn gets notices"  # (service, kind, erk, …)


def test_incremental_touches_only_affected_residents(both):
    link, services = both["inc"]
    expected = _expected_touched(both)
    assert link["mode"] == "incremental" and link["residents_touched"] == len(expected)
    assert both["old_erks"] and len(expected) < 0.05 * link["residents"]
    assert both["full"][0]["mode"] == "full" and both["full"][0]["residents_touched"] == link["residents"]
    # Mart rows that differ from before the changes all belong to the touched residents.
    before = {r[0]: r for r in both["before"]["mart_residents"]}
    after = {r[0]: r for r in _tables(both["url"])["mart_residents"]}
    differs = {erk for erk in before.keys() | after.keys() if before.get(erk) != after.get(erk)}
    assert differs and differs <= expected
    # Services: the rebuilt residents and the one the reviewer released from its hold.
    released = both["held_before"] - _scalars(both["url"], sa.text("SELECT erk FROM services_held"))
    assert released
    assert services["mode"] == "incremental" and services["residents_touched"] == len(expected | released)
    assert services["new"] == both["full"][1]["new"] > 0


def _own_copy(both: dict, key: str, tmp_path: Path) -> str:
    """A copy of one of the module's warehouses for a test that changes it: the other tests
    (in any order) see the module's state, not this test's."""
    return _clone(both[key], both["pg_factory"], tmp_path)


def test_date_events_and_no_change(both, tmp_path):
    url = _own_copy(both, "url", tmp_path)
    # The department side is copied too: this test changes a raw table and appends to the extract.
    raw = tmp_path / "raw"
    shutil.copytree(both["base"] / "raw", raw)
    extracts = Path(both["extracts_url"].removeprefix("sqlite:///"))
    shutil.copy(extracts, tmp_path / extracts.name)
    extracts_url = f"sqlite:///{tmp_path / extracts.name}"
    assert build_mart(url, AS_OF, "link/again")["residents_touched"] == 0  # nothing new ingested
    again = run_services(url, AS_OF, "services/again")
    assert (again["mode"], again["residents_touched"], again["new"]) == ("incremental", 0, 0)
    # The city moves an event to another venue in its calendar; the export adapter carries the
    # change out and ingest stages it, as in production.
    from renkei import ingest

    ev_src = load_sources()["events"]
    dept = Departments(raw, both["ring"])
    moved, _ = min(dept.clean("events"), key=lambda rx: rx[1]["event_id"])
    dept.update("events", moved, venue="別会場")
    dept.close()
    res = pseudonymize(ev_src, raw_location(raw, "events"), extracts_url, both["ring"])
    assert (res.mode, res.upserts, res.deletes) == ("incremental", 1, 0)
    settings = _settings(url, extracts_url)
    ingest.extract(ev_src, "ingest/events", settings)
    ingest.validate(ev_src, "ingest/events", settings)
    ingest.load(ev_src, "ingest/events", both["ring"], settings)
    ev = staging_table(ev_src)
    assert _scalars(url, sa.select(ev.c.venue).where(ev.c.event_id == moved["event_id"])) == {"別会場"}
    assert run_services(url, AS_OF, "services/events")["mode"] == "full"  # every subscriber may be concerned
    nxt = AS_OF + timedelta(days=1)
    assert build_mart(url, nxt, "link/next-day")["mode"] == "full"  # ages move with the date
    assert run_services(url, nxt, "services/next-day")["mode"] == "full"


def test_a_build_started_by_a_consumed_event_builds_nothing(both, tmp_path):
    """link_residents asks skip_unchanged on an asset-triggered run: with no ingest run since the
    last build (its staging event belonged to a wave that build settled for) nothing is built. A
    new ingest run, or a new evaluation date, builds."""
    url = _own_copy(both, "url", tmp_path)
    before = _scalars(url, sa.select(link_builds.c.seq))
    assert build_mart(url, AS_OF, "link/consumed", skip_unchanged=True) == {
        "mode": "unchanged", "build_seq": max(before), "residents_touched": 0}
    assert _scalars(url, sa.select(link_builds.c.seq)) == before
    eng = engine(url)
    with eng.begin() as conn:  # a load of nothing new is still a run the mart has not consumed
        conn.execute(ingest_runs.insert().values(run_id="ingest/empty-sweep", source="nhi", state="loaded", loaded=0,
                                                 updated_at="2026-12-05T09:00:00+09:00"))
    eng.dispose()
    again = build_mart(url, AS_OF, "link/after-sweep", skip_unchanged=True)
    assert (again["mode"], again["build_seq"]) == ("incremental", max(before) + 1)
    assert build_mart(url, AS_OF, "link/consumed-2", skip_unchanged=True)["mode"] == "unchanged"
    assert build_mart(url, AS_OF + timedelta(days=1), "link/next-day", skip_unchanged=True)["mode"] == "full"


def test_an_incremental_plan_checks_subject_keys_among_its_residents_only(both, tmp_path):
    """A link build gives its new ERKs their subject keys in its own transaction; the services
    plan makes sure of it (a warehouse older than subject keys) among the residents the run
    evaluates, not over the whole mart (a million rows of each at city scale); a full plan
    checks everyone. Two ERKs lose their keys, one of them touched by a build since the last run."""
    url = _own_copy(both, "url", tmp_path)
    eng = engine(url)
    with eng.begin() as conn:
        conn.execute(ingest_runs.insert().values(run_id="ingest/empty-sweep", source="nhi", state="loaded", loaded=0,
                                                 updated_at="2026-12-05T09:00:00+09:00"))
    eng.dispose()
    built = build_mart(url, AS_OF, "link/keys")
    assert built["mode"] == "incremental"
    held = _scalars(url, sa.select(services_held.c.erk))
    inside, outside = sorted(_scalars(url, sa.select(mart_residents.c.erk)) - held)[:2]
    eng = engine(url)
    with eng.begin() as conn:  # the build touched ``inside`` (as a change to its records would)
        conn.execute(mart_changes.insert().values(build_seq=built["build_seq"], erk=inside))
        conn.execute(subjects.delete().where(subjects.c.erk.in_([inside, outside])))
    eng.dispose()
    keyed = sa.select(subjects.c.erk).where(subjects.c.erk.in_([inside, outside]))
    assert plan_services(url, AS_OF, "services/keys")["mode"] == "incremental"
    assert _scalars(url, keyed) == {inside}
    assert plan_services(url, AS_OF, "services/keys-full", full=True)["mode"] == "full"
    assert _scalars(url, keyed) == {inside, outside}


def test_a_full_run_in_parts_equals_one_pass(both):
    # The incremental copy evaluated in one part; the full copy in three (on PostgreSQL): the
    # notices are compared in test_incremental_equals_full_rebuild, the held ERKs recorded here.
    services = both["full"][1]
    assert services["parts"] == (3 if both["url"].startswith("postgresql") else 1)
    held = [_scalars(u, sa.text("SELECT erk FROM services_held")) for u in (both["url"], both["full_url"])]
    assert held[0] == held[1] and held[0]
    assert not _scalars(both["full_url"], sa.text("SELECT erk FROM services_held_pending"))


def test_a_run_is_recorded_only_when_every_part_reported(both, tmp_path):
    from renkei.errors import RenkeiError
    from renkei.outputs.outbox import evaluate_part, plan_services, record_services

    url = _own_copy(both, "full_url", tmp_path)
    plan = plan_services(url, AS_OF, "services/parts", parts=2, full=True)
    first = evaluate_part(url, plan, 0)
    if plan["parts"] == 2:
        with pytest.raises(RenkeiError, match=r"parts \[0\] reported, 2 planned"):
            record_services(url, plan, [first])
        results = [first, evaluate_part(url, plan, 1)]
    else:
        results = [first]
    assert record_services(url, plan, results)["new"] == 0  # everything was already in the outbox


def test_a_mart_emptied_by_a_crash_is_rebuilt_in_full_before_services_run(both, tmp_path):
    # PostgreSQL empties unlogged tables on crash recovery; emptying them by hand is the same state.
    from renkei.errors import RenkeiError
    from renkei.warehouse import MART_TABLES

    url = _own_copy(both, "full_url", tmp_path)
    if url.startswith("postgresql"):
        persistence = _scalars(url, sa.text(
            "SELECT DISTINCT relpersistence FROM pg_class WHERE relname IN ('mart_residents', 'mart_doses', 'linkage', 'link_flags')"))
        assert persistence == {"u"}
    before = _tables(url)
    eng = engine(url)
    with eng.begin() as conn:
        for t in MART_TABLES:
            conn.execute(t.delete())
    eng.dispose()
    with pytest.raises(RenkeiError, match="run link_residents"):
        run_services(url, AS_OF, "services/after-crash")
    rebuilt = build_mart(url, AS_OF, "link/after-crash")  # same date as the last build: would be incremental
    assert rebuilt["mode"] == "full" and rebuilt["residents"] == len(before["mart_residents"])
    after = _tables(url)
    for name in ("mart_residents", "mart_doses", "linkage", "link_flags"):
        assert after[name] == before[name], name
    assert run_services(url, AS_OF, "services/after-crash")["new"] == 0
