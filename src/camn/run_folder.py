"""The layout of a ``camn train`` run folder: every file name, spelled once.

::

    RUN/
      results.json          the seeds' results, their mean ± std, the resolved configuration
      train.json            the run's settings, while it is unfinished (in .RUN.partial)
      seed_<s>/             a seed folder, also a saved model folder on its own
        model.safetensors   the best epoch's weights
        config.json         what rebuilds the model
        metrics.json        the seed's result, written last
        history.jsonl       one record an epoch (the training log)
        tensorboard/        with tensorboard on
        checkpoint-<e>/     while the seed trains: last, best, optimizer and rng
                            safetensors, state.json (checkpoint-<e>.partial while written)

:class:`RunFolder` and :class:`SeedFolder` name the paths; the trainer, resume, checkpoints,
``camn.load`` and :mod:`camn.outputs` (what ``--force`` may replace: :data:`RUN_LAYOUT`,
:data:`SEED_LAYOUT`) all take them from here, so a file the trainer starts writing is added
in one place. Nothing here reads or writes a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUN_RESULTS = "results.json"
RUN_SETTINGS = "train.json"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
SEED_METRICS = "metrics.json"
EPOCH_LOG = "history.jsonl"  # the name older runs have: kept so that they stay readable
TENSORBOARD = "tensorboard"
STAGING_SUFFIX = ".partial"
CHECKPOINT_PREFIX = "checkpoint-"
LAST, BEST, OPTIMIZER, RNG, STATE = (
    "last.safetensors", "best.safetensors", "optimizer.safetensors", "rng.safetensors",
    "state.json",
)
CHECKPOINT_FILES = (LAST, BEST, OPTIMIZER, RNG, STATE)
CHECKPOINT = re.compile(re.escape(CHECKPOINT_PREFIX) + r"(\d+)")
SEED = re.compile(r"seed_(-?\d+)")

# A layout maps an entry name (a regular expression, matched in full) to FILE or a sub-layout.
FILE = None
Layout = dict[str, "Layout | None"]
# safetensors writes a file as .tmpXXXXXX and renames it: a process killed meanwhile leaves it
SAFETENSORS_PARTIAL = r"\.tmp[A-Za-z0-9]{6}"
CHECKPOINT_LAYOUT: Layout = {
    **{re.escape(name): FILE for name in CHECKPOINT_FILES}, SAFETENSORS_PARTIAL: FILE,
}
SEED_LAYOUT: Layout = {
    re.escape(CONFIG): FILE, re.escape(WEIGHTS): FILE, re.escape(SEED_METRICS): FILE,
    re.escape(EPOCH_LOG): FILE, SAFETENSORS_PARTIAL: FILE,
    CHECKPOINT.pattern + f"({re.escape(STAGING_SUFFIX)})?": CHECKPOINT_LAYOUT,
    re.escape(TENSORBOARD): {r"events\.out\.tfevents\..+": FILE},
}
RUN_LAYOUT: Layout = {re.escape(RUN_RESULTS): FILE, re.escape(RUN_SETTINGS): FILE,
                      SEED.pattern: SEED_LAYOUT}


@dataclass(frozen=True)
class SeedFolder:
    """``seed_<s>/`` of a run, or any saved model folder."""

    root: Path

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / SEED_METRICS

    @property
    def epoch_log(self) -> Path:
        return self.root / EPOCH_LOG

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    def checkpoint(self, epoch: int) -> Path:
        return self.root / f"{CHECKPOINT_PREFIX}{epoch}"

    def checkpoint_folders(self) -> list[Path]:
        """Every ``checkpoint-*`` entry, complete or not, in no particular order."""
        return list(self.root.glob(f"{CHECKPOINT_PREFIX}*")) if self.root.is_dir() else []


@dataclass(frozen=True)
class RunFolder:
    """A ``camn train`` run folder ``root``; :attr:`staging` is where it is built."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def results(self) -> Path:
        return self.root / RUN_RESULTS

    @property
    def settings(self) -> Path:
        return self.root / RUN_SETTINGS

    @property
    def staging(self) -> RunFolder:
        """The hidden sibling the run is built in: ``.<name>.partial``."""
        return RunFolder(self.root.with_name(f".{self.root.name}{STAGING_SUFFIX}"))

    def seed(self, seed: int) -> SeedFolder:
        return SeedFolder(self.root / f"seed_{seed}")

    def seed_folders(self) -> list[SeedFolder]:
        """The seed folders present, in name order."""
        if not self.root.is_dir():
            return []
        return [SeedFolder(path) for path in sorted(self.root.iterdir())
                if SEED.fullmatch(path.name) and path.is_dir()]
