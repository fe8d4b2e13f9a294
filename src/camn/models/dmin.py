"""DMIN: Deep Multi-Interest Network.

Xiao, Yang, Yang, Zhang, Wu, Zhang, Kang, Wang, Liu. "Deep Multi-Interest Network for
Click-through Rate Prediction", CIKM 2020, https://doi.org/10.1145/3340531.3412092.
Official TF code: github.com/mengxiaozhibo/DMIN (built on DIEN's), functions
``self_multi_head_attn``, ``self_multi_head_attn_v2`` and ``din_attention_new``.

Shapes: B batch, L history length, k attribute slots (= interests), d embedding size,
D = k*d item width, H heads, e per-head width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.dien import NextClickLoss
from camn.models.layers import (
    MLP,
    HeadwiseLinear,
    Packing,
    TargetAttention,
    base_width,
    headwise,
    masked_softmax,
    pooled_features,
)
from camn.models.registry import register


def causal_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) real-item mask -> (B, L, L) bool: query i may attend key j iff j <= i and j is real.

    Boolean, used with ``masked_fill(-inf)``: blocked entries get exactly zero weight (FuxiCTR's
    DMIN added a float 0/1 mask to the logits instead, SPEC 5). The official code masks only
    the future; with left-aligned histories the padding mask changes nothing for real queries
    and keeps padding keys out of the padding rows too.
    """
    length = mask.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return lower[None] & mask[:, None, :]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, as DMIN's ``self_multi_head_attn`` (``_v2`` with
    ``split_heads``), on packed rows (``layers.Packing``).

    Q, K, V = X W_QKV (one dense to 3 * H * e, computed for the packed rows only), logits_h =
    Q_h K_h^T / sqrt(D) (the official code divides by sqrt of the full width, 36 = its D, not of
    the head width), optionally times ``key_scale`` (column j of head h scaled by
    key_scale[h, b, j]: the hook CAMN's routing uses), masked softmax with ``causal_mask``,
    O_h = A_h V_h. Merged (``split_heads=False``): Y = LayerNorm(X + [O_1..O_H] W_O), (N, D).
    Kept apart (``split_heads=True``): Y_h = LayerNorm_h(X + O_h W_O,h) with a per-head output
    projection e -> D and per-head LayerNorm, head-major (H, N, D), so that every per-head map
    after it is one batched matmul over the packed rows.
    e = ceil(D / H) (the code has e = D / H; rounding up lets any H divide any D).
    ``project`` (where Q, K, V come from) and ``temperature`` are what a variant replaces
    (CAMN's per-attribute heads, ``camn.SlotAttention``).
    """

    def __init__(self, width: int, num_heads: int, split_heads: bool = False) -> None:
        super().__init__()
        self.width, self.num_heads, self.split_heads = width, num_heads, split_heads
        self.head_dim = math.ceil(width / num_heads)
        self.temperature = math.sqrt(width)  # logits / sqrt(D), as the official code
        self.qkv = nn.Linear(width, 3 * num_heads * self.head_dim)
        if split_heads:
            self.out = HeadwiseLinear(num_heads, self.head_dim, width)
            self.norm_weight = nn.Parameter(torch.ones(num_heads, 1, width))
            self.norm_bias = nn.Parameter(torch.zeros(num_heads, 1, width))
        else:
            self.out = nn.Linear(num_heads * self.head_dim, width)
            self.norm = nn.LayerNorm(width)

    def project(
        self, x: torch.Tensor, packing: Packing
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) packed -> queries, keys, values (H, B, L, e) each, zeros at padding."""
        qkv = packing.unpack(self.qkv(x))  # (B, L, 3He)
        qkv = qkv.view(packing.batch, packing.length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 3, 0, 1, 4).unbind(0)
        return q, k, v

    def logits(
        self, x: torch.Tensor, packing: Packing, key_scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) packed, key_scale (H, B, L) or None -> logits before the mask (H, B, L, L),
        values (H, B, L, e)."""
        q, k, v = self.project(x, packing)
        logits = q @ k.transpose(-1, -2) / self.temperature  # (H, B, L, L)
        if key_scale is not None:
            logits = logits * key_scale[:, :, None, :]
        return logits, v

    def weights(
        self, x: torch.Tensor, packing: Packing, key_scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) packed, key_scale (H, B, L) or None -> attention (H, B, L, L), values
        (H, B, L, e)."""
        logits, values = self.logits(x, packing, key_scale)
        return masked_softmax(logits, causal_mask(packing.mask)[None]), values

    def forward(
        self, x: torch.Tensor, packing: Packing, key_scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) packed -> outputs ((N, D), or (H, N, D) with split_heads), attention
        weights (H, B, L, L)."""
        attention, values = self.weights(x, packing, key_scale)
        heads = attention @ values  # (H, B, L, e)
        if not self.split_heads:
            merged = packing.pack(heads.permute(1, 2, 0, 3).flatten(-2))  # (N, H*e)
            return self.norm(x + self.out(merged)), attention
        projected = headwise(self.out, packing.pack_heads(heads))  # (H, N, D)
        normed = F.layer_norm(x + projected, (self.width,))
        return normed * self.norm_weight + self.norm_bias, attention


class FeedForward(nn.Module):
    """y = x + W_2 ReLU(W_1 x + b_1) + b_2, D -> 2D -> D, separate weights for each of H heads
    (the dense layers after each attention block of DMIN's code); head-major (H, ..., D)."""

    def __init__(self, num_heads: int, width: int) -> None:
        super().__init__()
        self.inner = HeadwiseLinear(num_heads, width, 2 * width)
        self.outer = HeadwiseLinear(num_heads, 2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + headwise(self.outer, torch.relu(headwise(self.inner, x)))


@register("dmin")
class DMIN(CTRModel):
    """DMIN (Xiao et al., CIKM 2020): behaviour refiner + multi-interest extractor.

    1. Behaviour refiner: ``CausalSelfAttention`` (``refiner_heads`` = 4 merged heads over the
       item vector, logits / sqrt(D), causal) + residual + LayerNorm, then FFN (D -> 2D ReLU ->
       D) + residual: refined states z_t (B, L, D).
    2. Auxiliary loss (paper Sec. 3.2, DIEN's, ``NextClickLoss``): z_t scores the next click
       e_{t+1} above the drawn ``history_negative`` at t+1, padding excluded; weight
       ``aux_weight`` (official: 1). The refiner is causal, so z_t never sees e_{t+1}. Batches
       without ``history_negative`` (evaluation) get no auxiliary loss.
    3. Multi-interest extractor: ``CausalSelfAttention`` with k heads kept apart (per-head
       output projection to D, residual, per-head LayerNorm), per-head FFN + residual, then for
       each head a DIN-style target attention with a learned positional embedding
       (``din_attention_new``: query = Linear([target, pos_j]), MLP([q, x, q - x, q * x])
       80 -> 40 -> 1 sigmoid, masked softmax) -> k interests of width D. The number of heads and
       interests is k ("aligned with the attribute number"; the official code used 4).
    4. Output network: [target, sum-pooled history, target * sum-pooled history, interest_1..k],
       batch norm on the input, 200 -> 80 -> 1 with Dice (official ``build_fcn_net``, less the
       user-id embedding). No per-model tuning was done. ``pooled_history=False`` leaves
       [target, interest_1..k], FuxiCTR's default (``enable_sum_pooling=False``).
    All heads run as batched tensor operations; after the extractor's attention only the real
    positions are computed (packed head-major (k, N, D), N = number of real items). Cost:
    the k per-head FFNs (D -> 2D -> D) and target attentions of width D make the extractor
    about k times DIN's attention in FLOPs; that is the official design (4 heads of width 36
    there, k = 6 heads of width 108 here), kept as is.
    """

    needs_history_negatives = True

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
    ) -> None:
        super().__init__(spec, embed_dim)
        width, k = self.num_slots * embed_dim, self.num_slots
        self.aux_weight = aux_weight
        self.pooled_history = pooled_history
        self.refiner = CausalSelfAttention(width, refiner_heads)
        self.refiner_ffn = FeedForward(1, width)
        self.next_click = NextClickLoss(width, width, aux_hidden)
        self.extractor = CausalSelfAttention(width, k, split_heads=True)
        self.extractor_ffn = FeedForward(k, width)
        self.interests = TargetAttention(
            k, width, width, spec.max_len, hidden=tuple(attention_hidden), positional=True
        )
        inputs = base_width(width, pooled_history) + k * width
        self.mlp = MLP(inputs, tuple(mlp_hidden), 1, activation, input_norm=True)

    def refine(self, items: torch.Tensor, packing: Packing) -> torch.Tensor:
        """Behaviour refiner: packed items (N, D) -> refined states (N, D)."""
        attended, _ = self.refiner(items, packing)
        return self.refiner_ffn(attended[None])[0]

    def extract(
        self,
        refined: torch.Tensor,
        target: torch.Tensor,
        packing: Packing,
        key_scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Multi-interest extractor: refined (N, D), target (B, D) -> interests (B, k, D),
        target-attention weights (B, k, L), self-attention weights (k, B, L, L).
        ``key_scale`` (k, B, L) scales head h's logit column j (``CausalSelfAttention``)."""
        heads, attention = self.extractor(refined, packing, key_scale)  # (k, N, D)
        interests, weights = self.interests.forward_packed(
            self.extractor_ffn(heads), target, packing
        )
        return interests, weights, attention

    def forward(self, batch: Batch) -> ModelOutput:
        packing = Packing(batch["mask"])
        items = self.embedding(packing.pack(batch["history"])).flatten(-2)  # (N, D)
        target = self.embedding(batch["target"]).flatten(-2)  # (B, D)
        refined = self.refine(items, packing)
        interests, _, _ = self.extract(refined, target, packing)  # (B, k, D)
        return self.output(batch, packing, items, target, refined, interests)

    def output(
        self,
        batch: Batch,
        packing: Packing,
        items: torch.Tensor,
        target: torch.Tensor,
        refined: torch.Tensor,
        interests: torch.Tensor,
    ) -> ModelOutput:
        """The output network's logits and, while training, the weighted auxiliary loss."""
        base = target
        if self.pooled_history:
            base = pooled_features(target, packing.sum_per_sample(items))
        logits = self.mlp(torch.cat([base, interests.flatten(1)], dim=-1)).squeeze(-1)
        if not self.training or self.aux_weight == 0 or "history_negative" not in batch:
            return ModelOutput(logits, self.no_aux_loss(logits))
        negatives = self.embedding(packing.pack(batch["history_negative"])).flatten(-2)
        pairs = packing.next_pairs()  # rows t whose t + 1 is real
        aux = self.next_click.pair_loss(
            refined[pairs], items[pairs + 1], negatives[pairs + 1]
        )
        return ModelOutput(logits, self.aux_weight * aux, {"next_click": aux.detach()})
