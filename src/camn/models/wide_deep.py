"""Wide & Deep on the target's attribute fields and the pooled history fields.

Cheng, Koc, Harmsen, Shaked, Chandra, Aradhye, Anderson, Corrado, Chai, Ispir, Anil, Haque,
Hong, Jain, Liu, Shah. "Wide & Deep Learning for Recommender Systems", DLRS 2016,
https://doi.org/10.1145/2988450.2988454.
Shapes: B batch, L history length, k attribute slots, d embedding size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from camn.data.protocols import FIRST_ITEM_ID
from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import POOLS, AttributeEmbedding, OutputHead, field_embeddings, pool_history
from camn.models.registry import register

_PRIME = 2_147_483_647  # 2^31 - 1: keys stay below 2^62 during the hash
_MULTIPLIERS = (1_000_003, 998_244_353)


def cross_bucket(target: torch.Tensor, history: torch.Tensor, buckets: int) -> torch.Tensor:
    """Hashed cross-product feature of (slot r, target value, history value): target (B, k),
    history (B, L, k) ids -> bucket ids (B, L, k) in [0, buckets). A polynomial hash modulo the
    prime 2^31 - 1, so the same pair of values lands in the same bucket in every batch."""
    slots = torch.arange(1, target.shape[-1] + 1, device=target.device)  # (k,)
    key = (slots * _MULTIPLIERS[0] + target[:, None, :]) % _PRIME  # (B, 1, k)
    key = (key * _MULTIPLIERS[1] + history) % _PRIME  # (B, L, k)
    return key % buckets


@register("wide-deep", display="Wide&Deep")
class WideDeep(CTRModel):
    """Wide & Deep (Cheng et al., 2016): logit = wide linear model + deep MLP, no sequence model.

    Fields: the target's k attribute fields and the history's k attribute fields pooled over
    the real positions (``history_pool``: "sum" by default; "mean" divides by the length).

    Deep part (paper Sec. 3.2): the shared ``layers.OutputHead`` on the 2k field embeddings
    concatenated (2k*d) alone (they already hold the target; no sum-pooled inputs: the wide
    part is what defines the model) -> ``mlp_hidden`` (200, 80) -> 1, ReLU as in the paper,
    with batch norm on the input (pooled sums and single embeddings have different scales).

    Wide part (paper Sec. 3.1, y = w^T [x, phi(x)] + b), one learned scalar per feature:

    - the one-hot target fields: w_target[r, t_r] for every slot r;
    - the multi-hot history fields: w_history[r, h_{j,r}] pooled like the deep fields over the
      real positions j (sum: each value weighted by its count), weights separate from the
      target's (a value in the history and the same value as the target are different
      features of a linear model);
    - target-history crosses (the paper's cross-product transformations, e.g. AND(installed
      app, impression app)). Hashing every (target value, history value) pair is the paper's
      form but needs a table of a size no vocabulary bounds; the default is the compact
      ``match_cross``: per slot r, a weight w_match[r] times the number of real history
      positions j with h_{j,r} = t_r (padding and unknown values never match).
      ``cross_buckets`` > 0 adds the full pair crosses, hashed into that many buckets
      (``cross_bucket``): w_cross[hash(r, t_r, h_{j,r})] summed over the real positions.
    - a bias b.

    Bag slots (``FeatureSpec.bag_slots``, several values per item) have no wide features: the
    wide part reads the single-valued slots, the bags' mean embeddings reach the deep part.

    logit = wide + deep, trained jointly (the paper's joint training; one optimiser here rather
    than FTRL for the wide part and AdaGrad for the deep part).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 18,
        history_pool: str = "sum",
        match_cross: bool = True,
        cross_buckets: int = 0,
        mlp_hidden: Sequence[int] = (200, 80),
        activation: str = "relu",
        input_norm: bool = True,
    ) -> None:
        super().__init__(spec, embed_dim)
        if history_pool not in POOLS:
            raise ValueError(f"history_pool must be one of {POOLS}, got {history_pool!r}")
        if cross_buckets < 0:
            raise ValueError(f"cross_buckets must be >= 0, got {cross_buckets}")
        k = self.num_slots
        self.pool, self.cross_buckets = history_pool, cross_buckets
        self.wide_target = AttributeEmbedding(spec.vocab_sizes, 1)
        self.wide_history = AttributeEmbedding(spec.vocab_sizes, 1)
        self.match_weight = nn.Parameter(torch.zeros(k)) if match_cross else None
        self.cross_weight = nn.Parameter(torch.zeros(cross_buckets)) if cross_buckets else None
        self.wide_bias = nn.Parameter(torch.zeros(()))
        self.head = OutputHead(
            0, 2 * k * embed_dim, pooled_history=False, input_norm=input_norm,
            hidden=tuple(mlp_hidden), activation=activation, with_target=False,
        )
        self.add_side_features(self.head)

    def wide_logit(self, batch: Batch) -> torch.Tensor:
        """The wide linear model (B,) on the raw ids."""
        target, history, mask = batch["target"], batch["history"], batch["mask"]
        real = mask[..., None]  # (B, L, 1)
        if self.spec.bag_slots:  # their columns are not read: as padding, without crosses
            bags = self.embedding.bag_columns
            target, history = target.masked_fill(bags, 0), history.masked_fill(bags, 0)
            real = real & ~bags  # (B, L, k)
        logit = self.wide_bias + self.wide_target(target).sum(dim=(1, 2))  # (B,)
        history_weights = self.wide_history(history).squeeze(-1).sum(dim=-1)  # (B, L)
        logit = logit + pool_history(history_weights, mask, self.pool)
        if self.match_weight is not None:
            same = (history == target[:, None, :]) & (target[:, None, :] >= FIRST_ITEM_ID) & real
            logit = logit + same.sum(dim=1).to(logit.dtype) @ self.match_weight  # (B, k) @ (k,)
        if self.cross_weight is not None:
            crosses = self.cross_weight[cross_bucket(target, history, self.cross_buckets)]
            logit = logit + (crosses * real.to(crosses.dtype)).sum(dim=(1, 2))
        return logit

    def deep_logit(self, batch: Batch) -> torch.Tensor:
        """The deep part (B,): MLP over the 2k field embeddings."""
        history, target = self.embed(batch)  # (B, L, k, d), (B, k, d)
        fields = field_embeddings(history, target, batch["mask"], self.pool)  # (B, 2k, d)
        return self.head(fields.flatten(1), side=self.side_features(batch))

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        logits = self.wide_logit(batch) + self.deep_logit(batch)
        return ModelOutput(logits, self.no_aux_loss(logits))
