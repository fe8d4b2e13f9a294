"""Scores of a trained model: AUC, log loss, user-grouped AUC, and routing recovery.

The paper reports test AUC (Sec. 3.2); log loss and gAUC (AUC within each user, weighted by
the user's impressions, as in DIN) are reported next to it. On synthetic stores with a planted
driver per click, *routing recovery* measures whether the router's top attribute (argmax of P,
Eq. 3) is the attribute that drove the click.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import roc_auc_score

from camn.data.store import PreparedStore
from camn.models.base import CTRModel

ITEM_LEVEL, USER_LEVEL = 0, 1  # driver kinds of the synthetic source
EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy of click probabilities (clipped to [EPS, 1 - EPS])."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """User-grouped AUC: each user's AUC weighted by the user's number of impressions.

    Users whose samples are all of one class are skipped; NaN when no user is left. Vectorised:
    samples are sorted by (user, score), ranks within a user are averaged over ties, and each
    user's AUC is the Mann-Whitney statistic (sum of positive ranks - n+(n+ + 1)/2) / (n+ n-).
    """
    users, labels, scores = (np.asarray(a) for a in (users, labels, scores))
    order = np.lexsort((scores, users))
    u, y, s = users[order], labels[order].astype(np.float64), scores[order]
    n = len(u)
    new_user = np.r_[True, u[1:] != u[:-1]]
    group = np.cumsum(new_user) - 1  # (n,) user group of each sorted sample
    position = np.arange(n) - np.flatnonzero(new_user)[group]  # 0-based rank within the user
    new_run = new_user | np.r_[True, s[1:] != s[:-1]]  # runs of tied scores within a user
    run = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], n] - 1
    rank = (position[run_start] + position[run_end])[run] / 2 + 1  # average 1-based rank
    count = np.bincount(group)
    positives = np.bincount(group, weights=y)
    negatives = count - positives
    rank_sum = np.bincount(group, weights=rank * y)
    keep = (positives > 0) & (negatives > 0)
    if not keep.any():
        return float("nan")
    per_user = (rank_sum[keep] - positives[keep] * (positives[keep] + 1) / 2) / (
        positives[keep] * negatives[keep]
    )
    return float(np.sum(per_user * count[keep]) / np.sum(count[keep]))


def routing_recovery(top: np.ndarray, driver: np.ndarray, kind: np.ndarray) -> dict[str, float]:
    """Share of driven history clicks whose top routed attribute is the planted driver.

    top, driver, kind: (N, L); driver is -1 where there is no click (padding). Returns
    ``overall``, ``item`` (item-level salience clicks) and ``user`` (user-level emphasis clicks);
    NaN where a group is empty. ``item_matched`` and ``user_matched`` give the same share after
    the best one-to-one relabelling of the k routing columns (Hungarian matching on the
    driver x top-attribute counts): nothing in Eq. 2-4 ties routing column r to a meaning other
    than "scales head r", so the router can carry the driver under another label.
    """
    driven = driver >= 0
    hit = top == driver

    def share(where: np.ndarray) -> float:
        return float(hit[where].mean()) if where.any() else float("nan")

    def matched_share(where: np.ndarray) -> float:
        if not where.any():
            return float("nan")
        k = int(max(top.max(), driver.max())) + 1
        counts = np.zeros((k, k), dtype=np.int64)
        np.add.at(counts, (driver[where], top[where]), 1)
        rows, cols = linear_sum_assignment(counts, maximize=True)
        return float(counts[rows, cols].sum() / where.sum())

    item, user = driven & (kind == ITEM_LEVEL), driven & (kind == USER_LEVEL)
    return {
        "overall": share(driven),
        "item": share(item),
        "user": share(user),
        "item_matched": matched_share(item),
        "user_matched": matched_share(user),
    }


class TermAverages:
    """Means of a model's ``aux_terms`` over the batches of a pass, each batch weighted by its
    sample count, NaN entries left out (e.g. an attention-health value of a batch with nothing
    to average). The detached values are kept and summed once at the end: no work a step."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}
        self.sizes: dict[str, list[int]] = {}

    def add(self, terms: dict[str, torch.Tensor], size: int) -> None:
        for name, value in terms.items():
            self.values.setdefault(name, []).append(value.detach())
            self.sizes.setdefault(name, []).append(size)

    def averages(self) -> dict[str, float | list[float]]:
        """Each term's mean over the samples of the batches that reported it (a number, or a
        list for a term per head); NaN where no batch had a value."""
        means = {}
        for name, values in self.values.items():
            stacked = torch.stack(values).float()  # (batches, ...)
            sizes = torch.tensor(self.sizes[name], dtype=torch.float32, device=stacked.device)
            sizes = sizes.view(-1, *[1] * (stacked.dim() - 1))
            known = ~stacked.isnan()
            total = (torch.where(known, stacked, 0.0) * sizes).sum(0)
            means[name] = (total / (known * sizes).sum(0)).tolist()
        return means


@dataclass
class Predictions:
    """A model's outputs on one split: store rows, users, labels, logits, top routed
    attribute, and the averages of the model's evaluation-time ``aux_terms``."""

    index: np.ndarray  # (N,) store rows
    users: np.ndarray  # (N,)
    labels: np.ndarray  # (N,)
    logits: np.ndarray  # (N,) float64
    top_attribute: np.ndarray | None  # (N, L) argmax_k P, or None without routing
    terms: dict = field(default_factory=dict)  # e.g. CAMN's attention health per head


@torch.no_grad()
def predict(
    model: CTRModel, store: PreparedStore, split: str, batch_size: int, device: torch.device | str
) -> Predictions:
    """Score every sample of ``split`` in store order (eval mode, no history negatives),
    with the model's attention health averaged in ``terms`` (``CTRModel.evaluate``)."""
    model.eval()
    device = torch.device(device)
    parts: dict[str, list[torch.Tensor]] = {"index": [], "user": [], "label": [], "logit": []}
    tops: list[torch.Tensor] = []
    terms = TermAverages()
    for batch in store.batches(split, batch_size):
        inputs = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        output = model.evaluate(inputs)
        terms.add(output.aux_terms, len(batch["label"]))
        parts["index"].append(batch["index"])
        parts["user"].append(batch["user"])
        parts["label"].append(batch["label"])
        parts["logit"].append(output.logits.float().cpu())
        if output.routing is not None:
            tops.append(output.routing.argmax(dim=-1).to(torch.int8).cpu())  # (B, L)
    arrays = {key: torch.cat(values).numpy() for key, values in parts.items()}
    return Predictions(
        index=arrays["index"],
        users=arrays["user"],
        labels=arrays["label"],
        logits=arrays["logit"].astype(np.float64),
        top_attribute=torch.cat(tops).numpy() if tops else None,
        terms=terms.averages(),
    )


def score(predictions: Predictions, store: PreparedStore) -> dict:
    """AUC, log loss, gAUC and sample count; routing recovery where the store has drivers;
    ``terms`` where the model reports evaluation-time terms."""
    probabilities = 1 / (1 + np.exp(-predictions.logits))
    metrics: dict = {
        "auc": auc(predictions.labels, predictions.logits),
        "logloss": logloss(predictions.labels, probabilities),
        "gauc": gauc(predictions.users, predictions.labels, predictions.logits),
        "samples": len(predictions.labels),
    }
    if predictions.terms:
        metrics["terms"] = predictions.terms
    if predictions.top_attribute is not None and store.has_drivers:
        rows = predictions.index
        metrics["routing_recovery"] = routing_recovery(
            predictions.top_attribute,
            store.gather("history_driver", rows),
            store.gather("history_driver_kind", rows),
        )
    return metrics


def evaluate(
    model: CTRModel,
    store: PreparedStore,
    split: str,
    batch_size: int = 8192,
    device: torch.device | str = "cpu",
) -> dict:
    """Score ``model`` on one split of ``store``: see :func:`score` for the keys."""
    return score(predict(model, store, split, batch_size, device), store)
