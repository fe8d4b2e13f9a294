"""The sample protocols (SPEC section 2) and the encoding of prepare.py, against naive loops."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import camn.data.protocols as protocols
from camn.data.prepare import prepare
from camn.data.protocols import FIRST_ITEM_ID, SPLITS, build_samples, sample_negatives
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.store import PreparedStore, history_items


def random_interactions(seed: int, num_users: int, max_count: int, repeats: bool) -> dict:
    """Shuffled interactions; with ``repeats`` items repeat and times tie, else both are unique."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, max_count + 1, num_users)
    num_items = max_count + int(rng.integers(1, 6))  # nobody has every item
    user = np.repeat(np.arange(num_users), counts)
    if repeats:
        item = rng.integers(FIRST_ITEM_ID, num_items + FIRST_ITEM_ID, len(user))
        time = rng.integers(0, 4, len(user))
    else:
        item = np.concatenate([rng.choice(num_items, c, replace=False) for c in counts]) + 2
        time = rng.permutation(len(user)) * 10
    ids = np.arange(num_items + FIRST_ITEM_ID)
    item_attributes = np.stack([ids, ids % 4 + 2, ids // 2 + 2], axis=1).astype(np.int32)
    item_attributes[:FIRST_ITEM_ID] = [[0, 0, 0], [1, 1, 1]]
    order = rng.permutation(len(user))
    return {
        "user": user[order], "item": item[order], "time": time[order],
        "item_attributes": item_attributes,
        "driver": rng.integers(0, 3, len(user)).astype(np.int8)[order],
    }


def build(data: dict, protocol: str, max_len: int, seed: int = 7) -> dict:
    out, counts = build_samples(
        data["user"], data["item"], data["time"], len(data["item_attributes"]) - FIRST_ITEM_ID,
        protocol=protocol, seed=seed, annotations={"driver": data["driver"]},
    )
    return out | samples(out, counts, data["item_attributes"], max_len)


def samples(out: dict, counts: dict, item_attributes: np.ndarray, max_len: int) -> dict:
    """The samples as the models see them: two a pair (the click, then its negative), read in
    the timelines of ``out``; ``counts``: samples per split."""
    assert out["timeline_users"].tolist() == list(range(len(out["timeline_users"])))
    pairs = np.repeat(np.arange(len(out["pair_users"])), 2)
    labels = np.tile(np.array([1, 0], dtype=np.int8), len(out["pair_users"]))
    users, positions = out["pair_users"][pairs], out["pair_positions"][pairs]
    ends = out["timeline_offsets"][users] + positions
    lengths = np.minimum(positions, max_len)
    slots = np.arange(max_len)
    real = slots[None, :] < lengths[:, None]
    clicked = labels == 1
    target_items = np.where(clicked, out["clicks"][ends], out["pair_negatives"][pairs])
    gathered = {
        "users": users, "positions": positions, "labels": labels, "target_items": target_items,
        "splits": np.repeat(np.arange(3, dtype=np.int8), [counts[s] for s in SPLITS]),
        "histories": item_attributes[history_items(out["clicks"], ends, lengths, slots)],
        "lengths": lengths.astype(np.int32),
        "targets": item_attributes[target_items],
    }
    if "click_driver" in out:
        drivers = out["click_driver"]
        gathered["history_driver"] = np.where(real, history_items(drivers, ends, lengths, slots),
                                              -1)
        gathered["target_driver"] = np.where(clicked, drivers[np.where(clicked, ends, 0)], -1)
    return gathered


def naive_positives(data: dict, out: dict, protocol: str, max_len: int) -> list[tuple]:
    """(split, user, history items, target, history drivers, target driver), one user at a time."""
    split_of = dict(zip(out["users"].tolist(), out["splits"].tolist(), strict=False))
    expected = []
    for u in sorted(split_of):
        rows = np.flatnonzero(data["user"] == u)
        rows = rows[np.argsort(data["time"][rows], kind="stable")]  # ties: input order
        items, drivers = data["item"][rows].tolist(), data["driver"][rows].tolist()
        sliding = protocol == "sliding" and split_of[u] == 0
        for t in range(1, len(rows)) if sliding else [len(rows) - 1]:
            start = max(0, t - max_len)
            expected.append(
                (split_of[u], u, items[start:t], items[t], drivers[start:t], drivers[t])
            )
    return sorted(expected, key=lambda e: (e[0], e[1]))  # stable: positions stay in order


def check_invariants(data: dict, out: dict, protocol: str, max_len: int) -> None:
    n = len(out["labels"])
    histories, lengths, targets = out["histories"], out["lengths"], out["targets"]
    assert histories.shape == (n, max_len, 3) and histories.dtype == np.int32
    assert targets.shape == (n, 3) and lengths.dtype == np.int32
    # each positive is followed by its negative, with the same history; a positive's target is
    # the click at its position of the timeline
    np.testing.assert_array_equal(out["labels"], np.tile([1, 0], n // 2))
    ends = out["timeline_offsets"][out["users"]] + out["positions"]
    np.testing.assert_array_equal(out["clicks"][ends[0::2]], out["target_items"][0::2])
    for name in ("histories", "lengths", "users", "splits", "history_driver"):
        np.testing.assert_array_equal(out[name][0::2], out[name][1::2])
    # no user in two splits; users split 80/10/10 (floor for train and valid)
    user_splits = pl.DataFrame({"u": out["users"], "s": out["splits"]}).unique()
    assert user_splits["u"].is_unique().all()
    num_users = len(np.unique(data["user"]))
    assert len(user_splits) == num_users
    per_split = np.bincount(user_splits["s"].to_numpy(), minlength=3)
    n_train, n_valid = num_users * 8 // 10, num_users // 10
    assert per_split.tolist() == [n_train, n_valid, num_users - n_train - n_valid]
    # negatives: real items, never one of the user's
    negatives = targets[1::2, 0]
    assert negatives.min() >= FIRST_ITEM_ID and negatives.max() < len(data["item_attributes"])
    touched = set(zip(data["user"].tolist(), data["item"].tolist(), strict=True))
    assert not any((u, i) in touched for u, i in zip(out["users"][1::2], negatives, strict=True))
    # histories left-aligned, padding 0, length <= max_len; attribute rows of the item table
    slots = np.arange(max_len)
    real = slots[None, :] < lengths[:, None]
    assert lengths.max() <= max_len and lengths.min() >= 0
    assert (histories[~real] == 0).all() and (histories[real][:, 0] >= FIRST_ITEM_ID).all()
    np.testing.assert_array_equal(histories, data["item_attributes"][histories[..., 0]])
    np.testing.assert_array_equal(targets, data["item_attributes"][targets[:, 0]])
    # the positives, the histories and the drivers equal a naive per-user loop
    expected = naive_positives(data, out, protocol, max_len)
    assert len(expected) == n // 2
    for row, (split, u, items, target, drivers, driver) in zip(
        range(0, n, 2), expected, strict=True
    ):
        got = (out["splits"][row], out["users"][row], targets[row, 0])
        assert got == (split, u, target)
        assert histories[row, : lengths[row], 0].tolist() == items
        assert out["history_driver"][row, : lengths[row]].tolist() == drivers
        assert out["target_driver"][row] == driver
    assert (out["history_driver"][~real] == -1).all() and (out["target_driver"][1::2] == -1).all()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    num_users=st.integers(1, 25),
    max_count=st.integers(2, 9),
    max_len=st.integers(1, 6),
    repeats=st.booleans(),
)
def test_random_interactions_keep_the_invariants(
    seed: int, num_users: int, max_count: int, max_len: int, repeats: bool
) -> None:
    data = random_interactions(seed, num_users, max_count, repeats)
    last = build(data, "last", max_len, seed)
    sliding = build(data, "sliding", max_len, seed)
    check_invariants(data, last, "last", max_len)
    check_invariants(data, sliding, "sliding", max_len)
    assert len(last["labels"]) == 2 * num_users
    # valid and test samples are the same arrays under both protocols
    held_last, held_sliding = last["splits"] > 0, sliding["splits"] > 0
    for name in ("users", "positions", "target_items", "labels", "splits", "histories",
                 "lengths", "targets", "history_driver", "target_driver"):
        np.testing.assert_array_equal(last[name][held_last], sliding[name][held_sliding])
    for name in ("timeline_users", "timeline_offsets", "clicks", "click_times", "click_driver"):
        np.testing.assert_array_equal(last[name], sliding[name])  # one timeline a user
    train_users = np.unique(last["users"][last["splits"] == 0])
    per_user = np.bincount(data["user"])
    assert (sliding["splits"] == 0).sum() == 2 * (per_user[train_users] - 1).sum()


def test_history_strictly_before_target_in_time() -> None:
    data = random_interactions(3, num_users=30, max_count=12, repeats=False)
    time_of = dict(
        zip(zip(data["user"].tolist(), data["item"].tolist(), strict=True), data["time"].tolist(),
            strict=True)
    )
    out = build(data, "sliding", max_len=4)
    for row in range(0, len(out["labels"]), 2):
        user, length = int(out["users"][row]), int(out["lengths"][row])
        times = [time_of[user, i] for i in out["histories"][row, :length, 0].tolist()]
        target_time = time_of[user, int(out["targets"][row, 0])]
        assert times == sorted(times) and all(t < target_time for t in times)
        earlier = sorted(t for (u, _), t in time_of.items() if u == user and t < target_time)
        assert times == earlier[-4:]  # the most recent ones, oldest first


def test_small_hand_example() -> None:
    # user 0: items 5, 3, 4 at times 1, 2, 3 (given out of order); user 1: 2 then 6
    user = np.array([0, 1, 0, 0, 1])
    item = np.array([4, 6, 5, 3, 2])
    time = np.array([3, 9, 1, 2, 8])
    ids = np.arange(9)
    attributes = np.stack([ids, ids + 10], axis=1)
    out, counts = build_samples(user, item, time, 7, protocol="sliding", seed=3)
    assert out["clicks"].tolist() == [5, 3, 4, 2, 6] and out["click_times"].tolist() == [
        1, 2, 3, 8, 9]
    assert out["click_times"].dtype == np.int32  # the narrowest that holds them
    assert out["timeline_offsets"].tolist() == [0, 3, 5]
    assert out["pair_users"].tolist() == [0, 0, 1] and out["pair_positions"].tolist() == [1, 2, 1]
    assert counts == {"train": 4, "valid": 0, "test": 2}
    out |= samples(out, counts, attributes, max_len=2)
    assert out["splits"].tolist() == [0] * 4 + [2] * 2  # 2 users: 1 train, 0 valid, 1 test
    assert out["users"].tolist() == [0] * 4 + [1] * 2  # (seed 3 puts user 0 in train)
    assert out["targets"][0::2, 0].tolist() == [3, 4, 6]
    assert out["lengths"].tolist() == [1, 1, 2, 2, 1, 1]
    assert out["histories"][0::2, :, 0].tolist() == [[5, 0], [5, 3], [2, 0]]
    assert out["histories"][2, :, 1].tolist() == [15, 13]
    assert out["targets"][1, 1] == out["targets"][1, 0] + 10


def test_negatives_are_uniform_over_the_untouched_items() -> None:
    keys = np.array([0 * 7 + 2, 0 * 7 + 3])  # user 0 touched items 2 and 3 of 5 (stride 7)
    drawn = sample_negatives(np.zeros(30_000, dtype=np.int64), keys, 5, np.random.default_rng(0))
    counts = np.bincount(drawn, minlength=7)
    assert counts[:4].sum() == 0
    assert np.abs(counts[4:] / 30_000 - 1 / 3).max() < 0.015



def test_pairs_are_looked_up_in_chunks_with_the_same_answer(monkeypatch) -> None:
    """Chunking bounds the memory of the collision lookup; the pairs found and the negatives
    drawn (same generator calls) stay the same."""
    rng = np.random.default_rng(4)
    users, items = rng.integers(0, 20, 500), rng.integers(2, 12, 500)
    keys = np.unique(rng.integers(0, 20, 300) * 12 + rng.integers(2, 12, 300))
    expected = np.flatnonzero(np.isin(users * 12 + items, keys))
    whole = protocols.sample_negatives(users, keys, 10, np.random.default_rng(9))
    monkeypatch.setattr(protocols, "TAKEN_CHUNK", 7)
    np.testing.assert_array_equal(protocols.taken(users, items, keys, 12), expected)
    np.testing.assert_array_equal(
        protocols.sample_negatives(users, keys, 10, np.random.default_rng(9)), whole)
    assert not np.isin(users * 12 + whole, keys).any()
    assert protocols.taken(users[:0], items[:0], keys, 12).tolist() == []

def test_same_seed_same_samples_other_seed_other_split() -> None:
    data = random_interactions(0, num_users=50, max_count=6, repeats=True)
    a, b = build(data, "last", 5, seed=1), build(data, "last", 5, seed=1)
    c = build(data, "last", 5, seed=2)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["users"], c["users"])


def test_bad_arguments_and_data() -> None:
    data = random_interactions(0, num_users=4, max_count=3, repeats=False)
    num_items = len(data["item_attributes"]) - FIRST_ITEM_ID
    args = (data["user"], data["item"], data["time"], num_items)
    with pytest.raises(ValueError, match="unknown protocol 'next'"):
        build_samples(*args, protocol="next")
    with pytest.raises(DataError, match="at least 2 interactions"):
        build_samples(np.array([0, 0, 1]), np.array([2, 3, 2]), np.zeros(3), num_items, "last")
    every_item = np.arange(FIRST_ITEM_ID, num_items + FIRST_ITEM_ID)
    with pytest.raises(DataError, match="every item"):
        build_samples(np.zeros(len(every_item), int), every_item, every_item, num_items, "last")


@pytest.mark.parametrize("max_len", [0, -3])
def test_prepare_refuses_a_history_length_below_1(tmp_path, max_len: int) -> None:
    raw = raw_data({"user": ["a", "a"], "item": ["x", "y"], "time": [1, 2]},
                   {"item": ["x"], "colour": ["red"]})
    with pytest.raises(ValueError, match=f"max_len must be at least 1, got {max_len}"):
        prepare(raw, tmp_path / "s", max_len=max_len, report=BadInputReport())
    assert not (tmp_path / "s").exists()


def raw_data(interactions: dict, items: dict) -> RawData:
    return RawData(
        interactions=pl.DataFrame(interactions),
        items=pl.DataFrame(items),
        attributes=["item_id", "colour"],
        origin={"source": "test"},
    )


def test_prepare_encodes_in_sorted_order_and_counts_bad_input(tmp_path) -> None:
    raw = raw_data(
        {
            "user": ["bob", "bob", "ann", "ann", "ann", "cid", "bob"],
            "item": ["y", "x", "z", "x", "x", "y", "y"],
            "time": [2, 1, 1, 2, 3, 1, 2],  # bob's last row repeats his first: a duplicate
        },
        {"item": ["x", "y", "w", "x"], "colour": ["red", None, "blue", "green"]},
    )
    report = BadInputReport()
    schema = prepare(raw, tmp_path / "s", protocol="last", max_len=3, seed=0, report=report)
    assert (schema["num_users"], schema["num_items"], schema["num_interactions"]) == (2, 3, 5)
    assert schema["dropped_users_under_2_interactions"] == 1  # cid
    assert schema["bad_input"] == {
        "duplicate interaction, same user, item and time (dropped)": 1,
        "item has no metadata (attributes set to unknown)": 1,  # z
    }
    store = PreparedStore(tmp_path / "s")
    assert store.vocab("item_id") == ["<pad>", "<unk>", "x", "y", "z"]
    assert store.vocab("colour") == ["<pad>", "<unk>", "red"]  # w is never used; x: first row
    assert store.vocab_sizes == [5, 3]
    np.testing.assert_array_equal(
        store.array("item_attributes"), [[0, 0], [1, 1], [2, 2], [3, 1], [4, 1]]
    )
    with pytest.raises(DataError, match="expected item"):
        prepare(raw_data({"user": ["a", "a"], "item": ["x", "y"], "time": [1, 2]}, {"item": ["x"]}),
                tmp_path / "t", report=BadInputReport())
    assert not (tmp_path / "t").exists()


def test_first_occurrences_keeps_the_first_row_of_each_tuple_in_input_order() -> None:
    from camn.data.prepare import first_occurrences

    user = np.array([3, 1, 3, 1, 3, 2])
    item = np.array([5, 5, 5, 5, 6, 5])
    time = np.array([1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    keep = first_occurrences(user, item, time)
    assert keep.tolist() == [True, True, False, False, True, True]


def test_bad_input_examples_name_the_user_item_and_time(tmp_path) -> None:
    """Before, "duplicate interaction" and "item has no metadata" gave "e.g. interactions" and
    "e.g. items" without naming any; "a user interacted with every item" named no user."""
    raw = raw_data(
        {"user": ["ann", "ann", "bob", "bob", "ann", "bob"],
         "item": ["x", "y", "x", "z", "x", "z"],
         "time": [1, 2, 1, 2, 1, 2]},  # rows 5 and 6 repeat rows 1 and 4
        {"item": ["x"], "colour": ["red"]},
    )
    report = BadInputReport()
    prepare(raw, tmp_path / "s", max_len=3, report=report)
    assert report.examples == [
        "interactions: user 'ann', item 'x', time 1: duplicate interaction, same user, item and"
        " time (dropped)",
        "items: item 'y': item has no metadata (attributes set to unknown)",
    ]
    assert report.counts == {
        "duplicate interaction, same user, item and time (dropped)": 2,
        "item has no metadata (attributes set to unknown)": 2,  # y and z
    }
    with pytest.raises(DataError) as error:
        prepare(raw_data({"user": ["cy", "cy", "dee", "dee", "dee"],
                          "item": ["x", "y", "x", "y", "z"], "time": [1, 2, 1, 2, 3]},
                         {"item": ["x"], "colour": ["red"]}), tmp_path / "t")
    assert str(error.value) == (
        "user 'dee' interacted with every item (3), so no negative can be drawn for them"
        " (1 such user(s)); leave them out, or add items"
    )
    assert not (tmp_path / "t").exists()


def test_times_are_kept_in_the_narrowest_type_that_holds_them() -> None:
    from camn.data.protocols import narrowest_times

    seconds = np.array([0, 2**31 - 1], dtype=np.int64)
    assert narrowest_times(seconds).dtype == np.int32
    assert narrowest_times(seconds).tolist() == seconds.tolist()
    microseconds = np.array([-(2**31) - 1, 1_700_000_000_000_000])
    assert narrowest_times(microseconds).dtype == np.int64
    assert narrowest_times(np.array([0.5, 1.0])).dtype == np.float64
    whole = narrowest_times(np.array([1.3e9, 1.4e9]))
    assert whole.dtype == np.int32 and whole.tolist() == [1_300_000_000, 1_400_000_000]
    assert narrowest_times(np.array([1.0, np.nan])).dtype == np.float64
