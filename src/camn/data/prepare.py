"""From a source's :class:`RawData` to a prepared store: encode, apply a protocol, write.

Encoding is deterministic: users, items and attribute values are numbered in sorted order of
their string values (ids 0 and 1 of every attribute vocabulary are padding and unknown), so two
sources that read the same data (McAuley's files and RecBole's) give identical arrays.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from camn.data import impressions, quality, row_histories
from camn.data.codes import encode_items, sorted_codes
from camn.data.negatives import user_keys
from camn.data.protocols import FIRST_ITEM_ID, SPLITS, Protocol, build_samples
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.store import ANNOTATIONS, write_store

NegativesBy = Literal["stream", "user"]
NEGATIVES_BY: tuple[str, ...] = ("stream", "user")
TINY_SPLIT = 100  # samples; a split below this gets a warning: its AUC is mostly noise


@dataclass
class EncodedInteractions:
    """Interactions as integer arrays: user index (sorted order of the user strings), item id
    (2 + sorted order of the item strings), time, and the planted-truth annotations."""

    user: np.ndarray  # (n,) int32
    item: np.ndarray  # (n,) int32
    time: np.ndarray  # (n,)
    annotations: dict[str, np.ndarray]
    items: pl.Series  # (num_items,) the item strings, sorted; id i is items[i - 2]
    users: pl.Series  # (num_users,) the user strings, sorted; user index i is users[i]
    num_users: int
    dropped_users: int

    def take_events(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """user, item and time, handed over and emptied here, so that the one who builds the
        samples from them holds the only reference and may free them as it goes."""
        events = self.user, self.item, self.time
        self.user, self.item, self.time = (values[:0] for values in events)
        return events


def first_occurrences(*keys: np.ndarray) -> np.ndarray:
    """(n,) bool: True at the first row (in input order) of every distinct tuple of keys."""
    order = np.lexsort(keys[::-1])  # stable: equal tuples keep their input order
    repeat = np.ones(max(len(order) - 1, 0), dtype=bool)
    for key in keys:  # one sorted copy at a time
        in_order = key[order]
        repeat &= in_order[1:] == in_order[:-1]
        del in_order
    keep = np.ones(len(order), dtype=bool)
    keep[order[1:][repeat]] = False
    return keep


def renumber(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The codes in ``[0, size)`` that occur, ascending, and every code's position among them:
    ``np.unique(codes, return_inverse=True)`` in linear time (no sort)."""
    present = np.zeros(size, dtype=bool)
    present[codes] = True
    position = np.cumsum(present, dtype=np.int64) - 1
    return np.flatnonzero(present), position[codes]


def encode_interactions(raw: RawData, report: BadInputReport) -> EncodedInteractions:
    """Number users and items, drop repeated (user, item, time) rows (counted as bad input) and
    users with fewer than 2 interactions.

    Works on integer codes (positions in sorted order, :func:`sorted_codes`) rather than on the
    string frame, and empties ``raw.interactions`` once coded: at 20 M reviews the string frame
    and its copies were most of prepare's peak memory.
    """
    frame = raw.interactions
    user, user_values = sorted_codes(frame["user"])
    item, item_values = sorted_codes(frame["item"])
    time = frame["time"].to_numpy()
    annotations = {
        name: frame[name].to_numpy().astype(np.int8)
        for name in ANNOTATIONS
        if name in frame.columns
    }
    raw.interactions = frame.clear()
    del frame
    keep = first_occurrences(user, item, time)
    if not keep.all():
        again = np.flatnonzero(~keep)[0]
        report.bad(
            f"interactions: user {user_values[int(user[again])]!r}, item"
            f" {item_values[int(item[again])]!r}, time {time[again]}", None,
            "duplicate interaction, same user, item and time (dropped)", count=int((~keep).sum()),
        )
    counts = np.bincount(user[keep])
    keep &= counts[user] >= 2
    dropped_users = int(np.count_nonzero((counts > 0) & (counts < 2)))
    kept_users, user = renumber(user[keep], len(user_values))
    kept_items, item = renumber(item[keep], len(item_values))
    return EncodedInteractions(
        user=user.astype(np.int32),
        item=(item + FIRST_ITEM_ID).astype(np.int32),
        time=time[keep],
        annotations={name: values[keep] for name, values in annotations.items()},
        items=item_values.gather(kept_items),
        users=user_values.gather(kept_users),
        num_users=len(kept_users),
        dropped_users=dropped_users,
    )


def prepare(
    raw: RawData,
    out: str | Path,
    protocol: Protocol = "last",
    max_len: int = 20,
    seed: int = 2022,
    report: BadInputReport | None = None,
    force: bool = False,
    negatives_by: NegativesBy = "stream",
) -> dict:
    """Encode ``raw``, build the samples of ``protocol`` and write the store; return its schema.

    ``negatives_by``: ``stream`` draws the user split and the negatives from seeded streams
    over all users; ``user`` draws each user's from that user alone (:mod:`camn.data.negatives`),
    as a shard of the users must (:mod:`camn.data.shards`).

    ``raw.interactions`` is emptied once coded (see ``encode_interactions``). A split that
    comes out empty or tiny gets a warning on stderr (:func:`split_warnings`); the store is
    written all the same.
    """
    report = report or BadInputReport()
    if impressions.is_labelled(raw):  # labelled rows: one sample each, no protocol
        if negatives_by != "stream":
            raise DataError("--negatives-by user and --shard are for logs of clicks; a log of "
                            "labelled impressions is prepared whole (not in shards) for now")
        build = (row_histories.prepare_rows if row_histories.carries_histories(raw)
                 else impressions.prepare_impressions)
        schema, arrays, vocabularies, users = build(raw, max_len, seed, report)
        write_store(out, schema, arrays, vocabularies, force=force, users=users)
        for warning in impressions.label_warnings(schema["splits"], schema["clicks_per_split"]):
            print(f"camn: warning: {out}: {warning}", file=sys.stderr)
        return schema
    if raw.users is not None:
        raise DataError("user features are for labelled impressions for now: a store of clicks "
                        "(pairs) takes none; label the rows (table: --label-col COL or --label "
                        "EXPR; movielens: --rating-labels T) or leave the user table out")
    encoded = encode_interactions(raw, report)
    if encoded.dropped_users:  # a note: printed by camn prepare and kept in the schema
        raw.notes.append(f"{encoded.dropped_users:,} user(s) with under 2 interactions dropped")
    if len(encoded.user) == 0:
        raise DataError("no user has 2 or more interactions: nothing to prepare")
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    item_attributes, vocabularies = encode_items(raw, encoded.items, report)
    num_interactions = len(encoded.user)
    arrays, splits = build_samples(
        *encoded.take_events(), len(encoded.items),
        protocol=protocol, seed=seed, annotations=encoded.annotations,
        user_names=encoded.users,
        user_keys=user_keys(encoded.users) if negatives_by == "user" else None,
    )
    most_events = int(np.diff(arrays["timeline_offsets"]).max())
    findings = quality.warn(raw, encoded.items, most_events, sum(splits.values()), max_len)
    arrays["item_attributes"] = item_attributes
    schema = {
        "num_users": encoded.num_users,
        "num_items": len(encoded.items),
        "num_interactions": num_interactions,
        "attributes": raw.attributes,
        "vocab_sizes": [len(vocabularies[a]) + FIRST_ITEM_ID for a in raw.attributes],
        "protocol": protocol,
        "seed": seed,
        "negatives_by": negatives_by,
        "max_len": max_len,
        "splits": splits,
        "timelines": {"users": encoded.num_users, "clicks": num_interactions,
                      "time_dtype": str(arrays["click_times"].dtype)},
        "origin": raw.origin,
        "dropped_users_under_2_interactions": encoded.dropped_users,
        "bad_input": dict(sorted(report.counts.items())),
        "notes": raw.notes,
        "attribute_warnings": findings,
    }
    write_store(out, schema, arrays, vocabularies, force=force, users=encoded.users)
    for warning in split_warnings(schema["splits"], encoded.num_users):
        print(f"camn: warning: {out}: {warning}", file=sys.stderr)
    return schema


def split_warnings(splits: dict[str, int], num_users: int) -> list[str]:
    """Why a store's splits (sample counts) may not serve: empty (``camn train`` refuses it)
    or tiny (fewer than ``TINY_SPLIT`` samples). Labels need no check here: every protocol
    gives each click its sampled non-click."""
    warnings = []
    for split in SPLITS:
        if splits[split] == 0:
            warnings.append(
                f"the {split} split has no samples ({num_users:,} users in all; valid and test "
                "each get 10% of them): camn train will refuse this store; prepare more users"
            )
        elif splits[split] < TINY_SPLIT:
            warnings.append(
                f"the {split} split has only {splits[split]:,} samples (under {TINY_SPLIT}): "
                "its scores will be mostly noise"
            )
    return warnings
