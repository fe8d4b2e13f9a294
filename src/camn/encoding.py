"""Raw ids -> the model's ids, through the vocabularies of a prepared store (:class:`IdEncoder`).

The ids are those of the user's own data (the strings ``camn prepare`` read):

- an **item id** maps to its attribute ids: the store's row of ``arrays/item_attributes.npy``
  (every attribute of an item comes from there, or from a table given to
  :meth:`IdEncoder.add_items`); an item the store does not know gets id 1 ("unknown") in
  every slot;
- a **user id** (``users.txt``) maps to the user's latest history in the store: the history of
  the user's last click sample followed by that sample's clicked item, i.e. the user's last
  ``max_len`` interactions, the held-out last click of valid and test users included. Under
  both protocols that is the user's whole known sequence, cut to ``max_len``. A user the store
  does not know gets an empty history (a cold start: the model then scores from the candidate
  alone).

A run trained on labelled impressions with side features (:class:`~camn.models.FeatureSpec`)
also takes, per row (:meth:`IdEncoder.side_features`):

- its **context** values (columns named as at prepare time, e.g. ``hour``, ``device``), read
  as text and mapped through ``vocab/context.<name>.txt``: a missing value gets id 1, as it did
  when the store was prepared; a value the store does not know gets id 1 too, and is counted;
- its **numeric** values (``price``), standardised as the store's were, ``(x - mean) / std``
  with the training split's mean and deviation (``numeric_standardisation`` in
  ``schema.json``); a value that is not a finite number makes the row bad, as in ``prepare``;
  a numeric feature put into buckets at prepare time (``--bucketize``) is a context feature
  whose id is its bucket among the store's edges (``numeric_buckets`` in ``schema.json``);
- the **user features** of its user id: the user's row of ``arrays/user_features.npy``; a user
  the store does not know gets id 1 ("unknown") for every feature, and is counted.

Unknown ids are counted, never dropped (:class:`UnknownIds`, warned of as
:class:`~camn.encoded_rows.UnknownIdsWarning`). A history is listed oldest first (the store's
convention) and cut to ``max_len``, keeping the most recent items. ``camn.load``'s
:class:`~camn.predict.Predictor`, ``camn score``, ``camn explain`` and ``camn export`` share
this encoding (the rows and the counts: :mod:`camn.encoded_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from camn.data.features import bucket_ids
from camn.data.raw import DataError
from camn.data.store import USERS, PreparedStore
from camn.encoded_rows import (
    NO_CANDIDATE,
    NO_USER,
    NOT_A_NUMBER,
    UNKNOWN_ID,
    Encoded,
    Lookup,
    UnknownIds,
    as_ids,
    as_series,
    left_aligned,
    parse_histories,
)


class IdEncoder:
    """The vocabularies of a prepared store: raw ids (strings) -> rows of the item table.

    ``table`` is the item table: row r holds the attribute ids of item row r; rows 0..V-1 are
    the store's item ids (``arrays/item_attributes.npy``), rows from V the items that
    :meth:`add_items` adds and the store does not know. ``user_features``,
    ``context_features`` and ``numeric_features``: the side features of the store (none for
    most stores), encoded by :meth:`side_features`.
    """

    def __init__(self, store: PreparedStore) -> None:
        self.store = store
        self.attributes: list[str] = store.attributes
        self.max_len: int = store.max_len
        self.table = np.array(store.array("item_attributes"), dtype=np.int64)
        self._vocab: dict[str, list[str]] = {}
        item_values = self.vocabulary(self.attributes[0])
        self.items = Lookup(item_values[2:], np.arange(2, len(item_values)))
        self._users: Lookup | None = None
        self._latest: np.ndarray | None = None
        self.user_features: list[str] = list(store.schema.get("user_features", []))
        self.context_features: list[str] = list(store.schema.get("context_features", []))
        self.numeric_features: list[str] = list(store.schema.get("numeric_features", []))
        self._context: dict[str, Lookup] = {}

    def vocabulary(self, attribute: str) -> list[str]:
        """The values of one attribute; value i has id i (0 padding, 1 unknown)."""
        if attribute not in self._vocab:
            self._vocab[attribute] = self.store.vocab(attribute)
        return self._vocab[attribute]

    def user_ids(self) -> list[str]:
        """The store's user ids (``users.txt``): user index i is element i."""
        path = self.store.root / USERS
        if not path.is_file():
            raise DataError(f"{self.store.root} is a damaged store: {USERS} is missing (user "
                            "index i is its line i): prepare it again")
        users = path.read_text(encoding="utf-8").splitlines()
        if len(users) != self.store.schema["num_users"]:
            raise DataError(f"{path} has {len(users):,} lines for "
                            f"{self.store.schema['num_users']:,} users: the store is damaged")
        return users

    def item_rows(self, items: pl.Series, unknown: UnknownIds) -> np.ndarray:
        """Item id strings -> rows of the item table (1, "unknown", for items not known)."""
        codes = self.items.codes(items)
        unknown.count("items", items.filter(codes.is_null() & items.is_not_null()))
        return codes.fill_null(UNKNOWN_ID).to_numpy()

    def latest_rows(self) -> np.ndarray:
        """(num_users,) the store row of each user's last click sample: rows are sorted by
        (split, user, position), so it is the user's last row with label 1."""
        if self._latest is None:
            positives = np.flatnonzero(self.store.gather("labels", slice(None)) == 1)
            owners = self.store.gather("users", positives)
            latest = np.full(self.store.schema["num_users"], -1, dtype=np.int64)
            users, last = np.unique(owners[::-1], return_index=True)
            latest[users] = positives[::-1][last]
            self._latest = latest
        return self._latest

    def user_index(self, users: pl.Series) -> pl.Series:
        """User id strings -> their user index in the store; null where the store does not
        know the user (or the id is null)."""
        if self._users is None:
            ids = self.user_ids()
            self._users = Lookup(ids, np.arange(len(ids)))
        return self._users.codes(users)

    def user_histories(self, users: pl.Series, unknown: UnknownIds) -> tuple[np.ndarray,
                                                                           np.ndarray]:
        """User id strings -> (n, L) item rows of their latest histories and the lengths."""
        index = self.user_index(users)
        unknown.count("users", users.filter(index.is_null() & users.is_not_null()))
        rows = self.latest_rows()[index.fill_null(0).to_numpy()]
        known = index.is_not_null().to_numpy() & (rows >= 0)
        rows = np.where(known, rows, 0)
        length = self.max_len
        lengths = np.where(known, self.store.gather("lengths", rows), 0)
        history = np.zeros((len(rows), length + 1), dtype=np.int64)
        history[:, :length] = self.store.gather("histories", rows)[:, :, 0]
        history[np.arange(len(rows)), lengths] = self.store.gather("targets", rows)[:, 0]
        history *= known[:, None]
        lengths = np.where(known, lengths + 1, 0)
        full = lengths > length  # drop the oldest item of a full history
        history = np.where(full[:, None], history[:, 1:], history[:, :length])
        return history, np.minimum(lengths, length)

    def add_items(self, frame: Any, item_col: str | None = None) -> UnknownIds:
        """Attributes of items, used instead of the store's for the items listed (new items,
        or changed attributes): a polars or pandas frame with the item column (default: the
        store's first attribute, ``attributes[0]``) and one column per other attribute, named
        as in the store. Values are mapped through the store's vocabularies; an unseen value
        (counted in the returned :class:`UnknownIds`, and warned of) or a null is unknown. An item
        the store does not know keeps id 1 (unknown) as its item id; the first row of an item
        listed twice wins. A multi-valued attribute is not read: its bags come with the model
        (an item the store does not know has an empty one, embedded as unknown)."""
        item_col = item_col or self.attributes[0]
        bag_slots = self.store.schema.get("bag_slots", [])
        read = [(slot, name) for slot, name in enumerate(self.attributes[1:], start=1)
                if slot not in bag_slots]
        names = [item_col, *(name for _, name in read)]
        missing = [name for name in names if name not in frame.columns]
        if missing:
            raise DataError(f"the items table lacks column(s) {', '.join(map(repr, missing))}; "
                            f"it needs {', '.join(map(repr, names))}")
        items = as_ids(as_series(item_col, frame[item_col]))
        keep = (items.is_first_distinct() & items.is_not_null()).to_numpy()
        items = items.filter(keep)
        unknown = UnknownIds()
        attributes = np.ones((len(items), len(self.attributes)), dtype=np.int64)
        for slot, name in read:
            values = as_ids(as_series(name, frame[name])).filter(keep)
            values_vocab = self.vocabulary(name)
            codes = Lookup(values_vocab[2:], np.arange(2, len(values_vocab))).codes(values)
            unknown.count(name, values.filter(codes.is_null() & values.is_not_null()))
            attributes[:, slot] = codes.fill_null(UNKNOWN_ID).to_numpy()
        rows = self.items.codes(items)
        known = rows.is_not_null().to_numpy()
        self.table[rows.filter(rows.is_not_null()).to_numpy(), 1:] = attributes[known, 1:]
        new_rows = np.arange(len(self.table), len(self.table) + int((~known).sum()))
        self.table = np.concatenate([self.table, attributes[~known]])
        self.items.extend(items.filter(~pl.Series(known)), new_rows)
        unknown.warn()
        return unknown

    def encode(
        self,
        candidates: pl.Series,
        histories: pl.Series | None = None,
        users: pl.Series | None = None,
        separator: str | None = None,
        *,
        unknown: UnknownIds,
    ) -> tuple[Encoded, pl.Series]:
        """Rows -> (model-ready rows of every row, reasons: null for a good row, else why it
        is bad, e.g. ``NO_CANDIDATE``); unknown ids are counted in ``unknown``. Bad rows are
        encoded as empty rows and must be dropped by the caller (``Encoded`` has all rows, in
        order)."""
        candidates = as_ids(candidates)
        reasons = pl.select(pl.when(candidates.is_null()).then(pl.lit(NO_CANDIDATE)))
        reasons = reasons.to_series()
        if histories is not None:
            lists, bad = parse_histories(histories, separator)
            reasons = pl.select(pl.coalesce(reasons, bad)).to_series()
            good = reasons.is_null()
            lists = lists.list.tail(self.max_len)
            flat = lists.filter(good).explode(empty_as_null=False, keep_nulls=False)
            history, lengths = np.zeros((len(lists), self.max_len), np.int64), np.zeros(
                len(lists), np.int64)
            history[good.to_numpy()], lengths[good.to_numpy()] = left_aligned(
                lists.filter(good), self.item_rows(flat, unknown), self.max_len
            )
            names = flat
        elif users is not None:
            users = as_ids(users)
            reasons = pl.select(pl.coalesce(
                reasons, pl.when(users.is_null()).then(pl.lit(NO_USER))
            )).to_series()
            good = reasons.is_null()
            history, lengths = np.zeros((len(users), self.max_len), np.int64), np.zeros(
                len(users), np.int64)
            history[good.to_numpy()], lengths[good.to_numpy()] = self.user_histories(
                users.filter(good), unknown
            )
            names = None
        else:
            raise DataError("give histories (item ids per row) or users (user ids per row)")
        good = reasons.is_null()
        candidate = np.zeros(len(candidates), dtype=np.int64)
        candidate[good.to_numpy()] = self.item_rows(candidates.filter(good), unknown)
        return Encoded(history, lengths, candidate, names), reasons.alias("reason")


    # ------------------------------------------------------------------ side features

    @property
    def feature_columns(self) -> list[str]:
        """The values each row gives for the side features, named as at prepare time: the
        context features, then the numeric ones (the user features come from the user id)."""
        return [*self.context_features, *self.numeric_features]

    @property
    def has_side_features(self) -> bool:
        return bool(self.user_features or self.feature_columns)

    def describe_features(self) -> str:
        """What the run reads beside the ids, e.g. ``context features hour, device; numeric
        features price; user features age (by the user id)``."""
        kinds = (("context", self.context_features, ""), ("numeric", self.numeric_features, ""),
                 ("user", self.user_features, " (by the user id)"))
        return "; ".join(f"{kind} features {', '.join(names)}{how}"
                         for kind, names, how in kinds if names)

    def side_features(
        self, features: Mapping[str, Any], users: pl.Series | None, reasons: pl.Series,
        *, unknown: UnknownIds,
    ) -> tuple[dict[str, np.ndarray], pl.Series]:
        """The side features of the rows -> (:class:`Encoded`'s ``side``, ``reasons`` with the
        side features' bad rows added: a numeric value that is not a finite number, no user).

        ``features``: a column of values for every name of :attr:`feature_columns` (a mapping
        or a frame); ``users``: the rows' user ids, for the user features; ``reasons``: why
        each row is bad so far (null for a good row: one per row). Unknown context values and
        users of the good rows are counted in ``unknown`` (module docstring). A DataError names
        what is missing."""
        missing = [name for name in self.feature_columns if name not in features]
        if missing:
            raise DataError(f"no column {', '.join(map(repr, missing))}: the run reads "
                            f"{self.describe_features()}")
        if self.user_features and users is None:
            raise DataError(f"no user ids: the run reads {self.describe_features()}")
        columns = {name: as_series(name, features[name]) for name in self.feature_columns}
        user_ids = as_ids(as_series("user", users)) if self.user_features else None
        for name, column in [*columns.items(), ("user", user_ids)]:
            if column is not None and len(column) != len(reasons):
                raise DataError(f"{len(column)} value(s) of {name} for {len(reasons)} row(s): "
                                "give one per row")
        side: dict[str, np.ndarray] = {}
        if self.numeric_features:
            side["numeric"], bad = self.numeric_values(columns)
            reasons = pl.select(pl.coalesce(reasons, bad)).to_series()
        bucketed = {}
        for name, edges in self.store.schema.get("numeric_buckets", {}).items():
            numbers, bad = finite_numbers(name, columns[name])
            bucketed[name] = bucket_ids(numbers, edges)
            reasons = pl.select(pl.coalesce(reasons, bad)).to_series()
        if user_ids is not None:
            no_user = pl.select(pl.when(user_ids.is_null()).then(pl.lit(NO_USER)))
            reasons = pl.select(pl.coalesce(reasons, no_user.to_series())).to_series()
        good = reasons.is_null()
        if user_ids is not None:
            side["user_features"] = self.user_feature_ids(user_ids, good, unknown)
        if self.context_features:
            side["context"] = np.stack([
                bucketed[name] if name in bucketed else
                self.context_ids(name, columns[name], good, unknown)
                for name in self.context_features], axis=1)
        return {key: side[key] for key in ("user_features", "context", "numeric")
                if key in side}, reasons.alias("reason")

    def user_feature_ids(self, users: pl.Series, good: pl.Series,
                         unknown: UnknownIds) -> np.ndarray:
        """User id strings -> (n, U) int64 ids of their features (the store's row of each
        user); id 1 for every feature of a user the store does not know (counted where
        ``good``)."""
        index = self.user_index(users)
        absent = index.is_null()
        unknown.count("feature_users", users.filter(absent & users.is_not_null() & good))
        table = self.store.array("user_features")
        ids = np.asarray(table[index.fill_null(0).to_numpy()], dtype=np.int64)
        ids[absent.to_numpy()] = UNKNOWN_ID
        return ids

    def context_ids(self, name: str, values: pl.Series, good: pl.Series,
                    unknown: UnknownIds) -> np.ndarray:
        """Values of context feature ``name`` -> (n,) int64 ids of ``vocab/context.<name>.txt``;
        id 1 for a missing value, and for a value the store does not know (counted where
        ``good``)."""
        if name not in self._context:
            vocabulary = self.vocabulary(f"context.{name}")
            self._context[name] = Lookup(vocabulary[2:], np.arange(2, len(vocabulary)))
        values = as_ids(values)
        codes = self._context[name].codes(values)
        unknown.count(f"context {name}",
                      values.filter(codes.is_null() & values.is_not_null() & good))
        return codes.fill_null(UNKNOWN_ID).to_numpy()

    def numeric_values(self, features: Mapping[str, pl.Series]) -> tuple[np.ndarray, pl.Series]:
        """The numeric features' columns -> ((n, M) float32 ``(x - mean) / std`` with the store's
        training statistics, reasons: ``NOT_A_NUMBER`` where a value is not a finite number,
        whose row holds zeros)."""
        statistics = self.store.schema.get("numeric_standardisation", {})
        lacking = [name for name in self.numeric_features if name not in statistics]
        if lacking:
            raise DataError(f"{self.store.root}/schema.json lacks numeric_standardisation of "
                            f"{', '.join(lacking)} (the training mean and deviation): the store "
                            "is damaged; prepare it again")
        columns, reasons = [], None
        for name in self.numeric_features:
            numbers, bad = finite_numbers(name, features[name])
            reasons = bad if reasons is None else pl.select(pl.coalesce(reasons, bad)).to_series()
            columns.append(numbers)
        mean, std = (np.array([statistics[name][i] for name in self.numeric_features])
                     for i in (0, 1))
        values = np.stack(columns, axis=1)
        standardised = ((values - mean) / std).astype(np.float32)
        standardised[reasons.is_not_null().to_numpy()] = 0
        return standardised, reasons

    def bag_values(self) -> dict[int, np.ndarray]:
        """Per bag slot (a multi-valued attribute), each item id's bag as text: its values
        joined by the separator they were read with, ``<unk>`` for an empty bag (the unknown
        item's among them), indexed by item id."""
        schema = self.store.schema
        separators = schema.get("origin", {}).get("multi_valued", {})
        bags = {}
        for slot in schema.get("bag_slots", []):
            name = self.attributes[slot]
            vocabulary = np.asarray(self.vocabulary(name), dtype=object)
            ids = np.asarray(self.store.array(f"bags.{name}"))
            items, column = np.nonzero(ids)  # row-major: each bag in its stored order
            joined = (pl.DataFrame({"item": items, "value": vocabulary[ids[items, column]]},
                                   schema={"item": pl.Int64, "value": pl.String})
                      .group_by("item", maintain_order=True)
                      .agg(pl.col("value").str.join(separators.get(name, "|"))))
            text = np.full(len(ids), vocabulary[UNKNOWN_ID], dtype=object)
            text[joined["item"].to_numpy()] = joined["value"].to_numpy()
            bags[slot] = text
        return bags

    def unknown_side(self, rows: int) -> dict[str, np.ndarray]:
        """Side features of ``rows`` rows that say nothing: id 1 (unknown) for every user and
        context feature, 0 (the training mean) for every numeric one."""
        side = {}
        if self.user_features:
            side["user_features"] = np.full((rows, len(self.user_features)), UNKNOWN_ID,
                                            np.int64)
        if self.context_features:
            side["context"] = np.full((rows, len(self.context_features)), UNKNOWN_ID, np.int64)
        if self.numeric_features:
            side["numeric"] = np.zeros((rows, len(self.numeric_features)), np.float32)
        return side


def finite_numbers(name: str, column: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """A numeric feature's values -> ((n,) float64, 0 where not a finite number; the reason,
    ``NOT_A_NUMBER``, of each such row, null elsewhere)."""
    if column.dtype == pl.String:
        column = column.str.strip_chars()
    try:
        number = column.cast(pl.Float64, strict=False)
    except pl.exceptions.PolarsError:
        raise DataError(f"column {name!r} ({column.dtype}) does not hold numbers") from None
    finite = number.is_finite().fill_null(False)
    bad = pl.select(pl.when(~finite).then(pl.lit(NOT_A_NUMBER.format(name)))).to_series()
    return np.where(finite.to_numpy(), number.fill_null(0).to_numpy(), 0.0), bad


def is_frame(value: Any) -> bool:
    """A polars DataFrame, or a pandas one (recognised without importing pandas)."""
    return isinstance(value, pl.DataFrame) or (
        type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "columns")
    )


def frame_columns(frame: Any, history_col: str, candidate_col: str,
                  user_col: str) -> tuple[Any, Any, Any]:
    """(histories or None, candidates, users or None) of a frame: the history column when the
    frame has one, else the user column."""
    columns = list(frame.columns)
    if candidate_col not in columns:
        raise DataError(f"the frame has no column {candidate_col!r} (the candidates); "
                        f"its columns: {', '.join(map(str, columns))}")
    if "score" in columns:
        raise DataError("the frame already has a column 'score'; rename it first")
    if history_col in columns:
        return frame[history_col], frame[candidate_col], None
    if user_col in columns:
        return None, frame[candidate_col], frame[user_col]
    raise DataError(f"the frame needs a history column ({history_col!r}) or a user column "
                    f"({user_col!r}); its columns: {', '.join(map(str, columns))}")


def routing_rows(
    history: np.ndarray,
    lengths: np.ndarray,
    routing: np.ndarray,
    attributes: list[str],
    vocabularies: list[list[str]],
    names: pl.Series | None = None,
    bags: Mapping[int, np.ndarray] | None = None,
) -> pl.DataFrame:
    """One row per (sample, real history position, attribute): ``sample``, ``position``
    (1-based), ``item``, ``attribute``, ``value``, ``score`` (P), ``top``.

    history (n, L, k) attribute ids, lengths (n,), routing (n, L, k); ``names``: the item ids
    of the real positions in row order (default: the item vocabulary's, which names an item
    the store does not know "<unk>"); ``bags``: see :func:`attribute_values`."""
    k = len(attributes)
    sample, position = np.nonzero(np.arange(history.shape[1])[None, :] < lengths[:, None])
    ids = history[sample, position]  # (m, k)
    scores = routing[sample, position]  # (m, k)
    top = scores.argmax(axis=1) if len(scores) else np.zeros(0, np.int64)
    values = attribute_values(ids, vocabularies, bags)
    return pl.DataFrame({
        "sample": np.repeat(sample, k),
        "position": np.repeat(position + 1, k),
        "item": np.repeat(values[:, 0] if names is None else names.to_numpy(), k).tolist(),
        "attribute": np.tile(np.asarray(attributes, dtype=object), len(ids)).tolist(),
        "value": values.reshape(-1).tolist(),
        "score": scores.reshape(-1).astype(np.float64),
        "top": (np.arange(k)[None, :] == top[:, None]).reshape(-1),
    }, schema={"sample": pl.Int64, "position": pl.Int64, "item": pl.String,
               "attribute": pl.String, "value": pl.String, "score": pl.Float64,
               "top": pl.Boolean})


def attribute_values(ids: np.ndarray, vocabularies: list[list[str]],
                     bags: Mapping[int, np.ndarray] | None = None) -> np.ndarray:
    """(m, k) attribute ids -> (m, k) their values (object array of text): line id of the
    slot's vocabulary; for a bag slot (``bags``: slot -> each item id's bag as text,
    :meth:`IdEncoder.bag_values`), the bag of the item whose id is in slot 0."""
    values = np.empty(ids.shape, dtype=object)
    for slot, vocabulary in enumerate(vocabularies):
        if bags and slot in bags:
            values[:, slot] = bags[slot][ids[:, 0]]
        else:
            values[:, slot] = np.asarray(vocabulary, dtype=object)[ids[:, slot]]
    return values
