"""Embeddings and pooling: the k attribute tables (bags included), the side features, item
vectors, the history pooled.

Shapes: B batch, L history length, k attribute slots, d embedding size, D = k*d item width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

UNKNOWN_ID = 1  # id 1 of every vocabulary: a value not seen when the store was prepared


class AttributeEmbedding(nn.Module):
    """The k attribute tables as one lookup: one table per slot, id 0 padding, id 1 unknown.

    The tables are stacked into one ``nn.Embedding`` with per-slot offsets, so the k slots are
    embedded by a single gather. Padding (id 0) always embeds to zeros.

    Bag slots (``bag_slots``, never slot 0): an item's value in such a slot is a bag of at most
    ``bag_lengths`` values, kept as a buffer ``bags_<slot>`` (vocab_sizes[0], M) of value ids
    indexed by item id (the ids of slot 0), 0-padded, zeros until ``set_bags`` fills it (it is
    saved with the weights). The slot's vector of item i is the mean of the embeddings of its
    bag's values, whatever the slot's column of ``ids`` holds; an item with an empty bag (the
    unknown item among them) gets the slot's unknown embedding (id 1), as a single value never
    seen would; the padding item (id 0) stays zeros.
    """

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        dim: int,
        bag_slots: Sequence[int] = (),
        bag_lengths: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.vocab_sizes = list(vocab_sizes)
        self.dim = dim
        offsets = torch.tensor([0, *self.vocab_sizes[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.slot_offsets = offsets.tolist()  # as ints: indexing with them traces as constants
        self.table = nn.Embedding(sum(self.vocab_sizes), dim)
        self.bag_slots = tuple(bag_slots)
        for slot, length in zip(self.bag_slots, bag_lengths, strict=True):
            bags = torch.zeros(self.vocab_sizes[0], length, dtype=torch.long)
            self.register_buffer(f"bags_{slot}", bags)
        if self.bag_slots:
            columns = torch.zeros(len(self.vocab_sizes), dtype=torch.bool)
            columns[list(self.bag_slots)] = True
            self.register_buffer("bag_columns", columns, persistent=False)
            self.register_buffer("bag_index", torch.tensor(self.bag_slots), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.table.weight, std=1e-2)

    @property
    def num_slots(self) -> int:
        return len(self.vocab_sizes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., k) attribute ids -> (..., k, d) embeddings."""
        if self.bag_slots:
            return self.with_bags(ids)
        vectors = self.table(ids + self.offsets)
        return vectors * (ids != 0).unsqueeze(-1).to(vectors.dtype)

    def with_bags(self, ids: torch.Tensor) -> torch.Tensor:
        """``forward`` with the bag slots' columns of ``ids`` replaced by their items' bags."""
        ids = ids.masked_fill(self.bag_columns, 0)  # whatever those columns hold is not read
        vectors = self.table(ids + self.offsets)
        vectors = vectors * (ids != 0).unsqueeze(-1).to(vectors.dtype)
        items = ids[..., 0]
        pooled = torch.stack([self.bag_mean(slot, items) for slot in self.bag_slots], dim=-2)
        return vectors.index_copy(vectors.dim() - 2, self.bag_index, pooled.to(vectors.dtype))

    def bag_mean(self, slot: int, items: torch.Tensor) -> torch.Tensor:
        """items (...) item ids -> (..., d): the mean embedding of each item's bag in ``slot``;
        the slot's unknown embedding for an empty bag, zeros for the padding item."""
        values = getattr(self, f"bags_{slot}")[items]  # (..., M)
        present = values != 0
        offset = self.slot_offsets[slot]
        embedded = self.table(values + offset)  # (..., M, d)
        total = (embedded * present.unsqueeze(-1).to(embedded.dtype)).sum(-2)  # (..., d)
        count = present.sum(-1, keepdim=True)  # (..., 1)
        mean = total / count.clamp(min=1).to(total.dtype)
        unknown = self.table.weight[offset + UNKNOWN_ID]  # (d,)
        mean = torch.where(count == 0, unknown, mean)
        return mean * (items != 0).unsqueeze(-1).to(mean.dtype)

    @torch.no_grad()
    def set_bags(self, slot: int, bags: torch.Tensor | np.ndarray) -> None:
        """Fill bag slot ``slot``'s table: ``bags`` (vocab_sizes[0], M) value ids, row i the
        values of item i, 0-padded; ValueError naming the slot where it does not fit."""
        if slot not in self.bag_slots:
            raise ValueError(f"slot {slot} is not a bag slot; the bag slots are "
                             f"{list(self.bag_slots)}")
        buffer = getattr(self, f"bags_{slot}")
        bags = torch.as_tensor(bags)
        if bags.shape != buffer.shape or bags.dtype.is_floating_point or bags.dtype == torch.bool:
            raise ValueError(f"bags of slot {slot}: expected integer ids of shape "
                             f"{tuple(buffer.shape)} (items, longest bag), got {bags.dtype} "
                             f"{tuple(bags.shape)}")
        if bags.numel() and (bags.min() < 0 or bags.max() >= self.vocab_sizes[slot]):
            raise ValueError(f"bags of slot {slot}: value ids must lie in [0, "
                             f"{self.vocab_sizes[slot]}) (the slot's vocabulary), got "
                             f"[{int(bags.min())}, {int(bags.max())}]")
        buffer.copy_(bags)

    def extra_repr(self) -> str:
        bags = f", bag_slots={list(self.bag_slots)}" if self.bag_slots else ""
        return f"vocab_sizes={self.vocab_sizes}, dim={self.dim}{bags}"


class SideFeatures(nn.Module):
    """The side features of the output network: categorical ids (B, U + C), the user features
    then the context features, one d-dim embedding each (id 0 padding: zeros, id 1 unknown),
    and N numeric values as they are -> (B, (U + C) * d + N)."""

    def __init__(self, categorical_sizes: Sequence[int], num_numeric: int, dim: int) -> None:
        super().__init__()
        self.num_categorical, self.num_numeric = len(categorical_sizes), num_numeric
        self.embedding = AttributeEmbedding(categorical_sizes, dim) if categorical_sizes else None
        self.width = len(categorical_sizes) * dim + num_numeric

    def forward(self, ids: torch.Tensor | None, numeric: torch.Tensor | None) -> torch.Tensor:
        """ids (B, U + C) or None without categorical features, numeric (B, N) or None."""
        parts = [] if self.embedding is None else [self.embedding(ids).flatten(-2)]
        return torch.cat(parts + ([] if numeric is None else [numeric]), dim=-1)


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

