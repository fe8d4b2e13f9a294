"""Saved models: ``model.safetensors`` (weights and buffers) next to ``config.json``.

``config.json`` holds what rebuilds the network: the registry name (``model``), the resolved
constructor options (``options``) and the :class:`FeatureSpec` (``spec``), plus whatever the
trainer adds (training config, seed, data path). No pickles are ever loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch

from camn.data.raw import DataError
from camn.models.base import CTRModel, FeatureSpec
from camn.models.registry import build_model

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_checkpoint(directory: str | Path, model: CTRModel, config: dict) -> Path:
    """Write ``model``'s state and ``config`` (with keys model, options, spec) to a directory."""
    missing = {"model", "options", "spec"} - set(config)
    if missing:
        raise ValueError(f"checkpoint config lacks {sorted(missing)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_model(model, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def load_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise DataError(f"{path} is missing: not a saved model")
    return json.loads(path.read_text())


def load_model(directory: str | Path, device: str = "cpu") -> tuple[CTRModel, dict]:
    """Rebuild the saved model by name and options, load its weights; return (model, config)."""
    directory = Path(directory)
    config = load_config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise DataError(f"{weights} is missing: not a saved model")
    spec = FeatureSpec.from_schema(config["spec"])
    try:
        model = build_model(config["model"], spec, **config["options"])
    except KeyError as error:  # a model that is no longer (or not yet) registered
        raise DataError(f"{directory}: {error.args[0]}") from None
    safetensors.torch.load_model(model, str(weights), strict=True, device=device)
    return model.to(device).eval(), config
