"""DIEN: Deep Interest Evolution Network.

Zhou, Mou, Fan, Pi, Bian, Zhou, Zhu, Gai. "Deep Interest Evolution Network for Click-Through
Rate Prediction", AAAI 2019, https://doi.org/10.1609/aaai.v33i01.33015941. Official code:
github.com/mouna99/dien (Model_DIN_V2_Gru_Vec_attGru_Neg).

Shapes: B batch, L history length, k attribute slots, d embedding size, D = k*d item width,
H GRU state size (= D, as the official code's HIDDEN_SIZE equals its item width).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import (
    NextClickLoss,
    OutputHead,
    Packing,
    TargetAttention,
    health_terms,
    item_vectors,
    pool_history,
    steps_every_position,
)
from camn.models.registry import register

# The share of real positions up to which the recurrences step the real items only: fuller
# batches are stepped whole, where packing costs more than it saves (docs/performance.md,
# "packed recurrences (DIEN)").
PACKED_UP_TO = 0.75


class LengthSortedRows:
    """The real positions of a left-aligned batch in ``nn.utils.rnn.PackedSequence`` order.

    Samples sorted by history length, longest first; row s of the packed data is step t of
    sorted sample i, time-major (every sample's step 0, then every step 1 ...), so that step
    t is the ``steps[t]`` longest histories' rows, one contiguous slice. A recurrence run on
    these rows does the work of the real items only; samples without history have no row.
    Found from ``mask`` on the host: the CPU's layout (see ``DIEN.interest_states``).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        self.batch, self.length = mask.shape
        self.order = torch.argsort(mask.sum(1), descending=True, stable=True)  # (B,)
        sorted_mask = mask[self.order]
        steps = sorted_mask.sum(0)
        self.steps = steps[steps > 0]  # (T,) int64 on the host, PackedSequence's batch_sizes
        time, sample = sorted_mask.t().nonzero(as_tuple=True)  # time-major
        self.rows = self.order[sample] * self.length + time  # (S,) rows of the (B * L) grid

    def pack(self, x: torch.Tensor) -> PackedSequence:
        """(B, L, ...) -> the packed sequence of its real positions."""
        return PackedSequence(x.flatten(0, 1).index_select(0, self.rows), self.steps)

    def unpack(self, data: torch.Tensor) -> torch.Tensor:
        """Packed rows (S, ...) -> (B, L, ...), zeros at padding."""
        full = data.new_zeros(self.batch * self.length, *data.shape[1:])
        return full.index_copy(0, self.rows, data).view(self.batch, self.length, *data.shape[1:])

    def unsort(self, last: torch.Tensor) -> torch.Tensor:
        """Per sorted sample (steps[0], ...) -> per sample (B, ...), zeros without history."""
        full = last.new_zeros(self.batch, *last.shape[1:])
        return full.index_copy(0, self.order[: len(last)], last)


class AUGRU(nn.Module):
    """GRU with attentional update gate (DIEN Eq. 6-7), the interest evolving layer.

    With the GRU of DIEN Eq. 1-4 (the form nn.GRU computes):
        u_t = sigmoid(W_u i_t + U_u h_{t-1} + b_u),  r_t = sigmoid(W_r i_t + U_r h_{t-1} + b_r)
        h~_t = tanh(W_h i_t + r_t * (U_h h_{t-1} + b_hh) + b_h)
        u'_t = a_t * u_t                               (Eq. 6)
        h_t = (1 - u'_t) * h_{t-1} + u'_t * h~_t       (Eq. 7)
    The paper's equations are followed; the official VecAttGRUCell instead scales the TF
    keep-gate, h_t = (1 - a_t) u_t h_{t-1} + (1 - (1 - a_t) u_t) h~_t, which overwrites the state
    when a_t = 0. Here a_t = 0 (every padding step) leaves the state exactly unchanged, so
    running the recurrence over the real steps only (``forward`` with ``rows``) gives the same
    state.
    The input projections of all steps are one matrix product; only the recurrence loops over t.
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.input_map = nn.Linear(input_dim, 3 * hidden_dim)
        self.state_map = nn.Linear(hidden_dim, 3 * hidden_dim)

    def step(
        self, projected: torch.Tensor, weight: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """One step t: projected input (n, 3H), a_t (n, 1), h_{t-1} (n, H) -> h_t (n, H)."""
        gates = [2 * self.hidden_dim, self.hidden_dim]
        x_ur, x_h = projected.split(gates, dim=-1)
        h_ur, h_h = self.state_map(state).split(gates, dim=-1)
        update, reset = torch.sigmoid(x_ur + h_ur).chunk(2, dim=-1)  # (n, H) each
        candidate = torch.tanh(torch.addcmul(x_h, reset, h_h))
        return torch.addcmul(state, update * weight, candidate - state)  # Eq. 6-7

    def forward(
        self, inputs: torch.Tensor, attention: torch.Tensor, rows: LengthSortedRows | None = None
    ) -> torch.Tensor:
        """inputs (B, L, I), attention (B, L) in [0, 1] -> final state (B, H).

        With ``rows`` the inputs are packed, (S, I) and (S,) in ``rows``' order (at least one
        row), and only the real steps run: step t updates the ``rows.steps[t]`` histories
        still running, the others keep the state after their last item."""
        if rows is None:
            projected = self.input_map(inputs).unbind(1)  # L x (B, 3H)
            weights = attention.unsqueeze(-1).unbind(1)  # L x (B, 1)
            return self.recur(projected, weights, inputs.new_zeros(len(inputs), self.hidden_dim))
        steps = rows.steps.tolist()
        projected = self.input_map(inputs).split(steps)  # T x (n_t, 3H)
        weights = attention.unsqueeze(-1).split(steps)  # T x (n_t, 1)
        state = inputs.new_zeros(steps[0], self.hidden_dim)  # every history with a row
        return rows.unsort(self.recur(projected, weights, state))

    def recur(
        self, projected: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
        state: torch.Tensor,
    ) -> torch.Tensor:
        """Eq. 6-7 over the steps: the projected inputs (n_t, 3H) and a_t (n_t, 1) of step t
        update the first n_t rows of ``state`` (n, H) (n_t never grows) -> the final states."""
        for step, weight in zip(projected, weights, strict=True):
            running = len(step)
            updated = self.step(step, weight, state[:running])
            state = torch.cat([updated, state[running:]]) if running < len(state) else updated
        return state


@register("dien", display="DIEN")
class DIEN(CTRModel):
    """DIEN (Zhou et al., AAAI 2019): GRU interest extractor + auxiliary loss, AUGRU evolution.

    1. Interest extractor: a GRU (state size H = D) over the history item vectors (Eq. 1-4).
       Histories are left-aligned, so the states at real positions never see padding; padding
       states are masked everywhere after.
    2. Auxiliary loss (Eq. 5, ``layers.NextClickLoss``): h_t scores the next click e_{t+1}
       above the drawn ``history_negative`` at t+1; weight ``aux_weight`` (official: 1).
       Computed when the forward pass is asked for extra losses (the trainer's batches).
    3. Attention (Eq. 6 a_t): a_t = masked softmax over real positions of
       MLP([q, h_t, q - h_t, q * h_t]) (80 -> 40, sigmoid, as din_fcn_attention) with q a linear
       projection of the target to H (the official code adds a PReLU after this projection).
    4. Interest evolution: AUGRU driven by a_t; its final state (the state after the last real
       item: padding steps have a_t = 0 and keep it).
    5. Output network: the shared ``layers.OutputHead`` on [target, sum-pooled history,
       target * sum-pooled history, final state] (official input, less the user-id
       embedding), batch norm, 200 -> 80 -> 1 with Dice (official ``use_dice=True``). No
       per-model tuning was done. ``pooled_history=False`` leaves [target, final state],
       FuxiCTR's default (``enable_sum_pooling=False``).

    Attention health (``evaluate``, H = 1): that of a_t (step 3), a softmax over
    the real positions: its entropy relative to uniform over them and the mean |score| its
    softmax saw (``layers.target_attention_health``).
    """

    needs_history_negatives = True
    search_space: ClassVar[dict[str, object]] = {
        "aux_weight": {"low": 0.05, "high": 2.0, "log": True},
    }

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 18,
        aux_weight: float = 1.0,
        attention_hidden: Sequence[int] = (80, 40),
        aux_hidden: Sequence[int] = (100, 50),
        mlp_hidden: Sequence[int] = (200, 80),
        activation: str = "dice",
        pooled_history: bool = True,
        input_norm: bool = True,
    ) -> None:
        super().__init__(spec, embed_dim)
        width = self.num_slots * embed_dim
        self.aux_weight = aux_weight
        self.extractor = nn.GRU(width, width, batch_first=True)
        self.next_click = NextClickLoss(width, width, aux_hidden)
        self.attention = TargetAttention(
            1, width, width, spec.max_len, hidden=tuple(attention_hidden), positional=False
        )
        self.evolution = AUGRU(width, width)
        self.head = OutputHead(
            width, width, pooled_history=pooled_history, input_norm=input_norm,
            hidden=tuple(mlp_hidden), activation=activation,
        )
        self.add_side_features(self.head)

    def run(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """logits (B,), and what the losses and the health read: items (B, L, D), target
        (B, D), mask (B, L), GRU states (B, L, H) and attention a_t (B, 1, L)."""
        items, target = item_vectors(*self.embed(batch))  # (B, L, D), (B, D)
        mask = batch["mask"]
        states, weights, final = self.interest_states(items, target, mask)
        logits = self.head(final, target, pool_history(items, mask), self.side_features(batch))
        return logits, (items, target, mask, states, weights)

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        logits, (items, _, mask, states, _) = self.run(batch)
        if not extra_losses or self.aux_weight == 0:
            return ModelOutput(logits, self.no_aux_loss(logits))
        negatives = self.embedding(self.history_negatives(batch)).flatten(-2)  # (B, L, D)
        packing = Packing(mask)
        aux = self.next_click(*(packing.pack(x) for x in (states, items, negatives)), packing)
        return ModelOutput(logits, self.aux_weight * aux, {"next_click": aux.detach()})

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> ModelOutput:
        """``forward``'s output with the health of a_t, (1,) each."""
        logits, (_, target, mask, states, weights) = self.run(batch)
        health = self.attention.health(states[:, None], target, mask, weights)
        return ModelOutput(logits, self.no_aux_loss(logits), health_terms(*health))

    def interest_states(
        self, items: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1, 3, 4: items (B, L, D) -> GRU states h_t (B, L, H; zeros at padding where
        packed), attention a_t (B, 1, L), final AUGRU state (B, H).

        On the CPU both recurrences run over the real items only (``LengthSortedRows``):
        padding, most of a batch on short histories, costs them nothing, and the states at
        real positions are the same (left-aligned histories: they never see padding). On an
        accelerator, and under ``torch.compile``, every position is stepped: packing needs
        the lengths on the host there. Nearly full batches (real share above
        ``PACKED_UP_TO``) are stepped whole too: packing costs more than it saves there.
        """
        if steps_every_position(mask) or not 0 < mask.float().mean() <= PACKED_UP_TO:
            states, _ = self.extractor(items)
            _, weights = self.attention(states[:, None], target, mask)  # (B, 1, L)
            return states, weights, self.evolution(states, weights[:, 0])
        rows = LengthSortedRows(mask)
        packed, _ = self.extractor(rows.pack(items))
        states = rows.unpack(packed.data)
        _, weights = self.attention(states[:, None], target, mask)
        attention = weights[:, 0].flatten().index_select(0, rows.rows)  # (S,)
        return states, weights, self.evolution(packed.data, attention, rows)
