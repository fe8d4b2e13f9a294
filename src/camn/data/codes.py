"""Dense integer codes of raw ids, and the items' attribute table built with them: what both
kinds of store (protocol samples, :mod:`camn.data.prepare`; labelled impressions,
:mod:`camn.data.impressions`) encode their ids with."""

from __future__ import annotations

import numpy as np
import polars as pl

from camn.data.protocols import FIRST_ITEM_ID
from camn.data.raw import BadInputReport, DataError, RawData


def sorted_codes(column: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """(n,) int32 code of every value (its position among the sorted distinct values, compared
    as text) and the sorted distinct values as text: the dense rank, found by sorting the
    distinct values only and joining them back (sorting every string is the slow part of a
    large log). An integer column (ids read from Parquet) is joined as integers, so that its
    rows are never turned into strings: only its distinct values are."""
    values = column.unique()
    text = values.cast(pl.String)
    order = text.arg_sort()
    lookup = pl.DataFrame({"value": values.gather(order),
                           "code": np.arange(len(values), dtype=np.int32)})
    codes = pl.DataFrame({"value": column}).join(lookup, on="value", how="left",
                                                 maintain_order="left")["code"]
    return codes.to_numpy(), text.gather(order).rename(column.name)


def encode_items(
    raw: RawData, items: pl.Series, report: BadInputReport
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Attribute ids of every item id: (num_items + 2, k), and the value vocabularies."""
    if raw.items.columns != ["item", *raw.attributes[1:]]:
        raise DataError(
            f"items table has columns {raw.items.columns}; expected item + {raw.attributes[1:]}"
        )
    items_table = raw.items.unique(subset="item", keep="first", maintain_order=True)
    frame = pl.DataFrame({"item": items}).join(
        items_table, on="item", how="left", maintain_order="left"
    )
    without = items.filter(~items.is_in(items_table["item"].implode()))
    if len(without):
        report.bad(f"items: item {without[0]!r}", None,
                   "item has no metadata (attributes set to unknown)", count=len(without))
    table = np.zeros((len(items) + FIRST_ITEM_ID, len(raw.attributes)), dtype=np.int32)
    table[1] = 1
    table[FIRST_ITEM_ID:, 0] = np.arange(FIRST_ITEM_ID, len(items) + FIRST_ITEM_ID)
    vocabularies = {raw.attributes[0]: items.to_list()}
    for slot, name in enumerate(raw.attributes[1:], start=1):
        column = frame[name].cast(pl.String)
        values = column.drop_nulls().unique().sort()
        lookup = pl.DataFrame({name: values, "id": np.arange(len(values)) + FIRST_ITEM_ID})
        ids = pl.DataFrame({name: column}).join(lookup, on=name, how="left", maintain_order="left")
        table[FIRST_ITEM_ID:, slot] = ids["id"].fill_null(1).to_numpy()
        vocabularies[name] = values.to_list()
    return table, vocabularies


def item_bags(
    raw: RawData, items: pl.Series, separators: dict[str, str], table: np.ndarray,
    vocabularies: dict[str, list[str]],
) -> dict[str, np.ndarray]:
    """The bag tables of the multi-valued attributes (``separators``: attribute -> the text
    that joins its values): (num_items + 2, M) int32 value ids per item id, 0-padded, M the
    longest bag (at least 1), each value once. Their vocabularies become the single values and
    their columns of ``table`` (changed in place) the first value's id, 1 for an empty bag."""
    frame = pl.DataFrame({"item": items}).join(
        raw.items.unique(subset="item", keep="first", maintain_order=True), on="item",
        how="left", maintain_order="left")
    bags = {}
    for name, separator in separators.items():
        slot = raw.attributes.index(name)
        split = frame[name].cast(pl.String).str.split(separator, literal=True).list.eval(
            pl.element().str.strip_chars().filter(pl.element() != "").unique(maintain_order=True))
        lengths = split.list.len().fill_null(0).to_numpy().astype(np.int64)
        flat = split.explode().drop_nulls()  # an empty or null bag explodes to a null
        values = flat.unique().sort()
        lookup = pl.DataFrame({"value": values,
                               "id": np.arange(len(values), dtype=np.int32) + FIRST_ITEM_ID})
        ids = pl.DataFrame({"value": flat}).join(lookup, on="value", how="left",
                                                maintain_order="left")["id"].to_numpy()
        bag = np.zeros((len(items) + FIRST_ITEM_ID, max(1, int(lengths.max(initial=0)))),
                       dtype=np.int32)
        starts = np.cumsum(lengths) - lengths
        rows = np.repeat(np.arange(len(items)), lengths)
        bag[rows + FIRST_ITEM_ID, np.arange(len(flat)) - starts[rows]] = ids
        table[FIRST_ITEM_ID:, slot] = np.where(lengths > 0, bag[FIRST_ITEM_ID:, 0], 1)
        vocabularies[name], bags[name] = values.to_list(), bag
    return bags
