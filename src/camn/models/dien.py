"""DIEN: Deep Interest Evolution Network.

Zhou, Mou, Fan, Pi, Bian, Zhou, Zhu, Gai. "Deep Interest Evolution Network for Click-Through
Rate Prediction", AAAI 2019, https://doi.org/10.1609/aaai.v33i01.33015941. Official code:
github.com/mouna99/dien (Model_DIN_V2_Gru_Vec_attGru_Neg).

Shapes: B batch, L history length, k attribute slots, d embedding size, D = k*d item width,
H GRU state size (= D, as the official code's HIDDEN_SIZE equals its item width).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import (
    NextClickLoss,
    OutputHead,
    TargetAttention,
    item_vectors,
    pool_history,
    target_attention_health,
)
from camn.models.registry import register


class AUGRU(nn.Module):
    """GRU with attentional update gate (DIEN Eq. 6-7), the interest evolving layer.

    With the GRU of DIEN Eq. 1-4 (the form nn.GRU computes):
        u_t = sigmoid(W_u i_t + U_u h_{t-1} + b_u),  r_t = sigmoid(W_r i_t + U_r h_{t-1} + b_r)
        h~_t = tanh(W_h i_t + r_t * (U_h h_{t-1} + b_hh) + b_h)
        u'_t = a_t * u_t                               (Eq. 6)
        h_t = (1 - u'_t) * h_{t-1} + u'_t * h~_t       (Eq. 7)
    The paper's equations are followed; the official VecAttGRUCell instead scales the TF
    keep-gate, h_t = (1 - a_t) u_t h_{t-1} + (1 - (1 - a_t) u_t) h~_t, which overwrites the state
    when a_t = 0. Here a_t = 0 (every padding step) leaves the state exactly unchanged.
    The input projections of all steps are one matrix product; only the recurrence loops over t.
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.input_map = nn.Linear(input_dim, 3 * hidden_dim)
        self.state_map = nn.Linear(hidden_dim, 3 * hidden_dim)

    def forward(self, inputs: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """inputs (B, L, I), attention (B, L) in [0, 1] -> final state (B, H)."""
        projected = self.input_map(inputs).unbind(1)  # L x (B, 3H)
        weights = attention.unsqueeze(-1).unbind(1)  # L x (B, 1)
        state = inputs.new_zeros(inputs.shape[0], self.hidden_dim)
        gates = [2 * self.hidden_dim, self.hidden_dim]
        for step, weight in zip(projected, weights, strict=True):
            x_ur, x_h = step.split(gates, dim=-1)
            h_ur, h_h = self.state_map(state).split(gates, dim=-1)
            update, reset = torch.sigmoid(x_ur + h_ur).chunk(2, dim=-1)  # (B, H) each
            candidate = torch.tanh(torch.addcmul(x_h, reset, h_h))
            state = torch.addcmul(state, update * weight, candidate - state)  # Eq. 6-7
        return state


@register("dien")
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

    Attention health (``base.reporting_health``, H = 1): that of a_t (step 3), a softmax over
    the real positions: its entropy relative to uniform over them and the mean |score| its
    softmax saw (``layers.target_attention_health``).
    """

    needs_history_negatives = True

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

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        history, target = self.embed(batch)
        items, target = item_vectors(history, target)  # (B, L, D), (B, D)
        mask = batch["mask"]
        states, _ = self.extractor(items)  # (B, L, H)
        _, weights = self.attention(states[:, None], target, mask)  # (B, 1, L)
        final = self.evolution(states, weights[:, 0])  # (B, H)
        logits = self.head(final, target, pool_history(items, mask))
        terms = self.health(states, target, mask, weights) if self.report_health else {}
        if not extra_losses or self.aux_weight == 0:
            return ModelOutput(logits, self.no_aux_loss(logits), terms)
        negatives = self.embedding(self.history_negatives(batch)).flatten(-2)  # (B, L, D)
        aux = self.next_click(states, items, negatives, mask)
        return ModelOutput(logits, self.aux_weight * aux, terms | {"next_click": aux.detach()})

    def health(
        self, states: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
        weights: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The health of a_t, (1,) each: states (B, L, H), weights (B, 1, L)."""
        entropy, abs_logit = target_attention_health(
            self.attention, states[:, None], target, mask, weights
        )
        return {"attention_entropy": entropy, "attention_abs_logit": abs_logit}
