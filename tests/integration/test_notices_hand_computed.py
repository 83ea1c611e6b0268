"""Immunization notices through the whole chain equal hand-computed expectations.

22 children with chosen birth dates and histories are written as a raw CSV drop, the chain runs
as real Airflow DAG runs (embedded SQLite), and the outbox must hold exactly the notices
computed by hand below from SERVICES.md for D = 2025-06-01 (arithmetic in the comments;
anniv rolls to the 1st of the next month, reach = anniv − 1 day, last_chance when
legal_end − 30 ≤ D).
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from renkei.config import load_sources

D = date(2025, 6, 1)
pytestmark = pytest.mark.airflow

# child: (birth_date, status, [(vaccine, dose, administered_on), ...])
CHILDREN: dict[str, tuple[str, str, list[tuple[str, int, str]]]] = {
    "A": ("2025-04-01", "resident", []),
    "B": ("2025-04-02", "resident", []),
    "C": ("2025-04-03", "resident", []),
    "D": ("2025-03-31", "resident", []),
    "E": ("2024-12-31", "resident", [
        ("HEPB", 1, "2025-03-03"), ("HEPB", 2, "2025-04-01"), ("ROTA1", 1, "2025-03-03"), ("ROTA1", 2, "2025-04-01"),
        ("DPT_IPV_HIB", 1, "2025-03-03"), ("DPT_IPV_HIB", 2, "2025-03-25"), ("DPT_IPV_HIB", 3, "2025-04-15"),
        ("PCV", 1, "2025-03-03"), ("PCV", 2, "2025-04-01"), ("PCV", 3, "2025-04-29")]),
    "F": ("2025-04-01", "moved_out", []),
    "G": ("2025-04-02", "deceased", []),
    "H": ("2025-03-10", "resident", []),
    "I": ("2025-02-01", "resident", []),
    "J": ("2025-01-15", "resident", [("ROTA5", 1, "2025-03-15"), ("ROTA5", 2, "2025-04-12")]),
    "K": ("2024-09-01", "resident", [
        ("HEPB", 1, "2024-11-01"), ("HEPB", 2, "2024-12-01"), ("ROTA1", 1, "2024-11-01"), ("ROTA1", 2, "2024-12-01"),
        ("DPT_IPV_HIB", 1, "2024-11-01"), ("DPT_IPV_HIB", 2, "2024-11-22"), ("DPT_IPV_HIB", 3, "2024-12-13"),
        ("PCV", 1, "2024-11-01"), ("PCV", 2, "2024-11-29"), ("PCV", 3, "2024-12-27"), ("BCG", 1, "2025-02-01")]),
    "L": ("2024-05-20", "resident", [
        ("HEPB", 1, "2024-07-20"), ("HEPB", 2, "2024-08-20"), ("HEPB", 3, "2024-12-20"),
        ("ROTA1", 1, "2024-07-20"), ("ROTA1", 2, "2024-08-20"),
        ("DPT_IPV_HIB", 1, "2024-07-20"), ("DPT_IPV_HIB", 2, "2024-08-20"), ("DPT_IPV_HIB", 3, "2024-09-20"),
        ("DPT_IPV_HIB", 4, "2025-04-01"),
        ("PCV", 1, "2024-07-20"), ("PCV", 2, "2024-08-20"), ("PCV", 3, "2024-09-20"), ("PCV", 4, "2025-05-25"),
        ("BCG", 1, "2024-11-01")]),
    "M": ("2019-04-02", "resident", [
        *[("DPT_IPV", n, d) for n, d in enumerate(["2019-06-10", "2019-07-10", "2019-08-10", "2020-03-10"], 1)],
        *[("HIB", n, d) for n, d in enumerate(["2019-06-10", "2019-07-10", "2019-08-10", "2020-03-10"], 1)],
        ("MR", 1, "2020-04-10"), ("VAR", 1, "2020-04-10"), ("VAR", 2, "2020-10-10"),
        ("JE", 1, "2022-05-01"), ("JE", 2, "2022-05-08"), ("JE", 3, "2023-05-01")]),
    "N": ("2019-04-01", "resident", [
        *[("DPT_IPV", n, d) for n, d in enumerate(["2019-06-10", "2019-07-10", "2019-08-10", "2020-03-10"], 1)],
        *[("HIB", n, d) for n, d in enumerate(["2019-06-10", "2019-07-10", "2019-08-10", "2020-03-10"], 1)],
        ("MR", 1, "2020-04-10"), ("VAR", 1, "2020-04-10"), ("VAR", 2, "2020-10-10"),
        ("JE", 1, "2022-05-01"), ("JE", 2, "2022-05-08"), ("JE", 3, "2023-05-01")]),
    "P": ("2022-05-15", "resident", [
        *[(v, n, d) for v in ("DPT_IPV", "HIB", "PCV")
          for n, d in enumerate(["2022-07-15", "2022-08-15", "2022-09-15", "2023-05-20"], 1)]]),
    "Q": ("2022-03-10", "resident", [
        ("JE", 1, "2025-05-20"),
        *[(v, n, d) for v in ("DPT_IPV", "HIB") for n, d in enumerate(["2022-05-10", "2022-06-10", "2022-07-10", "2023-02-10"], 1)],
        *[("PCV", n, d) for n, d in enumerate(["2022-05-10", "2022-06-10", "2022-07-10", "2023-03-10"], 1)]]),
    "R": ("2021-08-31", "resident", [
        ("JE", 1, "2024-09-05"), ("JE", 2, "2024-09-12"),
        *[(v, n, d) for v in ("DPT_IPV", "HIB", "PCV") for n, d in enumerate(["2021-11-01", "2021-12-01", "2022-01-05", "2022-09-01"], 1)]]),
    "S": ("2024-06-30", "resident", [
        ("HEPB", 1, "2024-08-30"), ("HEPB", 2, "2024-09-30"), ("HEPB", 3, "2025-01-20"),
        ("ROTA1", 1, "2024-08-30"), ("ROTA1", 2, "2024-09-30"),
        ("DPT_IPV_HIB", 1, "2024-08-30"), ("DPT_IPV_HIB", 2, "2024-09-20"), ("DPT_IPV_HIB", 3, "2024-10-11"),
        ("DPT_IPV_HIB", 4, "2025-04-20"),
        ("PCV", 1, "2024-08-30"), ("PCV", 2, "2024-09-27"), ("PCV", 3, "2024-10-25"), ("BCG", 1, "2024-12-01")]),
    "T": ("2023-06-10", "resident", [
        ("HEPB", 1, "2023-08-10"), ("HEPB", 2, "2023-09-10"), ("HEPB", 3, "2024-01-10"),
        ("ROTA1", 1, "2023-08-10"), ("ROTA1", 2, "2023-09-10"),
        *[(v, n, d) for v in ("DPT_IPV", "HIB", "PCV") for n, d in enumerate(["2023-08-10", "2023-09-10", "2023-10-10", "2024-06-10"], 1)],
        ("BCG", 1, "2023-12-01"), ("MR", 1, "2024-06-15"), ("VAR", 1, "2024-06-15")]),
    "U": ("2024-02-29", "resident", [
        ("HEPB", 1, "2024-04-29"), ("HEPB", 2, "2024-05-29"), ("HEPB", 3, "2024-09-20"),
        ("ROTA1", 1, "2024-04-29"), ("ROTA1", 2, "2024-05-29"),
        *[(v, n, d) for v in ("DPT_IPV", "HIB") for n, d in enumerate(["2024-04-29", "2024-05-29", "2024-06-29", "2025-01-10"], 1)],
        ("PCV", 1, "2024-04-29"), ("PCV", 2, "2024-05-29"), ("PCV", 3, "2024-06-29"), ("PCV", 4, "2025-03-05"),
        ("BCG", 1, "2024-08-01")]),
    "V": ("2024-07-01", "resident", [
        ("HEPB", 1, "2024-09-01"), ("ROTA1", 1, "2024-09-01"), ("ROTA1", 2, "2024-10-01"),
        ("DPT_IPV_HIB", 1, "2024-09-01"), ("DPT_IPV_HIB", 2, "2024-09-22"), ("DPT_IPV_HIB", 3, "2024-10-13"),
        ("DPT_IPV_HIB", 4, "2025-04-20"),
        ("PCV", 1, "2024-09-01"), ("PCV", 2, "2024-09-29"), ("PCV", 3, "2024-10-27"), ("BCG", 1, "2024-12-15")]),
    "W": ("2025-01-20", "resident", [
        ("HEPB", 1, "2025-03-20"), ("HEPB", 2, "2025-04-01"),  # dose 2 only 12 days after dose 1: does not count
        ("ROTA1", 1, "2025-03-20"), ("ROTA1", 2, "2025-04-20"),
        ("DPT_IPV_HIB", 1, "2025-03-20"), ("DPT_IPV_HIB", 2, "2025-04-10"), ("DPT_IPV_HIB", 3, "2025-05-01"),
        ("PCV", 1, "2025-03-20"), ("PCV", 2, "2025-04-17"), ("PCV", 3, "2025-05-15")]),
}

# (child, vaccine_code, dose, kind, window_start, window_end)
EXPECTED = {
    # A born 2025-04-01: reach(2)=2025-05-31; HEPB end reach(12)=2026-03-31; ROTA b+42=05-13,
    # b+104=2025-07-14, notify max(05-31, 05-13); last_chance only from 07-14−30=06-14.
    # DPT end reach(90): anniv 2032-10-01 → 2032-09-30; PCV end reach(60)=2030-03-31.
    ("A", "HEPB", 1, "due", "2025-05-31", "2026-03-31"),
    ("A", "ROTA", 1, "due", "2025-05-31", "2025-07-14"),
    ("A", "DPT_IPV_HIB", 1, "due", "2025-05-31", "2032-09-30"),
    ("A", "PCV", 1, "due", "2025-05-31", "2030-03-31"),
    # B born 2025-04-02: reach(2) = 2025-06-02 − 1 = 2025-06-01 = D (opens today). ROTA end b+104 = 07-15.
    ("B", "HEPB", 1, "due", "2025-06-01", "2026-04-01"),
    ("B", "ROTA", 1, "due", "2025-06-01", "2025-07-15"),
    ("B", "DPT_IPV_HIB", 1, "due", "2025-06-01", "2032-10-01"),
    ("B", "PCV", 1, "due", "2025-06-01", "2030-04-01"),
    # C born 2025-04-03: reach(2) = 2025-06-02 > D → nothing yet.
    # D born 2025-03-31: anniv(2)=05-31 → reach 05-30; ROTA b+104 = 2025-07-13;
    # reach(12)=2026-03-30; reach(90): 2032-09-31 → 2032-10-01 → 2032-09-30; reach(60)=2030-03-30.
    ("D", "HEPB", 1, "due", "2025-05-30", "2026-03-30"),
    ("D", "ROTA", 1, "due", "2025-05-30", "2025-07-13"),
    ("D", "DPT_IPV_HIB", 1, "due", "2025-05-30", "2032-09-30"),
    ("D", "PCV", 1, "due", "2025-05-30", "2030-03-30"),
    # E born 2024-12-31: HEPB d3 from d1+140 = 2025-07-21 (later); DPT d4 anniv(04-15, 6) later;
    # PCV d4 max(06-29, reach(12)=2025-12-30) later; BCG from reach(5): 2025-05-31 − 1 = 05-30,
    # end reach(12) = 2025-12-30.
    ("E", "BCG", 1, "due", "2025-05-30", "2025-12-30"),
    # F moved out, G deceased: nothing.
    # H born 2025-03-10: ROTA end b+104 = 2025-06-22; 06-22 − 30 = 05-23 ≤ D → last_chance;
    # reach(2) = 2025-05-09.
    ("H", "ROTA", 1, "last_chance", "2025-05-09", "2025-06-22"),
    ("H", "HEPB", 1, "due", "2025-05-09", "2026-03-09"),
    ("H", "DPT_IPV_HIB", 1, "due", "2025-05-09", "2032-09-09"),
    ("H", "PCV", 1, "due", "2025-05-09", "2030-03-09"),
    # I born 2025-02-01: ROTA ended b+104 = 2025-05-16 < D → none; reach(2) = 2025-03-31.
    ("I", "HEPB", 1, "due", "2025-03-31", "2026-01-31"),
    ("I", "DPT_IPV_HIB", 1, "due", "2025-03-31", "2032-07-31"),
    ("I", "PCV", 1, "due", "2025-03-31", "2030-01-31"),
    # J born 2025-01-15, ROTA5 ×2: d3 from 04-12 + 28 = 05-10, end b+224 = 2025-08-27.
    ("J", "ROTA5", 3, "due", "2025-05-10", "2025-08-27"),
    ("J", "HEPB", 1, "due", "2025-03-14", "2026-01-14"),
    ("J", "DPT_IPV_HIB", 1, "due", "2025-03-14", "2032-07-14"),
    ("J", "PCV", 1, "due", "2025-03-14", "2030-01-14"),
    # K born 2024-09-01: HEPB d3 from d1+140 = 2024-11-01 + 140 = 2025-03-21; end reach(12) = 2025-08-31.
    ("K", "HEPB", 3, "due", "2025-03-21", "2025-08-31"),
    # L born 2024-05-20: reach(12) = 2025-05-19; MR end reach(24) = 2026-05-19; VAR end reach(36).
    ("L", "MR", 1, "due", "2025-05-19", "2026-05-19"),
    ("L", "VAR", 1, "due", "2025-05-19", "2027-05-19"),
    # M born 2019-04-02 → school entry 2026 → MR 2期 window 2025-04-01 … 2026-03-31.
    ("M", "MR", 2, "due", "2025-04-01", "2026-03-31"),
    # N born 2019-04-01 → entry 2025 → MR 2期 ended 2025-03-31: nothing.
    # P born 2022-05-15: JE d1 from reach(36) = 2025-05-14, end reach(90) = 2029-11-14.
    ("P", "JE", 1, "due", "2025-05-14", "2029-11-14"),
    # Q born 2022-03-10, JE d1 2025-05-20: d2 from d1 + 7 = 05-27; end reach(90) = 2029-09-09.
    ("Q", "JE", 2, "due", "2025-05-27", "2029-09-09"),
    # R: JE d3 from max(anniv(d2, 6) = 2025-03-12, reach(48) = 2025-08-30) → later: nothing.
    # S: PCV d4 from max(d3 + 61, reach(12) = 2025-06-29) → later; MR1 from 06-29: nothing.
    # T born 2023-06-10: VAR d2 from anniv(2024-06-15, 6) = 2024-12-15; end reach(36) = 2026-06-09.
    ("T", "VAR", 2, "due", "2024-12-15", "2026-06-09"),
    # U born 2024-02-29: anniv(12) = 2025-02-29 → 2025-03-01 → reach 2025-02-28; reach(24) = 2026-02-28;
    # reach(36) = 2027-02-28.
    ("U", "MR", 1, "due", "2025-02-28", "2026-02-28"),
    ("U", "VAR", 1, "due", "2025-02-28", "2027-02-28"),
    # U's Hib (started at 2 m: 3 + 1): the 追加 needs 7か月以上 after the 3rd dose, anniv(2024-06-29, 7)
    # = 2025-01-29; the one on 2025-01-10 is too soon → HIB#4 again, to reach(60) = 2029-03-01 − 1.
    ("U", "HIB", 4, "due", "2025-01-29", "2029-02-28"),
    # V born 2024-07-01: HEPB d2 from d1 + 28 = 2024-09-29; end reach(12) = 2025-06-30;
    # 06-30 − 30 = 05-31 ≤ D → last_chance.
    ("V", "HEPB", 2, "last_chance", "2024-09-29", "2025-06-30"),
    # W born 2025-01-20: HEPB d2 on 04-01 is before d1 + 28 = 04-17 → does not count; dose 2 is
    # still due from 04-17; end reach(12) = 2026-01-19. BCG from reach(5) = 06-19: later.
    ("W", "HEPB", 2, "due", "2025-04-17", "2026-01-19"),
}


def _code(child: str) -> str:
    return f"{ord(child):011d}"


def _write_drop(raw: Path) -> None:
    raw.mkdir(parents=True)
    sources = load_sources()
    ts = "2025-05-31T10:00:00+09:00"
    registry = []
    for child, (born, status, _) in CHILDREN.items():
        registry.append({
            "resident_code": _code(child), "name_kana": "テスト コ", "name_kanji": "試験 子", "birth_date": born,
            "sex": "2" if ord(child) % 2 else "1", "ward_code": "401064", "address": f"北九州市小倉北区城内{ord(child)}番1号",
            "household_code": f"H{ord(child)}", "status": status,
            "status_date": "2025-05-01" if status != "resident" else born, "updated_at": ts,
        })
    imm = []
    for child, (born, _, doses) in CHILDREN.items():
        for i, (code, n, on) in enumerate(doses):
            imm.append({
                "record_id": f"IM{child}{i:03d}", "resident_code": _code(child), "name_kana": "テスト コ",
                "birth_date": born, "sex": "2" if ord(child) % 2 else "1",
                "address": f"北九州市小倉北区城内{ord(child)}番1号", "vaccine_code": code, "dose_number": str(n),
                "administered_on": on, "updated_at": ts,
            })
    for name, src in sources.items():
        if not src.ingest:
            continue
        rows = {"registry": registry, "immunization": imm}.get(name, [])
        with open(raw / f"{name}.csv", "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=src.raw_columns)
            w.writeheader()
            w.writerows(rows)


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory):
    from renkei.keys.ring import KeyRing
    from renkei.runner import run_chain

    base = tmp_path_factory.mktemp("hand")
    _write_drop(base / "raw")
    ring_path = KeyRing.generate().save(base / "keyring.json")
    report = run_chain(base / "raw", D, base / "work", keyring_path=ring_path, say=lambda m: None)
    return report, KeyRing.load(ring_path), base / "work"


def test_notices_equal_hand_computed(hand_run):
    report, ring, work = hand_run
    erk_to_child = {ring.seal("link", _code(c)): c for c in CHILDREN}
    eng = sa.create_engine(f"sqlite:///{work / 'warehouse.db'}")
    with eng.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT erk, subject, dose_number, kind, window_start, window_end FROM notices WHERE service='immunization'"
        )).all()
    got = {(erk_to_child[r[0]], r[1], r[2], r[3], str(r[4]), str(r[5])) for r in rows}
    missing, extra = EXPECTED - got, got - EXPECTED
    assert not missing and not extra, f"missing {sorted(missing)}; unexpected {sorted(extra)}"
    assert len({c for c, *_ in EXPECTED}) >= 15 and len(CHILDREN) >= 20


def test_every_hand_row_loads(hand_run):
    report, _, _ = hand_run
    assert report["sources"]["registry"] == {**report["sources"]["registry"], "read": len(CHILDREN), "loaded": len(CHILDREN), "quarantined": 0}
    n_doses = sum(len(d) for _, _, d in CHILDREN.values())
    assert report["sources"]["immunization"]["loaded"] == n_doses
