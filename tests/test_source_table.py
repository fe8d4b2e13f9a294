"""The table source: CSV, TSV, Parquet and JSON lines, column checks, nulls, end to end."""

from __future__ import annotations

import argparse
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
    return table.read(args(*argv), report), report


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
    assert raw.interactions.rows() == EXPECTED_INTERACTIONS
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
    assert raw.interactions.rows() == EXPECTED_INTERACTIONS
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
    assert raw.interactions.rows() == [("1", "a", 5), ("3", "c", 8)]
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
    assert raw.interactions.rows() == EXPECTED_INTERACTIONS
    assert report.counts == {"broken JSON (line skipped)": 1}
    assert "inter.jsonl:3:" in report.examples[0]
    inter.write_text("\n".join([*lines[:2], "", " ", '{"uid": null, "sku": "a", "ts": 1}']))
    raw, report = read(*standard(inter, save(ITEMS, tmp_path / "items.csv")))
    assert raw.interactions.rows() == EXPECTED_INTERACTIONS[:2]
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
