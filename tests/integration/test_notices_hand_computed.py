"""Every service's notices through the whole chain equal hand-computed expectations.

A small hand-made city is written as a raw CSV drop: 33 children with chosen birth dates,
immunization histories and check-up records, 14 NHI members on either side of each 特定健診
boundary, 13 subscribers of the city app and 12 events in and out of the notice window. The
chain runs as real Airflow DAG runs (export adapter → ingest_* → link_residents →
proactive_services) into an SQLite and a PostgreSQL warehouse, and the outbox must hold exactly
the notices computed by hand below from SERVICES.md for D = 2025-06-01 (arithmetic in the
comments; anniv rolls to the 1st of the next month, reach = anniv − 1 day, last_chance when
window_end − 30 ≤ D). A missing, extra or duplicated notice fails.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import date, datetime, timedelta
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
    # X, Y: every series on time except BCG (the last_chance boundary); M7 ends on D / D+1.
    **{c: (born, "resident", [
        ("HEPB", 1, "2024-09-02"), ("HEPB", 2, "2024-10-02"), ("HEPB", 3, "2025-01-25"),
        ("ROTA1", 1, "2024-09-02"), ("ROTA1", 2, "2024-10-02"),
        ("DPT_IPV_HIB", 1, "2024-09-02"), ("DPT_IPV_HIB", 2, "2024-09-23"), ("DPT_IPV_HIB", 3, "2024-10-14"),
        ("DPT_IPV_HIB", 4, "2025-04-14"),
        ("PCV", 1, "2024-09-02"), ("PCV", 2, "2024-09-30"), ("PCV", 3, "2024-10-28")])
       for c, born in (("X", "2024-07-02"), ("Y", "2024-07-03"))},
    # Infant/toddler check-up boundaries (no immunization record: every open first dose is due).
    "CA": ("2025-03-02", "resident", []),
    "CB": ("2025-03-03", "resident", []),
    "CC": ("2023-12-01", "resident", []),
    "CD": ("2023-12-02", "resident", []),
    "CE": ("2022-06-01", "resident", []),
    "CF": ("2022-06-02", "resident", []),
    "CG": ("2021-06-02", "resident", []),
    "CH": ("2021-06-01", "resident", []),
    "CI": ("2022-03-01", "moved_out", []),
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
    # X born 2024-07-02: HEPB d2 ≥ d1 + 28 = 09-30, d3 ≥ d1 + 140 = 2025-01-20, DPT d2/d3 ≥ prev + 21,
    # d4 ≥ anniv(10-14, 6) = 2025-04-14, PCV (started ≤ reach(7)) d2/d3 ≥ prev + 28: all count;
    # PCV d4 from max(10-28 + 61, reach(12) = 2025-07-02 − 1 = 2025-07-01): later; MR1/VAR from
    # 07-01: later. BCG reach(5) = 2024-12-02 − 1 = 2024-12-01 … reach(12) = 2025-07-01;
    # 07-01 − 30 = 06-01 = D → last_chance from today.
    ("X", "BCG", 1, "last_chance", "2024-12-01", "2025-07-01"),
    # Y born 2024-07-03: the same history; BCG 2024-12-02 … 2025-07-02; 07-02 − 30 = 06-02 > D → due.
    ("Y", "BCG", 1, "due", "2024-12-02", "2025-07-02"),
    # CA born 2025-03-02: reach(2) = anniv 05-02 − 1 = 2025-05-01; reach(12) = 2026-03-02 − 1 =
    # 2026-03-01; ROTA end b+104 = 03-02 +29 → 03-31, +30 → 04-30, +31 → 05-31, +14 → 2025-06-14,
    # notify max(05-01, b+42 = 04-13); 06-14 − 30 = 05-15 ≤ D → last_chance; reach(90) = 2032-09-02
    # − 1; reach(60) = 2030-03-02 − 1. BCG from reach(5) = 08-01: later.
    ("CA", "HEPB", 1, "due", "2025-05-01", "2026-03-01"),
    ("CA", "ROTA", 1, "last_chance", "2025-05-01", "2025-06-14"),
    ("CA", "DPT_IPV_HIB", 1, "due", "2025-05-01", "2032-09-01"),
    ("CA", "PCV", 1, "due", "2025-05-01", "2030-03-01"),
    # CB born 2025-03-03: everything one day later; ROTA end b+104 = 2025-06-15 (05-16 ≤ D: last_chance).
    ("CB", "HEPB", 1, "due", "2025-05-02", "2026-03-02"),
    ("CB", "ROTA", 1, "last_chance", "2025-05-02", "2025-06-15"),
    ("CB", "DPT_IPV_HIB", 1, "due", "2025-05-02", "2032-09-02"),
    ("CB", "PCV", 1, "due", "2025-05-02", "2030-03-02"),
    # CC born 2023-12-01: HEPB/BCG ended reach(12) = 2024-11-30, ROTA long over; reach(2) = 2024-02-01
    # − 1 = 2024-01-31; reach(90) = 2031-06-01 − 1; reach(60) = 2028-12-01 − 1; MR1 reach(12) =
    # 2024-11-30 … reach(24) = 2025-11-30 (10-31 > D: due); VAR … reach(36) = 2026-11-30;
    # JE from reach(36): later.
    ("CC", "DPT_IPV_HIB", 1, "due", "2024-01-31", "2031-05-31"),
    ("CC", "PCV", 1, "due", "2024-01-31", "2028-11-30"),
    ("CC", "MR", 1, "due", "2024-11-30", "2025-11-30"),
    ("CC", "VAR", 1, "due", "2024-11-30", "2026-11-30"),
    # CD born 2023-12-02: the same, one day later.
    ("CD", "DPT_IPV_HIB", 1, "due", "2024-02-01", "2031-06-01"),
    ("CD", "PCV", 1, "due", "2024-02-01", "2028-12-01"),
    ("CD", "MR", 1, "due", "2024-12-01", "2025-12-01"),
    ("CD", "VAR", 1, "due", "2024-12-01", "2026-12-01"),
    # CE born 2022-06-01: reach(2) = 2022-07-31; reach(60) = 2027-05-31; reach(90) = 2029-11-30;
    # MR1 ended reach(24) = 2024-05-31; VAR ended reach(36) = 2025-05-31 (yesterday); JE d1 from
    # reach(36) = 2025-05-31; MR2: born after April 1 → entry 2029: later.
    ("CE", "DPT_IPV_HIB", 1, "due", "2022-07-31", "2029-11-30"),
    ("CE", "PCV", 1, "due", "2022-07-31", "2027-05-31"),
    ("CE", "JE", 1, "due", "2025-05-31", "2029-11-30"),
    # CF born 2022-06-02: VAR reach(12) = 2023-06-01 … reach(36) = 2025-06-01 = D → last day,
    # last_chance; JE d1 opens today, reach(36) = 2025-06-01.
    ("CF", "DPT_IPV_HIB", 1, "due", "2022-08-01", "2029-12-01"),
    ("CF", "PCV", 1, "due", "2022-08-01", "2027-06-01"),
    ("CF", "VAR", 1, "last_chance", "2023-06-01", "2025-06-01"),
    ("CF", "JE", 1, "due", "2025-06-01", "2029-12-01"),
    # CG born 2021-06-02: reach(2) = 2021-08-01; reach(60) = 2026-06-01; reach(90) = 2028-12-01;
    # JE d1 from reach(36) = 2024-06-01; MR2 entry 2028: later.
    ("CG", "DPT_IPV_HIB", 1, "due", "2021-08-01", "2028-12-01"),
    ("CG", "PCV", 1, "due", "2021-08-01", "2026-06-01"),
    ("CG", "JE", 1, "due", "2024-06-01", "2028-12-01"),
    # CH born 2021-06-01: one day earlier than CG.
    ("CH", "DPT_IPV_HIB", 1, "due", "2021-07-31", "2028-11-30"),
    ("CH", "PCV", 1, "due", "2021-07-31", "2026-05-31"),
    ("CH", "JE", 1, "due", "2024-05-31", "2028-11-30"),
    # CI moved out: nothing.
}

# child_health records: (child, checkup_code, examined_on)
CHILD_HEALTH = [
    ("J", "M4", "2025-05-20"),    # closes J's open M4
    ("K", "M4", "2025-01-10"),    # another code: K's M7 stays open
    ("P", "Y3", "2025-05-20"),    # closes P's open Y3
    ("Q", "Y1M6", "2023-09-15"),  # another code: Q's Y3 stays open
    ("W", "M4", "2025-04-10"),    # before the window opened (04-19): any record of the code closes it
]

# Infant check-ups (SERVICES.md): M4 reach(3) … reach(6); M7 reach(6) … reach(11); Y1M6 anniv(18)
# … reach(24); Y3 anniv(36) … reach(48); open while no child_health record of the code exists;
# kind last_chance from window_end − 30 (config/services/checkup.yaml). (child, code, kind, start, end)
EXPECTED_CHECKUP = {
    # A, B, C, D, H: M4 from reach(3) = 06-30, 07-01, 07-02, 06-30 (03-31 + 3 m → 07-01 − 1), 06-09: later.
    # E born 2024-12-31: reach(3) = 03-31 − 1 = 2025-03-30; reach(6): 06-31 → 07-01 − 1 = 2025-06-30;
    # 06-30 − 30 = 05-31 ≤ D → last_chance. M7 from 06-30: later.
    ("E", "M4", "last_chance", "2025-03-30", "2025-06-30"),
    # I born 2025-02-01: reach(3) = 2025-04-30, reach(6) = 2025-07-31 (07-01 > D: due).
    ("I", "M4", "due", "2025-04-30", "2025-07-31"),
    # J: M4 2025-04-14 … 07-14 would be open, but examined 05-20: nothing.
    # K born 2024-09-01: M7 reach(6) = 2025-03-01 − 1 = 2025-02-28 … reach(11) = 2025-07-31; its M4
    # record does not close M7.
    ("K", "M7", "due", "2025-02-28", "2025-07-31"),
    # L: M7 ended reach(11) = 2025-04-19; Y1M6 from anniv(18) = 2025-11-20. M, N: past Y3.
    # P: Y3 2025-05-15 … 2026-05-14 open but examined: nothing.
    # Q born 2022-03-10: Y3 anniv(36) = 2025-03-10 … reach(48) = 2026-03-09 (its Y1M6 record is another code).
    ("Q", "Y3", "due", "2025-03-10", "2026-03-09"),
    # R born 2021-08-31: Y3 anniv(36) = 2024-08-31 … reach(48) = 2025-08-31 − 1 = 2025-08-30 (07-31 > D: due).
    ("R", "Y3", "due", "2024-08-31", "2025-08-30"),
    # S: M7 ended reach(11) = 2025-05-29; T born 2023-06-10: Y1M6 anniv(18) = 2024-12-10 …
    # reach(24) = 2025-06-09; 06-09 − 30 = 05-10 ≤ D → last_chance.
    ("T", "Y1M6", "last_chance", "2024-12-10", "2025-06-09"),
    # U: M7 ended 2025-01-28, Y1M6 from anniv(18) = 2025-08-29. V born 2024-07-01: M7 ended reach(11)
    # = 2025-06-01 − 1 = 2025-05-31, yesterday. W: M4 examined (early). F, G, CI: not residents.
    # X born 2024-07-02: M7 reach(6) = 2025-01-02 − 1 = 2025-01-01 … reach(11) = 2025-06-02 − 1 =
    # 2025-06-01 = D: last day, last_chance. Y born 2024-07-03: … 2025-06-02 (06-02 − 30 ≤ D: last_chance).
    ("X", "M7", "last_chance", "2025-01-01", "2025-06-01"),
    ("Y", "M7", "last_chance", "2025-01-02", "2025-06-02"),
    # CA born 2025-03-02: M4 reach(3) = 2025-06-02 − 1 = 2025-06-01 = D (opens today) … reach(6) = 2025-09-01.
    ("CA", "M4", "due", "2025-06-01", "2025-09-01"),
    # CB born 2025-03-03: M4 from 2025-06-02: later.
    # CC born 2023-12-01: Y1M6 from anniv(18) = 2025-06-01 = D … reach(24) = 2025-11-30.
    ("CC", "Y1M6", "due", "2025-06-01", "2025-11-30"),
    # CD born 2023-12-02: anniv(18) = 2025-06-02: later (reach(18) would be D: the window starts at anniv).
    # CE born 2022-06-01: Y3 from anniv(36) = 2025-06-01 = D … reach(48) = 2026-05-31.
    ("CE", "Y3", "due", "2025-06-01", "2026-05-31"),
    # CF born 2022-06-02: Y3 from 2025-06-02: later; Y1M6 ended 2024-06-01.
    # CG born 2021-06-02: Y3 anniv(36) = 2024-06-02 … reach(48) = 2025-06-01 = D: last day, last_chance.
    ("CG", "Y3", "last_chance", "2024-06-02", "2025-06-01"),
    # CH born 2021-06-01: Y3 ended reach(48) = 2025-05-31.
}

# Adults: (birth_date, status). N*: NHI members below; S*: city-app subscribers.
ADULTS: dict[str, tuple[str, str]] = {
    "NA": ("1986-04-01", "resident"), "NB": ("1986-04-02", "resident"),
    "NC": ("1950-06-02", "resident"), "ND": ("1950-06-01", "resident"),
    "NE": ("1951-04-01", "resident"), "NF": ("1951-03-31", "resident"),
    "NG": ("1965-09-15", "resident"), "NH": ("1965-09-16", "resident"),
    "NI": ("1970-01-10", "resident"), "NJ": ("1970-01-11", "resident"),
    "NK": ("1975-07-07", "resident"), "NL": ("1975-07-08", "resident"),
    "NN": ("1962-12-12", "moved_out"), "NO": ("1955-05-05", "deceased"),
    **{s: ("1990-01-01", "resident") for s in ("SA", "SB", "SC", "SD", "SE", "SF", "SG", "SH", "SI", "SJ", "SL", "SM")},
    "SK": ("1990-01-01", "moved_out"),
}

# NHI: member → (qualified_on, disqualified_on, last_checkup_on)
NHI = {
    "NA": ("2010-04-01", None, None),
    "NB": ("2010-04-01", None, None),
    "NC": ("2010-04-01", None, "2024-06-10"),
    "ND": ("2010-04-01", None, "2024-06-10"),
    "NE": ("2010-04-01", None, None),
    "NF": ("2010-04-01", None, None),
    "NG": ("2010-04-01", None, "2025-03-31"),
    "NH": ("2010-04-01", None, "2025-04-01"),
    "NI": ("2000-01-01", "2025-06-01", None),
    "NJ": ("2000-01-01", "2025-06-02", None),
    "NK": ("2025-06-02", None, None),
    "NL": ("2025-06-01", None, None),
    "NN": ("2010-04-01", None, None),
    "NO": ("2010-04-01", None, None),
}

# 特定健診 (SERVICES.md): D = 2025-06-01 lies in FY2025 (2025-04-01 … 2026-03-31); members on D
# (qualified_on ≤ D < disqualified_on) who turn 40 by 2026-03-31, until the day before the 75th
# birthday, last check-up before 2025-04-01; one invitation for FY2025 from the campaign start
# 2025-05-15 to min(2026-03-31, day before the 75th birthday). (member, start, end)
EXPECTED_NHI = {
    # NA born 1986-04-01: reaches 40 at the end of the day before the 40th anniversary,
    # 2026-04-01 − 1 = 2026-03-31 = FY end → invited (age 39 on D). Never checked.
    ("NA", "2025-05-15", "2026-03-31"),
    # NB born 1986-04-02: reaches 40 on 2026-04-01, after FY2025 → not invited.
    # NC born 1950-06-02: 75th birthday 2025-06-02, day before = 2025-06-01 = D → invited until D;
    # last check-up 2024-06-10 < 2025-04-01.
    ("NC", "2025-05-15", "2025-06-01"),
    # ND born 1950-06-01: 75th birthday = D, eligible until 2025-05-31 < D → not invited.
    # NE born 1951-04-01: 75th birthday 2026-04-01 → until 2026-03-31 = FY end.
    ("NE", "2025-05-15", "2026-03-31"),
    # NF born 1951-03-31: 75th birthday 2026-03-31 → until 2026-03-30.
    ("NF", "2025-05-15", "2026-03-30"),
    # NG: last check-up 2025-03-31, before FY start → invited; NH: 2025-04-01 → checked this FY.
    ("NG", "2025-05-15", "2026-03-31"),
    # NI: disqualified 2025-06-01 = D → not a member on D; NJ: disqualified 2025-06-02 > D → member.
    ("NJ", "2025-05-15", "2026-03-31"),
    # NK: qualified 2025-06-02 > D → not yet; NL: qualified on D → member.
    ("NL", "2025-05-15", "2026-03-31"),
    # NN moved out, NO deceased: no longer residents (no notice for a non-resident).
}

# Events: (event_id, topic, ward_code, starts_at as the calendar writes it, venue)
EVENTS = [
    ("EV01", "events", "401064", "2025-06-02T10:00:00+09:00", "小倉城 天守閣前広場"),
    ("EV02", "events", "401064", "2025-06-01T18:00:00+09:00", "勝山公園"),
    ("EV03", "events", "401064", "2025-06-08T23:30:00+09:00", "北九州市役所 大集会室"),
    ("EV04", "events", "401072", "2025-06-08T15:30:00+00:00", "リバーウォーク北九州"),   # 06-09 00:30 JST
    ("EV05", "events", "401072", "2025-06-05T10:00:00+09:00", "小倉南区役所"),
    ("EV06", "health", "401064", "2025-06-04T09:00:00+09:00", "小倉北区役所 保健福祉課"),
    ("EV07", "childcare", "401064", "2025-06-03T10:00:00+09:00", "子育てふれあい交流プラザ"),
    ("EV08", "childcare", "401064", "2025-06-04T10:00:00+09:00", "子育てふれあい交流プラザ"),
    ("EV09", "childcare", "401064", "2025-06-05T10:00:00+09:00", "子育てふれあい交流プラザ"),
    ("EV10", "childcare", "401064", "2025-06-06T10:00:00+09:00", "子育てふれあい交流プラザ"),
    ("EV11", "events", "401064", "2025-06-01T23:00:00+00:00", "紫川 親水広場"),          # 06-02 08:00 JST
    ("EV12", "disaster", "401081", "2025-06-20T10:00:00+09:00", "八幡東区役所"),
]

# Subscriptions: (subscription_id, subscriber, topic, ward_code, opted_in_at, opted_out_at)
SUBSCRIPTIONS = [
    ("SUB01", "SA", "events", None, "2025-01-10T09:00:00+09:00", None),
    ("SUB02", "SB", "events", "401064", "2025-01-10T09:00:00+09:00", None),
    ("SUB03", "SC", "events", "401072", "2025-01-10T09:00:00+09:00", None),
    ("SUB04", "SD", "events", None, "2025-01-10T09:00:00+09:00", "2025-05-20T12:00:00+09:00"),
    ("SUB05", "SE", "events", None, "2025-01-10T09:00:00+09:00", "2025-06-01T09:00:00+09:00"),
    ("SUB06", "SF", "events", "401064", "2025-01-10T09:00:00+09:00", "2025-06-02T09:00:00+09:00"),
    ("SUB07", "SG", "events", "401064", "2025-06-02T08:00:00+09:00", None),
    ("SUB08", "SH", "events", None, "2025-01-10T09:00:00+09:00", None),
    ("SUB09", "SH", "events", "401064", "2025-02-10T09:00:00+09:00", None),
    ("SUB10", "SI", "childcare", "401064", "2025-01-10T09:00:00+09:00", None),
    ("SUB11", "SJ", "health", None, "2025-01-10T09:00:00+09:00", None),
    ("SUB12", "SJ", "childcare", "401072", "2025-01-10T09:00:00+09:00", None),
    ("SUB13", "SK", "events", None, "2025-01-10T09:00:00+09:00", None),
    ("SUB14", "SL", "disaster", None, "2025-01-10T09:00:00+09:00", None),
    ("SUB15", "SM", "events", "401064", "2024-10-01T09:00:00+09:00", "2025-05-01T09:00:00+09:00"),
    ("SUB16", "SM", "events", "401064", "2025-05-15T09:00:00+09:00", None),
]

# Event notices (SERVICES.md): events with D < start date (Asia/Tokyo) ≤ D + 7, i.e. starting
# 2025-06-02 … 2025-06-08; subscriptions active on D (opted in on or before D, not opted out on or
# before D) of the event's topic, ward null or the event's; one notice per (resident, event); at
# most 3 per resident, earliest first. Window D … the start date. (subscriber, event, start date)
#   EV02 starts on D, EV04 on 06-09 JST (06-08 only in UTC), EV12 on 06-20: out of the window.
#   EV11 starts 2025-06-02 08:00 JST (06-01 in UTC): in. "events" in the window by start:
#   EV11 (06-02 08:00, 401064), EV01 (06-02 10:00, 401064), EV05 (06-05, 401072), EV03 (06-08, 401064).
#   EV04 (401072) would be in for SC under a UTC reading or an 8-day lead; EV02 would take a place
#   (it starts earliest) under "D ≤ start".
EXPECTED_EVENT = {
    # SA, all wards: EV11, EV01, EV05, EV03 qualify → cap 3 → the 3 earliest; EV03 waits.
    ("SA", "EV11", "2025-06-02"), ("SA", "EV01", "2025-06-02"), ("SA", "EV05", "2025-06-05"),
    # SB, 小倉北区 only: EV11, EV01, EV03 (EV05 is in 小倉南区).
    ("SB", "EV11", "2025-06-02"), ("SB", "EV01", "2025-06-02"), ("SB", "EV03", "2025-06-08"),
    # SC, 小倉南区 only: EV05 (EV04 there starts 06-09 JST, one day too late).
    ("SC", "EV05", "2025-06-05"),
    # SD opted out 05-20, SE opted out on D: inactive on D → nothing.
    # SF opts out 06-02, after D: still active on D → as SB.
    ("SF", "EV11", "2025-06-02"), ("SF", "EV01", "2025-06-02"), ("SF", "EV03", "2025-06-08"),
    # SG opts in 06-02, after D: nothing.
    # SH, two subscriptions (all wards + 小倉北区): one notice per event, cap 3 as SA.
    ("SH", "EV11", "2025-06-02"), ("SH", "EV01", "2025-06-02"), ("SH", "EV05", "2025-06-05"),
    # SI, childcare in 小倉北区: EV07 (06-03), EV08 (06-04), EV09 (06-05), EV10 (06-06) → cap 3.
    ("SI", "EV07", "2025-06-03"), ("SI", "EV08", "2025-06-04"), ("SI", "EV09", "2025-06-05"),
    # SJ, health (all wards) + childcare in 小倉南区 (no such event): EV06.
    ("SJ", "EV06", "2025-06-04"),
    # SK moved out; SL disaster: EV12 is 19 days away → nothing.
    # SM opted out 05-01 and in again 05-15 (active): as SB.
    ("SM", "EV11", "2025-06-02"), ("SM", "EV01", "2025-06-02"), ("SM", "EV03", "2025-06-08"),
}


def _code(person: str) -> str:
    """A synthetic 11-digit resident code: each letter's code point on 3 digits ("A" → 00000000065)."""
    return "".join(f"{ord(c):03d}" for c in person).zfill(11)


def _sex(person: str) -> str:
    return "2" if ord(person[-1]) % 2 else "1"


def _people() -> dict[str, tuple[str, str]]:
    return {**{c: (born, status) for c, (born, status, _) in CHILDREN.items()}, **ADULTS}


def _write_drop(raw: Path) -> None:
    raw.mkdir(parents=True)
    sources = load_sources()
    ts = "2025-05-31T10:00:00+09:00"
    people = _people()

    def attrs(p: str) -> dict:
        return {"resident_code": _code(p), "name_kana": "テスト ヒト", "birth_date": people[p][0], "sex": _sex(p),
                "address": f"北九州市小倉北区城内{_code(p).lstrip('0')}番1号"}

    registry = [{
        **attrs(p), "name_kanji": "試験 人", "ward_code": "401064", "household_code": f"H{_code(p)}",
        "status": status, "status_date": "2025-05-01" if status != "resident" else born, "updated_at": ts,
    } for p, (born, status) in people.items()]
    imm = [{**attrs(c), "record_id": f"IM{c}{i:03d}", "vaccine_code": code, "dose_number": str(n),
            "administered_on": on, "updated_at": ts}
           for c, (_, _, doses) in CHILDREN.items() for i, (code, n, on) in enumerate(doses)]
    child_health = [{**attrs(c), "record_id": f"CH{c}{code}", "checkup_code": code, "examined_on": on, "updated_at": ts}
                    for c, code, on in CHILD_HEALTH]
    nhi = [{**attrs(p), "qualified_on": q, "disqualified_on": dq or "", "last_checkup_on": last or "", "updated_at": ts}
           for p, (q, dq, last) in NHI.items()]
    subscriptions = [{"subscription_id": sid, "resident_code": _code(p), "topic": topic, "ward_code": ward or "",
                      "opted_in_at": opt_in, "opted_out_at": opt_out or "", "updated_at": ts}
                     for sid, p, topic, ward, opt_in, opt_out in SUBSCRIPTIONS]
    events = [{"event_id": eid, "title": f"テストイベント {eid}", "topic": topic, "ward_code": ward, "venue": venue,
               "starts_at": starts, "ends_at": _ends(starts), "updated_at": ts}
              for eid, topic, ward, starts, venue in EVENTS]
    by_source = {"registry": registry, "immunization": imm, "child_health": child_health, "nhi": nhi,
                 "subscriptions": subscriptions, "events": events}
    for name, src in sources.items():
        if not src.ingest:
            continue
        with open(raw / f"{name}.csv", "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=src.raw_columns)
            w.writeheader()
            w.writerows(by_source[name])


def _ends(starts: str) -> str:
    """Two hours after `starts`, in the same offset."""
    return (datetime.fromisoformat(starts) + timedelta(hours=2)).isoformat()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def hand_run(request, tmp_path_factory):
    from renkei.keys.ring import KeyRing
    from renkei.runner import run_chain

    base = tmp_path_factory.mktemp(f"hand-{request.param}")
    url = (request.getfixturevalue("pg_factory")() if request.param == "postgres"
           else f"sqlite:///{base / 'work' / 'warehouse.db'}")
    _write_drop(base / "raw")
    ring_path = KeyRing.generate().save(base / "keyring.json")
    report = run_chain(base / "raw", D, base / "work", warehouse_url=url, keyring_path=ring_path, say=lambda m: None)
    ring = KeyRing.load(ring_path)
    erk_to_person = {ring.seal("link", _code(p)): p for p in _people()}
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT erk, service, subject, dose_number, kind, window_start, window_end, facts FROM notices"
        )).all()
    eng.dispose()
    notices = [(erk_to_person.get(r[0], r[0]), r[1], r[2], r[3], r[4], str(r[5]), str(r[6]), json.loads(r[7]))
               for r in rows]
    return report, notices


def _assert_exact(got: list[tuple], expected: set[tuple]) -> None:
    """The outbox rows equal the expectations as a multiset: missing, extra and duplicates fail."""
    dup = sorted(k for k, n in Counter(got).items() if n > 1)
    missing, extra = expected - set(got), set(got) - expected
    assert not missing and not extra and not dup, (
        f"missing {sorted(missing)}; unexpected {sorted(extra)}; duplicated {dup}")


def test_immunization_notices_equal_hand_computed(hand_run):
    _, notices = hand_run
    got = [(p, subject, dose, kind, ws, we) for p, service, subject, dose, kind, ws, we, _ in notices
           if service == "immunization"]
    _assert_exact(got, EXPECTED)
    assert len(EXPECTED) == 67 and len(CHILDREN) == 33


def test_checkup_notices_equal_hand_computed(hand_run):
    _, notices = hand_run
    got = [(p, subject, kind, ws, we) for p, service, subject, dose, kind, ws, we, _ in notices
           if service == "checkup" and dose == 1]
    assert len(got) == sum(1 for n in notices if n[1] == "checkup"), "a check-up notice has dose_number 1"
    _assert_exact(got, EXPECTED_CHECKUP)
    assert len(EXPECTED_CHECKUP) == 12


def test_nhi_invitations_equal_hand_computed(hand_run):
    _, notices = hand_run
    got = [(p, ws, we) for p, service, subject, dose, kind, ws, we, facts in notices
           if service == "nhi_checkup" and (subject, dose, kind, facts["fiscal_year"]) == ("NHI_CHECKUP", 2025, "invitation", 2025)]
    assert len(got) == sum(1 for n in notices if n[1] == "nhi_checkup"), "every invitation is for FY2025"
    _assert_exact(got, EXPECTED_NHI)
    assert len(EXPECTED_NHI) == 7


def test_event_notices_equal_hand_computed(hand_run):
    _, notices = hand_run
    venues = {eid: venue for eid, _, _, _, venue in EVENTS}
    got = []
    for p, service, subject, dose, kind, ws, we, facts in notices:
        if service != "event":
            continue
        assert (dose, kind, ws) == (1, "event", D.isoformat()), (p, subject)
        # payload (SERVICES.md): event_id, starts_at (JST), venue
        assert facts["event_id"] == subject and facts["venue"] == venues[subject]
        assert facts["starts_at"].startswith(we) and facts["starts_at"].endswith("+09:00")
        got.append((p, subject, we))
    _assert_exact(got, EXPECTED_EVENT)
    assert len(EXPECTED_EVENT) == 20


def test_no_other_notices(hand_run):
    _, notices = hand_run
    assert Counter(n[1] for n in notices) == {
        "immunization": len(EXPECTED), "checkup": len(EXPECTED_CHECKUP), "nhi_checkup": len(EXPECTED_NHI),
        "event": len(EXPECTED_EVENT)}


def test_every_hand_row_loads(hand_run):
    report, _ = hand_run
    sizes = {"registry": len(_people()), "immunization": sum(len(d) for _, _, d in CHILDREN.values()),
             "child_health": len(CHILD_HEALTH), "nhi": len(NHI), "subscriptions": len(SUBSCRIPTIONS),
             "events": len(EVENTS)}
    for source, n in sizes.items():
        got = report["sources"][source]
        assert (got["read"], got["loaded"], got["quarantined"]) == (n, n, 0), (source, got)
