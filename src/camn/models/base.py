"""What every model is: a network from a batch to click logits, plus optional extra losses.

A model file holds only its network: ``forward(batch) -> ModelOutput``. The trainer adds
``output.aux_loss`` (already weighted) to the BCE loss. Models never see labels of the target
except through the trainer's loss; auxiliary losses may use the history and the drawn
``history_negative`` items (declare ``needs_history_negatives = True``).
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
    """logits (B,); aux_loss: weighted sum of extra losses (scalar, 0 if none); aux_terms: the
    unweighted terms, detached, for logging; routing: (B, L, k) attribute scores of every
    history click where the model has them (CAMN's P), else None."""

    logits: torch.Tensor
    aux_loss: torch.Tensor
    aux_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    routing: torch.Tensor | None = None


class CTRModel(nn.Module):
    """Base class: owns the k attribute embeddings shared by history and target."""

    needs_history_negatives: ClassVar[bool] = False

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

    def forward(self, batch: Batch) -> ModelOutput:
        raise NotImplementedError
