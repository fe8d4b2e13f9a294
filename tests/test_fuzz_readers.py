"""Fuzzing every reader: random, partly broken files must give a store with the bad lines counted
or a DataError naming the input, never another exception, and never a partial store.

Each example writes small files in which some records are broken in one of the ways real files
break: random bytes, a line cut short, a value of the wrong type, a missing field, a huge field,
a blank line. Where a reader is line based (Amazon reviews, MovieLens ratings, RecBole's .inter,
DIEN's sample files) every line must end up either read or counted as bad input.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camn.data.prepare import prepare
from camn.data.protocols import TRAIN
from camn.data.raw import BadInputReport, DataError
from camn.data.sources import amazon, dien, movielens, recbole, table

FUZZ = settings(
    max_examples=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
USERS, ITEMS = ["u1", "u2", "u3"], ["i1", "i2", "i3", "i4"]
HUGE = "h" * 140_000  # longer than a field of Python's csv module may be by default
KINDS = ["good"] * 5 + ["random", "cut", "type", "missing", "huge", "blank", "crlf", "wide"]
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.lists(st.integers(0, 9), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                             max_size=1),
)
Render = Callable[[dict], bytes]
NOT_ABOUT_A_FILE = (  # prepare's own errors, on data read without fault
    "no user has 2", "interactions: ", "items: ",
)
EVERY_ITEM = re.compile(r"user '.*' interacted with every item \(\d+\)", re.DOTALL)
POLARS_WORDS = ("truncate_ragged_lines", "You might want", "Consider", "infer_schema",
                "supertype", "polars", "Schema")  # advice or internals of polars


@st.composite
def broken_lines(draw, record: st.SearchStrategy[dict], render: Render) -> list[bytes]:
    """Lines of records, mostly good, some broken in one of the ways of KINDS."""
    lines = []
    for _ in range(draw(st.integers(1, 12))):
        fields = dict(draw(record))
        kind = draw(st.sampled_from(KINDS))
        if kind == "random":
            lines.append(draw(st.binary(max_size=40)))
            continue
        if kind == "blank":
            lines.append(draw(st.sampled_from([b"", b"  ", b"\r"])))
            continue
        key = draw(st.sampled_from(sorted(fields)))  # the field to break
        if kind == "type":
            fields[key] = draw(ODD_VALUES)
        elif kind == "missing":
            del fields[key]
        elif kind == "huge":
            fields[key] = HUGE
        elif kind == "wide":  # many more fields than expected
            fields.update({f"extra{i}": i for i in range(draw(st.integers(1, 300)))})
        line = render(fields) + (b"\r" if kind == "crlf" else b"")
        if kind == "cut":
            line = line[: draw(st.integers(0, max(len(line) - 1, 0)))]
        lines.append(line)
    return lines


def headers(good: bytes, separator: bytes) -> st.SearchStrategy[bytes]:
    """Mostly ``good``; else none, random bytes, a column named twice or missing, a BOM."""
    names = good.split(separator)
    return st.one_of(
        st.just(good), st.just(good), st.just(good), st.just(b""), st.binary(max_size=30),
        st.just(separator.join([*names, names[-1]])), st.just(separator.join(names[1:])),
        st.just(b"\xef\xbb\xbf" + good),
    )


def as_text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def joined(separator: str) -> Render:
    return lambda fields: separator.join(as_text(v) for v in fields.values()).encode()


def file_bytes(lines: list[bytes], header: bytes | None = None) -> bytes:
    return b"\n".join(([header] if header is not None else []) + lines) + b"\n"


PACKING = st.sampled_from(["plain", "plain", "gzip", "cut gzip"])  # of the first file


def write(path: Path, data: bytes, packing: str = "plain") -> Path:
    """Write ``data`` plain, gzip-compressed, or compressed and cut short (a broken download)."""
    if packing != "plain":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data[: len(data) // 2] if packing == "cut gzip" else data)
    return path


def second(packing: str) -> str:
    """The packing of a second file: compressed like the first, never cut."""
    return "plain" if packing == "plain" else "gzip"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def check_prepare(module, argv: list[str], root: Path, strict: bool = False) -> tuple | None:
    """Read and prepare; return (raw rows read, report) on success, None after a DataError.

    Either way the inputs are unchanged; on success the output folder holds the store and
    nothing else, after a DataError it holds nothing, and the message names an input.
    """
    inputs, out = snapshot(root / "in"), root / "out" / "store"
    report = BadInputReport(strict=strict)
    try:
        raw = module.read(report=report, **vars(parse(module, argv)))
        rows = len(raw.interactions)
        prepare(raw, out, report=report, max_len=5)
    except DataError as error:
        message = str(error)
        assert (str(root / "in") in message or message.startswith(NOT_ABOUT_A_FILE)
                or EVERY_ITEM.match(message)), message
        assert len(message) < 1000, message[:200]
        assert not any(word in message for word in POLARS_WORDS), message
        if strict:
            assert "skipped)" not in message and "first kept)" not in message, message
        assert os.listdir(root / "out") == []
        assert snapshot(root / "in") == inputs
        return None
    assert os.listdir(root / "out") == ["store"]
    assert json.loads((out / "schema.json").read_text())["num_users"] >= 1
    assert snapshot(root / "in") == inputs
    return rows, report


def folders() -> tuple[tempfile.TemporaryDirectory, Path]:
    holder = tempfile.TemporaryDirectory()
    root = Path(holder.name)
    (root / "in").mkdir()
    (root / "out").mkdir()
    return holder, root


def nonblank(data: bytes) -> int:
    """Lines of ``data`` that are not blank (ASCII white space only), as the line readers see
    them: split on newlines, a last line without one counted."""
    return sum(1 for line in data.split(b"\n") if line.strip())


def lines_of(data: bytes) -> list[bytes]:
    """The lines of ``data``: split on newlines, a last line without one included."""
    return data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")


def polars_nonblank(data: bytes) -> int:
    """Lines that a polars-based line reader keeps: bytes that are not UTF-8, or text that is
    not only (Unicode) white space."""
    count = 0
    for line in lines_of(data):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            count += 1
            continue
        count += pl.Series([text.removesuffix("\r")]).str.strip_chars().item() != ""
    return count


REVIEW = st.fixed_dictionaries({
    "reviewerID": st.sampled_from(USERS), "asin": st.sampled_from(ITEMS),
    "unixReviewTime": st.integers(0, 1000), "overall": st.just(5.0),
})
META_2014 = st.fixed_dictionaries({
    "asin": st.sampled_from(ITEMS), "price": st.floats(0, 50),
    "categories": st.just([["Beauty", "Face", "Skin"]]), "brand": st.sampled_from(["A", "B"]),
})
META_2018 = st.fixed_dictionaries({
    "asin": st.sampled_from(ITEMS), "price": st.sampled_from(["$1.00", "$5", ""]),
    "category": st.just(["Beauty", "Face"]), "brand": st.sampled_from(["A", "B"]),
})


def json_line(fields: dict) -> bytes:
    return json.dumps(fields).encode()


def literal_line(fields: dict) -> bytes:
    return repr(fields).encode()


def fuzz_amazon(reviews: list[bytes], meta: list[bytes], packing: str, strict: bool) -> None:
    holder, root = folders()
    with holder:
        data = file_bytes(reviews)
        review_path = write(root / "in" / "reviews.json", data, packing)
        meta_path = write(root / "in" / "meta.json", file_bytes(meta), second(packing))
        argv = ["--reviews", str(review_path), "--meta", str(meta_path)]
        check_prepare(amazon, argv, root, strict)
        if packing == "cut gzip":
            return
        report = BadInputReport()
        try:
            read = len(amazon.read_reviews(review_path, report))
        except DataError:
            read = 0
        assert read + report.total == nonblank(data)  # every line read or counted


@FUZZ
@given(broken_lines(REVIEW, json_line), broken_lines(META_2014, literal_line), PACKING,
       st.booleans())
def test_fuzz_amazon_2014(reviews, meta, packing, strict):
    fuzz_amazon(reviews, meta, packing, strict)


@FUZZ
@given(broken_lines(REVIEW, json_line), broken_lines(META_2018, json_line), PACKING,
       st.booleans())
def test_fuzz_amazon_2018(reviews, meta, packing, strict):
    fuzz_amazon(reviews, meta, packing, strict)


RATING = st.fixed_dictionaries({
    "user": st.sampled_from(USERS), "item": st.sampled_from(["1", "2", "3"]),
    "rating": st.integers(1, 5), "time": st.integers(0, 10**9),
})
MOVIE_100K = st.fixed_dictionaries({
    "item": st.sampled_from(["1", "2", "3"]), "title": st.just("Toy Story (1995)"),
    "release": st.just("01-Jan-1995"), "video": st.just(""), "url": st.just("http://x"),
    "flags": st.lists(st.sampled_from(["0", "1"]), min_size=19, max_size=19).map("|".join),
})
MOVIE_1M = st.fixed_dictionaries({
    "item": st.sampled_from(["1", "2", "3"]), "title": st.just("Heat (1995)"),
    "genres": st.just("Action|Crime"),
})
MOVIELENS = {  # layout: (ratings file, separator, header, movies file, movie record, separator)
    "100k": ("u.data", "\t", None, "u.item", MOVIE_100K, "|"),
    "1m": ("ratings.dat", "::", None, "movies.dat", MOVIE_1M, "::"),
    "csv": ("ratings.csv", ",", b"userId,movieId,rating,timestamp", "movies.csv", MOVIE_1M, ","),
}


@st.composite
def movielens_files(draw):
    layout = draw(st.sampled_from(sorted(MOVIELENS)))
    ratings_name, separator, header, movies_name, movie, movie_separator = MOVIELENS[layout]
    ratings = draw(broken_lines(RATING, joined(separator)))
    movies = draw(broken_lines(movie, joined(movie_separator)))
    movies_header = draw(headers(b"movieId,title,genres", b",")) if layout == "csv" else None
    header = draw(headers(header, b",")) if header else header
    return (layout, (ratings_name, file_bytes(ratings, header)),
            (movies_name, file_bytes(movies, movies_header)))


@FUZZ
@given(movielens_files(), PACKING, st.booleans())
def test_fuzz_movielens(files, packing, strict):
    layout, (ratings_name, ratings), (movies_name, movies) = files
    holder, root = folders()
    with holder:
        write(root / "in" / ratings_name, ratings, packing)
        write(root / "in" / movies_name, movies, second(packing))
        check_prepare(movielens, ["--path", str(root / "in")], root, strict)
        if layout == "csv" or packing == "cut gzip":
            return  # a header, checked by name: the line accounting is the other layouts'
        report = BadInputReport()
        names = ["user", "item", "_rating", "time"]
        try:
            read = len(movielens.parse_ratings(root / "in" / ratings_name,
                                               MOVIELENS[layout][1], names, report))
        except DataError:
            read = 0
        assert read + report.total == polars_nonblank(ratings)


INTER_HEADER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = b"item_id:token\tcategories:token_seq\tprice:float\tbrand:token"
INTER_ROW = st.fixed_dictionaries({
    "user": st.sampled_from(USERS), "item": st.sampled_from(ITEMS), "rating": st.just("5"),
    "time": st.integers(0, 1000),
})
ITEM_ROW = st.fixed_dictionaries({
    "item": st.sampled_from(ITEMS), "categories": st.sampled_from(["'Beauty', 'Face'", "a b"]),
    "price": st.sampled_from(["1.5", "", "x"]), "brand": st.sampled_from(["A", '"B\tC"', ""]),
})


def tsv_rows(data: bytes) -> int:
    """Data lines of a tab-separated file with a header that hold any value (unquoted: one line
    a row; a line of empty fields only is blank)."""
    lines = lines_of(data)
    first = next(i for i, line in enumerate(lines) if line.strip())
    return sum(1 for line in lines[first + 1:] if line.removesuffix(b"\r").replace(b"\t", b""))


@FUZZ
@given(broken_lines(INTER_ROW, joined("\t")), headers(INTER_HEADER, b"\t"),
       broken_lines(ITEM_ROW, joined("\t")), headers(ITEM_HEADER, b"\t"),
       st.sampled_from(["recipe", "attributes", "bucketize"]), PACKING, st.booleans())
def test_fuzz_recbole(inter, inter_header, item, item_header, attributes, packing, strict):
    holder, root = folders()
    with holder:
        inter_data = file_bytes(inter, inter_header)
        inter_path = write(root / "in" / "d.inter", inter_data, packing)
        item_path = write(root / "in" / "d.item", file_bytes(item, item_header), second(packing))
        argv = ["--inter", str(inter_path), "--item", str(item_path)]
        argv += {"recipe": ["--recipe", "amazon"], "attributes": ["--attributes", "brand"],
                 "bucketize": ["--attributes", "brand,price", "--bucketize", "price"]}[attributes]
        check_prepare(recbole, argv, root, strict)
        if packing == "cut gzip":
            return
        report = BadInputReport()
        try:
            read = len(recbole.read_inter(inter_path, "user_id", "item_id", "timestamp", report))
        except DataError:
            return  # e.g. every row bad: nothing to account for
        assert read + report.total == tsv_rows(inter_data)


INTERACTION = st.fixed_dictionaries({
    "user": st.sampled_from(USERS), "item": st.sampled_from(ITEMS),
    "time": st.integers(0, 1000) | st.sampled_from(["01/02/2020", "13/02/2020 10:00",
                                                     "02/13/2020", "2020-01-02"]),
})
ITEM = st.fixed_dictionaries({
    "item": st.sampled_from(ITEMS), "brand": st.sampled_from(["A", "B", "", '"q, r"', "1.5"]),
})


def fuzz_table(ext: str, inter: bytes, items: bytes, packing: str, strict: bool,
               rows: Callable[[bytes], int] | None = None, options: tuple[str, ...] = ()) -> None:
    """Prepare from the table files (with more ``options``); with ``rows`` (the data rows of
    the interactions, by hand), check that each is read or counted."""
    holder, root = folders()
    with holder:
        suffix = ext + ("" if packing == "plain" else ".gz")
        inter_path = write(root / "in" / f"inter{suffix}", inter, packing)
        items_path = write(root / "in" / f"items{suffix}", items, second(packing))
        argv = ["--interactions", str(inter_path), "--items", str(items_path),
                "--attributes", "brand", *options]
        check_prepare(table, argv, root, strict)
        if rows is None or packing == "cut gzip":
            return
        report = BadInputReport()
        try:
            flags = parse(table, argv)
            read = len(table.read_interactions(
                flags.interactions, user_col=flags.user_col, item_col=flags.item_col,
                time_col=flags.time_col, format=flags.format, time_format=flags.time_format,
                report=report))
        except DataError:
            return  # e.g. every row bad: nothing to account for
        assert read + report.total == rows(inter)


@FUZZ
@given(broken_lines(INTERACTION, joined(",")), headers(b"user,item,time", b","),
       broken_lines(ITEM, joined(",")), PACKING, st.booleans(),
       st.sampled_from([(), ("--bucketize", "brand"), ("--time-format", "%m/%d/%Y")]))
def test_fuzz_table_csv(inter, header, items, packing, strict, options):
    fuzz_table(".csv", file_bytes(inter, header), file_bytes(items, b"item,brand"), packing,
               strict, options=options)


@FUZZ
@given(broken_lines(INTERACTION, joined("\t")), headers(b"user\titem\ttime", b"\t"),
       broken_lines(ITEM, joined("\t")), PACKING, st.booleans(),
       st.sampled_from([(), ("--time-format", "%m/%d/%Y")]))
def test_fuzz_table_tsv(inter, header, items, packing, strict, options):
    fuzz_table(".tsv", file_bytes(inter, header), file_bytes(items, b"item\tbrand"), packing,
               strict, rows=tsv_rows, options=options)


@FUZZ
@given(broken_lines(INTERACTION, json_line), broken_lines(ITEM, json_line), PACKING,
       st.booleans())
def test_fuzz_table_jsonl(inter, items, packing, strict):
    fuzz_table(".jsonl", file_bytes(inter), file_bytes(items), packing, strict)


COLUMN = st.sampled_from(["text", "int", "float", "null", "list", "absent"])


@st.composite
def parquet_file(draw, names: list[str]) -> bytes:
    """A Parquet file whose columns have random types (or are absent), or broken bytes."""
    rows = draw(st.integers(0, 8))
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=60))
    columns = {}
    for name in names:
        kind = draw(COLUMN)
        values = {
            "text": [f"{name}{i % 3}" for i in range(rows)],
            "int": list(range(rows)), "float": [i / 2 for i in range(rows)],
            "null": [None] * rows, "list": [[i] for i in range(rows)],
        }
        if kind != "absent":
            columns[name] = values[kind]
    buffer = io.BytesIO()
    pl.DataFrame(columns).write_parquet(buffer)
    data = buffer.getvalue()
    if draw(st.booleans()) and draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


@FUZZ
@given(parquet_file(["user", "item", "time"]), parquet_file(["item", "brand"]), st.booleans())
def test_fuzz_table_parquet(inter, items, strict):
    fuzz_table(".parquet", inter, items, "plain", strict)


CATEGORIES = ["c1", "c2"]
PAST = st.lists(st.tuples(st.sampled_from(ITEMS), st.sampled_from(CATEGORIES)), max_size=3)


def past_row(label: str, user: str, item: str, category: str, past: list[tuple[str, str]],
             separator: str) -> dict:
    """A row that carries its history: the past (item, category) pairs, oldest first, as two
    lists joined by ``separator``."""
    return {"label": label, "user": user, "item": item, "category": category,
            "history_items": separator.join(i for i, _ in past),
            "history_categories": separator.join(c for _, c in past)}


def past_rows(separator: str) -> st.SearchStrategy[dict]:
    return st.builds(past_row, st.sampled_from(["0", "1"]), st.sampled_from(USERS),
                     st.sampled_from(ITEMS), st.sampled_from(CATEGORIES), PAST,
                     st.just(separator))


ITEM_INFO = st.fixed_dictionaries({"item": st.sampled_from(ITEMS),
                                   "category": st.sampled_from(CATEGORIES)})


@FUZZ
@given(broken_lines(past_rows(dien.LIST_SEPARATOR), joined("\t")),
       broken_lines(past_rows(dien.LIST_SEPARATOR), joined("\t")),
       st.none() | broken_lines(ITEM_INFO, joined("\t")), PACKING, st.booleans(),
       st.sampled_from([(), ("--valid-fraction", "0.5")]))
def test_fuzz_dien(train, test, item_info, packing, strict, options):
    holder, root = folders()
    with holder:
        data = file_bytes(train)
        train_path = write(root / "in" / dien.TRAIN_FILE, data, packing)
        write(root / "in" / dien.TEST_FILE, file_bytes(test), second(packing))
        if item_info is not None:
            write(root / "in" / dien.ITEM_FILE, file_bytes(item_info), second(packing))
        check_prepare(dien, ["--path", str(root / "in"), *options], root, strict)
        if packing == "cut gzip":
            return
        report = BadInputReport()
        try:
            read = len(dien.read_rows(train_path, TRAIN, report))
        except DataError:
            return  # e.g. not DIEN's layout, or every line bad: nothing to account for
        assert read + report.total == polars_nonblank(data)


BARS_HEADER = b"label,user_id,item_id,cate_id,item_history,cate_history"
BARS_COLUMNS = ("--label-col", "label", "--user-col", "user_id", "--item-col", "item_id",
                "--items-item-col", "item", "--history-col", "item_history,cate_id=cate_history")


@FUZZ
@given(broken_lines(past_rows("^"), joined(",")), headers(BARS_HEADER, b","),
       broken_lines(ITEM, joined(",")), PACKING, st.booleans(),
       st.sampled_from([(), ("--split", "user")]))
def test_fuzz_table_row_histories(rows, header, items, packing, strict, options):
    fuzz_table(".csv", file_bytes(rows, header), file_bytes(items, b"item,brand"), packing,
               strict, options=(*BARS_COLUMNS, *options))


def test_accounting_helpers_agree_with_a_hand_count():
    """The fuzz oracles, on a file whose lines are counted by hand."""
    data = b"h1\th2\n\n a\t\n\t\t\r\n\xff\n\xe3\x80\x80\nb\tc"
    assert nonblank(data) == 5  # h1 h2 / " a" / "\xff" / U+3000 / b c
    assert polars_nonblank(data) == 4  # U+3000 is white space to polars
    assert tsv_rows(data) == 4  # " a", "\xff", U+3000, "b c"; not the line of tabs
    assert nonblank(b"") == polars_nonblank(b"\n") == 0
