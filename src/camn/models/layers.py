"""Layers shared by CAMN and the baselines.

Shapes: B batch, L history length, k attribute slots, d embedding size, H heads.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn


class AttributeEmbedding(nn.Module):
    """The k attribute tables as one lookup (SPEC 1: one table per slot, id 0 pad, id 1 unknown).

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


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the positions where ``mask`` is True; all-masked rows give zeros, not NaN."""
    logits = logits.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=dim)
    return torch.nan_to_num(weights, nan=0.0)


def sum_pool(vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) -> (B, D): sum over the real positions."""
    return (vectors * mask.unsqueeze(-1).to(vectors.dtype)).sum(dim=1)


class Packing:
    """The history positions a model computes, one row each: packed tensors are (N, ...).

    On the CPU the rows are the real items of ``mask`` (B, L), N = mask.sum(), in ``mask``
    order (sample-major, then position): padding, often most of a batch, costs nothing, and
    arithmetic is the cost there. On an accelerator (``dense``) the rows are all B * L
    positions: finding the real ones needs their count on the host, a synchronisation that
    costs more there than the padding's arithmetic; padding rows are computed and masked.
    Under ``torch.compile`` the rows are dense too: a row count known only from the data
    would break the graph. Either way ``unpack`` gives zeros at padding and
    ``sum_per_sample`` sums real rows only.
    """

    def __init__(self, mask: torch.Tensor, dense: bool | None = None) -> None:
        self.mask = mask
        self.batch, self.length = mask.shape
        if dense is None:
            dense = mask.device.type != "cpu" or torch.compiler.is_compiling()
        self.dense = dense
        flat = mask.reshape(-1)
        if self.dense:
            self.rows = torch.arange(flat.numel(), device=mask.device)
        else:
            self.rows = flat.nonzero().squeeze(-1)
        self.sample = self.rows // self.length  # (N,)
        self.position = self.rows % self.length  # (N,)
        self.real = flat if self.dense else None  # (N,) bool, where padding rows exist

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (N, ...)."""
        flat = x.flatten(0, 1)
        return flat if self.dense else flat.index_select(0, self.rows)

    def pack_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(H, B, L, ...) -> (H, N, ...)."""
        flat = x.flatten(1, 2)
        return flat if self.dense else flat.index_select(1, self.rows)

    def zero_padding(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, D) with padding rows set to zero (a no-op without padding rows)."""
        if self.real is None:
            return x
        return x * self.real[:, None].to(x.dtype)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, L, ...), zeros at padding."""
        shape = (self.batch, self.length, *x.shape[1:])
        if self.dense:
            return self.zero_padding(x.flatten(1)).view(shape)
        return x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(
            0, self.rows, x
        ).view(shape)

    def sum_per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, D): the sum over each sample's real rows."""
        if self.dense:
            return self.zero_padding(x).view(self.batch, self.length, -1).sum(dim=1)
        return x.new_zeros(self.batch, x.shape[-1]).index_add(0, self.sample, x)

    def next_pairs(self) -> torch.Tensor:
        """Rows r whose next row r + 1 is the same sample's next real item, (M,).

        Left-aligned histories make positions t and t + 1 of one sample consecutive rows.
        """
        following = (self.position + 1).clamp(max=self.length - 1)
        has_next = (self.position + 1 < self.length) & self.mask[self.sample, following]
        return has_next.nonzero().squeeze(-1)


def base_features(
    items: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, pooled: bool = True
) -> torch.Tensor:
    """[target, sum-pooled history, target * sum-pooled history] (B, 3D); target alone (B, D)
    with ``pooled=False``.

    The common part of the output network's input in the DIEN code base (``build_fcn_net``
    input of Model_DIN / Model_DIN_V2_Gru_Vec_attGru_Neg: item_eb, item_his_eb_sum,
    item_eb * item_his_eb_sum), which DMIN's code inherits. The user-id embedding of that code
    is left out: no model here embeds user ids (users of the test split are unseen).
    ``pooled=False`` is FuxiCTR's default for DIN, DIEN and DMIN; on small data the explicit
    product is worth a lot (docs/results.md, "Faithfulness against FuxiCTR").
    """
    if not pooled:
        return target
    return pooled_features(target, sum_pool(items, mask))


def pooled_features(target: torch.Tensor, summed: torch.Tensor) -> torch.Tensor:
    """[target, summed history, target * summed history] (B, 3D) from the summed history."""
    return torch.cat([target, summed, target * summed], dim=-1)


def base_width(width: int, pooled: bool = True) -> int:
    """Width of ``base_features`` for items of width D."""
    return (3 if pooled else 1) * width


class Dice(nn.Module):
    """Dice activation (Zhou et al., DIN, KDD 2018): p(x) * x + (1 - p(x)) * alpha * x,
    p = sigmoid(batch-normalised x)."""

    def __init__(self, num_features: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(num_features, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        p = torch.sigmoid(self.norm(x.reshape(-1, shape[-1]))).reshape(shape)
        return p * x + (1 - p) * self.alpha * x


def make_activation(name: str, num_features: int) -> nn.Module:
    if name == "dice":
        return Dice(num_features)
    if name == "prelu":
        return nn.PReLU(num_features)
    if name == "relu":
        return nn.ReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}; choose dice, prelu, relu or sigmoid")


class MLP(nn.Module):
    """Linear layers with an activation between them, ending in ``out_dim`` outputs.

    ``input_norm`` puts a BatchNorm on the input, as DMIN's and DIEN's output networks do.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (200, 80),
        out_dim: int = 1,
        activation: str = "dice",
        input_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(in_dim)] if input_norm else []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), make_activation(activation, size)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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

    For head h and position j (SPEC 1, "interest extractor", from DMIN):
        query_j = Linear_h([target || pos_emb_j])            (only with ``positional``)
        score_j = MLP_h([query_j, x_j, query_j - x_j, query_j * x_j])  -> hidden -> 1
        a = masked softmax of the scores over the real positions (DIN: no softmax, raw scores
            zeroed at padding, when ``softmax=False``)
        pooled_h = sum_j a_j x_j
    Without ``positional`` the query is Linear_h(target) (identity when the target already has
    the item's width and ``project_target=False``, as in DIN).
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

    def _query_parts(
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

    def forward(
        self, sequences: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sequences (B, H, L, d), target (B, target_dim), mask (B, L) -> pooled (B, H, d),
        weights (B, H, L).

        On the CPU only the real positions are scored (``forward_packed``): padding is often
        most of a batch and arithmetic is the cost there. On an accelerator every position is
        scored (``forward_dense``): packing needs the count of real positions on the host, a
        synchronisation that costs more there than the padding's arithmetic.
        """
        packing = Packing(mask)
        if packing.dense:
            return self.forward_dense(sequences, target, mask)
        return self.forward_packed(packing.pack_heads(sequences.transpose(0, 1)), target, packing)

    def forward_dense(
        self, sequences: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` scoring every position, padding included (then masked): no host sync."""
        per_sample, per_position = self._query_parts(target, sequences.shape[2])
        query = per_sample if per_position is None else per_sample + per_position  # (B, H, ., d)
        layers = [*self.hidden, self.score]
        w_q, w_x, w_diff, w_prod = layers[0].weight.split(self.dim, dim=1)  # (H, d, h1) each
        w_query = w_q + w_diff
        item_terms = torch.cat([sequences, query * sequences], dim=-1)  # (B, H, L, 2d)
        hidden = torch.einsum("bhli,hio->bhlo", item_terms, torch.cat([w_x - w_diff, w_prod], 1))
        hidden = hidden + torch.einsum("bhld,hdo->bhlo", per_sample, w_query)
        if per_position is not None:
            hidden = hidden + torch.einsum("hld,hdo->hlo", per_position, w_query)
        hidden = hidden + layers[0].bias[:, None, :]  # (B, H, L, h1)
        for layer in layers[1:]:
            hidden = torch.einsum("bhli,hio->bhlo", torch.sigmoid(hidden), layer.weight)
            hidden = hidden + layer.bias[:, None, :]
        scores = hidden.squeeze(-1)  # (B, H, L)
        real = mask[:, None, :]
        weights = masked_softmax(scores, real) if self.softmax else scores * real.to(scores.dtype)
        return torch.einsum("bhl,bhld->bhd", weights, sequences), weights

    def forward_packed(
        self, packed: torch.Tensor, target: torch.Tensor, packing: Packing
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same from packed rows: packed (H, N, d) holds the sequences at the N rows of
        ``packing`` (the real positions on the CPU), head-major.

        The first scoring layer on [q, x, q - x, q * x] is split into its weight blocks,
        q (W_q + W_diff) + [x, q * x] [W_x - W_diff; W_prod], and the q term is computed from
        the query's per-sample and per-position parts: only [x, q * x] is multiplied per
        position, and padding positions cost nothing.
        """
        mask, batch, length = packing.mask, packing.batch, packing.length
        rows, sample, position = packing.rows, packing.sample, packing.position  # (N,) each
        per_sample, per_position = self._query_parts(target, length)
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
        heads = packed.shape[0]
        fill = float("-inf") if self.softmax else 0.0
        scores = hidden.new_full((heads, batch * length), fill)
        scores = scores.index_copy(1, rows, hidden.squeeze(-1)).view(heads, batch, length)
        weights = masked_softmax(scores, mask[None]) if self.softmax else scores  # (H, B, L)
        kept = weights.flatten(1).index_select(1, rows)  # (H, N)
        pooled = packed.new_zeros(heads, batch, packed.shape[-1])
        pooled = pooled.index_add(1, sample, kept.unsqueeze(-1) * packed)  # (H, B, d)
        return pooled.transpose(0, 1), weights.transpose(0, 1)


def headwise(layer: HeadwiseLinear, x: torch.Tensor) -> torch.Tensor:
    """Apply a HeadwiseLinear to head-major input (H, ..., in) -> (H, ..., out) as one bmm."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (H, N, in)
    if layer.bias is None:
        out = flat @ layer.weight
    else:
        out = torch.baddbmm(layer.bias[:, None], flat, layer.weight)
    return out.view(*x.shape[:-1], layer.weight.shape[-1])  # also for 0 rows


@torch.no_grad()
def attention_health(
    attention: torch.Tensor, logits: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether attention heads single anything out: per head, normalised entropy and |logit|.

    attention and logits (H, ..., K) are head-major with the keys last (logits: what the
    softmax saw, any scaling included); allowed (..., K) bool marks the keys each row may
    attend (real keys, not in the future for a causal block; no key for a padding query).
    Returns two detached (H,) tensors:

    - entropy_h: over the rows with at least 2 allowed keys, the mean of the row's entropy
      divided by log(its number of allowed keys): 1 is uniform over what the row may see, 0 is
      all weight on one key;
    - abs_logit_h: the mean |logit| over the allowed (row, key) entries (near 0: uniform).

    NaN where there is nothing to average (every row has at most one allowed key).
    """
    keys = allowed.sum(-1)  # (...)
    rows = (keys > 1).to(attention.dtype)
    entropy = torch.special.entr(attention).sum(-1) / keys.clamp(min=2).log()  # (H, ...)
    entropy = (entropy * rows).flatten(1).sum(1) / rows.sum()
    magnitude = torch.where(allowed, logits.abs(), 0.0).flatten(1).sum(1)
    return entropy, magnitude / allowed.sum()
