"""The sample protocols of SPEC section 2, vectorised with numpy.

``last`` (the paper, Sec. 3.1): per user, the last interaction is the positive and one item drawn
uniformly from the items the user never touched is the negative; both share the history of the
previous items (at most L). ``sliding``: train users give one positive (plus one negative) per
position t >= 1; valid and test users give their last position only, with the same negatives as
``last``, so the valid and test sets of both protocols are identical under one seed.

Users are split 80/10/10 at random. Histories are left-aligned: position 0 holds the oldest
item kept, position ``length - 1`` the most recent, the rest is padding (attribute id 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from camn.data.raw import DataError

Protocol = Literal["last", "sliding"]
PROTOCOLS: tuple[str, ...] = ("last", "sliding")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
TRAIN, VALID, TEST = 0, 1, 2
FIRST_ITEM_ID = 2  # ids 0 and 1 of every vocabulary are padding and unknown


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
    todo = np.arange(len(users))
    while len(todo):
        keys = users[todo].astype(np.int64) * stride + negatives[todo]
        pos = np.minimum(np.searchsorted(user_item_keys, keys), len(user_item_keys) - 1)
        todo = todo[user_item_keys[pos] == keys]
        negatives[todo] = rng.integers(FIRST_ITEM_ID, stride, size=len(todo))
    return negatives


def build_samples(
    user: np.ndarray,
    item: np.ndarray,
    time: np.ndarray,
    item_attributes: np.ndarray,
    protocol: Protocol,
    max_len: int = 20,
    seed: int = 2022,
    annotations: dict[str, np.ndarray] | None = None,
    user_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Turn interactions into model-ready samples.

    Args:
        user: (n,) user index in [0, num_users); every user has at least 2 interactions.
        item: (n,) item id in [2, num_items + 2).
        time: (n,) timestamps; ties keep the input order.
        item_attributes: (num_items + 2, k) attribute ids of every item id (rows 0, 1: pad,
            unknown).
        annotations: optional per-interaction int arrays (e.g. ``driver``) carried into
            ``history_<name>`` (N, L) and ``target_<name>`` (N,), -1 where there is no click.
        user_names: the user of every index, for messages.

    Returns arrays sorted by (split, user, position), each positive followed by its negative:
    ``histories`` (N, L, k) int32, ``lengths`` (N,) int32, ``targets`` (N, k) int32,
    ``labels`` (N,) int8, ``users`` (N,) int32, ``splits`` (N,) int8, plus the annotations.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    num_items = len(item_attributes) - FIRST_ITEM_ID
    by_time = np.lexsort((np.arange(len(user)), time, user))
    user, item = user[by_time], item[by_time]
    counts = np.bincount(user)
    if len(counts) == 0 or counts.min() < 2:
        raise DataError("every user needs at least 2 interactions (drop the others first)")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    split_seq, last_seq, sliding_seq = np.random.SeedSequence(seed).spawn(3)
    user_split = split_users(len(counts), np.random.default_rng(split_seq))
    user_item_keys = np.unique(user.astype(np.int64) * (num_items + FIRST_ITEM_ID) + item)
    touched = np.bincount(user_item_keys // (num_items + FIRST_ITEM_ID))
    if len(saturated := np.flatnonzero(touched >= num_items)):
        first = int(saturated[0])
        who = repr(user_names[first]) if user_names is not None else f"#{first}"
        raise DataError(
            f"user {who} interacted with every item ({num_items:,}), so no negative can be drawn"
            f" for them ({len(saturated):,} such user(s)); leave them out, or add items"
        )

    last_pos = starts + counts - 1  # global index of each user's last interaction
    last_negatives = sample_negatives(
        np.arange(len(counts)), user_item_keys, num_items, np.random.default_rng(last_seq)
    )
    if protocol == "last":
        pos, negatives = last_pos, last_negatives
    else:
        is_train = user_split[user] == TRAIN
        local = np.arange(len(user)) - starts[user]
        train_pos = np.flatnonzero(is_train & (local >= 1))
        train_neg = sample_negatives(
            user[train_pos], user_item_keys, num_items, np.random.default_rng(sliding_seq)
        )
        held_out = np.flatnonzero(user_split != TRAIN)
        pos = np.concatenate([train_pos, last_pos[held_out]])
        negatives = np.concatenate([train_neg, last_negatives[held_out]])
    sample_user = user[pos]
    order = np.lexsort((pos, sample_user, user_split[sample_user]))
    pos, negatives, sample_user = pos[order], negatives[order], sample_user[order]

    lengths = np.minimum(pos - starts[sample_user], max_len).astype(np.int32)
    slots = np.arange(max_len)
    valid = slots[None, :] < lengths[:, None]  # (S, L)
    source = np.where(valid, pos[:, None] - lengths[:, None] + slots[None, :], 0)
    history_items = np.where(valid, item[source], 0).astype(np.int32)  # (S, L); 0 = padding row

    def twice(a: np.ndarray) -> np.ndarray:  # each positive is followed by its negative
        return np.repeat(a, 2, axis=0)

    target_items = np.stack([item[pos], negatives], axis=1).reshape(-1)
    out = {
        "histories": item_attributes[twice(history_items)].astype(np.int32, copy=False),
        "lengths": twice(lengths),
        "targets": item_attributes[target_items].astype(np.int32, copy=False),
        "labels": np.tile(np.array([1, 0], dtype=np.int8), len(pos)),
        "users": twice(sample_user.astype(np.int32)),
        "splits": twice(user_split[sample_user]),
    }
    for name, values in (annotations or {}).items():
        values = values[by_time]
        history = np.where(valid, values[source], -1).astype(values.dtype)
        target = np.stack([values[pos], np.full(len(pos), -1, values.dtype)], axis=1)
        out[f"history_{name}"] = twice(history)
        out[f"target_{name}"] = target.reshape(-1)
    return out
