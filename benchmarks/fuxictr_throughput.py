"""FuxiCTR's DIN or DMIN timed on a camn store by FuxiCTR's own training step: the FuxiCTR
worker of ``throughput.py``, one measurement a call, one JSON line (same keys as camn's).

Runs in FuxiCTR's interpreter (FuxiCTR is never a camn dependency):

    python3 -m venv /tmp/fuxictr && /tmp/fuxictr/bin/pip install torch==2.13.0 fuxictr==2.3.10
    /tmp/fuxictr/bin/python benchmarks/fuxictr_throughput.py --store STORE --model dmin \\
        --zoo FuxiCTR/model_zoo --kind train --steps 20

The model code is FuxiCTR's ``model_zoo/<DIN|DMIN>/src/<NAME>.py`` (the pip wheel ships
neither), loaded from ``--zoo`` at run time. Inputs are ``fuxictr_side_by_side``'s: one
categorical feature per attribute of the target, one sequence feature per attribute of the
history sharing its table, id 0 padding, batches gathered from the store's arrays each step.
Training is ``BaseModel.train_epoch`` as ``BaseModel.fit`` sets it up (its ``train_step``:
Adam from ``compile("adam", ...)``, gradient clipping at norm 10, ``loss.item()`` every step),
with no validation inside the timed pass; inference is ``BaseModel.predict``.

Settings, chosen to match camn's models where FuxiCTR's code allows, else FuxiCTR's defaults:

- both: embedding 18 per field, the k = 6 attributes of the store as one target group
  (item width 108) and their 6 history fields, max_len from the store (20), learning rate
  0.002, output MLP 200 -> 80 -> 1 with Dice (camn's), no dropout or regularisation.
- DIN: DIN_Attention with FuxiCTR's default 64 Dice units, no softmax; no batch norm in the
  output MLP (FuxiCTR's default; its option would normalise every hidden layer, camn
  normalises the MLP input only).
- DMIN: ``num_heads`` 4, FuxiCTR's default, for both the behaviour refiner and the
  multi-interest extractor (camn: 4 refiner heads, k = 6 extractor heads of width 108;
  FuxiCTR's extractor heads are 108 / 4 = 27 wide, projected back to 108); target-attention
  MLP 80 -> 40 ReLU and an 8-wide positional embedding (defaults); sum pooling on, as camn's
  ``pooled_history``; batch norm once on the output MLP's input (``bn_only_once``), as camn.
  ``aux_loss_lambda`` 0, its default: camn's DMIN trains the auxiliary next-click loss, but
  FuxiCTR 2.3.10's ``add_loss`` reads ``self.model_dim``, which ``__init__`` never sets, so a
  positive weight stops at the first step.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fuxictr_side_by_side import SplitBatches, feature_map, read_store
from speed_common import (
    add_measurement_arguments,
    autocast,
    count_flops,
    emit,
    peak_memory,
    set_threads,
    synchronize,
    timed_batches,
)

CLASSES = {"din": "DIN", "dmin": "DMIN"}
EMBED_DIM = 18
DMIN_HEADS = 4  # FuxiCTR's default num_heads
LEARNING_RATE = 0.002  # camn's
MAX_GRADIENT_NORM = 10.0  # BaseModel.fit's default


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="a `camn prepare` output")
    parser.add_argument("--model", choices=tuple(CLASSES), required=True)
    parser.add_argument("--zoo", type=Path, required=True, help="FuxiCTR's model_zoo folder")
    parser.add_argument("--kind", choices=("train", "infer"), required=True)
    add_measurement_arguments(parser)
    return parser.parse_args()


def zoo_class(zoo: Path, name: str) -> type:
    """The model class defined in FuxiCTR's ``model_zoo/<NAME>/src/<NAME>.py``."""
    class_name = CLASSES[name]
    path = zoo / class_name / "src" / f"{class_name}.py"
    spec = importlib.util.spec_from_file_location(f"fuxictr_zoo_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)


def model_settings(name: str, attributes: list[str]) -> dict:
    """The constructor options of the header, for the store's attributes."""
    targets, histories = tuple(attributes), tuple(f"hist_{a}" for a in attributes)
    common = {
        "embedding_dim": EMBED_DIM, "learning_rate": LEARNING_RATE, "optimizer": "adam",
        "loss": "binary_crossentropy", "dnn_hidden_units": [200, 80], "dnn_activations": "Dice",
        "net_dropout": 0, "embedding_regularizer": None, "net_regularizer": None,
    }
    if name == "din":
        return {**common, "din_target_field": [targets], "din_sequence_field": [histories],
                "batch_norm": False}
    return {**common, "target_field": targets, "sequence_field": histories,
            "neg_seq_field": None, "enable_sum_pooling": True, "batch_norm": True,
            "num_heads": DMIN_HEADS,
            "bn_only_once": True, "aux_loss_lambda": 0}


def build(args: argparse.Namespace, schema: dict, model_root: str) -> torch.nn.Module:
    width = EMBED_DIM * len(schema["attributes"])
    if args.model == "dmin" and width % DMIN_HEADS:
        raise SystemExit(f"fuxictr_throughput.py: error: FuxiCTR's DMIN needs the item width "
                         f"({EMBED_DIM} x {len(schema['attributes'])} attributes = {width}) "
                         f"to be a multiple of its {DMIN_HEADS} heads; this store's is not")
    torch.manual_seed(args.seed)
    fmap = feature_map(args.store, schema, EMBED_DIM)
    model = zoo_class(args.zoo, args.model)(
        fmap, model_id=CLASSES[args.model], gpu=0 if args.device == "cuda" else -1, verbose=0,
        model_root=model_root, metrics=["AUC", "logloss"],
        **model_settings(args.model, schema["attributes"]),
    )
    if args.precision == "bf16":
        autocast_forward(model, torch.device(args.device))
    return model


def autocast_forward(model: torch.nn.Module, device: torch.device) -> None:
    """Run the model's forward pass under bf16 autocast, its prediction handed on as fp32
    (FuxiCTR's steps have no autocast of their own)."""
    forward = model.forward

    def cast(inputs: dict) -> dict:
        with autocast("bf16", device):
            outputs = forward(inputs)
        return {**outputs, "y_pred": outputs["y_pred"].float()}

    model.forward = cast


def prepare_fit(model: torch.nn.Module, steps: int) -> None:
    """The state ``BaseModel.fit`` sets before ``train_epoch``, validation never reached."""
    model._max_gradient_norm = MAX_GRADIENT_NORM
    model._best_metric, model._stopping_steps, model._stop_training = -np.inf, 0, False
    model._steps_per_epoch, model._total_steps = steps, 0
    model._batch_index, model._epoch_index = 0, 0
    model._eval_steps = 2**62  # no validation inside the timed pass (camn's excludes it too)


def measure_training(model, arrays: dict, attributes: list[str], args) -> dict:
    device = torch.device(args.device)

    def epoch(number: int) -> SplitBatches:
        return SplitBatches(arrays, attributes, "train", args.batch_size, shuffle=True,
                            seed=args.seed + number)

    timed = epoch(1)
    steps = timed_batches(len(timed), args)
    prepare_fit(model, steps)
    model.train()
    warm = iter(epoch(0))
    first = next(warm)
    flops = count_flops(lambda: model.train_step(first))
    model.train_epoch(itertools.islice(warm, args.warmup - 1))
    synchronize(device)
    start = time.perf_counter()
    model.train_epoch(itertools.islice(timed, steps))  # loss.item() every step: all done
    seconds = time.perf_counter() - start
    seen = min(len(timed.rows), steps * args.batch_size)
    return {"samples_per_s": seen / seconds, "steps": steps, "samples": seen,
            "seconds": seconds, "flop_per_sample": flops / len(first["label"]),
            "trainer_step": "BaseModel.train_epoch", **peak_memory(device)}


def measure_inference(model, arrays: dict, attributes: list[str], args) -> dict:
    device = torch.device(args.device)
    batches = SplitBatches(arrays, attributes, "train", args.eval_batch_size, shuffle=False)
    steps = timed_batches(len(batches), args, inference=True)
    warm = iter(batches)
    first = next(warm)
    flops = count_flops(lambda: model.predict([first]))
    model.predict(itertools.islice(warm, args.warmup - 1))
    start = time.perf_counter()
    seen = len(model.predict(itertools.islice(batches, steps)))  # numpy on the host: all done
    seconds = time.perf_counter() - start
    return {"samples_per_s": seen / seconds, "steps": steps, "samples": seen,
            "seconds": seconds, "flop_per_sample": flops / len(first["label"]),
            **peak_memory(device)}


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    schema, arrays = read_store(args.store)
    with tempfile.TemporaryDirectory() as model_root:  # FuxiCTR's checkpoint folder, unused
        model = build(args, schema, model_root)
        measure = measure_training if args.kind == "train" else measure_inference
        result = measure(model, arrays, schema["attributes"], args)
    emit({"model": f"fuxictr_{args.model}", "kind": args.kind, **result})


if __name__ == "__main__":
    main()
