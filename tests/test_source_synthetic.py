"""The synthetic source: determinism, the planted truth, the store it prepares, learnability."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from camn.cli import main
from camn.data.prepare import prepare
from camn.data.sources import available_sources
from camn.data.sources.synthetic import attribute_names, generate
from camn.data.store import PreparedStore

SMALL = {"users": 300, "items": 200}


@pytest.fixture(scope="module")
def small():
    return generate(**SMALL, seed=7, return_truth=True)


def test_registered_as_a_source():
    assert "synthetic" in available_sources()


def test_same_seed_same_data_other_seed_other_data():
    first, second = generate(**SMALL, seed=3), generate(**SMALL, seed=3)
    assert first.interactions.equals(second.interactions)
    assert first.items.equals(second.items)
    assert first.origin == second.origin and first.notes == second.notes
    other = generate(**SMALL, seed=4)
    assert not other.interactions.equals(first.interactions)
    assert not other.items.equals(first.items)


def test_columns_types_and_attributes(small):
    raw, truth = small
    assert raw.attributes == ["item_id", "category", "brand", "style", "price_band"]
    assert raw.interactions.schema == pl.Schema({
        "user": pl.String, "item": pl.String, "time": pl.Int64,
        "driver": pl.Int8, "driver_kind": pl.Int8,
    })
    assert raw.items.columns == ["item", *raw.attributes[1:]]
    assert raw.items["item"].n_unique() == SMALL["items"]
    assert raw.origin["users"] == SMALL["users"] and raw.origin["seed"] == 7
    assert len(raw.notes) == 1
    assert raw.interactions["item"].to_list() == [truth.item_names[i] for i in truth.item]
    assert raw.interactions["user"].to_list() == [truth.user_names[u] for u in truth.user]
    assert attribute_names(7)[5:] == ["attr_5", "attr_6"]


def test_drivers_in_range_and_times_increase(small):
    raw, _ = small
    frame = raw.interactions
    assert frame["driver"].is_between(0, 4).all()
    assert set(frame["driver_kind"].unique()) <= {0, 1}
    assert frame.group_by("user").len()["len"].min() >= 3
    steps = frame.select(pl.col("time").diff().over("user").drop_nulls())["time"]
    assert (steps > 0).all()


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_item_share_is_respected(share):
    kinds = generate(users=1000, items=200, item_share=share, seed=1).interactions["driver_kind"]
    assert abs(float((kinds == 0).mean()) - share) < 0.02


def test_item_level_clicks_carry_a_salient_value_in_the_driver_slot(small):
    raw, truth = small
    clicks = np.flatnonzero(truth.driver_kind == 0)
    assert len(clicks) > 100
    slot, item = truth.driver[clicks], truth.item[clicks]
    assert (slot >= 1).all()  # the item id is never salient
    assert (truth.salient_slot[item] == slot).all()
    assert np.isin(truth.item_values[item, slot], truth.salient[1:]).all()
    # the same fact read from the strings of RawData
    table = {row["item"]: row for row in raw.items.iter_rows(named=True)}
    salient = raw.origin["salient_values"]
    for row in raw.interactions.filter(pl.col("driver_kind") == 0).head(50).iter_rows(named=True):
        name = raw.attributes[row["driver"]]
        assert table[row["item"]][name] in salient[name]


def test_user_level_clicks_carry_a_liked_value_in_the_driver_slot(small):
    _, truth = small
    clicks = np.flatnonzero(truth.driver_kind == 1)
    user, slot, item = truth.user[clicks], truth.driver[clicks], truth.item[clicks]
    liked = truth.liked[user, slot]  # (n, m)
    assert (liked == truth.item_values[item, slot][:, None]).any(axis=1).all()
    assert np.bincount(slot, minlength=5).min() > 0  # every slot, the item id too, drives clicks
    assert np.allclose(truth.emphasis.sum(axis=1), 1.0)


def test_skew_concentrates_the_emphasis():
    _, sharp = generate(**SMALL, skew=0.1, return_truth=True)
    _, flat = generate(**SMALL, skew=10.0, return_truth=True)
    assert sharp.emphasis.max(axis=1).mean() > flat.emphasis.max(axis=1).mean() + 0.3


@pytest.mark.parametrize("bad", [
    {"attributes": 1}, {"item_share": 1.5}, {"skew": 0.0}, {"salient": 8},
    {"clicks_per_user": 2}, {"items": 5}, {"item_share": 0.5, "salient_share": 0.0},
])
def test_bad_parameters_raise(bad):
    with pytest.raises(ValueError):
        generate(**{**SMALL, **bad})


def test_bad_option_is_a_cli_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "synthetic", "--out", str(tmp_path / "s"), "--skew", "-1"])
    assert exit_info.value.code == 2
    assert "argument --skew: must be a number above 0, got '-1'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("protocol", ["last", "sliding"])
def test_cli_writes_drivers_with_minus_one_exactly_at_padding_and_negatives(tmp_path, protocol):
    out = tmp_path / "store"
    argv = ["prepare", "synthetic", "--out", str(out), "--users", "200", "--items", "150",
            "--attributes", "4", "--protocol", protocol, "--max-len", "8", "--seed", "5"]
    assert main(argv) == 0
    store = PreparedStore(out)
    assert store.has_drivers
    assert store.schema["num_users"] == 200 and store.schema["origin"]["source"] == "synthetic"
    assert store.attributes == ["item_id", "category", "brand", "style"]
    real = store.array("histories")[..., 0] > 0  # (N, L)
    positive = store.array("labels") == 1
    for name in ("driver", "driver_kind"):
        history, target = store.array(f"history_{name}"), store.array(f"target_{name}")
        assert history.shape == real.shape and target.shape == positive.shape
        assert np.array_equal(history == -1, ~real)
        assert np.array_equal(target == -1, ~positive)
    assert store.array("history_driver")[real].max() <= 3
    assert set(np.unique(store.array("target_driver_kind")[positive])) <= {0, 1}


def test_store_drivers_agree_with_the_item_attributes(tmp_path):
    raw = generate(**SMALL, seed=11)
    prepare(raw, tmp_path / "s", max_len=10)
    store = PreparedStore(tmp_path / "s")
    salient_ids = {  # slot -> store ids of its salient values
        r: [store.vocab(a).index(v) for v in raw.origin["salient_values"][a]]
        for r, a in enumerate(store.attributes) if r > 0
    }
    histories, real = store.array("histories"), store.array("histories")[..., 0] > 0
    driver, kind = store.array("history_driver"), store.array("history_driver_kind")
    rows, cols = np.nonzero(real & (kind == 0))
    slots = driver[rows, cols]
    for r, ids in salient_ids.items():
        at = slots == r
        assert np.isin(histories[rows[at], cols[at], r], ids).all()


def _auc_of_scores(store: PreparedStore, truth) -> tuple[float, float]:
    """Test-split AUC of a trivial history-match score and of the Bayes score from the truth.

    Trivial: per slot, the share of the history carrying the target's value, weighted by the
    value's rarity (log of items over items carrying it), summed over slots.
    """
    rows = store.split_indices("test")
    histories, targets = store.array("histories")[rows], store.array("targets")[rows]
    labels, lengths = store.array("labels")[rows], store.array("lengths")[rows]
    table = store.array("item_attributes")[2:]  # (items, k)
    real = histories[..., 0] > 0  # (n, L)
    same = (histories == targets[:, None, :]) & real[..., None]  # (n, L, k)
    rarity = np.stack([
        np.log(len(table) / np.maximum(np.bincount(table[:, r], minlength=size)[targets[:, r]], 1))
        for r, size in enumerate(store.vocab_sizes)
    ], axis=1)  # (n, k)
    trivial = (same.sum(axis=1) * rarity).sum(axis=1) / np.maximum(lengths, 1)

    names = store.vocab("item_id")
    item = np.array([int(names[i][1:]) for i in targets[:, 0]])  # truth index of the target
    user = store.array("users")[rows]  # every user is kept, so indices agree with the truth
    share = store.schema["origin"]["item_share"]
    p_item = (truth.salient_slot[item] >= 0) / (truth.salient_slot >= 0).sum()
    p_user = np.zeros(len(rows))
    for r in range(len(store.attributes)):  # the generator's p(item | user), slot by slot
        liked = truth.liked[user, r]
        value = truth.item_values[item, r]
        carriers = 1 if r == 0 else np.bincount(truth.item_values[:, r])[value]
        hit = (liked == value[:, None]).any(axis=1)
        p_user += truth.emphasis[user, r] * hit / (liked >= 0).sum(axis=1) / carriers
    bayes = share * p_item + (1 - share) * p_user
    return roc_auc_score(labels, trivial), roc_auc_score(labels, bayes)


def test_default_data_is_learnable_but_not_trivial(tmp_path):
    raw, truth = generate(return_truth=True)
    prepare(raw, tmp_path / "s")
    store = PreparedStore(tmp_path / "s")
    assert store.schema["num_users"] == 3000
    trivial, bayes = _auc_of_scores(store, truth)
    print(f"test AUC: trivial history-match score {trivial:.4f}, Bayes score {bayes:.4f}")
    assert trivial > 0.58
    assert 0.75 < bayes < 0.97
