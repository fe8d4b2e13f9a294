"""Where an unfinished ``camn train`` run lives, and what ``camn train --resume RUN`` reads.

:func:`camn.train.loop.train_seeds` builds the run ``RUN`` in a hidden sibling folder,
``.RUN.partial`` (:func:`staging_folder`), and renames it to ``RUN`` only when every seed is
done; an earlier ``RUN`` (a camn run folder) stays as it was until then and is deleted after.
Unlike a temporary folder, the staging folder keeps its name and contents when the run fails
(an exception, Ctrl-C, a killed process). It holds:

- ``train.json``, written first: the store (path and summary), the seeds, every
  :class:`~camn.config.TrainConfig` field and the number of processes;
- ``seed_<s>/`` of each finished seed: ``model.safetensors``, ``config.json``,
  ``history.jsonl`` and, written last, ``metrics.json``;
- ``seed_<s>/`` of the seed that was training: ``history.jsonl`` and its newest complete
  training checkpoint, ``checkpoint-<epoch>/`` (:mod:`camn.train.checkpoints`).

``camn train --resume RUN`` reads ``train.json`` back (no setting is given again), keeps the
finished seeds, continues the interrupted one after its last checkpointed epoch and trains
the rest, then swaps the folder in as a run that was never interrupted (``train.json``
deleted: ``results.json`` records the settings of a finished run). A fresh
``camn train --out RUN --force`` deletes the staging folder before it starts; without
``--force`` or ``--resume`` the command refuses while one exists. A run that fails before it
has anything to continue from (no finished seed, no complete checkpoint: a store that cannot
be trained on, a folder that cannot be written) deletes its staging folder, and so does a run
whose training diverged (resuming it would diverge again).

One ``camn train`` (one torchrun) per run folder at a time: the process that writes the
staging folder holds an advisory lock on it (:class:`StagingLock`, ``flock``) until it ends,
and a second ``camn train`` or ``--resume`` of the same run is refused while it is held.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from camn.config import TrainConfig
from camn.data.raw import DataError
from camn.data.store import PreparedStore
from camn.outputs import RUN, remove_owned
from camn.provenance import data_summary
from camn.run_folder import RUN_RESULTS, RUN_SETTINGS, RunFolder, SeedFolder
from camn.train import distributed
from camn.train.checkpoints import checkpoints

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one camn train per run folder is on the user
    fcntl = None

def staging_folder(out: str | Path) -> Path:
    """The hidden sibling folder in which the run ``out`` is built: ``.<name>.partial``."""
    return RunFolder(out).staging.root


@dataclass(frozen=True)
class RunSettings:
    """What ``train.json`` holds: the store's summary (with its ``path``), the seeds, the
    training configuration (a TrainConfig's fields) and the number of processes."""

    data: dict
    seeds: list[int]
    train: dict
    world_size: int

    @classmethod
    def of(cls, store: PreparedStore, config: TrainConfig, seeds: Sequence[int]) -> RunSettings:
        """The settings of a run of ``seeds`` on ``store`` in this process group."""
        return cls(data_summary(store), list(seeds), config.to_dict(),
                   distributed.current().world_size)

    def to_dict(self) -> dict:
        return {"data": self.data, "seeds": self.seeds, "train": self.train,
                "world_size": self.world_size}


def start_staging(staging: Path, settings: RunSettings) -> None:
    """A fresh staging folder (an older unfinished run's is deleted) with ``train.json``."""
    remove_owned(staging, RUN)
    staging.mkdir(parents=True)
    text = json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n"
    RunFolder(staging).settings.write_text(text, encoding="utf-8")


def read_settings(run: str | Path) -> RunSettings:
    """The settings of the interrupted run ``run``; a DataError saying why there is none."""
    run = Path(run)
    staging = staging_folder(run)
    path = RunFolder(staging).settings
    if not path.is_file():
        if RunFolder(run).results.is_file():
            raise DataError(f"--resume {run}: the run is finished ({RUN_RESULTS}); there is "
                            "nothing to resume")
        raise DataError(f"--resume {run}: no interrupted camn train run of {run} to resume "
                        f"(no {staging.name}/{RUN_SETTINGS} beside it)")
    try:
        data = json.loads(path.read_bytes())
        settings = RunSettings(data["data"], data["seeds"], data["train"], data["world_size"])
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


def check_same(run: Path, saved: RunSettings, now: RunSettings) -> None:
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
    path = SeedFolder(seed_dir).metrics
    try:
        metrics = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and "test_auc" in metrics else None


def interrupted_problem(out: Path) -> str | None:
    """Why a fresh ``camn train --out out`` (without --force) must not start: a run that
    another process writes now, or the unfinished run that lies beside it; None where there
    is none."""
    staging = staging_folder(out)
    if not staging.exists():
        return None
    if in_use(staging):
        return busy_message(out)
    return (f"{out} has an interrupted run ({staging}); pass --resume {out} to continue it, "
            "or --force to start again")


def busy_message(out: Path) -> str:
    return (f"{out} is being written by another camn train now ({staging_folder(out)} is in "
            "use); wait for it to end, or choose another --out")


def resumable(staging: Path) -> bool:
    """Whether the staging folder holds anything to continue from: a finished seed or a
    complete training checkpoint."""
    seeds = [seed.root for seed in RunFolder(staging).seed_folders()]
    return any(finished_seed(seed) is not None or checkpoints(seed) for seed in seeds)


def _try_lock(folder: Path) -> int | None:
    """A descriptor of ``folder`` holding its exclusive lock; None where there is no folder.
    Raises BlockingIOError while another process holds the lock."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(handle)
        raise
    return handle


def in_use(staging: Path) -> bool:
    """Whether another process holds the staging folder's lock now."""
    try:
        handle = _try_lock(staging)
    except BlockingIOError:
        return True
    if handle is not None:
        os.close(handle)  # closing releases the lock
    return False


class StagingLock:
    """The lock of one run's staging folder, held by the process that writes it.

    :meth:`acquire` locks the folder as it is now (a DataError naming the run while another
    process holds it); :meth:`release` lets go. The lock belongs to the folder itself, so it
    follows it when it is renamed to the finished run, and ends with the process.
    """

    def __init__(self, out: Path) -> None:
        self.out, self.staging = Path(out), staging_folder(out)
        self.handle: int | None = None

    def acquire(self) -> None:
        self.release()
        try:
            self.handle = _try_lock(self.staging)
        except BlockingIOError:
            raise DataError(busy_message(self.out)) from None

    def release(self) -> None:
        if self.handle is not None:
            os.close(self.handle)
            self.handle = None

    def __enter__(self) -> StagingLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def discard(staging: Path) -> None:
    """Delete a staging folder that holds nothing worth keeping, file by file; a folder that
    cannot be deleted (a file of the user's in it) is left as it is."""
    with contextlib.suppress(DataError, OSError):
        remove_owned(staging, RUN)
