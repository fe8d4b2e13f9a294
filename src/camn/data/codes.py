"""Dense integer codes of raw ids, and the items' attribute table built with them: what both
kinds of store (protocol samples, :mod:`camn.data.prepare`; labelled impressions,
:mod:`camn.data.impressions`) encode their ids with."""

from __future__ import annotations

import numpy as np
import polars as pl

from camn.data.protocols import FIRST_ITEM_ID
from camn.data.raw import BadInputReport, DataError, RawData


def sorted_codes(column: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """(n,) int64 code of every value (its position among the sorted distinct values) and the
    sorted distinct values: the dense rank, found by sorting the distinct values only and
    joining them back (sorting every string is the slow part of a large log)."""
    values = column.unique().sort()
    lookup = pl.DataFrame({"value": values, "code": np.arange(len(values), dtype=np.int64)})
    codes = pl.DataFrame({"value": column}).join(lookup, on="value", how="left",
                                                 maintain_order="left")["code"]
    return codes.to_numpy(), values


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
