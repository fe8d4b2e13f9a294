"""What every model is: a network from a batch to click logits, plus optional extra losses.

A model file holds only its network: ``forward(batch, extra_losses=False) -> ModelOutput``.
Extra (auxiliary) losses are computed only when the caller asks for them: the trainer calls
``model(batch, extra_losses=True)`` on its training batches and adds ``output.aux_loss``
(already weighted) to the BCE loss; evaluation, prediction and export call ``model(batch)``
and get a zero ``aux_loss``. Models never see labels of the target except through the
trainer's loss; extra losses may use the history and the drawn ``history_negative`` items
(declare ``needs_history_negatives = True``, and the trainer's batches carry them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from camn.models.layers import AttributeEmbedding, OutputHead, SideFeatures

Batch = dict[str, torch.Tensor]


# The side features' batch keys (``FeatureSpec``): ids (B, U), (B, C) int64; values (B, N) float32
USER_FEATURES, CONTEXT, NUMERIC = "user_features", "context", "numeric"
# FeatureSpec's optional fields, written by ``to_dict`` only where they are not empty
_SIDE_FIELDS = ("user_features", "user_feature_sizes", "context_features", "context_sizes",
                "numeric_features", "bag_slots", "bag_lengths")


@dataclass(frozen=True)
class FeatureSpec:
    """What the model's inputs are: attribute names, vocabulary sizes, history length, and the
    optional side features.

    Every vocabulary has id 0 for padding, 1 for unknown, real values from 2.

    - ``user_features`` with their vocabulary sizes ``user_feature_sizes``: the batch's
      ``"user_features"`` ids (B, U), columns of a user table (age, gender ...).
    - ``context_features`` with ``context_sizes``: the batch's ``"context"`` ids (B, C),
      columns of the impression row (hour, device ...).
    - ``numeric_features``: the batch's ``"numeric"`` values (B, N), standardised upstream.
    - ``bag_slots``: the attribute slots (never slot 0, the item id) whose value is a bag of
      values per item, at most ``bag_lengths`` of them (one length per bag slot). The bags
      are a table of the embedding indexed by item id (``AttributeEmbedding.set_bags``); the
      column of such a slot in ``history`` and ``target`` is ignored.

    The user, context and numeric features reach every model's output network only
    (``CTRModel.add_side_features``); the bags are item attributes like any other slot.
    """

    attributes: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    max_len: int
    user_features: tuple[str, ...] = ()
    user_feature_sizes: tuple[int, ...] = ()
    context_features: tuple[str, ...] = ()
    context_sizes: tuple[int, ...] = ()
    numeric_features: tuple[str, ...] = ()
    bag_slots: tuple[int, ...] = ()
    bag_lengths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for names, sizes in (("user_features", "user_feature_sizes"),
                             ("context_features", "context_sizes")):
            if len(getattr(self, names)) != len(getattr(self, sizes)):
                raise ValueError(f"FeatureSpec: {names} {list(getattr(self, names))} and "
                                 f"{sizes} {list(getattr(self, sizes))} differ in length")
            if any(size < 2 for size in getattr(self, sizes)):
                raise ValueError(f"FeatureSpec: every one of {sizes} must be at least 2 (ids 0 "
                                 "and 1 are padding and unknown), got "
                                 f"{list(getattr(self, sizes))}")
        if len(self.bag_slots) != len(self.bag_lengths):
            raise ValueError(f"FeatureSpec: bag_slots {list(self.bag_slots)} and bag_lengths "
                             f"{list(self.bag_lengths)} differ in length")
        if len(set(self.bag_slots)) != len(self.bag_slots) or any(
            not 1 <= slot < self.num_slots for slot in self.bag_slots
        ):
            raise ValueError(f"FeatureSpec: bag_slots must be distinct attribute slots in "
                             f"[1, {self.num_slots}) (slot 0 is the item id), got "
                             f"{list(self.bag_slots)}")
        if any(length < 1 for length in self.bag_lengths):
            raise ValueError(f"FeatureSpec: every bag length must be at least 1, got "
                             f"{list(self.bag_lengths)}")

    @property
    def num_slots(self) -> int:
        return len(self.attributes)

    @property
    def has_side_features(self) -> bool:
        """Whether the output network takes user, context or numeric features."""
        return bool(self.user_features or self.context_features or self.numeric_features)

    @classmethod
    def from_schema(cls, schema: dict) -> FeatureSpec:
        side = {key: tuple(schema[key]) for key in _SIDE_FIELDS if key in schema}
        return cls(tuple(schema["attributes"]), tuple(schema["vocab_sizes"]), schema["max_len"],
                   **side)

    def to_dict(self) -> dict:
        """The spec as JSON: the side fields only where not empty, so that a spec without
        them writes what specs wrote before there were any."""
        out = {
            "attributes": list(self.attributes),
            "vocab_sizes": list(self.vocab_sizes),
            "max_len": self.max_len,
        }
        return out | {key: list(getattr(self, key)) for key in _SIDE_FIELDS if getattr(self, key)}


@dataclass
class ModelOutput:
    """logits (B,); aux_loss: the weighted sum of the extra losses where the forward pass was
    asked for them (``extra_losses=True``), else a zero scalar; aux_terms: detached scalars or
    per-head vectors for logging, the unweighted extra-loss terms (when asked) and the
    attention health of the evaluation pass (``CTRModel.evaluate``); routing: (B, L, k)
    attribute scores of every history click where the model has them (CAMN's P), else None."""

    logits: torch.Tensor
    aux_loss: torch.Tensor
    aux_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    routing: torch.Tensor | None = None


class CTRModel(nn.Module):
    """Base class: owns the k attribute embeddings shared by history and target."""

    needs_history_negatives: ClassVar[bool] = False
    packs_rows: ClassVar[bool] = False  # reads ``layers.packed_positions`` from its batches
    # what ``camn tune`` searches of the model's options, beside the shared training settings
    # (``config.SEARCH_SPACE``): option -> a list of choices or a range {low, high, log}
    search_space: ClassVar[dict[str, object]] = {}
    # the allowed values of the model's own numeric options, beside the shared names'
    # (``registry.DOMAINS``): option -> (value, spec or None) -> why it is refused, or None
    option_domains: ClassVar[dict[str, Callable[[float, FeatureSpec | None], str | None]]] = {}

    def __init__(self, spec: FeatureSpec, embed_dim: int = 18) -> None:
        super().__init__()
        self.spec = spec
        self.embed_dim = embed_dim
        self.num_slots = spec.num_slots
        self.embedding = AttributeEmbedding(
            spec.vocab_sizes, embed_dim, spec.bag_slots, spec.bag_lengths
        )
        self.side_inputs: SideFeatures | None = None

    def add_side_features(self, head: OutputHead) -> None:
        """The last step of every model's ``__init__``: where the spec has user, context or
        numeric features, their embeddings (``layers.SideFeatures``) and ``head``'s input block
        for them (``OutputHead.add_side_input``), created after every other parameter so that
        those draw the initial values they draw without side features. A no-op without them."""
        spec = self.spec
        if not spec.has_side_features:
            return
        sizes = spec.user_feature_sizes + spec.context_sizes
        self.side_inputs = SideFeatures(sizes, len(spec.numeric_features), self.embed_dim)
        head.add_side_input(self.side_inputs.width)

    def side_features(self, batch: Batch) -> torch.Tensor | None:
        """The output network's side input (B, (U + C) * d + N): the embedded user and context
        features and the numeric ones; None where the spec has none."""
        if self.side_inputs is None:
            if self.spec.has_side_features:
                raise NotImplementedError(f"{type(self).__name__} takes no side features: its "
                                          "__init__ must end with self.add_side_features(head)")
            return None
        spec = self.spec
        categorical = ((USER_FEATURES, spec.user_features), (CONTEXT, spec.context_features))
        ids = [self.side_input(batch, key, names) for key, names in categorical if names]
        numeric = None
        if spec.numeric_features:
            numeric = self.side_input(batch, NUMERIC, spec.numeric_features)
        return self.side_inputs(torch.cat(ids, dim=-1) if ids else None, numeric)

    def side_input(self, batch: Batch, key: str, names: tuple[str, ...]) -> torch.Tensor:
        """batch[key] (B, len(names)), or a ValueError that says what the spec expects."""
        values = batch.get(key)
        if values is None or values.dim() != 2 or values.shape[1] != len(names):
            got = "no such key" if values is None else f"shape {tuple(values.shape)}"
            raise ValueError(f"{type(self).__name__} expects batch[{key!r}] of shape (B, "
                             f"{len(names)}), the features {list(names)}; got {got}")
        return values

    def embed(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """history (B, L, k, d) and target (B, k, d) embeddings."""
        return self.embedding(batch["history"]), self.embedding(batch["target"])

    def no_aux_loss(self, reference: torch.Tensor) -> torch.Tensor:
        return reference.new_zeros(())

    def history_negatives(self, batch: Batch) -> torch.Tensor:
        """The drawn ``history_negative`` items (B, L, k) that an extra loss needs, or a
        ValueError that says where they come from."""
        if "history_negative" not in batch:
            raise ValueError(
                f"{type(self).__name__}'s extra losses need batch['history_negative'] (an item "
                "drawn at every history position): batches drawn with history_negatives=True"
            )
        return batch["history_negative"]

    def forward(self, batch: Batch, extra_losses: bool = False) -> ModelOutput:
        """Click logits of ``batch``; with ``extra_losses`` also the model's extra losses."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> ModelOutput:
        """The evaluation pass, without gradients: ``forward(batch)``'s output, with the health
        of the model's attention heads in ``aux_terms``, per head: ``attention_entropy`` and
        ``attention_abs_logit`` (``layers.attention_health``), and for DMIN's and CAMN's heads
        ``diversity`` (L_d, Eq. 7, over the same heads). Validation and ``camn explain`` ask
        for it; prediction, export and training call ``forward`` and do not pay for it. A model
        without attention heads has nothing to add."""
        return self(batch)
