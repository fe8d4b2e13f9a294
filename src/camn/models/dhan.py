"""DHAN: Deep Interest with Hierarchical Attention Network.

Xu, He, Tan, Li, Lang, Guo. "Deep Interest with Hierarchical Attention Network for
Click-Through Rate Prediction", SIGIR 2020, https://doi.org/10.1145/3397271.3401310.
No official code is public; this follows the paper's description.

Shapes: B batch, L history length, k attribute slots, d embedding size, D = k*d item width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import (
    OutputHead,
    TargetAttention,
    health_terms,
    item_vectors,
    masked_softmax,
    pool_history,
)
from camn.models.registry import register


def group_pool(
    items: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the items of each attribute group with their item attention, vectorised.

    items (B, L, D), scores (B, L) item attention scores, groups (B, L) attribute ids, mask
    (B, L) -> group vectors (B, L, D), one per position (the vector of that position's group),
    and ``first`` (B, L) bool, True at the first position of each group, so that every group
    present in a sample is counted once. Group g's vector is sum_{j in g} w_j x_j with
    w_j = exp(s_j) / sum_{i in g} exp(s_i): the item weights exp(s_j) normalised within the
    group (the softmax restricted to the group), computed through the (B, L, L) same-group
    matrix.
    """
    same = (groups[:, :, None] == groups[:, None, :]) & mask[:, None, :]  # (B, L, L)
    weights = masked_softmax(scores[:, None, :].expand_as(same), same)  # (B, L, L)
    earlier = same.tril(diagonal=-1).any(dim=-1)  # (B, L): a previous item shares the group
    return weights @ items, mask & ~earlier


class Levels(NamedTuple):
    """DHAN's two attention levels on a batch: B samples, L positions, D item width."""

    item: torch.Tensor  # u_1 (B, D)
    group: torch.Tensor  # u_2 (B, D)
    item_scores: torch.Tensor  # raw item scores s_j (B, L), zero at padding
    group_vectors: torch.Tensor  # each position's group vector (B, L, D)
    present: torch.Tensor  # (B, L) bool: the first position of each group present
    group_weights: torch.Tensor  # group attention weights (B, L), zero off ``present``


@register("dhan", display="DHAN")
class DHAN(CTRModel):
    """DHAN (Xu et al., SIGIR 2020): item-level then group-level target attention.

    1. Item level: DIN's attention unit (``layers.TargetAttention`` as DIN has it:
       MLP([t, x, t - x, t * x]) 80 -> 40 sigmoid, raw scores s_j, not softmax-normalised,
       zeroed at padding) -> u_1 = sum_j s_j x_j.
    2. Grouping: items grouped by the attribute in slot ``group_slot`` (default 1: level-2
       category on Amazon, genre 1 on MovieLens); each group's vector pools its items with the
       item weights exp(s_j) normalised within the group (``group_pool``).
    3. Group level: a second attention unit (own weights, same form) over the group vectors
       against the target, masked to the groups present, masked softmax (``group_softmax``;
       groups are few and differ in number, normalised weights keep u_2 on one scale)
       -> u_2 = sum_g a_g c_g.
    4. Output network: the shared ``layers.OutputHead`` on [target, sum-pooled history,
       target * sum-pooled history, u_1, u_2] (DIN's layout here, plus u_2), batch norm,
       200 -> 80 -> 1 with Dice.
    No per-model tuning was done.

    Attention health (``evaluate``, H = 2, one value a level): [item level, group
    level]; the item level's raw scores are no distribution, so as DIN's its entropy is that of
    |s_j| / sum |s| (a concentration measure, ``layers.unnormalised_health``), the group level's
    is its softmax's entropy over the groups present (rows with one group left out; without
    ``group_softmax`` the same concentration measure as the item level's); |logit| is the mean
    |score| of each level (``layers.target_attention_health``).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 18,
        group_slot: int = 1,
        attention_hidden: Sequence[int] = (80, 40),
        group_softmax: bool = True,
        mlp_hidden: Sequence[int] = (200, 80),
        activation: str = "dice",
        pooled_history: bool = True,
        input_norm: bool = True,
    ) -> None:
        super().__init__(spec, embed_dim)
        if not 0 <= group_slot < self.num_slots:
            raise ValueError(f"group_slot must be in [0, {self.num_slots}), got {group_slot}")
        if group_slot in spec.bag_slots:
            raise ValueError(f"group_slot {group_slot} is a bag slot (several values per item); "
                             "DHAN groups items by one value")
        width = self.num_slots * embed_dim
        self.group_slot = group_slot
        self.item_attention = TargetAttention(
            1, width, width, spec.max_len, tuple(attention_hidden), False, False, False
        )
        self.group_attention = TargetAttention(
            1, width, width, spec.max_len, tuple(attention_hidden), False, group_softmax, False
        )
        self.head = OutputHead(
            width, 2 * width, pooled_history=pooled_history, input_norm=input_norm,
            hidden=tuple(mlp_hidden), activation=activation,
        )
        self.add_side_features(self.head)

    def interests(self, batch: Batch, items: torch.Tensor, target: torch.Tensor) -> Levels:
        """items (B, L, D), target (B, D) -> both levels' interests and weights."""
        mask = batch["mask"]
        item_level, scores = self.item_attention(items[:, None], target, mask)
        groups = batch["history"][:, :, self.group_slot]  # (B, L)
        vectors, first = group_pool(items, scores[:, 0], groups, mask)
        group_level, group_weights = self.group_attention(vectors[:, None], target, first)
        return Levels(item_level[:, 0], group_level[:, 0], scores[:, 0], vectors, first,
                      group_weights[:, 0])

    def run(self, batch: Batch) -> tuple[torch.Tensor, tuple]:
        """logits (B,), and what the health reads: items (B, L, D), target (B, D), the levels."""
        items, target = item_vectors(*self.embed(batch))  # (B, L, D), (B, D)
        levels = self.interests(batch, items, target)
        features = torch.cat([levels.item, levels.group], dim=-1)  # (B, 2D)
        logits = self.head(features, target, pool_history(items, batch["mask"]),
                           self.side_features(batch))
        return logits, (items, target, levels)

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        logits, _ = self.run(batch)
        return ModelOutput(logits, self.no_aux_loss(logits))

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> ModelOutput:
        """``forward``'s output with the two levels' health, (2,) each: [item, group]."""
        logits, (items, target, levels) = self.run(batch)
        item = self.item_attention.health(
            items[:, None], target, batch["mask"], levels.item_scores[:, None]
        )
        group = self.group_attention.health(
            levels.group_vectors[:, None], target, levels.present, levels.group_weights[:, None]
        )
        health = health_terms(torch.cat([item[0], group[0]]), torch.cat([item[1], group[1]]))
        return ModelOutput(logits, self.no_aux_loss(logits), health)
