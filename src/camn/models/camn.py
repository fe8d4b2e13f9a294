"""CAMN: Collaborative Attributes based Multi-interest Network, as the paper built it.

Zhou, Fan, Huang, Li, Tang, Yu. "Multi-Interest Refinement by Collaborative Attributes Modeling
for Click-Through Rate Prediction", CIKM 2022, https://doi.org/10.1145/3511808.3557652.

The paper "integrate[s] a dynamic collaborative attribute routing module into Transformer",
pools its heads "following previous practices in DMIN", uses DMIN's settings, and in its Table 3
CAMN-loss (no routing) scores exactly as DMIN on its Industry set: take the routing away and
DMIN is left. So CAMN here is DMIN plus routing: the same blocks as
:class:`~camn.models.dmin.DMIN` (``layers.dmin_blocks``), built in the same order, plus what
the paper adds: the routing scores P (Eq. 1-3) scale the logits of the extractor's k heads, one
per attribute (Eq. 4), and a diversity loss over those heads (Eq. 7). The equations alone,
built as a model of their own, are ``camn-standalone`` (:mod:`camn.models.camn_standalone`).

"Head r" has two readings (``heads``): (b) ``"dense"``, DMIN's dense Q/K/V over the whole item
vector split into k heads of width d, logits / sqrt(D) as DMIN's code (with P = 1 and alpha = 0
exactly DMIN, which a test checks); (a) ``"slot"``, head r's Q/K/V from attribute slot r of the
refined item vector with per-head d x d maps, logits / sqrt(d), as Eq. 4 writes
(``SlotAttention``). ``camn`` is (a), the reading chosen on validation (docs/results.md,
"Beauty `last` (batch 256): both readings"); ``camn-dense`` is (b). Rows written before that
choice named (a) ``camn-slot`` and (b) ``camn``; ``camn.results.current_names`` reads them.

Extension beyond the paper, off in ``camn`` and its ablations: nothing in Eq. 2-4 ties routing
column r to attribute r other than "it scales head r", so the router may sort items by their
driving attribute under another label, and its top score is then no explanation.
``tie_weight`` > 0 adds ``AttributeClickLoss`` to the auxiliary loss with that weight
(``camn-tied`` is ``camn-dense`` with ``tie_weight=1``); ``router="attribute"``
(``AttributeRouting``) computes logit r from attribute r's embedding alone. What each recovers
on planted data: docs/results.md, "Routing recovery on the synthetic data".

Shapes: B batch, L history length, k attribute slots (= heads = interests), d embedding size,
D = k*d item width, N packed rows (``layers.Packing``), M next-click pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import (
    CausalSelfAttention,
    CollaborativeRouting,
    HeadwiseLinear,
    Packing,
    diversity_loss,
    dmin_blocks,
)
from camn.models.registry import register


class SlotAttention(CausalSelfAttention):
    """DMIN's extractor attention with reading (a) of "head r": head r reads attribute slot r.

    Head r's queries, keys and values are X_r W_r^Q, X_r W_r^K, X_r W_r^V with X_r (d) the r-th
    slot of the (refined) item vector (D = k*d viewed as (k, d)) and separate d x d maps per head
    (no bias, as Eq. 4-5 write them); logits / sqrt(d) (Eq. 4). Everything after the logits is
    DMIN's (``CausalSelfAttention`` with ``split_heads``): key scaling, causal mask, per-head
    output projection d -> D, residual of the whole item vector, per-head LayerNorm.
    """

    def __init__(self, num_slots: int, dim: int) -> None:
        super().__init__(num_slots * dim, num_slots, split_heads=True)
        self.qkv = HeadwiseLinear(num_slots, dim, 3 * dim, bias=False)
        self.temperature = math.sqrt(dim)

    def project(
        self, x: torch.Tensor, packing: Packing
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) packed -> queries, keys, values (k, B, L, d) each, zeros at padding."""
        slots = x.view(x.shape[0], self.num_heads, self.head_dim)  # (N, k, d)
        qkv = packing.unpack(self.qkv(slots))  # (B, L, k, 3d)
        qkv = qkv.view(packing.batch, packing.length, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 2, 0, 1, 4).unbind(0)
        return q, k, v


class AttributeRouting(CollaborativeRouting):
    """Extension (beyond the paper): routing logit r from attribute r's own embedding only.

    s_r = w_r . LayerNorm(x_r), w_r (d) per attribute, LayerNorm over d without affine terms
    (a shared bias would give every item the same preference for a slot), then keepTopq and
    softmax as Eq. 2-3. Eq. 2's W_h mixes all k*d features into every logit, so nothing makes
    column r about attribute r; here column r can only be about attribute r.
    """

    def __init__(self, num_slots: int, dim: int, q: int) -> None:
        super().__init__(num_slots, dim, q)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.weight = HeadwiseLinear(num_slots, dim, 1, bias=False)

    def logits(self, items: torch.Tensor) -> torch.Tensor:
        """(..., k, d) -> (..., k)."""
        return self.weight(self.norm(items)).squeeze(-1)


class AttributeClickLoss(nn.Module):
    """Extension (beyond the paper): the next click explained attribute by attribute, weighted
    by P, so that P[j, r] is the share of attribute r in why item j was clicked.

    As DMIN's auxiliary loss, the refined state z_t must score the next click e_{t+1} above the
    drawn item e'_{t+1}, here with score(z, e) = b + sum_r P(e)_r <z M_r, e_r>: one bilinear
    match per attribute (M_r: D -> d), mixed by the item's own routing scores (Eq. 1-3 on e's
    attributes, the drawn item's too). Its gradient moves P(e) towards the attribute that best
    explains the click: a salient value for an item-level click, a value the user keeps
    clicking for a user-level one.
    """

    def __init__(self, width: int, num_slots: int, dim: int) -> None:
        super().__init__()
        self.num_slots, self.dim = num_slots, dim
        self.match = nn.Linear(width, num_slots * dim)
        self.bias = nn.Parameter(torch.zeros(()))

    def scores(self, states: torch.Tensor, items: torch.Tensor, routing: torch.Tensor
               ) -> torch.Tensor:
        """states (M, D), items (M, k, d), routing (M, k) -> click logits (M,)."""
        queries = self.match(states).view(-1, self.num_slots, self.dim)  # (M, k, d)
        return ((queries * items).sum(-1) * routing).sum(-1) + self.bias

    def pair_loss(
        self,
        states: torch.Tensor,
        clicked: tuple[torch.Tensor, torch.Tensor],
        drawn: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """2 x the mean BCE of M pairs (DMIN's scale): clicked and drawn are (items (M, k, d),
        their routing (M, k))."""
        if len(states) == 0:
            return states.new_zeros(())
        positive, negative = self.scores(states, *clicked), self.scores(states, *drawn)
        return F.softplus(-positive).mean() + F.softplus(negative).mean()


class CAMNPass(NamedTuple):
    """One pass of CAMN's blocks over a batch."""

    logits: torch.Tensor  # (B,)
    scores: torch.Tensor | None  # P (B, L, k), zero at padding; None without routing
    packing: Packing
    attributes: torch.Tensor  # packed attribute embeddings (N, k, d)
    items: torch.Tensor  # packed item vectors (N, D)
    refined: torch.Tensor  # the refiner's states (N, D)
    key_scale: torch.Tensor | None  # P as the extractor's key scale (k, B, L)
    attention: torch.Tensor  # the extractor's self-attention (k, B, L, L)


HEADS = ("dense", "slot")
ROUTERS = ("joint", "attribute")


@register("camn", display="CAMN")
@register("camn-route", summary="CAMN without the diversity loss (Table 3)", ablation_of="camn",
          alpha=0.0)
@register("camn-loss", summary="CAMN without the routing module (Table 3)", ablation_of="camn",
          routing=False)
@register("camn-dense", summary="CAMN on DMIN's dense Q/K/V split into k heads (reading b)",
          heads="dense")
@register("camn-dense-route", summary="camn-dense without the diversity loss",
          ablation_of="camn-dense", heads="dense",
          alpha=0.0)
@register("camn-dense-loss", summary="camn-dense without the routing module",
          ablation_of="camn-dense", heads="dense",
          routing=False)
@register("camn-tied", summary="Extension beyond the paper: routing column r tied to attribute r",
          heads="dense", tie_weight=1.0)
class CAMN(CTRModel):
    """CAMN (Zhou et al., CIKM 2022): DMIN whose extractor heads are scaled by attribute routing.

    DMIN's blocks as they are (refiner, next-click loss, extractor with k heads, one per
    attribute, output head), and what the paper adds:

    - Routing, Eq. 1-3 (``layers.CollaborativeRouting``) on each history item's raw attribute
      embeddings: P = Softmax(keepTopq(LayerNorm(X) W_h, q)), (B, L, k); q defaults to
      ceil(k / 2) (the paper gives none).
    - Eq. 4, key side: head r's logit column j (key item j) is multiplied by P[b, j, r] before
      the causal mask and the softmax (``CausalSelfAttention``'s ``key_scale``). The paper's
      ``P ⊙ (l x l logits)`` does not type-check; this reading matches "the attribute assigned
      higher scores will have more relevance with others".
    - Diversity loss, Eq. 7 (``layers.diversity_loss``) over the extractor's k attention
      matrices; aux_loss = DMIN's next-click loss + alpha * L_d (Eq. 8; the trainer adds Eq. 9's
      BCE), alpha = 1e-4 as in the paper (Sec. 3.2).

    Ablations (Table 3): ``camn-route`` is alpha = 0, ``camn-loss`` has no routing module (P = 1);
    ``camn-dense-route`` and ``camn-dense-loss`` are the same in reading (b).

    Outputs: ``routing`` is P (B, L, k), zero at padding: P[b, j, :] says which attributes made
    user b click item j (the paper's Figure 1). Asked for the extra losses, ``aux_terms`` holds
    the unweighted ``next_click``, ``diversity`` and, with the extension, ``attribute_click``.
    The evaluation pass (``evaluate``) reports the extractor's attention health per head, P
    scaling included, and L_d over the heads (``MultiInterestExtractor.health``).
    """

    needs_history_negatives = True
    search_space: ClassVar[dict[str, object]] = {
        "aux_weight": {"low": 0.05, "high": 2.0, "log": True},  # DMIN's, searched as there
        "alpha": {"low": 1e-6, "high": 1e-1, "log": True},
        "q": {"low": 1, "high": 3},
        "heads": ["slot", "dense"],  # the reading of "head r"
    }
    packs_rows = True

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 18,
        q: int | None = None,
        alpha: float = 1e-4,
        routing: bool = True,
        heads: str = "slot",
        diversity_pairs: str = "all",
        router: str = "joint",
        tie_weight: float = 0.0,
        refiner_heads: int = 4,
        aux_weight: float = 1.0,
        attention_hidden: Sequence[int] = (80, 40),
        aux_hidden: Sequence[int] = (100, 50),
        mlp_hidden: Sequence[int] = (200, 80),
        activation: str = "dice",
        pooled_history: bool = True,
        input_norm: bool = True,
    ) -> None:
        if heads not in HEADS:
            raise ValueError(f"heads must be 'dense' or 'slot', got {heads!r}")
        if diversity_pairs not in {"all", "distinct"}:
            raise ValueError(f"diversity_pairs must be 'all' or 'distinct': {diversity_pairs!r}")
        if router not in ROUTERS:
            raise ValueError(f"router must be 'joint' or 'attribute', got {router!r}")
        if tie_weight and not routing:
            raise ValueError("tie_weight > 0 needs the routing module (routing=true)")
        super().__init__(spec, embed_dim)
        width, k = self.num_slots * embed_dim, self.num_slots
        self.aux_weight = aux_weight
        # DMIN, block for block (dmin.DMIN), from the same seed the same initial weights
        self.refiner, self.next_click, self.extractor, self.head = dmin_blocks(
            width, k, spec.max_len, refiner_heads=refiner_heads, aux_hidden=aux_hidden,
            attention_hidden=attention_hidden, mlp_hidden=mlp_hidden, activation=activation,
            pooled_history=pooled_history, input_norm=input_norm,
        )
        # what the paper adds; the slot attention replaces DMIN's dense one only after
        # DMIN's blocks are built, so that every preset draws the initial weights it always drew
        if heads == "slot":
            self.extractor.attention = SlotAttention(k, embed_dim)
        self.heads, self.alpha = heads, alpha
        self.distinct_pairs = diversity_pairs == "distinct"
        q = math.ceil(k / 2) if q is None else q
        routing_class = AttributeRouting if router == "attribute" else CollaborativeRouting
        self.router = routing_class(k, embed_dim, q) if routing else None
        self.tie_weight = tie_weight
        self.tie = AttributeClickLoss(width, k, embed_dim) if tie_weight else None
        self.add_side_features(self.head)

    def route(self, attributes: torch.Tensor, packing: Packing) -> torch.Tensor | None:
        """Eq. 1-3: packed attribute embeddings (N, k, d) -> P (B, L, k), zero at padding;
        None without the routing module (P = 1)."""
        if self.router is None:
            return None
        return packing.unpack(self.router(attributes))

    def run(self, batch: Batch) -> CAMNPass:
        """DMIN's blocks with the routing on ``batch``: the logits and what the losses and the
        health read."""
        packing = Packing.of(batch)
        attributes = self.embedding(packing.pack(batch["history"]))  # (N, k, d)
        items = attributes.flatten(-2)  # (N, D)
        target = self.embedding(batch["target"]).flatten(-2)  # (B, D)
        refined = self.refiner(items, packing)  # DMIN's refiner, (N, D)
        scores = self.route(attributes, packing)  # Eq. 1-3: P (B, L, k), or None
        key_scale = None if scores is None else scores.permute(2, 0, 1)  # (k, B, L)
        interests, _, attention = self.extractor(refined, target, packing, key_scale)  # Eq. 4
        logits = self.head(interests.flatten(1), target, packing.sum_per_sample(items),
                           self.side_features(batch))
        return CAMNPass(logits, scores, packing, attributes, items, refined, key_scale, attention)

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        run = self.run(batch)
        if not extra_losses:
            return ModelOutput(run.logits, self.no_aux_loss(run.logits), {}, run.scores)
        aux, terms = self.losses(batch, run)
        return ModelOutput(run.logits, aux, terms, run.scores)

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> ModelOutput:
        """``forward``'s output with the extractor's attention health (k heads, P scaling
        included) and L_d."""
        run = self.run(batch)
        health = self.extractor.health(run.refined, run.packing, run.attention, run.key_scale)
        return ModelOutput(run.logits, self.no_aux_loss(run.logits), health, run.scores)

    def losses(self, batch: Batch, run: CAMNPass) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The extra losses, weighted and summed (Eq. 8 without the BCE), and their unweighted
        terms: DMIN's next-click loss, the diversity loss (Eq. 7) over the extractor's
        attention, and the extension's ``AttributeClickLoss`` where it is on."""
        packing = run.packing
        aux, terms = run.refined.new_zeros(()), {}
        if self.aux_weight:
            negatives = self.embedding(packing.pack(self.history_negatives(batch))).flatten(-2)
            next_click = self.next_click(run.refined, run.items, negatives, packing)
            aux, terms["next_click"] = self.aux_weight * next_click, next_click.detach()
        diversity = diversity_loss(run.attention.transpose(0, 1), packing.mask,
                                   self.distinct_pairs)
        terms["diversity"] = diversity.detach()
        if self.alpha:
            aux = aux + self.alpha * diversity
        if self.tie is not None:
            tie = self.attribute_click(batch, run)
            aux, terms["attribute_click"] = aux + self.tie_weight * tie, tie.detach()
        return aux, terms

    def attribute_click(self, batch: Batch, run: CAMNPass) -> torch.Tensor:
        """The extension's ``AttributeClickLoss`` on the (t, t + 1) pairs of DMIN's auxiliary
        loss."""
        packing = run.packing
        pairs = packing.next_pairs()
        following = pairs + 1
        drawn_ids = packing.pack(self.history_negatives(batch))[following]
        drawn = self.embedding(drawn_ids)  # (M, k, d)
        clicked = (run.attributes[following], packing.pack(run.scores)[following])
        return self.tie.pair_loss(run.refined[pairs], clicked, (drawn, self.router(drawn)))
