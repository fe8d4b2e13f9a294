"""Labelled impressions: a store whose samples are logged rows with a 0/1 label.

A store of impressions (``"samples": "impressions"`` in ``schema.json``) keeps the timelines of a
store of pairs (:mod:`camn.data.store`): the history events of every user in time order, where
the history events are the rows the source marked (by default the clicks, label 1). Its samples
are the rows of the log, one each::

    arrays/impression_users.npy      (N,) int32  user index
    arrays/impression_positions.npy  (N,) int32  p: the user's history events strictly before
                                                 the impression's time (its history length
                                                 before the cut to max_len)
    arrays/impression_items.npy      (N,) int32  item id shown
    arrays/impression_labels.npy     (N,) int8   1 click, 0 non-click (logged or sampled)
    arrays/impression_times.npy      (N,)        its time (the dtype of click_times)

The history of sample b is ``clicks[e - n : e]``, ``e = offsets[u] + p``, ``n = min(p, max_len)``,
as for a pair; its target is ``impression_items[b]`` and its label ``impression_labels[b]``.

Ties: an event at the same time as an impression is never in its history (strictly before), so
a clicked impression's own click is not, and the result does not depend on the order of rows
with equal times. Within a timeline, events of equal time are ordered by item id.

Samples are sorted by (split, user, time); a split's samples are one row range (``splits`` in
``schema.json``). Splits: ``user`` (80/10/10 of the users at random), ``time`` (an impression
at or after ``valid_from`` is valid, at or after ``test_from`` test: no test time lies in the
training period) or ``files`` (the split each row's file says). ``--negatives N`` adds N
sampled non-clicks (label 0, items the user has no row with) per click, each with its click's
user, time, history and split.

A multi-valued item attribute (``table --multi-valued genres:|``) keeps a bag of values per item:
``arrays/bags.<attribute>.npy`` (num_items + 2, M) int32 value ids per item id, 0-padded, M its
longest bag, named by the ``FeatureSpec`` fields ``bag_slots`` and ``bag_lengths``; the trainer
puts it into the model's embedding (``AttributeEmbedding.set_bags``), which saves it with the
weights. Its column of ``item_attributes`` holds the first value's id.

Side features of the rows reach the models' output network (the batch keys ``context`` and
``numeric``): ``arrays/impression_context.npy`` (N, C) int32, the ids of the row's context values
(vocabularies ``vocab/context.<name>.txt``; id 1 for a missing value), and
``arrays/impression_numeric.npy`` (N, M) float32, numbers standardised with the mean and standard
deviation of the training split (``numeric_standardisation`` in ``schema.json``). A sampled
non-click copies its click's.

User features (a user table's columns: age, gender ...) are stored once per user and gathered
by the sample's user into the batch key ``user_features``: ``arrays/user_features.npy``
(num_users, U) int32, row u the ids of user index u's values (vocabularies
``vocab/user.<name>.txt``; id 1 for a missing value or a user without a row).
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from camn.data import features
from camn.data.features import StoreArrays
from camn.data.protocols import (
    FIRST_ITEM_ID,
    SPLITS,
    TEST,
    TRAIN,
    VALID,
    narrowest_times,
    sample_negatives,
    split_users,
)
from camn.data.raw import BadInputReport, DataError, RawData

if TYPE_CHECKING:
    import polars as pl


KIND = "impressions"  # schema.json "samples"
KEY_CHUNK = 1 << 22  # rows whose (user, time) keys are built or looked up at a time
LABEL, HISTORY, SPLIT = "label", "history", "split"  # RawData.interactions columns
ARRAY_DTYPES = {"impression_users": np.int32, "impression_positions": np.int32,
                "impression_items": np.int32, "impression_labels": np.int8}
SAMPLE_ARRAYS = (*ARRAY_DTYPES, "impression_times", "impression_context", "impression_numeric")
DEFAULT_VALID_FROM, DEFAULT_TEST_FROM = 0.8, 0.9  # fractions of the time range


def is_impressions(schema: dict) -> bool:
    """Whether a store's samples are labelled impressions (else pairs)."""
    return schema.get("samples") == KIND


def is_labelled(raw: RawData) -> bool:
    """Whether a source read labelled impressions (a ``label`` column)."""
    return LABEL in raw.interactions.columns


# ---------------------------------------------------------------------------- building


def time_bound(value: str | float | None, default: float, times: np.ndarray, unit: str) -> float:
    """A split's first time: a fraction of [min, max] of ``times`` (a number in [0, 1]), a
    time in the column's own units (another number), or an ISO date (``2020-01-31``, read in
    ``unit``: ``s`` for numeric times, taken as Unix seconds, ``us`` for parsed dates)."""
    if value is None:
        value = default
    try:
        number = float(value)
    except ValueError:
        try:
            date = np.datetime64(str(value), "us")
        except ValueError:
            raise DataError(f"split start {value!r} is neither a number, a fraction of the time "
                            "range in [0, 1], nor a date such as 2020-01-31") from None
        micros = float(date.astype(np.int64))
        return micros if unit == "us" else micros / 1e6
    if 0 <= number <= 1:
        low, high = float(times.min()), float(times.max())
        return low + number * (high - low)
    return number


def time_splits(time: np.ndarray, valid_from: float, test_from: float) -> np.ndarray:
    """(n,) int8 split of each impression: train before ``valid_from``, test from
    ``test_from``, valid in between."""
    if test_from < valid_from:
        raise DataError(f"the test period starts ({test_from}) before the validation period "
                        f"({valid_from}): give --test-from after --valid-from")
    split = np.full(len(time), VALID, dtype=np.int8)
    split[time < valid_from] = TRAIN
    split[time >= test_from] = TEST
    return split


def user_time_keys(user: np.ndarray, time: np.ndarray, num_users: int) -> np.ndarray:
    """(n,) int64 keys user * stride + t that order rows by (user, time), t the
    :func:`comparable_times`, built ``KEY_CHUNK`` rows at a time so that no other (n,) int64
    array is in flight."""
    keys = comparable_times(time, num_users)
    stride = int(keys.max(initial=0)) + 1
    for start in range(0, len(keys), KEY_CHUNK):
        keys[start : start + KEY_CHUNK] += user[start : start + KEY_CHUNK].astype(np.int64) * stride
    return keys


def history_positions(
    user: np.ndarray, keys: np.ndarray, click_keys: np.ndarray, starts: np.ndarray,
) -> np.ndarray:
    """(n,) int32, the number of the user's history events strictly before each impression:
    a searchsorted of the rows' :func:`user_time_keys` among the clicks' (sorted), less the
    user's first click, ``KEY_CHUNK`` rows at a time."""
    positions = np.empty(len(user), dtype=np.int32)  # at most the longest timeline
    for start in range(0, len(user), KEY_CHUNK):
        rows = slice(start, start + KEY_CHUNK)
        positions[rows] = (np.searchsorted(click_keys, keys[rows], side="left")
                           - starts[user[rows]])
    return positions


def comparable_times(time: np.ndarray, num_users: int) -> np.ndarray:
    """(n,) int64 that order as ``time`` does, from 0: integer times less the earliest, where
    num_users x their span fits a key of 63 bits (Unix seconds do for a billion users), else
    the dense rank of each time (a sort of all of them: memory for fractional times only)."""
    if time.dtype.kind in "iu" and len(time):
        earliest = time.min()
        if num_users * (int(time.max()) - int(earliest) + 1) < 2**62:
            return (time - earliest).astype(np.int64, copy=False)
    return np.unique(time, return_inverse=True)[1].reshape(-1).astype(np.int64)


def build_impressions(
    user: np.ndarray, item: np.ndarray, time: np.ndarray, label: np.ndarray,
    history: np.ndarray, split: np.ndarray, num_users: int, num_items: int,
    negatives: int = 0, rng: np.random.Generator | None = None,
    side: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, int]]:
    """Timelines and impression samples (module docstring) from coded rows.

    Args:
        user: (n,) user index in [0, num_users); item: (n,) item id in [2, num_items + 2);
        time: (n,); label: (n,) 0/1; history: (n,) bool, the rows that enter histories;
        split: (n,) int8 0 train, 1 valid, 2 test.
        negatives: sampled non-clicks to add per click, drawn with ``rng``.
        side: per-row side features, (n, ...) each, stored as ``impression_<name>`` in
            sample order (a sampled non-click copies its click's).

    Returns the arrays (all but the item table), the samples per split and the clicks
    (label 1) per split.
    """
    label, side = label.astype(np.int8), side or {}
    if negatives:
        copied, drawn = draw_negatives(user, item, label, num_items, negatives,
                                       rng or np.random.default_rng())
        user, time, split, *values = (np.concatenate([column, column[copied]]) for column in
                                      (user, time, split, *side.values()))
        side = dict(zip(side, values, strict=True))
        item = np.concatenate([item, drawn])
        label = np.concatenate([label, np.zeros(len(copied), dtype=np.int8)])
    sizes, clicks = split_counts(split, label)
    keys = user_time_keys(user, time, num_users)
    by_time, click_keys = history_in_time_order(keys, item, history)
    starts = np.concatenate([[0], np.cumsum(np.bincount(user[by_time], minlength=num_users))])
    positions = history_positions(user, keys, click_keys, starts)
    del click_keys
    stored_times = narrowest_times(time)
    arrays = {
        "timeline_users": np.arange(num_users, dtype=np.int32),
        "timeline_offsets": starts.astype(np.int64, copy=False),
        "clicks": item[by_time].astype(np.int32, copy=False),
        "click_times": stored_times[by_time],
    }
    del by_time
    order = np.lexsort((keys, split))  # (split, user, time)
    del keys
    arrays |= {
        "impression_users": user[order].astype(np.int32, copy=False),
        "impression_positions": positions[order],
        "impression_items": item[order].astype(np.int32, copy=False),
        "impression_labels": label[order],
        "impression_times": stored_times[order],
        **{f"impression_{name}": values[order] for name, values in side.items()},
    }
    return arrays, sizes, clicks


def split_counts(split: np.ndarray, label: np.ndarray) -> tuple[dict[str, int], dict[str, int]]:
    """The samples and the clicks (label 1) of each split."""
    sizes, clicks = {}, {}
    for number, name in enumerate(SPLITS):
        rows = split == number  # a byte a row, where a bincount would widen every row to 8
        sizes[name], clicks[name] = int(np.count_nonzero(rows)), int(np.count_nonzero(label[rows]))
    return sizes, clicks


def history_in_time_order(
    keys: np.ndarray, item: np.ndarray, history: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The rows that enter histories in timeline order, by (user, time) and then item id for
    events of equal time, and their :func:`user_time_keys` (ascending)."""
    events = np.flatnonzero(history)
    event_keys = keys[events]
    in_time_order = np.lexsort((item[events], event_keys))
    click_keys = event_keys[in_time_order]
    del event_keys  # freed before the next (events,) array is made
    return events[in_time_order], click_keys


def draw_negatives(
    user: np.ndarray, item: np.ndarray, label: np.ndarray, num_items: int, negatives: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``negatives`` sampled non-clicks per click: the rows they copy (user, time, split, side
    features) and their items, each one the user has no row with (uniform)."""
    clicked = np.repeat(np.flatnonzero(label == 1), negatives)
    keys = np.unique(user.astype(np.int64) * (num_items + FIRST_ITEM_ID) + item)
    touched = np.bincount(keys // (num_items + FIRST_ITEM_ID))
    if np.any(touched[user[clicked]] >= num_items):
        raise DataError("a user with a click has a row with every item, so no negative can be "
                        "drawn for them: leave out --negatives, or add items")
    return clicked, sample_negatives(user[clicked], keys, num_items, rng)


def prepare_impressions(
    raw: RawData, max_len: int, seed: int, report: BadInputReport,
) -> tuple[dict, dict[str, np.ndarray], dict[str, list[str]], pl.Series]:
    """Encode labelled rows (``raw.interactions`` with ``label``, ``history`` and maybe
    ``split`` columns; options in ``raw.origin["labels"]``) and build the samples: the store's
    schema, arrays, vocabularies and user ids, what :func:`camn.data.store.write_store` writes.
    (Rows that carry their own history are :func:`camn.data.row_histories.prepare_rows`'.)"""
    from camn.data.codes import sorted_codes  # polars: preparing only

    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    frame, options = raw.interactions, raw.origin.get("labels", {})
    user, users = sorted_codes(frame["user"])
    item, items = sorted_codes(frame["item"])
    time = frame["time"].to_numpy()
    label, history = frame[LABEL].to_numpy(), frame[HISTORY].to_numpy()
    raw.interactions = frame.clear()
    split_seq, negative_seq = np.random.SeedSequence(seed).spawn(2)
    split = row_splits(options, user, time, len(users), frame, split_seq)
    side, side_schema, side_vocabularies = features.side_features(frame)
    del frame  # its id columns, coded above, are not needed while the samples are built
    arrays, sizes, clicks = build_impressions(
        user, (item + FIRST_ITEM_ID).astype(np.int32), time, label, history, split,
        len(users), len(items), negatives=options.get("negatives", 0),
        rng=np.random.default_rng(negative_seq), side=side,
    )
    schema = side_schema | {
        "num_interactions": len(user),
        "timelines": {"users": len(users), "clicks": len(arrays["clicks"]),
                      "time_dtype": str(arrays["click_times"].dtype)},
    }
    return complete_store(raw, schema, arrays, sizes, clicks, users, items, side_vocabularies,
                          max_len, seed, report)


def complete_store(
    raw: RawData, schema: dict, arrays: dict[str, np.ndarray], sizes: dict[str, int],
    clicks: dict[str, int], users: pl.Series, items: pl.Series,
    side_vocabularies: dict[str, list[str]], max_len: int, seed: int, report: BadInputReport,
) -> tuple[dict, dict[str, np.ndarray], dict[str, list[str]], pl.Series]:
    """A store of impressions from its built sample ``arrays``: the numbers standardised, the
    item table and its bags, the user features, and the schema (``schema``: the fields of its
    kind and side features so far); what :func:`prepare_impressions` returns."""
    from camn.data.codes import encode_items, item_bags  # polars: preparing only

    side_vocabularies = dict(side_vocabularies)
    if raw.users is not None:
        table, user_schema, user_vocabularies, note = features.user_feature_table(raw.users,
                                                                                     users)
        schema |= user_schema
        side_vocabularies |= user_vocabularies
        raw.notes.append(note)
    if raw.origin.get("numeric_buckets"):
        features.bucket_numeric(arrays, schema, side_vocabularies,
                                raw.origin["numeric_buckets"], sizes["train"])
    if "impression_numeric" in arrays:
        arrays["impression_numeric"], schema["numeric_standardisation"] = features.standardise(
            arrays["impression_numeric"], sizes["train"], schema["numeric_features"])
    item_attributes, vocabularies = encode_items(raw, items, report)
    separators = raw.origin.get("multi_valued", {})
    bags = item_bags(raw, items, separators, item_attributes, vocabularies)
    arrays |= {f"{features.BAGS}{name}": bag for name, bag in bags.items()}
    if bags:
        schema |= {"bag_slots": [raw.attributes.index(name) for name in bags],
                   "bag_lengths": [bag.shape[1] for bag in bags.values()]}
    arrays["item_attributes"] = item_attributes
    if raw.users is not None:
        arrays["user_features"] = table
    schema |= {
        "samples": KIND,
        "num_users": len(users),
        "num_items": len(items),
        "attributes": raw.attributes,
        "vocab_sizes": [len(vocabularies[a]) + FIRST_ITEM_ID for a in raw.attributes],
        "protocol": KIND,
        "seed": seed,
        "max_len": max_len,
        "splits": sizes,
        "clicks_per_split": clicks,
        "origin": raw.origin,
        "bad_input": dict(sorted(report.counts.items())),
        "notes": raw.notes,
    }
    return schema, arrays, vocabularies | side_vocabularies, users


def row_splits(
    options: dict, user: np.ndarray, time: np.ndarray, num_users: int, frame,
    seed: np.random.SeedSequence,
) -> np.ndarray:
    """(n,) int8 split of every row, by ``options["split"]``: files, time or user (the users
    split as a store of pairs splits them, under the same seed)."""
    how = options.get("split", "user")
    if how == "files":
        return frame[SPLIT].to_numpy().astype(np.int8)
    if how == "time":
        unit = options.get("time_unit", "s")
        valid_from = time_bound(options.get("valid_from"), DEFAULT_VALID_FROM, time, unit)
        test_from = time_bound(options.get("test_from"), DEFAULT_TEST_FROM, time, unit)
        options["valid_from_time"], options["test_from_time"] = valid_from, test_from
        return time_splits(time, valid_from, test_from)
    return split_users(num_users, np.random.default_rng(seed))[user]


def label_warnings(sizes: dict[str, int], clicks: dict[str, int]) -> list[str]:
    """Why a split would score nothing: no samples, or one label only."""
    return [problem for split in SPLITS if (problem := label_problem(split, sizes, clicks))]


def label_problem(split: str, sizes: dict[str, int], clicks: dict[str, int]) -> str | None:
    if sizes[split] == 0:
        return f"the {split} split has no impressions: camn train will refuse this store"
    if clicks[split] in (0, sizes[split]):
        kind = "clicks" if clicks[split] else "non-clicks"
        return (f"the {split} split holds {kind} only ({sizes[split]:,} impressions): its AUC is "
                "undefined; camn train will refuse this store")
    return None


# ---------------------------------------------------------------------------- reading


def expected_arrays(schema: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of the sample arrays of a store of impressions."""
    n = sum(schema["splits"].values())
    arrays = {name: ((n,), np.dtype(dtype)) for name, dtype in ARRAY_DTYPES.items()}
    arrays["impression_times"] = ((n,), np.dtype(schema["timelines"]["time_dtype"]))
    return arrays | features.side_arrays(schema)


def training_problems(schema: dict) -> list[str]:
    """Splits that would train or score nothing: empty, or one label only."""
    clicks = schema.get("clicks_per_split") or {}
    if sorted(clicks) != sorted(SPLITS):
        return ["schema.json lacks clicks_per_split (the clicks of each split)"]
    return [f"schema.json: {problem}" for split in SPLITS
            if (problem := label_problem(split, schema["splits"], clicks))]


def content_problems(store: StoreArrays) -> list[str]:
    """Samples that do not fit the timelines: a user without a timeline, a position beyond
    its user's history events, a label other than 0 or 1, a history event at or after its
    impression's time, samples out of (user, time) order within a split."""
    users = np.asarray(store.array("impression_users"))
    positions = np.asarray(store.array("impression_positions")).astype(np.int64)
    labels = np.asarray(store.array("impression_labels"))
    times = np.asarray(store.array("impression_times"))
    timeline_users = np.asarray(store.array("timeline_users"))
    offsets = np.asarray(store.array("timeline_offsets"))
    timeline = np.minimum(np.searchsorted(timeline_users, users), len(timeline_users) - 1)
    checks = [
        (timeline_users[timeline] != users, "impression_users", users,
         "a user without a timeline (arrays/timeline_users.npy)"),
        ((positions < 0) | (positions > np.diff(offsets)[timeline]), "impression_positions",
         positions, "beyond its user's history events"),
        ((labels != 0) & (labels != 1), "impression_labels", labels, "labels are 0 or 1"),
    ]
    for bad, name, values, rule in checks:
        if bad.any():
            row = int(np.argmax(bad))
            return [f"arrays/{name}.npy holds {values[row]} at row {row:,}: {rule}"]
    if problem := features.user_feature_problem(store.schema, store):
        return [problem]
    click_times = np.asarray(store.array("click_times"))
    last = offsets[timeline] + positions - 1
    late = (positions > 0) & (click_times[np.maximum(last, 0)] >= times)
    if late.any():
        row = int(np.argmax(late))
        return [f"arrays/impression_positions.npy holds {positions[row]} at row {row:,}: its "
                "history would hold an event at or after the impression's time"]
    for first, stop in orderable_splits(store):
        same = users[first + 1 : stop] == users[first : stop - 1]
        unordered = (users[first + 1 : stop] < users[first : stop - 1]) | (
            same & (times[first + 1 : stop] < times[first : stop - 1]))
        if unordered.any():
            return [f"arrays/impression_users.npy: the impressions are not sorted by (user, "
                    f"time) within each split at row {first + int(np.argmax(unordered)) + 1:,}"]
    return []


def orderable_splits(store: StoreArrays) -> list[tuple[int, int]]:
    """The row range [first, stop) of each split of two rows or more, whose order a scan
    checks (an empty split's ``stop - 1`` would count from the end)."""
    return [(int(first), int(stop)) for first, stop in pairwise(store.split_bounds)
            if stop - first >= 2]
