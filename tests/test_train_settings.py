"""The trainer's settings beyond the loop: the monitored score, weight decay, the embedding
penalty, gradient clipping, logging and TensorBoard (the test model of test_resume)."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from camn.config import TrainConfig
from camn.data.raw import DataError
from camn.data.store import PreparedStore
from camn.models.base import FeatureSpec
from camn.models.registry import build_model
from camn.train import loop
from camn.train.epoch_log import console, read_epoch_log
from camn.train.loop import run_epoch, train_one
from camn.train.objective import embedding_penalty, make_optimizer

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import test_resume  # noqa: E402
from test_resume import BATCH, FAST, MODEL, Stop, StopAfter  # noqa: E402

store = test_resume.store  # its fixtures: the store of its test model, one thread
one_thread = test_resume.one_thread


@pytest.mark.parametrize(("monitor", "best"), [("auc", 3), ("logloss", 2), ("auc-logloss", 1)])
def test_the_monitor_picks_the_best_epoch(
    store: PreparedStore, monkeypatch: pytest.MonkeyPatch, monitor: str, best: int
) -> None:
    """Scripted validation scores: AUC peaks at epoch 3, log loss bottoms at epoch 2, and
    AUC - log loss (0.40, 0.35, 0.32, 0.05, 0.05) peaks at epoch 1."""
    scripted = iter([(0.70, 0.30), (0.60, 0.25), (0.72, 0.40), (0.50, 0.45), (0.50, 0.45)])
    real_evaluate = loop.evaluate

    def fake_evaluate(model, store, split, batch_size, device):
        if split != "valid":
            return real_evaluate(model, store, split, batch_size, device)
        auc, logloss = next(scripted)
        return {"auc": auc, "logloss": logloss, "gauc": auc}

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    config = TrainConfig(MODEL, monitor=monitor, **{**FAST, "epochs": 5, "patience": 2})
    metrics = train_one(store, config, 1)
    assert metrics["best_epoch"] == best and metrics["epochs"] == best + 2
    assert metrics["valid_auc"] == metrics["history"][best - 1]["valid_auc"]
    assert metrics["valid_logloss"] == metrics["history"][best - 1]["valid_logloss"]
    assert metrics["monitor"] == monitor


def test_weight_decay_leaves_the_embedding_table_out(store: PreparedStore) -> None:
    model = build_model(MODEL, FeatureSpec.from_schema(store.schema))
    plain = make_optimizer(model, 0.01, 0.0, {})
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 0
    groups = make_optimizer(model, 0.01, 0.5, {}).param_groups
    table = model.embedding.table.weight
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert groups[1]["params"] == [table]
    assert {id(p) for p in groups[0]["params"]} == {
        id(p) for p in model.parameters() if p is not table}


def test_embedding_penalty_by_hand() -> None:
    """Vocabularies (5, 3): table rows 0-4 of slot 0, 5-7 of slot 1. The batch uses ids 2, 3
    and 4 of slot 0 (row 3 twice) and 2 of slot 1 (row 7); id 0 is padding."""
    model = build_model(MODEL, FeatureSpec(("item", "category"), (5, 3), 2), embed_dim=2)
    with torch.no_grad():
        model.embedding.table.weight.copy_(torch.arange(16.0).view(8, 2))
    batch = {"history": torch.tensor([[[3, 2], [0, 0]], [[3, 0], [4, 0]]]),
             "target": torch.tensor([[2, 2], [3, 2]])}
    rows = [2, 3, 4, 7]  # slot 0 ids 2, 3, 4; slot 1 id 2 at 5 + 2
    expected = sum((2 * r) ** 2 + (2 * r + 1) ** 2 for r in rows)
    assert embedding_penalty(model, batch).item() == expected
    batch["history_negative"] = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    assert embedding_penalty(model, batch).item() == expected + 2**2 + 3**2 + 12**2 + 13**2


class Recording(torch.optim.SGD):
    """SGD with lr 0 that records the gradient's total norm at every step."""

    def __init__(self, params) -> None:
        super().__init__(params, lr=0.0)
        self.norms: list[float] = []

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"]
                 if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])).item())
        return super().step(closure)


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_clip_grad_bounds_each_step(store: PreparedStore, clip: float) -> None:
    model = build_model(MODEL, FeatureSpec.from_schema(store.schema))
    optimizer = Recording(model.parameters())
    config = TrainConfig(MODEL, clip_grad=clip, **FAST)
    batches = store.batches("train", BATCH, shuffle=True, seed=1)
    run_epoch(model, optimizer, batches, 1, config, torch.device("cpu"), "test")
    if clip:
        assert max(optimizer.norms) == pytest.approx(clip, rel=1e-4)
    else:
        assert min(optimizer.norms) > 1e-2  # what the clip above cut


# ------------------------------------------------------------------------- logging, TensorBoard


def test_the_trainer_logs_and_prints_only_through_a_handler(
    store: PreparedStore, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    config = TrainConfig(MODEL, **{**FAST, "epochs": 1})
    with caplog.at_level(logging.INFO, logger="camn"):
        train_one(store, config, 1)
    assert [r.name for r in caplog.records] == ["camn.train"]
    assert caplog.records[0].getMessage().startswith("seed 1 epoch 1: loss ")
    assert capsys.readouterr().out == ""  # a library call prints nothing
    with console():
        train_one(store, config, 1)
    assert capsys.readouterr().out.startswith("seed 1 epoch 1: loss ")
    with console(logging.WARNING):
        train_one(store, config, 1)
    assert capsys.readouterr().out == ""


class FakeWriter:
    """Stands in for TensorBoard's SummaryWriter (not installed in the tests)."""

    made: ClassVar[list[FakeWriter]] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_tensorboard_scalars_when_asked_for(
    store: PreparedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=FakeWriter))
    FakeWriter.made.clear()
    config = TrainConfig(MODEL, tensorboard=True, **{**FAST, "epochs": 3})
    with pytest.raises(Stop):
        train_one(store, config, 1, tmp_path, hooks=[StopAfter(seed=1, epoch=2)])
    train_one(store, config, 1, tmp_path, resume=True)
    first, second = FakeWriter.made
    assert first.log_dir == second.log_dir == str(tmp_path / "tensorboard")
    assert (first.purge_step, second.purge_step) == (None, 3)  # drops events after epoch 2
    assert first.closed and second.closed
    tags = {tag for tag, _, _ in first.scalars}
    assert {"loss", "terms/l2", "terms/rows", "valid_auc", "valid_logloss",
            "valid_terms/rows", "score", "seconds"} <= tags
    assert [step for tag, _, step in first.scalars + second.scalars if tag == "loss"] == [1, 2, 3]
    records = read_epoch_log(tmp_path / "history.jsonl")
    assert [(v, s) for t, v, s in first.scalars + second.scalars if t == "valid_auc"] == [
        (r["valid_auc"], r["epoch"]) for r in records]


def test_tensorboard_without_the_package_is_a_clear_error(
    store: PreparedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    config = TrainConfig(MODEL, tensorboard=True, **FAST)
    with pytest.raises(DataError, match=r"tensorboard = true needs the tensorboard package"):
        train_one(store, config, 1, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before any work


