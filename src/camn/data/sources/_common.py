"""Helpers shared by the sources: streaming line readers and the Amazon attribute recipe.

The readers open plain or gzip files (gzip is detected from the magic bytes, not the name) and
hand out complete lines in large blocks, with line numbers, so a source can parse a block at once
and still name the line of a bad record. Every read error becomes a :class:`DataError` naming
the file.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl
from tqdm import tqdm

from camn.data.raw import DataError

GZIP_MAGIC = b"\x1f\x8b"
BLOCK_BYTES = 1 << 24  # 16 MiB of text per block: bounded memory, few Python-level steps
PROGRESS_MIN_BYTES = 1 << 26  # a progress bar for files over 64 MiB (on a terminal)

AMAZON_ATTRIBUTES = [
    "item_id", "category_l2", "category_l3", "category_leaf", "brand", "price_bucket",
]
PRICE_BUCKETS = 10
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


def iter_blocks(path: str | Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
    """Complete lines of ``path`` in blocks of about ``block_bytes`` bytes.

    Yields ``(number of the block's first line, block)``; lines are 1-based and every block
    ends with a newline (one is added after a last line that lacks it).
    """
    path = Path(path)
    line, rest = 1, b""
    size = path.stat().st_size if path.is_file() else 0
    with open_binary(path) as stream, tqdm(
        total=size, desc=f"reading {path.name}", unit="B", unit_scale=True, leave=False,
        disable=None if size > PROGRESS_MIN_BYTES else True,
    ) as bar:
        raw = getattr(stream, "fileobj", stream)  # gzip: progress in compressed bytes
        while data := _read(stream, block_bytes, path):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            block, rest = data[:cut], data[cut:]
            bar.update(raw.tell() - bar.n)
            if block:
                yield line, block
                line += block.count(b"\n")
    if rest:
        yield line, rest + b"\n"


def iter_lines(
    path: str | Path, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[int, bytes]]:
    """Every non-blank line of ``path`` (stripped of surrounding white space), with its number."""
    for first, block in iter_blocks(path, block_bytes):
        for offset, line in enumerate(block.split(b"\n")[:-1]):
            if line := line.strip():
                yield first + offset, line


def first_lines(path: str | Path, count: int) -> list[tuple[int, bytes]]:
    """The first ``count`` non-blank lines of ``path``; an empty file is a :class:`DataError`."""
    lines = []
    for number, line in iter_lines(path, block_bytes=1 << 16):
        lines.append((number, line))
        if len(lines) == count:
            break
    if not lines:
        raise DataError(f"{path}: empty file")
    return lines


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


def price_buckets(prices: pl.Series, reference: np.ndarray) -> pl.Series:
    """``"q0"`` .. ``"q9"``: the decile of each price among ``reference``; null stays null."""
    if len(reference) == 0:
        return pl.Series(prices.name, [None] * len(prices), dtype=pl.String)
    edges = np.quantile(reference, np.arange(1, PRICE_BUCKETS) / PRICE_BUCKETS)
    bucket = np.searchsorted(edges, prices.fill_null(0.0).to_numpy(), side="right")
    labels = pl.Series(prices.name, np.char.add("q", bucket.astype(str)), dtype=pl.String)
    return pl.select(pl.when(prices.is_not_null()).then(labels)).to_series().alias(prices.name)


def amazon_items(meta: pl.DataFrame, used_items: pl.Series) -> tuple[pl.DataFrame, list[str]]:
    """The Amazon attribute recipe (SPEC section 4), shared by the amazon and recbole sources.

    ``meta`` has the columns of :data:`AMAZON_META_SCHEMA`: ``path`` is the item's first category
    path, root first (e.g. ``['Beauty', 'Makeup', 'Face', 'Concealers & Neutralizers']``). The
    attributes (k = 6, :data:`AMAZON_ATTRIBUTES`): ``category_l2`` = path[1]; ``category_l3`` =
    path[1] + "/" + path[2], so equal level-3 names under different parents differ;
    ``category_leaf`` = the whole path joined by "/"; ``brand`` (white space stripped); and
    ``price_bucket``, the decile ("q0".."q9") of the price among the priced items that occur in
    ``used_items``. A missing level, an empty brand or a missing price is null (unknown).
    The first row of a repeated item wins. Returns the items table and a note on the buckets.
    """
    meta = meta.unique(subset="item", keep="first", maintain_order=True)
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
        price_bucket=price_buckets(meta["price"], reference.to_numpy()),
    )
    note = (
        f"price_bucket: {PRICE_BUCKETS} quantile buckets over the {len(reference):,} priced items"
        f" of the interactions; {len(used_items) - len(reference):,} items without a price"
    )
    return items, [note]
