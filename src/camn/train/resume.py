"""Where an unfinished ``camn train`` run lives, and what ``camn train --resume RUN`` reads.

:func:`camn.train.loop.train_seeds` builds the run ``RUN`` in a hidden sibling folder,
``.RUN.partial`` (:func:`staging_folder`), and renames it to ``RUN`` only when every seed is
done; an earlier ``RUN`` (a camn run folder) stays as it was until then and is deleted after.
Unlike a temporary folder, the staging folder keeps its name and contents when the run fails
(an exception, Ctrl-C, a killed process). It holds:

- ``train.json``, written first: the store (path and summary), the seeds, every
  :class:`~camn.train.loop.TrainConfig` field and the number of processes;
- ``seed_<s>/`` of each finished seed: ``model.safetensors``, ``config.json``,
  ``history.jsonl`` and, written last, ``metrics.json``;
- ``seed_<s>/`` of the seed that was training: ``history.jsonl`` and its newest complete
  training checkpoint, ``checkpoint-<epoch>/`` (:mod:`camn.train.checkpoints`).

``camn train --resume RUN`` reads ``train.json`` back (no setting is given again), keeps the
finished seeds, continues the interrupted one after its last checkpointed epoch and trains
the rest, then swaps the folder in as a run that was never interrupted (``train.json``
deleted: ``results.json`` records the settings of a finished run). A fresh
``camn train --out RUN --force`` deletes the staging folder before it starts; without
``--force`` or ``--resume`` the command refuses while one exists. One ``camn train`` (one
torchrun) per run folder at a time: two at once would share the staging folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from camn.data.raw import DataError
from camn.outputs import RUN, remove_owned

SETTINGS = "train.json"
METRICS = "metrics.json"
SUFFIX = ".partial"


def staging_folder(out: str | Path) -> Path:
    """The hidden sibling folder in which the run ``out`` is built: ``.<name>.partial``."""
    out = Path(out)
    return out.with_name(f".{out.name}{SUFFIX}")


@dataclass(frozen=True)
class Settings:
    """What ``train.json`` holds: the store's summary (with its ``path``), the seeds, the
    training configuration (a TrainConfig's fields) and the number of processes."""

    data: dict
    seeds: list[int]
    train: dict
    world_size: int

    def to_dict(self) -> dict:
        return {"data": self.data, "seeds": self.seeds, "train": self.train,
                "world_size": self.world_size}


def start_staging(staging: Path, settings: Settings) -> None:
    """A fresh staging folder (an older unfinished run's is deleted) with ``train.json``."""
    remove_owned(staging, RUN)
    staging.mkdir(parents=True)
    text = json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n"
    (staging / SETTINGS).write_text(text, encoding="utf-8")


def read_settings(run: str | Path) -> Settings:
    """The settings of the interrupted run ``run``; a DataError saying why there is none."""
    run = Path(run)
    staging = staging_folder(run)
    path = staging / SETTINGS
    if not path.is_file():
        if (run / "results.json").is_file():
            raise DataError(f"--resume {run}: the run is finished (results.json); there is "
                            "nothing to resume")
        raise DataError(f"--resume {run}: no interrupted camn train run of {run} to resume "
                        f"(no {staging.name}/{SETTINGS} beside it)")
    try:
        data = json.loads(path.read_bytes())
        settings = Settings(data["data"], data["seeds"], data["train"], data["world_size"])
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path} is not the settings of a camn train run: the interrupted "
                        "run is damaged; start it again with --force") from None
    if not (isinstance(settings.seeds, list) and settings.seeds
            and all(type(seed) is int for seed in settings.seeds)
            and isinstance(settings.train, dict) and isinstance(settings.data, dict)
            and isinstance(settings.data.get("path"), str)):
        raise DataError(f"{path} lacks the seeds, store or training settings: the interrupted "
                        "run is damaged; start it again with --force")
    return settings


def check_same(run: Path, saved: Settings, now: Settings) -> None:
    """Refuse to continue ``run`` with other settings than those it began with."""
    for key, label in (("seeds", "seeds"), ("train", "training settings"),
                       ("world_size", "number of processes")):
        if getattr(saved, key) != getattr(now, key):
            raise DataError(f"--resume {run}: the run began with other {label} "
                            f"({getattr(saved, key)} then, {getattr(now, key)} now)")
    differ = [key for key in saved.data if key != "path" and saved.data[key] != now.data.get(key)]
    if differ:
        raise DataError(f"--resume {run}: the store {now.data['path']} is not the one the run "
                        f"began on ({', '.join(differ)} differ)")


def finished_seed(seed_dir: Path) -> dict | None:
    """A finished seed's metrics (its ``metrics.json``, written last), or None where the seed
    did not finish (no file, or one cut off by a kill while it was written)."""
    path = seed_dir / METRICS
    try:
        metrics = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and "test_auc" in metrics else None


def interrupted_problem(out: Path) -> str | None:
    """Why a fresh ``camn train --out out`` (without --force) must not start: the unfinished
    run that lies beside it; None where there is none."""
    staging = staging_folder(out)
    if not staging.exists():
        return None
    return (f"{out} has an interrupted run ({staging}); pass --resume {out} to continue it, "
            "or --force to start again")
