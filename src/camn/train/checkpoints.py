"""Saved models: ``model.safetensors`` (weights and buffers) next to ``config.json``.

``config.json`` holds what rebuilds the network: the registry name (``model``), the resolved
constructor options (``options``) and the :class:`FeatureSpec` (``spec``), plus whatever the
trainer adds (training config, seed, data path). No pickles are ever loaded: the weights are
read only as safetensors (a pickle, which can run code when loaded, is refused by name), and
a damaged file of either kind is one :class:`DataError` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
from safetensors import SafetensorError

from camn.data.raw import DataError
from camn.data.store import json_problem
from camn.models.base import CTRModel, FeatureSpec
from camn.models.registry import build_model

WEIGHTS, CONFIG = "model.safetensors", "config.json"
CONFIG_KEYS = ("model", "options", "spec")
DAMAGED = "the run is damaged; train it again"


def save_checkpoint(directory: str | Path, model: CTRModel, config: dict) -> Path:
    """Write ``model``'s state and ``config`` (with keys model, options, spec) to a directory."""
    missing = set(CONFIG_KEYS) - set(config)
    if missing:
        raise ValueError(f"checkpoint config lacks {sorted(missing)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_model(model, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def load_config(directory: str | Path) -> dict:
    """``config.json`` of a saved model, parsed and checked for the keys that rebuild it."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise DataError(f"{path} is missing: not a saved model")
    config = read_run_json(path)
    problem = config_problem(config)
    if problem:
        raise DataError(f"{path} {problem}: {DAMAGED}")
    return config


def read_run_json(path: Path) -> object:
    """A JSON file of a run (``config.json``, ``results.json``), parsed; a DataError naming it
    where it does not parse."""
    try:
        return json.loads(path.read_bytes())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{path} {json_problem(error)}: {DAMAGED}") from None


def config_problem(config: object) -> str | None:
    """Why a parsed config cannot rebuild a model (read after the file name), or None."""
    if not isinstance(config, dict):
        return f"holds a JSON {type(config).__name__}, not an object"
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(config["model"], str) or not isinstance(config["options"], dict):
        return "needs a model name (a string) and options (an object)"
    spec = config["spec"]
    if not (isinstance(spec, dict)
            and isinstance(spec.get("attributes"), list)
            and all(isinstance(a, str) for a in spec["attributes"])
            and isinstance(spec.get("vocab_sizes"), list)
            and all(type(n) is int and n > 0 for n in spec["vocab_sizes"])
            and len(spec["vocab_sizes"]) == len(spec["attributes"]) > 0
            and type(spec.get("max_len")) is int and spec["max_len"] > 0):
        return "has no valid spec (attributes, vocab_sizes and max_len of the store)"
    return None


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor in a safetensors file, from its header only."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as file:
            names = file.keys()  # a safe_open handle is not iterable itself
            return {key: tuple(file.get_slice(key).get_shape()) for key in names}
    except SafetensorError as error:
        with path.open("rb") as file:
            start = file.read(9)
        if not start:
            raise DataError(f"{path} is empty: {DAMAGED}") from None
        if looks_like_pickle(start):
            raise DataError(
                f"{path} is a pickle (or torch.save) file, not safetensors; camn never loads a "
                "pickle, since loading one can run any code"
            ) from None
        raise DataError(f"{path} is not a safetensors file ({error}): {DAMAGED}") from None


def looks_like_pickle(start: bytes) -> bool:
    """Whether a file's first 9 bytes are those of a pickle of protocol 2 to 5 (0x80, protocol)
    or of torch.save's zip archive. A safetensors file (8 bytes of header length, then its
    JSON header) can start alike, but has its header's ``{`` at byte 8."""
    pickled = len(start) > 1 and start[0] == 0x80 and 2 <= start[1] <= 5
    return (pickled or start.startswith(b"PK\x03\x04")) and start[8:9] != b"{"


def check_weights(path: Path, model: CTRModel, config_path: Path) -> None:
    """The tensors of ``path`` have the names and shapes of ``model``'s state (the model that
    ``config_path`` describes); a DataError otherwise (weights of another model or store)."""
    saved, wanted = weight_shapes(path), {k: tuple(v.shape) for k, v in model.state_dict().items()}
    differ = [key for key in wanted if key in saved and saved[key] != wanted[key]]
    unexpected = [key for key in saved if key not in wanted]
    if differ:
        key = differ[0]
        detail = f"{key} has shape {saved[key]} in the file but {wanted[key]} in the model"
        if len(differ) > 1:
            detail += f" (and {len(differ) - 1} more tensor(s) of another shape)"
    elif unexpected:
        detail = f"the file holds {len(unexpected)} tensor(s) the model lacks, e.g. {unexpected[0]}"
    else:
        return
    raise DataError(
        f"{path} does not hold the weights of the model that {config_path} describes: {detail}; "
        "the weights come from another model or store"
    )


def load_model(directory: str | Path, device: str = "cpu") -> tuple[CTRModel, dict]:
    """Rebuild the saved model by name and options, load its weights; return (model, config)."""
    directory = Path(directory)
    config = load_config(directory)
    weights, config_path = directory / WEIGHTS, directory / CONFIG
    if not weights.is_file():
        raise DataError(f"{weights} is missing: not a saved model")
    spec = FeatureSpec.from_schema(config["spec"])
    try:
        model = build_model(config["model"], spec, **config["options"])
    except KeyError as error:  # a model that is no longer (or not yet) registered
        raise DataError(f"{directory}: {error.args[0]}") from None
    except (TypeError, ValueError, RuntimeError) as error:  # options this model does not take
        raise DataError(
            f"{config_path}: its options do not build {config['model']!r}: {error}"
        ) from None
    check_weights(weights, model, config_path)
    # safetensors' loader, not load_state_dict: it knows the tensors save_model left out as
    # shared; names or shapes that differ were refused above, so only missing names remain
    missing, _ = safetensors.torch.load_model(model, str(weights), strict=False, device=device)
    if missing:
        raise DataError(
            f"{weights} lacks {len(missing)} tensor(s) of the model that {config_path} describes, "
            f"e.g. {sorted(missing)[0]}; the weights come from another model or store"
        )
    return model.to(device).eval(), config
