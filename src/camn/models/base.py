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

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from camn.models.layers import AttributeEmbedding

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FeatureSpec:
    """What the model's inputs are: attribute names, vocabulary sizes, history length."""

    attributes: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    max_len: int

    @property
    def num_slots(self) -> int:
        return len(self.attributes)

    @classmethod
    def from_schema(cls, schema: dict) -> FeatureSpec:
        return cls(tuple(schema["attributes"]), tuple(schema["vocab_sizes"]), schema["max_len"])

    def to_dict(self) -> dict:
        return {
            "attributes": list(self.attributes),
            "vocab_sizes": list(self.vocab_sizes),
            "max_len": self.max_len,
        }


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

    def __init__(self, spec: FeatureSpec, embed_dim: int = 18) -> None:
        super().__init__()
        self.spec = spec
        self.embed_dim = embed_dim
        self.num_slots = spec.num_slots
        self.embedding = AttributeEmbedding(spec.vocab_sizes, embed_dim)

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
