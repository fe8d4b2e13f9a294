"""The sample protocols, vectorised with numpy.

``last`` (the paper, Sec. 3.1): per user, the last interaction is the positive and one item drawn
uniformly from the items the user never touched is the negative; both share the history of the
previous items (at most L). ``sliding``: train users give one positive (plus one negative) per
position t >= 1; valid and test users give their last position only, with the same negatives as
``last``, so the valid and test sets of both protocols are identical under one seed.

Users are split 80/10/10 at random. A sample refers to its user's timeline (the clicks in time
order) by the position of its target there; its history is the clicks before it, at most L of
them (gathered by :class:`camn.data.store.PreparedStore`, left-aligned, padded with id 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from camn.data.layout import FIRST_ITEM_ID, SPLITS, TEST, TRAIN, VALID
from camn.data.raw import DataError

Protocol = Literal["last", "sliding"]
PROTOCOLS: tuple[str, ...] = ("last", "sliding")


def split_users(num_users: int, rng: np.random.Generator) -> np.ndarray:
    """Assign each user to train (0), valid (1) or test (2): 80/10/10 of a random permutation."""
    order = rng.permutation(num_users)
    n_train, n_valid = int(0.8 * num_users), int(0.1 * num_users)
    split = np.empty(num_users, dtype=np.int8)
    split[order[:n_train]] = TRAIN
    split[order[n_train : n_train + n_valid]] = VALID
    split[order[n_train + n_valid :]] = TEST
    return split


def sample_negatives(
    users: np.ndarray, user_item_keys: np.ndarray, num_items: int, rng: np.random.Generator
) -> np.ndarray:
    """One item id per entry of ``users``, uniform over the items that user never interacted with.

    ``user_item_keys`` is the sorted array of ``user * (num_items + 2) + item_id`` of every
    interaction. Collisions are redrawn (vectorised) until none is left.
    """
    stride = num_items + FIRST_ITEM_ID
    negatives = rng.integers(FIRST_ITEM_ID, stride, size=len(users))
    todo = taken(users, negatives, user_item_keys, stride)
    while len(todo):
        negatives[todo] = rng.integers(FIRST_ITEM_ID, stride, size=len(todo))
        todo = todo[taken(users[todo], negatives[todo], user_item_keys, stride)]
    return negatives


TAKEN_CHUNK = 1 << 22  # pairs looked up at a time: three (chunk,) int64 arrays in flight


def taken(users: np.ndarray, items: np.ndarray, user_item_keys: np.ndarray, stride: int
          ) -> np.ndarray:
    """The indices of the (user, item) pairs found in ``user_item_keys``, looked up
    ``TAKEN_CHUNK`` pairs at a time, so that the memory in flight does not grow with the log."""
    found = [start + taken_chunk(users[start : start + TAKEN_CHUNK],
                                 items[start : start + TAKEN_CHUNK], user_item_keys, stride)
             for start in range(0, len(users), TAKEN_CHUNK)]
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def taken_chunk(users: np.ndarray, items: np.ndarray, user_item_keys: np.ndarray, stride: int
                ) -> np.ndarray:
    keys = users.astype(np.int64)
    keys *= stride
    keys += items
    found = np.searchsorted(user_item_keys, keys)
    np.minimum(found, len(user_item_keys) - 1, out=found)
    return np.flatnonzero(user_item_keys[found] == keys)


def narrowest_times(time: np.ndarray) -> np.ndarray:
    """Times as int32 where every value fits (Unix seconds do until 2038), else int64, or
    float64 for fractional times. Whole-number floats (RecBole's ``timestamp:float``) are
    integers here, so two readers of the same log store the same times."""
    if time.dtype.kind == "f":
        whole = np.isfinite(time).all() and (np.abs(time) < 2**53).all() and (
            np.floor(time) == time).all()
        if not whole:
            return time.astype(np.float64)
        time = time.astype(np.int64)
    fits = len(time) == 0 or (time.min() >= np.iinfo(np.int32).min
                              and time.max() <= np.iinfo(np.int32).max)
    return time.astype(np.int32 if fits else np.int64)


def user_draws(starts: np.ndarray, num_items: int, seed: int, user_keys: np.ndarray | None):
    """The user split and a negatives drawer ``(users, clicks, user_item_keys, part)``
    (``clicks``: the global index of each click, ``starts``: where each user's timeline
    starts): from seeded streams over all users (one stream each for the split, the ``last``
    negatives and the ``sliding`` ones), or with ``user_keys`` per user."""
    if user_keys is not None:
        from camn.data.negatives import negatives_by_user, split_by_user

        def by_user(users, clicks, user_item_keys, part):
            positions = clicks - starts[users]
            return negatives_by_user(users, positions, user_keys, user_item_keys, num_items, seed)

        return split_by_user(user_keys, seed), by_user
    split_seq, *streams = np.random.SeedSequence(seed).spawn(3)
    rngs = dict(zip(("last", "sliding"), map(np.random.default_rng, streams), strict=True))

    def by_stream(users, clicks, user_item_keys, part):
        return sample_negatives(users, user_item_keys, num_items, rngs[part])

    return split_users(len(starts), np.random.default_rng(split_seq)), by_stream


def distinct_keys(user: np.ndarray, item: np.ndarray, stride: int) -> np.ndarray:
    """The sorted distinct ``user * stride + item`` of the events: ``np.unique`` of them, with
    one (n,) int64 array in flight rather than three (sorted in place)."""
    keys = user.astype(np.int64)
    keys *= stride
    keys += item
    keys.sort()
    first = np.empty(len(keys), dtype=bool)
    first[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return keys[first]


def by_split(values: np.ndarray, split_of: np.ndarray) -> np.ndarray:
    """``values`` with the train ones first, then valid, then test, each in its order:
    ``values[np.argsort(split_of, kind="stable")]`` without an (n,) int64 order in memory."""
    return np.concatenate([values[split_of == code] for code in range(len(SPLITS))])


def build_samples(
    user: np.ndarray,
    item: np.ndarray,
    time: np.ndarray,
    num_items: int,
    protocol: Protocol,
    seed: int = 2022,
    annotations: dict[str, np.ndarray] | None = None,
    user_names: Sequence[str] | None = None,
    user_keys: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Turn interactions into timelines and the samples that refer to them.

    Args:
        user: (n,) user index in [0, num_users); every user has at least 2 interactions.
        item: (n,) item id in [2, num_items + 2).
        time: (n,) timestamps; ties keep the input order.
        annotations: optional per-interaction int arrays (e.g. ``driver``), kept per click as
            ``click_<name>``.
        user_names: the user of every index, for messages.
        user_keys: (num_users,) uint64 key of every user (:func:`camn.data.negatives.user_keys`):
            the split and the negatives are then drawn per user (:mod:`camn.data.negatives`),
            each user's from its key alone; without them, from seeded streams over all users.

    Returns the store's arrays (:mod:`camn.data.store`) but the item table: the timelines
    ``timeline_users`` (U,) int32, ``timeline_offsets`` (U + 1,) int64, ``clicks`` (n,) int32
    (each user's items in time order), ``click_times`` (n,) (:func:`narrowest_times`) and the
    annotations; one pair a click to predict (a positive and its sampled negative), sorted by
    (split, user, position): ``pair_users`` (P,) int32, ``pair_positions`` (P,) int32 (the
    click's index in the user's timeline; the history is the clicks before it) and
    ``pair_negatives`` (P,) int32, the negative's item id. Also the samples per split (two a
    pair; the pairs of a split are contiguous, in the order train, valid, test).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    by_time = np.lexsort((time, user))  # stable: ties keep the input order
    user, item = user[by_time], item[by_time]
    timelines = {"click_times": narrowest_times(time[by_time]),
                 **{f"click_{name}": values[by_time]
                    for name, values in (annotations or {}).items()}}
    del by_time, time  # the caller hands its arrays over (EncodedInteractions.take_events)
    counts = np.bincount(user)
    if len(counts) == 0 or counts.min() < 2:
        raise DataError("every user needs at least 2 interactions (drop the others first)")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    user_split, draw_negatives = user_draws(starts, num_items, seed, user_keys)
    user_item_keys = distinct_keys(user, item, num_items + FIRST_ITEM_ID)
    touched = np.bincount(user_item_keys // (num_items + FIRST_ITEM_ID))
    if len(saturated := np.flatnonzero(touched >= num_items)):
        first = int(saturated[0])
        who = repr(user_names[first]) if user_names is not None else f"#{first}"
        raise DataError(
            f"user {who} interacted with every item ({num_items:,}), so no negative can be drawn"
            f" for them ({len(saturated):,} such user(s)); leave them out, or add items"
        )

    last_pos = starts + counts - 1  # global index of each user's last interaction
    last_negatives = draw_negatives(np.arange(len(counts)), last_pos, user_item_keys, "last")
    last_negatives = last_negatives.astype(np.int32)
    if protocol == "last":
        pos, negatives = last_pos, last_negatives
    else:
        predicted = user_split[user] == TRAIN  # every click of a train user but the first
        predicted[starts] = False
        train_pos = np.flatnonzero(predicted)
        del predicted
        train_neg = draw_negatives(user[train_pos], train_pos, user_item_keys, "sliding")
        train_neg = train_neg.astype(np.int32)
        held_out = np.flatnonzero(user_split != TRAIN)
        pos = np.concatenate([train_pos, last_pos[held_out]])
        del train_pos
        negatives = np.concatenate([train_neg, last_negatives[held_out]])
        del train_neg
    del user_item_keys
    # pos ascends within each protocol's part, so within a split it ascends in (user, position)
    split_of = user_split[user[pos]]
    pos = by_split(pos, split_of)
    negatives = by_split(negatives, split_of)
    del split_of
    sample_user = user[pos]
    pos -= starts[sample_user]  # now each click's position in its user's timeline

    out = {
        "timeline_users": np.arange(len(counts), dtype=np.int32),
        "timeline_offsets": np.concatenate([starts, [len(user)]]).astype(np.int64),
        "clicks": item.astype(np.int32),
        **timelines,
        "pair_users": sample_user.astype(np.int32),
        "pair_positions": pos.astype(np.int32),
        "pair_negatives": negatives,
    }
    counts = 2 * np.bincount(user_split[sample_user], minlength=len(SPLITS))
    return out, dict(zip(SPLITS, counts.tolist(), strict=True))
