"""Any table: the user's own interaction log and item table, as CSV, TSV, Parquet or JSON lines.

Interactions need a user, an item and a time column; items need the item column and the attribute
columns named by ``--attributes``. The item id is always attribute 1 (slot 0), named after the
items file's item column. Every value is cast to a string; a null attribute value means unknown.
Without ``--items`` the item id is the only attribute; ``--items`` without ``--attributes`` is
refused (the file would add nothing), with the file's columns listed to choose from.

Any of the files may be gzip-compressed (``inter.csv.gz``; recognised from the content, and the
format from the extension before ``.gz``). Bad rows are reported with their line and skipped:
missing values, unparsable times, bytes that are not UTF-8, CSV/TSV rows with more fields than
the header, broken JSON lines, repeated items.

Times may be integers, floats, dates or date-time strings (parsed by polars, kept as epoch
microseconds); each column is read the way that parses most of its values.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl

from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.sources._common import (
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

NAME = "table"
HELP = (
    "your own logs: interactions (user, item, time) and items (item, attributes) "
    "as CSV, TSV, Parquet or JSON lines"
)

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interactions", required=True, type=Path, help="interaction log file")
    parser.add_argument(
        "--items", type=Path,
        help="item table whose --attributes columns become attributes (needs --attributes); "
        "without it the item id is the only attribute",
    )
    parser.add_argument("--user-col", default="user", help="user column of the interactions")
    parser.add_argument("--item-col", default="item", help="item column of both files")
    parser.add_argument("--time-col", default="time", help="time column of the interactions")
    parser.add_argument(
        "--items-item-col", help="item column of the items file, if named differently"
    )
    parser.add_argument(
        "--attributes", default="",
        help="comma-separated attribute columns of the items file (needs --items)",
    )
    parser.add_argument(
        "--format", choices=sorted(set(FORMATS.values())),
        help="file format of both files (default: from the extension, a .gz after it ignored)",
    )


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


def read_table(path: Path, fmt: str, report: BadInputReport) -> pl.DataFrame:
    """One file as a DataFrame with an extra ``__line`` column (file line, or row for Parquet)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    first_line = None
    try:
        if fmt in ("csv", "tsv"):  # TSV has no quoting: a field may start with a quote
            separator, quote = ("," if fmt == "csv" else "\t"), ('"' if fmt == "csv" else None)
            frame = read_delimited(path, separator, quote, report)
        elif fmt == "parquet":
            frame, first_line = pl.read_parquet(polars_source(path)), 1
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
    if len(frame) == 0:
        raise DataError(f"{path}: the file has no rows")
    if first_line is not None:
        frame = frame.with_columns(__line=np.arange(len(frame), dtype=np.int64) + first_line)
    return frame


def require_columns(frame: pl.DataFrame, columns: list[str], path: Path) -> None:
    available = [c for c in frame.columns if c != "__line"]
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


def parse_time(column: pl.Series, path: Path) -> pl.Series:
    """Times as numbers: numeric columns as they are, dates as epoch microseconds, text parsed.

    A value that is not a finite number or a date becomes null; a column of another type (lists,
    say) is a :class:`DataError`.
    """
    if column.dtype.is_float():
        return pl.select(pl.when(column.is_finite()).then(column)).to_series()
    if column.dtype.is_numeric():
        return column
    try:
        if column.dtype.is_temporal():
            return column.cast(pl.Datetime("us")).dt.epoch("us")
        text = column.cast(pl.String).str.strip_chars()
    except pl.exceptions.PolarsError:
        raise DataError(
            f"{path}: column {column.name!r} ({column.dtype}) cannot be read as times"
            " (numbers, dates or text)"
        ) from None
    as_float = text.cast(pl.Float64, strict=False)
    as_float = pl.select(pl.when(as_float.is_finite()).then(as_float)).to_series()
    candidates = [text.cast(pl.Int64, strict=False), as_float]
    try:
        dates = text.str.to_datetime(strict=False, time_unit="us")
        candidates.append(dates.dt.epoch("us"))
    except pl.exceptions.PolarsError:
        pass  # no date format could be inferred: the column is not dates
    return max(candidates, key=lambda c: len(c) - c.null_count())  # first wins ties


def read_interactions(args: argparse.Namespace, report: BadInputReport) -> pl.DataFrame:
    path = args.interactions
    frame = read_table(path, file_format(path, args.format), report)
    columns = [args.user_col, args.item_col, args.time_col]
    require_columns(frame, columns, path)
    frame = frame.select(
        as_strings(frame[args.user_col], path).alias("user"),
        as_strings(frame[args.item_col], path).alias("item"),
        parse_time(frame[args.time_col], path).alias("time"),
        frame[args.time_col].is_not_null().alias("__has_time"),
        "__line",
    )
    unparsed = pl.col("time").is_null() & pl.col("__has_time")
    reason = pl.when(unparsed).then(pl.lit("time is not a number or a date (row skipped)"))
    frame = skip_rows(frame, reason.otherwise(null_reason("user", "item", "time")), path, report)
    if len(frame) == 0:
        example = next((e for e in report.examples if e.startswith(f"{path}:")), "")
        raise DataError(f"{path}: every row is bad input, e.g. {example}")
    return frame.drop("__line", "__has_time")


def read_items(
    args: argparse.Namespace, attributes: list[str], report: BadInputReport
) -> pl.DataFrame:
    path = args.items
    item_col = args.items_item_col or args.item_col
    frame = read_table(path, file_format(path, args.format), report)
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
    return frame.drop("__line")


def item_col_of(args: argparse.Namespace) -> str:
    """The item column of the items file."""
    return args.items_item_col or args.item_col


def parse_attributes(args: argparse.Namespace) -> list[str]:
    """The ``--attributes`` names, checked against ``--items`` before any file is read in full.

    ``--items`` without ``--attributes`` is refused: the item id always comes from the
    interactions, so the item table would add nothing. The message lists its columns.
    """
    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()]
    if attributes and args.items is None:
        raise DataError("--attributes names columns of the items file: pass --items too")
    if args.items is not None and not attributes:
        columns = read_table(args.items, file_format(args.items, args.format), BadInputReport())
        columns = [c for c in columns.columns if c != "__line"]
        example = ",".join(c for c in columns if c != item_col_of(args))[:60] or "brand"
        raise DataError(
            f"--items {args.items} without --attributes: name the columns to use as item"
            f" attributes, e.g. --attributes {example} (its columns: {column_list(columns)});"
            " without --items the item id is the only attribute"
        )
    item_col = item_col_of(args)
    if len(set(attributes)) < len(attributes) or item_col in attributes or "item" in attributes:
        raise DataError(
            f"--attributes {args.attributes!r}: names must be distinct and differ from the item "
            f"column {item_col!r} (the item id is always attribute 1) and from 'item'"
        )
    return attributes


def read(args: argparse.Namespace, report: BadInputReport) -> RawData:
    """Read the interaction log and the item table named on the command line."""
    attributes = parse_attributes(args)
    interactions = read_interactions(args, report)
    if args.items is None:
        items = pl.DataFrame({"item": interactions["item"].unique().sort()})
    else:
        items = read_items(args, attributes, report)
    files = [str(args.interactions)] + ([str(args.items)] if args.items else [])
    return RawData(
        interactions=interactions,
        items=items,
        attributes=[args.items_item_col or args.item_col, *attributes],
        origin={
            "source": NAME,
            "files": files,
            "columns": {"user": args.user_col, "item": args.item_col, "time": args.time_col},
        },
    )
