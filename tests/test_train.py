"""The training loop, checkpoints and the train / evaluate / explain commands, on a tiny model."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from camn.cli import main
from camn.config import TrainConfig
from camn.data.prepare import prepare
from camn.data.raw import DataError, RawData
from camn.data.store import PreparedStore
from camn.models.base import CTRModel, FeatureSpec, ModelOutput
from camn.models.registry import build_model, register
from camn.train import loop
from camn.train.checkpoints import load_model, save_checkpoint
from camn.train.epoch_log import read_epoch_log
from camn.train.loop import ResidentSplit, StreamedSplit, train_one
from camn.train.resume import staging_folder

TINY = "tiny-train"
FAST = {"epochs": 3, "batch_size": 256, "lr": 0.01, "device": "cpu", "progress": False}


class TinyModel(CTRModel):
    """Test-only model: mean-pooled history, target and their product into a linear layer;
    a per-item router over the k slots; an optional L2 auxiliary loss."""

    def __init__(self, spec: FeatureSpec, embed_dim: int = 8, aux_weight: float = 0.01,
                 route: bool = True) -> None:
        super().__init__(spec, embed_dim)
        width = spec.num_slots * embed_dim
        self.aux_weight = aux_weight
        self.router = nn.Linear(width, spec.num_slots, bias=False) if route else None
        self.norm = nn.BatchNorm1d(3 * width)  # buffers must survive checkpoints
        self.out = nn.Linear(3 * width, 1)

    def forward(self, batch: dict[str, torch.Tensor], extra_losses: bool = False) -> ModelOutput:
        history, target = self.embed(batch)  # (B, L, k, d), (B, k, d)
        mask = batch["mask"].unsqueeze(-1).float()  # (B, L, 1)
        routing = None
        if self.router is not None:  # each slot scaled by (1 + its routing score)
            routing = torch.softmax(self.router(history.flatten(2)), -1) * mask  # (B, L, k)
            history = history * (1 + routing.unsqueeze(-1))
        items = history.flatten(2)  # (B, L, k*d)
        pooled = (items * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, k*d)
        flat = target.flatten(1)  # (B, k*d)
        logits = self.out(self.norm(torch.cat([pooled, flat, pooled * flat], -1))).squeeze(-1)
        l2 = (pooled**2).mean()
        return ModelOutput(logits, self.aux_weight * l2, {"l2": l2.detach()}, routing)


with contextlib.suppress(ValueError):  # already registered when imported twice
    register(TINY)(TinyModel)


def make_raw(users: int = 400, items: int = 80, seed: int = 0) -> RawData:
    """Users stick to a favourite category (an easy signal); every click has a planted driver."""
    rng = np.random.default_rng(seed)
    category = rng.integers(0, 6, items)
    favourite = rng.integers(0, 6, users)
    counts = rng.integers(3, 7, users)
    user = np.repeat(np.arange(users), counts)
    liked = rng.random(len(user)) < 0.95
    by_category = [np.flatnonzero(category == c) for c in range(6)]
    item = np.where(
        liked,
        [rng.choice(by_category[favourite[u]]) for u in user],
        rng.integers(0, items, len(user)),
    )
    interactions = pl.DataFrame({
        "user": [f"u{u}" for u in user],
        "item": [f"i{i}" for i in item],
        "time": np.arange(len(user), dtype=np.int64),
        "driver": rng.integers(0, 3, len(user)).astype(np.int8),
        "driver_kind": rng.integers(0, 2, len(user)).astype(np.int8),
    })
    table = pl.DataFrame({
        "item": [f"i{i}" for i in range(items)],
        "category": [f"c{c}" for c in category],
        "brand": [f"b{b}" for b in rng.integers(0, 10, items)],
    })
    return RawData(interactions, table, ["item", "category", "brand"], {"source": "test"})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> PreparedStore:
    path = tmp_path_factory.mktemp("store") / "store"
    prepare(make_raw(), path, protocol="sliding", max_len=8, seed=3)
    return PreparedStore(path)


@pytest.fixture(scope="module")
def run(store: PreparedStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-seed run made through the CLI."""
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main([
        "train", "--data", str(store.root), "--model", TINY, "--out", str(out), "--seeds", "2",
        "--epochs", "2", "--batch-size", "256", "--lr", "0.01", "--device", "cpu",
        "--no-progress", "--option", "embed_dim=6",
    ])
    assert code == 0
    return out


def test_resident_batches_equal_store_batches(store: PreparedStore) -> None:
    resident = ResidentSplit(store, "train", torch.device("cpu"))
    streamed = StreamedSplit(store, "train", torch.device("cpu"))
    options = {"shuffle": True, "seed": 5, "epoch": 2, "history_negatives": True,
               "rank": 1, "world_size": 2}
    ours_all = resident.batches(100, **options)
    for ours, theirs in zip(ours_all, store.batches("train", 100, **options), strict=True):
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype
            assert torch.equal(ours[key], theirs[key]), key
    for ours, theirs in zip(streamed.batches(64, shuffle=True, seed=1, epoch=1),
                            store.batches("train", 64, shuffle=True, seed=1, epoch=1), strict=True):
        assert torch.equal(ours["history"], theirs["history"])


def test_training_lowers_loss_and_beats_chance(store: PreparedStore) -> None:
    metrics = train_one(store, TrainConfig(TINY, **FAST), seed=1)
    losses = [epoch["loss"] for epoch in metrics["history"]]
    assert losses[-1] < losses[0]
    assert metrics["test_auc"] > 0.7
    assert 0 < metrics["test_logloss"] < 0.69
    assert metrics["samples_per_second"] > 0
    assert metrics["train_samples"] == metrics["epochs"] * store.schema["splits"]["train"]
    assert set(metrics["routing_recovery"]) == {
        "overall", "item", "user", "item_matched", "user_matched"
    }


def test_same_seed_same_metrics_other_seed_differs(store: PreparedStore) -> None:
    config = TrainConfig(TINY, **{**FAST, "epochs": 1})
    first, second = train_one(store, config, seed=7), train_one(store, config, seed=7)
    keys = ("test_auc", "test_logloss", "test_gauc", "valid_auc", "best_epoch")
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}
    assert [e["loss"] for e in first["history"]] == [e["loss"] for e in second["history"]]
    assert train_one(store, config, seed=8)["test_logloss"] != first["test_logloss"]


def test_early_stopping_stops_and_restores_best(
    store: PreparedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = iter([0.60, 0.70, 0.65, 0.64, 0.90, 0.95])
    states: list[dict[str, torch.Tensor]] = []
    real_evaluate = loop.evaluate

    def fake_evaluate(model, store, split, batch_size, device):
        if split != "valid":
            return real_evaluate(model, store, split, batch_size, device)
        states.append(loop.state_copy(model))
        return {"auc": next(scripted)}

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    metrics = train_one(store, TrainConfig(TINY, **{**FAST, "epochs": 6, "patience": 2}), 1,
                        tmp_path)
    assert (metrics["epochs"], metrics["best_epoch"], metrics["valid_auc"]) == (4, 2, 0.70)
    saved, _ = load_model(tmp_path)
    for key, value in saved.state_dict().items():
        assert torch.equal(value, states[1][key]), key
    assert not torch.equal(states[1]["out.weight"], states[3]["out.weight"])


def test_checkpoint_round_trip_gives_identical_outputs(
    store: PreparedStore, tmp_path: Path
) -> None:
    spec = FeatureSpec.from_schema(store.schema)
    torch.manual_seed(0)
    model = build_model(TINY, spec, embed_dim=5)
    model.train()
    for batch in store.batches("train", 128):  # moves the batch-norm statistics
        model(batch)
    config = {"model": TINY, "options": {"embed_dim": 5, "aux_weight": 0.01, "route": True},
              "spec": spec.to_dict()}
    save_checkpoint(tmp_path, model, config)
    loaded, loaded_config = load_model(tmp_path)
    assert loaded_config == config
    model.eval()
    batch = next(store.batches("test", 64))
    ours, theirs = model(batch), loaded(batch)
    assert torch.equal(ours.logits, theirs.logits)
    assert torch.equal(ours.routing, theirs.routing)
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(tmp_path, model, {"model": TINY})


def test_results_json(run: Path, store: PreparedStore) -> None:
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == TINY and results["seeds"] == [1, 2]
    for key in ("test_auc", "test_logloss", "test_gauc", "valid_auc"):
        assert set(results[key]) == {"mean", "std", "runs"} and len(results[key]["runs"]) == 2
        assert results[key]["mean"] == pytest.approx(np.mean(results[key]["runs"]))
    assert results["options"]["embed_dim"] == 6
    assert results["data"]["protocol"] == "sliding"
    assert set(results["routing_recovery"]) == {
        "overall", "item", "user", "item_matched", "user_matched"
    }
    config = json.loads((run / "seed_2" / "config.json").read_text())
    assert config["seed"] == 2 and config["spec"] == FeatureSpec.from_schema(store.schema).to_dict()
    assert config["train"]["batch_size"] == 256 and config["data"] == str(store.root.resolve())
    metrics = json.loads((run / "seed_1" / "metrics.json").read_text())
    assert metrics["test_auc"] == results["test_auc"]["runs"][0]
    assert sorted(p.name for p in run.iterdir()) == ["results.json", "seed_1", "seed_2"]
    assert sorted(p.name for p in (run / "seed_1").iterdir()) == [  # no checkpoint left
        "config.json", "history.jsonl", "metrics.json", "model.safetensors"]
    assert not staging_folder(run).exists()
    history = read_epoch_log(run / "seed_2" / "history.jsonl")
    assert [record["epoch"] for record in history] == [1, 2]
    assert history == json.loads((run / "seed_2" / "metrics.json").read_text())["history"]


def test_evaluate_matches_training_metrics_exactly(
    run: Path, store: PreparedStore, capsys: pytest.CaptureFixture
) -> None:
    from camn.train.commands import evaluate_run

    summary = evaluate_run(run, store, "test", torch.device("cpu"))
    for seed in (1, 2):
        trained = json.loads((run / f"seed_{seed}" / "metrics.json").read_text())
        assert summary["seeds"][seed]["auc"] == trained["test_auc"]
        assert summary["seeds"][seed]["logloss"] == trained["test_logloss"]
        assert summary["seeds"][seed]["gauc"] == trained["test_gauc"]
        assert summary["seeds"][seed]["routing_recovery"] == trained["routing_recovery"]
    assert main(["evaluate", "--run", str(run), "--data", str(store.root), "--device", "cpu"]) == 0
    assert "seed 2: AUC" in capsys.readouterr().out


def test_explain_prints_routing_per_click(
    run: Path, store: PreparedStore, capsys: pytest.CaptureFixture
) -> None:
    assert main(["explain", "--run", str(run), "--data", str(store.root), "--limit", "2",
                 "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("store row") == 2
    assert "*" in out and "category=" in out and "planted" in out


def test_explain_without_routing_is_a_clear_error(
    store: PreparedStore, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--data", str(store.root), "--model", TINY, "--epochs", "1", "--device", "cpu",
            "--no-progress", "--option", "route=false", "--out", str(tmp_path)]
    assert main(["train", *argv]) == 0
    assert "routing recovery" not in capsys.readouterr().out
    assert main(["explain", "--run", str(tmp_path), "--data", str(store.root)]) == 2
    assert "no routing scores" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no-such-model"], "registered:"),
        (["--model", TINY, "--option", "nope=1"], "has no option"),
        (["--model", TINY, "--option", "embed_dim"], "expected [MODEL:]KEY=VALUE"),
        (["--model", TINY, "--data", "/nonexistent/store"], "not a prepared store"),
    ],
)
def test_bad_train_input_exits_2(
    store: PreparedStore, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str],
    message: str,
) -> None:
    base = ["train", "--data", str(store.root), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_existing_run_needs_force(
    run: Path, store: PreparedStore, capsys: pytest.CaptureFixture
) -> None:
    argv = ["train", "--data", str(store.root), "--model", TINY, "--out", str(run)]
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err


def test_evaluate_on_a_mismatched_store_is_a_clear_error(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prepare(make_raw(users=60, items=30, seed=1), tmp_path / "other", max_len=8)
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "other")]) == 2
    assert "does not match" in capsys.readouterr().err


def test_camn_model_trains_if_present(tmp_path: Path) -> None:
    from camn.models.registry import model_names

    if "camn" not in model_names():
        pytest.skip("camn model not registered yet")
    prepare(make_raw(users=150), tmp_path / "small", max_len=8)
    small = PreparedStore(tmp_path / "small")
    metrics = train_one(small, TrainConfig("camn", **{**FAST, "epochs": 1}), seed=1)
    assert 0 <= metrics["test_auc"] <= 1
    assert set(metrics["routing_recovery"]) == {
        "overall", "item", "user", "item_matched", "user_matched"
    }


def test_saved_model_of_an_unregistered_name_is_a_clear_error(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "seed_1"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes((run / "seed_1" / "model.safetensors").read_bytes())
    config = json.loads((run / "seed_1" / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "model": "gone-model"}))
    with pytest.raises(DataError, match="unknown model 'gone-model'"):
        load_model(copy)
