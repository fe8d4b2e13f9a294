"""The fingerprints of a run cover the vocabularies of its side features: a store whose context
or user-feature values differ from the training store's (same sizes, other spellings) is
refused by every command that applies the run; runs that recorded only the item attributes'
fingerprints are accepted as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from camn.cli import main
from camn.data.fingerprint import fingerprint, store_fingerprints
from camn.data.store import PreparedStore

DEVICES = ("desktop", "phone", "tablet")
AGES = ("20", "30", "40")


def write_log(folder: Path, devices: tuple[str, ...] = DEVICES,
              ages: tuple[str, ...] = AGES) -> tuple[Path, Path]:
    """A log of 30 users' impressions with a device column (one of ``devices``) and a user
    table (age, one of ``ages``); the same rows whatever the spellings."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    lines = ["user,item,time,clicked,device"]
    for user in range(30):
        for step in range(8):
            lines.append(f"u{user},i{int(rng.integers(20))},{100 + step},"
                         f"{int(rng.random() < 0.5)},{devices[int(rng.integers(3))]}")
    log = folder / "log.csv"
    log.write_text("\n".join(lines) + "\n")
    users = folder / "users.csv"
    users.write_text("user,age\n" + "".join(f"u{u},{ages[u % 3]}\n" for u in range(30)))
    return log, users


def prepare(folder: Path, **spellings: tuple[str, ...]) -> Path:
    log, users = write_log(folder, **spellings)
    store = folder / "store"
    assert main(["prepare", "table", "--interactions", str(log), "--label-col", "clicked",
                 "--split", "user", "--context", "device", "--users", str(users),
                 "--user-features", "age", "--max-len", "4", "--out", str(store)]) == 0
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The training store, a run on it (CAMN, one epoch), and two stores of the same rows and
    sizes but one spelling: ``phone`` written ``mobile`` (context), ``30`` written ``thirty``
    (user feature; both keep the values' sorted order, so every other id is the same)."""
    folder = tmp_path_factory.mktemp("side-fingerprints")
    trained = prepare(folder / "trained")
    run = folder / "run"
    assert main(["train", "--data", str(trained), "--model", "camn", "--out", str(run),
                 "--epochs", "1", "--batch-size", "64", "--threads", "1", "--no-progress",
                 "--option", "embed_dim=4"]) == 0
    candidates = folder / "candidates.csv"
    candidates.write_text("user,candidate,device\nu1,i2,phone\n")
    return {"trained": trained, "run": run, "candidates": candidates,
            "context": prepare(folder / "context", devices=("desktop", "mobile", "tablet")),
            "user": prepare(folder / "user", ages=("20", "thirty", "40"))}


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("camn: error: ") and err.count("\n") == 1, err
    return err.removeprefix("camn: error: ").strip()


def refusal(store: Path, trained: Path, vocabulary: str) -> str:
    return (f"{store} is not the store the run was trained on ({trained}): its vocabulary of "
            f"{vocabulary} gives the ids to other values, so the model would read them as "
            f"other values; pass --data {trained}, or a store prepared from the same data")


def commands(stores: dict[str, Path], out: Path) -> list[list[str]]:
    run = str(stores["run"])
    return [["evaluate", "--run", run],
            ["explain", "--run", run],
            ["score", "--run", run, "--candidates", str(stores["candidates"]),
             "--out", str(out / "scored.csv"), "--no-progress"],
            ["export", "--run", run, "--format", "torchscript", "--out", str(out / "m.pt")]]


def test_the_run_records_the_side_vocabularies(stores: dict[str, Path]):
    trained = stores["trained"]
    recorded = json.loads((stores["run"] / "seed_1" / "config.json").read_text())["vocabularies"]
    assert sorted(recorded) == ["context.device", "item", "user.age"]
    assert recorded["context.device"] == fingerprint(
        ["<pad>", "<unk>", "desktop", "phone", "tablet"])
    assert recorded["user.age"] == fingerprint(["<pad>", "<unk>", "20", "30", "40"])
    assert recorded == store_fingerprints(PreparedStore(trained))
    assert store_fingerprints(PreparedStore(stores["context"]))["item"] == recorded["item"]


def test_another_context_spelling_is_refused_by_every_command(
    stores: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
):
    other, trained = stores["context"], stores["trained"]
    for argv in commands(stores, tmp_path):
        assert main([*argv, "--data", str(other)]) == 2, argv
        assert error_line(capsys) == refusal(other, trained, "context.device"), argv
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_another_user_feature_spelling_is_refused(stores: dict[str, Path],
                                                  capsys: pytest.CaptureFixture):
    other, trained = stores["user"], stores["trained"]
    assert main(["evaluate", "--run", str(stores["run"]), "--data", str(other)]) == 2
    assert error_line(capsys) == refusal(other, trained, "user.age")


def test_the_same_store_is_accepted(stores: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture):
    copy = tmp_path / "copy"
    shutil.copytree(stores["trained"], copy)
    for data in (stores["trained"], copy):
        assert main(["evaluate", "--run", str(stores["run"]), "--data", str(data)]) == 0
        assert capsys.readouterr().out.startswith("seed 1: AUC ")


def test_a_run_recorded_before_the_side_vocabularies_is_accepted(
    stores: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
):
    run = tmp_path / "run"
    shutil.copytree(stores["run"], run)
    config = run / "seed_1" / "config.json"
    recorded = json.loads(config.read_text())
    recorded["vocabularies"] = {"item": recorded["vocabularies"]["item"]}
    config.write_text(json.dumps(recorded))
    for store in ("context", "user"):
        assert main(["evaluate", "--run", str(run), "--data", str(stores[store])]) == 0
        assert capsys.readouterr().out.startswith("seed 1: AUC ")
