"""Times of a log's rows: numbers, dates, and text read with a format, shared by the sources
that read logs (table). Dates like 01/02/2020 are read day first unless more of them fit only
month first; the note that says which reading was used goes to the store's notes.
"""

from __future__ import annotations

import calendar
from pathlib import Path

import polars as pl

from camn.data.raw import DataError
from camn.data.reading import polars_reason

DAY_FIRST, MONTH_FIRST = "%d/%m/%Y", "%m/%d/%Y"
SLASH_DATE = r"^(\d{1,2})/(\d{1,2})/(\d{4})(.*)$"  # 01/02/2020, maybe a time after it


def parse_time(
    column: pl.Series, path: Path, time_format: str | None = None
) -> tuple[pl.Series, str | None]:
    """Times as numbers: numeric columns as they are, dates as epoch microseconds, text parsed;
    and a note when text dates could be read two ways (day or month first).

    A value that is not a finite number or a date (or, with ``time_format``, does not match it)
    becomes null; a column of another type (lists, say), or ``time_format`` given for a column
    that does not hold text, is a :class:`DataError`.
    """
    if time_format is not None and column.dtype != pl.String:
        raise DataError(
            f"{path}: column {column.name!r} holds {column.dtype} values, not text:"
            " --time-format applies to times written as text; drop it"
        )
    if column.dtype.is_float():
        return pl.select(pl.when(column.is_finite()).then(column)).to_series(), None
    if column.dtype.is_numeric():
        return column, None
    try:
        if column.dtype.is_temporal():
            return column.cast(pl.Datetime("us")).dt.epoch("us"), None
        text = column.cast(pl.String).str.strip_chars()
    except pl.exceptions.PolarsError:
        raise DataError(
            f"{path}: column {column.name!r} ({column.dtype}) cannot be read as times"
            " (numbers, dates or text)"
        ) from None
    if time_format is not None:
        return to_epoch(text, time_format), None
    as_float = text.cast(pl.Float64, strict=False)
    as_float = pl.select(pl.when(as_float.is_finite()).then(as_float)).to_series()
    candidates = [text.cast(pl.Int64, strict=False), as_float]
    text, note = slash_dates_as_iso(text)
    try:
        dates = text.str.to_datetime(strict=False, time_unit="us").dt.epoch("us")
    except pl.exceptions.PolarsError:  # no date format could be inferred: the column is not dates
        dates = pl.Series(text.name, [None] * len(text), dtype=pl.Int64)
    candidates.append(dates)
    best = max(candidates, key=lambda c: len(c) - c.null_count())  # first wins ties
    return best, note if best is dates else None


def to_epoch(text: pl.Series, time_format: str) -> pl.Series:
    """Epoch microseconds of ``text`` read with ``time_format``; null where it does not fit."""
    try:
        dates = text.str.to_datetime(format=time_format, strict=False, time_unit="us")
    except pl.exceptions.PolarsError as error:
        raise DataError(
            f"--time-format {time_format!r} cannot be used ({polars_reason(error)})"
        ) from None
    return dates.dt.epoch("us")


def slash_dates_as_iso(text: pl.Series) -> tuple[pl.Series, str | None]:
    """``text`` with its dates ``D/M/YYYY`` or ``M/D/YYYY`` rewritten as ``YYYY-MM-DD`` (what
    follows the date kept), and a note on the reading when some could be read either way.

    Day first, unless more dates fit month first only (a first number above 12 fits day first
    only, a second number above 12 month first only); a date the reading does not fit becomes
    null, an unreadable time.
    """
    parts = text.str.extract_groups(SLASH_DATE).struct.rename_fields(
        ["first", "second", "year", "rest"]).struct.unnest()
    dated = parts["first"].is_not_null()
    if not dated.any():
        return text, None
    first, second = parts["first"].cast(pl.Int32), parts["second"].cast(pl.Int32)
    day_only = int((first > 12).sum())
    month_only = int((second > 12).sum())
    either = dated & (first <= 12) & (second <= 12)
    month_first = month_only > day_only
    day, month = ("second", "first") if month_first else ("first", "second")
    rewritten = parts.with_columns(text=text).select(
        pl.when(pl.col(month).cast(pl.Int32).is_between(1, 12))
        .then(pl.concat_str(
            "year", pl.lit("-"), pl.col(month).str.zfill(2), pl.lit("-"),
            pl.col(day).str.zfill(2), "rest",
        ))
        .when(pl.col("first").is_null()).then("text")  # not a slash date: as written
    ).to_series()
    if not either.any():
        return rewritten.alias(text.name), None
    example = parts.filter(either).row(0, named=True)
    shown = f"{example['first']}/{example['second']}/{example['year']}"
    date = f"{int(example[day])} {calendar.month_name[int(example[month])]} {example['year']}"
    reading, other = ("month first", DAY_FIRST) if month_first else ("day first", MONTH_FIRST)
    evidence = (f"{day_only:,} other date(s) fit only day first, {month_only:,} only month first"
                if day_only + month_only else "no date tells the two readings apart")
    timed = (parts["rest"].str.strip_chars() != "").any()
    with_time = f" followed by the time's fields, e.g. '{other} %H:%M'" if timed else ""
    note = (
        f"time column {text.name!r}: {int(either.sum()):,} date(s) such as {shown!r} fit both"
        f" readings and were read {reading} ({shown} = {date}); {evidence}; to read them the"
        f" other way pass --time-format '{other}'{with_time}"
    )
    return rewritten.alias(text.name), note


def time_unit(column: pl.Series, parsed: pl.Series) -> str:
    """``us`` when ``parsed`` read the time ``column`` as dates (epoch microseconds), else
    ``s`` (numbers, taken as Unix seconds where a date is compared with them)."""
    if column.dtype.is_temporal():
        return "us"
    if column.dtype != pl.String:
        return "s"
    numbers = column.str.strip_chars().cast(pl.Float64, strict=False)
    return "s" if numbers.null_count() <= parsed.null_count() else "us"
