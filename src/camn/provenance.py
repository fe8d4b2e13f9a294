"""What a run's result records besides its scores, so that it can be redone: the store it read,
its fully resolved configuration and the environment it ran in."""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from camn import __version__

if TYPE_CHECKING:
    from camn.config import TrainConfig
    from camn.data.store import PreparedStore


def dataset_name(path: str | Path, protocol: str) -> str:
    """A store's display name in tables: its folder name and protocol."""
    return f"{Path(path).resolve().name} ({protocol})"


def data_summary(store: PreparedStore) -> dict:
    """The store's path and the schema fields that identify what was trained on."""
    schema = store.schema
    keys = ("protocol", "seed", "max_len", "attributes", "splits", "num_users", "num_items")
    return {"path": str(store.root.resolve()), **{key: schema[key] for key in keys}}


def resolved_config(config: TrainConfig) -> dict:
    """Every field of ``config``, the model's options completed with its defaults; JSON values
    (tuples as lists), so that a recorded configuration compares equal to a planned one."""
    from camn.models.registry import resolved_options

    data = {**config.to_dict(), "options": resolved_options(config.model, **config.options)}
    return json.loads(json.dumps(data))


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout camn is imported from, with ``+dirty`` when tracked files
    differ from it; None outside a git checkout (an installed package) or without git."""
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", Path(__file__).name)  # camn's own checkout
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment(device: str, precision: str) -> dict:
    """What a run ran on: camn's version and commit, torch's version, the device (and the
    GPU's name), the precision and this process's torch thread count."""
    import torch

    # imported here: camn.train imports the results modules, which import this one
    from camn.train.distributed import resolve_device

    resolved = resolve_device(device)
    name = torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else None
    return {
        "camn": __version__, "git_commit": git_commit(), "torch": torch.__version__,
        "python": platform.python_version(), "device": str(resolved), "device_name": name,
        "precision": precision, "threads": torch.get_num_threads(),
    }
