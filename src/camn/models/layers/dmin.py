"""DMIN's blocks, which CAMN builds on: causal self-attention, the behaviour refiner, the
multi-interest extractor, and the next-click loss (DIEN's, on DMIN's refined states too).

Shapes: B batch, L history length, H heads, e per-head width, D item width, S state width,
N packed rows (``Packing``), M next-click pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from camn.models.layers.attention import (
    HeadwiseLinear,
    TargetAttention,
    causal_mask,
    headwise,
    masked_softmax,
)
from camn.models.layers.head import MLP, OutputHead
from camn.models.layers.health import attention_health, health_terms
from camn.models.layers.packing import Packing
from camn.models.layers.routing import diversity_loss


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


class BehaviourRefiner(nn.Module):
    """DMIN's behaviour refiner: causal self-attention over the history, then an FFN.

    ``CausalSelfAttention`` with ``num_heads`` merged heads over the item vector (logits /
    sqrt(D), causal) + residual + LayerNorm, then ``FeedForward`` (D -> 2D ReLU -> D) +
    residual: the refined states z_t, one per real item. Causal, so z_t never sees e_{t+1}:
    the next-click loss can ask z_t for the next click.
    """

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.attention = CausalSelfAttention(width, num_heads)
        self.ffn = FeedForward(1, width)

    def forward(self, items: torch.Tensor, packing: Packing) -> torch.Tensor:
        """Packed items (N, D) -> refined states (N, D)."""
        attended, _ = self.attention(items, packing)
        return self.ffn(attended[None])[0]


class MultiInterestExtractor(nn.Module):
    """DMIN's multi-interest extractor: H self-attention heads kept apart, each pooled into one
    interest by a target attention.

    ``CausalSelfAttention`` with ``split_heads`` (per-head output projection to D, residual,
    per-head LayerNorm), a per-head ``FeedForward`` + residual, then for each head a DIN-style
    ``TargetAttention`` with a learned positional embedding (DMIN's ``din_attention_new``:
    query = Linear([target, pos_j]), MLP([q, x, q - x, q * x]) ``attention_hidden`` sigmoid ->
    1, masked softmax) -> H interests of width D. Everything after the self-attention runs on
    the packed rows, head-major (H, N, D). ``attention`` is the part CAMN acts on: its logits
    scaled per key (``key_scale``), and in CAMN's slot reading the attention itself replaced.
    """

    def __init__(
        self, width: int, num_heads: int, max_len: int, attention_hidden: Sequence[int] = (80, 40)
    ) -> None:
        super().__init__()
        self.attention = CausalSelfAttention(width, num_heads, split_heads=True)
        self.ffn = FeedForward(num_heads, width)
        self.pool = TargetAttention(
            num_heads, width, width, max_len, hidden=tuple(attention_hidden), positional=True
        )

    def forward(
        self,
        refined: torch.Tensor,
        target: torch.Tensor,
        packing: Packing,
        key_scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """refined (N, D) packed, target (B, D) -> interests (B, H, D), target-attention
        weights (B, H, L), self-attention weights (H, B, L, L). ``key_scale`` (H, B, L) scales
        head h's logit column j (``CausalSelfAttention``)."""
        heads, attention = self.attention(refined, packing, key_scale)  # (H, N, D)
        interests, weights = self.pool.forward_packed(self.ffn(heads), target, packing)
        return interests, weights, attention

    @torch.no_grad()
    def health(
        self,
        refined: torch.Tensor,
        packing: Packing,
        attention: torch.Tensor,
        key_scale: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The self-attention heads' health (``attention_health``, per head (H,)) and the
        diversity loss L_d (Eq. 7) over them, from ``forward``'s attention (H, B, L, L). The
        logits are computed again: one projection and one product, at evaluation only."""
        logits, _ = self.attention.logits(refined, packing, key_scale)
        mask = packing.mask
        allowed = causal_mask(mask) & mask[:, :, None]  # real queries, their real past keys
        terms = health_terms(*attention_health(attention, logits, allowed))
        terms["diversity"] = diversity_loss(attention.transpose(0, 1), mask)
        return terms


class NextClickLoss(nn.Module):
    """DIEN's auxiliary loss (paper Eq. 5), also DMIN's on its refined states (and CAMN's).

    For every t with a real next item, the state h_t must score the next clicked item e_{t+1}
    as a click and the drawn item e'_{t+1} as a non-click:
        L_aux = mean over real pairs of -[log s(h_t, e_{t+1}) + log(1 - s(h_t, e'_{t+1}))]
    with s = sigmoid(MLP([h, e])), the MLP being the official auxiliary_net: batch norm on the
    input, 100 -> 50 sigmoid layers (its 2-way softmax output is the 1-logit sigmoid here).
    Only real pairs are fed to the network (so padding neither enters the loss nor the batch
    norm statistics), and positives and negatives share one batch-norm batch. The official code
    averages over all B * (L - 1) slots, padding counted as zero; the mean over real pairs
    here does not shrink the loss of short histories.
    """

    def __init__(self, state_dim: int, item_dim: int, hidden: Sequence[int] = (100, 50)) -> None:
        super().__init__()
        self.net = MLP(state_dim + item_dim, tuple(hidden), 1, "sigmoid", input_norm=True)

    def forward(
        self,
        states: torch.Tensor,
        items: torch.Tensor,
        negatives: torch.Tensor,
        packing: Packing,
    ) -> torch.Tensor:
        """states (N, S), the items and the drawn negatives (N, D) at the rows of ``packing``
        -> scalar loss over the pairs (t, t + 1) whose t + 1 is real."""
        pairs = packing.next_pairs()  # rows t whose t + 1 is real
        return self.pair_loss(states[pairs], items[pairs + 1], negatives[pairs + 1])

    def pair_loss(
        self, states: torch.Tensor, clicked: torch.Tensor, drawn: torch.Tensor
    ) -> torch.Tensor:
        """The loss of M real pairs: states (M, S), next clicked and drawn items (M, D)."""
        count = len(states)
        if count == 0:
            return states.new_zeros(())
        inputs = torch.cat(
            [torch.cat([states, clicked], -1), torch.cat([states, drawn], -1)], dim=0
        )
        logits = self.net(inputs).squeeze(-1)  # (2M,)
        labels = torch.cat([logits.new_ones(count), logits.new_zeros(count)])
        return 2 * F.binary_cross_entropy_with_logits(logits, labels)


def dmin_blocks(
    width: int,
    num_heads: int,
    max_len: int,
    *,
    refiner_heads: int,
    aux_hidden: Sequence[int],
    attention_hidden: Sequence[int],
    mlp_hidden: Sequence[int],
    activation: str,
    pooled_history: bool,
    input_norm: bool,
) -> tuple[BehaviourRefiner, NextClickLoss, MultiInterestExtractor, OutputHead]:
    """DMIN's four blocks (refiner, next-click loss, extractor with ``num_heads`` heads, output
    head on [target, pooled history, interests]), built in this order: the order draws the
    initial weights, so DMIN and CAMN built from the same seed start from the same ones."""
    refiner = BehaviourRefiner(width, refiner_heads)
    next_click = NextClickLoss(width, width, aux_hidden)
    extractor = MultiInterestExtractor(width, num_heads, max_len, attention_hidden)
    head = OutputHead(
        width, num_heads * width, pooled_history=pooled_history, input_norm=input_norm,
        hidden=tuple(mlp_hidden), activation=activation,
    )
    return refiner, next_click, extractor, head
