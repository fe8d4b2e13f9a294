"""The ``recbole`` source: typed headers, attribute columns, the Amazon recipe, bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from camn.cli import main
from camn.data.raw import BadInputReport, DataError
from camn.data.sources import amazon, recbole

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_beauty_5core"
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"{u}\t{i}\t5\t{t}\n"
    for u, i, t in [("U1", "A1", 100), ("U1", "A2", 200), ("U2", "A2", 150), ("U2", "A3", 250)]
)
ITEM = (
    "item_id:token\ttitle:token\tcategories:token_seq\tprice:float\tbrand:token\ttags:token_seq\n"
    "A1\tTab\t'Beauty', 'Makeup', 'Face'\t5.0\tCOKA\tred blue\n"
    'A2\t"a\ttitle with a tab"\t"\'Beauty\', ""Women\'s"""\t\t\tgreen\n'
    "A3\tplain\t'Beauty'\t7.5\t Nivea \t\n"
)


def write_files(tmp_path: Path, inter: str = INTER, item: str = ITEM) -> tuple[Path, Path]:
    (tmp_path / "d.inter").write_text(inter)
    (tmp_path / "d.item").write_text(item)
    return tmp_path / "d.inter", tmp_path / "d.item"


def read(inter: Path, item: Path, strict: bool = False, **options):
    args = {"attributes": None, "recipe": None, "user_col": "user_id", "item_col": "item_id",
            "time_col": "timestamp", "bucketize": []} | options
    report = BadInputReport(strict=strict)
    raw = recbole.read(inter=str(inter), item=str(item), report=report, **args)
    return raw, report


def test_attribute_columns_first_token_and_empty_is_unknown(tmp_path):
    raw, report = read(*write_files(tmp_path), attributes=["brand", "tags", "categories"])
    assert report.total == 0
    assert raw.attributes == ["item_id", "brand", "tags", "categories"]
    assert raw.items.columns == ["item", "brand", "tags", "categories"]
    assert raw.items.rows() == [
        ("A1", "COKA", "red", "Beauty"),
        ("A2", None, "green", "Beauty"),
        ("A3", " Nivea ", None, "Beauty"),
    ]
    assert raw.interactions.rows() == [("U1", "A1", 100.0), ("U1", "A2", 200.0),
                                       ("U2", "A2", 150.0), ("U2", "A3", 250.0)]


def test_amazon_recipe_parses_the_category_literal(tmp_path):
    raw, _ = read(*write_files(tmp_path), recipe="amazon")
    assert raw.attributes == amazon.AMAZON_ATTRIBUTES
    rows = {r[0]: r[1:] for r in raw.items.rows()}
    assert rows["A1"] == ("Makeup", "Makeup/Face", "Beauty/Makeup/Face", "COKA", "q0")
    assert rows["A2"] == ("Women's", None, "Beauty/Women's", None, None)
    assert rows["A3"] == (None, None, None, "Nivea", "q9")


def test_amazon_recipe_equals_the_amazon_source_on_the_same_data(tmp_path):
    raw_recbole, _ = read(*write_files(tmp_path), recipe="amazon")
    reviews = tmp_path / "reviews.json"
    reviews.write_text("".join(
        json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": int(t)}) + "\n"
        for u, i, t in raw_recbole.interactions.rows()
    ))
    meta = tmp_path / "meta.json"
    meta.write_text(
        "{'asin': 'A1', 'price': 5.0, 'categories': [['Beauty', 'Makeup', 'Face']], "
        "'brand': 'COKA'}\n{'asin': 'A2', 'categories': [['Beauty', \"Women's\"]]}\n"
        "{'asin': 'A3', 'price': 7.5, 'categories': [['Beauty']], 'brand': ' Nivea '}\n"
    )
    raw_amazon = amazon.read(reviews=str(reviews), meta=str(meta), report=BadInputReport())
    assert raw_amazon.items.sort("item").equals(raw_recbole.items.sort("item"))
    assert raw_amazon.notes == raw_recbole.notes


def test_custom_column_names(tmp_path):
    inter = "uid:token\tiid:token\tts:float\nU1\tX\t1\nU1\tY\t2\n"
    item = "iid:token\tgenre:token\nX\tjazz\nY\tpop\n"
    raw, _ = read(*write_files(tmp_path, inter, item), attributes=["genre"], user_col="uid",
                  item_col="iid", time_col="ts")
    assert raw.attributes == ["iid", "genre"]
    assert raw.items.rows() == [("X", "jazz"), ("Y", "pop")]
    assert raw.interactions["user"].to_list() == ["U1", "U1"]


@pytest.mark.parametrize(("options", "which", "column"), [
    ({"attributes": ["colour"]}, "d.item", "colour"),
    ({"recipe": "amazon", "item_col": "asin"}, "d.inter", "asin"),
    ({"attributes": [], "time_col": "when"}, "d.inter", "when"),
])
def test_unknown_column_names_the_column_and_the_file(tmp_path, options, which, column):
    with pytest.raises(DataError, match=f"{tmp_path / which}: no column '{column}'"):
        read(*write_files(tmp_path), **options)


def test_missing_recipe_column_is_an_error(tmp_path):
    item = "item_id:token\tbrand:token\nA1\tCOKA\n"
    with pytest.raises(DataError, match="no column 'categories', 'price'"):
        read(*write_files(tmp_path, item=item), recipe="amazon")


@pytest.mark.parametrize("which", ["inter", "item"])
def test_empty_file(tmp_path, which):
    files = dict(zip(("inter", "item"), write_files(tmp_path), strict=True))
    files[which].write_text("")
    with pytest.raises(DataError, match=f"{files[which]}: empty file"):
        read(files["inter"], files["item"], attributes=["brand"])


def test_bad_rows_are_skipped_and_counted(tmp_path):
    inter = INTER + "U3\tA1\t5\tyesterday\n\tA2\t5\t9\n"
    raw, report = read(*write_files(tmp_path, inter), attributes=["brand"])
    assert len(raw.interactions) == 4
    assert report.counts == {"time is not a finite number (row skipped)": 1,
                             "no user value (row skipped)": 1}
    where = tmp_path / "d.inter"
    assert report.examples == [f"{where}:6: time is not a finite number (row skipped)",
                               f"{where}:7: no user value (row skipped)"]


def test_cli_strict_exits_2_and_lenient_prepares(tmp_path, capsys):
    inter, item = write_files(tmp_path, INTER + "U3\tA1\t5\tyesterday\n")
    args = ["prepare", "recbole", "--inter", str(inter), "--item", str(item),
            "--attributes", "brand,tags", "--out", str(tmp_path / "store")]
    assert main([*args, "--strict"]) == 2
    assert f"{inter}:6: time is not a finite number\n" in capsys.readouterr().err
    assert main(args) == 0
    schema = json.loads((tmp_path / "store" / "schema.json").read_text())
    assert schema["attributes"] == ["item_id", "brand", "tags"]
    assert (schema["num_users"], schema["num_items"]) == (2, 3)


@pytest.fixture(scope="module")
def beauty_stores(tmp_path_factory):
    files = [BEAUTY / "mcauley2014" / "reviews_Beauty_5.json.gz",
             BEAUTY / "mcauley2014" / "meta_Beauty.json.gz",
             BEAUTY / "recbole" / "amazon_beauty.inter", BEAUTY / "recbole" / "amazon_beauty.item"]
    if not all(f.exists() for f in files):
        pytest.skip(f"real Amazon Beauty files not found under {BEAUTY}")
    root = tmp_path_factory.mktemp("beauty")
    common = ["--protocol", "last"]
    assert main(["prepare", "amazon", "--reviews", str(files[0]), "--meta", str(files[1]),
                 "--out", str(root / "amazon"), *common]) == 0
    assert main(["prepare", "recbole", "--inter", str(files[2]), "--item", str(files[3]),
                 "--recipe", "amazon", "--out", str(root / "recbole"), *common]) == 0
    return root / "amazon", root / "recbole"


def test_real_beauty_recbole_is_byte_identical_to_amazon(beauty_stores):
    amazon_store, recbole_store = beauty_stores
    names = sorted(p.relative_to(amazon_store).as_posix()
                   for p in amazon_store.glob("*/*") if p.suffix in (".npy", ".txt"))
    assert names == sorted(p.relative_to(recbole_store).as_posix()
                           for p in recbole_store.glob("*/*") if p.suffix in (".npy", ".txt"))
    assert {name.split("/")[0] for name in names} == {"arrays", "vocab"}
    for name in names:
        assert (amazon_store / name).read_bytes() == (recbole_store / name).read_bytes(), name
    schemas = [json.loads((s / "schema.json").read_text()) for s in beauty_stores]
    assert [s["origin"]["source"] for s in schemas] == ["amazon", "recbole"]
    assert {k: v for k, v in schemas[0].items() if k != "origin"} == {
        k: v for k, v in schemas[1].items() if k != "origin"}
    schema = schemas[1]
    assert (schema["num_users"], schema["num_items"], len(schema["attributes"])) == (
        22_363, 12_101, 6)
    assert schema["splits"] == {"train": 35_780, "valid": 4_472, "test": 4_474}
    assert sum(schema["splits"].values()) == 44_726 and schema["bad_input"] == {}


def test_real_beauty_item_file_reads_every_row(tmp_path):
    path = BEAUTY / "recbole" / "amazon_beauty.item"
    if not path.exists():
        pytest.skip(f"{path} not found")
    table, types = recbole.read_columns(path, ["item_id", "title", "categories"], quoted=True,
                                        report=BadInputReport(strict=True))
    assert len(table) == 12_101 and table["item_id"].n_unique() == 12_101
    assert types == {"item_id": "token", "title": "token", "categories": "token_seq"}
    paths = recbole.map_unique(table["categories"], recbole.parse_token_seq, pl.List(pl.String))
    assert paths.list.len().min() >= 2 and (paths.list.first() == "Beauty").all()


def test_gzip_files_read_as_the_plain_ones(tmp_path):
    plain, _ = read(*write_files(tmp_path), attributes=["brand"])
    for name in ("d.inter", "d.item"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress((tmp_path / name).read_bytes()))
    packed, report = read(tmp_path / "d.inter.gz", tmp_path / "d.item.gz", attributes=["brand"])
    assert packed.interactions.equals(plain.interactions) and packed.items.equals(plain.items)
    assert report.total == 0


def test_too_many_fields_and_bad_bytes_are_counted_per_line(tmp_path):
    inter = (INTER + "U3\tA1\t5\t7\textra\n").encode() + b"U\xe9\tA2\t5\t8\nU3\tA3\t5\tnan\n"
    (tmp_path / "d.inter").write_bytes(inter)
    (tmp_path / "d.item").write_text(ITEM)
    raw, report = read(tmp_path / "d.inter", tmp_path / "d.item", attributes=["brand"])
    assert len(raw.interactions) == 4
    where = tmp_path / "d.inter"
    assert report.examples == [
        f"{where}:6: more fields than the header's 4 columns (row skipped)",
        f"{where}:7: bytes that are not UTF-8 text (row skipped)",
        f"{where}:8: time is not a finite number (row skipped)",
    ]
    assert report.total == 3


def test_item_rows_without_an_id_or_repeated_are_counted(tmp_path):
    item = ITEM + "\tanon\t'Beauty'\t1\tX\t\nA1\tagain\t'Beauty'\t1\tY\t\n"
    raw, report = read(*write_files(tmp_path, item=item), attributes=["brand"])
    assert raw.items.rows() == [("A1", "COKA"), ("A2", None), ("A3", " Nivea ")]
    where = tmp_path / "d.item"
    assert report.examples == [f"{where}:5: no item_id value (row skipped)",
                               f"{where}:6: item listed again in the .item file (first kept)"]


def test_attributes_must_differ_from_the_item_column(tmp_path):
    with pytest.raises(DataError, match="--attributes item_id: names must be distinct and differ"):
        read(*write_files(tmp_path), attributes=["item_id"])


def test_a_blank_first_line_is_no_header(tmp_path):
    inter, item = write_files(tmp_path, inter="\n" + INTER)
    with pytest.raises(DataError) as error:
        read(inter, item, attributes=["brand"])
    assert str(error.value) == f"{inter}:1: empty header line"


def test_a_token_seq_attribute_that_keeps_its_first_token_warns(tmp_path, capsys):
    """Before, ``tags`` 'red blue' became 'red' unsaid."""
    raw, _ = read(*write_files(tmp_path), attributes=["tags", "categories", "brand"])
    assert raw.items["tags"].to_list() == ["red", "green", None]
    assert raw.warnings == {
        "tags": ["a token_seq column: only the first token of each item is kept; 1 of the 3"
                 " items in the .item file hold more (e.g. 'red', 'blue' became 'red'); camn"
                 " reads one value an attribute"],
        "categories": ["a token_seq column: only the first token of each item is kept; 2 of"
                       " the 3 items in the .item file hold more (e.g. 'Beauty', 'Makeup',"
                       " 'Face' became 'Beauty'); camn reads one value an attribute"],
    }
    inter, item = tmp_path / "d.inter", tmp_path / "d.item"
    out = tmp_path / "store"
    assert main(["prepare", "recbole", "--inter", str(inter), "--item", str(item),
                 "--attributes", "tags", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(
        "camn: warning: attribute 'tags': a token_seq column: only the first token of each item"
        " is kept; 1 of the 3 items"
    )
    schema = json.loads((out / "schema.json").read_text())
    assert schema["attribute_warnings"]["tags"] == raw.warnings["tags"]


def test_html_character_references_in_item_values_are_unescaped(tmp_path):
    item = (
        "item_id:token\ttitle:token\tcategories:token_seq\tprice:float\tbrand:token\n"
        "A1\tBurt&#39;s Lip Balm\t'Beauty', 'Bath &amp; Body'\t5\tBurt&#39;s Bees\n"
        "A2\tplain\t'Beauty', 'Bath & Body'\t6\tBurt's Bees\n"
        "A3\tCr&egrave;me\t'Beauty'\t7\tCr&egrave;me of Nature\n"
    )
    raw, _ = read(*write_files(tmp_path, item=item), attributes=["title", "brand"])
    assert raw.items.rows() == [("A1", "Burt's Lip Balm", "Burt's Bees"),
                                ("A2", "plain", "Burt's Bees"),
                                ("A3", "Crème", "Crème of Nature")]
    raw, _ = read(*write_files(tmp_path, item=item), recipe="amazon")
    assert raw.items.select("category_l2", "brand").rows() == [
        ("Bath & Body", "Burt's Bees"), ("Bath & Body", "Burt's Bees"), (None, "Crème of Nature"),
    ]


def test_bucketize_puts_a_float_column_into_deciles(tmp_path):
    raw, report = read(*write_files(tmp_path), attributes=["price", "brand"], bucketize=["price"])
    # A1 5.0 and A3 7.5 are the items of the interactions with a price; A2 has none
    assert raw.items.select("item", "price").rows() == [("A1", "q0"), ("A2", None), ("A3", "q9")]
    assert report.total == 0
    assert raw.notes == ["price: 10 quantile buckets over the 2 items of the interactions that"
                         " have a number; 1 without (unknown)"]
    with pytest.raises(DataError, match=r"^--bucketize brand,colour: 'colour' is not among"):
        read(*write_files(tmp_path), attributes=["price", "brand"], bucketize=["brand", "colour"])
    with pytest.raises(DataError, match="--recipe amazon puts the price into deciles itself"):
        read(*write_files(tmp_path), recipe="amazon", bucketize=["price"])
