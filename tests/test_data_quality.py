"""What camn prepare warns of without refusing the data (camn.data.quality), and camn stats's
listing of it."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from camn.cli import main
from camn.data import quality

NO_VALUE = (
    "no item has a value: all 30 items get the unknown id, so the attribute carries nothing"
    " (check the column's name, or leave it out)"
)
ONE_VALUE = (
    "one value, 'red', for every item that has one (30 of the 30 items): the attribute carries"
    " nothing"
)
MOSTLY_BLANK = (
    "mostly blank: 20 of the 30 items (67%) have no value and share the unknown id"
)
NUMBERS = (
    "numbers (30 distinct, e.g. '1.25', '10.25', '11.25'): each number is a category of its own,"
    " so close numbers share nothing and a number unseen in training is unknown; pass"
    " --bucketize price to put them into 10 quantile buckets"
)


def column(name: str, values: list) -> pl.Series:
    return pl.Series(name, values, dtype=pl.String)


def test_each_kind_of_column_gets_its_finding() -> None:
    assert quality.column_warnings(column("shape", [None] * 30)) == [NO_VALUE]
    assert quality.column_warnings(column("colour", ["red"] * 30)) == [ONE_VALUE]
    assert quality.column_warnings(column("colour", ["red"] * 12 + [None] * 18)) == [
        "one value, 'red', for every item that has one (12 of the 30 items, 18 without a value):"
        " the attribute carries nothing but whether the value is known"
    ]
    assert quality.column_warnings(
        column("brand", [f"b{i % 4}" for i in range(10)] + [None] * 20)) == [MOSTLY_BLANK]
    assert quality.column_warnings(column("price", [f"{i}.25" for i in range(1, 31)])) == [NUMBERS]


def test_columns_without_a_problem_are_left_alone() -> None:
    half_blank = column("brand", [f"b{i % 4}" for i in range(15)] + [None] * 15)  # 50%: not more
    whole_numbers = column("category_id", [str(i) for i in range(30)])  # codes, not amounts
    few_numbers = column("stars", [f"{i % 5}.5" for i in range(30)])  # 5 distinct values
    mixed = column("size", [f"{i}.5" for i in range(29)] + ["XL"])
    for values in (half_blank, whole_numbers, few_numbers, mixed):
        assert quality.column_warnings(values) == [], values.name


def test_history_warning_names_the_longest_history_and_the_size() -> None:
    most = 3  # the most active user: 3 interactions, so a longest history of 2
    assert quality.history_warning(most, 10_000, 5, 100_000) == (
        "--max-len 100,000 is far above the longest history, 2 items (the most active user has 3"
        " interactions): batches pad every history to 100,000 positions, so one pass over the"
        " 10,000 samples gathers 18.6 GiB of history ids (10,000 x 100,000 x 5) where --max-len"
        " 2 would gather 390.6 KiB; pass --max-len 2 or less"
    )
    assert quality.history_warning(most, 10_000, 5, 4) is None  # not above twice the longest
    assert quality.history_warning(most, 4, 5, 100_000) is None  # padding under 64 MiB


def write_table(folder: Path) -> tuple[Path, Path]:
    """30 items, each in two users' histories; columns with each kind of problem, and two
    sound ones (a category code and a brand blank for half the items)."""
    items = pl.DataFrame({
        "item": [f"i{i:02d}" for i in range(30)],
        "colour": ["red"] * 30,
        "shape": [None] * 30,
        "brand": [f"b{i % 4}" if i < 10 else None for i in range(30)],
        "price": [f"{i}.25" for i in range(1, 31)],
        "code": [str(i % 7) for i in range(30)],
    })
    items.write_csv(folder / "items.csv")
    rows = [(f"u{u:02d}", f"i{(u + step) % 30:02d}", step) for u in range(30) for step in range(3)]
    pl.DataFrame(rows, schema=["user", "item", "time"], orient="row").write_csv(
        folder / "inter.csv")
    return folder / "inter.csv", folder / "items.csv"


def test_prepare_warns_keeps_the_findings_and_stats_lists_them(tmp_path, capsys) -> None:
    """Before, these columns became "colour (1 values)", "shape (0 values)", a brand mostly
    <unk> and a category per price, and nothing was said."""
    inter, items = write_table(tmp_path)
    out = tmp_path / "store"
    assert main(["prepare", "table", "--interactions", str(inter), "--items", str(items),
                 "--attributes", "colour,shape,brand,price,code", "--out", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("camn: warning: attribute")]
    assert warnings == [
        f"camn: warning: attribute 'colour': {ONE_VALUE}",
        f"camn: warning: attribute 'shape': {NO_VALUE}",
        f"camn: warning: attribute 'brand': {MOSTLY_BLANK}",
        f"camn: warning: attribute 'price': {NUMBERS}",
    ]
    schema = json.loads((out / "schema.json").read_text())
    assert schema["attribute_warnings"] == {
        "colour": [ONE_VALUE], "shape": [NO_VALUE], "brand": [MOSTLY_BLANK], "price": [NUMBERS],
    }
    assert main(["stats", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("attribute warnings: 4")
    assert lines[start + 1:] == [
        f"  slot 1 colour: {ONE_VALUE}",
        f"  slot 2 shape: {NO_VALUE}",
        f"  slot 3 brand: {MOSTLY_BLANK}",
        f"  slot 4 price: {NUMBERS}",
    ]


def test_bucketize_silences_the_numbers_warning(tmp_path, capsys) -> None:
    inter, items = write_table(tmp_path)
    out = tmp_path / "store"
    assert main(["prepare", "table", "--interactions", str(inter), "--items", str(items),
                 "--attributes", "price,code", "--bucketize", "price", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "attribute" not in captured.err
    assert ("price: 10 quantile buckets over the 30 items of the interactions that have a"
            " number; 0 without (unknown)") in captured.out
    assert main(["stats", str(out)]) == 0
    out_lines = capsys.readouterr().out.splitlines()
    assert "attribute warnings: none" in out_lines
    assert "price (10 values)" in next(line for line in out_lines if line.startswith("attributes"))


def test_a_store_without_findings_and_an_older_schema_list_none() -> None:
    assert quality.stats_lines({"attributes": ["item_id"], "attribute_warnings": {}}) == [
        "attribute warnings: none"]
    assert quality.stats_lines({"attributes": ["item_id"]}) == ["attribute warnings: none"]


def test_prepare_warns_of_a_max_len_far_above_the_longest_history(
    tmp_path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, --max-len 100000 for histories of 2 wrote the padding without a word (the size
    floor is lowered so that the test store stays small)."""
    monkeypatch.setattr(quality, "PADDING_WARN_BYTES", 1)
    inter, _ = write_table(tmp_path)
    out = tmp_path / "store"
    assert main(["prepare", "table", "--interactions", str(inter), "--max-len", "1000",
                 "--out", str(out)]) == 0
    assert (
        "camn: warning: --max-len 1,000 is far above the longest history, 2 items (the most"
        " active user has 3 interactions): batches pad every history to 1,000 positions, so one"
        " pass over the 60 samples gathers 234.4 KiB of history ids (60 x 1,000 x 1) where"
        " --max-len 2 would gather 480 bytes; pass --max-len 2 or less\n"
    ) in capsys.readouterr().err
    assert main(["prepare", "table", "--interactions", str(inter), "--max-len", "4",
                 "--out", str(tmp_path / "fits")]) == 0
    assert "--max-len" not in capsys.readouterr().err
