"""Tables read a chunk of rows at a time, in bounded memory: the reader behind ``camn score``.

The formats are those of ``camn prepare table`` (CSV, TSV, Parquet, JSON lines; text may be
gzip-compressed, recognised from its content), told apart the same way
(:func:`camn.data.sources._files.file_format`). Text is read in blocks of complete lines
(:func:`camn.data.reading.iter_blocks`; a CSV block never ends inside a quoted field:
it is extended while its count of quote characters is odd) and each block is parsed by polars;
Parquet is sliced by rows. Every chunk is a DataFrame of the file's columns (CSV and TSV all as
text, as ``prepare`` reads them; Parquet and JSON lines with their own types) plus ``__line``,
the line each row starts on (the row number, from 1, for Parquet).

Bad rows are reported as ``prepare`` reports them (a :class:`~camn.data.raw.BadInputReport`,
file and line) and left out: bytes that are not UTF-8, CSV/TSV rows with more fields than the
header, JSON lines that do not parse as an object. Blank lines are skipped silently. A JSON file
that holds one array (``[{...}, ...]``) cannot be cut into blocks and is read whole.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from camn.data.raw import BadInputReport, DataError
from camn.data.reading import (
    BLOCK_BYTES,
    NOT_UTF8,
    UNPARSED_FIELD,
    first_lines,
    iter_blocks,
    polars_reason,
    polars_source,
    quote_problem,
    report_rows,
    row_lines,
    skip_rows,
    undecodable_lines,
)

CHUNK_ROWS = 100_000
LINE = "__line"
WHITESPACE = np.frombuffer(b" \t\r\n\x0b\x0c", dtype=np.uint8)


def read_chunks(
    path: Path,
    fmt: str,
    report: BadInputReport,
    rows: int = CHUNK_ROWS,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[pl.DataFrame]:
    """The rows of ``path`` (format ``fmt``: csv, tsv, parquet or jsonl) in chunks of at most
    ``rows`` rows, each with ``__line``; text is read ``block_bytes`` at a time."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if fmt == "parquet":
        chunks = parquet_chunks(path, rows)
    elif fmt == "jsonl":
        chunks = jsonl_chunks(path, report, block_bytes)
    else:
        chunks = delimited_chunks(path, fmt, report, block_bytes)
    for frame in chunks:
        for start in range(0, len(frame), rows):
            yield frame.slice(start, rows)


def parquet_chunks(path: Path, rows: int) -> Iterator[pl.DataFrame]:
    source = polars_source(path)
    try:
        total = pl.scan_parquet(source).select(pl.len()).collect().item()
        for start in range(0, total, rows):
            frame = pl.scan_parquet(source).slice(start, rows).collect()
            lines = np.arange(start + 1, start + 1 + len(frame), dtype=np.int64)
            yield frame.with_columns(pl.Series(LINE, lines))
    except (pl.exceptions.PolarsError, OSError) as error:
        raise DataError(f"{path}: cannot read it as parquet ({polars_reason(error)})") from None


# ------------------------------------------------------------------------------ CSV and TSV


def delimited_chunks(
    path: Path, fmt: str, report: BadInputReport, block_bytes: int
) -> Iterator[pl.DataFrame]:
    """CSV (``"`` quotes) or TSV (no quoting) with a header line, block by block."""
    separator, quote = ("," if fmt == "csv" else "\t"), ('"' if fmt == "csv" else None)
    header_line, header = first_lines(path, 1)[0]
    pending: list[bytes] = []
    start, quotes = header_line + 1, 0
    for first, block in iter_blocks(path, block_bytes):
        if first <= header_line:  # up to the header: keep only what follows it
            if first + block.count(b"\n") <= header_line:
                continue
            block = block[nth_line_end(block, header_line - first + 1):]
            first = header_line + 1
            if not block:
                continue
        if not pending:
            start = first
        pending.append(block)
        quotes += block.count(b'"') if quote else 0
        if quotes % 2:
            continue  # the block ends inside a quoted field: read on
        yield parse_delimited(path, header, b"".join(pending), start, separator, quote, report)
        pending = []
    if pending:  # an unclosed quote at the end of the file: polars names the problem
        yield parse_delimited(path, header, b"".join(pending), start, separator, quote, report)


def nth_line_end(block: bytes, n: int) -> int:
    """The offset just past the n-th newline of ``block``."""
    end = -1
    for _ in range(n):
        end = block.index(b"\n", end + 1)
    return end + 1


def parse_delimited(
    path: Path, header: bytes, block: bytes, first: int, separator: str, quote: str | None,
    report: BadInputReport,
) -> pl.DataFrame:
    """One block of data lines (the first is line ``first``) with the header prepended."""
    kind = "CSV" if separator == "," else "tab-separated text"
    options = {"separator": separator, "quote_char": quote, "infer_schema": False,
               "encoding": "utf8-lossy"}
    source = header + b"\n" + block
    long_rows = None
    try:
        try:
            frame = pl.read_csv(io.BytesIO(source), **options)
        except pl.exceptions.ComputeError as error:
            if "more fields" not in str(error):
                raise
            frame = pl.read_csv(io.BytesIO(source), truncate_ragged_lines=True, **options)
            long_rows = rows_past(block, separator, quote, frame.width, len(frame), path, first)
    except (pl.exceptions.PolarsError, OSError) as error:
        if quote and (field := UNPARSED_FIELD.match(str(error))):
            raise DataError(quote_problem(path, field.group(1))) from None
        raise DataError(f"{path}: cannot read it as {kind} ({polars_reason(error)})") from None
    starts = row_lines(frame, first, quoted=quote is not None)
    reason = pl.lit(None, dtype=pl.String)
    if long_rows is not None:
        too_long = f"more fields than the header's {frame.width} columns (row skipped)"
        reason = pl.when(pl.Series(long_rows)).then(pl.lit(too_long)).otherwise(reason)
    bad_lines = np.array(undecodable_lines(first, block), dtype=np.int64)
    if len(bad_lines):
        ends = np.append(starts[1:], np.iinfo(np.int64).max)
        inside = np.searchsorted(bad_lines, ends) > np.searchsorted(bad_lines, starts)
        reason = pl.when(pl.Series(inside)).then(pl.lit(NOT_UTF8.format("row"))).otherwise(
            reason)
    frame = skip_rows(frame.with_columns(pl.Series(LINE, starts)), reason, path, report)
    return frame.filter(~pl.all_horizontal(pl.exclude(LINE).is_null()))


def rows_past(
    block: bytes, separator: str, quote: str | None, width: int, rows: int, path: Path,
    first: int,
) -> np.ndarray:
    """(rows,) bool: the block's rows with a value past column ``width`` (Python's csv module
    counts the fields; run only when polars found such a row)."""
    limit = csv.field_size_limit(sys.maxsize)
    try:
        reader = csv.reader(
            io.StringIO(block.decode("utf-8", errors="replace"), newline=""),
            delimiter=separator, quotechar=quote or '"',
            quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
        )
        long_rows = [any(row[width:]) for row in reader]
    except csv.Error as error:
        raise DataError(f"{path}:{first}: cannot read the rows ({error})") from None
    finally:
        csv.field_size_limit(limit)
    if len(long_rows) != rows:
        raise DataError(f"{path}: some rows from line {first} on have more fields than the "
                        f"header ({width}) and cannot be located (check the quoting)")
    return np.array(long_rows, dtype=bool)


# -------------------------------------------------------------------------------- JSON lines


def jsonl_chunks(path: Path, report: BadInputReport, block_bytes: int) -> Iterator[pl.DataFrame]:
    """JSON lines block by block; a file holding one JSON array is read whole."""
    if first_lines(path, 1)[0][1][:1] == b"[":
        try:
            frame = pl.read_json(polars_source(path))
        except (pl.exceptions.PolarsError, OSError) as error:
            raise DataError(f"{path}: cannot read it as JSON ({polars_reason(error)})") from None
        yield frame.with_columns(pl.Series(LINE, np.arange(1, len(frame) + 1, dtype=np.int64)))
        return
    for first, block in iter_blocks(path, block_bytes):
        bad = undecodable_lines(first, block)
        if bad:
            report_rows(report, path, np.array(bad), NOT_UTF8.format("line"))
            lines = block.split(b"\n")
            for number in bad:
                lines[number - first] = b""
            block = b"\n".join(lines)
        numbers = content_lines(block) + first
        if not len(numbers):
            continue
        try:
            frame = pl.read_ndjson(io.BytesIO(block))
            if len(frame) != len(numbers):
                raise pl.exceptions.ComputeError("rows and lines differ")
            frame = frame.with_columns(pl.Series(LINE, numbers))
        except pl.exceptions.PolarsError:  # a broken line somewhere: line by line
            frame = json_lines_one_by_one(path, block, first, report)
        if len(frame):
            yield frame


def content_lines(block: bytes) -> np.ndarray:
    """0-based numbers of the lines of ``block`` that hold more than white space."""
    data = np.frombuffer(block, dtype=np.uint8)
    newlines = np.flatnonzero(data == ord("\n"))
    filled = np.flatnonzero(~np.isin(data, WHITESPACE))
    return np.unique(np.searchsorted(newlines, filled)).astype(np.int64)


def json_lines_one_by_one(
    path: Path, block: bytes, first: int, report: BadInputReport
) -> pl.DataFrame:
    """The slow path for a block with a broken line: each line parsed alone, broken ones (or
    ones that are no JSON object) reported and skipped."""
    records, numbers, broken = [], [], []
    for offset, line in enumerate(block.split(b"\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            records.append(record)
            numbers.append(first + offset)
        else:
            broken.append(first + offset)
    report_rows(report, path, np.array(broken, dtype=np.int64), "broken JSON (line skipped)")
    if not records:
        return pl.DataFrame()
    try:
        frame = pl.from_dicts(records, infer_schema_length=None)
    except pl.exceptions.PolarsError:  # a key of several types: every value as JSON text
        frame = pl.from_dicts([{key: as_text(value) for key, value in record.items()}
                               for record in records], infer_schema_length=None)
    return frame.with_columns(pl.Series(LINE, numbers, dtype=pl.Int64))


def as_text(value: object) -> str | None:
    """A JSON value as text: strings as they are, anything else as JSON (``["a", "b"]``)."""
    return value if value is None or isinstance(value, str) else json.dumps(value)
