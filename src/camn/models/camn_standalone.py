"""CAMN standalone: the paper's Eq. 1-9 built as a model of their own (``camn-standalone``).

Zhou, Fan, Huang, Li, Tang, Yu. "Multi-Interest Refinement by Collaborative Attributes Modeling
for Click-Through Rate Prediction", CIKM 2022, https://doi.org/10.1145/3511808.3557652.

This was the project's first reading of the paper: thin per-attribute heads of width d over the
raw attribute embeddings, no residuals, DMIN's target attention and an MLP on top. It trails
DMIN on every real set and its attention stays uniform, so the routing and the diversity loss
have nothing to act on. The paper's model is DMIN with the routing inside its extractor
(``camn``, :mod:`camn.models.camn`); this one stays registered, with its ablations, so that
every earlier number can be reproduced.

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
    masked_softmax,
    pool_history,
)
from camn.models.registry import register


@register("camn-standalone")
@register("camn-standalone-route", summary="camn-standalone without the diversity loss",
          alpha=0.0)
@register("camn-standalone-loss", summary="camn-standalone without the routing module",
          routing=False)
@register("camn-standalone-paper",
          summary="camn-standalone with the CAMN paper's output inputs [target, interests]",
          pooled_history=False)
@register("camn-standalone-residual",
          summary="camn-standalone with a residual + LayerNorm around Eq. 5-6 (an extension)",
          residual_norm=True)
class CAMNStandalone(CTRModel):
    """CAMN's equations as a model of their own: routing scores rescale thin attribute heads.

    Equations (paper Sec. 2), with these readings:

    - Routing, Eq. 1-3 (``CollaborativeRouting``): P = Softmax(keepTopq(LayerNorm(X) W_h, q)),
      P (B, L, k); q defaults to ceil(k / 2) (the paper gives none).
    - Scaled attention, Eq. 4. The paper's ``P ⊙ (l x l logits)`` does not type-check; the reading
      taken here scales column j of head r by the key item's score (``scale_side="key"``):
      logits_r[b, i, j] = P[b, j, r] * <X_r W_r^Q [b, i], X_r W_r^K [b, j]> / sqrt(d);
      ``scale_side="query"`` scales row i by P[b, i, r] instead. Padding keys are set to -inf
      after the scaling; there is no causal mask. A_r = softmax over j.
    - Eq. 5: X^_r = A_r (X_r W_r^V). Eq. 6: X~_r = max(0, X^_r W_1 + b_1) W_2 + b_2, with one
      FFN (W_1, W_2 of d x d) shared by the k heads. ``residual_norm=True`` wraps both steps in a
      residual connection and LayerNorm as DMIN does (off by default: the equations have none).
    - Interest extractor (DMIN's): per head a target attention with a learned positional
      embedding pools X~_r into interest_r (B, d).
    - Output: the shared ``layers.OutputHead``, DMIN's output network: [target, sum-pooled
      history, target * sum-pooled history, interest_1 .. interest_k], batch norm on the
      input, 200 -> 80 -> 1 with Dice, so that this model differs from the others in how it
      refines the history only. The paper's CAMN feeds [target, interest_1 .. interest_k]
      (``camn-standalone-paper``, ``pooled_history=False``); see docs/results.md for what the
      pooled inputs are worth here.
    - ``normalize_items=True`` (an extension, off by default) puts a LayerNorm on each attribute
      embedding before Eq. 4-6. With small embeddings (norm ~0.1 after training on Beauty) the
      logits of Eq. 4 stay near 0 (~1e-4), the attention is uniform and the P scaling has no
      effect; normalised inputs give the attention, and so the routing, something to act on.
    - Diversity loss, Eq. 7 (``layers.diversity_loss``); asked for the extra losses, the model
      returns aux_loss = alpha * L_d (Eq. 8; the trainer adds the BCE of Eq. 9).

    Ablations (Table 3, as the paper defines them): ``camn-standalone-route`` is alpha = 0;
    ``camn-standalone-loss`` has no routing module (P = 1 everywhere, ``routing=False``) but
    keeps the diversity loss. ``camn-standalone-residual`` is the extension ``residual_norm``.

    Explanations: ``ModelOutput.routing`` (and ``attribute_scores``) is P, (B, L, k), zero at
    padding positions: P[b, j, :] says which attributes made user b click item j (Figure 1).
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

    def route(self, items: torch.Tensor) -> torch.Tensor:
        """Eq. 1-3: (B, L, k, d) -> P (B, L, k); all ones without the routing module."""
        if self.router is None:
            return items.new_ones(items.shape[:-1])
        return self.router(items)

    def attention_logits(
        self, items: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 4 inside the softmax: items (B, L, k, d), P (B, L, k), mask (B, L) ->
        scaled logits (B, k, L, L), -inf at padding keys."""
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
        (B, k, L, L)."""
        logits = self.attention_logits(items, scores, mask)
        attention = masked_softmax(logits, mask[:, None, None, :])  # (B, k, L, L)
        values = self.value(items).transpose(1, 2)  # (B, k, L, d)
        refined = attention @ values  # Eq. 5, (B, k, L, d)
        if self.norms is None:
            return self.ffn(refined), attention, logits  # Eq. 6
        refined = self.norms[0](refined + items.transpose(1, 2))
        return self.norms[1](refined + self.ffn(refined)), attention, logits

    def attribute_scores(self, batch: Batch) -> torch.Tensor:
        """P (B, L, k) of every history click (zero at padding): the model's explanation."""
        history, _ = self.embed(batch)
        return self.route(history) * batch["mask"][..., None].to(history.dtype)

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        mask = batch["mask"]
        history, target = self.embed(batch)  # (B, L, k, d), (B, k, d)
        scores = self.route(history)  # (B, L, k)
        items = history if self.item_norm is None else self.item_norm(history)  # (B, L, k, d)
        refined, attention, attention_logits = self.refine(items, scores, mask)
        target = target.flatten(1)  # (B, k*d)
        interests, _ = self.extractor(refined, target, mask)  # (B, k, d)
        logits = self.head(interests.flatten(1), target, pool_history(history.flatten(-2), mask))
        routing = None if self.router is None else scores * mask[..., None].to(scores.dtype)
        terms = self.health(attention, attention_logits, mask) if self.report_health else {}
        if not extra_losses:
            return ModelOutput(logits, self.no_aux_loss(logits), terms, routing)
        diversity = diversity_loss(attention, mask, self.distinct_pairs)
        aux = self.alpha * diversity if self.alpha else self.no_aux_loss(logits)
        return ModelOutput(logits, aux, terms | {"diversity": diversity.detach()}, routing)

    @torch.no_grad()
    def health(
        self, attention: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The k heads' attention health (``attention_health``, per head) and L_d (Eq. 7):
        attention and logits (B, k, L, L); every real item attends every real item."""
        allowed = mask[:, None, :] & mask[:, :, None]  # real queries, real keys
        entropy, abs_logit = attention_health(attention.transpose(0, 1),
                                              logits.transpose(0, 1), allowed)
        return {"attention_entropy": entropy, "attention_abs_logit": abs_logit,
                "diversity": diversity_loss(attention, mask, self.distinct_pairs)}
