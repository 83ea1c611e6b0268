"""Reading raw rows: CSV drops in UTF-8 / CP932 and SQL tables (SOURCES.md)."""

import datetime
import sqlite3

import pytest

from renkei.errors import SourceError
from renkei.sources.csvfile import iter_sql_rows, read_csv


def rows_of(path):
    header, rows = read_csv(path)
    return header, list(rows)


def write(tmp_path, data: bytes, name="drop.csv"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_utf8_with_bom(tmp_path):
    path = write(tmp_path, "\ufeffrecord_id,name_kana\r\nA1,ヤマダ タロウ\r\nA2,\r\n".encode())
    header, rows = rows_of(path)
    assert header == ["record_id", "name_kana"]
    assert rows == [(0, ["A1", "ヤマダ タロウ"]), (1, ["A2", ""])]


def test_utf8_without_bom(tmp_path):
    path = write(tmp_path, "id,name\n1,𠮷田\n".encode())
    assert rows_of(path) == (["id", "name"], [(0, ["1", "𠮷田"])])


def test_cp932_with_ibm_extension_character(tmp_path):
    # 髙 (はしごだか) is in CP932's IBM extensions but not in plain Shift_JIS.
    data = "id,name_kanji,name_kana\r\n1,髙橋 一郎,ﾀｶﾊｼ ｲﾁﾛｳ\r\n2,①番,\r\n".encode("cp932")
    with pytest.raises(UnicodeDecodeError):
        data.decode("shift_jis")
    header, rows = rows_of(write(tmp_path, data))
    assert header == ["id", "name_kanji", "name_kana"]
    assert rows == [(0, ["1", "髙橋 一郎", "ﾀｶﾊｼ ｲﾁﾛｳ"]), (1, ["2", "①番", ""])]


def test_quoted_field_with_comma_and_newline_in_cp932(tmp_path):
    data = 'id,address\r\n1,"北九州市小倉北区城内1番1号,\r\n別棟"\r\n2,門司区\r\n'.encode("cp932")
    _, rows = rows_of(write(tmp_path, data))
    assert rows == [(0, ["1", "北九州市小倉北区城内1番1号,\r\n別棟"]), (1, ["2", "門司区"])]


def test_wrong_number_of_fields_is_malformed(tmp_path):
    path = write(tmp_path, b"a,b,c\n1,2,3\n1,2\n1,2,3,4\n4,5,6\n")
    _, rows = rows_of(path)
    assert rows == [(0, ["1", "2", "3"]), (1, None), (2, None), (3, ["4", "5", "6"])]


def test_mixed_encodings_decoded_per_line(tmp_path):
    data = (
        "id,name\r\n".encode()
        + "1,小倉\r\n".encode("utf-8")
        + "2,若松\r\n".encode("cp932")
        + b"3,\x85\x40\r\n"  # neither UTF-8 nor CP932 (an unassigned CP932 row)
        + "4,髙\r\n".encode("cp932")
    )
    _, rows = rows_of(write(tmp_path, data))
    assert rows == [(0, ["1", "小倉"]), (1, ["2", "若松"]), (2, None), (3, ["4", "髙"])]


def test_blank_lines_at_end_are_ignored_but_not_in_the_middle(tmp_path):
    path = write(tmp_path, b"a,b\n1,2\n\n3,4\n\n,\n\r\n")
    _, rows = rows_of(path)
    assert rows == [(0, ["1", "2"]), (1, None), (2, ["3", "4"])]


def test_header_only(tmp_path):
    assert rows_of(write(tmp_path, b"a,b\r\n")) == (["a", "b"], [])


def test_empty_or_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="header"):
        read_csv(write(tmp_path, b""))
    with pytest.raises(SourceError, match="cannot be opened"):
        read_csv(tmp_path / "absent.csv")


def test_rows_stream_lazily(tmp_path):
    path = write(tmp_path, b"a\n" + b"x\n" * 100_000)
    _, rows = read_csv(path)
    assert next(rows) == (0, ["x"])
    rows.close()


@pytest.fixture
def raw_db(tmp_path):
    path = tmp_path / "raw.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE immunization (record_id TEXT PRIMARY KEY, dose_number INTEGER, "
            "administered_on TEXT, note TEXT)"
        )
        # inserted out of key order: rows come back in insertion (rowid) order
        db.executemany(
            "INSERT INTO immunization VALUES (?, ?, ?, ?)",
            [("Z9", 2, "2024-05-01", None), ("A1", 1, "R6.4.1", "x"), ("M5", None, None, "y")],
        )
    return f"sqlite:///{path}"


def test_sql_rows_in_rowid_order_as_strings(raw_db):
    rows = list(iter_sql_rows(raw_db, "immunization", ["record_id", "dose_number", "administered_on"], chunk_rows=2))
    assert rows == [
        (0, {"record_id": "Z9", "dose_number": "2", "administered_on": "2024-05-01"}),
        (1, {"record_id": "A1", "dose_number": "1", "administered_on": "R6.4.1"}),
        (2, {"record_id": "M5", "dose_number": None, "administered_on": None}),
    ]


def test_sql_date_values_become_iso_text(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'typed.sqlite'}"
    engine = sa.create_engine(url)
    table = sa.Table("t", sa.MetaData(), sa.Column("d", sa.Date), sa.Column("ts", sa.DateTime))
    table.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(table.insert().values(d=datetime.date(2023, 8, 22), ts=datetime.datetime(2023, 8, 22, 10, 15)))
    engine.dispose()
    assert list(iter_sql_rows(url, "t", ["d", "ts"])) == [(0, {"d": "2023-08-22", "ts": "2023-08-22T10:15:00"})]


def test_missing_table_names_table_and_fix(raw_db):
    with pytest.raises(SourceError, match=r"'child_health' does not exist.*config/sources.yaml"):
        iter_sql_rows(raw_db, "child_health", ["record_id"])


def test_missing_column_names_column(raw_db):
    with pytest.raises(SourceError, match=r"lacks column\(s\) vaccine_code, sex"):
        iter_sql_rows(raw_db, "immunization", ["record_id", "vaccine_code", "sex"])


def test_error_hides_credentials():
    url = "postgresql+psycopg://clerk:s3cret@127.0.0.1:1/raw?password=other"
    with pytest.raises(SourceError) as caught:
        iter_sql_rows(url, "registry", ["resident_code"])
    message = str(caught.value)
    assert "127.0.0.1" in message
    assert "s3cret" not in message and "clerk" not in message and "other" not in message
