"""Amazon Beauty written in the two layouts of logs whose rows carry their own history, to try
``camn prepare dien`` and ``camn prepare table --history-col`` on real data.

DIEN's layout (its Amazon Books and Electronics files): one click and one sampled non-click a
user, as DIEN builds its rows: the user's last review is the click, the reviews before it
(oldest first) its history, the non-click a random other item; categories are the items' leaf
categories. ``DIR/dien`` holds ``local_train_splitByUser`` (80% + 10% of the users, seeded),
``local_test_splitByUser`` (the other 10%) and ``item-info``; ``DIR/bars`` holds the same rows
as BARS/FuxiCTR CSVs (``train.csv``, ``valid.csv``, ``test.csv``: label, user, item, category,
history and history_categories joined by ``^``).

    python benchmarks/beauty_as_rows.py --out beauty-rows
    camn prepare dien --path beauty-rows/dien --out stores/beauty-dien
    camn prepare table --interactions beauty-rows/bars/train.csv \\
        --valid beauty-rows/bars/valid.csv --test beauty-rows/bars/test.csv --label-col label \\
        --history-col history,category=history_categories --out stores/beauty-bars
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

from camn.data.sources import dien, recbole

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_beauty_5core"
DIEN_SEPARATOR, BARS_SEPARATOR = "\x02", "^"
PARTS = ("train", "valid", "test")


def beauty_rows(inter: Path, items: Path, seed: int = 0) -> pl.DataFrame:
    """The rows (see the module docstring). Columns: user, item, category, label, history,
    history_categories (lists), and ``part``: 10% of the users (seeded) ``test``, 10%
    ``valid``, the rest ``train``; a user's click comes before its non-click."""
    raw = recbole.read(inter=inter, item=items, recipe="amazon")
    catalogue = raw.items.select("item",
                                 pl.col("category_leaf").fill_null("none").alias("category"))
    category = dict(zip(catalogue["item"], catalogue["category"], strict=True))
    sequences = raw.interactions.sort("user", "time", "item").group_by(
        "user", maintain_order=True).agg(pl.col("item"))
    rng = np.random.default_rng(seed)
    last = sequences["item"].list.last()
    item_ids = catalogue["item"].to_numpy()
    negative = item_ids[rng.integers(len(item_ids), size=len(sequences))]
    negative = np.where(negative == last.to_numpy(), item_ids[0], negative)
    part = np.asarray(PARTS)[np.searchsorted([0.8, 0.9], rng.random(len(sequences)), side="right")]
    base = sequences.select("user", history=pl.col("item").list.head(pl.col("item").list.len() - 1),
                            part=pl.Series(part))
    clicks = base.with_columns(item=last, label=pl.lit(1))
    skips = base.with_columns(item=pl.Series(negative), label=pl.lit(0))
    rows = pl.concat([clicks, skips]).with_row_index("order")
    rows = rows.sort(pl.col("order") % len(sequences), "order").drop("order")
    lookup = {"return_dtype": pl.String}
    return rows.with_columns(
        pl.col("item").replace_strict(category, **lookup).alias("category"),
        pl.col("history").list.eval(pl.element().replace_strict(category, **lookup))
        .alias("history_categories"),
    ).select("user", "item", "category", "label", "history", "history_categories", "part")


def write_dien(rows: pl.DataFrame, folder: Path) -> Path:
    """DIEN's files: the train and valid parts make the train file, the test part the test
    file; item-info every item's category."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = rows.select(pl.concat_str(
        pl.col("label").cast(pl.String), "user", "item", "category",
        pl.col("history").list.join(DIEN_SEPARATOR),
        pl.col("history_categories").list.join(DIEN_SEPARATOR),
        separator="\t").alias("line"), "part")
    for name, parts in ((dien.TRAIN_FILE, ["train", "valid"]), (dien.TEST_FILE, ["test"])):
        text = lines.filter(pl.col("part").is_in(parts))["line"]
        (folder / name).write_text("\n".join(text) + "\n")
    info = rows.select("item", "category").unique(maintain_order=True)
    (folder / dien.ITEM_FILE).write_text(
        "\n".join(info.select(pl.concat_str("item", "category", separator="\t"))
                  .to_series()) + "\n")
    return folder


def write_bars(rows: pl.DataFrame, folder: Path) -> dict[str, Path]:
    """BARS/FuxiCTR CSVs, one a part, histories joined by ``^``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {part: folder / f"{part}.csv" for part in PARTS}
    for part, path in files.items():
        rows.filter(pl.col("part") == part).select(
            "label", "user", "item", "category",
            pl.col("history").list.join(BARS_SEPARATOR),
            pl.col("history_categories").list.join(BARS_SEPARATOR)).write_csv(path)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="the folder to write dien/ and bars/ into")
    parser.add_argument("--data", type=Path, default=SHARED / "recbole",
                        help="the folder of amazon_beauty.inter and amazon_beauty.item")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    inter, items = args.data / "amazon_beauty.inter", args.data / "amazon_beauty.item"
    for path in (inter, items):
        if not path.is_file():
            sys.exit(f"beauty_as_rows: {path}: no such file (pass --data FOLDER)")
    rows = beauty_rows(inter, items, args.seed)
    write_dien(rows, args.out / "dien")
    write_bars(rows, args.out / "bars")
    print(f"{len(rows):,} rows of {rows['user'].n_unique():,} users written to "
          f"{args.out / 'dien'} and {args.out / 'bars'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
