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
from camn.models.layers import MLP, TargetAttention, base_features, base_width
from camn.models.registry import register


def item_vectors(history: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, k, d), (B, k, d) -> history items (B, L, D), target item (B, D): the k attribute
    embeddings concatenated, as every baseline's item vector (SPEC 3)."""
    return history.flatten(-2), target.flatten(-2)


@register("din")
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

    Output network: input [target, v_U, sum-pooled history, target * sum-pooled history]
    (the DIEN code base's DIN, which DMIN's code and paper compare against; chosen so that DIN,
    DIEN and DMIN differ only in their sequence module), batch norm on the input, then
    200 -> 80 -> 1 with Dice (paper Sec. 6.3). No per-model tuning was done.
    ``pooled_history=False`` drops the two sum-pooled inputs, leaving the DIN paper's
    [target, v_U] (FuxiCTR's DIN); on the small Beauty ``last`` set that costs about 0.05 AUC
    (docs/results.md, "Faithfulness against FuxiCTR").
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
        self.pooled_history = pooled_history
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
        inputs = base_width(width, pooled_history) + width
        self.mlp = MLP(inputs, tuple(mlp_hidden), 1, activation=activation, input_norm=input_norm)

    def interest(
        self, items: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """items (B, L, D), target (B, D) -> v_U (B, D) and the weights (B, L)."""
        pooled, weights = self.attention(items[:, None], target, mask)
        return pooled[:, 0], weights[:, 0]

    def forward(self, batch: Batch) -> ModelOutput:
        items, target = item_vectors(*self.embed(batch))  # (B, L, D), (B, D)
        mask = batch["mask"]
        interest, _ = self.interest(items, target, mask)
        base = base_features(items, target, mask, self.pooled_history)
        features = torch.cat([base, interest], dim=-1)
        logits = self.mlp(features).squeeze(-1)
        return ModelOutput(logits, self.no_aux_loss(logits))
