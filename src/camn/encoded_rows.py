"""What :mod:`camn.encoding` is made of: rows of raw ids as read (a history column as text or
lists, ids as text), their encoded form (:class:`Encoded`), the lookup of raw ids in a vocabulary
(:class:`Lookup`) and the count of the ids no vocabulary knows (:class:`UnknownIds`, warned of as
:class:`UnknownIdsWarning`), with the reasons a row is bad."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from camn.data.raw import DataError

PAD_ID, UNKNOWN_ID = 0, 1
EXAMPLES = 3  # unknown ids named in a warning
NOT_A_LIST = "history is not a list of item ids (row skipped)"
EMPTY_ID = "history holds an empty or missing item id (row skipped)"
NO_CANDIDATE = "no candidate value (row skipped)"
NO_USER = "no user value (row skipped)"
NOT_A_NUMBER = "numeric feature {!r} is not a number (row skipped)"
COUNTED = ("items", "users", "feature_users")  # UnknownIds' own counts; other kinds are values


class UnknownIdsWarning(UserWarning):
    """Ids absent from the store's vocabularies were scored as "unknown" (id 1)."""


@dataclass
class UnknownIds:
    """What the store did not know in one call: occurrences of unknown item ids (history items
    and candidates), of unknown attribute values (of :meth:`Predictor.add_items` tables) and
    context values (``context <name>``), of users without a history in the store, and of rows
    whose user is not in the store and so gets unknown user features (``feature_users``), each
    with a few examples."""

    items: int = 0
    users: int = 0
    feature_users: int = 0
    values: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def count(self, kind: str, unknown: pl.Series) -> None:
        """Add the strings of ``unknown`` (one per occurrence) under ``kind`` ("items", "users",
        "feature_users", or the name of an attribute or of a context feature)."""
        if not len(unknown):
            return
        if kind in COUNTED:
            setattr(self, kind, getattr(self, kind) + len(unknown))
        else:
            self.values[kind] = self.values.get(kind, 0) + len(unknown)
        shown = self.examples.setdefault(kind, [])
        for value in unknown.unique(maintain_order=True).head(EXAMPLES).to_list():
            if len(shown) < EXAMPLES and value not in shown:
                shown.append(value)

    def merge(self, other: UnknownIds) -> None:
        self.items += other.items
        self.users += other.users
        self.feature_users += other.feature_users
        for name, n in other.values.items():
            self.values[name] = self.values.get(name, 0) + n
        for kind, values in other.examples.items():
            shown = self.examples.setdefault(kind, [])
            shown += [v for v in values if v not in shown][: EXAMPLES - len(shown)]

    @property
    def total(self) -> int:
        return self.items + self.users + self.feature_users + sum(self.values.values())

    def summary(self) -> str:
        """One line, e.g. ``unknown ids: 3 item id(s) not in the store (e.g. 'x', 'y'), scored
        as unknown; 1 user(s) without a history (e.g. 'u9'), scored with an empty history``;
        '' when there is none."""

        def examples(kind: str) -> str:
            return ", ".join(repr(v) for v in self.examples.get(kind, []))

        parts = []
        if self.items:
            parts.append(f"{self.items:,} item id(s) not in the store (e.g. {examples('items')}),"
                         " scored as unknown")
        parts += [
            f"{n:,} value(s) of {name} not in the store (e.g. {examples(name)}), set to unknown"
            for name, n in self.values.items()
        ]
        if self.users:
            parts.append(f"{self.users:,} user(s) without a history (e.g. {examples('users')}), "
                         "scored with an empty history")
        if self.feature_users:
            parts.append(f"{self.feature_users:,} row(s) of a user not in the store (e.g. "
                         f"{examples('feature_users')}), scored with unknown user features")
        return "unknown ids: " + "; ".join(parts) if parts else ""

    def warn(self) -> None:
        if self.total:
            warnings.warn(self.summary(), UnknownIdsWarning, stacklevel=3)


@dataclass
class Encoded:
    """Rows ready for the model: ``history`` (n, L) and ``candidate`` (n,) rows of the
    predictor's item table (0 = padding), ``lengths`` (n,), left-aligned histories;
    ``names``: the history items' ids as given, row by row (histories given as ids only);
    ``side``: the batch keys of the side features the model reads (``user_features`` (n, U)
    and ``context`` (n, C) int64 ids, ``numeric`` (n, M) float32), empty for a model without
    them."""

    history: np.ndarray
    lengths: np.ndarray
    candidate: np.ndarray
    names: pl.Series | None = None
    side: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.candidate)

    def take(self, keep: np.ndarray) -> Encoded:
        """The rows selected by ``keep`` (a boolean mask or row numbers), without ``names``."""
        return Encoded(self.history[keep], self.lengths[keep], self.candidate[keep],
                       side={key: values[keep] for key, values in self.side.items()})


class Lookup:
    """Strings -> integer codes: a join for many values (the way ``camn prepare`` encodes), a
    dictionary for a few (one user's candidates: a join's set-up would cost milliseconds)."""

    few = 4096  # values looked up one by one below this many

    def __init__(self, values: Sequence[str] | pl.Series, codes: np.ndarray) -> None:
        self.frame = pl.DataFrame(
            {"value": pl.Series(values, dtype=pl.String), "code": pl.Series(codes, dtype=pl.Int64)}
        ).unique(subset="value", keep="first", maintain_order=True)
        self._map: dict[str, int] | None = None

    def codes(self, values: pl.Series) -> pl.Series:
        """The code of each value; null where the value is unknown (or null)."""
        values = values.cast(pl.String)
        if len(values) < self.few:
            if self._map is None:
                self._map = dict(zip(self.frame["value"], self.frame["code"], strict=True))
            found = [self._map.get(value) for value in values.to_list()]
            return pl.Series("code", found, dtype=pl.Int64)
        frame = pl.DataFrame({"value": values})
        return frame.join(self.frame, on="value", how="left", maintain_order="left")["code"]

    def extend(self, values: pl.Series, codes: np.ndarray) -> None:
        added = pl.DataFrame({"value": values, "code": pl.Series(codes, dtype=pl.Int64)})
        self.frame = pl.concat([self.frame, added])
        self._map = None


def as_series(name: str, values: Any) -> pl.Series:
    """A column of a polars or pandas frame, or a sequence, as a polars Series (pandas missing
    values as nulls; pandas is never imported)."""
    if isinstance(values, pl.Series):
        return values.alias(name)
    if hasattr(values, "isna") and hasattr(values, "tolist"):  # a pandas Series
        values = values.astype(object).where(values.notna(), None).tolist()
    try:
        return pl.Series(name, list(values), strict=False)
    except (TypeError, ValueError, pl.exceptions.PolarsError) as error:
        raise DataError(f"{name}: cannot read the values ({error})") from None


def as_ids(column: pl.Series) -> pl.Series:
    """Ids as strings, as ``camn prepare`` casts every value."""
    if column.dtype == pl.Null or column.dtype.is_numeric() or column.dtype == pl.String:
        return column.cast(pl.String)
    if column.dtype in (pl.Categorical, pl.Boolean) or isinstance(column.dtype, pl.Enum):
        return column.cast(pl.String)
    raise DataError(f"column {column.name!r} ({column.dtype}) does not hold ids (text or numbers)")


def parse_histories(column: pl.Series, separator: str | None) -> tuple[pl.Series, pl.Series]:
    """A history column -> (lists of item id strings, reasons: null for a good row).

    A list column is taken as it is. Text is a JSON array when it starts with ``[``
    (``["B001", "B002"]``), else item ids joined by ``separator`` (None: any run of white
    space). A null or empty value is an empty history. Bad rows: JSON that does not parse
    (``NOT_A_LIST``) and empty or null item ids (``EMPTY_ID``).
    """
    dtype = column.dtype
    reasons = pl.Series([None] * len(column), dtype=pl.String)
    if isinstance(dtype, pl.List | pl.Array):
        if isinstance(dtype.inner, pl.List | pl.Array | pl.Struct):
            raise DataError(f"column {column.name!r} ({dtype}) holds nested lists, not item ids")
        lists = column.cast(pl.List(pl.String))
    else:
        text = as_ids(column).str.strip_chars()
        is_json = text.str.starts_with("[").fill_null(False)
        if separator is None:
            split = text.str.extract_all(r"\S+")
        else:
            split = pl.select(pl.when(text == "").then(pl.lit([], dtype=pl.List(pl.String)))
                              .otherwise(text.str.split(separator))).to_series()
        decoded, broken = json_lists(text, is_json)
        lists = pl.select(pl.when(is_json).then(decoded).otherwise(split)).to_series()
        reasons = pl.select(pl.when(broken).then(pl.lit(NOT_A_LIST))).to_series()
    lists = lists.fill_null(pl.lit([], dtype=pl.List(pl.String))).alias(column.name)
    empty_id = lists.list.eval(pl.element().is_null() | (pl.element() == "")).list.any()
    reasons = pl.select(pl.when(empty_id.fill_null(False)).then(pl.lit(EMPTY_ID))
                        .otherwise(reasons)).to_series()
    return lists, reasons.alias("reason")


def json_lists(text: pl.Series, is_json: pl.Series) -> tuple[pl.Series, pl.Series]:
    """JSON arrays of ids at ``is_json`` (empty lists elsewhere): (the lists, broken: JSON
    that does not parse as a flat array). One vectorised decode; value by value only when that
    fails."""
    dtype = pl.List(pl.String)
    arrays = pl.select(pl.when(is_json).then(text).otherwise(pl.lit("[]"))).to_series()
    try:
        return arrays.str.json_decode(dtype), pl.Series([False] * len(text))
    except pl.exceptions.PolarsError:  # find the broken ones (slow path, only on bad input)
        parsed = [_decode_one(value) for value in arrays.to_list()]
        return pl.Series(parsed, dtype=dtype), pl.Series([p is None for p in parsed])


def _decode_one(value: str) -> list[str | None] | None:
    try:
        return pl.Series([value]).str.json_decode(pl.List(pl.String)).to_list()[0]
    except pl.exceptions.PolarsError:
        return None


def left_aligned(lists: pl.Series, codes: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Lists (n,) whose flattened values have ``codes`` -> (n, length) left-aligned codes
    (padding 0) and the lengths; each list already cut to ``length``."""
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    out = np.zeros((len(lists), length), dtype=np.int64)
    rows = np.repeat(np.arange(len(lists)), lengths)
    starts = np.cumsum(lengths) - lengths
    out[rows, np.arange(len(rows)) - np.repeat(starts, lengths)] = codes
    return out, lengths
