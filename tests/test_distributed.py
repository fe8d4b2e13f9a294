"""Data-parallel training: a 2-process torchrun (Gloo, CPU) run of ``camn train``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from camn.data.prepare import prepare
from camn.models.base import FeatureSpec
from camn.train.distributed import Context, current, has_unused_parameters, resolve_device
from camn.train.history import read_history

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


def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    prepare(make_raw(users=120), tmp_path / "store", protocol="sliding", max_len=6, seed=1)
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(entry), "train", "--data", str(tmp_path / "store"), "--model", TINY,
        "--out", str(out), "--epochs", "2", "--batch-size", "128", "--device", "cpu",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    metrics = json.loads((out / "seed_1" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert 0 <= results["test_auc"]["mean"] <= 1
    train_rows = results["data"]["splits"]["train"]
    assert metrics["train_samples"] == metrics["epochs"] * (train_rows + train_rows % 2)
    assert done.stdout.count("test AUC") == 1  # only rank 0 prints the summary
    assert done.stdout.count("seed 1 epoch 2: loss") == 1  # and the epoch lines
    history = read_history(out / "seed_1" / "history.jsonl")  # rank 0 wrote it, once
    assert [record["epoch"] for record in history] == list(range(1, metrics["epochs"] + 1))
    assert sorted(p.name for p in (out / "seed_1").iterdir()) == [  # checkpoints deleted
        "config.json", "history.jsonl", "metrics.json", "model.safetensors"]
