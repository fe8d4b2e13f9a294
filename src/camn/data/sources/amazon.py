"""McAuley's Amazon review data, 2014 and 2018 releases, plain or gzip.

Reviews: one JSON object a line (``reviewerID``, ``asin``, ``unixReviewTime``, other fields
ignored), in both releases. Metadata: one Python-literal dict a line in 2014 (``categories`` a list
of category paths), JSON in 2018 (``category`` one flat path, ``price`` a string like "$12.99").
The release is recognised from the metadata's content, not from the file names.

Reviews are read streaming, in blocks of lines parsed at once by polars; a block with a bad line is
parsed again line by line so the line can be reported. Only the user, item and time of each review
are kept (Books 2014: 22.5 M reviews, about 9 GB of text). The metadata is read line by line and a
line is parsed only when its asin occurs in the reviews (lines of other items are not checked).
A review line must be UTF-8 text (JSON is); so must a metadata line, where bytes in a field that
camn does not read may pass unnoticed.

``--rating-labels T`` reads each review's ``overall`` rating too: every review is then a labelled
impression, a click where the rating is T or more, a logged non-click below
(:mod:`camn.data.impressions`); a review without a numeric rating is bad input.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import math
import re
from pathlib import Path

import polars as pl

from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.reading import (
    AMAZON_ATTRIBUTES,
    AMAZON_META_SCHEMA,
    NOT_UTF8,
    amazon_items,
    first_lines,
    iter_blocks,
    iter_lines,
    parse_price,
)
from camn.data.sources import _labels

NAME = "amazon"
HELP = "McAuley's Amazon reviews + metadata (2014 or 2018 release, .json or .json.gz)"

REVIEW_FIELDS = {"reviewerID": "user", "asin": "item", "unixReviewTime": "time"}
REVIEW_SCHEMA = {"reviewerID": pl.String, "asin": pl.String, "unixReviewTime": pl.Int64}
RATING_FIELD, RATING_TYPE = "overall", pl.Float64
LAYOUTS = {"literal": "mcauley2014", "json": "mcauley2018"}
ASIN_PATTERNS = {  # the asin of a metadata line without parsing the whole line
    "literal": re.compile(rb"'asin': '([^'\\]*)'"),
    "json": re.compile(rb'"asin":\s*"([^"\\]*)"'),
}
DETECT_LINES = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reviews", required=True, help="reviews file (.json or .json.gz)")
    parser.add_argument("--meta", required=True, help="metadata file (meta_<Category>.json[.gz])")
    _labels.add_rating_label_arguments(parser, "review")


def read(
    *,
    reviews: str | Path,
    meta: str | Path,
    rating_labels: float | None = None,
    negatives: int = 0,
    split: str | None = None,
    valid_from: str | None = None,
    test_from: str | None = None,
    report: BadInputReport | None = None,
) -> RawData:
    """Read the reviews and the metadata of their items into :class:`RawData` (k = 6); with
    ``rating_labels`` every review is a labelled impression, split and completed with
    ``negatives`` as :class:`~camn.data.sources._labels.SplitOptions` says."""
    report = BadInputReport() if report is None else report
    splits = _labels.rating_split_options(rating_labels, negatives=negatives, split=split,
                                          valid_from=valid_from, test_from=test_from)
    labelled = rating_labels is not None
    reviews, meta_path = Path(reviews), Path(meta)
    check_reviews_layout(reviews)
    layout = detect_meta_layout(meta_path)
    interactions = read_reviews(reviews, report, ratings=labelled)
    used = interactions["item"].unique()
    meta = read_meta(meta_path, layout, set(used.to_list()), report)
    items, notes = amazon_items(meta, used)
    origin = {"source": NAME, "layout": LAYOUTS[layout], "reviews": str(reviews),
              "meta": str(meta_path)}
    if labelled:
        interactions = _labels.rating_labels(interactions, rating_labels)
        origin["labels"] = _labels.split_options(splits, "s") | {"rating_labels": rating_labels}
    return RawData(interactions, items, list(AMAZON_ATTRIBUTES), origin, notes)


def _as_dict(line: bytes, parse) -> dict | None:
    try:
        record = parse(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _literal(line: bytes) -> object:
    return ast.literal_eval(line.decode("utf-8"))


def _literal_fields(line: bytes) -> object:
    """A 2014 metadata line with only the fields the recipe needs, each parsed from its own text.

    Parsing a whole line (with its long ``related`` and ``description``) is most of the cost of
    reading the metadata. Only the first category path is kept. A line that does not look like a
    complete dict, or whose field is written in an unexpected way, is parsed whole instead.
    """
    if not (line.startswith(b"{") and line.endswith(b"}")):
        return _literal(line)
    record: dict = {}
    for key, pattern in LITERAL_FIELDS.items():
        match = pattern.search(line)
        if match is None:
            if b"'%s': " % key.encode() in line:
                return _literal(line)
            continue
        value = match.group(1)
        try:
            if key == "price":
                record[key] = float(value)
            elif key == "categories":
                record[key] = [[_unquote(s) for s in STRING.findall(value)]]
            else:
                record[key] = _unquote(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return _literal(line)
    return record


def _unquote(token: bytes) -> str:
    if b"\\" in token:
        return ast.literal_eval(token.decode("utf-8"))
    return token[1:-1].decode("utf-8")


_STRING = rb"'(?:[^'\\]|\\.)*'" + rb'|"(?:[^"\\]|\\.)*"'
STRING = re.compile(_STRING)
LITERAL_FIELDS = {  # each field's value, after "{" or ", " and up to the next "," or "}"
    "asin": re.compile(rb"[{,] ?'asin': (" + _STRING + rb")[,}]"),
    "price": re.compile(rb"[{,] ?'price': ([-+0-9.eE]+)[,}]"),
    "brand": re.compile(rb"[{,] ?'brand': (" + _STRING + rb")[,}]"),
    # the first path of the list of paths: strings separated by ", " only
    "categories": re.compile(
        rb"[{,] ?'categories': \[\[((?:(?:" + _STRING + rb")(?:, )?)*)\][,\]]"
    ),
}
PARSERS = {"json": json.loads, "literal": _literal}  # whole lines, to recognise the layout
FAST_PARSERS = {"json": json.loads, "literal": _literal_fields}


def check_reviews_layout(path: Path) -> None:
    """Raise a :class:`DataError` unless the first lines hold a JSON review with its fields."""
    lines = first_lines(path, DETECT_LINES)
    for _, line in lines:
        record = _as_dict(line, json.loads)
        if record is not None and "reviewerID" in record and "asin" in record:
            return
    raise DataError(
        f"{path}:{lines[0][0]}: unknown layout: expected McAuley's reviews, one JSON object a line"
        f" with {', '.join(REVIEW_FIELDS)}"
    )


def detect_meta_layout(path: Path) -> str:
    """``"json"`` (2018) or ``"literal"`` (2014, Python-literal dicts), from the first lines."""
    lines = first_lines(path, DETECT_LINES)
    for _, line in lines:
        for layout, parse in PARSERS.items():
            record = _as_dict(line, parse)
            if record is not None and "asin" in record:
                return layout
    raise DataError(
        f"{path}:{lines[0][0]}: unknown layout: expected McAuley's metadata, one JSON object or"
        " Python-literal dict with an 'asin' a line"
    )


def read_reviews(path: Path, report: BadInputReport, ratings: bool = False) -> pl.DataFrame:
    """Columns user (str), item (str), time (i64) (and with ``ratings`` rating (f64)) of
    every review, in file order."""
    frames = [_parse_block(path, first, block, report, ratings)
              for first, block in iter_blocks(path)]
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        example = next((e for e in report.examples if e.startswith(f"{path}:")), None)
        raise DataError(f"{path}: no readable review" + (f", e.g. {example}" if example else ""))
    return pl.concat(frames, rechunk=False)


def review_schema(ratings: bool) -> dict:
    """The fields read from a review line and their types."""
    return REVIEW_SCHEMA | ({RATING_FIELD: RATING_TYPE} if ratings else {})


def _parse_block(
    path: Path, first: int, block: bytes, report: BadInputReport, ratings: bool = False
) -> pl.DataFrame:
    schema = review_schema(ratings)
    try:
        frame = pl.read_ndjson(io.BytesIO(block), schema=schema)
    except pl.exceptions.PolarsError:
        frame = None
    if (frame is None or len(frame) != block.count(b"\n") or frame.null_count().sum_horizontal()[0]
            or (ratings and not frame[RATING_FIELD].is_finite().all())):
        frame = _parse_lines(path, first, block, report, ratings)
    return frame.rename(REVIEW_FIELDS | {RATING_FIELD: "rating"}, strict=False)


def _parse_lines(
    path: Path, first: int, block: bytes, report: BadInputReport, ratings: bool = False
) -> pl.DataFrame:
    """The slow path for a block with a bad line: json.loads line by line, reporting each."""
    schema = review_schema(ratings)
    rows: dict[str, list] = {field: [] for field in schema}
    for offset, line in enumerate(block.split(b"\n")[:-1]):
        if not line.strip():
            continue
        record = _as_dict(line, json.loads)
        problem = (_broken(line, "JSON review") if record is None
                   else _review_problem(record) or (ratings and _rating_problem(record)))
        if problem:
            report.bad(path, first + offset, problem)
            continue
        for field, values in rows.items():
            values.append(record[field])
    rows["unixReviewTime"] = [int(t) for t in rows["unixReviewTime"]]
    return pl.DataFrame(rows, schema=schema)


def _rating_problem(record: dict) -> str | None:
    rating = record.get(RATING_FIELD)
    if isinstance(rating, bool) or not isinstance(rating, int | float) or not math.isfinite(rating):
        return "overall (the rating) is not a number (line skipped)"
    return None


def _broken(line: bytes, what: str) -> str:
    """The reason a line could not be parsed: bytes that are not UTF-8, or a broken ``what``."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8.format("line")
    return f"broken {what} (line skipped)"


def _review_problem(record: dict) -> str | None:
    for field in REVIEW_FIELDS:
        if record.get(field) is None:
            return f"review without {field} (line skipped)"
    if not isinstance(record["reviewerID"], str) or not isinstance(record["asin"], str):
        return "reviewerID or asin is not a string (line skipped)"
    time = record["unixReviewTime"]
    if isinstance(time, bool) or not isinstance(time, int | float) or not math.isfinite(time):
        return "unixReviewTime is not a number (line skipped)"
    return None


def read_meta(path: Path, layout: str, needed: set[str], report: BadInputReport) -> pl.DataFrame:
    """The first category path, brand and price of the ``needed`` items (AMAZON_META_SCHEMA)."""
    parse, pattern = FAST_PARSERS[layout], ASIN_PATTERNS[layout]
    kind = "JSON" if layout == "json" else "Python literal"
    rows: dict[str, list] = {column: [] for column in AMAZON_META_SCHEMA}
    for number, line in iter_lines(path):
        quick = pattern.search(line)
        if quick is not None and quick.group(1).decode("utf-8", errors="replace") not in needed:
            continue
        record = _as_dict(line, parse)
        if record is None:
            report.bad(path, number, _broken(line, f"{kind} metadata"))
            continue
        asin = record.get("asin")
        if not isinstance(asin, str):
            report.bad(path, number, "metadata without asin (line skipped)")
            continue
        if asin not in needed:
            continue
        rows["item"].append(asin)
        rows["path"].append(category_path(record))
        brand = record.get("brand")
        rows["brand"].append(brand if isinstance(brand, str) else None)
        rows["price"].append(parse_price(record.get("price")))
    return pl.DataFrame(rows, schema=AMAZON_META_SCHEMA)


def category_path(record: dict) -> list[str] | None:
    """The first category path: 2014 ``categories[0]``, 2018 ``category``; None when absent."""
    path = record.get("categories")
    if isinstance(path, list) and path:
        path = path[0]
    elif path is None or path == []:
        path = record.get("category")
    if not isinstance(path, list) or not path:
        return None
    return [str(level) for level in path]
