"""ComiRec-SA: the self-attentive multi-interest extractor of ComiRec, as a CTR baseline.

Cen, Zhang, Zou, Zhou, Yang, Tang. "Controllable Multi-Interest Framework for Recommendation",
KDD 2020, https://doi.org/10.1145/3394486.3403344; official code github THUDM/ComiRec
(``Model_ComiRec_SA``), whose choices are followed where the paper is silent.
Shapes: B batch, L history length, k attribute slots, d embedding size, K interests,
D item width (k*d).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import (
    OutputHead,
    attention_health,
    health_terms,
    label_aware_attention,
    masked_softmax,
    pool_history,
)
from camn.models.registry import register


@register("comirec-sa", display="ComiRec-SA")
@register("comirec-sa-paper",
          summary="ComiRec-SA's head on what its paper scores: [target, read-out]",
          pooled_history=False, activation="prelu")
class ComiRecSA(CTRModel):
    """ComiRec-SA (Cen et al., KDD 2020): self-attentive interests, target-aware read-out.

    K self-attention heads over the history give K interests; a target-aware read-out mixes
    them; [read-out, target] -> MLP -> logit.

    Multi-interest extraction (the paper's "self-attentive method"), with H (B, L, D) the
    history items (k attribute embeddings concatenated):

    - A = softmax(W_2 tanh(W_1 (H + P)^T)) (the paper's a = softmax(w_2^T tanh(W_1 H^T)) with
      one w_2 per interest stacked into W_2), softmax over the real history positions (padding gets
      weight 0), A (B, K, L).
    - P (L, D) is a learned positional embedding added to the attention input only
      (``positional``, on by default: the code's ``add_pos=True``); the interests read the
      items without it: V_u = A H, V_u (B, K, D).
    - W_1 (D -> ``hidden_factor`` * D, tanh) and W_2 (-> K) are dense layers with biases: the
      official code's ``dense(hidden_size * 4, tanh)`` and ``dense(num_heads)`` with
      hidden_size equal to the item width, hence ``hidden_factor = 4``.
    - K = ``num_interests``, default k (one interest per attribute, as CAMN).

    Read-out (the code's ``atten``): weights = softmax over the K interests of <v_j, e_t>
    (MIND's label-aware attention with p = 1, ``layers.label_aware_attention``), read-out =
    sum_j weights_j v_j.
    ComiRec's training picks the argmax interest (``readout="hard"``); the soft read-out is the
    default here, as it gives every interest gradient.

    Output: the shared ``layers.OutputHead``, DMIN's output network: [e_t, sum-pooled history,
    e_t * sum-pooled history, read-out], batch norm on the input, 200 -> 80 -> 1 with Dice.
    ``comirec-sa-paper`` (``pooled_history=False, activation="prelu"``) feeds [e_t, read-out]
    only, what ComiRec's own score <read-out, e_t> reads, with PReLU.
    """

    search_space: ClassVar[dict[str, object]] = {"num_interests": {"low": 1, "high": 8}}

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 18,
        num_interests: int | None = None,
        hidden_factor: int = 4,
        positional: bool = True,
        readout: str = "soft",
        mlp_hidden: Sequence[int] = (200, 80),
        activation: str = "dice",
        input_norm: bool = True,
        pooled_history: bool = True,
    ) -> None:
        super().__init__(spec, embed_dim)
        if readout not in {"soft", "hard"}:
            raise ValueError(f"readout must be 'soft' or 'hard', got {readout!r}")
        item_dim = self.num_slots * embed_dim
        self.num_interests = num_interests or self.num_slots
        self.hard = readout == "hard"
        self.position = nn.Parameter(torch.zeros(spec.max_len, item_dim)) if positional else None
        if self.position is not None:
            nn.init.normal_(self.position, std=1e-2)
        self.hidden = nn.Linear(item_dim, hidden_factor * item_dim)  # W_1
        self.heads = nn.Linear(hidden_factor * item_dim, self.num_interests)  # W_2
        self.head = OutputHead(
            item_dim, item_dim, pooled_history=pooled_history, input_norm=input_norm,
            hidden=tuple(mlp_hidden), activation=activation,
        )
        self.add_side_features(self.head)

    def attention_logits(self, items: torch.Tensor) -> torch.Tensor:
        """items (B, L, D) -> the logits of A before the mask, (B, K, L)."""
        keys = items if self.position is None else items + self.position[: items.shape[1]]
        return self.heads(torch.tanh(self.hidden(keys))).transpose(1, 2)

    def attention(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """items (B, L, D), mask (B, L) -> A (B, K, L): each row sums to 1 over the real
        positions and is 0 at padding."""
        return masked_softmax(self.attention_logits(items), mask[:, None, :])

    def interests(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """V_u = A H: items (B, L, D) -> interests (B, K, D)."""
        return self.attention(items, mask) @ items

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        history, target = self.embed(batch)  # (B, L, k, d), (B, k, d)
        items, target = history.flatten(2), target.flatten(1)  # (B, L, D), (B, D)
        mask = batch["mask"]
        interests = self.interests(items, mask)  # (B, K, D)
        readout, _ = label_aware_attention(interests, target, hard=self.hard)  # (B, D)
        logits = self.head(readout, target, pool_history(items, mask), self.side_features(batch))
        return ModelOutput(logits, self.no_aux_loss(logits))

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> ModelOutput:
        """``forward``'s output with the K heads' health, (K,) each: the entropy of each row
        of A relative to uniform over the real positions, and the mean |logit| of
        W_2 tanh(W_1 (H + P)^T) there; the read-out over the K interests is not counted. A's
        logits are computed again (``forward`` keeps only A): one more pass of W_1 and W_2."""
        output = self(batch)
        items = self.embedding(batch["history"]).flatten(2)  # (B, L, D)
        logits = self.attention_logits(items).transpose(0, 1)  # (K, B, L)
        weights = masked_softmax(logits, batch["mask"][None])
        output.aux_terms = health_terms(*attention_health(weights, logits, batch["mask"]))
        return output
