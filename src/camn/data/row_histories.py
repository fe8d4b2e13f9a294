"""Rows that carry their own history: DIEN's Amazon files, BARS/FuxiCTR's CSVs
(``camn prepare dien``, ``camn prepare table --history-col``).

Such a row is an impression (label, user, item shown) that writes the items its user clicked
before it into the row itself, oldest first, with their attributes alongside. Its history is that
list, its last ``max_len`` items: no timeline is built and no time is read. A store of such rows
(``"samples": "impressions"`` and ``"history": "rows"`` in ``schema.json``) keeps the lists::

    arrays/clicks.npy                (E,)     int32  items of the stored histories, each oldest
                                                     first, at most max_len of them
    arrays/history_offsets.npy       (H + 1,) int64  history h is clicks[offsets[h]:offsets[h + 1]]
    arrays/impression_histories.npy  (N,)     int32  h: the stored history of each sample
    arrays/impression_users.npy, impression_items.npy, impression_labels.npy   as for impressions

Consecutive samples (in store order) whose histories are equal share one stored history: DIEN
writes each history twice, for a click and for its sampled non-click. Sample b's history is
``clicks[e - n : e]`` with ``h = impression_histories[b]``, ``e = offsets[h + 1]``,
``n = e - offsets[h]``: the (ends, lengths) references of every store
(:meth:`camn.data.store.PreparedStore.references`), so gathering, batches and the trainer's
device copy read these histories as they read timelines. ``schema.json``'s ``histories`` counts
the stored histories (``distinct``) and their items (``items``).

Samples are sorted by (split, user, row order), a split's samples one row range. Splits: the
files' (``files``: train, validation and test files), by user (``user``: 80/10/10 of the users at
random) or the train file split by user (``valid-users``: a seeded ``valid_fraction`` of the
users of the train file's rows become the validation split, for logs shipped as train and test
files only, as DIEN's are; a validation user has no row in train). Side features (context,
numeric, user features) are stored as for impressions (:mod:`camn.data.impressions`).

The sources hand over :class:`camn.data.raw.RawData` whose interactions hold ``user``, ``item``,
``label``, ``split`` (a log in files) and ``row_history`` (a list of item ids, oldest first); the
attributes of every item, history items included, are in ``RawData.items``.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from camn.data import features, impressions
from camn.data.protocols import FIRST_ITEM_ID, SPLITS, TRAIN, VALID, split_users
from camn.data.raw import BadInputReport, DataError, RawData

if TYPE_CHECKING:
    import polars as pl

ROWS = "rows"  # schema.json "history"
ROW_HISTORY = "row_history"  # RawData.interactions column: the row's history, oldest first
ARRAY_DTYPES = {"impression_users": np.int32, "impression_items": np.int32,
                "impression_labels": np.int8, "impression_histories": np.int32}
SPLIT_KINDS = ("files", "user", "valid-users")
DEFAULT_VALID_FRACTION = 0.1


def is_row_store(schema: dict) -> bool:
    """Whether a store's samples carry their own histories (else they point into timelines)."""
    return schema.get("history") == ROWS


def carries_histories(raw: RawData) -> bool:
    """Whether a source read rows that carry their own history (a ``row_history`` column)."""
    return ROW_HISTORY in raw.interactions.columns


# ---------------------------------------------------------------------------- building


def ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The flat positions ``starts[r] .. starts[r] + lengths[r] - 1`` of every row r, in order."""
    ends = np.cumsum(lengths)
    return np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - (ends - lengths),
                                                                    lengths)


def distinct_runs(items: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """Histories stored once per run of equal consecutive ones.

    ``items``: the n histories' items, concatenated; ``lengths`` (n,) theirs. Returns the
    (H + 1,) int64 offsets and the items of the H kept histories, and (n,) int32 the kept
    history of every row. Row r repeats row r - 1 when both have the same length and every item
    of row r, at flat position j, equals ``items[j - lengths[r]]``.
    """
    lengths = lengths.astype(np.int64)
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    equal_length = np.r_[False, lengths[1:] == lengths[:-1]]
    before = np.maximum(np.arange(len(items)) - lengths[row_of], 0)
    differs = equal_length[row_of] & (items != items[before])
    kept = ~(equal_length & (np.bincount(row_of[differs], minlength=len(lengths)) == 0))
    offsets = np.concatenate([[0], np.cumsum(lengths[kept])]).astype(np.int64)
    return offsets, items[np.repeat(kept, lengths)], (np.cumsum(kept) - 1).astype(np.int32)


def build_rows(
    user: np.ndarray, item: np.ndarray, label: np.ndarray, split: np.ndarray,
    history: np.ndarray, lengths: np.ndarray, side: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, int]]:
    """The store's arrays (module docstring; all but the item table) from coded rows.

    Args:
        user: (n,) user index; item: (n,) item id shown; label: (n,) 0/1; split: (n,) int8.
        history: the rows' histories (item ids, each oldest first, already cut to max_len),
            concatenated in row order; lengths: (n,) their lengths.
        side: per-row side features, (n, ...) each, stored as ``impression_<name>``.

    Returns the arrays, the samples per split and the clicks (label 1) per split.
    """
    order = np.lexsort((user, split))  # stable: row order within (split, user)
    starts = np.cumsum(lengths) - lengths
    lengths = lengths[order]
    offsets, clicks, which = distinct_runs(history[ragged_positions(starts[order], lengths)],
                                           lengths)
    arrays = {
        "clicks": clicks.astype(np.int32),
        "history_offsets": offsets,
        "impression_histories": which,
        "impression_users": user[order].astype(np.int32),
        "impression_items": item[order].astype(np.int32),
        "impression_labels": label[order].astype(np.int8),
        **{f"impression_{name}": values[order] for name, values in (side or {}).items()},
    }
    sizes = np.bincount(split, minlength=len(SPLITS))
    clicks_per_split = np.bincount(split, weights=label, minlength=len(SPLITS)).astype(np.int64)
    return (arrays, dict(zip(SPLITS, sizes.tolist(), strict=True)),
            dict(zip(SPLITS, clicks_per_split.tolist(), strict=True)))


def rows_split(options: dict, user: np.ndarray, num_users: int, frame: pl.DataFrame,
               seed: np.random.SeedSequence) -> np.ndarray:
    """(n,) int8 split of every row, by ``options["split"]`` (module docstring)."""
    how = options.get("split", "user")
    rng = np.random.default_rng(seed)
    if how == "user":
        return split_users(num_users, rng)[user]
    split = frame[impressions.SPLIT].to_numpy().astype(np.int8)
    if how == "valid-users":
        fraction = options.get("valid_fraction", DEFAULT_VALID_FRACTION)
        train_users = np.unique(user[split == TRAIN])
        chosen = rng.permutation(train_users)[: int(fraction * len(train_users))]
        split[(split == TRAIN) & np.isin(user, chosen)] = VALID
    return split


def prepare_rows(
    raw: RawData, max_len: int, seed: int, report: BadInputReport,
) -> tuple[dict, dict[str, np.ndarray], dict[str, list[str]], pl.Series]:
    """Encode rows that carry their history and build the store: its schema, arrays,
    vocabularies and user ids, what :func:`camn.data.store.write_store` writes."""
    import polars as pl

    from camn.data.codes import sorted_codes  # polars: preparing only

    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    frame, options = raw.interactions, raw.origin.get("labels", {})
    full = frame[ROW_HISTORY].list.len().to_numpy()
    lists = frame[ROW_HISTORY].list.tail(max_len)
    lengths = lists.list.len().to_numpy().astype(np.int64)
    shown = len(frame)
    codes, items = sorted_codes(pl.concat([frame["item"], lists.explode().drop_nulls()]))
    item = (codes[:shown] + FIRST_ITEM_ID).astype(np.int32)
    history = (codes[shown:] + FIRST_ITEM_ID).astype(np.int32)
    user, users = sorted_codes(frame["user"])
    label = frame[impressions.LABEL].to_numpy()
    raw.interactions = frame.clear()
    split = rows_split(options, user, len(users), frame, np.random.SeedSequence(seed))
    side, side_schema, side_vocabularies = features.side_features(frame)
    arrays, sizes, clicks = build_rows(user, item, label, split, history, lengths, side)
    if (cut := int((full > max_len).sum())) > 0:
        raw.notes.append(f"{cut:,} of {shown:,} row histories hold more than max_len {max_len} "
                         "items (their most recent max_len kept)")
    if shared := users_in_several_splits(arrays["impression_users"], sizes):
        raw.notes.append(f"{shared:,} user(s) have rows in more than one split")
    schema = {
        "history": ROWS,
        "num_interactions": shown,
        "histories": {"distinct": len(arrays["history_offsets"]) - 1,
                      "items": len(arrays["clicks"])},
    }
    return impressions.complete_store(raw, schema | side_schema, arrays, sizes, clicks, users,
                                      items, side_vocabularies, max_len, seed, report)


def users_in_several_splits(users: np.ndarray, sizes: dict[str, int]) -> int:
    """How many users have samples in more than one split (samples in split order)."""
    bounds = np.cumsum([0, *sizes.values()])
    per_split = [np.unique(users[a:b]) for a, b in pairwise(bounds)]
    found = np.concatenate(per_split)
    return int((np.bincount(found) > 1).sum()) if len(found) else 0


# ---------------------------------------------------------------------------- reading


def expected_arrays(schema: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of a store of rows with their histories."""
    n, histories = sum(schema["splits"].values()), schema["histories"]
    arrays = {name: ((n,), np.dtype(dtype)) for name, dtype in ARRAY_DTYPES.items()}
    arrays |= {
        "item_attributes": ((schema["num_items"] + FIRST_ITEM_ID, len(schema["attributes"])),
                            np.dtype(np.int32)),
        "clicks": ((histories["items"],), np.dtype(np.int32)),
        "history_offsets": ((histories["distinct"] + 1,), np.dtype(np.int64)),
    }
    return arrays | features.side_arrays(schema)


def references(store: features.StoreArrays, samples: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """(ends, lengths) int64 of the histories of ``samples``: history b is
    ``clicks[ends[b] - lengths[b] : ends[b]]``."""
    which = store.array("impression_histories")[samples].astype(np.int64)
    offsets = store.array("history_offsets")
    ends = np.asarray(offsets[which + 1])
    return ends, ends - offsets[which]


def schema_problems(schema: dict) -> list[str]:
    """What makes a row store's schema unusable: its ``histories`` entry, its kind."""
    problems = []
    if not impressions.is_impressions(schema):
        problems.append(f"has history {ROWS!r} but samples {schema.get('samples')!r}: rows that "
                        f"carry their history are {impressions.KIND}")
    histories = schema.get("histories")
    if not (isinstance(histories, dict) and all(
            type(histories.get(key)) is int and histories[key] >= 0
            for key in ("distinct", "items"))):
        problems.append("histories must give the distinct and items counts of the stored row "
                        "histories")
    return problems


def content_problems(store: features.StoreArrays) -> list[str]:
    """Stored histories that cannot be read: offsets not ascending from 0 to the item count, a
    history longer than max_len, a sample's history index outside the stored ones, a label
    other than 0 or 1, samples out of user order within a split."""
    offsets = np.asarray(store.array("history_offsets"))
    items = len(store.array("clicks"))
    if offsets[0] != 0 or offsets[-1] != items or np.any(np.diff(offsets) < 0):
        return [f"arrays/history_offsets.npy does not ascend from 0 to the item count "
                f"({items:,} in arrays/clicks.npy)"]
    max_len = store.schema["max_len"]
    if (longest := int(np.diff(offsets).max(initial=0))) > max_len:
        return [f"arrays/history_offsets.npy holds a history of {longest} items, longer than "
                f"max_len {max_len}"]
    which = np.asarray(store.array("impression_histories"))
    labels = np.asarray(store.array("impression_labels"))
    checks = [
        ((which < 0) | (which >= len(offsets) - 1), "impression_histories", which,
         f"stored histories are 0..{len(offsets) - 2}"),
        ((labels != 0) & (labels != 1), "impression_labels", labels, "labels are 0 or 1"),
    ]
    for bad, name, values, rule in checks:
        if bad.any():
            row = int(np.argmax(bad))
            return [f"arrays/{name}.npy holds {values[row]} at row {row:,}: {rule}"]
    if problem := features.user_feature_problem(store.schema, store):
        return [problem]
    users = np.asarray(store.array("impression_users"))
    for first, stop in impressions.orderable_splits(store):
        unordered = users[first + 1 : stop] < users[first : stop - 1]
        if unordered.any():
            return [f"arrays/impression_users.npy: the samples are not sorted by user within "
                    f"each split at row {first + int(np.argmax(unordered)) + 1:,}"]
    return []


# ---------------------------------------------------------------------------- sources


def list_column(text: pl.Expr, separator: str) -> pl.Expr:
    """Values joined by ``separator`` as a list (an empty or null text: an empty list)."""
    import polars as pl

    return (text.fill_null("").str.split(separator, literal=True)
            .list.eval(pl.element().filter(pl.element() != "")))


def empty_value(text: pl.Expr, separator: str) -> pl.Expr:
    """Whether a non-empty joined text holds an empty value (two separators in a row, one at
    an end)."""
    return (text.fill_null("") != "") & text.fill_null("").str.split(
        separator, literal=True).list.contains("")


def item_table(pairs: pl.DataFrame, known: pl.DataFrame | None, notes: list[str],
               known_name: str = "") -> pl.DataFrame:
    """One row an item: ``item`` and its attribute columns, from ``pairs`` (the (item,
    attributes) of every row's item, then of every history position, each in file order: an
    item's first values kept, a shown item's before a history's) and ``known`` (an item table
    whose rows take precedence, e.g. DIEN's item-info; None for none). A note counts the items
    whose values in the rows disagree (with ``known``, named ``known_name``, or among
    themselves)."""
    import polars as pl

    first = pairs.unique(subset="item", keep="first", maintain_order=True)
    names = [c for c in pairs.columns if c != "item"]
    reference = first if known is None else pl.concat(
        [known, first.join(known, on="item", how="anti")], how="vertical_relaxed")
    found = pairs.unique().join(reference, on="item", how="left", suffix="__kept")
    differs = pl.any_horizontal(pl.col(n).ne_missing(pl.col(f"{n}__kept")) for n in names)
    disagreeing = found.filter(differs)["item"].n_unique()
    if disagreeing and known is None:
        notes.append(f"{disagreeing:,} item(s) appear in the rows with more than one "
                     f"{' or '.join(names)} (the first kept)")
    elif disagreeing:
        notes.append(f"{disagreeing:,} item(s) appear in the rows with another "
                     f"{' or '.join(names)} than {known_name} gives ({known_name}'s kept; the "
                     "rows' first for an item it lacks)")
    return reference


def check_options(options: dict) -> None:
    """A DataError for a split kind or validation fraction a row store cannot take."""
    if options.get("split", "user") not in SPLIT_KINDS:
        raise DataError(f"rows that carry their history are split by {', '.join(SPLIT_KINDS)}, "
                        f"not {options['split']!r} (they hold no times)")
    fraction = options.get("valid_fraction", DEFAULT_VALID_FRACTION)
    if not 0 < fraction < 1:
        raise DataError(f"the validation share of the train file's users must lie in (0, 1), "
                        f"got {fraction}")
