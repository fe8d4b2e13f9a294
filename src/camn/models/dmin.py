"""DMIN: Deep Multi-Interest Network.

Xiao, Yang, Yang, Zhang, Wu, Zhang, Kang, Wang, Liu. "Deep Multi-Interest Network for
Click-through Rate Prediction", CIKM 2020, https://doi.org/10.1145/3340531.3412092.
Official TF code: github.com/mengxiaozhibo/DMIN (built on DIEN's), functions
``self_multi_head_attn``, ``self_multi_head_attn_v2`` and ``din_attention_new``.

Shapes: B batch, L history length, k attribute slots (= interests), d embedding size,
D = k*d item width, N packed rows (``layers.Packing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import Packing, dmin_blocks
from camn.models.registry import register


@register("dmin", display="DMIN")
class DMIN(CTRModel):
    """DMIN (Xiao et al., CIKM 2020): behaviour refiner + multi-interest extractor.

    1. Behaviour refiner (``layers.BehaviourRefiner``): causal self-attention with
       ``refiner_heads`` = 4 merged heads over the item vector (logits / sqrt(D)) + residual +
       LayerNorm, then FFN (D -> 2D ReLU -> D) + residual: refined states z_t (B, L, D).
    2. Auxiliary loss (paper Sec. 3.2, DIEN's, ``layers.NextClickLoss``): z_t scores the next
       click e_{t+1} above the drawn ``history_negative`` at t+1, padding excluded; weight
       ``aux_weight`` (official: 1). The refiner is causal, so z_t never sees e_{t+1}.
       Computed when the forward pass is asked for extra losses (the trainer's batches).
    3. Multi-interest extractor (``layers.MultiInterestExtractor``): causal self-attention
       with k heads kept apart (per-head output projection to D, residual, per-head
       LayerNorm), per-head FFN + residual, then for each head a DIN-style target attention
       with a learned positional embedding (``din_attention_new``: query = Linear([target,
       pos_j]), MLP([q, x, q - x, q * x]) 80 -> 40 -> 1 sigmoid, masked softmax) -> k
       interests of width D. The number of heads and interests is k ("aligned with the
       attribute number"; the official code used 4).
    4. Output network (``layers.OutputHead``, the shared default): [target, sum-pooled
       history, target * sum-pooled history, interest_1..k], batch norm on the input,
       200 -> 80 -> 1 with Dice (official ``build_fcn_net``, less the user-id embedding). No
       per-model tuning was done. ``pooled_history=False`` leaves [target, interest_1..k],
       FuxiCTR's default (``enable_sum_pooling=False``).
    All heads run as batched tensor operations on the rows of a ``layers.Packing`` (the real
    items on the CPU, or the batch's ``packed_positions``). The k per-head FFNs and target
    attentions of width D make the extractor about k times DIN's attention in FLOPs: the
    official design (4 heads of width 36 there), kept as is. The evaluation pass
    (``evaluate``) reports the extractor's attention health per head and L_d (Eq. 7 of CAMN)
    over its heads (``MultiInterestExtractor.health``).
    """

    needs_history_negatives = True
    search_space: ClassVar[dict[str, object]] = {
        "aux_weight": {"low": 0.05, "high": 2.0, "log": True},
    }
    packs_rows = True

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 18,
        refiner_heads: int = 4,
        aux_weight: float = 1.0,
        attention_hidden: Sequence[int] = (80, 40),
        aux_hidden: Sequence[int] = (100, 50),
        mlp_hidden: Sequence[int] = (200, 80),
        activation: str = "dice",
        pooled_history: bool = True,
        input_norm: bool = True,
    ) -> None:
        super().__init__(spec, embed_dim)
        width, k = self.num_slots * embed_dim, self.num_slots
        self.aux_weight = aux_weight
        self.refiner, self.next_click, self.extractor, self.head = dmin_blocks(
            width, k, spec.max_len, refiner_heads=refiner_heads, aux_hidden=aux_hidden,
            attention_hidden=attention_hidden, mlp_hidden=mlp_hidden, activation=activation,
            pooled_history=pooled_history, input_norm=input_norm,
        )
        self.add_side_features(self.head)

    def run(self, batch: Batch) -> DMINPass:
        """Blocks 1, 3 and 4 on ``batch``: the logits and what the losses and health read."""
        packing = Packing.of(batch)
        items = self.embedding(packing.pack(batch["history"])).flatten(-2)  # (N, D)
        target = self.embedding(batch["target"]).flatten(-2)  # (B, D)
        refined = self.refiner(items, packing)  # (N, D)
        interests, _, attention = self.extractor(refined, target, packing)  # (B, k, D)
        logits = self.head(interests.flatten(1), target, packing.sum_per_sample(items),
                           self.side_features(batch))
        return DMINPass(logits, packing, items, refined, attention)

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        run = self.run(batch)
        if not extra_losses or self.aux_weight == 0:
            return ModelOutput(run.logits, self.no_aux_loss(run.logits))
        negatives = self.embedding(run.packing.pack(self.history_negatives(batch))).flatten(-2)
        aux = self.next_click(run.refined, run.items, negatives, run.packing)  # block 2
        return ModelOutput(run.logits, self.aux_weight * aux, {"next_click": aux.detach()})

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> ModelOutput:
        """``forward``'s output with the extractor's attention health (k heads) and L_d."""
        run = self.run(batch)
        health = self.extractor.health(run.refined, run.packing, run.attention)
        return ModelOutput(run.logits, self.no_aux_loss(run.logits), health)


class DMINPass(NamedTuple):
    """One pass of DMIN's blocks over a batch."""

    logits: torch.Tensor  # (B,)
    packing: Packing
    items: torch.Tensor  # packed item vectors (N, D)
    refined: torch.Tensor  # the refiner's states (N, D)
    attention: torch.Tensor  # the extractor's self-attention (k, B, L, L)
