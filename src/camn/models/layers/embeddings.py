"""Embeddings and pooling: the k attribute tables, item vectors, the history pooled.

Shapes: B batch, L history length, k attribute slots, d embedding size, D = k*d item width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class AttributeEmbedding(nn.Module):
    """The k attribute tables as one lookup: one table per slot, id 0 padding, id 1 unknown.

    The tables are stacked into one ``nn.Embedding`` with per-slot offsets, so the k slots are
    embedded by a single gather. Padding (id 0) always embeds to zeros.
    """

    def __init__(self, vocab_sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.vocab_sizes = list(vocab_sizes)
        self.dim = dim
        offsets = torch.tensor([0, *self.vocab_sizes[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(sum(self.vocab_sizes), dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.table.weight, std=1e-2)

    @property
    def num_slots(self) -> int:
        return len(self.vocab_sizes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., k) attribute ids -> (..., k, d) embeddings."""
        vectors = self.table(ids + self.offsets)
        return vectors * (ids != 0).unsqueeze(-1).to(vectors.dtype)

    def extra_repr(self) -> str:
        return f"vocab_sizes={self.vocab_sizes}, dim={self.dim}"


def item_vectors(history: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, k, d), (B, k, d) -> history items (B, L, D), target item (B, D): the k attribute
    embeddings concatenated, every model's item vector."""
    return history.flatten(-2), target.flatten(-2)


POOLS = ("sum", "mean")


def pool_history(values: torch.Tensor, mask: torch.Tensor, pool: str = "sum") -> torch.Tensor:
    """Pool (B, L, ...) over the real history positions -> (B, ...): sum, or mean over the
    user's length (0 for an empty history). Padded positions never count, whatever their ids."""
    real = mask.to(values.dtype).reshape(*mask.shape, *([1] * (values.dim() - 2)))
    pooled = (values * real).sum(dim=1)
    if pool == "sum":
        return pooled
    lengths = mask.sum(dim=1).clamp(min=1).to(values.dtype)
    return pooled / lengths.reshape(-1, *([1] * (pooled.dim() - 1)))


def field_embeddings(
    history: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, pool: str = "sum"
) -> torch.Tensor:
    """The 2k fields of Wide&Deep and PNN: history (B, L, k, d), target (B, k, d) ->
    (B, 2k, d), the k target attribute embeddings then the k pooled history attributes."""
    return torch.cat([target, pool_history(history, mask, pool)], dim=1)

