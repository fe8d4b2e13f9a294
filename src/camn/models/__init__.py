"""Models: one file a model, shared layers in the layers package, names in registry.py."""

from camn.models.base import CTRModel, FeatureSpec, ModelOutput
from camn.models.registry import build_model, model_names, register

__all__ = ["CTRModel", "FeatureSpec", "ModelOutput", "build_model", "model_names", "register"]
