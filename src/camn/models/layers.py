"""Layers shared by CAMN and the baselines: every piece that more than one model uses.

Sections: embeddings and pooling; packed rows; activations, MLP and the output head;
headwise maps and target attention; multi-interest read-out; DIEN's next-click loss; DMIN's
behaviour refiner and multi-interest extractor (which CAMN builds on); CAMN's routing and
diversity loss (which ``camn-standalone`` shares); attention health. A model module imports
from here, from ``base`` and from ``registry``, never from another model module.

Shapes: B batch, L history length, k attribute slots, d embedding size, D = k*d item width,
H heads, N packed rows (``Packing``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------- embeddings and pooling


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


def item_vectors(history: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, k, d), (B, k, d) -> history items (B, L, D), target item (B, D): the k attribute
    embeddings concatenated, every model's item vector (SPEC 3)."""
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


# ---------------------------------------------------------------------------------- packed rows


PACKED_ROWS, PACKED_PAIRS = "packed_rows", "packed_pairs"


def steps_every_position(mask: torch.Tensor) -> bool:
    """Whether a layer should compute every position of ``mask`` (B, L), padding masked,
    rather than find the real ones itself: on an accelerator (finding them needs their count
    on the host, a synchronisation) and under ``torch.compile`` (a count found inside the graph
    breaks it). On the CPU, eager, only the real positions are worth computing."""
    return mask.device.type != "cpu" or torch.compiler.is_compiling()


def packed_positions(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The real rows of ``mask`` (B, L) and their next-click pairs, as batch entries.

    Found outside the model (the trainer's batches carry them for models with ``packs_rows``,
    from the host's copy of the lengths), they reach ``Packing.of`` as inputs: no device
    synchronisation finds them, and their count is an input's size, not a value found inside
    the graph, so ``torch.compile`` traces the packed rows without a graph break.
    """
    packing = Packing(mask, dense=False)
    return {PACKED_ROWS: packing.rows, PACKED_PAIRS: packing.next_pairs()}


class Packing:
    """The history positions a model computes, one row each: packed tensors are (N, ...).

    On the CPU the rows are the real items of ``mask`` (B, L), N = mask.sum(), in ``mask``
    order (sample-major, then position): padding, often most of a batch, costs nothing, and
    arithmetic is the cost there. On an accelerator (``dense``) the rows are all B * L
    positions: finding the real ones needs their count on the host, a synchronisation that
    costs more there than the padding's arithmetic; padding rows are computed and masked.
    Under ``torch.compile`` the rows are dense too: a row count found inside the graph would
    break it. A batch that brings its rows (``packed_positions``, ``Packing.of``: the
    trainer's, on every device) is packed everywhere, without either cost. Either way
    ``unpack`` gives zeros at padding and ``sum_per_sample`` sums real rows only.
    """

    def __init__(
        self, mask: torch.Tensor, dense: bool | None = None,
        rows: torch.Tensor | None = None, pairs: torch.Tensor | None = None,
    ) -> None:
        self.mask = mask
        self.batch, self.length = mask.shape
        if dense is None:
            dense = rows is None and steps_every_position(mask)
        self.dense = dense
        flat = mask.reshape(-1)
        if self.dense:
            self.rows = torch.arange(flat.numel(), device=mask.device)
        else:
            self.rows = flat.nonzero().squeeze(-1) if rows is None else rows
        self.pairs = None if self.dense else pairs
        self.sample = self.rows // self.length  # (N,)
        self.position = self.rows % self.length  # (N,)
        self.real = flat if self.dense else None  # (N,) bool, where padding rows exist

    @classmethod
    def of(cls, batch: dict[str, torch.Tensor]) -> Packing:
        """The packing of a batch's history, from its ``packed_positions`` where it has them."""
        return cls(batch["mask"], rows=batch.get(PACKED_ROWS), pairs=batch.get(PACKED_PAIRS))

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
        if self.pairs is not None:
            return self.pairs
        following = (self.position + 1).clamp(max=self.length - 1)
        has_next = (self.position + 1 < self.length) & self.mask[self.sample, following]
        return has_next.nonzero().squeeze(-1)


# --------------------------------------------------------- activations, MLP and the output head


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


def mlp_layers(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: str,
    input_norm: bool,
    dropout: float = 0.0,
) -> list[nn.Module]:
    """[BatchNorm(in_dim)] (with ``input_norm``), then Linear + activation (+ dropout) per
    hidden size, then Linear(-> out_dim): the layers of ``MLP`` and ``OutputHead``."""
    layers: list[nn.Module] = [nn.BatchNorm1d(in_dim)] if input_norm else []
    width = in_dim
    for size in hidden:
        layers += [nn.Linear(width, size), make_activation(activation, size)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_dim))
    return layers


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
        self.net = nn.Sequential(
            *mlp_layers(in_dim, hidden, out_dim, activation, input_norm, dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class OutputHead(nn.Module):
    """The output network of every model: its inputs -> an MLP -> one click logit.

    Inputs, concatenated in this order: the target item t (D), the sum-pooled history s (D) and
    t * s (D) (``pooled_history``), then the model's own features (its interest vector(s), or
    the fields of a static model). Then BatchNorm on that input (``input_norm``), hidden layers
    ``hidden`` with ``activation``, a linear layer to one logit.

    The default, shared by every sequence model so that they differ in their sequence modules
    only, is DMIN's output network (official ``build_fcn_net`` of the DIEN code base, less its
    user-id embedding: no model here embeds user ids, users of the test split are unseen):
    [t, s, t * s, features], BatchNorm, 200 -> 80 Dice -> 1. ``pooled_history=False`` leaves
    [t, features], the form of the DIN and CAMN papers and FuxiCTR's default; on small data the
    explicit product t * s is worth a lot (docs/results.md, "Faithfulness against FuxiCTR").
    ``with_target=False`` (the static models, whose fields already hold the target) feeds the
    features alone.
    """

    def __init__(
        self,
        item_width: int,
        feature_width: int,
        *,
        pooled_history: bool = True,
        input_norm: bool = True,
        hidden: Sequence[int] = (200, 80),
        activation: str = "dice",
        with_target: bool = True,
    ) -> None:
        super().__init__()
        if pooled_history and not with_target:
            raise ValueError("pooled_history needs the target (t * s is one of its inputs)")
        self.with_target, self.pooled_history = with_target, pooled_history
        target_width = item_width if with_target else 0
        pooled_width = 2 * item_width if pooled_history else 0
        self.in_dim = target_width + pooled_width + feature_width
        self.net = nn.Sequential(*mlp_layers(self.in_dim, hidden, 1, activation, input_norm))

    def forward(
        self,
        features: torch.Tensor,
        target: torch.Tensor | None = None,
        history_sum: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """features (B, F), target (B, D), history_sum (B, D): the history's real items summed
        (``pool_history`` or ``Packing.sum_per_sample``; unused without ``pooled_history``)
        -> logits (B,)."""
        parts = [target] if self.with_target else []
        if self.pooled_history:
            parts += [history_sum, target * history_sum]
        inputs = torch.cat([*parts, features], dim=-1) if parts else features
        return self.net(inputs).squeeze(-1)


# ----------------------------------------------------------- headwise maps and target attention


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

    def scores(
        self, sequences: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The raw scores before any softmax, (B, H, L), zero at padding (what ``forward``'s
        weights are without ``softmax``): for the attention's health."""
        packing = Packing(mask)
        if packing.dense:
            return self.dense_scores(sequences, target) * mask[:, None, :].to(sequences.dtype)
        packed = packing.pack_heads(sequences.transpose(0, 1))
        rows = self.packed_scores(packed, target, packing)
        return self.scatter(rows, packing, 0.0).transpose(0, 1)

    def forward_dense(
        self, sequences: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` scoring every position, padding included (then masked): no host sync."""
        scores = self.dense_scores(sequences, target)  # (B, H, L)
        real = mask[:, None, :]
        weights = masked_softmax(scores, real) if self.softmax else scores * real.to(scores.dtype)
        return torch.einsum("bhl,bhld->bhd", weights, sequences), weights

    def dense_scores(self, sequences: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """sequences (B, H, L, d), target -> the scores of every position (B, H, L)."""
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
        return hidden.squeeze(-1)

    def forward_packed(
        self, packed: torch.Tensor, target: torch.Tensor, packing: Packing
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same from packed rows: packed (H, N, d) holds the sequences at the N rows of
        ``packing`` (the real positions on the CPU), head-major."""
        fill = float("-inf") if self.softmax else 0.0
        scores = self.scatter(self.packed_scores(packed, target, packing), packing, fill)
        weights = masked_softmax(scores, packing.mask[None]) if self.softmax else scores
        kept = weights.flatten(1).index_select(1, packing.rows)  # (H, N)
        pooled = packed.new_zeros(packed.shape[0], packing.batch, packed.shape[-1])
        pooled = pooled.index_add(1, packing.sample, kept.unsqueeze(-1) * packed)  # (H, B, d)
        return pooled.transpose(0, 1), weights.transpose(0, 1)

    def packed_scores(
        self, packed: torch.Tensor, target: torch.Tensor, packing: Packing
    ) -> torch.Tensor:
        """packed (H, N, d) -> the scores of the N rows (H, N).

        The first scoring layer on [q, x, q - x, q * x] is split into its weight blocks,
        q (W_q + W_diff) + [x, q * x] [W_x - W_diff; W_prod], and the q term is computed from
        the query's per-sample and per-position parts: only [x, q * x] is multiplied per
        position, and padding positions cost nothing.
        """
        sample, position = packing.sample, packing.position  # (N,) each
        per_sample, per_position = self._query_parts(target, packing.length)
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

    @staticmethod
    def scatter(rows: torch.Tensor, packing: Packing, fill: float) -> torch.Tensor:
        """Per-row scores (H, N) -> (H, B, L), ``fill`` at the positions without a row."""
        full = rows.new_full((rows.shape[0], packing.batch * packing.length), fill)
        return full.index_copy(1, packing.rows, rows).view(-1, packing.batch, packing.length)


def headwise(layer: HeadwiseLinear, x: torch.Tensor) -> torch.Tensor:
    """Apply a HeadwiseLinear to head-major input (H, ..., in) -> (H, ..., out) as one bmm."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (H, N, in)
    if layer.bias is None:
        out = flat @ layer.weight
    else:
        out = torch.baddbmm(layer.bias[:, None], flat, layer.weight)
    return out.view(*x.shape[:-1], layer.weight.shape[-1])  # also for 0 rows



# --------------------------------------------------- multi-interest read-out (MIND, ComiRec-SA)


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


# ------------------------------------------------------------------ the next-click loss (DIEN)


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
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """states (B, L, H), items and negatives (B, L, D), mask (B, L) -> scalar loss."""
        pairs = mask[:, 1:]  # (B, L-1): item t+1 is real (so item t is too, left-aligned)
        h = states[:, :-1][pairs]  # (N, H)
        return self.pair_loss(h, items[:, 1:][pairs], negatives[:, 1:][pairs])

    def packed(
        self,
        states: torch.Tensor,
        items: torch.Tensor,
        negatives: torch.Tensor,
        packing: Packing,
    ) -> torch.Tensor:
        """The same on packed rows: states (N, H), items and negatives (N, D) -> scalar loss."""
        pairs = packing.next_pairs()  # rows t whose t + 1 is real
        return self.pair_loss(states[pairs], items[pairs + 1], negatives[pairs + 1])

    def pair_loss(
        self, states: torch.Tensor, clicked: torch.Tensor, drawn: torch.Tensor
    ) -> torch.Tensor:
        """The loss of N real pairs: states (N, H), next clicked and drawn items (N, D)."""
        count = len(states)
        if count == 0:
            return states.new_zeros(())
        inputs = torch.cat(
            [torch.cat([states, clicked], -1), torch.cat([states, drawn], -1)], dim=0
        )
        logits = self.net(inputs).squeeze(-1)  # (2N,)
        labels = torch.cat([logits.new_ones(count), logits.new_zeros(count)])
        return 2 * F.binary_cross_entropy_with_logits(logits, labels)


# --------------------------- DMIN's behaviour refiner and multi-interest extractor (DMIN, CAMN)


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
        entropy, abs_logit = attention_health(attention, logits, allowed)
        diversity = diversity_loss(attention.transpose(0, 1), mask)
        return {"attention_entropy": entropy, "attention_abs_logit": abs_logit,
                "diversity": diversity}


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


# ------------------------------------ CAMN's routing and diversity loss (camn, camn-standalone)


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


# ----------------------------------------------------------------------------- attention health


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


@torch.no_grad()
def unnormalised_health(
    weights: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention_health`` of weights that are no distribution (DIN's raw scores, any sign).

    weights (H, ..., K) are the logits as they are; the entropy is that of the shares
    |w_j| / sum |w| over the allowed keys: a concentration measure of the unnormalised weights
    (1 = equal magnitudes, 0 = one key holds all), not the entropy of a softmax, which these
    weights never pass through. A row whose weights are all 0 has shares 0.
    """
    magnitude = torch.where(allowed, weights.abs(), 0.0)
    total = magnitude.sum(-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)
    return attention_health(magnitude / total, weights, allowed)


@torch.no_grad()
def target_attention_health(
    attention: TargetAttention,
    sequences: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention_health`` per head (H,) of the weights (B, H, L) that ``attention`` gave on
    sequences (B, H, L, d), target and mask (B, L), the real keys.

    Without ``softmax`` the weights are the raw scores (``unnormalised_health``). With it the
    logits are the scores the softmax normalised (``TargetAttention.scores``: one more pass of
    its MLP, at evaluation).
    """
    heads = weights.transpose(0, 1)  # (H, B, L)
    if not attention.softmax:
        return unnormalised_health(heads, mask)
    scores = attention.scores(sequences, target, mask)  # one more pass of its MLP
    return attention_health(heads, scores.transpose(0, 1), mask)
