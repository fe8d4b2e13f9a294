"""Any table: the user's own interaction log and item table, as CSV, TSV, Parquet or JSON lines.

Interactions need a user, an item and a time column; items need the item column and the attribute
columns named by ``--attributes``. The item id is always attribute 1 (slot 0), named after the
items file's item column. Every value is cast to a string; a null attribute value means unknown.

Times may be integers, floats, dates or date-time strings (parsed by polars, kept as epoch
microseconds); each column is read the way that parses most of its values.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.sources._common import first_lines, iter_blocks

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
        "--items", type=Path, help="item table (without it the item id is the only attribute)"
    )
    parser.add_argument("--user-col", default="user", help="user column of the interactions")
    parser.add_argument("--item-col", default="item", help="item column of both files")
    parser.add_argument("--time-col", default="time", help="time column of the interactions")
    parser.add_argument(
        "--items-item-col", help="item column of the items file, if named differently"
    )
    parser.add_argument(
        "--attributes", default="", help="comma-separated attribute columns of the items file"
    )
    parser.add_argument(
        "--format", choices=sorted(set(FORMATS.values())),
        help="file format of both files (default: from the extension)",
    )


def report_rows(report: BadInputReport, path: str | Path, rows: np.ndarray, reason: str) -> None:
    """Report bad rows (line numbers) of one file: the first few one by one, the rest at once."""
    head = rows[: report.max_examples]
    for row in head:
        report.bad(path, int(row), reason)
    if len(rows) > len(head):
        report.bad(path, int(rows[len(head)]), reason, count=len(rows) - len(head))


def line_blocks(path: Path, encoding: str) -> Iterator[pl.DataFrame]:
    """Non-blank lines of a file in large blocks: ``line`` (1-based number) and ``text``."""
    for first, block in iter_blocks(path):
        text = pl.Series("text", [block.decode(encoding, errors="replace")])
        lines = text.str.split("\n").explode().head(-1).str.strip_suffix("\r")
        numbers = np.arange(first, first + len(lines), dtype=np.int64)
        frame = pl.DataFrame({"line": numbers, "text": lines})
        yield frame.filter(pl.col("text").str.strip_chars() != "")


def file_format(path: Path, override: str | None) -> str:
    if override:
        return override
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"pass --format ({', '.join(sorted(set(FORMATS.values())))})"
        ) from None


def _read_jsonl_lines(path: Path, report: BadInputReport) -> pl.DataFrame:
    """Slow path for JSON lines that polars refuses: parse line by line, skipping broken ones."""
    records, line_numbers, broken = [], [], []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                broken.append(number)
                continue
            if not isinstance(record, dict):
                broken.append(number)
                continue
            records.append(record)
            line_numbers.append(number)
    report_rows(report, path, np.array(broken), "broken JSON (line skipped)")
    if not records:
        raise DataError(f"{path}: no JSON object could be read")
    frame = pl.from_dicts(records, infer_schema_length=None)
    return frame.with_columns(pl.Series("__line", line_numbers, dtype=pl.Int64))


def read_table(path: Path, fmt: str, report: BadInputReport) -> pl.DataFrame:
    """One file as a DataFrame with an extra ``__line`` column (file line, or row for Parquet)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if fmt in ("csv", "tsv"):
            frame = pl.read_csv(  # TSV has no quoting: a field may start with a quote
                path, separator="," if fmt == "csv" else "\t", infer_schema=False,
                encoding="utf8-lossy", quote_char='"' if fmt == "csv" else None,
            )
            first_line = 2  # after the header; quoted multi-line fields shift this
        elif fmt == "parquet":
            frame, first_line = pl.read_parquet(path), 1
        elif first_lines(path, 1)[0][1][:1] == b"[":
            frame, first_line = pl.read_json(path), 1
        else:
            first_line = None
            try:
                frame = pl.read_ndjson(path)  # skips blank lines: number the others
                lines = [block["line"] for block in line_blocks(path, "utf-8")]
                frame = frame.with_columns(__line=pl.concat(lines))
            except pl.exceptions.ComputeError:
                frame = _read_jsonl_lines(path, report)
    except pl.exceptions.NoDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pl.exceptions.PolarsError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: cannot read it as {fmt} ({message})") from None
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
                f"{path}: no column {column!r}; available columns: {', '.join(available)}"
            )


def as_strings(column: pl.Series, path: Path) -> pl.Series:
    try:
        return column.cast(pl.String)
    except pl.exceptions.PolarsError:
        raise DataError(
            f"{path}: column {column.name!r} ({column.dtype}) cannot be read as text values"
        ) from None


def parse_time(column: pl.Series) -> pl.Series:
    """Times as numbers: numeric columns as they are, dates as epoch microseconds, text parsed."""
    if column.dtype.is_float():
        return column.fill_nan(None)
    if column.dtype.is_numeric():
        return column
    if column.dtype.is_temporal():
        return column.cast(pl.Datetime("us")).dt.epoch("us")
    text = column.cast(pl.String).str.strip_chars()
    as_float = text.cast(pl.Float64, strict=False)
    candidates = [text.cast(pl.Int64, strict=False), as_float.fill_nan(None)]
    try:
        dates = text.str.to_datetime(strict=False, time_unit="us")
        candidates.append(dates.dt.epoch("us"))
    except pl.exceptions.PolarsError:
        pass  # no date format could be inferred: the column is not dates
    return max(candidates, key=lambda c: len(c) - c.null_count())  # first wins ties


def skip_rows(
    frame: pl.DataFrame, reason: pl.Expr, path: Path, report: BadInputReport
) -> pl.DataFrame:
    """Drop the rows where ``reason`` (a string expression, null = good row) is set, reporting
    them under their reason; with a strict report the first bad row in file order raises."""
    frame = frame.with_columns(__reason=reason)
    bad = frame.filter(pl.col("__reason").is_not_null()).sort("__line")
    if report.strict and len(bad):
        report.bad(path, bad["__line"][0], bad["__reason"][0])
    for (why,), rows in bad.group_by("__reason", maintain_order=True):
        report_rows(report, path, rows["__line"].to_numpy(), why)
    return frame.filter(pl.col("__reason").is_null()).drop("__reason")


def null_reason(*columns: str) -> pl.Expr:
    """'no <column> value (row skipped)' for the first of ``columns`` that is null."""
    reason = pl.lit(None, dtype=pl.String)
    for column in reversed(columns):
        reason = pl.when(pl.col(column).is_null()).then(
            pl.lit(f"no {column} value (row skipped)")
        ).otherwise(reason)
    return reason


def read_interactions(args: argparse.Namespace, report: BadInputReport) -> pl.DataFrame:
    path = args.interactions
    frame = read_table(path, file_format(path, args.format), report)
    columns = [args.user_col, args.item_col, args.time_col]
    require_columns(frame, columns, path)
    frame = frame.select(
        as_strings(frame[args.user_col], path).alias("user"),
        as_strings(frame[args.item_col], path).alias("item"),
        parse_time(frame[args.time_col]).alias("time"),
        frame[args.time_col].is_not_null().alias("__has_time"),
        "__line",
    )
    unparsed = pl.col("time").is_null() & pl.col("__has_time")
    reason = pl.when(unparsed).then(pl.lit("time is not a number or a date (row skipped)"))
    frame = skip_rows(frame, reason.otherwise(null_reason("user", "item", "time")), path, report)
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


def parse_attributes(args: argparse.Namespace) -> list[str]:
    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()]
    if attributes and args.items is None:
        raise DataError("--attributes names columns of the items file: pass --items too")
    item_col = args.items_item_col or args.item_col
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
