"""Writes the bad-input corpus: one small raw file per kind, and cases.yaml describing them.

Run from the repo root after changing a case: ``.venv/bin/python tests/corpus/make_corpus.py``.
The files are committed; tests/integration/test_corpus.py reads only cases.yaml and the files.
Case rows use resident codes 2000000000x and keys C…; the test mixes valid filler rows
(1000000000x, F…) around them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
TS = "2025-05-01T09:00:00+09:00"

COLUMNS = {
    "registry": ["resident_code", "name_kana", "name_kanji", "birth_date", "sex", "ward_code", "address",
                 "household_code", "status", "status_date", "updated_at"],
    "immunization": ["record_id", "resident_code", "name_kana", "birth_date", "sex", "address", "vaccine_code",
                     "dose_number", "administered_on", "updated_at"],
    "child_health": ["record_id", "resident_code", "name_kana", "birth_date", "sex", "address", "checkup_code",
                     "examined_on", "updated_at"],
    "nhi": ["resident_code", "name_kana", "birth_date", "sex", "address", "qualified_on", "disqualified_on",
            "last_checkup_on", "updated_at"],
    "subscriptions": ["subscription_id", "resident_code", "topic", "ward_code", "opted_in_at", "opted_out_at",
                      "updated_at"],
    "events": ["event_id", "title", "topic", "ward_code", "venue", "starts_at", "ends_at", "updated_at"],
}
BASE = {
    "registry": {"resident_code": "20000000001", "name_kana": "ヤマダ ハナコ", "name_kanji": "山田 花子",
                 "birth_date": "1980-04-10", "sex": "2", "ward_code": "401064",
                 "address": "北九州市小倉北区城内1番1号", "household_code": "H2000001", "status": "resident",
                 "status_date": "1980-04-10", "updated_at": TS},
    "immunization": {"record_id": "C0001", "resident_code": "20000000001", "name_kana": "ヤマダ タロウ",
                     "birth_date": "2024-04-10", "sex": "1", "address": "北九州市戸畑区中本町1番1号",
                     "vaccine_code": "HEPB", "dose_number": "1", "administered_on": "2024-06-10", "updated_at": TS},
    "child_health": {"record_id": "C0001", "resident_code": "20000000001", "name_kana": "ヤマダ タロウ",
                     "birth_date": "2024-04-10", "sex": "1", "address": "北九州市戸畑区中本町1番1号",
                     "checkup_code": "M4", "examined_on": "2024-08-20", "updated_at": TS},
    "nhi": {"resident_code": "20000000001", "name_kana": "ヤマダ ハナコ", "birth_date": "1960-01-01", "sex": "2",
            "address": "北九州市八幡西区黒崎3丁目15番3号", "qualified_on": "2020-04-01", "disqualified_on": "",
            "last_checkup_on": "2024-06-01", "updated_at": TS},
    "subscriptions": {"subscription_id": "C0001", "resident_code": "20000000001", "topic": "events",
                      "ward_code": "401064", "opted_in_at": "2024-01-01T10:00:00+09:00", "opted_out_at": "",
                      "updated_at": TS},
    "events": {"event_id": "C0001", "title": "勝山公園 冬のイルミネーション", "topic": "events", "ward_code": "401064",
               "venue": "勝山公園", "starts_at": "2025-12-01T17:00:00+09:00", "ends_at": "2025-12-25T22:00:00+09:00",
               "updated_at": TS},
}
SQL = "'; DROP TABLE staging_registry; --"


def csv_text(source: str, rows: list[dict], header: list[str] | None = None, eol: str = "\n") -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=eol)
    cols = header or COLUMNS[source]
    w.writerow(cols)
    for row in rows:
        w.writerow([row.get(c.strip(), "") for c in cols])
    return buf.getvalue()


def row(source: str, **over) -> dict:
    return {**BASE[source], **over}


def header_bytes(source: str) -> bytes:
    return (",".join(COLUMNS[source]) + "\n").encode()


def line(source: str, **over) -> bytes:
    """One data line of `source` as UTF-8 bytes (without the header)."""
    return csv_text(source, [row(source, **over)]).split("\n", 1)[1].encode()


CASES: list[dict] = []


def case(kind: str, source: str, data: bytes | str, expected_reason: str | None, notes: str, **extra) -> None:
    name = f"{source}/{kind}.csv"
    path = HERE / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    entry = {"kind": kind, "source": source, "file": name, "expected_reason": expected_reason, "notes": notes}
    entry.update(extra)
    CASES.append(entry)


def one(source: str, **over) -> str:
    return csv_text(source, [row(source, **over)])


def build() -> None:
    I, R = "immunization", "registry"
    # -- encodings and BOMs ------------------------------------------------------------
    case("lone_invalid_byte", I, header_bytes(I) + line(I).replace("HEPB".encode(), b"HE\xffPB"),
         "parse_error:row", "0xFF is neither UTF-8 nor CP932: the row is malformed, not guessed",
         parse_error="row:")
    case("truncated_cp932_character", I,
         header_bytes(I) + line(I, address="ADDR").replace(b"ADDR", "北九州市".encode("cp932") + b"\x83"),
         "parse_error:row", "a CP932 lead byte without its trail byte", parse_error="row:")
    case("mixed_cp932_utf8_rows", I,
         header_bytes(I) + line(I, record_id="C0001").decode().encode("cp932")
         + line(I, record_id="C0002", resident_code="20000000002"),
         None, "rows appended by systems with different encodings: each line is decoded on its own",
         expect="loaded", rows=2)
    case("cp932_whole_file", I, one(I, name_kana="ﾀｶﾊｼ ｲﾁﾛｳ").encode("cp932"), None,
         "CP932 with half-width katakana: loads", expect="loaded")
    case("bom_utf8", I, b"\xef\xbb\xbf" + one(I).encode(), None, "UTF-8 with BOM: loads", expect="loaded")
    case("bom_utf8_then_cp932", I, b"\xef\xbb\xbf" + one(I).encode("cp932"), None,
         "a BOM followed by CP932 rows: the BOM is dropped, the rows decode as CP932", expect="loaded")
    case("bom_twice", I, b"\xef\xbb\xbf\xef\xbb\xbf" + one(I).encode(), "lacks columns ['record_id']",
         "a doubled BOM hides the first column name", expect="source_error", filler=False)
    case("bom_utf16le", I, b"\xff\xfe" + one(I).encode("utf-16-le"), "no readable header row",
         "UTF-16 is not an accepted encoding", expect="source_error", filler=False)
    case("bom_inside_data_line", R, header_bytes(R) + b"\xef\xbb\xbf" + line(R), "parse_error:resident_code",
         "two exports concatenated: a BOM glued to the resident code", parse_error="resident_code:invalid_format")
    # -- dates ------------------------------------------------------------------------------
    case("impossible_date", I, one(I, administered_on="2024-02-30"), "parse_error:administered_on",
         "no 30 February", parse_error="administered_on:invalid_date")
    case("non_leap_29_february", I, one(I, birth_date="2023-02-29"), "parse_error:birth_date",
         "2023 is not a leap year", parse_error="birth_date:invalid_date")
    case("heisei_after_its_end", I, one(I, administered_on="H31.5.1"), "parse_error:administered_on",
         "平成 ended on 2019-04-30", parse_error="administered_on:out_of_era")
    case("showa_65", R, one(R, birth_date="昭和65年1月1日").encode("cp932"), "parse_error:birth_date",
         "昭和 ended in its 64th year", parse_error="birth_date:out_of_era")
    case("reiwa_0", I, one(I, birth_date="令和0年5月1日"), "parse_error:birth_date", "era years start at 元年",
         parse_error="birth_date:out_of_era")
    case("meiji_before_start", R, one(R, birth_date="明治元年1月1日"), "parse_error:birth_date",
         "明治 starts 1868-01-25 in registers", parse_error="birth_date:out_of_era")
    case("heisei_gannen_before_start", R, one(R, birth_date="平成元年1月7日"), "parse_error:birth_date",
         "1989-01-07 is 昭和64年", parse_error="birth_date:out_of_era")
    case("garbage_date", child := "child_health", one(child, examined_on="yesterday"), "parse_error:examined_on",
         "not a date at all", parse_error="examined_on:invalid_format")
    case("incomplete_era_date", I, one(I, administered_on="R5.8"), "parse_error:administered_on",
         "no day", parse_error="administered_on:invalid_format")
    case("birth_before_meiji_iso", R, one(R, birth_date="1850-01-01"), "expect_column_values_to_be_between:birth_date",
         "an ISO date before registers begin")
    case("dose_before_birth", I, one(I, administered_on="2024-01-01"),
         "expect_column_pair_values_a_to_be_greater_than_b:administered_on", "a dose is not given before birth")
    case("disqualified_before_qualified", "nhi", one("nhi", disqualified_on="2019-01-01"),
         "expect_column_pair_values_a_to_be_greater_than_b:disqualified_on", "membership ends before it starts")
    case("garbage_timestamp", "subscriptions", one("subscriptions", updated_at="last tuesday"),
         "parse_error:updated_at", "not a timestamp", parse_error="updated_at:invalid_timestamp")
    case("timestamp_out_of_range", I, one(I, updated_at="9999-12-31T23:00:00-05:00"), "parse_error:updated_at",
         "a valid ISO value whose JST form is past year 9999", parse_error="updated_at:invalid_timestamp")
    case("missing_opted_in_at", "subscriptions", one("subscriptions", opted_in_at=""),
         "expect_column_values_to_not_be_null:opted_in_at", "an opt-in without its time")
    # -- codes --------------------------------------------------------------------------------
    case("unknown_vaccine", I, one(I, vaccine_code="XYZ"), "expect_column_values_to_be_in_set:vaccine_code",
         "not a vaccine of SOURCES.md")
    case("lowercase_vaccine", I, one(I, vaccine_code="hepb"), "expect_column_values_to_be_in_set:vaccine_code",
         "codes are case-sensitive")
    case("unknown_checkup", "child_health", one("child_health", checkup_code="M5"),
         "expect_column_values_to_be_in_set:checkup_code", "there is no 5-month check-up")
    case("sex_3", R, one(R, sex="3"), "expect_column_values_to_be_in_set:sex", "sex is 1, 2 or 9")
    case("sex_letter", "nhi", one("nhi", sex="F"), "parse_error:sex", "sex must be a number",
         parse_error="sex:invalid_int")
    case("ward_bad_check_digit", R, one(R, ward_code="401014"), "expect_column_values_to_be_in_set:ward_code",
         "小倉北区 is 401064; 401014 fails the check digit")
    case("ward_is_the_city", R, one(R, ward_code="401005"), "expect_column_values_to_be_in_set:ward_code",
         "the city code is not a ward")
    case("unknown_status", R, one(R, status="alive"), "expect_column_values_to_be_in_set:status",
         "status is resident, moved_out or deceased")
    case("unknown_topic", "subscriptions", one("subscriptions", topic="sports"),
         "expect_column_values_to_be_in_set:topic", "not a topic of codes.yaml")
    case("event_unknown_topic", "events", one("events", topic="gourmet"),
         "expect_column_values_to_be_in_set:topic", "the event calendar uses the same topics")
    case("dose_zero", I, one(I, dose_number="0"), "expect_column_values_to_be_between:dose_number",
         "doses are 1-based")
    case("dose_fraction", I, one(I, dose_number="1.5"), "parse_error:dose_number", "half a dose",
         parse_error="dose_number:invalid_int")
    case("dose_huge_integer", I, one(I, dose_number="99999999999999999999"), "parse_error:dose_number",
         "beyond any database integer", parse_error="dose_number:out_of_range")
    # -- keys ------------------------------------------------------------------------------------
    case("duplicate_record_id", I, csv_text(I, [row(I), row(I, resident_code="20000000002")]),
         "expect_column_values_to_be_unique:record_id", "two doses under one record id", rows=2, quarantined=2)
    case("duplicate_resident", R, csv_text(R, [row(R), row(R, household_code="H2000002")]),
         "expect_column_values_to_be_unique:dept_pseudonym", "one resident twice in the registry",
         rows=2, quarantined=2)
    case("missing_record_id", "child_health", one("child_health", record_id=""),
         "expect_column_values_to_not_be_null:record_id", "no natural key")
    case("missing_event_id", "events", one("events", event_id=""), "expect_column_values_to_not_be_null:event_id",
         "no natural key")
    case("missing_resident_code", "nhi", one("nhi", resident_code=""), "parse_error:resident_code",
         "no resident code: nothing to link", parse_error="resident_code:missing")
    case("resident_code_10_digits", I, one(I, resident_code="2000000001"), "parse_error:resident_code",
         "one digit short", parse_error="resident_code:invalid_format")
    case("resident_code_12_digits", R, one(R, resident_code="200000000011"), "parse_error:resident_code",
         "one digit too many", parse_error="resident_code:invalid_format")
    case("resident_code_non_digits", "subscriptions", one("subscriptions", resident_code="2000000000A"),
         "parse_error:resident_code", "a letter", parse_error="resident_code:invalid_format")
    case("resident_code_full_width", R, one(R, resident_code="２００００００００００１").encode("cp932"),
         "parse_error:resident_code",
         "full-width digits would seal to another pseudonym than the ASCII code: a silent mislink",
         parse_error="resident_code:invalid_format")
    case("resident_code_with_hyphens", "child_health", one("child_health", resident_code="2000-0000-001"),
         "parse_error:resident_code", "a formatted code", parse_error="resident_code:invalid_format")
    # -- pseudonyms, crafted in the extract ------------------------------------------------
    for craft, note in (
        ("tampered", "one character of the token changed"),
        ("truncated", "the token cut short"),
        ("unknown_key_version", "sealed under key version 9, which the ring does not hold"),
        ("other_department", "a valid pseudonym of another department (ward_office) in immunization"),
        ("not_a_token", "not v<N>.<base64url> at all"),
    ):
        case(f"pseudonym_{craft}", I, one(I), "pseudonym_does_not_authenticate:dept_pseudonym", note, craft=craft)
    case("household_pseudonym_tampered", R, one(R), "pseudonym_does_not_authenticate:household_pseudonym",
         "the household pseudonym, not the resident's, is tampered: the reason names it", craft="tampered_household")
    # -- structure and hostile content -------------------------------------------------------
    case("huge_field_1mb", I, one(I, address="@HUGE@"), "parse_error:row",
         "a 1 MB address: over the CSV field limit, reported as a malformed row", parse_error="row:",
         expand={"@HUGE@": 1_048_576})
    case("huge_code_100kb", I, one(I, vaccine_code="@HUGE@"), "expect_column_values_to_be_in_set:vaccine_code",
         "a 100 KB code under the field limit", expand={"@HUGE@": 100_000})
    case("control_characters", I, one(I, vaccine_code="HEP\x07B\x1b[0m"),
         "expect_column_values_to_be_in_set:vaccine_code", "BEL and an ANSI escape inside a code")
    case("bare_carriage_return", I, header_bytes(I) + line(I).replace(b"HEPB", b"HE\rPB"), "parse_error:row",
         "a lone CR inside an unquoted field", parse_error="row:")
    case("nul_byte", I, one(I, vaccine_code="HEPB\x00"), "parse_error:vaccine_code",
         "a NUL byte (PostgreSQL text cannot hold it)", parse_error="vaccine_code:nul_character")
    case("nul_byte_in_name", R, one(R, name_kana="ヤマダ\x00ハナコ"), "parse_error:name_kana",
         "a NUL inside a digested column", parse_error="name_kana:nul_character")
    case("sql_in_record_id", I, one(I, record_id=SQL), None, "SQL-looking key: lands as data, tables intact",
         expect="loaded", lands={"table": "staging_immunization", "column": "record_id", "value": SQL})
    case("sql_in_code", R, one(R, status=SQL), "expect_column_values_to_be_in_set:status",
         "SQL-looking code: quarantined, tables intact")
    case("sql_in_title", "events", one("events", title=SQL), None, "SQL-looking event title: lands as data",
         expect="loaded", lands={"table": "staging_events", "column": "title", "value": SQL})
    case("too_many_columns", I, header_bytes(I) + line(I).replace(b"\n", b",extra\n"), "parse_error:row",
         "one field too many", parse_error="row:")
    case("too_few_columns", "nhi", header_bytes("nhi") + line("nhi").rsplit(b",", 1)[0] + b"\n", "parse_error:row",
         "the last field missing", parse_error="row:")
    case("blank_line_between_rows", I, header_bytes(I) + b"\n" + line(I), "parse_error:row",
         "a blank line before a data row counts as a malformed row", rows=2, quarantined=1, parse_error="row:")
    case("header_missing_column", I, csv_text(I, [row(I)], header=[c for c in COLUMNS[I] if c != "vaccine_code"]),
         "lacks columns ['vaccine_code']", "a clear SourceError; the previous snapshot stays", expect="source_error",
         filler=False)
    case("empty_file", I, b"", "no readable header row", "zero bytes", expect="source_error", filler=False)
    case("header_only", I, header_bytes(I), None, "no rows: nothing loaded, nothing quarantined", expect="loaded",
         rows=0, filler=False)
    case("extra_column_my_number", R, csv_text(R, [row(R, my_number="123456789012")], header=COLUMNS[R] + ["my_number"]),
         None, "a column outside the contract never reaches the extract", expect="loaded",
         absent="123456789012")
    case("crlf", I, one(I).replace("\n", "\r\n"), None, "Windows line ends", expect="loaded")
    case("crlf_and_lf_mixed", I, csv_text(I, [row(I), row(I, record_id="C0002", resident_code="20000000002")])
         .replace("\n", "\r\n", 2), None, "CRLF and LF in one file", expect="loaded", rows=2)
    case("quoted_newline_in_address", I, one(I, address="北九州市戸畑区\n中本町1番1号"), None,
         "a quoted newline is part of the field", expect="loaded")
    case("quoted_newline_in_resident_code", I, one(I, resident_code="200000\n00001"), "parse_error:resident_code",
         "a quoted newline inside a code", parse_error="resident_code:invalid_format")
    case("unterminated_quote", I, header_bytes(I) + line(I).replace(b"HEPB", b'"HEPB'), "parse_error:row",
         "an opening quote never closed must not swallow the rows after it", parse_error="row:")

    doc = {
        "about": "Bad-input corpus (issue 7): one raw file per kind. expect: quarantined (default) | loaded "
                 "| source_error. expected_reason: a fragment of the quarantine reason (or of the SourceError). "
                 "rows: data rows the file adds (default 1); quarantined: rows expected in quarantine "
                 "(default 1 when quarantined); filler: mix valid rows around the case rows (default true); "
                 "parse_error: a fragment of the extract row's parse_errors; craft: alter the pseudonym in the "
                 "extract; expand: token -> length of a generated field; lands: a value that must be stored as "
                 "data; absent: a string that must appear in no extract cell. Regenerate with make_corpus.py.",
        "cases": CASES,
    }
    (HERE / "cases.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=110),
                                     encoding="utf-8")


if __name__ == "__main__":
    build()
    print(f"{len(CASES)} cases written to {HERE}")
