"""What training minimises and how a validation pass is judged, beyond the model's own loss.

- ``weight_decay``: Adam's (coupled) L2 term, ``weight_decay * w`` added to the gradient of
  every parameter outside the attribute embedding table (biases and normalisation parameters
  included). The table is excluded because its gradient is dense: a decay there would shrink
  every row at every step, rows that no sample of the batch touched included; the table has
  its own penalty instead.
- ``embedding_l2``: ``embedding_l2 * sum of ||e_r||^2`` over the distinct rows r of the
  attribute embedding table that the batch looks up (history, target and drawn negatives,
  padding excluded), added to the loss: only the rows a step uses are pulled towards zero.
- ``clip_grad``: the gradient's total 2-norm clipped to this value before each step.
- ``monitor``: the validation score that picks the best epoch and drives early stopping,
  oriented so that higher is better.
"""

from __future__ import annotations

import math

import torch

from camn.config import MONITORS
from camn.models.base import Batch, CTRModel

LOOKUPS = ("history", "target", "history_negative")  # the id arrays a model embeds


def make_optimizer(
    model: CTRModel, lr: float, weight_decay: float, options: dict
) -> torch.optim.Adam:
    """Adam over the model's parameters; with ``weight_decay`` two groups, the attribute
    embedding table's without decay (module docstring). ``options``: e.g. ``fused``."""
    if not weight_decay:
        return torch.optim.Adam(model.parameters(), lr=lr, **options)
    table = {id(p) for p in model.embedding.parameters()}
    dense = [p for p in model.parameters() if id(p) not in table]
    groups = [
        {"params": dense, "weight_decay": weight_decay},
        {"params": list(model.embedding.parameters()), "weight_decay": 0.0},
    ]
    return torch.optim.Adam(groups, lr=lr, **options)


def embedding_penalty(model: CTRModel, batch: Batch) -> torch.Tensor:
    """Sum of the squared norms of the distinct embedding-table rows that ``batch`` looks up.

    A row-use mask (scatter of the looked-up rows) times the rows' squared norms: no sort and
    no host sync; the table's gradient is dense anyway, so the full-table product costs what
    Adam's update of the table costs.
    """
    embedding = model.embedding
    weight = embedding.table.weight  # (sum of vocab sizes, d)
    used = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
    for key in LOOKUPS:
        if key in batch:
            used[batch[key].reshape(-1, embedding.num_slots) + embedding.offsets] = True
    used[embedding.offsets] = False  # the padding rows (id 0 of each slot) embed to zeros
    return (weight.float().square().sum(-1) * used).sum()


def monitored(metrics: dict, monitor: str) -> float:
    """The monitored score of a validation pass's metrics, higher is better: AUC, minus the
    log loss, or AUC minus log loss. NaN (one class only) never counts as better."""
    if monitor == "auc":
        return metrics["auc"]
    if monitor == "logloss":
        return -metrics["logloss"]
    if monitor == "auc-logloss":
        return metrics["auc"] - metrics["logloss"]
    raise ValueError(f"monitor must be one of {MONITORS}, got {monitor!r}")


def improves(score: float, best: float) -> bool:
    return not math.isnan(score) and score > best
