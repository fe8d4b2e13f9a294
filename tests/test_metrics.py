"""Metrics against sklearn, naive per-user loops and hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from camn.train.metrics import auc, gauc, logloss, routing_recovery


def naive_gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    total, weight = 0.0, 0
    for user in np.unique(users):
        rows = users == user
        if labels[rows].min() == labels[rows].max():
            continue
        total += roc_auc_score(labels[rows], scores[rows]) * rows.sum()
        weight += rows.sum()
    return total / weight


def test_auc_matches_sklearn_and_is_nan_for_one_class() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert math.isnan(auc(np.ones(4), np.arange(4.0)))


def test_logloss_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    probabilities = rng.uniform(0.01, 0.99, 300)
    assert logloss(labels, probabilities) == pytest.approx(log_loss(labels, probabilities))
    assert math.isfinite(logloss(np.array([1, 0]), np.array([0.0, 1.0])))  # clipped, not inf


def test_gauc_hand_example() -> None:
    # user 0: positive 0.9 beats 0.5, loses to 0.95 -> 0.5 (3 impressions)
    # user 1: positives 0.3, 0.8 vs negatives 0.1, 0.3: 1 + 0.5 (tie) + 1 + 1 = 3.5 / 4 (4 impr.)
    # user 2: only positives -> skipped; user 3: positive 0.1 below negative 0.2 -> 0 (2 impr.)
    users = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3])
    labels = np.array([1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 1])
    scores = np.array([0.9, 0.5, 0.95, 0.3, 0.8, 0.1, 0.3, 0.4, 0.6, 0.2, 0.1])
    assert gauc(users, labels, scores) == pytest.approx((3 * 0.5 + 4 * 0.875 + 2 * 0.0) / 9)


def test_gauc_matches_naive_loop_with_ties_and_unsorted_users() -> None:
    rng = np.random.default_rng(2)
    users = rng.integers(0, 40, 1000)
    labels = rng.integers(0, 2, 1000)
    scores = rng.integers(0, 5, 1000).astype(float) + 0.3 * labels  # many ties
    assert gauc(users, labels, scores) == pytest.approx(naive_gauc(users, labels, scores))


def test_gauc_nan_when_no_user_has_both_classes() -> None:
    assert math.isnan(gauc(np.array([0, 1]), np.array([1, 0]), np.array([0.3, 0.2])))


def test_routing_recovery_hand_example() -> None:
    top = np.array([[1, 2, 0, 0], [0, 0, 3, 1]])
    driver = np.array([[1, 1, -1, -1], [0, 2, 3, -1]])
    kind = np.array([[0, 1, -1, -1], [1, 1, 0, -1]])
    # driven: (0,0) hit item, (0,1) miss user, (1,0) hit user, (1,1) miss user, (1,2) hit item
    recovery = routing_recovery(top, driver, kind)
    assert recovery == pytest.approx(
        {"overall": 3 / 5, "item": 1.0, "user": 1 / 3, "item_matched": 1.0, "user_matched": 2 / 3}
    )
    assert math.isnan(routing_recovery(top, np.full_like(driver, -1), kind)["overall"])


def test_matched_recovery_sees_through_a_relabelling() -> None:
    driver = np.array([[0, 1, 2, 2, 1, -1]])
    kind = np.zeros_like(driver)
    top = np.array([[2, 0, 1, 1, 0, 0]])  # the driver, always, under the labels 0->2, 1->0, 2->1
    recovery = routing_recovery(top, driver, kind)
    assert recovery["item"] == 0.0
    assert recovery["item_matched"] == 1.0
