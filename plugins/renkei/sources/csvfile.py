"""Reading raw source rows: CSV drops (UTF-8 or CP932, per line) and SQL tables, streamed."""

from __future__ import annotations

import csv
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from renkei.errors import SourceError

_BOM = b"\xef\xbb\xbf"


class _LineDecoder:
    """Decodes byte lines one by one and remembers whether any line since the last reset failed.

    Decoding per line is the same as whole-file detection for a pure UTF-8 file (a newline
    byte never occurs inside a UTF-8 or CP932 character) and also handles files whose rows
    were appended by systems with different encodings.
    """

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self.failed = False
        self.exhausted = False
        self.lines: list[tuple[str, bool]] = []  # (text, undecodable) of the current record

    def __iter__(self) -> Iterator[str]:
        for number, raw in enumerate(self._lines):
            if number == 0 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            text = _decode(raw)
            undecodable = text is None
            if undecodable:
                self.failed = True
                # UTF-8 replacement never swallows an ASCII byte, so quotes, commas and
                # newlines keep the CSV structure intact; the row is reported as malformed.
                text = raw.decode("utf-8", errors="replace")
            self.lines.append((text, undecodable))
            yield text
        self.exhausted = True


# Python's cp932 maps the bytes 0x80, 0xA0 and 0xFD-0xFF, which are no characters, to these;
# accepting them would turn a UTF-8 line with one stray byte into CP932 mojibake.
_CP932_NON_CHARACTERS = frozenset("\x80\uf8f0\uf8f1\uf8f2\uf8f3")


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        # cp932, not shift_jis: cp932 has the IBM/NEC extensions (髙, ①) that registers use.
        text = raw.decode("cp932")
    except UnicodeDecodeError:
        return None
    return None if _CP932_NON_CHARACTERS.intersection(text) else text


def read_csv(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str] | None]]]:
    """Open a raw CSV drop: its header, and (row_index, fields) per data row, streamed.

    fields is None for a malformed row (wrong number of fields, undecodable bytes, or an empty
    row before the end of the file): the caller quarantines it. Empty rows at the end (blank
    lines, or only commas) are ignored. row_index is 0-based over data rows. Raises
    SourceError when the file cannot be opened or has no readable header.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as error:
        raise SourceError(
            f"CSV source {path}: cannot be opened ({error.strerror}); check the path and its permissions"
        ) from None
    decoder = _LineDecoder(iter(handle))
    reader = csv.reader(decoder)
    try:
        header = next(reader, None)
    except csv.Error as error:
        handle.close()
        raise SourceError(f"CSV source {path}: header row is not valid CSV ({error}); fix the export") from None
    if not header or decoder.failed:
        handle.close()
        raise SourceError(
            f"CSV source {path}: no readable header row; the first line must name the columns "
            "(UTF-8 or CP932)"
        )
    header = [name.strip() for name in header]
    return header, _data_rows(handle, reader, decoder, len(header))


def _data_rows(
    handle: Any, reader: Iterator[list[str]], decoder: _LineDecoder, width: int
) -> Iterator[tuple[int, list[str] | None]]:
    row_index = 0
    pending_blank = 0  # blank lines are malformed rows only if a data row follows them
    try:
        for fields, failed in _records(reader, decoder):
            if fields is not None and not failed and not any(f.strip() for f in fields):
                # blank, or only separators as spreadsheets leave them (",,,")
                pending_blank += 1
                continue
            for _ in range(pending_blank):
                yield row_index, None
                row_index += 1
            pending_blank = 0
            malformed = fields is None or failed or len(fields) != width
            yield row_index, (None if malformed else fields)
            row_index += 1
    finally:
        handle.close()


def _records(reader: Iterator[list[str]], decoder: _LineDecoder) -> Iterator[tuple[list[str] | None, bool]]:
    """(fields or None, undecodable) per CSV record.

    A record that spans several lines and ends in an error or at the end of the file (an
    opening quote never closed) is read again line by line: else it would swallow every row
    after it into one malformed row.
    """
    while True:
        decoder.failed = False
        decoder.lines = []
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error:
            # NUL bytes, or a runaway quoted field over the size limit: report the row and
            # go on, so that no later row disappears without a count.
            fields = None
        runaway = len(decoder.lines) > 1 and (fields is None or decoder.exhausted)
        if not runaway:
            yield fields, decoder.failed
            continue
        for text, undecodable in decoder.lines:
            try:
                single = next(csv.reader([text]), [])
            except csv.Error:
                single = None
            yield single, undecodable


def _safe_url(url: str) -> str:
    """The URL without user, password or query, fit for an error message or a log."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).set(query={})._replace(username=None, password=None).render_as_string()
    except Exception:
        return "<unparseable database URL>"


def _raw_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def iter_sql_rows(
    url: str, table: str, columns: list[str], chunk_rows: int = 50000,
    since_column: str | None = None, since: str | None = None,
) -> Iterator[tuple[int, dict[str, str | None]]]:
    """Stream (row_index, {column: value as str or None}) from a raw SQL table in a stable order.

    Order: rowid on SQLite, else the table's primary key when it has one. Table and columns
    are checked before the first row: SourceError names the URL (without credentials), the
    table, what is missing and the fix. `table` may be "schema.table". With ``since_column``
    and ``since`` (canonical timestamp text) only rows whose column is at or after ``since``, or
    NULL, are read (an indexed range read of the department's change column).
    """
    import sqlalchemy as sa

    shown = _safe_url(url)
    try:
        engine = sa.create_engine(url)
    except Exception as error:
        raise SourceError(
            f"SQL source {shown}: cannot create an engine ({type(error).__name__}); "
            "check the URL's dialect and that its driver is installed"
        ) from None
    schema, _, name = table.rpartition(".")
    try:
        source = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=engine)
    except sa.exc.NoSuchTableError:
        engine.dispose()
        raise SourceError(
            f"SQL source {shown}: table {table!r} does not exist; create it or fix the table name in "
            "config/sources.yaml"
        ) from None
    except sa.exc.SQLAlchemyError as error:
        engine.dispose()
        raise SourceError(
            f"SQL source {shown}: cannot read table {table!r} ({type(error).__name__}); "
            "check that the database is reachable and the account may read it"
        ) from None
    missing = [column for column in columns if column not in source.c]
    if missing:
        engine.dispose()
        raise SourceError(
            f"SQL source {shown}: table {table!r} lacks column(s) {', '.join(missing)}; "
            "add them (SOURCES.md lists each source's columns) or fix the column names"
        )
    query = sa.select(*(source.c[column] for column in columns))
    if since_column is not None and since is not None:
        col = source.c[since_column]
        bound: Any = since
        if isinstance(col.type, sa.DateTime):
            bound = datetime.datetime.fromisoformat(since)
        query = query.where(sa.or_(col >= bound, col.is_(None)))
    if engine.dialect.name == "sqlite":
        query = query.order_by(sa.literal_column("rowid"))
    elif source.primary_key.columns:
        query = query.order_by(*source.primary_key.columns)
    return _sql_rows(engine, query, columns, chunk_rows)


def _sql_rows(engine: Any, query: Any, columns: list[str], chunk_rows: int) -> Iterator[tuple[int, dict]]:
    try:
        with engine.connect() as connection:
            # yield_per streams: a server-side cursor where the driver has one, chunked fetches.
            result = connection.execution_options(yield_per=chunk_rows).execute(query)
            for row_index, row in enumerate(result):
                yield row_index, {column: _raw_text(value) for column, value in zip(columns, row)}
    finally:
        engine.dispose()
