"""DIN: Deep Interest Network.

Zhou, Zhu, Song, Fan, Zhu, Ma, Yan, Jin, Li, Gai. "Deep Interest Network for Click-Through Rate
Prediction", KDD 2018, https://doi.org/10.1145/3219819.3219823. Official code:
github.com/zhougr1993/DeepInterestNetwork and the DIN model of github.com/mouna99/dien.

Shapes: B batch, L history length, k attribute slots, d embedding size, D = k*d item width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import (
    OutputHead,
    TargetAttention,
    health_terms,
    item_vectors,
    pool_history,
)
from camn.models.registry import register


@register("din", display="DIN")
@register("din-paper", summary="DIN with the DIN paper's output inputs [target, interest]",
          pooled_history=False)
class DIN(CTRModel):
    """DIN (Zhou et al., KDD 2018): target attention over the history, weighted sum pooling.

    Activation unit (paper Sec. 4.3, Fig. 2): score_j = MLP([t, x_j, t - x_j, t * x_j]) with
    hidden layers 80 -> 40 and sigmoid activations, as in the official code (the paper's figure
    draws PReLU/Dice; the code uses sigmoid). The target t is used as the query unprojected.
    As the paper states ("normalization with softmax on the output of a(.) is abandoned"),
    the weights are the raw scores, zeroed at padding, not softmax-normalised
    (``softmax=False``; ``softmax=True`` gives the masked softmax that the official code
    applies, there after a 1/sqrt(D) scaling that is not reproduced here).
    User interest v_U = sum_j w_j x_j (paper Eq. 3).

    Output network: the shared ``layers.OutputHead`` on [target, sum-pooled history,
    target * sum-pooled history, v_U], batch norm on the input, then 200 -> 80 -> 1 with Dice
    (the DIEN code base's DIN, which DMIN's code and paper compare against). No per-model
    tuning was done. ``din-paper`` (``pooled_history=False``) drops the two sum-pooled inputs,
    leaving the DIN paper's [target, v_U] (FuxiCTR's DIN; what that costs: docs/results.md,
    "Faithfulness against FuxiCTR").

    Attention health (``evaluate``, H = 1): the raw scores are no distribution,
    so ``attention_abs_logit`` is the mean |w_j| over the real keys and ``attention_entropy``
    the normalised entropy of |w_j| / sum |w| over them, a concentration measure of the
    unnormalised weights, not a softmax's entropy (``layers.unnormalised_health``; with
    ``softmax=True``, the softmax's own entropy and scores).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 18,
        attention_hidden: Sequence[int] = (80, 40),
        softmax: bool = False,
        mlp_hidden: Sequence[int] = (200, 80),
        activation: str = "dice",
        pooled_history: bool = True,
        input_norm: bool = True,
    ) -> None:
        super().__init__(spec, embed_dim)
        width = self.num_slots * embed_dim
        self.attention = TargetAttention(
            1,
            width,
            width,
            spec.max_len,
            hidden=tuple(attention_hidden),
            positional=False,
            softmax=softmax,
            project_target=False,
        )
        self.head = OutputHead(
            width, width, pooled_history=pooled_history, input_norm=input_norm,
            hidden=tuple(mlp_hidden), activation=activation,
        )
        self.add_side_features(self.head)

    def interest(
        self, items: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """items (B, L, D), target (B, D) -> v_U (B, D) and the weights w (B, L)."""
        pooled, weights = self.attention(items[:, None], target, mask)
        return pooled[:, 0], weights[:, 0]

    def run(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """logits (B,), and what the health reads: items (B, L, D), target (B, D), mask (B, L)
        and the weights w (B, L)."""
        items, target = item_vectors(*self.embed(batch))  # (B, L, D), (B, D)
        mask = batch["mask"]
        interest, weights = self.interest(items, target, mask)
        logits = self.head(interest, target, pool_history(items, mask), self.side_features(batch))
        return logits, (items, target, mask, weights)

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        logits, _ = self.run(batch)
        return ModelOutput(logits, self.no_aux_loss(logits))

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> ModelOutput:
        """``forward``'s output with the target attention's health, (1,) each."""
        logits, (items, target, mask, weights) = self.run(batch)
        health = self.attention.health(items[:, None], target, mask, weights[:, None])
        return ModelOutput(logits, self.no_aux_loss(logits), health_terms(*health))
