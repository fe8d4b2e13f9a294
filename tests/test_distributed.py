"""Data-parallel training: a 2-process torchrun (Gloo, CPU) run of ``camn train``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from camn.data.prepare import prepare
from camn.models.base import FeatureSpec
from camn.train.distributed import Context, current, has_unused_parameters, resolve_device
from camn.train.epoch_log import read_epoch_log

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from test_train import TINY, TinyModel, make_raw  # noqa: E402  (registers the tiny model)

ENTRY = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import test_train  # registers {TINY!r}
from camn.cli import main
sys.exit(main())
"""

TRAIN = {"epochs": 3, "patience": 3, "batch_size": 128, "device": "cpu", "progress": False}
TRAIN_FLAGS = ["--epochs", "3", "--patience", "3", "--batch-size", "128", "--device", "cpu",
               "--no-progress"]  # the same settings

# An interrupted run and its resume in one process group (one torchrun, one session: a second
# process group in the same processes can see the first one's rendezvous keys)
RESUME_ENTRY = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import test_train  # registers {TINY!r}
import torch
from camn.data.store import PreparedStore
from camn.train import distributed, loop

store, out = PreparedStore(sys.argv[1]), sys.argv[2]
config = loop.TrainConfig({TINY!r}, **{TRAIN!r})
stopped = loop.stopped


class Stop(Exception):
    pass


def interrupted(progress, config):  # every rank stops once epoch 1 is done
    if progress.epoch == 1:
        raise Stop
    return stopped(progress, config)


with distributed.session(torch.device("cpu")):
    loop.stopped = interrupted
    try:
        loop.train_seeds(store, config, [1], out)
    except Stop:
        pass
    loop.stopped = stopped
    loop.train_seeds(store, config, [1], out, resume=True)
"""
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_single_process_context_and_device() -> None:
    assert current() == Context()
    assert current().is_main and not current().enabled
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_unused_parameter_probe() -> None:
    spec = FeatureSpec(("item", "category"), (10, 4), 5)
    model = TinyModel(spec, embed_dim=4)
    batch = {
        "history": torch.randint(0, 4, (6, 5, 2)), "mask": torch.ones(6, 5, dtype=torch.bool),
        "target": torch.randint(2, 4, (6, 2)), "label": torch.ones(6),
    }
    before = {key: value.clone() for key, value in model.state_dict().items()}
    assert not has_unused_parameters(model, batch)
    for key, value in model.state_dict().items():  # the probe changed no weight or buffer
        assert torch.equal(value, before[key]), key
    model.extra = nn.Linear(2, 2)
    assert has_unused_parameters(model, batch)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-process ``camn train`` (the folder with its store, entry and run; the process)."""
    tmp = tmp_path_factory.mktemp("ddp")
    prepare(make_raw(users=120), tmp / "store", protocol="sliding", max_len=6, seed=1)
    (tmp / "entry.py").write_text(ENTRY)
    command = [*TORCHRUN, str(tmp / "entry.py"), "train", "--data", str(tmp / "store"),
               "--model", TINY, "--out", str(tmp / "run"), *TRAIN_FLAGS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, done


def test_torchrun_two_processes_gloo(launched: tuple[Path, subprocess.CompletedProcess]) -> None:
    tmp, done = launched
    out = tmp / "run"
    results = json.loads((out / "results.json").read_text())
    metrics = json.loads((out / "seed_1" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert 0 <= results["test_auc"]["mean"] <= 1
    train_rows = results["data"]["splits"]["train"]
    assert metrics["train_samples"] == metrics["epochs"] * (train_rows + train_rows % 2)
    assert done.stdout.count("test AUC") == 1  # only rank 0 prints the summary
    assert done.stdout.count("seed 1 epoch 1: loss") == 1  # and the epoch lines
    history = read_epoch_log(out / "seed_1" / "history.jsonl")  # rank 0 wrote it, once
    assert [record["epoch"] for record in history] == list(range(1, metrics["epochs"] + 1))
    assert sorted(p.name for p in (out / "seed_1").iterdir()) == [  # checkpoints deleted
        "config.json", "history.jsonl", "metrics.json", "model.safetensors"]


def test_torchrun_resumes_every_rank_from_rank_0s_checkpoint(
    launched: tuple[Path, subprocess.CompletedProcess],
) -> None:
    """Stopped after epoch 1 and resumed: the losses of the later epochs (summed over both
    ranks) and the weights are those of the uninterrupted run above, so rank 1 too continued
    from the model and optimizer state that rank 0 wrote."""
    tmp, _ = launched
    (tmp / "resume.py").write_text(RESUME_ENTRY)
    command = [*TORCHRUN, str(tmp / "resume.py"), str(tmp / "store"), str(tmp / "resumed")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = (read_epoch_log(tmp / run / "seed_1" / "history.jsonl")
                    for run in ("resumed", "run"))
    assert len(theirs) == 3
    assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]
    ours, theirs = (load_file(tmp / run / "seed_1" / "model.safetensors")
                    for run in ("resumed", "run"))
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_torchrun_trains_on_labelled_impressions_with_side_features(tmp_path: Path) -> None:
    """Two ranks share a store of labelled impressions whose batches carry context, a number
    and user features: each rank its half of the training rows, rank 0 the scores."""
    from camn.cli import main

    log, users = tmp_path / "log.csv", tmp_path / "users.csv"
    log.write_text("user,item,time,clicked,hour,price\n" + "".join(
        f"u{u},i{(u * 5 + r) % 17},{10 * r + u},{(u + r) % 3 == 0:d},h{r % 4},{r + u / 7:.2f}\n"
        for u in range(30) for r in range(10)))
    users.write_text("user,age\n" + "".join(f"u{u},{20 + u % 3}\n" for u in range(30)))
    assert main(["prepare", "table", "--interactions", str(log), "--label-col", "clicked",
                 "--context", "hour", "--numeric", "price", "--users", str(users),
                 "--user-features", "age", "--split", "user", "--out",
                 str(tmp_path / "store")]) == 0
    command = [*TORCHRUN, "-m", "camn", "train", "--data", str(tmp_path / "store"), "--model",
               "din", "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "64",
               "--device", "cpu", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    metrics = json.loads((tmp_path / "run" / "seed_1" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and 0 <= results["test_auc"]["mean"] <= 1
    train_rows = results["data"]["splits"]["train"]
    assert metrics["train_samples"] == train_rows + train_rows % 2
    assert done.stdout.count("test AUC") == 1
