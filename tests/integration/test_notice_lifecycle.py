"""The notice lifecycle through the real path: department CSV drops → export adapter → ingest →
link → services, three times on D = 2025-06-01, on SQLite and PostgreSQL.

Step 0: the first notices. Step 1: Q's JE dose 2 is recorded; a wrong ROTA5 dose 2 is recorded
on J; A moves out; B's registry row is deleted; X opts out of events; K moves out while a new
record with another birth date puts K on hold. Step 2: J's wrong record is deleted; B is
registered again; event E1 is cancelled. Step 3: nothing changed (incremental, then full).
Step 4: the same data on 2025-06-14, when two due notices turn last_chance.

Expected notices, hand-computed for D (anniv rolls to the 1st of the next month, reach = anniv
− 1 day; see test_notices_hand_computed.py for the same children):
- J born 2025-01-15: HEPB 1, DPT_IPV_HIB 1, PCV 1 due (from reach(2) = 2025-03-14); ROTA5 dose 1
  on 03-15 → dose 2 from 03-15 + 28, due until b + 224 = 08-27; with a dose 2 on 04-20 → dose 3
  due (from 05-18). Check-up M4: reach(3) = 2025-04-14 … reach(6) = 2025-07-14, due.
- Q born 2022-03-10, JE dose 1 on 2025-05-20 → JE dose 2 due from 05-27; once dose 2 is given
  dose 3 waits for max(anniv 6 m, reach 48 m): nothing. Check-up Y3: anniv(36) = 2025-03-10 …
  reach(48) = 2026-03-09, due.
- A, B, K born 2025-04-01: HEPB 1, ROTA 1, DPT_IPV_HIB 1, PCV 1 due (reach(2) = 2025-05-31); M4
  opens at reach(3) = 2025-06-30: not yet.
- V and X subscribe to topic `events` (any ward); E1 starts 2025-06-04 (D < start ≤ D + 7).
"""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from renkei.config import ingest_sources, load_sources

D = date(2025, 6, 1)
OLD, NOW = "2025-05-31T10:00:00+09:00", "2025-06-01T09:30:00+09:00"
BORN = {"J": "2025-01-15", "Q": "2022-03-10", "A": "2025-04-01", "B": "2025-04-01", "K": "2025-04-01",
        "V": "1980-05-05", "X": "1980-05-05"}


def code(name: str) -> str:
    return f"{ord(name):011d}"


def _person(name: str, born: str | None = None) -> dict:
    return {"resident_code": code(name), "name_kana": "テスト コ", "birth_date": born or BORN[name], "sex": "1",
            "address": f"北九州市小倉北区城内{ord(name)}番1号"}


def _registry(name: str, status: str = "resident", stamp: str = OLD) -> dict:
    return {**_person(name), "name_kanji": "試験 子", "ward_code": "401064", "household_code": f"H{ord(name)}",
            "status": status, "status_date": "2025-05-31" if status != "resident" else BORN[name], "updated_at": stamp}


def _dose(record_id: str, name: str, vaccine: str, n: int, on: str, stamp: str = OLD, born: str | None = None) -> dict:
    return {"record_id": record_id, **_person(name, born), "vaccine_code": vaccine, "dose_number": str(n),
            "administered_on": on, "updated_at": stamp}


def _infant(name: str) -> set[tuple]:
    return {(name, "immunization", v, 1, "due") for v in ("HEPB", "ROTA", "DPT_IPV_HIB", "PCV")}


def _j(rota_dose: int) -> set[tuple]:
    return {("J", "immunization", v, 1, "due") for v in ("HEPB", "DPT_IPV_HIB", "PCV")} | {
        ("J", "immunization", "ROTA5", rota_dose, "due"), ("J", "checkup", "M4", 1, "due")}


class City:
    """The departments' CSV drops (one dict of rows per source) and one warehouse."""

    def __init__(self, base: Path, warehouse_url: str) -> None:
        from renkei.keys.ring import KeyRing
        from renkei.settings import Settings

        self.base, self.url = base, warehouse_url
        (base / "raw").mkdir(parents=True, exist_ok=True)
        self.ring = KeyRing.generate()
        self.extracts = f"sqlite:///{base / 'extracts.db'}"
        env = Settings.from_env()
        self.settings = Settings(warehouse_url=warehouse_url, extracts_url=self.extracts,
                                 config_dir=env.config_dir, expectations_dir=env.expectations_dir)
        self.rows: dict[str, dict[str, dict]] = {s.name: {} for s in ingest_sources()}
        self.who = {self.ring.seal("link", code(n)): n for n in BORN}
        self.steps = 0

    def put(self, source: str, key: str, row: dict) -> None:
        self.rows[source][key] = row

    def drop(self, source: str, key: str) -> None:
        del self.rows[source][key]

    def step(self, full: bool | None = None) -> dict:
        """Export every source, ingest, link and serve; returns the services counts."""
        from renkei import ingest
        from renkei.keys.adapter import pseudonymize
        from renkei.linkage.mart import build_mart
        from renkei.outputs.outbox import run_services

        run = f"step{self.steps}"
        self.steps += 1
        for src in ingest_sources():
            path = self.base / "raw" / f"{src.name}.csv"
            with open(path, "w", encoding="utf-8", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=src.raw_columns)
                w.writeheader()
                w.writerows([{c: r.get(c) for c in src.raw_columns} for r in self.rows[src.name].values()])
            pseudonymize(load_sources()[src.name], str(path), self.extracts, self.ring)
            ingest.extract(src, f"ingest/{run}", self.settings)
            ingest.validate(src, f"ingest/{run}", self.settings)
            ingest.load(src, f"ingest/{run}", self.ring, self.settings)
        build_mart(self.url, D, f"link/{run}")
        parts = 2 if self.url.startswith("postgresql") else 1
        return run_services(self.url, D, f"services/{run}", full=full, parts=parts)

    def sql(self, query: str, **params) -> list[tuple]:
        eng = sa.create_engine(self.url)
        with eng.connect() as conn:
            rows = [tuple(r) for r in conn.execute(sa.text(query), params)]
        eng.dispose()
        return rows

    def notices(self) -> dict[tuple, tuple]:
        """(resident, service, subject, dose, kind) -> (state, reason, superseded_by's key, replaces' key)."""
        latest = {nid: (state, reason, by) for nid, state, reason, by in self.sql(
            "SELECT e.notice_id, e.state, e.reason, e.superseded_by FROM notice_events e WHERE e.seq = "
            "(SELECT max(seq) FROM notice_events l WHERE l.notice_id = e.notice_id)")}
        key = self.keys()
        out = {}
        for nid, replaces in self.sql("SELECT notice_id, replaces FROM notices"):
            state, reason, by = latest.get(nid, ("pending", None, None))
            out[key[nid]] = (state, reason, key.get(by), key.get(replaces))
        return out

    def keys(self) -> dict[str, tuple]:
        """notice_id -> (resident, service, subject, dose, kind)."""
        rows = self.sql("SELECT notice_id, erk, service, subject, dose_number, kind FROM notices")
        return {r[0]: (self.who[r[1]], *r[2:]) for r in rows}

    def live(self) -> set[tuple]:
        return {k for k, v in self.notices().items() if v[0] in ("pending", "reinstated")}


@pytest.fixture(params=["sqlite", "postgresql"])
def city(request, tmp_path) -> City:
    url = request.getfixturevalue("pg_factory")() if request.param == "postgresql" else f"sqlite:///{tmp_path / 'wh.db'}"
    return City(tmp_path, url)


def test_notices_are_withdrawn_superseded_and_reinstated_as_their_basis_changes(city: City):
    from renkei.audit.records import record_notices_published
    from renkei.linkage.mart import build_mart
    from renkei.outputs.outbox import run_services

    for name in BORN:
        city.put("registry", name, _registry(name))
    city.put("immunization", "IMJ1", _dose("IMJ1", "J", "ROTA5", 1, "2025-03-15"))
    city.put("immunization", "IMQJE1", _dose("IMQJE1", "Q", "JE", 1, "2025-05-20"))
    for i, on in enumerate(["2022-05-10", "2022-06-10", "2022-07-10", "2023-02-10"], 1):
        for v in ("DPT_IPV", "HIB"):
            city.put("immunization", f"IMQ{v}{i}", _dose(f"IMQ{v}{i}", "Q", v, i, on))
    for i, on in enumerate(["2022-05-10", "2022-06-10", "2022-07-10", "2023-03-10"], 1):
        city.put("immunization", f"IMQPCV{i}", _dose(f"IMQPCV{i}", "Q", "PCV", i, on))
    for sid, name in (("S1", "X"), ("S2", "V")):
        city.put("subscriptions", sid, {"subscription_id": sid, "resident_code": code(name), "topic": "events",
                                        "ward_code": None, "opted_in_at": "2025-01-01T09:00:00+09:00",
                                        "opted_out_at": None, "updated_at": OLD})
    city.put("events", "E1", {"event_id": "E1", "title": "勝山公園 夏まつり", "topic": "events", "ward_code": "401064",
                              "venue": "勝山公園", "starts_at": "2025-06-04T18:00:00+09:00",
                              "ends_at": "2025-06-04T21:00:00+09:00", "updated_at": OLD})

    first = city.step()
    events = {("V", "event", "E1", 1, "event"), ("X", "event", "E1", 1, "event")}
    assert city.live() == (_j(2) | _infant("A") | _infant("B") | _infant("K") | events
                           | {("Q", "immunization", "JE", 2, "due"), ("Q", "checkup", "Y3", 1, "due")})
    assert (first["withdrawn"], first["superseded"], first["reinstated"]) == (0, 0, 0)
    assert city.sql("SELECT count(*) FROM notice_events") == [(0,)]

    # -- step 1 ---------------------------------------------------------------------------
    city.put("immunization", "IMQJE2", _dose("IMQJE2", "Q", "JE", 2, "2025-05-31", NOW))
    city.put("immunization", "IMJ2", _dose("IMJ2", "J", "ROTA5", 2, "2025-04-20", NOW))  # the wrong child
    city.put("registry", "A", _registry("A", "moved_out", NOW))
    city.drop("registry", "B")
    city.put("subscriptions", "S1", {**city.rows["subscriptions"]["S1"], "opted_out_at": "2025-06-01T09:00:00+09:00",
                                     "updated_at": NOW})
    city.put("registry", "K", _registry("K", "moved_out", NOW))
    city.put("immunization", "IMK1", _dose("IMK1", "K", "HEPB", 1, "2025-05-30", NOW, born="2025-04-20"))
    second = city.step()
    assert second["mode"] == "incremental"
    n = city.notices()
    assert n[("Q", "immunization", "JE", 2, "due")][:2] == ("withdrawn", "dose_recorded")
    old, new = ("J", "immunization", "ROTA5", 2, "due"), ("J", "immunization", "ROTA5", 3, "due")
    assert n[old] == ("superseded", "rule_asks_other", new, None)
    assert n[new] == ("pending", None, None, old)  # the new notice names the one it replaces
    assert {k: v[:2] for k, v in n.items() if k[0] == "A"} == dict.fromkeys(_infant("A"), ("withdrawn", "status_moved_out"))
    assert {k: v[:2] for k, v in n.items() if k[0] == "B"} == dict.fromkeys(_infant("B"), ("withdrawn", "not_in_registry"))
    assert n[("X", "event", "E1", 1, "event")][:2] == ("withdrawn", "opted_out")
    assert ("birth_date_mismatch", "hold", "pending") in city.sql(
        "SELECT reason, severity, state FROM review_queue WHERE erk = :k", k=city.ring.seal("link", code("K")))
    assert {k: v[0] for k, v in n.items() if k[0] == "K"} == dict.fromkeys(_infant("K"), "pending")  # held: untouched
    assert city.live() == (_j(3) | _infant("K") | {("V", "event", "E1", 1, "event"), ("Q", "checkup", "Y3", 1, "due")})
    assert (second["withdrawn"], second["superseded"], second["reinstated"]) == (1 + 4 + 4 + 1, 1, 0)
    # The audit trail's entry of the run lists its transitions: ids and reasons, nothing personal.
    seq = record_notices_published(city.url, "services/step1", D, second, ring=city.ring)
    [(payload,)] = city.sql("SELECT payload FROM audit_log WHERE seq = :s", s=seq)
    key = city.keys()
    moved = json.loads(payload)["transitions"]
    assert {(key[t["notice_id"]], t["state"], t["reason"], key.get(t["superseded_by"])) for t in moved} == {
        (("Q", "immunization", "JE", 2, "due"), "withdrawn", "dose_recorded", None),
        (old, "superseded", "rule_asks_other", new),
        (("X", "event", "E1", 1, "event"), "withdrawn", "opted_out", None),
        *{(k, "withdrawn", "status_moved_out", None) for k in _infant("A")},
        *{(k, "withdrawn", "not_in_registry", None) for k in _infant("B")},
    } and len(moved) == 11
    assert all(set(t) == {"notice_id", "state", "reason", "superseded_by"} for t in moved)
    assert not any(erk in payload for erk in city.who)

    # -- step 2 ---------------------------------------------------------------------------
    city.drop("immunization", "IMJ2")
    city.put("registry", "B", _registry("B", stamp=NOW))
    city.drop("events", "E1")
    third = city.step()
    assert third["mode"] == "full"  # the events calendar changed
    n = city.notices()
    assert n[old] == ("reinstated", "basis_restored", None, None)
    assert n[new] == ("superseded", "rule_asks_other", old, old)
    assert {k: v[0] for k, v in n.items() if k[0] == "B"} == dict.fromkeys(_infant("B"), "reinstated")
    assert n[("V", "event", "E1", 1, "event")][:2] == ("withdrawn", "event_removed")
    assert n[("X", "event", "E1", 1, "event")][:2] == ("withdrawn", "opted_out")  # no second event
    assert city.live() == _j(2) | _infant("B") | _infant("K") | {("Q", "checkup", "Y3", 1, "due")}
    assert (third["withdrawn"], third["superseded"], third["reinstated"]) == (1, 1, 1 + 4)
    history = city.sql("SELECT e.state, e.reason, e.run_id FROM notice_events e JOIN notices n "
                       "ON n.notice_id = e.notice_id WHERE n.erk = :j AND n.dose_number = 3 ORDER BY e.seq",
                       j=city.ring.seal("link", code("J")))
    assert history == [("superseded", "rule_asks_other", "services/step2")]

    # -- step 3: nothing changed; neither an incremental nor a full run moves anything -------
    before, count = city.notices(), city.sql("SELECT count(*) FROM notice_events")
    quiet = city.step()
    again = _services(city, full=True)
    assert (quiet["withdrawn"], quiet["superseded"], quiet["reinstated"]) == (0, 0, 0)
    assert (again["withdrawn"], again["superseded"], again["reinstated"]) == (0, 0, 0)
    assert city.notices() == before and city.sql("SELECT count(*) FROM notice_events") == count

    # -- step 4: two weeks later, windows near their end: due → last_chance supersedes --------
    # B's ROTA 1 ends b + 104 = 2025-07-14 and J's M4 at reach(6) = 2025-07-14: last_chance from
    # 07-14 − 30 = 06-14. Every other open window ends after 07-14 + 30. New besides: J's BCG 1,
    # due from reach(5) = 2025-06-14 (to reach(12)), replacing nothing.
    later = date(2025, 6, 14)
    build_mart(city.url, later, "link/later")
    moved = run_services(city.url, later, "services/later", parts=2 if city.url.startswith("postgresql") else 1)
    assert (moved["new"], moved["withdrawn"], moved["superseded"], moved["reinstated"]) == (3, 0, 2, 0)
    n = city.notices()
    assert n[("J", "immunization", "BCG", 1, "due")] == ("pending", None, None, None)
    for due in (("B", "immunization", "ROTA", 1, "due"), ("J", "checkup", "M4", 1, "due")):
        last = (*due[:4], "last_chance")
        assert n[due] == ("superseded", "rule_asks_other", last, None)
        assert n[last] == ("pending", None, None, due)


def _services(city: City, full: bool) -> dict:
    from renkei.outputs.outbox import run_services

    return run_services(city.url, D, "services/full", full=full, parts=2 if city.url.startswith("postgresql") else 1)
