"""``camn export``: a trained model as an inference graph for serving, ONNX or TorchScript.

The graph takes the model's id tensors and returns click probabilities, for any batch size:

- ``history`` (batch, L, k) int64: attribute ids of the history items, left-aligned (position 0
  the oldest kept item), 0 at padding;
- ``mask`` (batch, L) bool: True at real history items;
- ``target`` (batch, k) int64: attribute ids of the candidate item;
- and for a run trained with side features, those it reads, in this order:
  ``user_features`` (batch, U) int64, the user's row of ``arrays/user_features.npy`` (all 1,
  "unknown", for a user absent from ``users.txt``); ``context`` (batch, C) int64, the ids of
  the row's context values in ``vocab/context.<name>.txt`` (1 for a missing or unknown value);
  ``numeric`` (batch, M) float32, ``(x - mean) / std`` with the training statistics that the
  sidecar lists (``numeric_standardisation``);
- output ``probability`` (batch,) float32.

An item's k attribute ids are its row of the store's ``arrays/item_attributes.npy`` (row 1, all
"unknown", for an item id absent from ``vocab/<item attribute>.txt``, whose line i is item id
i): the mapping :func:`camn.load` applies. The bags of a multi-valued attribute are part of the
graph (its column of ``history`` and ``target`` is not read). A JSON sidecar ``<out>.json``
records where those files are, the inputs' names, shapes and dtypes, the model and the camn
version.

The export verifies itself before anything is written: the exported graph (run by onnxruntime
for ONNX, by torch for TorchScript, loaded back from the bytes written) must give the eager
model's probabilities within 1e-5 on store rows (with their side features), in batches of
three sizes (1 included) and with an empty history (and unknown user features) among them.
ONNX uses torch's dynamo exporter and needs the ``serve`` extra (``pip install 'camn[serve]'``:
onnx, onnxscript, onnxruntime); nothing else in camn does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import logging
import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from camn import __version__
from camn.cli import add_run_arguments
from camn.data.raw import DataError
from camn.data.store import USERS
from camn.encoded_rows import Encoded
from camn.outputs import check_output_file, writing
from camn.predict import Predictor, load, model_inputs

FORMATS = ("onnx", "torchscript")
INPUTS = ("history", "mask", "target")
SIDE_INPUTS = ("user_features", "context", "numeric")  # the batch keys of FeatureSpec's
OUTPUT = "probability"
TOLERANCE = 1e-5
VERIFY_ROWS = 64  # rows of the largest verification batch
SERVE = "pip install 'camn[serve]'"
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")

Batch = tuple[torch.Tensor, ...]  # the graph's inputs, in the order of graph_inputs


def graph_inputs(predictor: Predictor) -> tuple[str, ...]:
    """The graph's input names: ``INPUTS`` and the side features the model reads."""
    ids = predictor.ids
    read = dict(zip(SIDE_INPUTS, (ids.user_features, ids.context_features, ids.numeric_features),
                    strict=True))
    return (*INPUTS, *(key for key in SIDE_INPUTS if read[key]))


class ProbabilityGraph(nn.Module):
    """A model as a function of its tensors: (history, mask, target, *side) -> probability;
    ``side``: the tensors of ``side_names`` (the side features the model reads, if any)."""

    def __init__(self, model: nn.Module, side_names: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.side_names = side_names

    def forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                *side: torch.Tensor) -> torch.Tensor:
        batch = {"history": history, "mask": mask, "target": target}
        output = self.model(batch | dict(zip(self.side_names, side, strict=True)))
        return torch.sigmoid(output.logits.float())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="onnx (onnxruntime and other runtimes; needs camn[serve]) or "
                        "torchscript (torch.jit.load, C++ libtorch)")
    parser.add_argument("--out", required=True, type=Path,
                        help="the graph's file (e.g. model.onnx, model.pt); the sidecar is "
                        "OUT.json")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing --out and its sidecar")


def run(args: argparse.Namespace) -> int:
    inputs = model_inputs(args.run, args.seed, args.data)
    check_output_file(args.out, f"an export written by camn (no camn sidecar {args.out.name}"
                      ".json names it)", is_export, force=args.force, inputs=inputs)
    sidecar = sidecar_path(args.out)  # a file's: ``--out .`` is refused above
    check_output_file(sidecar, "the sidecar of an export written by camn", is_sidecar,
                      force=args.force, inputs=inputs, option="--out's sidecar")
    if args.format == "onnx":
        require_serve()
    predictor = load(args.run, args.seed, store=args.data, device="cpu")
    with writing(args.out):
        info = export(predictor, args.format, args.out)
    verified = info["verified"]
    print(f"{predictor.name} (seed {predictor.seed}) exported as {args.format} to {args.out}: "
          f"max |exported - eager| {verified['max_abs_difference']:.1e} on "
          f"{sum(verified['batch_sizes'])} rows (batches of {verified['batch_sizes']})")
    print(f"inputs, shapes and vocabularies: {sidecar}")
    return 0


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def read_sidecar(path: Path) -> dict | None:
    """The sidecar at ``path`` when it is one camn wrote (JSON with its keys), else None."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    keys = ("camn_version", "format", "file", "inputs", "verified")
    if not (isinstance(data, dict) and all(key in data for key in keys)
            and data["format"] in FORMATS):
        return None
    return data


def is_export(path: Path) -> bool:
    """Whether ``path`` is a graph camn exported: its sidecar is camn's and names it."""
    data = read_sidecar(sidecar_path(path))
    return data is not None and data["file"] == path.name


def is_sidecar(path: Path) -> bool:
    """Whether ``path`` is the sidecar camn wrote beside an export of that name."""
    data = read_sidecar(path)
    return data is not None and path.name == f"{data['file']}.json"


def require_serve() -> None:
    """A DataError naming the extra when an ONNX module is missing."""
    missing = [name for name in ONNX_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise DataError(f"ONNX export needs {', '.join(missing)}: {SERVE}")


def export(predictor: Predictor, fmt: str, out: Path) -> dict:
    """Export ``predictor``'s model to ``out`` (verified first), write the sidecar; return it."""
    if fmt not in FORMATS:
        raise DataError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    names = graph_inputs(predictor)
    graph = ProbabilityGraph(predictor.model, names[len(INPUTS):]).eval()
    batches = verification_batches(predictor)
    with torch.no_grad():
        expected = [graph(*batch).numpy() for batch in batches]
    out.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = out.with_name(f".{out.name}.{token}.partial")
    tmp_sidecar = out.with_name(f".{out.name}.json.{token}.partial")
    try:
        if fmt == "onnx":
            runtime = export_onnx(graph, batches[0], tmp, predictor.name, names)
        else:
            runtime = export_torchscript(graph, batches[0], tmp, predictor.name)
        difference = max(float(np.abs(runtime(batch) - want).max())
                         for batch, want in zip(batches, expected, strict=True))
        if not difference <= TOLERANCE:  # NaN fails too
            raise DataError(
                f"the {fmt} export of {predictor.name} does not reproduce the model: max "
                f"|exported - eager| = {difference:.3g} > {TOLERANCE:g}; nothing was written"
            )
        info = sidecar(predictor, fmt, out, [len(b[0]) for b in batches], difference)
        tmp_sidecar.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out)  # both files are complete: a failure before leaves neither
        os.replace(tmp_sidecar, sidecar_path(out))
    finally:
        tmp.unlink(missing_ok=True)
        tmp_sidecar.unlink(missing_ok=True)
    return info


def verification_batches(predictor: Predictor) -> list[Batch]:
    """Store rows (the test split first) in batches of VERIFY_ROWS, about half that and 1,
    with the rows' side features; the second batch gets an empty history in its first row (a
    new user: unknown user features too)."""
    store = predictor.store
    rows = np.concatenate([store.split_indices(s) for s in ("test", "valid", "train")])
    sizes = [min(VERIFY_ROWS, len(rows)), max(1, min(VERIFY_ROWS // 2 + 1, len(rows) - 1)), 1]
    history = store.gather("histories", rows[: sizes[0]])[:, :, 0].astype(np.int64)
    lengths = store.gather("lengths", rows[: sizes[0]]).astype(np.int64)
    target = store.gather("targets", rows[: sizes[0]])[:, 0].astype(np.int64)
    side = store.side_fields(rows[: sizes[0]])
    names = graph_inputs(predictor)
    batches = []
    for number, size in enumerate(sizes):
        encoded = Encoded(history[:size].copy(), lengths[:size].copy(), target[:size],
                          side={key: values[:size].copy() for key, values in side.items()})
        if number == 1:
            encoded.history[0], encoded.lengths[0] = 0, 0
            if "user_features" in encoded.side:
                encoded.side["user_features"][0] = predictor.ids.unknown_side(1)["user_features"]
        batch = predictor.batch(encoded)
        batches.append(tuple(batch[name] for name in names))
    return batches


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporters' progress lines and warnings (torchvision is not installed, ...) hidden."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_failed(fmt: str, name: str, error: Exception) -> DataError:
    lines = str(error).strip().splitlines()
    reason = (lines[0] if lines else type(error).__name__)[:300]
    return DataError(f"model {name} could not be exported to {fmt}: {type(error).__name__}: "
                     f"{reason}")


def export_onnx(graph: ProbabilityGraph, example: Batch, path: Path, name: str,
                names: tuple[str, ...] = INPUTS):
    """Write the ONNX graph (dynamic batch) to ``path``, its inputs named ``names``; return a
    function running it with onnxruntime on a batch."""
    require_serve()
    import onnxruntime

    batch = torch.export.Dim("batch")
    dynamic: tuple = tuple({0: batch} for _ in INPUTS)
    if len(names) > len(INPUTS):  # the side features, one *side argument of the graph
        dynamic += (tuple({0: batch} for _ in names[len(INPUTS):]),)
    try:
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                graph, example, str(path), input_names=list(names), output_names=[OUTPUT],
                dynamo=True, external_data=False, verbose=False,
                dynamic_shapes=dynamic,
            )
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # the exporters raise many kinds; each is named
        raise export_failed("onnx", name, error) from None

    def run(inputs: Batch) -> np.ndarray:
        return session.run(None, dict(zip(names, (t.numpy() for t in inputs), strict=True)))[0]

    return run


def export_torchscript(graph: ProbabilityGraph, example: Batch, path: Path, name: str):
    """Trace the graph to TorchScript, write it to ``path``; return a function running the
    module loaded back from those bytes."""
    buffer = io.BytesIO()
    try:
        with quiet_exporter(), torch.no_grad():
            traced = torch.jit.trace(graph, example, check_trace=False)
            torch.jit.save(traced, buffer)
    except Exception as error:  # the tracer raises many kinds; each is named
        raise export_failed("torchscript", name, error) from None
    path.write_bytes(buffer.getvalue())
    buffer.seek(0)
    loaded = torch.jit.load(buffer)  # the bytes made just above, never a user's file

    def run(inputs: Batch) -> np.ndarray:
        with torch.no_grad():
            return loaded(*inputs).numpy()

    return run


def sidecar(predictor: Predictor, fmt: str, out: Path, sizes: list[int],
            difference: float) -> dict:
    """What a server needs next to the graph (module docstring)."""
    store = predictor.store.root.resolve()
    length, k = predictor.max_len, len(predictor.attributes)
    runtime = "onnxruntime " + importlib.import_module("onnxruntime").__version__ \
        if fmt == "onnx" else "torch " + torch.__version__
    info = {
        "camn_version": __version__,
        "format": fmt,
        "file": out.name,
        "model": predictor.name,
        "options": predictor.config.get("options", {}),
        "seed": predictor.seed,
        "store": str(store),
        "attributes": predictor.attributes,
        "vocab_sizes": predictor.store.vocab_sizes,
        "max_len": length,
        "vocabularies": {a: str(store / "vocab" / f"{a}.txt") for a in predictor.attributes},
        "item_attributes": str(store / "arrays" / "item_attributes.npy"),
        "users": str(store / USERS) if (store / USERS).is_file() else None,
        "ids": {"padding": 0, "unknown": 1, "first_value": 2},
        "inputs": [
            {"name": "history", "shape": ["batch", length, k], "dtype": "int64",
             "meaning": "attribute ids of the history items, oldest first, 0 at padding"},
            {"name": "mask", "shape": ["batch", length], "dtype": "bool",
             "meaning": "True at real history items"},
            {"name": "target", "shape": ["batch", k], "dtype": "int64",
             "meaning": "attribute ids of the candidate item"},
        ],
        "outputs": [{"name": OUTPUT, "shape": ["batch"], "dtype": "float32",
                     "meaning": "click probability"}],
        "verified": {"runtime": runtime, "batch_sizes": sizes, "max_abs_difference": difference,
                     "tolerance": TOLERANCE},
    }
    side = side_sidecar(predictor)
    info["inputs"] += side.pop("inputs")
    return info | side


def side_sidecar(predictor: Predictor) -> dict:
    """The sidecar's entries for the side features: their inputs (appended to ``inputs``), the
    vocabularies and user table they are read through, the numeric standardisation, and the
    attributes whose bags the graph holds; no entries but an empty ``inputs`` for a run
    without them."""
    ids, store = predictor.ids, predictor.store.root.resolve()
    schema = predictor.store.schema
    info: dict = {"inputs": []}
    if ids.user_features:
        info["inputs"].append({
            "name": "user_features", "shape": ["batch", len(ids.user_features)],
            "dtype": "int64", "features": ids.user_features,
            "meaning": "ids of the user's features: the row of user_features_table at the "
                       "user's line of users (all 1 for a user not there)"})
        info["user_features_table"] = str(store / "arrays" / "user_features.npy")
        info["user_feature_vocabularies"] = {
            name: str(store / "vocab" / f"user.{name}.txt") for name in ids.user_features}
    if ids.context_features:
        info["inputs"].append({
            "name": "context", "shape": ["batch", len(ids.context_features)], "dtype": "int64",
            "features": ids.context_features,
            "meaning": "ids of the row's context values (line i of the feature's vocabulary is "
                       "id i; 1 for a missing or unknown value)"})
        info["context_vocabularies"] = {
            name: str(store / "vocab" / f"context.{name}.txt") for name in ids.context_features}
        if schema.get("numeric_buckets"):
            info["numeric_buckets"] = {  # a number's id: 2 + the edges at or below it
                name: {"edges": edges, "id": "2 + the number of edges <= the value"}
                for name, edges in schema["numeric_buckets"].items()}
    if ids.numeric_features:
        info["inputs"].append({
            "name": "numeric", "shape": ["batch", len(ids.numeric_features)],
            "dtype": "float32", "features": ids.numeric_features,
            "meaning": "the row's numbers standardised, (x - mean) / std with "
                       "numeric_standardisation"})
        info["numeric_standardisation"] = {
            name: dict(zip(("mean", "std"), schema["numeric_standardisation"][name],
                           strict=True)) for name in ids.numeric_features}
    if schema.get("bag_slots"):
        info["bags"] = [schema["attributes"][slot] for slot in schema["bag_slots"]]
    return info
