"""The ``amazon`` source: both McAuley layouts, gzip or plain, the attribute recipe, bad input."""

from __future__ import annotations

import functools
import gzip
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from camn.cli import main
from camn.data import reading
from camn.data.raw import BadInputReport, DataError
from camn.data.sources import amazon

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_beauty_5core"
BEAUTY_REVIEWS = BEAUTY / "mcauley2014" / "reviews_Beauty_5.json.gz"
BEAUTY_META = BEAUTY / "mcauley2014" / "meta_Beauty.json.gz"

REVIEWS = [  # (user, item, time)
    ("U1", "A1", 100), ("U1", "A2", 200), ("U1", "A3", 300),
    ("U2", "A2", 150), ("U2", "A4", 250),
]
META_2014 = [
    {"asin": "A1", "title": "one", "price": 5.0, "salesRank": {"Beauty": 3},
     "categories": [["Beauty", "Makeup", "Face", "Concealers"], ["Beauty", "Other"]],
     "brand": "COKA"},
    {"asin": "A2", "price": 20.0, "categories": [["Beauty", "Fragrance", "Women's"]],
     "brand": ""},
    {"asin": "A3", "categories": [["Beauty", "Skin Care"]], "brand": " Nivea "},
    {"asin": "A4", "price": 12.5, "categories": [["Beauty"]]},
    {"asin": "Z9", "price": 1000.0, "categories": [["Beauty", "Unused"]]},  # in no review
]
META_2018 = [
    {"asin": "A1", "category": ["Beauty", "Makeup", "Face", "Concealers"], "brand": "COKA",
     "price": "$5.00", "also_buy": ["A2"], "main_cat": "Beauty"},
    {"asin": "A2", "category": ["Beauty", "Fragrance", "Women's"], "brand": "", "price": "$20.00"},
    {"asin": "A3", "category": ["Beauty", "Skin Care"], "brand": " Nivea ", "price": ""},
    {"asin": "A4", "category": ["Beauty"], "price": "$12.50"},
    {"asin": "Z9", "category": ["Beauty", "Unused"], "price": "$1,000.00"},
]


def review_line(user: str, item: str, time: int) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "reviewerName": "J. Doe",
                       "helpful": [0, 1], "reviewText": "nice", "overall": 5.0,
                       "unixReviewTime": time})


def write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_dataset(tmp_path: Path, layout: str = "2014", gz: bool = True) -> tuple[Path, Path]:
    suffix = ".json.gz" if gz else ".json"
    reviews = write(tmp_path / f"reviews{suffix}", [review_line(*r) for r in REVIEWS], gz)
    meta = [repr(m) for m in META_2014] if layout == "2014" else [json.dumps(m) for m in META_2018]
    return reviews, write(tmp_path / f"meta{suffix}", meta, gz)


def read(reviews: Path, meta: Path, strict: bool = False):
    report = BadInputReport(strict=strict)
    raw = amazon.read(reviews=str(reviews), meta=str(meta), report=report)
    return raw, report


EXPECTED_ITEMS = {  # the recipe by hand; prices of A1, A2, A4 give the deciles (Z9 is unused)
    "A1": ("Makeup", "Makeup/Face", "Beauty/Makeup/Face/Concealers", "COKA"),
    "A2": ("Fragrance", "Fragrance/Women's", "Beauty/Fragrance/Women's", None),
    "A3": ("Skin Care", None, "Beauty/Skin Care", "Nivea"),
    "A4": (None, None, None, None),
}


@pytest.mark.parametrize(("layout", "gz"), [("2014", True), ("2014", False), ("2018", True),
                                           ("2018", False)])
def test_both_layouts_give_the_recipe(tmp_path, layout, gz):
    raw, report = read(*write_dataset(tmp_path, layout, gz))
    assert report.total == 0
    assert raw.origin["layout"] == {"2014": "mcauley2014", "2018": "mcauley2018"}[layout]
    assert raw.attributes == ["item_id", "category_l2", "category_l3", "category_leaf", "brand",
                              "price_bucket"]
    assert raw.items.columns == ["item", *raw.attributes[1:]]
    assert raw.interactions.rows() == REVIEWS
    assert raw.interactions.schema == {"user": pl.String, "item": pl.String, "time": pl.Int64}
    rows = {r[0]: r[1:] for r in raw.items.rows()}
    assert set(rows) == {"A1", "A2", "A3", "A4"}  # Z9 occurs in no review
    for item, expected in EXPECTED_ITEMS.items():
        assert rows[item][:4] == expected
    edges = np.quantile([5.0, 20.0, 12.5], np.arange(1, 10) / 10)
    for item, price in (("A1", 5.0), ("A2", 20.0), ("A4", 12.5)):
        assert rows[item][4] == f"q{np.searchsorted(edges, price, side='right')}"
    assert rows["A3"][4] is None
    assert rows["A1"][4] == "q0" and rows["A2"][4] == "q9"


def test_gzip_is_detected_from_content_not_name(tmp_path):
    reviews, meta = write_dataset(tmp_path, "2014", gz=True)
    plain_named = reviews.rename(tmp_path / "reviews.json")
    gz_named = write(tmp_path / "meta_plain.json.gz", [repr(m) for m in META_2014])
    raw, _ = read(plain_named, gz_named)
    assert len(raw.interactions) == len(REVIEWS) and len(raw.items) == 4
    del meta


def test_price_deciles_over_used_items(tmp_path):
    prices = [float(p) for p in range(1, 41)]  # 40 priced items, each reviewed twice
    rows = [review_line(f"U{i}", f"I{i}", t) for i in range(40) for t in (1, 2)]
    meta = [repr({"asin": f"I{i}", "price": p, "categories": [["R", "C"]]})
            for i, p in enumerate(prices)]
    raw, _ = read(write(tmp_path / "r.json", rows), write(tmp_path / "m.json", meta))
    buckets = dict(raw.items.select("item", "price_bucket").rows())
    got = [int(buckets[f"I{i}"][1:]) for i in range(40)]
    assert got == [i // 4 for i in range(40)]  # 4 items a decile


@pytest.mark.parametrize("value", [12.99, "$12.99", " $12.99 ", "12.99"])
def test_parse_price_accepts_numbers_and_dollar_strings(value):
    assert reading.parse_price(value) == 12.99


@pytest.mark.parametrize("value", [None, "", "$5.00 - $9.00", "free", -1.0, float("nan"), True])
def test_parse_price_rejects_the_rest(value):
    assert reading.parse_price(value) is None


def test_blocks_cover_the_file_with_line_numbers(tmp_path):
    lines = [f"line {i} " + "x" * (i % 7) for i in range(50)]
    path = write(tmp_path / "f.txt", lines, gz=True)
    seen = []
    for first, block in reading.iter_blocks(path, block_bytes=17):
        assert block.endswith(b"\n")
        seen += [(first + k, text) for k, text in enumerate(block.decode().splitlines())]
    assert seen == [(i + 1, text) for i, text in enumerate(lines)]


def test_bad_review_lines_are_reported_with_their_line(tmp_path, monkeypatch):
    monkeypatch.setattr(amazon, "iter_blocks", functools.partial(reading.iter_blocks,
                                                                 block_bytes=200))
    lines = [review_line(*r) for r in REVIEWS]
    lines.insert(2, '{"reviewerID": "U1", "asin": ')  # line 3: broken JSON
    lines.insert(4, json.dumps({"reviewerID": "U3", "unixReviewTime": 5}))  # line 5: no asin
    lines.insert(5, "")  # a blank line is not bad input
    reviews = write(tmp_path / "r.json", lines)
    meta = write(tmp_path / "m.json", [repr(m) for m in META_2014])
    raw, report = read(reviews, meta)
    assert raw.interactions.rows() == REVIEWS
    assert report.counts == {"broken JSON review (line skipped)": 1,
                             "review without asin (line skipped)": 1}
    assert report.examples == [f"{reviews}:3: broken JSON review (line skipped)",
                               f"{reviews}:5: review without asin (line skipped)"]


def test_bad_meta_lines_are_reported(tmp_path):
    reviews, _ = write_dataset(tmp_path, gz=False)
    lines = [repr(m) for m in META_2014]
    lines[1] = lines[1][:-5]  # A2's line is broken
    lines.append("{'title': 'no asin'}")
    meta = write(tmp_path / "m.json", lines)
    raw, report = read(reviews, meta)
    assert "A2" not in raw.items["item"].to_list()
    assert report.counts == {"broken Python literal metadata (line skipped)": 1,
                             "metadata without asin (line skipped)": 1}
    assert report.examples[0].startswith(f"{meta}:2: ")


@pytest.mark.parametrize(("which", "content", "message"), [
    ("reviews", b"", "empty file"),
    ("meta", b"\n \n", "empty file"),
    ("reviews", b"user,item,rating,time\nU1,A1,5,100\n", "unknown layout"),
    ("meta", b"asin\tprice\nA1\t5\n", "unknown layout"),
    ("reviews", gzip.compress(b"x" * 1000)[:15], "cannot read"),
    ("meta", None, "cannot read"),
])
def test_unreadable_input_raises_naming_the_file(tmp_path, which, content, message):
    files = dict(zip(("reviews", "meta"), write_dataset(tmp_path, gz=False), strict=True))
    files[which] = tmp_path / f"bad_{which}"
    if content is not None:
        files[which].write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        read(files["reviews"], files["meta"])
    assert str(files[which]) in str(error.value)


def test_strict_stops_at_the_first_bad_line_with_exit_code_2(tmp_path, capsys):
    lines = [review_line(*r) for r in REVIEWS] + ["{broken"]
    reviews = write(tmp_path / "r.json", lines)
    meta = write(tmp_path / "m.json", [repr(m) for m in META_2014])
    args = ["prepare", "amazon", "--reviews", str(reviews), "--meta", str(meta),
            "--out", str(tmp_path / "store")]
    assert main([*args, "--strict"]) == 2
    assert capsys.readouterr().err == f"camn: error: {reviews}:6: broken JSON review\n"
    assert not (tmp_path / "store").exists()
    assert main(args) == 0
    assert "1 x broken JSON review (line skipped)" in capsys.readouterr().out


def test_review_fields_of_the_wrong_type_are_counted(tmp_path):
    lines = [review_line(*r) for r in REVIEWS]
    lines.append(json.dumps({"reviewerID": 7, "asin": "A1", "unixReviewTime": 5}))
    lines.append(json.dumps({"reviewerID": "U3", "asin": "A1", "unixReviewTime": "noon"}))
    lines.append(json.dumps({"reviewerID": "U3", "asin": "A1", "unixReviewTime": True}))
    reviews = write(tmp_path / "r.json", lines)
    raw, report = read(reviews, write(tmp_path / "m.json", [repr(m) for m in META_2014]))
    assert raw.interactions.rows() == REVIEWS
    assert report.examples == [
        f"{reviews}:6: reviewerID or asin is not a string (line skipped)",
        f"{reviews}:7: unixReviewTime is not a number (line skipped)",
        f"{reviews}:8: unixReviewTime is not a number (line skipped)",
    ]


def test_lines_that_are_not_utf8_are_counted_with_their_line(tmp_path):
    lines = [review_line(*r).encode() for r in REVIEWS]
    lines.insert(1, review_line("U_", "A1", 7).encode().replace(b"U_", b"U\xe9"))  # Latin-1
    reviews = tmp_path / "r.json"
    reviews.write_bytes(b"\n".join(lines) + b"\n")
    meta_lines = [repr(m).encode() for m in META_2014]
    meta_lines[0] = meta_lines[0].replace(b"'COKA'", b"'CO\xffKA'")  # a value camn reads
    meta_lines[1] = meta_lines[1].replace(b"'asin': 'A2'", b"'asin': 'A2', 'title': '\xff'")
    meta = tmp_path / "m.json"
    meta.write_bytes(b"\n".join(meta_lines) + b"\n")
    raw, report = read(reviews, meta)
    assert raw.interactions.rows() == REVIEWS
    assert set(raw.items["item"]) == {"A2", "A3", "A4"}  # A2's unread title may hold anything
    reason = "bytes that are not UTF-8 text (line skipped)"
    assert report.counts == {reason: 2}
    assert report.examples == [f"{reviews}:2: {reason}", f"{meta}:1: {reason}"]


def test_real_beauty_reads_every_review_and_item():
    """The prepared-store counts (22,363 users ...) are checked in test_source_recbole.py."""
    if not (BEAUTY_REVIEWS.exists() and BEAUTY_META.exists()):
        pytest.skip(f"real Amazon Beauty files not found under {BEAUTY}")
    raw, report = read(BEAUTY_REVIEWS, BEAUTY_META)
    assert report.total == 0 and raw.origin["layout"] == "mcauley2014"
    assert len(raw.interactions) == 198_502
    assert raw.interactions["user"].n_unique() == 22_363
    assert len(raw.items) == raw.interactions["item"].n_unique() == 12_101
    # 6 level-2 categories; 46 level-2/3 paths of which 6 stop at level 2 (level 3 unknown);
    # 2,075 brands; 10 deciles
    assert [raw.items[a].drop_nulls().n_unique() for a in raw.attributes[1:]] == [
        6, 40, 245, 2_075, 10]
    # 110 brands (820 items) are written with HTML character references in the file, 3 of
    # them escaped twice (Kirk&amp;#39;s Soap); Miss Jessie&#39;s and Miss Jessie&amp;#039;s
    # are one brand, Miss Jessie's (2,076 brands before)
    brands = set(raw.items["brand"].drop_nulls())
    assert {"Burt's Bees", "Bath & Body Works", "Crème of Nature", "Kirk's Soap"} <= brands
    assert not any(re.search("&#?[0-9a-z]+;", b) for b in brands)


TRICKY_2014_LINES = [
    rb"""{'asin': 'X', 'title': "x', 'brand': 'fake","""
    rb""" 'categories': [['A', 'B\'s', "C's"], ['D']], 'brand': 'it\'s', 'price': 1e3}""",
    rb"""{'asin': 'Y', 'categories': [], 'related': {'also_bought': ['Z', 'W']}}""",
    rb"""{'asin': 'Z', 'categories': [[]], 'brand': '', 'salesRank': {'Books': 5}}""",
    rb"""{'asin': 'W', 'categories': [['A', 'B]]', 'C']], 'price': 2}""",
    rb"""{'asin': 'V', 'price': 'odd', 'categories': [['A', 1]]}""",
]


@pytest.mark.parametrize("line", TRICKY_2014_LINES)
def test_fast_2014_field_parse_equals_the_whole_line_parse(line):
    whole, fast = amazon._literal(line), amazon._literal_fields(line)
    for key in ("asin", "price", "brand"):
        assert fast.get(key) == whole.get(key)
    assert amazon.category_path(fast) == amazon.category_path(whole)


def test_fast_2014_field_parse_on_the_real_beauty_meta():
    if not BEAUTY_META.exists():
        pytest.skip(f"{BEAUTY_META} not found")
    lines = [line for _, line in reading.iter_lines(BEAUTY_META)]
    assert len(lines) == 12_101
    for line in lines[::7]:
        whole, fast = amazon._literal(line), amazon._literal_fields(line)
        assert {k: whole.get(k) for k in ("asin", "price", "brand")} == {
            k: fast.get(k) for k in ("asin", "price", "brand")}
        assert amazon.category_path(fast) == amazon.category_path(whole)


@pytest.mark.parametrize("layout", ["2014", "2018"])
def test_html_character_references_in_brands_and_categories_are_unescaped(tmp_path, layout):
    """McAuley's metadata writes Burt&#39;s Bees: before, that and Burt's Bees were two brands."""
    reviews = write(tmp_path / "reviews.json", [
        review_line("U1", "A1", 1), review_line("U1", "A2", 2), review_line("U2", "A3", 3),
        review_line("U2", "A4", 4),
    ])
    meta = [
        {"asin": "A1", "brand": "Burt&#39;s Bees", "categories": [["Beauty", "Bath &amp; Body"]]},
        {"asin": "A2", "brand": "Burt's Bees", "categories": [["Beauty", "Bath & Body"]]},
        {"asin": "A3", "brand": "Cr&egrave;me of Nature", "categories": [["Beauty", "Hair"]]},
        {"asin": "A4", "brand": "Kirk&amp;#39;s", "categories": [["Beauty", "x &lt;y&gt;"]]},
    ]
    if layout == "2018":
        meta = [{**m, "category": m.pop("categories")[0]} for m in meta]
    lines = [repr(m) for m in meta] if layout == "2014" else [json.dumps(m) for m in meta]
    raw, report = read(reviews, write(tmp_path / "meta.json", lines))
    assert report.total == 0
    assert raw.items.sort("item").select("category_l2", "brand").rows() == [
        ("Bath & Body", "Burt's Bees"), ("Bath & Body", "Burt's Bees"),
        ("Hair", "Crème of Nature"), ("x <y>", "Kirk's"),  # Kirk's was escaped twice
    ]
