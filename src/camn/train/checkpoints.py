"""Saved models: ``model.safetensors`` (weights and buffers) next to ``config.json``.

``config.json`` holds what rebuilds the network: the registry name (``model``), the resolved
constructor options (``options``) and the :class:`FeatureSpec` (``spec``), plus whatever the
trainer adds (training config, seed, data path). No pickles are ever loaded: the weights are
read only as safetensors (a pickle, which can run code when loaded, is refused by name), and
a damaged file of either kind is one :class:`DataError` naming it.

While a seed trains, the trainer also writes a *training checkpoint* after every epoch
(:func:`save_training_state`): a folder ``checkpoint-<epoch>`` in the seed's folder with the
last weights (``last.safetensors``), the best weights so far (``best.safetensors``), Adam's
state (``optimizer.safetensors`` for its tensors, the rest in ``state.json``), the random
number generators' states (torch's in ``rng.safetensors``, Python's and numpy's in
``state.json``) and the :class:`Progress` and per-epoch history (``state.json``). It is
written as ``checkpoint-<epoch>.partial`` and renamed once complete, and only then is the
previous epoch's folder deleted: a process killed at any moment leaves at least the last
complete checkpoint (or none, before the first epoch ends), which :func:`load_training_state`
finds. A finished seed deletes its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

from camn.config import TrainConfig
from camn.data.fingerprint import KEY as VOCABULARIES
from camn.data.fingerprint import store_fingerprints
from camn.data.raw import DataError
from camn.data.store import PreparedStore
from camn.data.store_checks import json_problem
from camn.models.base import CTRModel, FeatureSpec
from camn.models.registry import build_model
from camn.run_folder import (
    BEST,
    CHECKPOINT,
    CHECKPOINT_FILES,
    CONFIG,
    LAST,
    OPTIMIZER,
    RNG,
    STAGING_SUFFIX,
    STATE,
    WEIGHTS,
    RunFolder,
    SeedFolder,
)
from camn.train import distributed

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


def saved_model_config(
    store: PreparedStore, config: TrainConfig, seed: int, spec: FeatureSpec, options: dict
) -> dict:
    """What a seed's ``config.json`` records: what rebuilds the model (``model``, its resolved
    ``options``, ``spec``), the training configuration, the seed, the store and its
    vocabularies' fingerprints, and the number of processes."""
    return {
        "model": config.model,
        "options": options,
        "spec": spec.to_dict(),
        "train": config.to_dict(),
        "seed": seed,
        "data": str(store.root.resolve()),
        VOCABULARIES: store_fingerprints(store),
        "world_size": distributed.current().world_size,
    }


def write_run_json(path: Path, data: dict) -> None:
    """A JSON file of a run (``metrics.json``, ``results.json``), keys sorted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


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


def read_results(run: str | Path) -> dict:
    """A finished run's ``results.json``, checked for the model name and the seeds it lists."""
    path = RunFolder(run).results
    if not path.is_file():
        raise DataError(f"{path} is missing: not a finished camn train run")
    results = read_run_json(path)
    if not (isinstance(results, dict) and isinstance(results.get("model"), str)
            and isinstance(results.get("seeds"), list) and results["seeds"]
            and all(type(seed) is int for seed in results["seeds"])):
        raise DataError(f"{path} does not name the model and its seeds: {DAMAGED}")
    return results


def seed_folder(run: str | Path, seed: int) -> SeedFolder:
    """``run/seed_<seed>``, a seed that ``results.json`` lists: a DataError when it is gone."""
    folder = RunFolder(run).seed(seed)
    if not folder.root.is_dir():
        raise DataError(f"{folder.root} is missing: {RunFolder(run).results} lists seed {seed} "
                        f"but its folder is gone (deleted or moved): {DAMAGED}")
    return folder


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


# ------------------------------------------------------------------ training checkpoints


CHECKPOINT_DAMAGED = "the checkpoint is damaged; start the run again (camn train --force)"


@dataclass
class Progress:
    """How far a seed's training got: epochs finished, the best epoch and its monitored
    score (higher is better), time and training samples so far, one record per epoch."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float = -math.inf
    train_seconds: float = 0.0
    fit_seconds: float = 0.0
    samples: int = 0
    history: list[dict] = field(default_factory=list)


def cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Own contiguous CPU copies: safetensors refuses tensors that share memory."""
    return {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}


def split_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state_dict as (tensors named ``<param index>.<name>``, the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                rest.setdefault(str(index), {})[name] = value
    return tensors, {"state": rest, "param_groups": state["param_groups"]}


def join_optimizer(tensors: dict[str, torch.Tensor], rest: dict, groups: list[dict]) -> dict:
    """The inverse of :func:`split_optimizer`, for an optimizer whose ``param_groups`` (in its
    state_dict) are ``groups``: they must be the saved ones (JSON turned tuples into lists, so
    the optimizer's own are kept, and compared as JSON)."""
    if json.loads(json.dumps(groups)) != rest["param_groups"]:
        raise ValueError("the optimizer's settings or parameter groups differ")
    state: dict[int, dict] = {int(index): dict(values) for index, values in rest["state"].items()}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}


def rng_states() -> tuple[dict[str, torch.Tensor], dict]:
    """torch's generator states (CPU, and every CUDA device in use) and Python's and numpy's
    global ones (as JSON-ready lists)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    name, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)
    python = random.getstate()
    rest = {
        "python": [python[0], list(python[1]), python[2]],
        "numpy": [name, keys.tolist(), position, has_gauss, gauss],
    }
    return tensors, rest


def set_rng_states(tensors: dict[str, torch.Tensor], rest: dict) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = rest["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, position, has_gauss, cached = rest["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def save_training_state(
    seed_dir: Path,
    progress: Progress,
    model: torch.nn.Module,
    best_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> Path:
    """Write the checkpoint of ``progress.epoch`` (module docstring) and delete older ones."""
    final = SeedFolder(seed_dir).checkpoint(progress.epoch)
    work = final.with_name(final.name + STAGING_SUFFIX)
    remove_checkpoint(work)  # a leftover of a killed process
    work.mkdir(parents=True)
    optimizer_tensors, optimizer_rest = split_optimizer(optimizer.state_dict())
    rng_tensors, rng_rest = rng_states()
    for name, tensors in ((LAST, model.state_dict()), (BEST, best_state),
                          (OPTIMIZER, optimizer_tensors), (RNG, rng_tensors)):
        safetensors.torch.save_file(cpu_tensors(tensors), str(work / name))
    state = {"progress": dataclasses.asdict(progress), "optimizer": optimizer_rest, "rng": rng_rest}
    (work / STATE).write_text(json.dumps(state) + "\n")
    for name in CHECKPOINT_FILES:
        sync(work / name)
    work.rename(final)
    sync(seed_dir)
    for older in checkpoints(seed_dir):
        if older != final:
            remove_checkpoint(older)
    return final


def sync(path: Path) -> None:
    """fsync a file or folder (a folder: its entries, e.g. a rename)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def checkpoints(seed_dir: Path) -> list[Path]:
    """The complete checkpoint folders of a seed, oldest first."""
    if not seed_dir.is_dir():
        return []
    found = [(int(m[1]), p) for p in seed_dir.iterdir() if (m := CHECKPOINT.fullmatch(p.name))]
    return [path for _, path in sorted(found)]


def remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint folder (complete or not) file by file; a missing one is fine."""
    if not folder.is_dir():
        return
    for name in CHECKPOINT_FILES:
        (folder / name).unlink(missing_ok=True)
    folder.rmdir()


def remove_training_state(seed_dir: Path) -> None:
    """Delete every checkpoint folder of a seed, unfinished ones included."""
    for folder in SeedFolder(seed_dir).checkpoint_folders():
        remove_checkpoint(folder)


def load_training_state(
    seed_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> tuple[Progress, dict[str, torch.Tensor]] | None:
    """Load the newest complete checkpoint of ``seed_dir`` into ``model``, ``optimizer`` and
    the random number generators; return (progress, best state), or None where there is none.

    ``model`` and ``optimizer`` must be built as for the checkpointed run (same config and
    seed); a checkpoint that does not fit them, or a damaged one, is a DataError naming it.
    """
    found = checkpoints(seed_dir)
    if not found:
        return None
    folder = found[-1]
    try:
        state = json.loads((folder / STATE).read_bytes())
    except (OSError, ValueError) as error:
        path = folder / STATE
        raise DataError(f"{path} cannot be read ({error}): {CHECKPOINT_DAMAGED}") from None
    tensors = {name: read_tensors(folder / name, device)
               for name in (LAST, BEST, OPTIMIZER, RNG)}
    try:
        progress = Progress(**state["progress"])
        model.load_state_dict(tensors[LAST])
        groups = optimizer.state_dict()["param_groups"]
        optimizer.load_state_dict(join_optimizer(tensors[OPTIMIZER], state["optimizer"], groups))
        set_rng_states({k: v.cpu() for k, v in tensors[RNG].items()}, state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"{folder} does not fit the run it belongs to ({detail}): {CHECKPOINT_DAMAGED}"
        ) from None
    return progress, tensors[BEST]


def read_tensors(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file on ``device``; a DataError naming it where damaged."""
    try:
        return safetensors.torch.load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as error:
        raise DataError(f"{path} cannot be read ({error}): {CHECKPOINT_DAMAGED}") from None
