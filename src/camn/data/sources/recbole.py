"""RecBole atomic files ``.inter`` and ``.item``: tab-separated, typed headers.

A header names each column with its type, e.g. ``user_id:token	item_id:token	timestamp:float``;
columns are matched by name without the ``:type`` suffix. Attributes are either the ``.item``
columns named by ``--attributes`` (a ``token_seq`` column gives its first token, with a warning
when an item has more; ``--bucketize`` puts a numeric column into deciles), or
``--recipe amazon``: the Amazon recipe of the ``amazon`` source applied to the ``categories``,
``brand`` and ``price`` columns, so RecBole's Amazon files give the same store as McAuley's.
Attribute values are read with their HTML character references unescaped (``&#39;`` -> ``'``,
``&amp;`` -> ``&``), as RecBole's Amazon files keep McAuley's.

The ``.item`` file is read with RecBole's quoting (a field may be quoted with ``"``, as when a
title holds a tab or a newline); the ``.inter`` file is read unquoted. Either may be gzip
compressed. Bad rows are reported with their line and skipped: an empty user, item or time, a
time that is not a finite number, an item listed twice (the first kept), bytes that are not
UTF-8, more fields than the header.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import polars as pl

from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.reading import (
    AMAZON_ATTRIBUTES,
    AMAZON_META_SCHEMA,
    amazon_items,
    check_bucketize,
    column_list,
    first_lines,
    map_unique,
    null_reason,
    parse_bucketize,
    read_delimited,
    skip_rows,
    unescape_html,
)
from camn.data.reading import bucketize as bucketize_columns

NAME = "recbole"
HELP = "RecBole atomic files (.inter + .item, typed TSV headers)"
RECIPES = ("amazon",)
AMAZON_COLUMNS = ("categories", "brand", "price")
HEADER_LINE = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inter", required=True, help="interactions file (<dataset>.inter)")
    parser.add_argument("--item", required=True, help="items file (<dataset>.item)")
    attributes = parser.add_mutually_exclusive_group(required=True)
    attributes.add_argument(
        "--attributes", type=lambda s: [c for c in s.split(",") if c], metavar="COL[,COL...]",
        help=".item columns used as attributes after the item id",
    )
    attributes.add_argument(
        "--recipe", choices=RECIPES,
        help="amazon: category levels 2 and 3, leaf, brand, price decile (as the amazon source)",
    )
    parser.add_argument(
        "--bucketize", type=parse_bucketize, default=[], metavar="COL[,COL...]",
        help="--attributes columns of numbers to put into 10 quantile buckets (deciles over the"
        " items of the interactions), as the amazon recipe does with the price (default: none;"
        " each distinct number is then a category of its own)",
    )
    parser.add_argument("--user-col", default="user_id", help="user column of the .inter file")
    parser.add_argument("--item-col", default="item_id", help="item column of both files")
    parser.add_argument("--time-col", default="timestamp", help="time column of the .inter file")


def read(
    *,
    inter: str | Path,
    item: str | Path,
    attributes: list[str] | None = None,
    recipe: str | None = None,
    bucketize: list[str] | tuple[str, ...] = (),
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    report: BadInputReport | None = None,
) -> RawData:
    """Read the interactions and the item attributes into :class:`RawData`: the ``attributes``
    columns of the items file after the item id, or a ``recipe``'s."""
    report = BadInputReport() if report is None else report
    inter, item = Path(inter), Path(item)
    interactions = read_inter(inter, user_col, item_col, time_col, report)
    origin = {"source": NAME, "inter": str(inter), "item": str(item)}
    if recipe == "amazon":
        if bucketize:
            raise DataError(
                "--bucketize applies to --attributes columns; --recipe amazon puts the price"
                " into deciles itself"
            )
        table, _ = read_items(item, item_col, list(AMAZON_COLUMNS), report)
        price = table["price"].cast(pl.Float64, strict=False)
        meta = pl.DataFrame({
            "item": table[item_col],
            "path": map_unique(table["categories"], parse_token_seq, pl.List(pl.String)),
            "brand": table["brand"],
            "price": pl.select(pl.when(price.is_finite() & (price >= 0)).then(price)).to_series(),
        }, schema=AMAZON_META_SCHEMA)
        items, notes = amazon_items(meta, interactions["item"].unique())
        origin["recipe"] = "amazon"
        return RawData(interactions, items, list(AMAZON_ATTRIBUTES), origin, notes)
    names = list(attributes or ())
    if len(set(names)) < len(names) or item_col in names:
        raise DataError(
            f"--attributes {','.join(names)}: names must be distinct and differ from the item"
            f" column {item_col!r} (the item id is always attribute 1)"
        )
    check_bucketize(bucketize, names)
    table, types = read_items(item, item_col, names, report, keep_lines=True)
    warnings = {}
    for name in names:
        if types[name].endswith("_seq") and (warning := seq_warning(table[name])):
            warnings[name] = [warning]
    table = table.with_columns(
        unescape_html(first_token(table[name], types[name])) for name in names
    )
    table, notes = bucketize_columns(table, bucketize, item_col,
                                     interactions["item"].unique(), item, report)
    items = pl.DataFrame({"item": table[item_col]} | {name: table[name] for name in names})
    origin["attributes"] = names
    if bucketize:
        origin["bucketize"] = list(bucketize)
    return RawData(interactions, items, [item_col, *names], origin, notes, warnings)


def read_columns(
    path: Path, names: list[str], quoted: bool, report: BadInputReport
) -> tuple[pl.DataFrame, dict[str, str]]:
    """The columns ``names`` (bare names) of a RecBole file as strings, with ``__line``, and
    their types from the header (e.g. ``token``, ``float``, ``token_seq``)."""
    number, _ = first_lines(path, 1)[0]
    if number != HEADER_LINE:
        raise DataError(f"{path}:1: empty header line")
    table = read_delimited(path, "\t", '"' if quoted else None, report)
    header: dict[str, tuple[str, str]] = {}  # bare name -> (column as written, type)
    for column in table.columns[:-1]:  # the last is __line
        name, _, kind = column.partition(":")
        header.setdefault(name.strip(), (column, kind.strip() or "token"))
    unknown = [name for name in names if name not in header]
    if unknown:
        raise DataError(
            f"{path}: no column {', '.join(map(repr, unknown))}; columns are"
            f" {column_list(list(header))}"
        )
    if len(table) == 0:
        raise DataError(f"{path}: no rows after the header")
    columns = [pl.col(header[name][0]).alias(name) for name in names]
    return table.select(*columns, "__line"), {name: header[name][1] for name in names}


def read_inter(
    path: Path, user: str, item: str, time: str, report: BadInputReport
) -> pl.DataFrame:
    """Columns user (str), item (str), time (f64); rows with an empty or bad value are skipped."""
    table, _ = read_columns(path, [user, item, time], quoted=False, report=report)
    number = pl.col(time).str.strip_chars().cast(pl.Float64, strict=False)
    frame = table.select(
        pl.col(user).alias("user"), pl.col(item).alias("item"),
        pl.when(number.is_finite()).then(number).alias("time"), pl.col(time).alias("__text"),
        "__line",
    )
    not_a_number = pl.col("time").is_null() & pl.col("__text").is_not_null()
    reason = pl.when(not_a_number).then(pl.lit("time is not a finite number (row skipped)"))
    frame = skip_rows(frame, reason.otherwise(null_reason("user", "item", "time")), path, report)
    return frame.drop("__text", "__line")


def read_items(
    path: Path, item: str, names: list[str], report: BadInputReport, keep_lines: bool = False
) -> tuple[pl.DataFrame, dict[str, str]]:
    """The item column and ``names`` of the ``.item`` file, one row an item (the first kept),
    and the column types; rows without an item id are skipped. ``keep_lines`` keeps
    ``__line``, each row's line."""
    table, types = read_columns(path, [item, *names], quoted=True, report=report)
    repeated = pl.col(item).is_duplicated() & ~pl.col(item).is_first_distinct()
    reason = pl.when(repeated & pl.col(item).is_not_null()).then(
        pl.lit("item listed again in the .item file (first kept)")
    )
    table = skip_rows(table, reason.otherwise(null_reason(item)), path, report)
    return (table if keep_lines else table.drop("__line")), types


def parse_token_seq(value: str | None) -> list[str]:
    """A token_seq field as a list: a Python-literal list body (``'a', 'b'``) or split on spaces."""
    if value is None:
        return []
    value = value.strip()
    if value[:1] in ("'", '"'):
        try:
            tokens = ast.literal_eval(f"[{value}]")
            return [str(token) for token in tokens]
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return value.split()


def seq_warning(series: pl.Series) -> str | None:
    """The warning for a ``token_seq`` attribute of which items hold more than one token (only
    the first is kept), or None when none does."""
    tokens = map_unique(series, parse_token_seq, pl.List(pl.String))
    several = tokens.list.len() > 1
    count = int(several.sum())
    if not count:
        return None
    example = tokens.filter(several)[0].to_list()
    shown = ", ".join(repr(token) for token in example[:3]) + (", ..." if len(example) > 3 else "")
    return (
        f"a token_seq column: only the first token of each item is kept; {count:,} of the"
        f" {len(series):,} items in the .item file hold more (e.g. {shown} became"
        f" {example[0]!r}); camn reads one value an attribute"
    )


def first_token(series: pl.Series, kind: str) -> pl.Series:
    """An attribute column: the value, or the first token of a ``*_seq`` column; "" is null."""
    if kind.endswith("_seq"):
        series = map_unique(series, lambda v: next(iter(parse_token_seq(v)), None), pl.String)
    return pl.select(pl.when(series.str.strip_chars() != "").then(series)).to_series()
