"""Side features of labelled impressions: the row's context values and numbers, the user
table's features, and the bags of multi-valued attributes, as a store holds them
(:mod:`camn.data.impressions` for the layout) and as batches carry them.

Context values become ids of ``vocab/context.<name>.txt`` (:func:`category_ids`: 2.. for the
sorted distinct values, 1 for a missing one); numbers are standardised with the training split's
mean and deviation (:func:`standardise`), or, named by ``--bucketize``, become the context id of
their decile among the training split's values (:func:`bucket_numeric`); user features are ids
stored once per user (:func:`user_feature_table`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from camn.data.protocols import FIRST_ITEM_ID

if TYPE_CHECKING:
    import polars as pl

BAGS = "bags."  # arrays/bags.<attribute>.npy: a multi-valued attribute's values per item id
CONTEXT, NUMERIC = "context:", "numeric:"  # prefixes of the side feature columns of RawData


class StoreArrays(Protocol):
    """What the side features and the content scan read of a
    :class:`camn.data.store.PreparedStore` (named by its members, so that this module need not
    import the store that imports it)."""

    schema: dict

    @property
    def split_bounds(self) -> np.ndarray: ...

    def array(self, name: str) -> np.ndarray: ...


def side_features(frame) -> tuple[dict[str, np.ndarray], dict, dict[str, list[str]]]:
    """The rows' context ids (n, C) and numbers (n, M) from the ``context:`` and ``numeric:``
    columns, the schema's fields for them and the context vocabularies."""

    context = [c.removeprefix(CONTEXT) for c in frame.columns if c.startswith(CONTEXT)]
    numeric = [c.removeprefix(NUMERIC) for c in frame.columns if c.startswith(NUMERIC)]
    side, schema, vocabularies = {}, {}, {}
    if context:
        ids = []
        for name in context:
            column_ids, vocabularies[f"context.{name}"] = category_ids(frame[CONTEXT + name])
            ids.append(column_ids)
        side["context"] = np.stack(ids, axis=1).astype(np.int32)
        schema |= {"context_features": context,
                   "context_sizes": [len(vocabularies[f"context.{n}"]) + FIRST_ITEM_ID
                                     for n in context]}
    if numeric:
        side["numeric"] = np.stack([frame[NUMERIC + name].to_numpy() for name in numeric],
                                   axis=1).astype(np.float64)
        schema["numeric_features"] = numeric
    return side, schema, vocabularies


def category_ids(column) -> tuple[np.ndarray, list[str]]:
    """(n,) int32 id of every value of ``column`` as text (2.. for the sorted distinct values,
    1 for a null) and those values, the vocabulary."""
    import polars as pl

    column = column.cast(pl.String)
    values = column.drop_nulls().unique().sort()
    lookup = pl.DataFrame({"value": values,
                           "id": np.arange(len(values), dtype=np.int32) + FIRST_ITEM_ID})
    found = pl.DataFrame({"value": column}).join(lookup, on="value", how="left",
                                                maintain_order="left")
    return found["id"].fill_null(1).to_numpy().astype(np.int32), values.to_list()


def user_feature_table(
    table: pl.DataFrame, users: pl.Series
) -> tuple[np.ndarray, dict, dict[str, list[str]], str]:
    """(num_users, U) int32 feature ids of every user of the log (``users``: user index i's
    id at position i) from the user table (``RawData.users``, one row a user; rows of users
    not in the log play no part), the schema's fields, the vocabularies ``user.<name>`` and a
    note of the users without a row (their features unknown, id 1)."""
    import polars as pl

    names = table.columns[1:]
    frame = pl.DataFrame({"user": users}).join(table, on="user", how="left",
                                               maintain_order="left")
    ids, vocabularies = [], {}
    for name in names:
        column_ids, vocabularies[f"user.{name}"] = category_ids(frame[name])
        ids.append(column_ids)
    missing = int((~users.is_in(table["user"].implode())).sum())
    schema = {"user_features": names,
              "user_feature_sizes": [len(vocabularies[f"user.{n}"]) + FIRST_ITEM_ID
                                     for n in names]}
    note = (f"user features {', '.join(names)}: {missing:,} of {len(users):,} users have no row "
            "in the user table (their features unknown)")
    return np.stack(ids, axis=1).astype(np.int32), schema, vocabularies, note


def standardise(
    values: np.ndarray, train_rows: int, names: list[str]
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """(N, M) float32 ``(values - mean) / std`` with the mean and standard deviation of the
    first ``train_rows`` rows (the training split; std 1 where it is 0), and those statistics."""
    train = values[:train_rows] if train_rows else values
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    statistics = {name: [float(m), float(d)] for name, m, d in zip(names, mean, std, strict=True)}
    return ((values - mean) / std).astype(np.float32), statistics


def bucket_numeric(
    arrays: dict[str, np.ndarray], schema: dict, vocabularies: dict[str, list[str]],
    names: list[str], train_rows: int,
) -> None:
    """``--bucketize`` of numeric features: each of ``names`` leaves the numbers for the context
    features, its value the decile it falls in among the first ``train_rows`` rows (the
    training split): ``q0`` .. ``q9``, ids 2 .. 11 (:func:`bucket_ids`); the edges go to the
    schema's ``numeric_buckets``, for scoring. ``arrays``, ``schema`` and ``vocabularies``
    are changed in place."""
    from camn.data.reading import QUANTILE_BUCKETS, quantile_edges

    numeric, values = schema["numeric_features"], arrays.pop("impression_numeric")
    train = values[:train_rows] if train_rows else values
    edges = {name: quantile_edges(train[:, numeric.index(name)]).tolist() for name in names}
    ids = np.stack([bucket_ids(values[:, numeric.index(name)], edges[name]) for name in names],
                   axis=1)
    context = arrays.get("impression_context")
    arrays["impression_context"] = ids if context is None else np.concatenate([context, ids], 1)
    vocabularies |= {f"context.{name}": [f"q{k}" for k in range(QUANTILE_BUCKETS)]
                     for name in names}
    schema["context_features"] = [*schema.get("context_features", []), *names]
    schema["context_sizes"] = [*schema.get("context_sizes", []),
                               *[QUANTILE_BUCKETS + FIRST_ITEM_ID] * len(names)]
    schema["numeric_buckets"] = edges
    kept = [j for j, name in enumerate(numeric) if name not in names]
    if kept:
        arrays["impression_numeric"] = values[:, kept]
        schema["numeric_features"] = [numeric[j] for j in kept]
    else:
        del schema["numeric_features"]


def bucket_ids(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """(n,) int32 context ids of numbers in the buckets between ``edges``: 2 + k for bucket k
    (a value equal to an edge goes to the upper bucket)."""
    return (np.searchsorted(np.asarray(edges), values, side="right") + FIRST_ITEM_ID).astype(
        np.int32)


def side_fields(store: StoreArrays, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The batch's side features of ``rows``: ``user_features`` (n, U) int64 ids (the row's
    user's), ``context`` (n, C) int64 ids and ``numeric`` (n, M) float32, those the store has."""
    fields = {}
    if store.schema.get("user_features"):
        users = store.array("impression_users")[rows]
        fields["user_features"] = np.take(store.array("user_features"), users,
                                          axis=0).astype(np.int64)
    if store.schema.get("context_features"):
        fields["context"] = np.asarray(store.array("impression_context")[rows], dtype=np.int64)
    if store.schema.get("numeric_features"):
        fields["numeric"] = np.asarray(store.array("impression_numeric")[rows], dtype=np.float32)
    return fields


def side_arrays(schema: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of the side features' arrays (context, numeric, user features) and of
    the bags of multi-valued attributes, those the schema names."""
    n, arrays = sum(schema["splits"].values()), {}
    if schema.get("context_features"):
        arrays["impression_context"] = ((n, len(schema["context_features"])), np.dtype(np.int32))
    if schema.get("numeric_features"):
        arrays["impression_numeric"] = ((n, len(schema["numeric_features"])),
                                        np.dtype(np.float32))
    if schema.get("user_features"):
        arrays["user_features"] = ((schema["num_users"], len(schema["user_features"])),
                                   np.dtype(np.int32))
    for slot, length in zip(schema.get("bag_slots", []), schema.get("bag_lengths", []),
                            strict=True):
        arrays[BAGS + schema["attributes"][slot]] = ((schema["num_items"] + FIRST_ITEM_ID,
                                                     length), np.dtype(np.int32))
    return arrays


def user_feature_problem(schema: dict, store: StoreArrays) -> str | None:
    """An id of ``arrays/user_features.npy`` outside its feature's vocabulary, if any."""
    if not schema.get("user_features"):
        return None
    ids = np.asarray(store.array("user_features"))
    bad = (ids < 0) | (ids >= np.asarray(schema["user_feature_sizes"]))
    if not bad.any():
        return None
    user, slot = (int(i) for i in np.argwhere(bad)[0])
    return (f"arrays/user_features.npy holds id {ids[user, slot]} of user feature "
            f"'{schema['user_features'][slot]}' at user {user:,}, outside its vocabulary of ids "
            f"0..{schema['user_feature_sizes'][slot] - 1} (user_feature_sizes in schema.json)")
