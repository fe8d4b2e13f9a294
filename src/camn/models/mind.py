"""MIND: Multi-Interest Network with Dynamic routing, as a pointwise CTR baseline.

Li, Liu, Wu, Xu, Zhao, Huang, Kang, Chen, Li, Lee. "Multi-Interest Network with Dynamic Routing
for Recommendation at Tmall", CIKM 2019, https://doi.org/10.1145/3357384.3357814.

MIND has no official code; the reference re-implementation is the ``CapsuleNetwork`` of
ComiRec's official code (github THUDM/ComiRec, ``Model_MIND``), whose choices are followed where
the paper is silent. Shapes: B batch, L history length, k attribute slots, d embedding size,
K interest capsules, D item width (k*d), D' interest width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import (
    OutputHead,
    attention_health,
    health_terms,
    label_aware_attention,
    masked_softmax,
    pool_history,
)
from camn.models.registry import register


def squash(vectors: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """MIND's (and Sabour et al.'s) squash: ||z||^2 / (1 + ||z||^2) * z / ||z||, norm < 1.

    ``eps`` keeps the gradient finite at z = 0 (a capsule that received no behaviour).
    """
    norm_sq = vectors.square().sum(dim=-1, keepdim=True)
    return norm_sq / (1 + norm_sq) * vectors / torch.sqrt(norm_sq + eps)


def adaptive_interest_count(lengths: torch.Tensor, max_interests: int) -> torch.Tensor:
    """MIND's adaptive number of interests: K'_u = max(1, min(K, log2 |I_u|)), log2 rounded
    down to an integer (the paper leaves the rounding open)."""
    counts = torch.log2(lengths.clamp(min=1).to(torch.float32)).floor().long()
    return counts.clamp(1, max_interests)


@register("mind", display="MIND")
@register("mind-paper", summary="MIND's head on what its paper scores: [target, user vector]",
          pooled_history=False, activation="prelu")
class MIND(CTRModel):
    """MIND (Li et al., CIKM 2019): dynamic-routing interest capsules, label-aware read-out.

    K interest capsules by behaviour-to-interest (B2I) dynamic routing (``routing``) over the
    history items c_i (the k attribute embeddings concatenated, width D = k*d, the item vector
    of every model here; MIND itself averages an item's id embeddings), then label-aware
    attention with the target.

    After routing, ``capsule_relu`` (default True) applies one shared Linear(D', D') + ReLU to
    every capsule: the paper's ReLU layers between capsules and label-aware attention (Fig. 2),
    without user-profile features (there are none here), one layer as in ComiRec's Model_MIND.

    Label-aware attention: v_u = V_u softmax(pow(V_u^T e_t, p)), p = ``pow_p`` (1; a
    non-negative integer, since the dot products can be negative), ``readout="hard"`` for
    p -> inf. The target e_t is projected to D' by a linear map when D' != D.

    Output, a CTR head in place of the paper's retrieval loss (so that MIND scores clicks as
    every model here does): the shared ``layers.OutputHead``, DMIN's output network: [e_t (D),
    sum-pooled history, e_t * sum-pooled history, v_u (D')], batch norm on the input,
    200 -> 80 -> 1 with Dice, so that MIND differs from the other sequence models in its
    sequence module only. ``mind-paper`` (``pooled_history=False, activation="prelu"``) feeds
    [e_t, v_u] only, what MIND's own score <v_u, e_t> reads, with PReLU.
    """

    search_space: ClassVar[dict[str, object]] = {"num_interests": {"low": 1, "high": 8}}

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 18,
        num_interests: int | None = None,
        interest_dim: int | None = None,
        iterations: int = 3,
        routing_init: str = "fixed",
        init_std: float = 1.0,
        detach_routing: bool = True,
        adaptive_interests: bool = False,
        capsule_relu: bool = True,
        pow_p: float = 1.0,
        readout: str = "soft",
        mlp_hidden: Sequence[int] = (200, 80),
        activation: str = "dice",
        input_norm: bool = True,
        pooled_history: bool = True,
    ) -> None:
        super().__init__(spec, embed_dim)
        if routing_init not in {"fixed", "random"}:
            raise ValueError(f"routing_init must be 'fixed' or 'random', got {routing_init!r}")
        if readout not in {"soft", "hard"}:
            raise ValueError(f"readout must be 'soft' or 'hard', got {readout!r}")
        if pow_p < 0 or pow_p != int(pow_p):
            raise ValueError(f"pow_p must be a non-negative integer, got {pow_p}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        item_dim = self.num_slots * embed_dim
        self.num_interests = num_interests or self.num_slots
        self.interest_dim = interest_dim or item_dim
        self.iterations, self.init_std = iterations, init_std
        self.random_init = routing_init == "random"
        self.detach_routing, self.adaptive = detach_routing, adaptive_interests
        self.pow_p, self.hard = pow_p, readout == "hard"
        self.bilinear = nn.Linear(item_dim, self.interest_dim, bias=False)  # S
        initial = torch.empty(spec.max_len, self.num_interests)
        self.register_buffer("initial_logits", nn.init.trunc_normal_(initial, std=init_std))
        self.capsule_layer = (
            nn.Sequential(nn.Linear(self.interest_dim, self.interest_dim), nn.ReLU())
            if capsule_relu
            else None
        )
        self.target_projection = (
            nn.Linear(item_dim, self.interest_dim, bias=False)
            if self.interest_dim != item_dim
            else None
        )
        self.head = OutputHead(
            item_dim, self.interest_dim, pooled_history=pooled_history, input_norm=input_norm,
            hidden=tuple(mlp_hidden), activation=activation,
        )
        self.add_side_features(self.head)

    def capsule_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, K): the capsules each user has (all K unless ``adaptive_interests``)."""
        if not self.adaptive:
            return mask.new_ones((mask.shape[0], self.num_interests))
        slots = torch.arange(self.num_interests, device=mask.device)
        counts = adaptive_interest_count(mask.sum(dim=1), self.num_interests)
        return slots[None, :] < counts[:, None]

    def start_logits(self, batch: int, length: int) -> torch.Tensor:
        """Initial routing logits b (B, L, K)."""
        if self.random_init and self.training:
            shape = (batch, length, self.num_interests)
            fresh = torch.empty(shape, device=self.initial_logits.device)
            return nn.init.trunc_normal_(fresh, std=self.init_std)
        return self.initial_logits[:length].expand(batch, -1, -1)

    def routing(
        self, items: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """B2I dynamic routing (the paper's Algorithm 1): items (B, L, D), mask (B, L) ->
        capsules u (B, K, D') after squash, the last round's coupling w (B, L, K) (rows sum to
        1 at real behaviours, 0 at padding), the capsule mask (B, K), and the logits b
        (B, L, K) that the last round's softmax saw.

        - One bilinear map S (D -> D', no bias) shared by every behaviour and capsule (B2I's
          change to CapsNet, which has one map per pair); D' = ``interest_dim`` (default D).
        - Logits b_ij (i behaviour, j capsule) start random (with a shared S equal starts
          would give K identical capsules); for ``iterations`` rounds: w_ij = softmax_j(b_ij),
          z_j = sum_i w_ij S c_i, u_j = squash(z_j), b_ij += u_j^T S c_i. Padded behaviours
          get w_ij = 0; each real behaviour's w_i. sums to 1.
        - The start (the paper leaves it open): ``routing_init="fixed"`` draws b (K, L) once at
          construction (truncated normal, std ``init_std``, a buffer saved with the weights),
          so a model scores deterministically; ``"random"`` redraws b (B, L, K) at every
          training forward as the paper and ComiRec's code do (the fixed buffer in eval mode).
        - ``detach_routing`` (ComiRec's ``stop_grad``): the rounds that only update b see
          S c_i without gradient; the last round's capsules carry it to S and the embeddings.
        - ``adaptive_interests`` (off: K = k, one interest per attribute, as CAMN): K'_u =
          max(1, min(K, floor(log2 l_u))) capsules per user, the others masked.
        """
        mapped = self.bilinear(items)  # S c_i, (B, L, D')
        mapped_iter = mapped.detach() if self.detach_routing else mapped
        capsules_valid = self.capsule_mask(mask)  # (B, K)
        logits = self.start_logits(*mask.shape)  # (B, L, K)
        real = mask[..., None].to(mapped.dtype)
        for step in range(self.iterations):
            last = step == self.iterations - 1
            coupling = masked_softmax(logits, capsules_valid[:, None, :]) * real  # (B, L, K)
            source = mapped if last else mapped_iter
            capsules = squash(torch.einsum("blk,bld->bkd", coupling, source))  # (B, K, D')
            if not last:
                logits = logits + torch.einsum("bld,bkd->blk", mapped_iter, capsules)
        return capsules, coupling, capsules_valid, logits

    def run(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """logits (B,), and what the health reads: the last round's coupling w and the
        routing logits b it saw (B, L, K), mask (B, L), capsule mask (B, K)."""
        history, target = self.embed(batch)  # (B, L, k, d), (B, k, d)
        items, target = history.flatten(2), target.flatten(1)  # (B, L, D), (B, D)
        mask = batch["mask"]
        capsules, coupling, valid, routing_logits = self.routing(items, mask)
        if self.capsule_layer is not None:
            capsules = self.capsule_layer(capsules)
        query = target if self.target_projection is None else self.target_projection(target)
        user, _ = label_aware_attention(capsules, query, self.pow_p, self.hard, valid)  # (B, D')
        logits = self.head(user, target, pool_history(items, mask), self.side_features(batch))
        return logits, (coupling, routing_logits, mask, valid)

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        logits, _ = self.run(batch)
        return ModelOutput(logits, self.no_aux_loss(logits))

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> ModelOutput:
        """``forward``'s output with the routing's health, (1,) each: the keys are the capsules
        each user has, the rows the real behaviours; the entropy of a behaviour's last-round
        coupling w_i. over them (1 = it feeds every interest alike) and the mean |b_ij| that
        softmax saw (drawn with std ``init_std`` at the start, so neither is uniform at
        initialisation). The label-aware read-out over the K interests is not counted."""
        logits, (coupling, routing_logits, mask, valid) = self.run(batch)
        allowed = mask[:, :, None] & valid[:, None, :]  # (B, L, K)
        health = attention_health(coupling[None], routing_logits[None], allowed)
        return ModelOutput(logits, self.no_aux_loss(logits), health_terms(*health))
