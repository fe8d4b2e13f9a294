"""From a source's :class:`RawData` to a prepared store: encode, apply a protocol, write.

Encoding is deterministic: users, items and attribute values are numbered in sorted order of
their string values (ids 0 and 1 of every attribute vocabulary are padding and unknown), so two
sources that read the same data (McAuley's files and RecBole's) give identical arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from camn.data.protocols import FIRST_ITEM_ID, Protocol, build_samples
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.store import write_store

ANNOTATIONS = ("driver", "driver_kind")


def drop_duplicates(interactions: pl.DataFrame, report: BadInputReport) -> pl.DataFrame:
    """Remove repeated (user, item, time) rows, counting them as bad input."""
    unique = interactions.unique(subset=["user", "item", "time"], keep="first", maintain_order=True)
    if len(unique) < len(interactions):
        report.bad(
            "interactions",
            None,
            "duplicate interaction, same user, item and time (dropped)",
            count=len(interactions) - len(unique),
        )
    return unique


def drop_short_users(interactions: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Keep users with at least 2 interactions (SPEC section 2); return how many were dropped."""
    counts = interactions.group_by("user").len()
    short = counts.filter(pl.col("len") < 2)["user"]
    return interactions.filter(~pl.col("user").is_in(short.implode())), len(short)


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
    missing = int((~items.is_in(items_table["item"].implode())).sum())
    if missing:
        report.bad("items", None, "item has no metadata (attributes set to unknown)", count=missing)
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


def prepare(
    raw: RawData,
    out: str | Path,
    protocol: Protocol = "last",
    max_len: int = 20,
    seed: int = 2022,
    report: BadInputReport | None = None,
    force: bool = False,
) -> dict:
    """Encode ``raw``, build the samples of ``protocol`` and write the store; return its schema.

    ``raw.interactions`` is emptied once deduplicated, so that the raw rows do not stay in memory
    while the samples are built (this keeps a 20 M-review prepare well under 8 GB).
    """
    report = report or BadInputReport()
    interactions = drop_duplicates(raw.interactions, report)
    raw.interactions = raw.interactions.clear()  # release the raw rows: memory peaks below
    interactions, dropped_users = drop_short_users(interactions)
    if len(interactions) == 0:
        raise DataError("no user has 2 or more interactions: nothing to prepare")
    users = interactions["user"].unique().sort()
    items = interactions["item"].unique().sort()
    item_attributes, vocabularies = encode_items(raw, items, report)
    user_index = interactions.join(
        pl.DataFrame({"user": users, "u": np.arange(len(users), dtype=np.int64)}), on="user",
        how="left", maintain_order="left",
    )["u"].to_numpy()
    item_ids = interactions.join(
        pl.DataFrame({"item": items, "i": np.arange(len(items), dtype=np.int64) + FIRST_ITEM_ID}),
        on="item", how="left", maintain_order="left",
    )["i"].to_numpy()
    annotations = {
        name: interactions[name].to_numpy().astype(np.int8)
        for name in ANNOTATIONS
        if name in interactions.columns
    }
    times, num_interactions = interactions["time"].to_numpy(), len(interactions)
    del interactions
    arrays = build_samples(
        user_index, item_ids, times, item_attributes,
        protocol=protocol, max_len=max_len, seed=seed, annotations=annotations,
    )
    arrays["item_attributes"] = item_attributes
    counts = np.bincount(arrays["splits"], minlength=3)
    schema = {
        "num_users": len(users),
        "num_items": len(items),
        "num_interactions": num_interactions,
        "attributes": raw.attributes,
        "vocab_sizes": [len(vocabularies[a]) + FIRST_ITEM_ID for a in raw.attributes],
        "protocol": protocol,
        "seed": seed,
        "max_len": max_len,
        "splits": {"train": int(counts[0]), "valid": int(counts[1]), "test": int(counts[2])},
        "origin": raw.origin,
        "dropped_users_under_2_interactions": dropped_users,
        "bad_input": dict(sorted(report.counts.items())),
        "notes": raw.notes,
    }
    write_store(out, schema, arrays, vocabularies, force=force)
    return schema
