"""DIEN's preprocessed Amazon files (Books, Electronics): rows that carry their own history.

``--path DIR`` holds DIEN's text files (plain or gzip):

- ``local_train_splitByUser`` and ``local_test_splitByUser``: one impression a line, six
  tab-separated fields, no header: label (1 click, 0 non-click), user, item, category, the
  user's earlier items and their categories, each list oldest first and joined by ``\\x02``
  (DIEN writes every history twice, for a click and for its sampled non-click);
- ``item-info``: ``item<TAB>category``, the category of every item.

``reviews-info`` (user, item, rating, time), from which DIEN drew the non-clicks, is not read:
the rows hold them. Nor are DIEN's pickled vocabularies: users, items and categories are numbered
from the text files (:mod:`camn.data.prepare`).

A row's history is the row's own list, its last ``--max-len`` items
(:mod:`camn.data.row_histories`).
Attributes: ``item`` and ``category``; an item's category is item-info's, else the one the rows
give it (its first); a note counts the items whose categories in the rows disagree.

Splits: the train file is the training data and the test file the test split (what DIEN reports
on). Validation is ``--valid FILE`` (another file of rows) or, by default, the rows of a seeded
``--valid-fraction`` (0.1) of the train file's users (seeded by ``camn prepare --seed``): a user
is in one split only, so validation shares no user with training, as DIEN's test file does not.

Bad lines are counted and skipped with their file and line: not six fields, an empty user, item
or category, a label other than 0 or 1, history lists of different lengths, an empty value in a
history list. A file whose first line does not have DIEN's six fields is refused in one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from camn.data.impressions import LABEL, SPLIT
from camn.data.protocols import TEST, TRAIN, VALID
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.reading import DETECT_BYTES, first_lines, line_blocks, open_binary, skip_rows
from camn.data.row_histories import (
    DEFAULT_VALID_FRACTION,
    ROW_HISTORY,
    check_options,
    empty_value,
    item_table,
    list_column,
)
from camn.data.sources._labels import label_values

NAME = "dien"
HELP = ("DIEN's Amazon files: local_train_splitByUser, local_test_splitByUser (rows that carry "
        "their history) and item-info")

TRAIN_FILE, TEST_FILE, ITEM_FILE = "local_train_splitByUser", "local_test_splitByUser", "item-info"
ROW_FIELDS = ("label", "user", "item", "category", "history_items", "history_categories")
ITEM_FIELDS = ("item", "category")
LIST_SEPARATOR = "\x02"
ATTRIBUTES = ["item", "category"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", required=True, type=Path,
                        help=f"folder of DIEN's files ({TRAIN_FILE}, {TEST_FILE}, {ITEM_FILE})")
    parser.add_argument("--valid", type=Path, metavar="FILE",
                        help="validation rows in DIEN's layout (default: the rows of a seeded "
                        "--valid-fraction of the train file's users)")
    parser.add_argument("--valid-fraction", type=float, default=DEFAULT_VALID_FRACTION,
                        metavar="F", help="without --valid: the share of the train file's users"
                        f" whose rows validate (default {DEFAULT_VALID_FRACTION})")


def layout_problem(path: Path, fields: tuple[str, ...]) -> None:
    """A DataError when the first line of ``path`` lacks the ``fields`` tab-separated fields
    (counted on the line as written: its trailing fields may be empty, a history not yet
    begun)."""
    number, _ = first_lines(path, 1)[0]
    with open_binary(path) as stream:
        for _ in range(number):
            line = stream.readline(DETECT_BYTES)
    count = line.rstrip(b"\r\n").count(b"\t") + 1
    if count != len(fields):
        raise DataError(f"{path}: not DIEN's layout: line 1 has {count} tab-separated field(s); "
                        f"expected {len(fields)} ({', '.join(fields)})")


def tab_fields(path: Path, fields: tuple[str, ...], report: BadInputReport) -> pl.DataFrame:
    """The lines of a tab-separated file without a header as the text columns ``fields`` and
    ``__line``, with ``__fields`` set on a line without as many fields (null where good)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    layout_problem(path, fields)
    frames = []
    for block in line_blocks(path, "utf-8", report):
        parts = pl.col("text").str.split("\t")
        frames.append(block.select(
            pl.col("line").alias("__line"),
            *(parts.list.get(i, null_on_oob=True).alias(name) for i, name in enumerate(fields)),
            pl.when(parts.list.len() != len(fields)).then(pl.lit(
                f"not {len(fields)} tab-separated fields (line skipped)")).alias("__fields"),
        ))
    return pl.concat(frames)


def empty_reason(*columns: str) -> pl.Expr:
    """'empty <column> (line skipped)' for the first of ``columns`` that is empty."""
    reason = pl.lit(None, dtype=pl.String)
    for column in reversed(columns):
        reason = pl.when(pl.col(column).fill_null("").str.strip_chars() == "").then(
            pl.lit(f"empty {column} (line skipped)")).otherwise(reason)
    return reason


def read_rows(path: Path, split: int, report: BadInputReport) -> pl.DataFrame:
    """The good rows of one of DIEN's sample files: ``user``, ``item``, ``category``,
    ``label``, ``split``, ``row_history`` and ``history_categories`` (lists, oldest first)."""
    frame = tab_fields(path, ROW_FIELDS, report)
    label, label_reason = label_values(frame["label"])
    items = list_column(pl.col("history_items"), LIST_SEPARATOR)
    categories = list_column(pl.col("history_categories"), LIST_SEPARATOR)
    frame = frame.with_columns(label.alias(LABEL), label_reason.alias("__label_reason"),
                               items.alias(ROW_HISTORY), categories.alias("__categories"))
    lengths_differ = pl.col(ROW_HISTORY).list.len() != pl.col("__categories").list.len()
    holes = empty_value(pl.col("history_items"), LIST_SEPARATOR) | empty_value(
        pl.col("history_categories"), LIST_SEPARATOR)
    reason = pl.coalesce(
        pl.col("__fields"), empty_reason("user", "item", "category"), pl.col("__label_reason"),
        pl.when(holes).then(pl.lit("empty value in a history list (line skipped)")),
        pl.when(lengths_differ).then(pl.lit(
            "history items and categories differ in length (line skipped)")),
    )
    frame = skip_rows(frame, reason, path, report)
    if len(frame) == 0:
        example = next((e for e in report.examples if e.startswith(f"{path}:")), "")
        raise DataError(f"{path}: every line is bad input, e.g. {example}")
    return frame.select("user", "item", "category", LABEL,
                        pl.lit(split, dtype=pl.Int8).alias(SPLIT), ROW_HISTORY,
                        pl.col("__categories").alias("history_categories"))


def read_item_info(path: Path, report: BadInputReport) -> pl.DataFrame:
    """``item`` and ``category`` of every good line of item-info, one row an item."""
    frame = tab_fields(path, ITEM_FIELDS, report)
    repeated = pl.col("item").is_duplicated() & ~pl.col("item").is_first_distinct()
    reason = pl.coalesce(
        pl.col("__fields"), empty_reason("item", "category"),
        pl.when(repeated).then(pl.lit("item listed again in item-info (first kept)")))
    return skip_rows(frame, reason, path, report).select(*ITEM_FIELDS)


def read(
    *,
    path: str | Path,
    valid: str | Path | None = None,
    valid_fraction: float = DEFAULT_VALID_FRACTION,
    report: BadInputReport | None = None,
) -> RawData:
    """Read DIEN's files in ``path`` (module docstring): the train and test rows, ``valid``
    rows or a ``valid_fraction`` of the train file's users for validation, and item-info
    where present."""
    report = BadInputReport() if report is None else report
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (DIEN's {TRAIN_FILE}, {TEST_FILE} and "
                        f"{ITEM_FILE})")
    files = {TRAIN: folder / TRAIN_FILE, TEST: folder / TEST_FILE}
    if valid is not None:
        files[VALID] = Path(valid)
    options = {"split": "files" if valid is not None else "valid-users", "negatives": 0}
    if valid is None:
        options["valid_fraction"] = valid_fraction
    check_options(options)
    rows = pl.concat([read_rows(file, split, report) for split, file in sorted(files.items())])
    targets = rows.select("item", "category")
    history = rows.select(pl.col(ROW_HISTORY).alias("item"),
                          pl.col("history_categories").alias("category")).explode(
        "item", "category").drop_nulls()
    info = folder / ITEM_FILE
    known = read_item_info(info, report) if info.is_file() else None
    notes: list[str] = [] if known is not None else [
        f"{info} not found: every item's category is the one the rows give it"]
    table = item_table(pl.concat([targets, history]), known, notes, ITEM_FILE)
    origin = {"source": NAME, "path": str(folder),
              "files": [str(file) for _, file in sorted(files.items())]
              + ([str(info)] if known is not None else []),
              "labels": options}
    return RawData(interactions=rows.drop("category", "history_categories"), items=table,
                   attributes=ATTRIBUTES, origin=origin, notes=notes)
