"""Labels of logged impressions, shared by the sources that read them (table, movielens, amazon).

A labelled row is an impression: its ``label`` (1 click, 0 non-click) comes from a 0/1 column
(``--label-col``) or a SQL expression over the row that polars evaluates (``--label``, e.g.
``rating >= 4`` or ``behavior IN ('cart', 'buy')``); ``--history-where`` (default: the clicks,
``label = 1``) says which rows enter the users' histories. Text columns that an expression names
are read as numbers where every value is one. A label that is null, NaN or not 0/1 is bad
input: counted under its reason with its file and line, and the row skipped.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from camn.data.impressions import HISTORY, LABEL
from camn.data.raw import BadInputReport, DataError
from camn.data.reading import column_list, null_reason, polars_reason, skip_rows

TRUE_TEXT, FALSE_TEXT = ["1", "1.0", "true"], ["0", "0.0", "false"]
NUMBER_PROBE = 1000  # a text column's first values, tried as numbers before all of them
LABEL_REASONS = {
    "null": "no label value (row skipped)",
    "nan": "label is NaN (row skipped)",
    "other": "label is not 0 or 1 (row skipped)",
}


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--negatives``, ``--split``, ``--valid-from``, ``--test-from``: for labelled rows."""
    parser.add_argument(
        "--negatives", type=int, default=0, metavar="N",
        help="labelled rows: also N sampled non-clicks per click (items the user has no row "
        "with; default 0: the logged non-clicks only)",
    )
    parser.add_argument(
        "--split", choices=("time", "user"),
        help="labelled rows: split by time (default; valid and test are the impressions from "
        "--valid-from and --test-from on) or by user (80/10/10)",
    )
    parser.add_argument(
        "--valid-from", metavar="WHEN",
        help="with --split time: first time of the validation period, as a fraction of the "
        "time range (default 0.8), a date (2020-01-31; numeric times are read as Unix seconds) "
        "or a time in the column's units",
    )
    parser.add_argument("--test-from", metavar="WHEN",
                        help="with --split time: first time of the test period (default 0.9)")


@dataclass(frozen=True)
class SplitOptions:
    """How labelled impressions are split and completed: ``negatives`` sampled non-clicks per
    click, ``split`` (``time``, the default, or ``user``) and, for ``time``, the first times of
    the validation and test periods (``valid_from``, ``test_from``)."""

    negatives: int = 0
    split: str | None = None
    valid_from: str | None = None
    test_from: str | None = None

    def given(self) -> list[str]:
        """The flags of the options set, e.g. ``['--negatives', '--split']``."""
        return [f"--{name.replace('_', '-')}" for name in ("negatives", "split", "valid_from",
                                                           "test_from") if getattr(self, name)]


def split_options(options: SplitOptions, time_unit: str, files: bool = False) -> dict:
    """``origin["labels"]``: how the rows are split and how many negatives to add."""
    if options.negatives < 0:
        raise DataError(f"--negatives must be 0 or more, got {options.negatives}")
    how = "files" if files else (options.split or "time")
    if how != "time" and (options.valid_from or options.test_from):
        raise DataError("--valid-from and --test-from choose the periods of --split time"
                        + (": the files already give the splits" if files else ""))
    origin = {"split": how, "negatives": options.negatives, "time_unit": time_unit}
    if options.valid_from:
        origin["valid_from"] = options.valid_from
    if options.test_from:
        origin["test_from"] = options.test_from
    return origin


def add_rating_label_arguments(
    parser: argparse.ArgumentParser, what: str
) -> argparse._ArgumentGroup:
    """The "labelled impressions" group of a source of ratings (``what``: "rating",
    "review"): ``--rating-labels T`` and :func:`add_split_arguments`; returned for more."""
    labels = parser.add_argument_group("labelled impressions")
    labels.add_argument(
        "--rating-labels", type=float, metavar="T",
        help=f"every {what} is an impression: a click when its rating is T or more (e.g. 4), a "
        f"logged non-click below (default: every {what} is a click)",
    )
    add_split_arguments(labels)
    return labels


def rating_split_options(rating_labels: float | None, **options: object) -> SplitOptions:
    """The split options of a source of ratings, refused without ``rating_labels``."""
    splits = SplitOptions(**options)
    if rating_labels is None:
        refuse_split_options(splits, "--rating-labels T")
    return splits


def refuse_split_options(options: SplitOptions, labels: str) -> None:
    """A DataError when an option of labelled rows is given without labels (``labels``: the
    option that gives them)."""
    if given := options.given():
        raise DataError(f"{', '.join(given)}: for labelled impressions; pass {labels}")


def rating_labels(frame: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """``frame``'s ratings as labelled impressions: a click (label 1, in the histories) where
    the rating is ``threshold`` or more, a non-click below; the rating column dropped."""
    label = (pl.col("rating") >= threshold).cast(pl.Int8)
    return frame.with_columns(label.alias(LABEL), (label == 1).alias(HISTORY)).drop("rating")


def numeric_text(frame: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """``frame`` with its text columns among ``names`` as numbers where every value is one."""
    cast = []
    for name in names:
        column = frame[name]
        if column.dtype != pl.String or _as_numbers(column.drop_nulls().head(NUMBER_PROBE)) is None:
            continue  # the probe spares a log of text values a cast of every row
        if (number := _as_numbers(column)) is not None:
            cast.append(number)
    return frame.with_columns(cast)


def _as_numbers(column: pl.Series) -> pl.Series | None:
    """A text column as numbers, where every value that is not null reads as one; else None."""
    number = column.str.strip_chars().cast(pl.Float64, strict=False)
    return number if number.null_count() == column.null_count() else None


def expression_columns(expression: str) -> list[str] | None:
    """The columns a SQL ``expression`` reads; None where polars does not parse it (the
    reader then reads every column and :func:`evaluate` says what is wrong)."""
    try:
        return pl.sql_expr(expression).meta.root_names()
    except pl.exceptions.PolarsError:
        return None


def evaluate(frame: pl.DataFrame, expression: str, option: str, path: Path) -> pl.Series:
    """The SQL ``expression`` (of ``option``) evaluated on every row of ``frame``."""
    try:
        parsed = pl.sql_expr(expression)
        names = parsed.meta.root_names()
    except pl.exceptions.PolarsError as error:
        raise DataError(f"{option} {expression!r} is not a SQL expression polars reads "
                        f"({polars_reason(error)})") from None
    available = [c for c in frame.columns if not c.startswith("__")]
    for name in names:
        if name not in available:
            raise DataError(f"{option} {expression!r}: {path} has no column {name!r}; available "
                            f"columns: {column_list(available)}")
    try:
        return numeric_text(frame, names).select(parsed.alias(option)).to_series()
    except pl.exceptions.PolarsError as error:
        raise DataError(f"{option} {expression!r} cannot be evaluated on {path} "
                        f"({polars_reason(error)})") from None


def label_values(column: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(label as Int8, null where bad; the reason of each bad value, null where good) of a
    column of 0/1 values written as numbers, booleans or text."""
    if column.dtype == pl.Boolean or column.dtype.is_numeric():
        value = pl.col("value")
        nan = value.is_nan() if column.dtype.is_float() else pl.lit(False)
        found = pl.DataFrame({"value": column}).select(_label_found(value == 1, value == 0, nan))
    else:
        text = pl.col("value")
        written = column.cast(pl.String).str.strip_chars().str.to_lowercase()
        found = pl.DataFrame({"value": written}).select(_label_found(
            text.is_in(TRUE_TEXT), text.is_in(FALSE_TEXT), text == "nan"))
    return found["label"], found["reason"]


def _label_found(one: pl.Expr, zero: pl.Expr, nan: pl.Expr) -> list[pl.Expr]:
    """The ``label`` and ``reason`` columns of :func:`label_values` from whether each value
    reads as 1, as 0 or as NaN."""
    label = pl.when(one).then(1).when(zero).then(0).otherwise(None).cast(pl.Int8)
    reason = (pl.when(pl.col("value").is_null()).then(pl.lit(LABEL_REASONS["null"]))
              .when(nan).then(pl.lit(LABEL_REASONS["nan"]))
              .when(label.is_null()).then(pl.lit(LABEL_REASONS["other"])))
    return [label.alias("label"), reason.alias("reason")]


def label_columns(
    frame: pl.DataFrame, path: Path, label_col: str | None, label: str | None,
    history_where: str | None,
) -> pl.DataFrame:
    """``__label`` (Int8, null where bad), ``__label_reason`` and ``__history`` (bool) of every
    row of ``frame`` (the file's own columns)."""
    if (label_col is None) == (label is None):
        raise DataError("labelled rows need one of --label-col COL or --label EXPR")
    if label_col is not None:
        if label_col not in frame.columns:
            available = [c for c in frame.columns if not c.startswith("__")]
            raise DataError(f"{path}: no column {label_col!r} (--label-col); available "
                            f"columns: {column_list(available)}")
        values, reasons = label_values(frame[label_col])
    else:
        values, reasons = label_values(evaluate(frame, label, "--label", path))
        reasons = reasons.str.replace("^label", f"--label {label!r}")
    with_label = frame.with_columns(values.alias("__label"))
    if history_where is None:
        history = values == 1
    else:
        named = with_label.with_columns(values.alias(LABEL)) if LABEL not in frame.columns \
            else with_label
        history = evaluate(named, history_where, "--history-where", path).cast(pl.Boolean)
    return with_label.with_columns(reasons.alias("__label_reason"),
                                   history.fill_null(False).alias("__history"))


def labelled(frame: pl.DataFrame) -> pl.DataFrame:
    """The ``__label``/``__history`` columns of a frame's good rows as ``label``/``history``."""
    return frame.rename({"__label": LABEL, "__history": HISTORY})


REPEATED_USER = "user listed again in the user table (first kept)"


def user_rows(frame: pl.DataFrame, path: Path, report: BadInputReport) -> pl.DataFrame:
    """A user table (``user``, the feature columns as text, ``__line``) with one row a user:
    a row without a user, or of a user listed before, is bad input counted with its line."""
    repeated = pl.col("user").is_duplicated() & ~pl.col("user").is_first_distinct()
    reason = pl.when(repeated & pl.col("user").is_not_null()).then(pl.lit(REPEATED_USER))
    return skip_rows(frame, reason.otherwise(null_reason("user")), path, report).drop("__line")


def refuse_user_features(labelled: bool, labels: str) -> None:
    """A DataError when user features are asked for rows without labels (``labels``: the
    option that gives them)."""
    if not labelled:
        raise DataError(f"user features are for labelled impressions for now (a store of clicks "
                        f"takes none): pass {labels}")


def refuse_unlabelled(option: str, labelled: bool, labels: str) -> None:
    """A DataError when ``option``, which only labelled impressions take, is given for rows
    without labels (``labels``: the option that gives them)."""
    if not labelled:
        raise DataError(f"{option} is for labelled impressions for now (a store of clicks takes "
                        f"no side features or bags): pass {labels}")
