"""Reading input files, for the sources and ``camn score``: streaming line readers, delimited
tables, bad-row reporting and the Amazon attribute recipe.

The readers open plain or gzip files (gzip is detected from the magic bytes, not the name) and
hand out complete lines in large blocks, with line numbers, so a source can parse a block at once
and still name the line of a bad record. Every read error becomes a :class:`DataError` naming
the file. Text is UTF-8: a line (or row) holding bytes that are not UTF-8 is bad input, reported
with its line number, never read with replacement characters.
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import math
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl
from tqdm import tqdm

from camn.data.raw import BadInputReport, DataError

GZIP_MAGIC = b"\x1f\x8b"
BLOCK_BYTES = 1 << 24  # 16 MiB of text per block: bounded memory, few Python-level steps
DETECT_BYTES = 1 << 20  # layout detection and headers look at the first MiB, never further
PROGRESS_MIN_BYTES = 1 << 26  # a progress bar for files over 64 MiB (on a terminal)
NOT_UTF8 = "bytes that are not UTF-8 text ({} skipped)"
UNPARSED_FIELD = re.compile(r"could not parse `(.*?)` as dtype", re.DOTALL)  # polars' message
DUPLICATE = re.compile(r"(.*)_duplicated_\d+$", re.DOTALL)  # polars' name for a repeated column
SHOWN_COLUMNS, SHOWN_NAME = 20, 40  # a message lists at most 20 column names, each cut to 40

AMAZON_ATTRIBUTES = [
    "item_id", "category_l2", "category_l3", "category_leaf", "brand", "price_bucket",
]
QUANTILE_BUCKETS = 10  # price (amazon, recbole's recipe) and --bucketize columns: deciles
AMAZON_META_SCHEMA = {
    "item": pl.String, "path": pl.List(pl.String), "brand": pl.String, "price": pl.Float64,
}


def open_binary(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressing it when it starts with the gzip magic."""
    path = Path(path)
    try:
        with path.open("rb") as probe:
            magic = probe.read(2)
        return gzip.open(path, "rb") if magic == GZIP_MAGIC else path.open("rb")
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror or error})") from error


def _read(stream: BinaryIO, size: int, path: Path) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read the file ({error})") from error


def polars_source(path: Path) -> Path | io.BytesIO:
    """What polars reads: the path itself, or the decompressed bytes of a gzip file."""
    with open_binary(path) as stream:
        if not isinstance(stream, gzip.GzipFile):
            return path
        return io.BytesIO(_read(stream, -1, path))


def iter_blocks(path: str | Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
    """Complete lines of ``path`` in blocks of about ``block_bytes`` bytes.

    Yields ``(number of the block's first line, block)``; lines are 1-based and every block
    ends with a newline (one is added after a last line that lacks it). A line longer than a
    block is collected piece by piece and joined once (linear in its length).
    """
    path = Path(path)
    line, pending = 1, []  # pending: the pieces of a line whose end is not read yet
    size = path.stat().st_size if path.is_file() else 0
    with open_binary(path) as stream, tqdm(
        total=size, desc=f"reading {path.name}", unit="B", unit_scale=True, leave=False,
        disable=None if size > PROGRESS_MIN_BYTES else True,
    ) as bar:
        raw = getattr(stream, "fileobj", stream)  # gzip: progress in compressed bytes
        while data := _read(stream, block_bytes, path):
            bar.update(raw.tell() - bar.n)
            cut = data.rfind(b"\n") + 1
            if not cut:
                pending.append(data)
                continue
            block, pending = b"".join([*pending, data[:cut]]), [data[cut:]]
            yield line, block
            line += block.count(b"\n")
    if rest := b"".join(pending):
        yield line, rest + b"\n"


def iter_lines(
    path: str | Path, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[int, bytes]]:
    """Every non-blank line of ``path`` (stripped of surrounding white space), with its number."""
    for first, block in iter_blocks(path, block_bytes):
        for offset, line in enumerate(block.split(b"\n")[:-1]):
            if line := line.strip():
                yield first + offset, line


def first_lines(
    path: str | Path, count: int, max_bytes: int = DETECT_BYTES
) -> list[tuple[int, bytes]]:
    """The first ``count`` non-blank lines of ``path`` that end within its first ``max_bytes``.

    Reads at most ``max_bytes`` bytes (decompressed), whatever the file's size, so telling a
    layout apart or reading a header costs the same on a file of one huge line. Fewer than
    ``count`` lines come back when the others end past ``max_bytes``. An empty file, or one
    whose first ``max_bytes`` hold no complete non-blank line, is a :class:`DataError`.
    """
    with open_binary(path) as stream:
        data = _read(stream, max_bytes, Path(path))
    complete = data if len(data) < max_bytes else data[: data.rfind(b"\n") + 1]
    lines = [
        (number, line.strip())
        for number, line in enumerate(complete.split(b"\n"), start=1)
        if line.strip()
    ][:count]
    if not lines and not data.strip():
        raise DataError(f"{path}: empty file")
    if not lines:
        raise DataError(
            f"{path}: no complete line in the first {max_bytes / 2**20:g} MiB"
            " (expected text with one record a line)"
        )
    return lines


def undecodable_lines(first: int, block: bytes) -> list[int]:
    """Numbers of the lines of ``block`` (first line ``first``) that are not UTF-8 text.

    One decode of the whole block when it is all UTF-8; line by line only when it is not (a
    newline byte is never part of a multi-byte character, so lines can be checked apart).
    """
    try:
        block.decode("utf-8")
        return []
    except UnicodeDecodeError:
        pass
    bad = []
    for offset, line in enumerate(block.split(b"\n")):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(first + offset)
    return bad


def line_blocks(path: Path, encoding: str, report: BadInputReport) -> Iterator[pl.DataFrame]:
    """Non-blank lines of a file in large blocks: ``line`` (1-based number) and ``text``.

    With UTF-8, a line holding other bytes is reported and left out.
    """
    for first, block in iter_blocks(path):
        bad = undecodable_lines(first, block) if encoding == "utf-8" else []
        text = pl.Series("text", [block.decode(encoding, errors="replace")])
        lines = text.str.split("\n").explode().head(-1).str.strip_suffix("\r")
        numbers = np.arange(first, first + len(lines), dtype=np.int64)
        frame = pl.DataFrame({"line": numbers, "text": lines})
        if bad:
            report_rows(report, path, np.array(bad), NOT_UTF8.format("line"))
            frame = frame.filter(~pl.col("line").is_in(bad))
        yield frame.filter(pl.col("text").str.strip_chars() != "")


def report_rows(report: BadInputReport, path: str | Path, rows: np.ndarray, reason: str) -> None:
    """Report bad rows (line numbers) of one file: the first few one by one, the rest at once."""
    head = rows[: report.max_examples]
    for row in head:
        report.bad(path, int(row), reason)
    if len(rows) > len(head):
        report.bad(path, int(rows[len(head)]), reason, count=len(rows) - len(head))


def skip_rows(
    frame: pl.DataFrame, reason: pl.Expr, path: Path, report: BadInputReport
) -> pl.DataFrame:
    """Drop the rows where ``reason`` (a string expression, null = good row) is set, reporting
    them under their reason; with a strict report the first bad row in file order raises."""
    reasons = frame.select(reason).to_series()
    good = reasons.is_null()
    if good.all():
        return frame  # no copy of a log without bad rows
    bad = frame.filter(~good).with_columns(reasons.filter(~good).alias("__reason"))
    bad = bad.sort("__line")
    if report.strict:
        report.bad(path, bad["__line"][0], bad["__reason"][0])
    for (why,), rows in bad.group_by("__reason", maintain_order=True):
        report_rows(report, path, rows["__line"].to_numpy(), why)
    return frame.filter(good)


def null_reason(*columns: str) -> pl.Expr:
    """'no <column> value (row skipped)' for the first of ``columns`` that is null."""
    reason = pl.lit(None, dtype=pl.String)
    for column in reversed(columns):
        reason = pl.when(pl.col(column).is_null()).then(
            pl.lit(f"no {column} value (row skipped)")
        ).otherwise(reason)
    return reason


def column_list(columns: list[str]) -> str:
    """Column names for a message: at most SHOWN_COLUMNS, each cut to SHOWN_NAME characters."""
    shown = [c if len(c) <= SHOWN_NAME else c[: SHOWN_NAME - 3] + "..." for c in columns]
    more = len(shown) - SHOWN_COLUMNS
    return ", ".join(shown[:SHOWN_COLUMNS]) + (f" and {more:,} more" if more > 0 else "")


def polars_reason(error: Exception) -> str:
    """The first line of a polars error, cut short: its advice on polars options is not for a
    camn user, and the line may quote a whole field of the file."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= 120 else line[:117] + "..."


def read_delimited(path: Path, separator: str, quote: str | None, report: BadInputReport
                   ) -> pl.DataFrame:
    """A CSV or TSV file with a header, every column as text, and ``__line``: each row's line.

    polars parses it (``quote`` is the quote character, None for none; gzip is decompressed).
    Bad rows are reported with their line and left out: a row with a value past the header's
    last column, and a row with bytes that are not UTF-8. An empty field is null, and a row
    without any value (a blank line) is left out silently. Line numbers count the line breaks
    inside quoted fields.
    """
    header_line = first_lines(path, 1)[0][0]
    kind = "CSV" if separator == "," else "tab-separated text"
    source = polars_source(path)
    options = {"separator": separator, "quote_char": quote, "infer_schema": False,
               "encoding": "utf8-lossy"}
    long_rows = None
    try:
        try:
            frame = pl.read_csv(source, **options)
        except pl.exceptions.ComputeError as error:
            if "more fields" not in str(error):
                raise
            frame = pl.read_csv(_rewind(source), truncate_ragged_lines=True, **options)
            long_rows = rows_past_header(path, separator, quote, frame.width, len(frame))
    except pl.exceptions.NoDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pl.exceptions.PolarsError, OSError) as error:
        if quote and (field := UNPARSED_FIELD.match(str(error))):
            raise DataError(quote_problem(path, field.group(1))) from None
        raise DataError(f"{path}: cannot read it as {kind} ({polars_reason(error)})") from None
    repeated = [c for c in frame.columns if (m := DUPLICATE.match(c)) and m[1] in frame.columns]
    if repeated:
        name = DUPLICATE.match(repeated[0])[1]
        raise DataError(f"{path}:{header_line}: the header names the column {name!r} twice")
    starts = row_lines(frame, header_line + 1, quoted=quote is not None)
    bad = [(undecodable_rows(frame, starts, path), NOT_UTF8.format("row"))]
    if long_rows is not None:
        too_long = f"more fields than the header's {frame.width} columns (row skipped)"
        bad.append((long_rows, too_long))
    frame = frame.with_columns(__line=starts)
    if any(rows is not None for rows, _ in bad):
        reason = pl.lit(None, dtype=pl.String)
        for rows, why in bad:  # the last set wins
            if rows is not None:
                reason = pl.when(pl.Series(rows)).then(pl.lit(why)).otherwise(reason)
        frame = skip_rows(frame, reason, path, report)
    blank = frame.select(pl.all_horizontal(pl.exclude("__line").is_null())).to_series()
    return frame.filter(~blank) if blank.any() else frame


def quote_problem(path: Path, field: str) -> str:
    """The message for a quoted field that does not end at a separator (a stray or unclosed
    quote), naming the first line that holds the start of that field."""
    start = field.split("\n")[0][:200].encode("utf-8", errors="replace")
    number = next(
        (first + block[: block.find(start)].count(b"\n")
         for first, block in iter_blocks(path) if start in block),
        None,
    )
    where = f"{path}:{number}" if number is not None else str(path)
    shown = start[:40].decode("utf-8", errors="replace")
    return (
        f"{where}: a quoted field does not end at a separator ({shown!r}...): a stray or"
        " unclosed quote; quote the whole field and double the quotes inside it"
    )


def _rewind(source: Path | io.BytesIO) -> Path | io.BytesIO:
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return source


def row_lines(frame: pl.DataFrame, first: int, quoted: bool) -> np.ndarray:
    """(rows,) the line each row starts on: ``first``, then one line a row plus the line
    breaks inside the row's quoted fields (polars keeps blank lines as rows of nulls)."""
    starts = np.arange(first, first + len(frame), dtype=np.int64)
    if not quoted or frame.width == 0:
        return starts
    breaks = frame.select(pl.sum_horizontal(
        pl.all().str.count_matches("\n", literal=True).fill_null(0)
    )).to_series().to_numpy().astype(np.int64)
    return starts + np.cumsum(breaks) - breaks


def undecodable_rows(frame: pl.DataFrame, starts: np.ndarray, path: Path) -> np.ndarray | None:
    """(rows,) bool: rows with bytes that are not UTF-8, or None when there is none.

    polars reads such bytes as U+FFFD; only when one is found is the file scanned for the
    lines that really hold bad bytes (a U+FFFD written in the file is a valid character).
    """
    if frame.width == 0:
        return None
    replaced = frame.select(pl.any_horizontal(
        pl.all().str.contains("\ufffd", literal=True).fill_null(False)
    )).to_series().to_numpy()
    if not replaced.any():
        return None
    bad_lines = np.array(
        [n for first, block in iter_blocks(path) for n in undecodable_lines(first, block)],
        dtype=np.int64,
    )
    ends = np.append(starts[1:], np.iinfo(np.int64).max)  # a row ends where the next starts
    inside = np.searchsorted(bad_lines, ends) > np.searchsorted(bad_lines, starts)
    hit = replaced & inside
    return hit if hit.any() else None


def rows_past_header(
    path: Path, separator: str, quote: str | None, width: int, rows: int
) -> np.ndarray:
    """(rows,) bool: the data rows with a value past column ``width`` (the header's).

    The slow path, run only when polars found a row longer than the header: Python's csv
    module reads the file again and counts each row's fields (empty fields past the header,
    as after a trailing separator, carry nothing and are accepted). Its rows must line up
    with polars' one for one, which is checked.
    """
    limit = csv.field_size_limit(sys.maxsize)  # a huge field is data here, not an error
    try:
        with open_binary(path) as raw, io.TextIOWrapper(
            raw, encoding="utf-8", errors="replace", newline=""
        ) as text:
            reader = csv.reader(
                text, delimiter=separator, quotechar=quote or '"',
                quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
            )
            header = next((row for row in reader if row), None)
            long_rows = [any(row[width:]) for row in reader] if header else []
    except (csv.Error, UnicodeError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read the file ({error})") from None
    finally:
        csv.field_size_limit(limit)
    if len(long_rows) != rows:
        raise DataError(
            f"{path}: some rows have more fields than the header ({width}) and cannot be"
            " located (check the quoting)"
        )
    return np.array(long_rows, dtype=bool)


def parse_price(value: object) -> float | None:
    """A price as a float: numbers as they are, strings like "$1,299.99" without "$" and ",".

    Anything else (a range "$5 - $9", an empty string, a negative or non-finite number) is None.
    """
    if isinstance(value, str):
        value = value.strip().removeprefix("$").replace(",", "")
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def quantile_edges(reference: np.ndarray) -> np.ndarray:
    """The ``QUANTILE_BUCKETS - 1`` inner quantiles of ``reference``: the edges of its deciles."""
    return np.quantile(reference, np.arange(1, QUANTILE_BUCKETS) / QUANTILE_BUCKETS)


def quantile_buckets(values: pl.Series, reference: np.ndarray) -> pl.Series:
    """``"q0"`` .. ``"q9"``: the decile of each value among ``reference`` (its 9 inner
    quantiles are the bucket edges; a value equal to an edge goes to the upper bucket); null
    stays null."""
    if len(reference) == 0:
        return pl.Series(values.name, [None] * len(values), dtype=pl.String)
    bucket = np.searchsorted(quantile_edges(reference), values.fill_null(0.0).to_numpy(),
                             side="right")
    labels = pl.Series(values.name, np.char.add("q", bucket.astype(str)), dtype=pl.String)
    return pl.select(pl.when(values.is_not_null()).then(labels)).to_series().alias(values.name)


def bucket_note(name: str, reference: int, total: int, value: str) -> str:
    """The note that says how a column was bucketed: ``reference`` of the ``total`` items of
    the interactions have ``value`` (``"a price"``, say); the others are unknown."""
    return (
        f"{name}: {QUANTILE_BUCKETS} quantile buckets over the {reference:,} items of the"
        f" interactions that have {value}; {total - reference:,} without (unknown)"
    )


def bucketize(
    frame: pl.DataFrame, names: list[str], item: str, used_items: pl.Series, path: Path,
    report: BadInputReport,
) -> tuple[pl.DataFrame, list[str]]:
    """``--bucketize``: each column of ``names`` (text) replaced by the decile of its number
    among the items of ``used_items`` (:func:`quantile_buckets`), and a note each.

    ``frame`` holds the ``item`` column, the text columns and ``__line``. A value that is not a
    finite number is bad input, reported with its line, and becomes unknown; so does an empty one
    (not reported).
    """
    notes = []
    used = frame[item].is_in(used_items.implode())
    for name in names:
        text = frame[name].str.strip_chars()
        number = text.cast(pl.Float64, strict=False)
        number = pl.select(pl.when(number.is_finite()).then(number)).to_series()
        not_a_number = number.is_null() & text.is_not_null() & (text != "")
        report_rows(report, path, frame["__line"].filter(not_a_number).to_numpy(),
                    f"{name} is not a number, which --bucketize needs (set to unknown)")
        reference = number.filter(used & number.is_not_null())
        frame = frame.with_columns(quantile_buckets(number, reference.to_numpy()).alias(name))
        notes.append(bucket_note(name, len(reference), len(used_items), "a number"))
    return frame, notes


def parse_bucketize(text: str) -> list[str]:
    """The columns of ``--bucketize COL[,COL...]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def check_bucketize(columns: list[str], attributes: list[str],
                    numeric: list[str] | tuple[str, ...] | None = None) -> None:
    """``--bucketize`` names attribute columns only (or, where ``numeric`` is given, numeric
    features too)."""
    stray = [column for column in columns
             if column not in attributes and column not in (numeric or ())]
    if stray:
        among, kinds = f"--attributes ({', '.join(attributes) or 'none'})", "attribute"
        if numeric is not None:
            among += f" or --numeric ({', '.join(numeric) or 'none'})"
            kinds = "attribute or numeric"
        raise DataError(
            f"--bucketize {','.join(columns)}: {', '.join(map(repr, stray))} is not among"
            f" {among}; --bucketize names {kinds} columns to put into buckets")


def map_unique(series: pl.Series, function, dtype: pl.DataType) -> pl.Series:
    """``function`` applied to each distinct value of ``series`` once, then broadcast back."""
    distinct = series.unique()
    lookup = pl.DataFrame(
        {"value": distinct, "out": pl.Series([function(v) for v in distinct], dtype=dtype)}
    )
    frame = pl.DataFrame({"value": series}).join(lookup, on="value", how="left",
                                                  maintain_order="left")
    return frame["out"].alias(series.name)


def unescape_fully(text: str) -> str:
    """``html.unescape`` until the text no longer changes."""
    while (plain := html.unescape(text)) != text:
        text = plain
    return text


def unescape_html(series: pl.Series) -> pl.Series:
    """Text with its HTML character references replaced (``Burt&#39;s`` -> ``Burt's``,
    ``&amp;`` -> ``&``, ``Cr&egrave;me`` -> ``Crème``), as ``html.unescape`` reads them, until
    none is left: text escaped twice (``Kirk&amp;#39;s``, in McAuley's metadata) is read whole.

    ``series`` is String or List(String) (each element unescaped). The unescaping runs once
    per distinct value that holds a ``&``; the column is then rewritten by one vectorised
    replace, so the cost does not grow with the number of rows.
    """
    is_list = series.dtype == pl.List(pl.String)
    values = (series.explode() if is_list else series).drop_nulls().unique()
    escaped = values.filter(values.str.contains("&", literal=True)).to_list()
    plain = [unescape_fully(value) for value in escaped]
    changed = [(old, new) for old, new in zip(escaped, plain, strict=True) if old != new]
    if not changed:
        return series
    old, new = (list(pair) for pair in zip(*changed, strict=True))
    if is_list:
        return series.list.eval(pl.element().replace(old, new))
    return series.replace(old, new)


def amazon_items(meta: pl.DataFrame, used_items: pl.Series) -> tuple[pl.DataFrame, list[str]]:
    """The Amazon attribute recipe, shared by the amazon and recbole sources.

    ``meta`` has the columns of :data:`AMAZON_META_SCHEMA`: ``path`` is the item's first category
    path, root first (e.g. ``['Beauty', 'Makeup', 'Face', 'Concealers & Neutralizers']``). The
    attributes (k = 6, :data:`AMAZON_ATTRIBUTES`): ``category_l2`` = path[1]; ``category_l3`` =
    path[1] + "/" + path[2], so equal level-3 names under different parents differ;
    ``category_leaf`` = the whole path joined by "/"; ``brand`` (white space stripped); and
    ``price_bucket``, the decile ("q0".."q9") of the price among the priced items that occur in
    ``used_items``. A missing level, an empty brand or a missing price is null (unknown).
    The first row of a repeated item wins. Category names and brands are read with their HTML
    character references unescaped (McAuley's metadata writes ``Burt&#39;s Bees``, ``Bath &amp;
    Body Works``). Returns the items table and a note on the buckets.
    """
    meta = meta.unique(subset="item", keep="first", maintain_order=True)
    meta = meta.with_columns(path=unescape_html(meta["path"]), brand=unescape_html(meta["brand"]))
    path = pl.col("path")
    depth = path.list.len().fill_null(0)
    level = [path.list.get(i, null_on_oob=True) for i in (1, 2)]
    brand = pl.col("brand").str.strip_chars()
    reference = meta.filter(pl.col("item").is_in(used_items.implode()))["price"].drop_nulls()
    items = meta.select(
        "item",
        category_l2=pl.when(depth >= 2).then(level[0]),
        category_l3=pl.when(depth >= 3).then(pl.concat_str(level[0], pl.lit("/"), level[1])),
        category_leaf=pl.when(depth >= 2).then(path.list.join("/")),
        brand=pl.when(brand != "").then(brand),
        price_bucket=quantile_buckets(meta["price"], reference.to_numpy()),
    )
    note = bucket_note("price_bucket", len(reference), len(used_items), "a price")
    return items, [note]
