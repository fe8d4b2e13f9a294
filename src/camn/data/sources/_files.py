"""Reading the table source's files: the formats (CSV, TSV, Parquet, JSON lines, any of them
gzip-compressed), their columns checked and named, ids, side columns and the items file; what
:mod:`camn.data.sources.table` and its rows that carry their history
(:mod:`camn.data.sources._history_columns`) read with, and ``camn score``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl

from camn.data.features import CONTEXT, NUMERIC
from camn.data.raw import BadInputReport, DataError
from camn.data.reading import (
    NOT_UTF8,
    column_list,
    first_lines,
    iter_lines,
    line_blocks,
    null_reason,
    polars_reason,
    polars_source,
    read_delimited,
    skip_rows,
)
from camn.data.reading import bucketize as bucketize_columns

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


def file_format(path: Path, override: str | None) -> str:
    """The format named by ``--format``, else by the extension (before a final ``.gz``)."""
    if override:
        return override
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] == ".gz":
        suffixes.pop()
    suffix = suffixes[-1] if suffixes else ""
    try:
        return FORMATS[suffix]
    except KeyError:
        raise DataError(
            f"{path}: cannot tell the format from the extension {suffix!r}; "
            f"pass --format ({', '.join(sorted(set(FORMATS.values())))})"
        ) from None


def _read_jsonl_lines(path: Path, report: BadInputReport) -> pl.DataFrame:
    """Slow path for JSON lines that polars refuses: parse line by line, skipping broken ones."""
    records, line_numbers = [], []
    for number, line in iter_lines(path):
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            report.bad(path, number, NOT_UTF8.format("line"))
            continue
        except (ValueError, RecursionError):
            report.bad(path, number, "broken JSON (line skipped)")
            continue
        if not isinstance(record, dict):
            report.bad(path, number, "not a JSON object (line skipped)")
            continue
        records.append(record)
        line_numbers.append(number)
    if not records:
        raise DataError(f"{path}: no JSON object could be read")
    frame = records_frame(records)
    return frame.with_columns(pl.Series("__line", line_numbers, dtype=pl.Int64))


def records_frame(records: list[dict]) -> pl.DataFrame:
    """JSON objects as a frame, a column a key (null where a record lacks it).

    A column keeps its values when they are all integers (that fit in 64 bits), all numbers
    or all booleans; otherwise it is text, with lists, objects and numbers written as JSON,
    so a value of the wrong type is a row-level problem (an unparsable time, say), not a
    column that cannot be built.
    """
    columns = {}
    for key in dict.fromkeys(key for record in records for key in record):
        values = [record.get(key) for record in records]
        kinds = {type(v) for v in values if v is not None}
        if kinds <= {int} and all(v is None or -(2**63) <= v < 2**63 for v in values):
            columns[key] = pl.Series(key, values, dtype=pl.Int64)
        elif kinds <= {int, float}:
            columns[key] = pl.Series(key, [v if v is None else float(v) for v in values],
                                     dtype=pl.Float64)
        elif kinds == {bool}:
            columns[key] = pl.Series(key, values, dtype=pl.Boolean)
        else:
            text = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
            columns[key] = pl.Series(key, text, dtype=pl.String)
    return pl.DataFrame(columns)


def read_table(
    path: Path, fmt: str, report: BadInputReport, keep: pl.Expr | None = None,
    columns: list[str] | None = None,
) -> pl.DataFrame:
    """One file as a DataFrame with an extra ``__line`` column (file line, or row for Parquet);
    with ``keep``, only the rows it selects (Parquet: filtered while scanning, so the other
    rows are never held; other formats: filtered after the read). ``columns``: the columns
    needed, which a Parquet file is read for alone (the others are never held; any missing
    is left to :func:`require_columns` to name)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    first_line = None
    try:
        if fmt in ("csv", "tsv"):  # TSV has no quoting: a field may start with a quote
            separator, quote = ("," if fmt == "csv" else "\t"), ('"' if fmt == "csv" else None)
            frame = read_delimited(path, separator, quote, report)
        elif fmt == "parquet":
            frame = parquet_rows(polars_source(path), keep, columns)
            keep = None
        elif first_lines(path, 1)[0][1][:1] == b"[":
            frame, first_line = pl.read_json(polars_source(path)), 1
        else:
            try:
                frame = pl.read_ndjson(polars_source(path))  # skips blank lines
                lines = [block["line"] for block in line_blocks(path, "utf-8", report)]
                frame = frame.with_columns(__line=pl.concat(lines))
            except pl.exceptions.PolarsError:  # a broken line or mixed types
                frame = _read_jsonl_lines(path, report)
    except pl.exceptions.NoDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pl.exceptions.PolarsError, OSError) as error:
        raise DataError(f"{path}: cannot read it as {fmt} ({polars_reason(error)})") from None
    if keep is not None:
        frame = frame.filter(keep)
    if len(frame) == 0:
        raise DataError(f"{path}: the file has no rows")
    if first_line is not None:
        frame = frame.with_columns(__line=np.arange(len(frame), dtype=np.int64) + first_line)
    return frame


def parquet_rows(
    source: Path | io.BytesIO, keep: pl.Expr | None, columns: list[str] | None
) -> pl.DataFrame:
    """The rows ``keep`` selects (all without it) of a Parquet file, of its ``columns`` (all
    without them, or where one is missing, so that the message naming it can list every
    column), and ``__line``: the row's number from 1, as 32 bits where that suffices (a scan,
    so rows and columns left out are never read into memory)."""
    scan = pl.scan_parquet(source)
    if columns is not None and set(columns) <= set(scan.collect_schema().names()):
        scan = scan.select(list(dict.fromkeys(columns)))
    scan = scan.with_row_index("__line", offset=1)
    if keep is not None:
        scan = scan.filter(keep)
    return scan.collect(engine="streaming")


def require_columns(frame: pl.DataFrame, columns: list[str], path: Path) -> None:
    available = [c for c in frame.columns if not c.startswith("__")]  # not the reader's own
    for column in columns:
        if column not in available:
            raise DataError(
                f"{path}: no column {column!r}; available columns: {column_list(available)}"
            )


def as_strings(column: pl.Series, path: Path) -> pl.Series:
    try:
        return column.cast(pl.String)
    except pl.exceptions.PolarsError:
        raise DataError(
            f"{path}: column {column.name!r} ({column.dtype}) cannot be read as text values"
        ) from None


def id_values(column: pl.Series, path: Path) -> pl.Series:
    """User or item ids: integers as they are (coded later against their distinct values as
    text, :func:`camn.data.codes.sorted_codes`, so a large log's rows never become strings),
    anything else as text."""
    return column if column.dtype.is_integer() else as_strings(column, path)


def side_columns(
    frame: pl.DataFrame, path: Path, context: list[str] | tuple[str, ...],
    numeric: list[str] | tuple[str, ...],
) -> list[pl.Series]:
    """The ``context`` columns as text and the ``numeric`` ones as finite numbers (null where
    not), named with their prefixes (:mod:`camn.data.features`)."""
    require_columns(frame, [*context, *numeric], path)
    columns = [as_strings(frame[name], path).alias(CONTEXT + name) for name in context]
    for name in numeric:
        column = frame[name]
        if column.dtype == pl.String:
            column = column.str.strip_chars()
        number = column.cast(pl.Float64, strict=False)
        columns.append(pl.select(pl.when(number.is_finite()).then(number)).to_series()
                       .alias(NUMERIC + name))
    return columns


def is_labelled(label_col: str | None, label: str | None) -> bool:
    """Whether the rows are labelled impressions (a ``label_col`` or a ``label`` expression)."""
    return label_col is not None or label is not None


def read_items(
    path: Path, item_col: str, attributes: list[str], fmt: str | None,
    buckets: list[str] | tuple[str, ...], report: BadInputReport,
    used_items: pl.Series | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """The item column and the attribute columns (as text) of the items file, one row an item
    (the first kept), its ``buckets`` columns bucketed over ``used_items`` (the items of the
    interactions), and a note on each bucketed column."""
    frame = read_table(path, file_format(path, fmt), report)
    require_columns(frame, [item_col, *attributes], path)
    frame = frame.select(
        as_strings(frame[item_col], path).alias("item"),
        *(as_strings(frame[name], path).alias(name) for name in attributes),
        "__line",
    )
    repeated = pl.col("item").is_duplicated() & ~pl.col("item").is_first_distinct()
    reason = pl.when(repeated & pl.col("item").is_not_null()).then(
        pl.lit("item listed again in the items file (first kept)")
    )
    frame = skip_rows(frame, reason.otherwise(null_reason("item")), path, report)
    if used_items is None:
        used_items = frame["item"]
    frame, notes = bucketize_columns(frame, buckets, "item", used_items, path, report)
    return frame.drop("__line"), notes
