"""Activations, the MLP and the output head every model ends in.

Shapes: B batch, D = k*d item width, F the width of a model's own features, F' that of the
side features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class Dice(nn.Module):
    """Dice activation (Zhou et al., DIN, KDD 2018): p(x) * x + (1 - p(x)) * alpha * x,
    p = sigmoid(batch-normalised x)."""

    def __init__(self, num_features: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(num_features, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        p = torch.sigmoid(self.norm(x.reshape(-1, shape[-1]))).reshape(shape)
        return p * x + (1 - p) * self.alpha * x


def make_activation(name: str, num_features: int) -> nn.Module:
    if name == "dice":
        return Dice(num_features)
    if name == "prelu":
        return nn.PReLU(num_features)
    if name == "relu":
        return nn.ReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}; choose dice, prelu, relu or sigmoid")


def mlp_layers(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: str,
    input_norm: bool,
    dropout: float = 0.0,
) -> list[nn.Module]:
    """[BatchNorm(in_dim)] (with ``input_norm``), then Linear + activation (+ dropout) per
    hidden size, then Linear(-> out_dim): the layers of ``MLP`` and ``OutputHead``."""
    layers: list[nn.Module] = [nn.BatchNorm1d(in_dim)] if input_norm else []
    width = in_dim
    for size in hidden:
        layers += [nn.Linear(width, size), make_activation(activation, size)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_dim))
    return layers


class MLP(nn.Module):
    """Linear layers with an activation between them, ending in ``out_dim`` outputs.

    ``input_norm`` puts a BatchNorm on the input, as DMIN's and DIEN's output networks do.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (200, 80),
        out_dim: int = 1,
        activation: str = "dice",
        input_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *mlp_layers(in_dim, hidden, out_dim, activation, input_norm, dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class OutputHead(nn.Module):
    """The output network of every model: its inputs -> an MLP -> one click logit.

    Inputs, concatenated in this order: the target item t (D), the sum-pooled history s (D) and
    t * s (D) (``pooled_history``), then the model's own features (its interest vector(s), or
    the fields of a static model). Then BatchNorm on that input (``input_norm``), hidden layers
    ``hidden`` with ``activation``, a linear layer to one logit.

    The default, shared by every sequence model so that they differ in their sequence modules
    only, is DMIN's output network (official ``build_fcn_net`` of the DIEN code base, less its
    user-id embedding: no model here embeds user ids, users of the test split are unseen):
    [t, s, t * s, features], BatchNorm, 200 -> 80 Dice -> 1. ``pooled_history=False`` leaves
    [t, features], the form of the DIN and CAMN papers and FuxiCTR's default (what the pooled
    inputs are worth: docs/results.md, "Faithfulness against FuxiCTR").
    ``with_target=False`` (the static models, whose fields already hold the target) feeds the
    features alone.

    Side features (``add_side_input``, the user, context and numeric features of
    ``CTRModel.add_side_features``), width F', come last: the input is [inputs, side]. The first
    linear layer on it is computed as W [x, s] + b = (W_x x + b) + W_s s, and the input
    BatchNorm, per feature, as one on x and one on s, so that the side block's parameters
    (``side_norm``, ``side_input``) come after every other one: without side features the head
    is what it was, and with them its other parameters draw the same initial values. W_s is
    drawn as ``nn.Linear`` draws a layer of the whole input's fan-in, U(+-1/sqrt(in_dim + F')).
    """

    def __init__(
        self,
        item_width: int,
        feature_width: int,
        *,
        pooled_history: bool = True,
        input_norm: bool = True,
        hidden: Sequence[int] = (200, 80),
        activation: str = "dice",
        with_target: bool = True,
    ) -> None:
        super().__init__()
        if pooled_history and not with_target:
            raise ValueError("pooled_history needs the target (t * s is one of its inputs)")
        self.with_target, self.pooled_history = with_target, pooled_history
        target_width = item_width if with_target else 0
        pooled_width = 2 * item_width if pooled_history else 0
        self.in_dim = target_width + pooled_width + feature_width
        self.net = nn.Sequential(*mlp_layers(self.in_dim, hidden, 1, activation, input_norm))
        self.first_linear = 1 if input_norm else 0  # the index of the first Linear in ``net``
        self.side_norm: nn.Module | None = None
        self.side_input: nn.Linear | None = None

    def add_side_input(self, width: int) -> None:
        """Append ``width`` side features to the input: their BatchNorm (with ``input_norm``)
        and their block W_s of the first linear layer."""
        first = self.net[self.first_linear]
        self.side_norm = nn.BatchNorm1d(width) if self.first_linear else nn.Identity()
        self.side_input = nn.Linear(width, first.out_features, bias=False)
        bound = 1 / math.sqrt(self.in_dim + width)
        nn.init.uniform_(self.side_input.weight, -bound, bound)

    def forward(
        self,
        features: torch.Tensor,
        target: torch.Tensor | None = None,
        history_sum: torch.Tensor | None = None,
        side: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """features (B, F), target (B, D), history_sum (B, D): the history's real items summed
        (``pool_history`` or ``Packing.sum_per_sample``; unused without ``pooled_history``),
        side (B, F') the side features (``CTRModel.side_features``; None without them)
        -> logits (B,)."""
        parts = [target] if self.with_target else []
        if self.pooled_history:
            parts += [history_sum, target * history_sum]
        inputs = torch.cat([*parts, features], dim=-1) if parts else features
        if side is None:
            return self.net(inputs).squeeze(-1)
        if self.side_input is None:
            raise ValueError("side features given to an output head built without them "
                             "(add_side_input)")
        first = self.first_linear + 1
        hidden = self.net[:first](inputs) + self.side_input(self.side_norm(side))
        return self.net[first:](hidden).squeeze(-1)

