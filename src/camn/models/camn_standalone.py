"""CAMN standalone: the paper's Eq. 1-9 built as a model of their own (``camn-standalone``).

Zhou, Fan, Huang, Li, Tang, Yu. "Multi-Interest Refinement by Collaborative Attributes Modeling
for Click-Through Rate Prediction", CIKM 2022, https://doi.org/10.1145/3511808.3557652.

This was the project's first reading of the paper: thin per-attribute heads of width d over the
raw attribute embeddings, no residuals, DMIN's target attention and an MLP on top. The paper's
model is DMIN with the routing inside its extractor (``camn``, :mod:`camn.models.camn`); this
one stays registered, with its ablations, so that every earlier number can be reproduced (how it
compares: docs/results.md, "The first diagnosis (the paper's equations alone)").

Shapes: B batch, L history length, k attribute slots (= heads = interests), d embedding size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import (
    CollaborativeRouting,
    HeadwiseLinear,
    OutputHead,
    TargetAttention,
    attention_health,
    diversity_loss,
    health_terms,
    masked_softmax,
    pool_history,
)
from camn.models.registry import register


@register("camn-standalone", display="CAMN-standalone")
@register("camn-standalone-route", summary="camn-standalone without the diversity loss",
          ablation_of="camn-standalone",
          alpha=0.0)
@register("camn-standalone-loss", summary="camn-standalone without the routing module",
          ablation_of="camn-standalone",
          routing=False)
@register("camn-standalone-paper",
          summary="camn-standalone with the CAMN paper's output inputs [target, interests]",
          pooled_history=False)
@register("camn-standalone-paper-route", summary="camn-standalone-paper without the diversity loss",
          ablation_of="camn-standalone-paper", pooled_history=False, alpha=0.0)
@register("camn-standalone-paper-loss", summary="camn-standalone-paper without the routing module",
          ablation_of="camn-standalone-paper", pooled_history=False, routing=False)
@register("camn-standalone-residual",
          summary="camn-standalone with a residual + LayerNorm around Eq. 5-6 (an extension)",
          residual_norm=True)
class CAMNStandalone(CTRModel):
    """CAMN's equations as a model of their own: routing scores rescale thin attribute heads.

    Equations (paper Sec. 2), with these readings:

    - Routing, Eq. 1-3 (``CollaborativeRouting``): P = Softmax(keepTopq(LayerNorm(X) W_h, q)),
      P (B, L, k); q defaults to ceil(k / 2) (the paper gives none).
    - Eq. 4-6 on thin heads of width d, head r on attribute r (``attention_logits``,
      ``refine``). ``residual_norm=True`` wraps Eq. 5-6 in a residual connection and LayerNorm
      as DMIN does (off by default: the equations have none).
    - Interest extractor (DMIN's): per head a target attention with a learned positional
      embedding pools X~_r into interest_r (B, d).
    - Output: the shared ``layers.OutputHead``, DMIN's output network: [target, sum-pooled
      history, target * sum-pooled history, interest_1 .. interest_k], batch norm on the
      input, 200 -> 80 -> 1 with Dice, so that this model differs from the others in how it
      refines the history only. The paper's CAMN feeds [target, interest_1 .. interest_k]
      (``camn-standalone-paper``, ``pooled_history=False``).
    - ``normalize_items=True`` (an extension, off by default) puts a LayerNorm on each attribute
      embedding before Eq. 4-6: with small embeddings the logits of Eq. 4 stay near 0, the
      attention is uniform and the P scaling has no effect; normalised inputs give the
      attention, and so the routing, something to act on.
    - Diversity loss, Eq. 7 (``layers.diversity_loss``); asked for the extra losses, the model
      returns aux_loss = alpha * L_d (Eq. 8; the trainer adds the BCE of Eq. 9).

    Ablations (Table 3, as the paper defines them): ``camn-standalone-route`` is alpha = 0;
    ``camn-standalone-loss`` has no routing module (P = 1 everywhere, ``routing=False``) but
    keeps the diversity loss. ``camn-standalone-residual`` is the extension ``residual_norm``.

    Explanations: ``ModelOutput.routing`` is P, (B, L, k), zero at padding positions: P[b, j, :]
    says which attributes made user b click item j (Figure 1).
    """

    search_space: ClassVar[dict[str, object]] = {
        "alpha": {"low": 1e-6, "high": 1e-1, "log": True},
        "q": {"low": 1, "high": 3},
    }

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 18,
        q: int | None = None,
        alpha: float = 1e-4,
        scale_side: str = "key",
        diversity_pairs: str = "all",
        residual_norm: bool = False,
        routing: bool = True,
        mlp_hidden: Sequence[int] = (200, 80),
        activation: str = "dice",
        pooled_history: bool = True,
        normalize_items: bool = False,
        input_norm: bool = True,
    ) -> None:
        super().__init__(spec, embed_dim)
        if scale_side not in {"key", "query"}:
            raise ValueError(f"scale_side must be 'key' or 'query', got {scale_side!r}")
        if diversity_pairs not in {"all", "distinct"}:
            raise ValueError(f"diversity_pairs must be 'all' or 'distinct': {diversity_pairs!r}")
        k, d = self.num_slots, embed_dim
        self.alpha, self.scale_side = alpha, scale_side
        self.distinct_pairs = diversity_pairs == "distinct"
        q = math.ceil(k / 2) if q is None else q
        self.router = CollaborativeRouting(k, d, q) if routing else None
        self.query = HeadwiseLinear(k, d, d, bias=False)
        self.key = HeadwiseLinear(k, d, d, bias=False)
        self.value = HeadwiseLinear(k, d, d, bias=False)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.norms = nn.ModuleList([nn.LayerNorm(d), nn.LayerNorm(d)]) if residual_norm else None
        self.extractor = TargetAttention(
            num_heads=k, dim=d, target_dim=k * d, max_len=spec.max_len, positional=True
        )
        self.item_norm = nn.LayerNorm(d) if normalize_items else None
        self.head = OutputHead(
            k * d, k * d, pooled_history=pooled_history, input_norm=input_norm,
            hidden=tuple(mlp_hidden), activation=activation,
        )
        self.add_side_features(self.head)

    def route(self, items: torch.Tensor) -> torch.Tensor:
        """Eq. 1-3: (B, L, k, d) -> P (B, L, k); all ones without the routing module."""
        if self.router is None:
            return items.new_ones(items.shape[:-1])
        return self.router(items)

    def attention_logits(
        self, items: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 4 inside the softmax: items (B, L, k, d), P (B, L, k), mask (B, L) ->
        scaled logits (B, k, L, L), -inf at padding keys.

        The paper's ``P ⊙ (l x l logits)`` does not type-check; the reading taken here scales
        column j of head r by the key item's score (``scale_side="key"``):
        logits_r[b, i, j] = P[b, j, r] * <X_r W_r^Q [b, i], X_r W_r^K [b, j]> / sqrt(d);
        ``scale_side="query"`` scales row i by P[b, i, r] instead. Padding keys are set to
        -inf after the scaling; there is no causal mask.
        """
        queries = self.query(items)  # (B, L, k, d)
        keys = self.key(items)  # (B, L, k, d)
        # Scaling logit column j (row i) by P[j, r] / sqrt(d) equals scaling key j (query i)
        # before the product, which is cheaper than scaling the (L, L) matrix.
        scale = (scores / math.sqrt(self.embed_dim))[..., None]  # (B, L, k, 1)
        if self.scale_side == "key":
            keys = keys * scale
        else:
            queries = queries * scale
        logits = torch.einsum("bird,bjrd->brij", queries, keys)  # (B, k, L, L)
        return logits.masked_fill(~mask[:, None, None, :], float("-inf"))

    def refine(
        self, items: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 4-6: items (B, L, k, d) -> X~ (B, k, L, d), attention A and its logits
        (B, k, L, L). A_r = softmax over j of Eq. 4's logits; Eq. 5: X^_r = A_r (X_r W_r^V);
        Eq. 6: X~_r = max(0, X^_r W_1 + b_1) W_2 + b_2, one FFN (W_1, W_2 of d x d) shared by
        the k heads."""
        logits = self.attention_logits(items, scores, mask)
        attention = masked_softmax(logits, mask[:, None, None, :])  # (B, k, L, L)
        values = self.value(items).transpose(1, 2)  # (B, k, L, d)
        refined = attention @ values  # Eq. 5, (B, k, L, d)
        if self.norms is None:
            return self.ffn(refined), attention, logits  # Eq. 6
        refined = self.norms[0](refined + items.transpose(1, 2))
        return self.norms[1](refined + self.ffn(refined)), attention, logits

    def run(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, tuple]:
        """logits (B,), P (B, L, k) zero at padding (None without routing), and what the losses
        and the health read: attention A and its logits (B, k, L, L), mask (B, L)."""
        mask = batch["mask"]
        history, target = self.embed(batch)  # (B, L, k, d), (B, k, d)
        scores = self.route(history)  # (B, L, k)
        items = history if self.item_norm is None else self.item_norm(history)  # (B, L, k, d)
        refined, attention, attention_logits = self.refine(items, scores, mask)
        target = target.flatten(1)  # (B, k*d)
        interests, _ = self.extractor(refined, target, mask)  # (B, k, d)
        logits = self.head(interests.flatten(1), target, pool_history(history.flatten(-2), mask),
                           self.side_features(batch))
        routing = None if self.router is None else scores * mask[..., None].to(scores.dtype)
        return logits, routing, (attention, attention_logits, mask)

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        logits, routing, (attention, _, mask) = self.run(batch)
        if not extra_losses:
            return ModelOutput(logits, self.no_aux_loss(logits), {}, routing)
        diversity = diversity_loss(attention, mask, self.distinct_pairs)
        aux = self.alpha * diversity if self.alpha else self.no_aux_loss(logits)
        return ModelOutput(logits, aux, {"diversity": diversity.detach()}, routing)

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> ModelOutput:
        """``forward``'s output with the k heads' attention health and L_d; every real item
        attends every real item."""
        logits, routing, (attention, attention_logits, mask) = self.run(batch)
        allowed = mask[:, None, :] & mask[:, :, None]  # real queries, real keys
        entropy, abs_logit = attention_health(attention.transpose(0, 1),
                                              attention_logits.transpose(0, 1), allowed)
        health = health_terms(entropy, abs_logit)
        health["diversity"] = diversity_loss(attention, mask, self.distinct_pairs)
        return ModelOutput(logits, self.no_aux_loss(logits), health, routing)
