"""CAMN's collaborative routing (Eq. 1-3) and diversity loss (Eq. 7), shared with
camn-standalone.

Shapes: B batch, L history length, k attribute slots (= heads), d embedding size.
"""

from __future__ import annotations

import torch
from torch import nn


def keep_top_q(logits: torch.Tensor, q: int) -> torch.Tensor:
    """Eq. 3: keep the q largest entries of the last axis, set the others to -inf.

    ``masked_fill`` passes no gradient to the filled entries, so only the kept logits (and
    through them W_h) receive gradient, as the paper states under Eq. 3.
    """
    if q >= logits.shape[-1]:
        return logits
    kept = torch.zeros_like(logits, dtype=torch.bool)
    top = logits.topk(q, dim=-1).indices
    kept.scatter_(-1, top, torch.ones_like(top, dtype=torch.bool))  # a tensor: traceable
    return logits.masked_fill(~kept, float("-inf"))


def diversity_loss(
    attention: torch.Tensor, mask: torch.Tensor, distinct: bool = False
) -> torch.Tensor:
    """Eq. 7: L_d = (1/k^2) sum_i sum_j ||A_i * A_j||_1, averaged over the batch.

    attention (B, k, L, L) holds the k heads' weights A_r (rows = queries, columns = keys);
    mask (B, L) is True at real items. For each sample the entries of A_i * A_j are summed over
    the rows of real query items only (padding queries are excluded; padding key columns are
    already 0) and over all pairs (i, j), or over i != j with ``distinct``; the result is divided
    by k^2 and then averaged over the B samples. The entries are non-negative, so the sum is the
    L1 norm of the element-wise product.

    The pair sum is computed without forming the (k, k) Gram matrix of the heads:
    sum_{i,j} <A_i, A_j> = ||sum_i A_i||^2, and the distinct pairs drop sum_i ||A_i||^2.
    """
    heads = attention.shape[1]
    rows = attention * mask[:, None, :, None].to(attention.dtype)  # (B, k, L, L)
    all_pairs = rows.sum(dim=1).square().sum(dim=(1, 2))  # (B,)
    if distinct:
        all_pairs = all_pairs - rows.square().sum(dim=(1, 2, 3))
    return (all_pairs / heads**2).mean()


class CollaborativeRouting(nn.Module):
    """Eq. 1-3: P = Softmax(keepTopq(LayerNorm(X) W_h, q)), one score per attribute of each item.

    X is an item's k attribute embeddings concatenated (k*d); LayerNorm is over those k*d
    features; W_h (k*d, k) has no bias. Each row of P sums to 1 and has exactly k - q zeros.
    The scores depend only on the item itself (Eq. 2), never on the user or the sequence.
    """

    def __init__(self, num_slots: int, dim: int, q: int) -> None:
        super().__init__()
        if not 1 <= q <= num_slots:
            raise ValueError(f"q must be in [1, k={num_slots}], got {q}")
        self.q = q
        self.norm = nn.LayerNorm(num_slots * dim)
        self.weight = nn.Linear(num_slots * dim, num_slots, bias=False)

    def logits(self, items: torch.Tensor) -> torch.Tensor:
        """(..., k, d) -> (..., k) routing logits X~ W_h before keepTopq (Eq. 1-2)."""
        return self.weight(self.norm(items.flatten(-2)))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """(..., k, d) attribute embeddings of items -> P (..., k)."""
        return torch.softmax(keep_top_q(self.logits(items), self.q), dim=-1)

