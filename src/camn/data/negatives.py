"""Per-user draws: each user's split and sampled non-clicks from that user alone.

The default samples (:func:`camn.data.protocols.build_samples` without user keys) draw the
80/10/10 user split and the negatives from seeded streams over all users, so a user's draws
depend on every other user. Here every draw is a counter-based hash of the seed, the user's key
(a hash of the user id string, :func:`user_keys`) and a counter (the click's position in the
user's timeline and the redraw count), so a user's split and negatives are the same whichever
users are prepared with it: a shard of the users (:mod:`camn.data.shards`) gives exactly the
samples the whole log gives.

- key(user) = mix(FNV-1a 64 of the id's UTF-8 bytes, xor its byte length)
- draw(seed, key, stream, counter) = mix(mix(key xor mix(seed * G + stream)) + counter * G),
  with mix the SplitMix64 finaliser and G = 0x9E3779B97F4A7C15 (all modulo 2^64)
- split: u = top 53 bits of draw(seed, key, SPLIT, 0) / 2^53; train if u < 0.8, valid if
  u < 0.9, else test (80/10/10 in expectation, not exactly)
- negative of the click at position p, attempt a = 0, 1, ...:
  2 + draw(seed, key, NEGATIVE, p * 2^32 + a) mod num_items, redrawn (a + 1) while the user
  interacted with that item
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from camn.data.layout import FIRST_ITEM_ID, TEST, TRAIN, VALID

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
FNV_OFFSET, FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
SPLIT_STREAM, NEGATIVE_STREAM = 1, 2
KEY_CHUNK = 65_536  # user ids hashed at a time: bounds the (chunk, longest id) byte table
TRAIN_SHARE, VALID_SHARE = 0.8, 0.1


def mix(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser of a uint64 array (a bijection that spreads every bit)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def user_keys(names: Sequence[str] | pl.Series) -> np.ndarray:
    """(n,) uint64 key of every user id string: the same on every machine and run (unlike
    Python's salted ``hash``); vectorised over the users, one byte position at a time."""
    names = pl.Series(names, dtype=pl.String)
    keys = np.empty(len(names), dtype=np.uint64)
    for start in range(0, len(names), KEY_CHUNK):
        chunk = names.slice(start, KEY_CHUNK)
        lengths = chunk.str.len_bytes().to_numpy().astype(np.uint64)
        encoded = np.char.encode(np.array(chunk.to_list(), dtype=np.str_), "utf-8")
        width = encoded.dtype.itemsize
        data = encoded.view(np.uint8).reshape(len(chunk), width)
        hashed = np.full(len(chunk), FNV_OFFSET, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for position in range(width):
                step = (hashed ^ data[:, position].astype(np.uint64)) * FNV_PRIME
                hashed = np.where(position < lengths, step, hashed)
        keys[start : start + len(chunk)] = mix(hashed ^ lengths)
    return keys


def draw(seed: int, keys: np.ndarray, stream: int, counters: np.ndarray | int) -> np.ndarray:
    """(n,) uint64 draws of the users with ``keys`` (see the module docstring)."""
    with np.errstate(over="ignore"):
        salt = mix(np.array([seed % 2**64], dtype=np.uint64) * GOLDEN + np.uint64(stream))
        counters = np.asarray(counters, dtype=np.uint64)
        return mix(mix(keys ^ salt) + counters * GOLDEN)


def split_by_user(keys: np.ndarray, seed: int) -> np.ndarray:
    """(U,) int8 split of every user (0 train, 1 valid, 2 test), each from its key alone."""
    uniform = (draw(seed, keys, SPLIT_STREAM, 0) >> np.uint64(11)) / 2.0**53
    return np.select([uniform < TRAIN_SHARE, uniform < TRAIN_SHARE + VALID_SHARE],
                     [TRAIN, VALID], TEST).astype(np.int8)


def negatives_by_user(
    users: np.ndarray,
    positions: np.ndarray,
    keys: np.ndarray,
    user_item_keys: np.ndarray,
    num_items: int,
    seed: int,
) -> np.ndarray:
    """(n,) item id of the non-click of each click (``users`` index ``keys``, ``positions``:
    the click's index in its user's timeline), never an item that user interacted with.

    ``user_item_keys``: the sorted ``user * (num_items + 2) + item_id`` of every interaction.
    """
    stride = num_items + FIRST_ITEM_ID
    counters = positions.astype(np.uint64) << np.uint64(32)
    user_key = keys[users]
    negatives = np.empty(len(users), dtype=np.int64)
    todo = np.arange(len(users))
    while len(todo):
        drawn = draw(seed, user_key[todo], NEGATIVE_STREAM, counters[todo])
        negatives[todo] = FIRST_ITEM_ID + (drawn % np.uint64(num_items)).astype(np.int64)
        counters[todo] += np.uint64(1)
        pairs = users[todo].astype(np.int64) * stride + negatives[todo]
        found = np.minimum(np.searchsorted(user_item_keys, pairs), len(user_item_keys) - 1)
        todo = todo[user_item_keys[found] == pairs]
    return negatives
