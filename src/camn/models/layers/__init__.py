"""Layers shared by CAMN and the baselines: every piece that more than one model uses, by concern.

- ``embeddings``: the attribute tables (bags included), the side features, item vectors,
  pooling over the history, PNN's and Wide&Deep's fields;
- ``packing``: ``Packing``, the history positions a model computes (only the real ones on the
  CPU, every one on an accelerator and under ``torch.compile``), and ``packed_positions``;
- ``attention``: masked softmax, the causal mask, per-head linear maps, DIN's target attention
  and MIND's label-aware read-out;
- ``head``: Dice, the MLP and ``OutputHead``, the output network of every model;
- ``dmin``: DMIN's causal self-attention, behaviour refiner and multi-interest extractor, the
  next-click loss, and ``dmin_blocks`` (DMIN's and CAMN's four blocks in their order);
- ``routing``: CAMN's collaborative routing and diversity loss;
- ``health``: attention health, what the models' evaluation pass (``CTRModel.evaluate``)
  reports about their heads.

A model module imports from here (``from camn.models.layers import ...``, the names below),
from ``base`` and from ``registry``, never from another model module.
"""

from camn.models.layers.attention import (
    HeadwiseLinear,
    TargetAttention,
    causal_mask,
    headwise,
    label_aware_attention,
    masked_softmax,
)
from camn.models.layers.dmin import (
    BehaviourRefiner,
    CausalSelfAttention,
    FeedForward,
    MultiInterestExtractor,
    NextClickLoss,
    dmin_blocks,
)
from camn.models.layers.embeddings import (
    POOLS,
    UNKNOWN_ID,
    AttributeEmbedding,
    SideFeatures,
    field_embeddings,
    item_vectors,
    pool_history,
)
from camn.models.layers.head import MLP, Dice, OutputHead, make_activation, mlp_layers
from camn.models.layers.health import attention_health, health_terms, unnormalised_health
from camn.models.layers.packing import (
    PACKED_PAIRS,
    PACKED_ROWS,
    Packing,
    packed_positions,
    steps_every_position,
)
from camn.models.layers.routing import CollaborativeRouting, diversity_loss, keep_top_q

__all__ = [
    "MLP",
    "PACKED_PAIRS",
    "PACKED_ROWS",
    "POOLS",
    "UNKNOWN_ID",
    "AttributeEmbedding",
    "BehaviourRefiner",
    "CausalSelfAttention",
    "CollaborativeRouting",
    "Dice",
    "FeedForward",
    "HeadwiseLinear",
    "MultiInterestExtractor",
    "NextClickLoss",
    "OutputHead",
    "Packing",
    "SideFeatures",
    "TargetAttention",
    "attention_health",
    "causal_mask",
    "diversity_loss",
    "dmin_blocks",
    "field_embeddings",
    "headwise",
    "health_terms",
    "item_vectors",
    "keep_top_q",
    "label_aware_attention",
    "make_activation",
    "masked_softmax",
    "mlp_layers",
    "packed_positions",
    "pool_history",
    "steps_every_position",
    "unnormalised_health",
]
