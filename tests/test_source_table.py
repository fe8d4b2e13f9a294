"""The table source: CSV, TSV, Parquet and JSON lines, column checks, nulls, end to end."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from camn.cli import main
from camn.data.raw import BadInputReport, DataError
from camn.data.sources import table
from camn.data.store import PreparedStore

INTERACTIONS = pl.DataFrame(
    {"uid": [1, 1, 2, 2, 3, 3], "sku": ["a", "b", "a", "c", "b", "c"], "ts": [5, 6, 1, 2, 9, 8]}
)
ITEMS = pl.DataFrame(
    {"sku": ["a", "b", "c"], "brand": ["x", None, "y"], "price": [1.5, 2.0, None]}
)
EXPECTED_INTERACTIONS = [
    ("1", "a", 5), ("1", "b", 6), ("2", "a", 1), ("2", "c", 2), ("3", "b", 9), ("3", "c", 8)
]
EXPECTED_ITEMS = [("a", "x", "1.5"), ("b", None, "2.0"), ("c", "y", None)]


def save(frame: pl.DataFrame, path: Path) -> Path:
    fmt = table.FORMATS.get(path.suffix, "csv")
    if fmt == "csv":
        frame.write_csv(path)
    elif fmt == "tsv":
        frame.write_csv(path, separator="\t")
    elif fmt == "parquet":
        frame.write_parquet(path)
    else:
        frame.write_ndjson(path)
    return path


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    table.add_arguments(parser)
    return parser.parse_args(list(argv))


def read(*argv: str, strict: bool = False):
    report = BadInputReport(strict=strict)
    return table.read(report=report, **vars(args(*argv))), report


def as_text(interactions: pl.DataFrame) -> pl.DataFrame:
    """The ids as text (a file's integer ids are read as integers)."""
    return interactions.with_columns(pl.col("user", "item").cast(pl.String))


def standard(inter: Path, items: Path, *extra: str) -> list[str]:
    return [
        "--interactions", str(inter), "--items", str(items), "--user-col", "uid",
        "--item-col", "sku", "--time-col", "ts", "--attributes", "brand,price", *extra,
    ]


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".txt", ".parquet", ".jsonl", ".ndjson"])
def test_every_format_reads_the_same(tmp_path: Path, ext: str) -> None:
    inter = save(INTERACTIONS, tmp_path / f"inter{ext}")
    items = save(ITEMS, tmp_path / f"items{ext}")
    raw, report = read(*standard(inter, items))
    assert as_text(raw.interactions).rows() == EXPECTED_INTERACTIONS
    assert raw.interactions["time"].dtype == pl.Int64
    assert raw.items.columns == ["item", "brand", "price"]
    assert raw.items.rows() == EXPECTED_ITEMS
    assert raw.attributes == ["sku", "brand", "price"]
    assert report.total == 0


def test_json_array_and_format_override(tmp_path: Path) -> None:
    inter = tmp_path / "inter.json"
    inter.write_text(json.dumps(INTERACTIONS.to_dicts()))  # a JSON array, not lines
    items = tmp_path / "items.data"
    ITEMS.write_csv(items)
    with pytest.raises(DataError, match=r"items\.data.*--format"):
        read(*standard(inter, items))
    raw, _ = read(*standard(inter, save(ITEMS, tmp_path / "items.jsonl")))
    assert as_text(raw.interactions).rows() == EXPECTED_INTERACTIONS
    csv_named_jsonl = tmp_path / "items_csv.jsonl"
    ITEMS.write_csv(csv_named_jsonl)
    inter_csv = save(INTERACTIONS, tmp_path / "i.csv")
    raw, _ = read(*standard(inter_csv, csv_named_jsonl, "--format", "csv"))
    assert raw.items.rows() == EXPECTED_ITEMS


def test_missing_column_names_file_and_lists_columns(tmp_path: Path) -> None:
    inter = save(INTERACTIONS, tmp_path / "inter.csv")
    items = save(ITEMS, tmp_path / "items.csv")
    argv = standard(inter, items)
    argv[argv.index("ts")] = "when"
    message = r"inter\.csv: no column 'when'; available columns: uid, sku, ts"
    with pytest.raises(DataError, match=message):
        read(*argv)
    argv = standard(inter, items)
    argv[-1] = "brand,colour"
    with pytest.raises(DataError, match=r"items\.csv: no column 'colour'.*sku, brand, price"):
        read(*argv)


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    items = save(ITEMS, tmp_path / "items.csv")
    for name, text in [("empty.csv", ""), ("header.csv", "uid,sku,ts\n"), ("e.jsonl", "")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=rf"{name}: "):
            read(*standard(tmp_path / name, items))
    with pytest.raises(DataError, match=r"absent\.csv: no such file"):
        read(*standard(tmp_path / "absent.csv", items))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk\.parquet: cannot read it as parquet"):
        read(*standard(tmp_path / "junk.parquet", items))


def test_null_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    inter = tmp_path / "inter.csv"
    inter.write_text("uid,sku,ts\n1,a,5\n,b,6\n2,,1\n2,c,\n3,b,noon\n3,c,8\n")
    items = tmp_path / "items.csv"
    items.write_text("sku,brand,price\na,x,1\n,y,2\na,z,3\nb,,\n")
    raw, report = read(*standard(inter, items))
    assert as_text(raw.interactions).rows() == [("1", "a", 5), ("3", "c", 8)]
    assert raw.items.rows() == [("a", "x", "1"), ("b", None, None)]
    assert report.counts == {
        "no user value (row skipped)": 1,
        "no item value (row skipped)": 2,  # one in each file
        "no time value (row skipped)": 1,
        "time is not a number or a date (row skipped)": 1,
        "item listed again in the items file (first kept)": 1,
    }
    for where in ("inter.csv:3:", "inter.csv:4:", "inter.csv:5:", "inter.csv:6:", "items.csv:3:"):
        assert any(where in e for e in report.examples), where
    with pytest.raises(DataError, match=r"inter\.csv:3: no user value"):
        read(*standard(inter, items), strict=True)


def test_broken_json_line_is_counted(tmp_path: Path) -> None:
    inter = tmp_path / "inter.jsonl"
    lines = [json.dumps(r) for r in INTERACTIONS.to_dicts()]
    inter.write_text("\n".join([*lines[:2], "{broken", *lines[2:]]) + "\n")
    raw, report = read(*standard(inter, save(ITEMS, tmp_path / "items.csv")))
    assert as_text(raw.interactions).rows() == EXPECTED_INTERACTIONS
    assert report.counts == {"broken JSON (line skipped)": 1}
    assert "inter.jsonl:3:" in report.examples[0]
    inter.write_text("\n".join([*lines[:2], "", " ", '{"uid": null, "sku": "a", "ts": 1}']))
    raw, report = read(*standard(inter, save(ITEMS, tmp_path / "items.csv")))
    assert as_text(raw.interactions).rows() == EXPECTED_INTERACTIONS[:2]
    assert report.counts == {"no user value (row skipped)": 1}
    assert "inter.jsonl:5:" in report.examples[0]  # blank lines counted in the numbering


def test_times_as_dates_and_floats(tmp_path: Path) -> None:
    inter = tmp_path / "inter.csv"
    columns = ["--interactions", str(inter), "--user-col", "u", "--item-col", "i"]
    columns += ["--time-col", "t"]
    inter.write_text("u,i,t\n1,a,2024-01-02 10:00:00\n1,b,2024-01-01 09:00:00\n")
    raw, _ = read(*columns)
    first, second = raw.interactions["time"].to_list()
    assert second < first and first - second == (24 + 1) * 3600 * 10**6
    assert raw.attributes == ["i"] and raw.items.rows() == [("a",), ("b",)]
    inter.write_text("u,i,t\n1,a,1.5\n1,b,0.25\n1,c,nan\n")
    raw, report = read(*columns)
    assert raw.interactions["time"].to_list() == [1.5, 0.25]
    assert report.counts == {"time is not a number or a date (row skipped)": 1}


def test_items_item_col_and_attribute_checks(tmp_path: Path) -> None:
    inter = save(INTERACTIONS, tmp_path / "inter.parquet")
    items = save(ITEMS.rename({"sku": "product"}), tmp_path / "items.parquet")
    raw, _ = read(*standard(inter, items, "--items-item-col", "product"))
    assert raw.attributes == ["product", "brand", "price"]
    assert raw.items.rows() == EXPECTED_ITEMS
    argv = standard(inter, items, "--items-item-col", "product")
    argv[argv.index("brand,price")] = "brand,brand"
    with pytest.raises(DataError, match="distinct"):
        read(*argv)
    with pytest.raises(DataError, match="--items"):
        read("--interactions", str(inter), "--attributes", "brand")


def test_prepares_end_to_end(tmp_path: Path, capsys) -> None:
    inter = save(INTERACTIONS, tmp_path / "inter.csv")
    items = save(ITEMS, tmp_path / "items.csv")
    out = tmp_path / "store"
    assert main(["prepare", "table", *standard(inter, items), "--out", str(out)]) == 0
    assert "users 3 | items 3 | attributes 3 | samples 6" in capsys.readouterr().out
    store = PreparedStore(out)
    assert store.vocab("brand") == ["<pad>", "<unk>", "x", "y"]
    assert store.vocab("price") == ["<pad>", "<unk>", "1.5", "2.0"]
    item_attributes = store.array("item_attributes")
    assert item_attributes[2:].tolist() == [[2, 2, 2], [3, 1, 3], [4, 3, 1]]  # a, b, c
    argv = ["prepare", "table", *standard(inter, items), "--out", str(tmp_path / "x")]
    argv[argv.index("uid")] = "user_id"
    assert main(argv) == 2
    assert "no column 'user_id'" in capsys.readouterr().err


def test_tsv_fields_may_start_with_a_quote(tmp_path: Path) -> None:
    items = tmp_path / "items.tsv"
    items.write_text('sku\tbrand\tprice\na\t"Best" Co\t1\nb\t\t2\nc\ty\t\n')
    raw, report = read(*standard(save(INTERACTIONS, tmp_path / "inter.tsv"), items))
    assert raw.items.rows() == [("a", '"Best" Co', "1"), ("b", None, "2"), ("c", "y", None)]
    assert report.total == 0


@pytest.mark.parametrize(("name", "separator"), [("inter.csv", ","), ("inter.tsv", "\t")])
def test_bytes_that_are_not_utf8_are_counted_per_row(tmp_path: Path, name, separator) -> None:
    inter = tmp_path / name
    rows = [b"uid,sku,ts", b"1,a,5", b"Jos\xe9,b,6", b"2,a,1", b"2,\xff\xfe,2", b"3,b,9"]
    inter.write_bytes(b"\n".join(r.replace(b",", separator.encode()) for r in rows) + b"\n")
    raw, report = read(*standard(inter, save(ITEMS, tmp_path / "items.csv")))
    assert as_text(raw.interactions).rows() == [("1", "a", 5), ("2", "a", 1), ("3", "b", 9)]
    reason = "bytes that are not UTF-8 text (row skipped)"
    assert report.counts == {reason: 2}
    assert report.examples == [f"{inter}:3: {reason}", f"{inter}:5: {reason}"]
    with pytest.raises(DataError) as error:
        read(*standard(inter, save(ITEMS, tmp_path / "items.csv")), strict=True)
    assert str(error.value) == f"{inter}:3: bytes that are not UTF-8 text"


def test_rows_with_too_many_fields_are_counted_not_fatal(tmp_path: Path, capsys) -> None:
    inter = tmp_path / "inter.csv"
    inter.write_text("uid,sku,ts\n1,a,5\n1,b,6\n2,a,1,oops\n2,c,2\n3,b,9\n3,c,8\n")
    items = save(ITEMS, tmp_path / "items.csv")
    raw, report = read(*standard(inter, items))
    assert len(raw.interactions) == 5
    reason = "more fields than the header's 3 columns (row skipped)"
    assert report.counts == {reason: 1} and report.examples == [f"{inter}:4: {reason}"]
    argv = ["prepare", "table", *standard(inter, items), "--out", str(tmp_path / "store")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"1 x {reason}" in out and f"e.g. {inter}:4: " in out
    assert "truncate_ragged_lines" not in out and "polars" not in out


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_gzip_files_read_as_the_plain_ones(tmp_path: Path, ext: str) -> None:
    plain = [save(INTERACTIONS, tmp_path / f"inter{ext}"), save(ITEMS, tmp_path / f"items{ext}")]
    packed = []
    for path in plain:
        packed.append(path.with_name(path.name + ".gz"))
        packed[-1].write_bytes(gzip.compress(path.read_bytes()))
    raw, report = read(*standard(*packed))
    assert as_text(raw.interactions).rows() == EXPECTED_INTERACTIONS
    assert raw.items.rows() == EXPECTED_ITEMS and report.total == 0
    (tmp_path / "inter.gz").write_bytes(packed[0].read_bytes())
    with pytest.raises(DataError, match=r"inter\.gz: cannot tell the format from the extension"):
        read(*standard(tmp_path / "inter.gz", packed[1]))


def test_items_without_attributes_is_refused_naming_the_columns(tmp_path: Path) -> None:
    inter = save(INTERACTIONS, tmp_path / "inter.csv")
    items = save(ITEMS, tmp_path / "items.csv")
    argv = standard(inter, items)[:-2]  # no --attributes
    with pytest.raises(DataError) as error:
        read(*argv)
    assert str(error.value) == (
        f"--items {items} without --attributes: name the columns to use as item attributes, "
        "e.g. --attributes brand,price (its columns: sku, brand, price); without --items the "
        "item id is the only attribute"
    )
    parser = argparse.ArgumentParser()
    table.add_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    assert "--items ITEMS item table whose --attributes columns become attributes (needs " \
           "--attributes)" in help_text


def test_json_lines_of_the_wrong_shape_are_counted_per_line(tmp_path: Path) -> None:
    inter = tmp_path / "inter.jsonl"
    lines = [json.dumps(r) for r in INTERACTIONS.to_dicts()]
    lines[1] = json.dumps({"uid": 1, "sku": "b", "ts": [6]})  # a list for a time
    lines.insert(3, "[1, 2]")  # valid JSON, not an object
    inter.write_bytes("\n".join(lines).encode() + b"\n" + b'{"uid": "\xff"}\n')
    raw, report = read(*standard(inter, save(ITEMS, tmp_path / "items.csv")))
    expected = [r for i, r in enumerate(EXPECTED_INTERACTIONS) if i != 1]
    assert as_text(raw.interactions).rows() == expected
    assert report.counts == {"time is not a number or a date (row skipped)": 1,
                             "not a JSON object (line skipped)": 1,
                             "bytes that are not UTF-8 text (line skipped)": 1}
    assert sorted(report.examples) == [
        f"{inter}:2: time is not a number or a date (row skipped)",
        f"{inter}:4: not a JSON object (line skipped)",
        f"{inter}:8: bytes that are not UTF-8 text (line skipped)",
    ]


def test_times_that_are_not_finite_or_of_another_type(tmp_path: Path) -> None:
    inter = tmp_path / "inter.csv"
    inter.write_text("uid,sku,ts\n1,a,5\n1,b,inf\n1,c,-inf\n")
    raw, report = read(*standard(inter, save(ITEMS, tmp_path / "items.csv")))
    assert as_text(raw.interactions).rows() == [("1", "a", 5)]
    assert report.counts == {"time is not a number or a date (row skipped)": 2}
    listed = INTERACTIONS.with_columns(pl.col("ts").map_elements(lambda t: [t],
                                                                 return_dtype=pl.List(pl.Int64)))
    path = save(listed, tmp_path / "inter.parquet")
    with pytest.raises(DataError) as error:
        read(*standard(path, save(ITEMS, tmp_path / "items.csv")))
    assert str(error.value) == (
        f"{path}: column 'ts' (List(Int64)) cannot be read as times (numbers, dates or text)"
    )


def test_every_row_bad_names_an_example(tmp_path: Path) -> None:
    inter = tmp_path / "inter.csv"
    inter.write_text("uid,sku,ts\n1,a,\n2,b,\n")
    with pytest.raises(DataError) as error:
        read(*standard(inter, save(ITEMS, tmp_path / "items.csv")))
    assert str(error.value) == (
        f"{inter}: every row is bad input, e.g. {inter}:2: no time value (row skipped)"
    )


def test_missing_column_message_lists_at_most_20_columns(tmp_path: Path) -> None:
    inter = tmp_path / "inter.csv"
    inter.write_text(",".join(f"col{i}" for i in range(30)) + "\n" + ",".join("1" * 30) + "\n")
    with pytest.raises(DataError) as error:
        read(*standard(inter, save(ITEMS, tmp_path / "items.csv")))
    assert str(error.value).endswith("col18, col19 and 10 more")


def test_users_dropped_for_one_interaction_are_in_the_summary(tmp_path: Path, capsys) -> None:
    inter = tmp_path / "inter.csv"
    inter.write_text("uid,sku,ts\n1,a,5\n1,b,6\n2,a,1\n2,c,2\n3,b,9\n4,c,1\n")
    out = tmp_path / "store"
    assert main(["prepare", "table", *standard(inter, save(ITEMS, tmp_path / "items.csv")),
                 "--out", str(out)]) == 0
    assert "2 user(s) with under 2 interactions dropped\n" in capsys.readouterr().out
    schema = PreparedStore(out).schema
    assert schema["dropped_users_under_2_interactions"] == 2
    assert "2 user(s) with under 2 interactions dropped" in schema["notes"]


def test_no_user_with_two_interactions_is_an_error(tmp_path: Path, capsys) -> None:
    inter = tmp_path / "inter.csv"
    inter.write_text("uid,sku,ts\n1,a,5\n2,b,6\n")
    out = tmp_path / "store"
    argv = ["prepare", "table", *standard(inter, save(ITEMS, tmp_path / "items.csv")),
            "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "camn: error: no user has 2 or more interactions: nothing to prepare\n"
    )
    assert not out.exists()


TIMES = ["--interactions", "INTER", "--user-col", "u", "--item-col", "i", "--time-col", "t"]


def read_times(inter: Path, lines: list[str], *extra: str, strict: bool = False):
    inter.write_text("u,i,t\n" + "".join(line + "\n" for line in lines))
    return read(*[str(inter) if a == "INTER" else a for a in TIMES], *extra, strict=strict)


def dates(raw) -> list[str]:
    return [str(t) for t in pl.from_epoch(raw.interactions["time"], "us").dt.date()]


def test_ambiguous_slash_dates_are_read_day_first_and_a_note_says_so(tmp_path: Path) -> None:
    """Before, 01/02/2020 was read day first without a word."""
    inter = tmp_path / "inter.csv"
    raw, report = read_times(inter, ["1,a,01/02/2020", "1,b,03/04/2020 10:30", "2,a,13/02/2020"])
    assert dates(raw) == ["2020-02-01", "2020-04-03", "2020-02-13"] and report.total == 0
    assert raw.notes == [
        "time column 't': 2 date(s) such as '01/02/2020' fit both readings and were read day"
        " first (01/02/2020 = 1 February 2020); 1 other date(s) fit only day first, 0 only"
        " month first; to read them the other way pass --time-format '%m/%d/%Y' followed by"
        " the time's fields, e.g. '%m/%d/%Y %H:%M'"
    ]
    raw, _ = read_times(inter, ["1,a,1/2/2020", "1,b,03/04/2020"])
    assert dates(raw) == ["2020-02-01", "2020-04-03"]
    assert "no date tells the two readings apart" in raw.notes[0]
    raw, _ = read_times(inter, ["1,a,13/02/2020", "1,b,14/02/2020"])  # no other reading
    assert dates(raw) == ["2020-02-13", "2020-02-14"] and raw.notes == []


def test_slash_dates_that_show_month_first_are_read_month_first(tmp_path: Path) -> None:
    inter = tmp_path / "inter.csv"
    raw, report = read_times(inter, [
        "1,a,01/02/2020", "1,b,02/13/2020", "2,a,02/14/2020", "2,b,13/02/2020",
    ])
    assert dates(raw) == ["2020-01-02", "2020-02-13", "2020-02-14"]
    assert report.counts == {"time is not a number or a date (row skipped)": 1}
    assert report.examples == [f"{inter}:5: time is not a number or a date (row skipped)"]
    assert raw.notes[0].startswith(
        "time column 't': 1 date(s) such as '01/02/2020' fit both readings and were read month"
        " first (01/02/2020 = 2 January 2020); 1 other date(s) fit only day first, 2 only month"
        " first; to read them the other way pass --time-format '%d/%m/%Y'"
    )


def test_time_format_reads_text_times_and_counts_rows_that_do_not_match(tmp_path: Path) -> None:
    inter = tmp_path / "inter.csv"
    raw, report = read_times(inter, ["1,a,01/02/2020", "1,b,12/31/2020", "1,c,31/12/2020"],
                             "--time-format", "%m/%d/%Y")
    assert dates(raw) == ["2020-01-02", "2020-12-31"] and raw.notes == []
    reason = "time does not match --time-format '%m/%d/%Y' (row skipped)"
    assert report.counts == {reason: 1}
    assert report.examples == [f"{inter}:4: {reason}"]
    assert raw.origin["time_format"] == "%m/%d/%Y"
    with pytest.raises(DataError) as error:
        read_times(inter, ["1,a,2020-01-02"], "--time-format", "%m/%d/%Y", strict=True)
    assert str(error.value) == f"{inter}:2: time does not match --time-format '%m/%d/%Y'"
    with pytest.raises(DataError) as error:
        read_times(inter, ["1,a,2020-01-02", "1,b,2020-01-03"], "--time-format", "%d.%m.%Y")
    assert str(error.value) == (
        f"{inter}: every row is bad input, e.g. {inter}:2: time does not match --time-format"
        " '%d.%m.%Y' (row skipped)"
    )
    with pytest.raises(DataError) as error:
        read_times(inter, ["1,a,10"], "--time-format", "%H")
    assert str(error.value) == (
        "--time-format '%H' cannot be used (Invalid format string: Please either specify both"
        " hour and minute, or neither.)"
    )


def test_time_format_on_numbers_is_refused(tmp_path: Path) -> None:
    inter = save(INTERACTIONS, tmp_path / "inter.parquet")
    with pytest.raises(DataError) as error:
        read("--interactions", str(inter), "--user-col", "uid", "--item-col", "sku",
             "--time-col", "ts", "--time-format", "%Y")
    assert str(error.value) == (
        f"{inter}: column 'ts' holds Int64 values, not text: --time-format applies to times"
        " written as text; drop it"
    )


def test_bucketize_puts_numbers_into_deciles_over_the_used_items(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    # 20 items of the interactions priced 1..20, one unused at 1000, one text, one blank
    lines = [f"i{n},{n}.5,b{n % 3}" for n in range(1, 21)] + ["i99,1000,b0", "i21,n/a,b1",
                                                             "i22,,b2"]
    items.write_text("item,price,brand\n" + "".join(line + "\n" for line in lines))
    inter = tmp_path / "inter.csv"
    used = [f"i{n}" for n in range(1, 23)]
    inter.write_text("user,item,time\n" + "".join(f"u{n},{i},{n}\n" for n, i in enumerate(used)))
    raw, report = read("--interactions", str(inter), "--items", str(items),
                       "--attributes", "price,brand", "--bucketize", "price")
    price = dict(raw.items.select("item", "price").rows())
    # deciles of 1.5 .. 20.5: two items a bucket; the unused item is above them all
    assert [price[f"i{n}"] for n in range(1, 21)] == [f"q{b}" for b in range(10) for _ in "ab"]
    assert (price["i99"], price["i21"], price["i22"]) == ("q9", None, None)
    assert raw.items["brand"].to_list()[:3] == ["b1", "b2", "b0"]  # not bucketed
    reason = "price is not a number, which --bucketize needs (set to unknown)"
    assert report.counts == {reason: 1} and report.examples == [f"{items}:23: {reason}"]
    assert raw.notes == ["price: 10 quantile buckets over the 20 items of the interactions that"
                         " have a number; 2 without (unknown)"]
    assert raw.origin["bucketize"] == ["price"]
    with pytest.raises(DataError) as error:
        read("--interactions", str(inter), "--items", str(items), "--attributes", "brand",
             "--bucketize", "price")
    assert str(error.value) == (
        "--bucketize price: 'price' is not among --attributes (brand); --bucketize names"
        " attribute columns to put into buckets"
    )


def test_integer_ids_stay_integers_and_prepare_as_their_text_would(tmp_path: Path) -> None:
    """A Parquet log's integer ids are never turned into a string per row; they are numbered
    in sorted order of their text (9 after 100) exactly as the same ids written as text."""
    log = pl.DataFrame({"uid": [9, 9, 100, 100, 10, 10], "sku": [30, 4, 4, 30, 200, 4],
                        "ts": [1, 2, 1, 2, 1, 2], "unused": ["x"] * 6})
    numbers = save(log, tmp_path / "numbers.parquet")
    text = save(log.with_columns(pl.col("uid", "sku").cast(pl.String)), tmp_path / "text.parquet")
    raw, _ = read("--interactions", str(numbers), "--user-col", "uid", "--item-col", "sku",
                  "--time-col", "ts")
    assert raw.interactions["user"].dtype == pl.Int64
    assert "unused" not in raw.interactions.columns
    for path, out in ((numbers, "s-numbers"), (text, "s-text")):
        assert main(["prepare", "table", "--interactions", str(path), "--user-col", "uid",
                     "--item-col", "sku", "--time-col", "ts", "--out", str(tmp_path / out)]) == 0
    stores = [PreparedStore(tmp_path / out) for out in ("s-numbers", "s-text")]
    assert stores[0].vocab("sku")[2:] == ["200", "30", "4"]
    assert (tmp_path / "s-numbers/users.txt").read_text().split() == ["10", "100", "9"]
    for name in ("clicks", "click_times", "timeline_offsets", "timeline_users", "pair_users",
                 "pair_positions", "pair_negatives", "item_attributes"):
        assert (stores[0].array(name) == stores[1].array(name)).all(), name
