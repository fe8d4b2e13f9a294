"""Attention: masks, masked softmax, per-head linear maps, target attention, label-aware read-out.

Shapes: B batch, L history length, H heads, d the width a head reads, N packed rows
(``Packing``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from camn.models.layers.health import attention_health, unnormalised_health
from camn.models.layers.packing import Packing


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the positions where ``mask`` is True; all-masked rows give zeros, not NaN."""
    logits = logits.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=dim)
    return torch.nan_to_num(weights, nan=0.0)


def causal_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) real-item mask -> (B, L, L) bool: query i may attend key j iff j <= i and j is real.

    Boolean, used with ``masked_fill(-inf)``: blocked entries get exactly zero weight (a float
    0/1 mask, as FuxiCTR's DMIN passes to PyTorch's attention, is added to the logits and blocks
    nothing). The official code masks only the future; with left-aligned histories the padding
    mask changes nothing for real queries and keeps padding keys out of the padding rows too.
    """
    length = mask.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return lower[None] & mask[:, None, :]


class HeadwiseLinear(nn.Module):
    """H independent linear maps applied at once: (..., H, in) -> (..., H, out)."""

    def __init__(self, num_heads: int, in_dim: int, out_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_heads, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num_heads, out_dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("...hi,hio->...ho", x, self.weight)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        h, i, o = self.weight.shape
        return f"heads={h}, in_dim={i}, out_dim={o}, bias={self.bias is not None}"


class TargetAttention(nn.Module):
    """DIN-style target attention, H heads with separate weights, computed as one tensor op.

    For head h and position j (DMIN's ``din_attention_new``; without positions, DIN's
    activation unit):
        query_j = Linear_h([target || pos_emb_j])            (only with ``positional``)
        score_j = MLP_h([query_j, x_j, query_j - x_j, query_j * x_j])  -> hidden -> 1
        a = masked softmax of the scores over the real positions (DIN: no softmax, raw scores
            zeroed at padding, when ``softmax=False``)
        pooled_h = sum_j a_j x_j
    Without ``positional`` the query is Linear_h(target) (identity when the target already has
    the item's width and ``project_target=False``, as in DIN).

    The positions scored are the rows of a ``Packing``: on the CPU only the real ones (padding,
    often most of a batch, costs nothing), on an accelerator and under ``torch.compile`` every
    one, padding scored and then masked. Both give the same weights.
    """

    def __init__(
        self,
        num_heads: int,
        dim: int,
        target_dim: int,
        max_len: int,
        hidden: Sequence[int] = (80, 40),
        positional: bool = True,
        softmax: bool = True,
        project_target: bool = True,
    ) -> None:
        super().__init__()
        if not project_target and (positional or target_dim != dim):
            raise ValueError("project_target=False needs positional=False and target_dim == dim")
        self.num_heads, self.dim, self.softmax = num_heads, dim, softmax
        self.position = nn.Parameter(torch.zeros(num_heads, max_len, dim)) if positional else None
        query_in = target_dim + (dim if positional else 0)
        self.query = HeadwiseLinear(num_heads, query_in, dim) if project_target else None
        widths = [4 * dim, *hidden]
        self.hidden = nn.ModuleList(
            HeadwiseLinear(num_heads, a, b) for a, b in itertools.pairwise(widths)
        )
        self.score = HeadwiseLinear(num_heads, widths[-1], 1)
        if self.position is not None:
            nn.init.normal_(self.position, std=1e-2)

    def forward(
        self, sequences: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sequences (B, H, L, d), target (B, target_dim), mask (B, L) -> pooled (B, H, d),
        weights (B, H, L), zero at padding."""
        packing = Packing(mask)
        return self.forward_packed(packing.pack_heads(sequences.transpose(0, 1)), target, packing)

    def forward_packed(
        self, packed: torch.Tensor, target: torch.Tensor, packing: Packing
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` on sequences already packed: packed (H, N, d) holds them at the N rows
        of ``packing``, head-major (DMIN's extractor keeps its heads packed)."""
        fill = float("-inf") if self.softmax else 0.0
        scores = packing.unpack_heads(self.row_scores(packed, target, packing), fill)  # (H, B, L)
        weights = masked_softmax(scores, packing.mask[None]) if self.softmax else scores
        kept = packing.pack_heads(weights)  # (H, N)
        pooled = packing.sum_per_sample(kept.unsqueeze(-1) * packed)  # (H, B, d)
        return pooled.transpose(0, 1), weights.transpose(0, 1)

    def scores(
        self, sequences: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The raw scores before any softmax, (B, H, L), zero at padding (what ``forward``'s
        weights are without ``softmax``)."""
        packing = Packing(mask)
        rows = self.row_scores(packing.pack_heads(sequences.transpose(0, 1)), target, packing)
        return packing.unpack_heads(rows).transpose(0, 1)

    @torch.no_grad()
    def health(
        self,
        sequences: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``attention_health`` per head (H,) of the weights (B, H, L) that ``forward`` gave on
        sequences (B, H, L, d), target and mask (B, L), the real keys.

        Without ``softmax`` the weights are the raw scores (``unnormalised_health``). With it
        the logits are the scores the softmax normalised (``scores``: one more pass of the
        MLP, at evaluation only).
        """
        heads = weights.transpose(0, 1)  # (H, B, L)
        if not self.softmax:
            return unnormalised_health(heads, mask)
        return attention_health(heads, self.scores(sequences, target, mask).transpose(0, 1), mask)

    def query_parts(
        self, target: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, target_dim) -> the query's per-sample part (B, H, 1, d) and per-position part
        (H, L, d) (None without positions); the query is their sum.

        Linear([target || pos_j]) = target W_t + pos_j W_p + b: the target part is computed once
        per sample and the position part once per position, not once per (sample, position).
        """
        if self.query is None:
            return target[:, None, None, :], None
        weight, bias = self.query.weight, self.query.bias  # (H, in, d), (H, d)
        target_dim = target.shape[-1]
        per_sample = torch.einsum("bt,hto->bho", target, weight[:, :target_dim]) + bias
        if self.position is None:
            return per_sample[:, :, None, :], None
        per_position = torch.einsum(
            "hld,hdo->hlo", self.position[:, :length], weight[:, target_dim:]
        )
        return per_sample[:, :, None, :], per_position

    def row_scores(
        self, packed: torch.Tensor, target: torch.Tensor, packing: Packing
    ) -> torch.Tensor:
        """packed (H, N, d) -> the scores of the N rows (H, N).

        The first scoring layer on [q, x, q - x, q * x] is split into its weight blocks,
        q (W_q + W_diff) + [x, q * x] [W_x - W_diff; W_prod], and the q term is computed from
        the query's per-sample and per-position parts: only [x, q * x] is multiplied per row.
        """
        sample, position = packing.sample, packing.position  # (N,) each
        per_sample, per_position = self.query_parts(target, packing.length)
        per_sample = per_sample[:, :, 0].transpose(0, 1)  # (H or 1, B, d)
        query = per_sample.index_select(1, sample)  # (H or 1, N, d)
        if per_position is not None:
            query = query + per_position.index_select(1, position)
        layers = [*self.hidden, self.score]
        w_q, w_x, w_diff, w_prod = layers[0].weight.split(self.dim, dim=1)  # (H, d, h1) each
        w_query = w_q + w_diff
        hidden = torch.baddbmm(
            (per_sample @ w_query).index_select(1, sample) + layers[0].bias[:, None],
            torch.cat([packed, query * packed], dim=-1),  # (H, N, 2d)
            torch.cat([w_x - w_diff, w_prod], dim=1),
        )  # (H, N, h1)
        if per_position is not None:
            hidden = hidden + (per_position @ w_query).index_select(1, position)
        for layer in layers[1:]:
            hidden = headwise(layer, torch.sigmoid(hidden))
        return hidden.squeeze(-1)


def headwise(layer: HeadwiseLinear, x: torch.Tensor) -> torch.Tensor:
    """Apply a HeadwiseLinear to head-major input (H, ..., in) -> (H, ..., out) as one bmm."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (H, N, in)
    if layer.bias is None:
        out = flat @ layer.weight
    else:
        out = torch.baddbmm(layer.bias[:, None], flat, layer.weight)
    return out.view(*x.shape[:-1], layer.weight.shape[-1])  # also for 0 rows


def label_aware_attention(
    interests: torch.Tensor,
    target: torch.Tensor,
    pow_p: float = 1.0,
    hard: bool = False,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MIND's label-aware attention: v_u = V_u softmax(pow(V_u^T e_i, p));
    interests (B, K, D'), target (B, D') -> read-out (B, D'), weights (B, K).

    ``hard`` is the limit p -> inf (the interest closest to the target, one-hot weights, as
    ComiRec's training read-out). ``valid`` (B, K) masks interests a user does not have.
    MIND and ComiRec-SA (with p = 1) read their interests out with it.
    """
    scores = torch.einsum("bkd,bd->bk", interests, target)  # (B, K)
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    if hard:
        best = scores.masked_fill(~valid, float("-inf")).argmax(dim=-1)
        weights = F.one_hot(best, scores.shape[-1]).to(scores.dtype)
    else:
        weights = masked_softmax(scores if pow_p == 1 else scores.pow(pow_p), valid)
    return torch.einsum("bk,bkd->bd", weights, interests), weights

