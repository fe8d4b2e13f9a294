"""The table source's rows that carry their own history (``--history-col``), as BARS/FuxiCTR's
CSVs are laid out: each labelled row's history read from the row itself, oldest first, the
item column's history and, for an attribute column of the row, its history alongside, position
by position (:mod:`camn.data.row_histories` builds the store). Read from
:func:`camn.data.sources.table.read`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from camn.data import row_histories
from camn.data.features import NUMERIC
from camn.data.impressions import LABEL, SPLIT
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.reading import null_reason, skip_rows
from camn.data.sources import _labels
from camn.data.sources._files import (
    as_strings,
    file_format,
    is_labelled,
    read_items,
    read_table,
    require_columns,
    side_columns,
)


@dataclass(frozen=True)
class HistoryColumns:
    """``--history-col``: the column of the items' history, and the attribute columns of the
    row read from the rows, each with its history column."""

    items: str
    attributes: dict[str, str]

    @classmethod
    def parse(cls, text: str, item_col: str) -> HistoryColumns:
        """``HIST[,COL=HIST...]``: one HIST alone (the items'), the others COL=HIST."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        bare = [p for p in parts if "=" not in p]
        pairs = dict(tuple(q.strip() for q in p.split("=", 1)) for p in parts if "=" in p)
        if len(bare) != 1 or not all(pairs) or not all(pairs.values()):
            raise DataError(f"--history-col {text!r}: name the items' history column once, and "
                            "each attribute as COL=HIST, e.g. item_history,cate_id=cate_history")
        if item_col in pairs:
            raise DataError(f"--history-col {text!r}: the item column {item_col!r} takes the "
                            "history column alone (without COL=)")
        return cls(bare[0], pairs)

    @property
    def lists(self) -> dict[str, str]:
        """Every history column, keyed by the row column it follows ("" for the item's)."""
        return {"": self.items, **self.attributes}


def refuse_with_history(label_col: str | None, label: str | None,
                        splits: _labels.SplitOptions, history_where: str | None,
                        time_format: str | None) -> None:
    """A DataError for an option that rows carrying their history cannot take."""
    if not is_labelled(label_col, label):
        raise DataError("--history-col reads labelled rows: pass --label-col COL or --label EXPR")
    given = [flag for flag, value in (("--history-where", history_where),
                                      ("--time-format", time_format),
                                      ("--negatives", splits.negatives),
                                      ("--valid-from", splits.valid_from),
                                      ("--test-from", splits.test_from),
                                      ("--split time", splits.split == "time")) if value]
    if given:
        raise DataError(f"{', '.join(given)}: not for rows that carry their history "
                        "(--history-col): they hold no times, and their history is their own")


def history_reasons(columns: HistoryColumns, separator: str) -> list[pl.Expr]:
    """Why a row's history columns cannot be read: an empty value in one, lengths that differ."""
    reasons = [pl.when(row_histories.empty_value(pl.col(f"__text:{name}"), separator)).then(
        pl.lit(f"empty value in history column {hist!r} (row skipped)"))
        for name, hist in columns.lists.items()]
    for name, hist in columns.attributes.items():
        differ = pl.col(f"__list:{name}").list.len() != pl.col("__list:").list.len()
        reasons.append(pl.when(differ).then(pl.lit(
            f"history columns {columns.items!r} and {hist!r} differ in length (row skipped)")))
    return reasons


def read_history_file(
    path: Path, split: int, columns: HistoryColumns, separator: str, report: BadInputReport,
    *, user_col: str, item_col: str, label_col: str | None, label: str | None,
    context: list[str] | tuple[str, ...], numeric: list[str] | tuple[str, ...],
    format: str | None,
) -> pl.DataFrame:
    """The good rows of one file of rows that carry their history: ``user``, ``item``, the
    attribute columns, ``label``, ``split``, side columns, ``row_history`` and the attributes'
    history lists (``__list:<column>``)."""
    frame = read_table(path, file_format(path, format), report)
    require_columns(frame, [user_col, item_col, *columns.attributes,
                            *columns.lists.values()], path)
    frame = _labels.label_columns(frame, path, label_col, label, None)
    side = side_columns(frame, path, context, numeric)
    texts = {name: as_strings(frame[hist], path) for name, hist in columns.lists.items()}
    frame = frame.select(
        as_strings(frame[user_col], path).alias("user"),
        as_strings(frame[item_col], path).alias("item"),
        *(as_strings(frame[name], path).alias(name) for name in columns.attributes),
        *(text.alias(f"__text:{name}") for name, text in texts.items()),
        "__label", "__label_reason", *side, "__line",
    ).with_columns(row_histories.list_column(pl.col(f"__text:{name}"), separator)
                   .alias(f"__list:{name}") for name in texts)
    numbers = [pl.when(pl.col(NUMERIC + name).is_null()).then(
        pl.lit(f"numeric feature {name!r} is not a number (row skipped)")) for name in numeric]
    reason = pl.coalesce(null_reason("user", "item"), pl.col("__label_reason"), *numbers,
                         *history_reasons(columns, separator))
    frame = skip_rows(frame, reason, path, report)
    if len(frame) == 0:
        example = next((e for e in report.examples if e.startswith(f"{path}:")), "")
        raise DataError(f"{path}: every row is bad input, e.g. {example}")
    return frame.drop("__line", "__label_reason", *(f"__text:{n}" for n in columns.lists)).rename(
        {"__label": LABEL, "__list:": row_histories.ROW_HISTORY}).with_columns(
        pl.lit(split, dtype=pl.Int8).alias(SPLIT))


def read_history_rows(
    files: list[Path], columns: HistoryColumns, separator: str,
    splits: _labels.SplitOptions, report: BadInputReport, **reading: object,
) -> RawData:
    """Rows that carry their history, from ``files`` (the log, or its train, validation and
    test files), read by :func:`read_history_file`; their items' attributes from the rows."""
    if not separator:
        raise DataError("--history-sep must not be empty")
    rows = pl.concat([read_history_file(path, split, columns, separator, report, **reading)
                      for split, path in enumerate(files)], how="vertical_relaxed")
    attributes = list(columns.attributes)
    targets = rows.select("item", *attributes)
    history = rows.select(
        pl.col(row_histories.ROW_HISTORY).alias("item"),
        *(pl.col(f"__list:{name}").alias(name) for name in attributes),
    ).explode("item", *attributes).drop_nulls("item")
    notes: list[str] = []
    table = row_histories.item_table(pl.concat([targets, history]), None, notes)
    options = {"split": "files" if len(files) > 1 else splits.split or "user", "negatives": 0}
    row_histories.check_options(options)
    item_col = str(reading["item_col"])
    origin = {
        "source": "table", "files": [str(path) for path in files],
        "columns": {"user": reading["user_col"], "item": item_col},
        "history_columns": {item_col: columns.items, **columns.attributes},
        "history_sep": separator, "labels": options | {
            key: str(reading[key]) for key in ("label_col", "label") if reading[key]},
    }
    return RawData(
        interactions=rows.drop(*attributes, *(f"__list:{n}" for n in attributes)),
        items=table, attributes=[item_col, *attributes], origin=origin, notes=notes)


def with_items_file(
    raw: RawData, items: Path | None, items_col: str, names: list[str], fmt: str | None,
    buckets: list[str] | tuple[str, ...], report: BadInputReport,
    users: pl.DataFrame | None, separators: dict[str, str],
) -> RawData:
    """``raw`` (rows that carry their history) with the ``names`` attributes of the items file
    ``items`` after those of the rows, the user table ``users`` and the multi-valued
    attributes' ``separators``."""
    raw.users = users
    if separators:
        raw.origin["multi_valued"] = separators
    if items is None:
        return raw
    clash = [name for name in names if name in raw.attributes]
    if clash:
        raise DataError(f"--attributes {','.join(clash)}: read from the rows by --history-col "
                        "already; name each attribute once")
    table, notes = read_items(items, items_col, names, fmt, buckets, report, raw.items["item"])
    raw.items = raw.items.join(table, on="item", how="left", maintain_order="left")
    missing = raw.items.filter(~pl.col("item").is_in(table["item"].implode())).height
    if missing:
        notes.append(f"{missing:,} item(s) of the rows have no row in {items} (their "
                     f"{', '.join(names)} unknown)")
    raw.attributes += names
    raw.notes += notes
    raw.origin["files"].append(str(items))
    return raw
