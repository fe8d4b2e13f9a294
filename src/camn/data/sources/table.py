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
microseconds); each column is read the way that parses most of its values. ``--time-format``
(a strftime-style format such as ``%m/%d/%Y %H:%M``) reads text times with that format instead,
and a row that does not match it is counted. Without it, dates written ``01/02/2020`` (day and
month both up to 12) can be read two ways: camn reads them day first unless the column holds more
dates that only month first fits (``02/13/2020``) than dates that only day first fits
(``13/02/2020``), and says in a note which reading it used; a row that the reading does not fit
is counted.

``--bucketize COL[,COL...]`` puts numeric attribute columns into 10 quantile buckets (deciles
over the items of the interactions), as the amazon source does with the price; without it each
distinct number is a category of its own (``camn prepare`` warns of such columns). A labelled
log's ``--numeric`` column named by it becomes a context feature of deciles of the training split
(:func:`camn.data.features.bucket_numeric`) instead of a standardised number.

Rows that carry their own history, as BARS/FuxiCTR's CSVs do (``label,user_id,item_id,cate_id,
item_history,cate_history`` with ``^``-joined lists): ``--history-col item_history,cate_id=
cate_history --history-sep ^`` reads each labelled row's history from the row itself, oldest
first (:mod:`camn.data.row_histories`): the item column's history, and for an attribute column of
the row (``cate_id``) its history alongside, position by position; such an attribute is read from
the rows, for the row's item and for every history item. No time is read; the rows are split by
their files (``--valid``, ``--test``) or by user. A row whose history columns differ in length,
or hold an empty value, is bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from camn.data.features import NUMERIC
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.reading import (
    check_bucketize,
    column_list,
    null_reason,
    parse_bucketize,
    skip_rows,
)
from camn.data.sources import _labels
from camn.data.sources._files import (
    FORMATS,
    as_strings,
    file_format,
    id_values,
    is_labelled,
    read_items,
    read_table,
    require_columns,
    side_columns,
)
from camn.data.sources._history_columns import (
    HistoryColumns,
    read_history_rows,
    refuse_with_history,
    with_items_file,
)
from camn.data.sources._times import parse_time, time_unit

NAME = "table"
HELP = (
    "your own logs: interactions (user, item, time) and items (item, attributes) "
    "as CSV, TSV, Parquet or JSON lines"
)

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
        "--attributes", default="", metavar="COL[,COL...]",
        help="attribute columns of the items file (needs --items)",
    )
    parser.add_argument(
        "--format", choices=sorted(set(FORMATS.values())),
        help="file format of both files (default: from the extension, a .gz after it ignored)",
    )
    parser.add_argument(
        "--time-format", metavar="FORMAT",
        help="strftime-style format of text times, e.g. '%%m/%%d/%%Y' (month first) or"
        " '%%d/%%m/%%Y %%H:%%M'; rows that do not match are counted and skipped (default:"
        " numbers, or dates of any layout polars recognises; 01/02/2020 is read day first"
        " unless the column shows month first, and a note says which)",
    )
    parser.add_argument(
        "--bucketize", type=parse_bucketize, default=[], metavar="COL[,COL...]",
        help="--attributes columns of numbers to put into 10 quantile buckets (deciles over the"
        " items of the interactions) (default: none; each distinct number is then a category of"
        " its own); --numeric columns too, as context features of the training split's deciles",
    )
    labels = parser.add_argument_group(
        "labelled impressions",
        "each row is an impression with a 0/1 label; its history is the user's history events"
        " strictly before its time",
    )
    labels.add_argument("--label-col", metavar="COL",
                        help="column of 0/1 labels (1 click, 0 logged non-click)")
    labels.add_argument("--label", metavar="EXPR",
                        help="SQL expression over the row giving the label, e.g. 'rating >= 4'"
                        " or \"behavior IN ('cart', 'buy')\"")
    labels.add_argument("--history-where", metavar="EXPR",
                        help="SQL expression: the rows that enter histories (default: the"
                        " clicks, label = 1)")
    labels.add_argument("--valid", type=Path, metavar="FILE",
                        help="a log already split: its validation impressions (needs --test)")
    labels.add_argument("--test", type=Path, metavar="FILE",
                        help="a log already split: its test impressions (needs --valid)")
    labels.add_argument("--context", type=parse_bucketize, default=[], metavar="COL[,COL...]",
                        help="columns of the row that describe the impression (hour, device):"
                        " categorical side features of the model's output network")
    labels.add_argument("--numeric", type=parse_bucketize, default=[], metavar="COL[,COL...]",
                        help="numeric columns of the row (price): side features, standardised"
                        " with the training split's mean and standard deviation")
    labels.add_argument("--multi-valued", metavar="COL:SEP[,COL:SEP...]",
                        help="--attributes columns holding several values joined by SEP (e.g."
                        " genres:|): a bag of values per item, averaged by the models (default:"
                        " every attribute holds one value)")
    labels.add_argument("--users", type=Path, metavar="FILE",
                        help="user table: a user column named as --user-col and the"
                        " --user-features columns, one row a user")
    labels.add_argument("--user-features", type=parse_bucketize, default=[],
                        metavar="COL[,COL...]",
                        help="columns of --users (age, gender): categorical side features of"
                        " the model's output network, unknown for a user without a row")
    labels.add_argument("--history-col", metavar="HIST[,COL=HIST...]",
                        help="rows that carry their history (BARS/FuxiCTR CSVs): HIST the column"
                        " of the items the user clicked before the row, oldest first, joined by"
                        " --history-sep; COL=HIST an attribute column of the row and its history"
                        " column (e.g. item_history,cate_id=cate_history); no time is read")
    labels.add_argument("--history-sep", default="^", metavar="SEP",
                        help="with --history-col: the text joining a history's values (default"
                        " ^)")
    _labels.add_split_arguments(labels)


def read_interactions(
    path: str | Path,
    *,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str = "time",
    format: str | None = None,
    time_format: str | None = None,
    label_col: str | None = None,
    label: str | None = None,
    history_where: str | None = None,
    context: list[str] | tuple[str, ...] = (),
    numeric: list[str] | tuple[str, ...] = (),
    report: BadInputReport | None = None,
    notes: list[str] | None = None,
    time_units: list[str] | None = None,
    users_between: tuple[str, str] | None = None,
) -> pl.DataFrame:
    """user, item and time of every good row of the interaction log ``path``, and with labels
    (``label_col`` or ``label``, :func:`is_labelled`) ``label``, ``history`` and the
    ``context`` and ``numeric`` side columns; the note on how dates were read, if any, is added
    to ``notes``, the unit of the times (``us`` for dates read as epoch microseconds, else
    ``s``) to ``time_units``."""
    report = BadInputReport() if report is None else report
    path = Path(path)
    columns = [user_col, item_col, time_col]
    labelled = is_labelled(label_col, label)
    needed = (labelled_columns(columns, label_col, label, history_where, [*context, *numeric])
              if labelled else columns)
    frame = read_table(path, file_format(path, format), report,
                       shard_rows(user_col, users_between), needed)
    require_columns(frame, columns, path)
    time, note = parse_time(frame[time_col], path, time_format)
    if note is not None and notes is not None:
        notes.append(note)
    if time_units is not None:
        time_units.append(time_unit(frame[time_col], time))
    if labelled:
        frame = _labels.label_columns(frame, path, label_col, label, history_where)
    label_columns = ["__label", "__label_reason", "__history"] if labelled else []
    side = side_columns(frame, path, context, numeric) if labelled else []
    frame = frame.select(
        id_values(frame[user_col], path).alias("user"),
        id_values(frame[item_col], path).alias("item"),
        time.alias("time"),
        frame[time_col].is_not_null().alias("__has_time"),
        *label_columns,
        *side,
        "__line",
    )
    unparsed = pl.col("time").is_null() & pl.col("__has_time")
    why = (f"time does not match --time-format {time_format!r}" if time_format
           else "time is not a number or a date")
    reason = pl.when(unparsed).then(pl.lit(f"{why} (row skipped)"))
    reason = reason.otherwise(null_reason("user", "item", "time"))
    if labelled:
        numbers = [pl.when(pl.col(NUMERIC + name).is_null()).then(
            pl.lit(f"numeric feature {name!r} is not a number (row skipped)"))
            for name in numeric]
        reason = pl.coalesce(reason, pl.col("__label_reason"), *numbers)
    frame = skip_rows(frame, reason, path, report)
    if len(frame) == 0:
        example = next((e for e in report.examples if e.startswith(f"{path}:")), "")
        raise DataError(f"{path}: every row is bad input, e.g. {example}")
    frame = frame.drop("__line", "__has_time")
    if labelled:
        frame = _labels.labelled(frame.drop("__label_reason"))
    return frame


def labelled_columns(
    columns: list[str], label_col: str | None, label: str | None, history_where: str | None,
    side: list[str],
) -> list[str] | None:
    """The columns a labelled log is read for: ids and time, the label column or those its
    expression reads, those of --history-where, the side features; None (every column) where
    an expression does not parse."""
    read = [_labels.expression_columns(text) for text in (label, history_where) if text]
    if None in read:
        return None
    return [*columns, *([label_col] if label_col else []),
            *(name for names in read for name in names), *side]


def read_labelled(
    files: list[Path], splits: _labels.SplitOptions, report: BadInputReport, notes: list[str],
    **reading: object,
) -> tuple[pl.DataFrame, dict]:
    """The labelled rows of ``files`` (the interactions, then for a log already split its
    validation and test files), each with its ``split``, read by :func:`read_interactions`
    with the keyword arguments ``reading``; and ``origin["labels"]``."""
    frames, units = [], []
    for split, path in enumerate(files):
        frame = read_interactions(path, report=report, notes=notes, time_units=units, **reading)
        frames.append(frame.with_columns(split=pl.lit(split, dtype=pl.Int8)))
    if len(set(units)) > 1:
        raise DataError(f"the files' times are not all dates or all numbers: {', '.join(units)}")
    options = _labels.split_options(splits, units[0], files=len(files) > 1)
    return pl.concat(frames, how="vertical_relaxed"), options


def shard_rows(user_col: str, users_between: tuple[str, str] | None) -> pl.Expr | None:
    """The rows of a shard's users (``users_between``: the first and last user id of the
    shard, given by ``camn prepare --shard``), or None for every row."""
    if users_between is None:
        return None
    return pl.col(user_col).cast(pl.String).is_between(*map(pl.lit, users_between))


def read_users(
    path: Path, user_col: str, features: list[str] | tuple[str, ...], fmt: str | None,
    report: BadInputReport,
) -> pl.DataFrame:
    """The user table: ``user`` and the ``features`` columns of ``path``, as text, one row a
    user (a repeated user or a row without one is bad input, counted with its line)."""
    if not features:
        columns = [c for c in read_table(path, file_format(path, fmt), report).columns
                   if c not in ("__line", user_col)]
        raise DataError(f"--users {path} without --user-features: name the columns to use, "
                        f"e.g. --user-features {','.join(columns)[:60]} (its columns: "
                        f"{column_list(columns)})")
    if len(set(features)) < len(features) or user_col in features:
        raise DataError(f"--user-features {','.join(features)}: names must be distinct and "
                        f"differ from the user column {user_col!r}")
    frame = read_table(path, file_format(path, fmt), report)
    require_columns(frame, [user_col, *features], path)
    frame = frame.select(as_strings(frame[user_col], path).alias("user"),
                         *(as_strings(frame[name], path).alias(name) for name in features),
                         "__line")
    return _labels.user_rows(frame, path, report)


def parse_multi_valued(text: str, attributes: list[str]) -> dict[str, str]:
    """``--multi-valued COL:SEP[,COL:SEP...]`` as attribute -> separator; each COL one of
    ``attributes`` after the item id, each SEP a non-empty text without a comma."""
    separators = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, colon, separator = part.partition(":")
        if not colon or not separator:
            raise DataError(f"--multi-valued {text!r}: write COL:SEP, e.g. genres:|")
        if name not in attributes[1:]:
            raise DataError(f"--multi-valued {text!r}: {name!r} is not one of --attributes "
                            f"({', '.join(attributes[1:]) or 'none given'})")
        separators[name] = separator
    return separators


def parse_attributes(text: str, items: Path | None, item_col: str, fmt: str | None) -> list[str]:
    """The ``--attributes`` names, checked against ``--items`` before any file is read in full.

    ``--items`` without ``--attributes`` is refused: the item id always comes from the
    interactions, so the item table would add nothing. The message lists its columns.
    """
    attributes = [a.strip() for a in text.split(",") if a.strip()]
    if attributes and items is None:
        raise DataError("--attributes names columns of the items file: pass --items too")
    if items is not None and not attributes:
        columns = read_table(items, file_format(items, fmt), BadInputReport())
        columns = [c for c in columns.columns if c != "__line"]
        example = ",".join(c for c in columns if c != item_col)[:60] or "brand"
        raise DataError(
            f"--items {items} without --attributes: name the columns to use as item"
            f" attributes, e.g. --attributes {example} (its columns: {column_list(columns)});"
            " without --items the item id is the only attribute"
        )
    if len(set(attributes)) < len(attributes) or item_col in attributes or "item" in attributes:
        raise DataError(
            f"--attributes {text!r}: names must be distinct and differ from the item "
            f"column {item_col!r} (the item id is always attribute 1) and from 'item'"
        )
    return attributes


def read(
    *,
    interactions: str | Path,
    items: str | Path | None = None,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str = "time",
    items_item_col: str | None = None,
    attributes: str = "",
    format: str | None = None,
    time_format: str | None = None,
    bucketize: list[str] | tuple[str, ...] = (),
    label_col: str | None = None,
    label: str | None = None,
    history_where: str | None = None,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    context: list[str] | tuple[str, ...] = (),
    numeric: list[str] | tuple[str, ...] = (),
    negatives: int = 0,
    split: str | None = None,
    valid_from: str | None = None,
    test_from: str | None = None,
    users_between: tuple[str, str] | None = None,
    users: str | Path | None = None,
    user_features: list[str] | tuple[str, ...] = (),
    multi_valued: str | None = None,
    history_col: str | None = None,
    history_sep: str = "^",
    report: BadInputReport | None = None,
) -> RawData:
    """Read the interaction log and the item table: the ``attributes`` columns
    (comma-separated) of ``items`` after the item id (its column ``items_item_col``, default
    ``item_col``), or the item id alone without ``items``.

    With ``label_col`` (a 0/1 column) or ``label`` (a SQL expression) every row is a labelled
    impression (:mod:`camn.data.sources._labels`): ``history_where`` picks the rows that enter
    histories, ``context`` and ``numeric`` name side-feature columns, ``valid`` and ``test``
    are the other files of a log already split, else ``split``, ``valid_from`` and
    ``test_from`` split it; ``negatives`` sampled non-clicks are added per click;
    ``user_features`` name columns of the user table ``users`` (``RawData.users``);
    ``multi_valued`` (``genres:|``) names attributes holding several values and their separator.
    ``users_between``: read only the rows of users whose id lies between the two (a shard's,
    ``camn prepare --shard``; Parquet logs are filtered while they are scanned).
    ``history_col`` (``item_history,cate_id=cate_history``): rows that carry their history,
    values joined by ``history_sep`` (module docstring)."""
    report = BadInputReport() if report is None else report
    items = None if items is None else Path(items)
    items_col = items_item_col or item_col
    names = parse_attributes(attributes, items, items_col, format)
    check_bucketize(list(bucketize), names, numeric if is_labelled(label_col, label) else None)
    numeric_buckets = [name for name in bucketize if name not in names]
    bucketize = [name for name in bucketize if name in names]
    notes: list[str] = []
    reading = {"user_col": user_col, "item_col": item_col, "time_col": time_col,
               "format": format, "time_format": time_format}
    splits = _labels.SplitOptions(negatives=negatives, split=split, valid_from=valid_from,
                                  test_from=test_from)
    split_files = [Path(path) for path in (valid, test) if path is not None]
    separators = parse_multi_valued(multi_valued or "", [items_col, *names])
    if separators and not is_labelled(label_col, label):
        raise DataError("--multi-valued is for labelled impressions for now: pass --label-col "
                        "COL or --label EXPR")
    user_table = None
    if users is not None or user_features:
        _labels.refuse_user_features(is_labelled(label_col, label),
                                     "--label-col COL or --label EXPR")
        if users is None:
            raise DataError("--user-features names columns of the user table: pass --users FILE")
        user_table = read_users(Path(users), user_col, user_features, format, report)
    if (valid is None) != (test is None) and is_labelled(label_col, label):
        raise DataError("a log already split needs both --valid FILE and --test FILE")
    if history_col is not None:
        refuse_with_history(label_col, label, splits, history_where, time_format)
        raw = read_history_rows(
            [Path(interactions), *split_files], HistoryColumns.parse(history_col, item_col),
            history_sep, splits, report, user_col=user_col, item_col=item_col,
            label_col=label_col, label=label, context=context, numeric=numeric, format=format)
        raw = with_items_file(raw, items, items_col, names, format, bucketize, report,
                              user_table, separators)
        if numeric_buckets:
            raw.origin["numeric_buckets"] = numeric_buckets
        return raw
    if is_labelled(label_col, label):
        log, label_options = read_labelled(
            [Path(interactions), *split_files], splits, report, notes, label_col=label_col,
            label=label, history_where=history_where, context=context, numeric=numeric,
            **reading,
        )
    else:
        if split_files or history_where or splits.given():
            raise DataError("--valid, --test, --history-where, --negatives, --split, --valid-from"
                            " and --test-from are for labelled impressions: pass --label-col COL"
                            " or --label EXPR")
        log = read_interactions(interactions, report=report, notes=notes,
                                users_between=users_between, **reading)
    if items is None:
        table = pl.DataFrame({"item": log["item"].unique().cast(pl.String).sort()})
    else:
        table, bucket_notes = read_items(items, items_col, names, format, bucketize, report,
                                         log["item"].unique().cast(pl.String))
        notes += bucket_notes
    files = [str(interactions)] + ([str(items)] if items else [])
    files += [str(path) for path in split_files]
    if users is not None:
        files.append(str(users))
    origin = {
        "source": NAME,
        "files": files,
        "columns": {"user": user_col, "item": item_col, "time": time_col},
    }
    if time_format:
        origin["time_format"] = time_format
    if bucketize:
        origin["bucketize"] = list(bucketize)
    if numeric_buckets:
        origin["numeric_buckets"] = numeric_buckets
    if separators:
        origin["multi_valued"] = separators
    if is_labelled(label_col, label):
        given = {"label_col": label_col, "label": label, "history_where": history_where,
                 "valid": valid, "test": test}
        origin["labels"] = label_options | {key: str(value) for key, value in given.items()
                                            if value is not None}
    return RawData(
        interactions=log,
        items=table,
        attributes=[items_col, *names],
        origin=origin,
        notes=notes,
        users=user_table,
    )
