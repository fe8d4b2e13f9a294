"""The trainer's checkpoints, resume, per-epoch history and hooks (its settings beyond the
loop: test_train_settings.py)."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from camn.cli import main
from camn.config import TrainConfig
from camn.data.prepare import prepare
from camn.data.raw import DataError
from camn.data.store import PreparedStore
from camn.models.base import CTRModel, FeatureSpec, ModelOutput
from camn.models.registry import build_model, model_entries, register
from camn.provenance import data_summary
from camn.train import checkpoints
from camn.train.checkpoints import Progress, load_training_state, save_training_state
from camn.train.epoch_log import Hook, read_epoch_log
from camn.train.loop import train_one, train_seeds
from camn.train.metrics import TermAverages
from camn.train.objective import make_optimizer
from camn.train.resume import staging_folder

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from test_train import make_raw  # noqa: E402

MODEL = "dropout-test"
BATCH = 256
FAST = {"epochs": 4, "batch_size": BATCH, "lr": 0.01, "device": "cpu", "progress": False,
        "patience": 10}
TIMING = ("seconds", "samples_per_second", "train_seconds", "fit_seconds")


class DropoutModel(CTRModel):
    """Test-only: mean-pooled history, the target and their product, through dropout (a resumed run
    needs torch's generator state to draw the same masks), batch norm (buffers) and a linear
    layer; an L2 extra loss. Its terms: ``l2`` and ``rows``, the batch's sample count."""

    def __init__(self, spec: FeatureSpec, embed_dim: int = 6) -> None:
        super().__init__(spec, embed_dim)
        width = 3 * spec.num_slots * embed_dim
        self.drop = nn.Dropout(0.5)
        self.norm = nn.BatchNorm1d(width)
        self.out = nn.Linear(width, 1)

    def forward(self, batch: dict[str, torch.Tensor], extra_losses: bool = False) -> ModelOutput:
        history, target = self.embed(batch)
        items, mask = history.flatten(2), batch["mask"].unsqueeze(-1).float()  # (B, L, D)
        pooled = (items * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled, target = self.drop(pooled), target.flatten(1)
        features = torch.cat([pooled, target, pooled * target], -1)
        logits = self.out(self.norm(features)).squeeze(-1)
        l2 = pooled.square().mean()
        rows = logits.new_tensor(float(len(logits)))
        return ModelOutput(logits, 0.01 * l2, {"l2": l2.detach(), "rows": rows})


if MODEL not in model_entries():  # this module may be imported twice
    register(MODEL)(DropoutModel)


class Stop(Exception):
    """What the killing hook raises."""


class StopAfter(Hook):
    """Raises after ``epoch`` of ``seed`` has been checkpointed: an interruption there."""

    def __init__(self, seed: int, epoch: int) -> None:
        self.seed, self.stop_epoch = seed, epoch

    def epoch(self, seed: int, record: dict) -> None:
        if (seed, record["epoch"]) == (self.seed, self.stop_epoch):
            raise Stop


class Recorder(Hook):
    """Every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, seed: int, history: list[dict]) -> None:
        self.calls.append(("start", seed, [r["epoch"] for r in history]))

    def epoch(self, seed: int, record: dict) -> None:
        self.calls.append(("epoch", seed, record["epoch"]))

    def end(self, seed: int, metrics: dict) -> None:
        self.calls.append(("end", seed, metrics["epochs"]))

    def close(self) -> None:
        self.calls.append(("close",))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> PreparedStore:
    path = tmp_path_factory.mktemp("store") / "store"
    prepare(make_raw(users=300), path, protocol="sliding", max_len=8, seed=3)
    return PreparedStore(path)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Fixed threads: the same float sums in every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CONFIG = TrainConfig(MODEL, weight_decay=1e-3, embedding_l2=1e-4, clip_grad=1.0, **FAST)


@pytest.fixture(scope="module")
def uninterrupted(store: PreparedStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "whole"
    train_seeds(store, CONFIG, [1, 2], out)
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(path)


def without_timing(value: object) -> object:
    """A result with its wall-clock figures left out (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def assert_same_run(ours: Path, theirs: Path, seeds: list[int]) -> None:
    for seed in seeds:
        a, b = weights(ours / f"seed_{seed}" / "model.safetensors"), weights(
            theirs / f"seed_{seed}" / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (seed, key)
        metrics = [json.loads((run / f"seed_{seed}" / "metrics.json").read_text())
                   for run in (ours, theirs)]
        assert without_timing(metrics[0]) == without_timing(metrics[1])
        histories = [read_epoch_log(run / f"seed_{seed}" / "history.jsonl")
                     for run in (ours, theirs)]
        assert without_timing(histories[0]) == without_timing(histories[1])
    results = [json.loads((run / "results.json").read_text()) for run in (ours, theirs)]
    assert results[0]["test_auc"] == results[1]["test_auc"]
    assert results[0]["valid_auc"] == results[1]["valid_auc"]


def test_an_interrupted_run_resumed_equals_the_uninterrupted_one(
    store: PreparedStore, uninterrupted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train_seeds(store, CONFIG, [1, 2], out, hooks=[StopAfter(seed=2, epoch=2)])
    staging = staging_folder(out)
    assert not out.exists() and staging.name == ".run.partial"
    assert sorted(p.name for p in staging.iterdir()) == ["seed_1", "seed_2", "train.json"]
    settings = json.loads((staging / "train.json").read_text())
    assert settings == {"seeds": [1, 2], "world_size": 1, "train": CONFIG.to_dict(),
                        "data": data_summary(store)}
    assert sorted(p.name for p in (staging / "seed_1").iterdir()) == [
        "config.json", "history.jsonl", "metrics.json", "model.safetensors"]
    assert sorted(p.name for p in (staging / "seed_2").iterdir()) == [
        "checkpoint-2", "history.jsonl"]
    assert [r["epoch"] for r in read_epoch_log(staging / "seed_2" / "history.jsonl")] == [1, 2]
    recorder = Recorder()
    train_seeds(store, CONFIG, [1, 2], out, resume=True, hooks=[recorder])
    assert recorder.calls == [  # seed 1 kept as it was, seed 2 continued after epoch 2
        ("start", 2, [1, 2]), ("epoch", 2, 3), ("epoch", 2, 4), ("end", 2, 4), ("close",)]
    assert not staging.exists()
    assert_same_run(out, uninterrupted, [1, 2])
    best = json.loads((uninterrupted / "results.json").read_text())["best_epoch"]
    assert best == [4, 4]  # the weights compared are those of the last, resumed epoch


def test_resuming_without_the_generator_state_would_differ(
    store: PreparedStore, uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control of the test above: dropout draws from torch's generator, so a resume that
    did not restore it would end with other weights."""
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train_seeds(store, CONFIG, [1], out, hooks=[StopAfter(seed=1, epoch=2)])
    monkeypatch.setattr(checkpoints, "set_rng_states", lambda tensors, rest: None)
    train_seeds(store, CONFIG, [1], out, resume=True)
    ours, theirs = (weights(run / "seed_1" / "model.safetensors") for run in (out, uninterrupted))
    assert not torch.equal(ours["out.weight"], theirs["out.weight"])


def test_the_checkpoint_holds_tensors_as_safetensors_and_the_rest_as_json(
    store: PreparedStore, tmp_path: Path
) -> None:
    with pytest.raises(Stop):
        train_one(store, CONFIG, 1, tmp_path, hooks=[StopAfter(seed=1, epoch=3)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "history.jsonl"]
    folder = tmp_path / "checkpoint-3"
    assert sorted(p.name for p in folder.iterdir()) == [
        "best.safetensors", "last.safetensors", "optimizer.safetensors", "rng.safetensors",
        "state.json"]
    state = json.loads((folder / "state.json").read_text())
    assert state["progress"]["epoch"] == 3 and len(state["progress"]["history"]) == 3
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [1e-3, 0.0]
    assert set(state["rng"]) == {"python", "numpy"}
    optimizer = weights(folder / "optimizer.safetensors")
    assert {key.split(".", 1)[1] for key in optimizer} == {"step", "exp_avg", "exp_avg_sq"}
    assert weights(folder / "rng.safetensors")["torch"].dtype == torch.uint8
    best = state["progress"]["best_epoch"]
    record = state["progress"]["history"][best - 1]
    assert state["progress"]["best_score"] == record["valid_auc"] == record["score"]


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one(
    store: PreparedStore, tmp_path: Path
) -> None:
    """A half-written ``checkpoint-3.partial`` (the process died before its rename) is
    ignored and deleted; training continues after epoch 2 and ends as if never stopped."""
    with pytest.raises(Stop):
        train_one(store, CONFIG, 1, tmp_path / "a", hooks=[StopAfter(seed=1, epoch=2)])
    partial = tmp_path / "a" / "checkpoint-3.partial"
    partial.mkdir()
    (partial / "last.safetensors").write_bytes(b"\x00" * 10)  # cut off
    resumed = train_one(store, CONFIG, 1, tmp_path / "a", resume=True)
    whole = train_one(store, CONFIG, 1, tmp_path / "b")
    assert without_timing(resumed) == without_timing(whole)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "config.json", "history.jsonl", "metrics.json", "model.safetensors"]


def test_a_seed_killed_after_its_last_checkpoint_finishes_without_training(
    store: PreparedStore, tmp_path: Path
) -> None:
    """Killed between the last epoch's checkpoint and metrics.json: resume scores on test."""
    config = TrainConfig(MODEL, **{**FAST, "epochs": 2})
    with pytest.raises(Stop):
        train_one(store, config, 1, tmp_path, hooks=[StopAfter(seed=1, epoch=2)])
    recorder = Recorder()
    metrics = train_one(store, config, 1, tmp_path, resume=True, hooks=[recorder])
    assert recorder.calls == [("start", 1, [1, 2]), ("end", 1, 2), ("close",)]
    assert metrics["epochs"] == 2 and [r["epoch"] for r in metrics["history"]] == [1, 2]


def test_a_damaged_checkpoint_is_named(store: PreparedStore, tmp_path: Path) -> None:
    with pytest.raises(Stop):
        train_one(store, CONFIG, 1, tmp_path, hooks=[StopAfter(seed=1, epoch=1)])
    state = tmp_path / "checkpoint-1" / "state.json"
    text = state.read_text()
    state.write_text(text[:20])
    with pytest.raises(DataError, match=r"state.json cannot be read \(.*\): the checkpoint is "
                       r"damaged; start the run again \(camn train --force\)"):
        train_one(store, CONFIG, 1, tmp_path, resume=True)
    state.write_text(text)
    last = tmp_path / "checkpoint-1" / "last.safetensors"
    data = last.read_bytes()
    last.write_bytes(data[:50])
    with pytest.raises(DataError, match=re.escape(f"{last} cannot be read")):
        train_one(store, CONFIG, 1, tmp_path, resume=True)
    last.write_bytes(data)
    other = TrainConfig(MODEL, options={"embed_dim": 4}, **FAST)
    with pytest.raises(DataError, match="does not fit the run it belongs to"):
        train_one(store, other, 1, tmp_path, resume=True)


def test_training_state_round_trip(tmp_path: Path) -> None:
    """Model, best state, Adam's state and the three generators come back as they were."""
    spec = FeatureSpec(("item", "category"), (10, 4), 5)
    model = build_model(MODEL, spec)
    optimizer = make_optimizer(model, 0.01, 0.1, {})
    batch = {"history": torch.randint(0, 4, (6, 5, 2)), "mask": torch.ones(6, 5, dtype=torch.bool),
             "target": torch.randint(2, 4, (6, 2)), "label": torch.ones(6)}
    model(batch).logits.sum().backward()
    optimizer.step()
    best = {key: value + 1 for key, value in model.state_dict().items()}
    progress = Progress(epoch=4, best_epoch=3, best_score=0.75, train_seconds=1.5,
                        fit_seconds=2.0, samples=800, history=[{"epoch": 1, "loss": 0.5}])
    save_training_state(tmp_path, progress, model, best, optimizer)
    draws = (random.random(), np.random.rand(), torch.rand(3))
    other = build_model(MODEL, spec)
    other_optimizer = make_optimizer(other, 0.01, 0.1, {})
    loaded, loaded_best = load_training_state(tmp_path, other, other_optimizer, torch.device("cpu"))
    assert loaded == progress
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(3), draws[2])
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
        assert torch.equal(loaded_best[key], best[key])
    ours, theirs = optimizer.state_dict(), other_optimizer.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    for index, state in ours["state"].items():
        for name, value in state.items():
            assert torch.equal(theirs["state"][index][name], value)


# ------------------------------------------------------------------------------ history.jsonl


def test_history_records_of_an_epoch(store: PreparedStore, tmp_path: Path) -> None:
    """Each record: the loss, the model's terms averaged over the epoch's samples (``rows`` is
    the batch size, so its average is sum(b^2) / sum(b)), every validation metric, the
    monitored score, time and throughput."""
    metrics = train_one(store, TrainConfig(MODEL, **{**FAST, "epochs": 2}), 1, tmp_path)
    records = read_epoch_log(tmp_path / "history.jsonl")
    assert without_timing(records) == without_timing(metrics["history"])
    n = store.schema["splits"]["train"]
    sizes = [BATCH] * (n // BATCH) + [n % BATCH] * (n % BATCH > 0)
    valid = store.schema["splits"]["valid"]
    for epoch, record in enumerate(records, start=1):
        assert record["epoch"] == epoch
        assert record["terms"]["rows"] == pytest.approx(sum(b * b for b in sizes) / sum(sizes))
        assert record["valid_terms"]["rows"] == valid  # one evaluation batch
        assert record["valid_samples"] == valid
        assert record["score"] == record["valid_auc"]
        assert 0 < record["valid_logloss"] < 1 and 0 <= record["valid_gauc"] <= 1
        assert record["samples_per_second"] == pytest.approx(n / record["seconds"])
        assert record["terms"]["l2"] > 0 and 0 < record["loss"] < 1


def test_a_cut_off_last_line_is_dropped_and_a_damaged_one_named(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert read_epoch_log(path) == [{"epoch": 1}, {"epoch": 2}]
    path.write_text('{"epoch": 1}\n[1, 2]\n{"epoch": 3}\n')
    with pytest.raises(DataError, match=f"^{path}:2 is not a JSON object"):
        read_epoch_log(path)


def test_term_averages_by_hand() -> None:
    """Weighted by the batch sizes (3, 1, 2); NaN entries and absent terms left out."""
    terms = TermAverages()
    terms.add({"a": torch.tensor(2.0), "h": torch.tensor([1.0, math.nan])}, 3)
    terms.add({"a": torch.tensor(5.0), "h": torch.tensor([3.0, 4.0])}, 1)
    terms.add({"h": torch.tensor([math.nan, math.nan])}, 2)
    averages = terms.averages()
    assert averages["a"] == pytest.approx((3 * 2 + 5) / 4)
    assert averages["h"] == pytest.approx([(3 * 1 + 3) / 4, 4.0])


# ----------------------------------------------------------------------------- camn train --resume


KILLED_WHILE_CHECKPOINTING = f"""
import sys
import time

sys.path.insert(0, {str(TESTS)!r})
import test_resume  # registers {MODEL!r}
from camn.cli import main
from camn.train import checkpoints

real_sync = checkpoints.sync


def slow_sync(path):
    if path.parent.name == "checkpoint-3.partial" and path.name == "state.json":
        print("writing checkpoint 3", flush=True)
        time.sleep(300)  # the test kills the process here
    real_sync(path)


checkpoints.sync = slow_sync
sys.exit(main())
"""


def test_camn_train_killed_while_checkpointing_then_resumed_equals_an_uninterrupted_run(
    store: PreparedStore, tmp_path: Path
) -> None:
    """A real process, killed (SIGKILL) while it writes epoch 3's checkpoint; ``camn train
    --resume`` continues after epoch 2 and ends with the uninterrupted run's weights."""
    entry = tmp_path / "entry.py"
    entry.write_text(KILLED_WHILE_CHECKPOINTING)
    argv = ["train", "--data", str(store.root), "--model", MODEL, "--epochs", "4",
            "--batch-size", str(BATCH), "--lr", "0.01", "--patience", "10", "--device", "cpu",
            "--weight-decay", "1e-3", "--embedding-l2", "1e-4", "--clip-grad", "1",
            "--no-progress", "--threads", "1"]
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(entry), *argv, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line == "writing checkpoint 3\n":
                process.kill()
                break
        process.wait()
    finally:
        watchdog.cancel()
    assert lines[-1] == "writing checkpoint 3\n", process.stderr.read()[-3000:]
    assert [line.split(":")[0] for line in lines[:-1]] == ["seed 1 epoch 1", "seed 1 epoch 2"]
    seed_dir = staging_folder(out) / "seed_1"
    assert sorted(p.name for p in seed_dir.iterdir()) == [
        "checkpoint-2", "checkpoint-3.partial", "history.jsonl"]
    assert main(["train", "--resume", str(out), "--threads", "1"]) == 0
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    assert_same_run(out, tmp_path / "whole", [1])


def test_resume_and_what_it_refuses(
    store: PreparedStore, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run, staging = tmp_path / "run", staging_folder(tmp_path / "run")
    config = TrainConfig(MODEL, **{**FAST, "epochs": 2})

    def fails(argv: list[str]) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err

    assert fails(["train", "--resume", str(run)]) == (
        f"camn: error: --resume {run}: no interrupted camn train run of {run} to resume (no "
        ".run.partial/train.json beside it)\n")
    assert fails(["train", "--data", str(store.root), "--model", MODEL]) == (
        "camn: error: camn train needs --out (the run folder to write), or --resume RUN\n")
    with pytest.raises(Stop):
        train_seeds(store, config, [1], run, hooks=[StopAfter(seed=1, epoch=1)])
    fresh = ["train", "--data", str(store.root), "--model", MODEL, "--epochs", "2",
             "--device", "cpu", "--no-progress", "--out", str(run)]
    assert fails(fresh) == (f"camn: error: {run} has an interrupted run ({staging}); pass "
                            f"--resume {run} to continue it, or --force to start again\n")
    assert fails(["train", "--resume", str(run), "--data", str(store.root), "--epochs", "3",
                  "--force"]) == (
        f"camn: error: --resume {run} continues the run with the settings it began with; drop "
        "--data, --force, --epochs\n")
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "seed 1: resumed after epoch 1\nseed 1 epoch 2: loss " in out
    assert f"results written to {run / 'results.json'}" in out
    assert not staging.exists() and (run / "results.json").is_file()
    assert fails(["train", "--resume", str(run)]) == (
        f"camn: error: --resume {run}: the run is finished (results.json); there is nothing to "
        "resume\n")
    with pytest.raises(Stop):  # interrupted again: the finished run stays as it was
        train_seeds(store, config, [1], run, hooks=[StopAfter(seed=1, epoch=1)])
    assert (run / "results.json").is_file() and staging.is_dir()
    assert main([*fresh, "--force"]) == 0  # a fresh run deletes the interrupted one first
    assert "resumed" not in capsys.readouterr().out and not staging.exists()


def test_resume_refuses_other_settings_or_another_store(
    store: PreparedStore, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    config = TrainConfig(MODEL, **{**FAST, "epochs": 2})
    with pytest.raises(Stop):
        train_seeds(store, config, [1, 2], run, hooks=[StopAfter(seed=1, epoch=1)])
    with pytest.raises(DataError, match=r"began with other seeds \(\[1, 2\] then, \[1\] now\)"):
        train_seeds(store, config, [1], run, resume=True)
    with pytest.raises(DataError, match="began with other training settings"):
        train_seeds(store, TrainConfig(MODEL, **FAST), [1, 2], run, resume=True)
    prepare(make_raw(users=200), tmp_path / "other", protocol="sliding", max_len=8, seed=3)
    with pytest.raises(DataError, match=r"is not the one the run began on \(.*splits.* differ\)"):
        train_seeds(PreparedStore(tmp_path / "other"), config, [1, 2], run, resume=True)
