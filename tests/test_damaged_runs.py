"""A damaged run is named: weights that are garbage, empty, a pickle (never executed) or of
another model or store; a missing or broken results.json or config.json; through
``camn evaluate`` and ``camn explain``, and through :func:`load_model` itself; a pickle in a
training checkpoint is refused on resume and never executed."""

from __future__ import annotations

import json
import pickle
import shutil
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
from camn.data.sources.synthetic import SALIENCE_STORE, generate
from camn.data.store import PreparedStore
from camn.models.base import CTRModel, FeatureSpec, ModelOutput
from camn.models.registry import build_model, model_entries, register
from camn.train.checkpoints import load_model
from camn.train.epoch_log import Hook
from camn.train.loop import train_one

COMMANDS = ("evaluate", "explain")
DAMAGED = "the run is damaged; train it again"
MODEL = "routed-mean-test"

# the sizes and ids these tests expect were read from salience stores
SALIENCE = {key: value for key, value in SALIENCE_STORE.items() if key != "users"}


class RoutedMean(CTRModel):
    """Test-only model whose tensors are known by heart (so are the messages about them): the
    one embedding table (sum of the vocabulary sizes, d), a router (k, k d) whose scores
    ``camn explain`` shows, and the output layer (1, 2 k d) over the mean-pooled history and
    the target."""

    def __init__(self, spec: FeatureSpec, embed_dim: int = 4) -> None:
        super().__init__(spec, embed_dim)
        width = spec.num_slots * embed_dim
        self.router = nn.Linear(width, spec.num_slots, bias=False)
        self.out = nn.Linear(2 * width, 1)

    def forward(self, batch: dict[str, torch.Tensor], extra_losses: bool = False) -> ModelOutput:
        history, target = self.embed(batch)  # (B, L, k, d), (B, k, d)
        mask = batch["mask"].unsqueeze(-1).float()  # (B, L, 1)
        items = history.flatten(2)  # (B, L, k d)
        routing = torch.softmax(self.router(items), -1) * mask  # (B, L, k)
        pooled = (items * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = self.out(torch.cat([pooled, target.flatten(1)], -1)).squeeze(-1)
        return ModelOutput(logits, self.no_aux_loss(logits), {}, routing)


if MODEL not in model_entries():  # this module may be imported twice
    register(MODEL)(RoutedMean)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "store"
    prepare(generate(users=200, items=60, attributes=3, seed=1, **SALIENCE), path, max_len=5)
    return path


@pytest.fixture(scope="module")
def trained(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-seed run of the test model (it routes, so that explain works on it)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = ["train", "--data", str(store), "--model", MODEL, "--out", str(out), "--epochs", "1",
            "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A fresh copy of the finished run, to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def argv(command: str, run: Path, store: Path) -> list[str]:
    extra = ["--limit", "1"] if command == "explain" else []
    return [command, "--run", str(run), "--data", str(store), "--device", "cpu", *extra]


def fails(command: str, run: Path, store: Path, capsys: pytest.CaptureFixture) -> str:
    """Run the command; it must exit 2 with one error line, which is returned (unprefixed)."""
    assert main(argv(command, run, store)) == 2
    err = capsys.readouterr().err
    assert err.startswith("camn: error: ") and err.endswith("\n") and err.count("\n") == 1
    return err.removeprefix("camn: error: ").rstrip("\n")


def config_of(run: Path) -> dict:
    return json.loads((run / "seed_1" / "config.json").read_text())


def test_an_intact_run_evaluates_and_explains(
    trained: Path, store: Path, capsys: pytest.CaptureFixture
) -> None:
    for command in COMMANDS:
        assert main(argv(command, trained, store)) == 0
    out = capsys.readouterr().out
    assert f"{MODEL} on test: AUC" in out and "routing scores P" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_weights(run: Path, store: Path, command: str, capsys) -> None:
    weights = run / "seed_1" / "model.safetensors"
    weights.write_bytes(b"")
    assert fails(command, run, store, capsys) == f"{weights} is empty: {DAMAGED}"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("damage", "reason"),
    [("garbage", "header too large"), ("truncated", "incomplete metadata, file not fully covered")],
)
def test_garbage_or_truncated_weights(
    run: Path, store: Path, command: str, damage: str, reason: str, capsys
) -> None:
    weights = run / "seed_1" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"these bytes are no safetensors file" if damage == "garbage"
                        else data[: len(data) // 2])
    assert fails(command, run, store, capsys) == (
        f"{weights} is not a safetensors file (Error while deserializing header: {reason}): "
        f"{DAMAGED}"
    )


class Payload:
    """Unpickling this creates ``path`` (an empty file): the proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_the_payload_would_run_if_unpickled(tmp_path: Path) -> None:
    """The control of the next test: its marker would appear, were the pickle ever loaded."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.is_file()


PICKLE_REFUSED = (
    "is a pickle (or torch.save) file, not safetensors; camn never loads a pickle, since "
    "loading one can run any code"
)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_is_refused_and_never_run(
    run: Path, store: Path, tmp_path: Path, protocol: int, capsys
) -> None:
    marker = tmp_path / "marker"
    weights = run / "seed_1" / "model.safetensors"
    weights.write_bytes(pickle.dumps(Payload(marker), protocol=protocol))
    messages = [fails(command, run, store, capsys) for command in COMMANDS]
    with pytest.raises(DataError) as caught:
        load_model(run / "seed_1")
    assert not marker.exists()
    for message in [*messages, str(caught.value)]:
        if protocol >= 2:  # protocols 0 and 1 have no magic bytes: refused as not safetensors
            assert message == f"{weights} {PICKLE_REFUSED}"
        else:
            assert message == (
                f"{weights} is not a safetensors file (Error while deserializing header: header "
                f"too large): {DAMAGED}"
            )


def test_a_damaged_safetensors_file_that_starts_like_a_pickle(run: Path) -> None:
    """Header length 640 (0x80 0x02 ...) then the JSON header's "{": not called a pickle."""
    weights = run / "seed_1" / "model.safetensors"
    weights.write_bytes(b"\x80\x02\x00\x00\x00\x00\x00\x00{" + b" " * 20)
    with pytest.raises(DataError) as caught:
        load_model(run / "seed_1")
    assert str(caught.value) == (
        f"{weights} is not a safetensors file (Error while deserializing header: invalid header "
        f"length): {DAMAGED}"
    )


def read_state(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, copied out of its memory map (it is then overwritten)."""
    return {key: value.clone() for key, value in safetensors.torch.load_file(weights).items()}


def test_a_torch_save_file_is_refused(run: Path, store: Path, capsys) -> None:
    weights = run / "seed_1" / "model.safetensors"
    torch.save(read_state(weights), weights)
    for command in COMMANDS:
        assert fails(command, run, store, capsys) == f"{weights} {PICKLE_REFUSED}"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("more_items", "embed_dim", "detail"),
    [  # the embedding table holds 62 + 14 + 24 = 100 ids; the run's d is 4, k is 3; with
        # d = 6 the router (3, 18) and the output layer (1, 36) differ too
        (0, 6, "embedding.table.weight has shape (100, 6) in the file but (100, 4) in the model "
         "(and 2 more tensor(s) of another shape)"),
        (5, 4, "embedding.table.weight has shape (105, 4) in the file but (100, 4) in the model"),
    ],
    ids=["another-model", "another-store"],
)
def test_weights_of_another_model_or_store(
    run: Path, store: Path, command: str, more_items: int, embed_dim: int, detail: str, capsys
) -> None:
    spec = FeatureSpec.from_schema(config_of(run)["spec"])
    other = FeatureSpec(spec.attributes, (spec.vocab_sizes[0] + more_items, *spec.vocab_sizes[1:]),
                        spec.max_len)
    weights = run / "seed_1" / "model.safetensors"
    safetensors.torch.save_model(build_model(MODEL, other, embed_dim=embed_dim), str(weights))
    assert fails(command, run, store, capsys) == (
        f"{weights} does not hold the weights of the model that {run / 'seed_1' / 'config.json'} "
        f"describes: {detail}; the weights come from another model or store"
    )


def test_weights_missing_a_tensor_or_with_an_extra_one(run: Path) -> None:
    weights = run / "seed_1" / "model.safetensors"
    state = read_state(weights)
    config = run / "seed_1" / "config.json"
    safetensors.torch.save_file({k: v for k, v in state.items() if k != "router.weight"}, weights)
    with pytest.raises(DataError) as caught:
        load_model(run / "seed_1")
    assert str(caught.value) == (
        f"{weights} lacks 1 tensor(s) of the model that {config} describes, e.g. router.weight; "
        "the weights come from another model or store"
    )
    safetensors.torch.save_file({**state, "extra.weight": torch.zeros(2)}, weights)
    with pytest.raises(DataError) as caught:
        load_model(run / "seed_1")
    assert str(caught.value) == (
        f"{weights} does not hold the weights of the model that {config} describes: the file "
        "holds 1 tensor(s) the model lacks, e.g. extra.weight; the weights come from another "
        "model or store"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_weights(run: Path, store: Path, command: str, capsys) -> None:
    weights = run / "seed_1" / "model.safetensors"
    weights.unlink()
    assert fails(command, run, store, capsys) == f"{weights} is missing: not a saved model"


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_results_json(run: Path, store: Path, command: str, capsys) -> None:
    (run / "results.json").unlink()
    message = fails(command, run, store, capsys)
    if command == "evaluate":
        assert message == f"{run / 'results.json'} is missing: not a finished camn train run"
    else:  # explain also takes a saved model's folder (config.json), and says so
        assert message == (
            f"{run} is not a camn train run (no results.json) nor a saved model (no config.json)"
        )


@pytest.mark.parametrize("command", COMMANDS)
def test_broken_results_json(run: Path, store: Path, command: str, capsys) -> None:
    path = run / "results.json"
    path.write_text('{"model": "camn", "seeds": [1,')
    assert fails(command, run, store, capsys) == (
        f"{path} is not valid JSON (Expecting value: line 1, column 31): {DAMAGED}"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_results_json_without_seeds(run: Path, store: Path, command: str, capsys) -> None:
    path = run / "results.json"
    results = json.loads(path.read_text())
    del results["seeds"]
    path.write_text(json.dumps(results))
    assert fails(command, run, store, capsys) == (
        f"{path} does not name the model and its seeds: {DAMAGED}"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_broken_config_json(run: Path, store: Path, command: str, capsys) -> None:
    path = run / "seed_1" / "config.json"
    path.write_text('{"model": "camn", "options": {')
    assert fails(command, run, store, capsys) == (
        f"{path} is not valid JSON (Expecting property name enclosed in double quotes: line 1, "
        f"column 31): {DAMAGED}"
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda c: c.pop("spec"), "lacks spec"),
        (lambda c: c.update(spec={"attributes": ["item_id"], "vocab_sizes": [], "max_len": 5}),
         "has no valid spec (attributes, vocab_sizes and max_len of the store)"),
        (lambda c: c.update(options=[4]), "needs a model name (a string) and options (an object)"),
        (lambda c: c["train"].pop("eval_batch_size"), "lacks train.eval_batch_size"),
    ],
)
def test_config_json_without_what_rebuilds_the_model(
    run: Path, store: Path, change, reason: str, capsys
) -> None:
    path = run / "seed_1" / "config.json"
    config = config_of(run)
    change(config)
    path.write_text(json.dumps(config))
    assert fails("evaluate", run, store, capsys) == f"{path} {reason}: {DAMAGED}"


def test_config_json_with_options_the_model_does_not_take(run: Path, store: Path, capsys) -> None:
    path = run / "seed_1" / "config.json"
    config = config_of(run)
    config["options"]["no_such_option"] = 1
    path.write_text(json.dumps(config))
    message = fails("evaluate", run, store, capsys)
    assert message.startswith(f"{path}: its options do not build {MODEL!r}: ")
    assert "no_such_option" in message


@pytest.mark.parametrize("command", COMMANDS)
def test_a_run_applied_to_a_damaged_store(
    trained: Path, store: Path, tmp_path: Path, command: str, capsys
) -> None:
    damaged = Path(shutil.copytree(store, tmp_path / "store"))
    path = damaged / "arrays" / "pair_negatives.npy"
    negatives = np.load(path)
    negatives[10] = 62  # item ids are 2..61
    np.save(path, negatives)
    assert fails(command, trained, damaged, capsys) == (
        f"{damaged} is a damaged store: arrays/pair_negatives.npy holds 62 at row 10; item ids "
        "are 2..num_items + 1 (61)"
    )


class StopAfterFirstEpoch(Hook):
    def epoch(self, seed: int, record: dict) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize("name", ["last", "best", "optimizer", "rng"])
def test_a_pickle_in_a_training_checkpoint_is_refused_and_never_run(
    store: Path, tmp_path: Path, name: str
) -> None:
    """Every tensor file of a training checkpoint is read as safetensors only."""
    config = TrainConfig(MODEL, epochs=2, device="cpu", progress=False)
    seed_dir = tmp_path / "seed_1"
    with pytest.raises(KeyboardInterrupt):
        train_one(PreparedStore(store), config, 1, seed_dir, hooks=[StopAfterFirstEpoch()])
    marker = tmp_path / "marker"
    path = seed_dir / "checkpoint-1" / f"{name}.safetensors"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(DataError) as caught:
        train_one(PreparedStore(store), config, 1, seed_dir, resume=True)
    assert not marker.exists()
    assert str(caught.value).startswith(f"{path} cannot be read (")
    assert str(caught.value).endswith(
        "): the checkpoint is damaged; start the run again (camn train --force)")
