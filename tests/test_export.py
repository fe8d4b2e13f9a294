"""``camn export``: ONNX and TorchScript graphs that reproduce the eager model, with a sidecar."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import camn
from camn import __version__
from camn.cli import main
from camn.encoded_rows import Encoded
from camn.export import export
from camn.predict import Predictor


def store_batch(predictor: Predictor, size: int, start: int = 3) -> tuple[dict, np.ndarray]:
    """``size`` train rows as a model batch (its first history emptied: a new user), and the
    eager model's probabilities of them."""
    store = predictor.store
    rows = store.split_indices("train")[start : start + size]
    history = np.asarray(store.gather("histories", slice(None)))[rows][:, :, 0].astype(np.int64)
    lengths = np.asarray(store.gather("lengths", slice(None)))[rows].astype(np.int64)
    history[0], lengths[0] = 0, 0
    encoded = Encoded(history, lengths, store.gather("targets", rows)[:, 0])
    return predictor.batch(encoded), predictor.run(encoded)[0]


def check_sidecar(path: Path, predictor: Predictor, fmt: str) -> None:
    info = json.loads(Path(f"{path}.json").read_text())
    length, k = predictor.max_len, len(predictor.attributes)
    assert info["camn_version"] == __version__ and info["model"] == predictor.name
    assert info["format"] == fmt and info["file"] == path.name
    assert [(i["name"], i["shape"], i["dtype"]) for i in info["inputs"]] == [
        ("history", ["batch", length, k], "int64"), ("mask", ["batch", length], "bool"),
        ("target", ["batch", k], "int64")]
    assert info["outputs"][0]["name"] == "probability"
    assert Path(info["item_attributes"]).is_file() and Path(info["users"]).is_file()
    assert all(Path(p).is_file() for p in info["vocabularies"].values())
    assert info["verified"]["max_abs_difference"] <= 1e-5
    assert info["verified"]["batch_sizes"][-1] == 1


@pytest.mark.parametrize("model", [
    "din",
    "camn",
])
def test_torchscript_reproduces_the_model(trained_run: Callable[[str], Path], tmp_path: Path,
                                          model: str) -> None:
    predictor = camn.load(trained_run(model))
    path = tmp_path / f"{model}.pt"
    export(predictor, "torchscript", path)
    check_sidecar(path, predictor, "torchscript")
    graph = torch.jit.load(str(path))  # the file just written by the test
    for size in (5, 2):
        batch, expected = store_batch(predictor, size)
        with torch.no_grad():
            got = graph(batch["history"], batch["mask"], batch["target"]).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_onnx_reproduces_the_model(trained_run: Callable[[str], Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    """DIN: the dynamo exporter takes about 6 s of CPU on it, 15 s on CAMN (which exports
    as well: docs/inference.md)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run, path = trained_run("din"), tmp_path / "din.onnx"
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(path)]) == 0
    assert f"din (seed 1) exported as onnx to {path}" in capsys.readouterr().out
    predictor = camn.load(run)
    check_sidecar(path, predictor, "onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["history", "mask", "target"]
    for size in (7, 3):
        batch, expected = store_batch(predictor, size)
        got = session.run(None, {key: value.numpy() for key, value in batch.items()})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_onnx_without_the_extra_names_it(trained_run: Callable[[str], Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    out = tmp_path / "m.onnx"
    assert main(["export", "--run", str(trained_run("din")), "--format", "onnx",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "camn: error: ONNX export needs onnxscript: pip install 'camn[serve]'\n")
    assert not out.exists()


def test_existing_outputs_are_kept(trained_run: Callable[[str], Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.pt"
    Path(f"{out}.json").write_text("mine")
    argv = ["export", "--run", str(trained_run("din")), "--format", "torchscript", "--out",
            str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"camn: error: --out's sidecar {out}.json already "
                                       "exists; pass --force to overwrite it\n")
    assert main([*argv, "--force"]) == 2  # the sidecar is not camn's: kept
    assert capsys.readouterr().err == (
        f"camn: error: --out's sidecar {out}.json is not the sidecar of an export written by "
        "camn; --force replaces only such a file, camn will not write over it; choose another "
        "file\n")
    assert Path(f"{out}.json").read_text() == "mine"
    Path(f"{out}.json").unlink()
    assert main(argv) == 0
    assert main([*argv, "--force"]) == 0  # camn's own export and sidecar: replaced
    assert json.loads(Path(f"{out}.json").read_text())["model"] == "din"
