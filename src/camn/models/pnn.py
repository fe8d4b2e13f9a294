"""PNN (inner-product variant, IPNN) on the target's and the pooled history's fields.

Qu, Cai, Ren, Zhang, Yu, Wen, Wang. "Product-based Neural Networks for User Response
Prediction", ICDM 2016, https://doi.org/10.1109/ICDM.2016.0151; official code
github Atomu2014/product-nets (``PNN1``). Shapes: B batch, L history length, k attribute slots,
d embedding size, F = 2k fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from camn.models.base import Batch, CTRModel, FeatureSpec, ModelOutput
from camn.models.layers import POOLS, OutputHead, field_embeddings
from camn.models.registry import register


def pairwise_inner_products(
    fields: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """p_ij = <f_i, f_j> for the pairs (rows[n], cols[n]): fields (B, F, d) -> (B, pairs),
    read off the Gram matrix F F^T in one batched matmul."""
    gram = fields @ fields.transpose(1, 2)  # (B, F, F)
    return gram[:, rows, cols]


@register("pnn", display="PNN")
class PNN(CTRModel):
    """IPNN (Qu et al., ICDM 2016): field embeddings and their pairwise inner products, MLP.

    No sequence model.

    Fields: the target's k attribute embeddings and the history's k attribute
    embeddings pooled over the real positions (``history_pool``: "sum" by default, or "mean"),
    F = 2k fields of width d (the embedding layer of the paper's Fig. 1).

    Product layer (paper Sec. 3.1-3.2): the linear signals l_z are the field embeddings
    themselves, z = (f_1 .. f_F); the quadratic signals are p_ij = <f_i, f_j> for every pair
    i < j (F(F-1)/2 of them; the official code's ``PNN1`` takes the pairs i < j, the products
    being symmetric and the self-products only squared norms). The first hidden layer
    l_1 = relu(W_z z + W_p p + b_1) is one linear layer on the concatenation [z, p]: the paper's
    full-rank W_p, without its rank-1 factorisation W_p^n = theta^n theta^n^T, which was a
    cost-saving device for thousands of fields and is unneeded for 2k.

    Output: the shared ``layers.OutputHead`` on [z, p] alone (the fields already hold the
    target; no sum-pooled inputs: what defines PNN is the product layer) -> ``mlp_hidden``
    (200, 80) -> 1, ReLU as in the paper, with batch norm on the input (the inner products of
    pooled sums have a scale of their own).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 18,
        history_pool: str = "sum",
        mlp_hidden: Sequence[int] = (200, 80),
        activation: str = "relu",
        input_norm: bool = True,
    ) -> None:
        super().__init__(spec, embed_dim)
        if history_pool not in POOLS:
            raise ValueError(f"history_pool must be one of {POOLS}, got {history_pool!r}")
        self.pool = history_pool
        num_fields = 2 * self.num_slots
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        width = num_fields * embed_dim + len(rows)
        self.head = OutputHead(
            0, width, pooled_history=False, input_norm=input_norm, hidden=tuple(mlp_hidden),
            activation=activation, with_target=False,
        )
        self.add_side_features(self.head)

    def product_layer(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Fields z (B, F, d) and their inner products p (B, F(F-1)/2)."""
        history, target = self.embed(batch)  # (B, L, k, d), (B, k, d)
        fields = field_embeddings(history, target, batch["mask"], self.pool)  # (B, F, d)
        return fields, pairwise_inner_products(fields, self.pair_rows, self.pair_cols)

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        fields, products = self.product_layer(batch)
        features = torch.cat([fields.flatten(1), products], dim=-1)
        logits = self.head(features, side=self.side_features(batch))
        return ModelOutput(logits, self.no_aux_loss(logits))
