"""Inference speed of a trained run: latency of one user's candidates and bulk throughput.

For each engine and CPU thread count:

- **latency**: one user (the store's first user with a full history of max_len items) and
  1, 100 and 1,000 candidates in one call, median and p99 over ``--repeats`` calls after a
  warm-up, in milliseconds;
- **throughput**: rows per second in batches of 8,192 store rows (their own histories),
  median over ``--bulk-repeats`` calls.

Engines: ``eager`` (the model in torch, no gradients), ``api`` (``camn.load(...).score`` on raw
string ids: the eager model plus the id mapping, latency only), ``onnx`` (the ``camn export``
graph in onnxruntime, when the serve extra is installed) and with ``--compile`` ``compiled``
(``torch.compile(dynamic=True)`` of the eager graph; compile time not counted). Inputs are
prepared before the clock starts, except for ``api``.

Without ``--run`` a run is made first: the built-in synthetic store (3,000 users, 1,000 items,
k = 5, L = 20) and one epoch of ``--model``, in a temporary folder.

    python benchmarks/inference.py [--run RUN] [--model camn] [--threads 1,2]
        [--repeats 50] [--bulk-repeats 5] [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

import camn
from camn.cli import main as camn_main
from camn.data.prepare import prepare
from camn.data.raw import DataError
from camn.data.sources.synthetic import generate
from camn.encoding import Encoded, UnknownIds
from camn.export import ProbabilityGraph, export, require_serve
from camn.predict import Predictor

CANDIDATES = (1, 100, 1000)
BULK = 8192
Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def make_run(folder: Path, model: str) -> Path:
    """The synthetic store and one epoch of ``model`` on it."""
    store = folder / "store"
    prepare(generate(seed=2022), store, protocol="last", max_len=20, seed=2022)
    out = folder / model
    assert camn_main(["train", "--data", str(store), "--model", model, "--out", str(out),
                      "--epochs", "1", "--device", "cpu", "--no-progress"]) == 0
    return out


def user_inputs(predictor: Predictor, candidates: int) -> tuple[Inputs, list[str], list[str]]:
    """One user's latest history against ``candidates`` items: the model's tensors, and the
    same as raw ids (history, candidate ids) for the API."""
    store = predictor.store
    lengths = store.gather("lengths", slice(None))
    row = int(np.flatnonzero(lengths == store.max_len)[0])
    user = predictor.user_ids()[int(store.gather("users", [row])[0])]
    items = predictor.vocabulary(predictor.attributes[0])[2:]
    rows, lengths = predictor.ids.user_histories(pl.Series([user]), UnknownIds())
    history = [items[i - 2] for i in predictor.ids.table[rows[0, : lengths[0]], 0]]
    chosen = [items[i % len(items)] for i in range(candidates)]
    rows, _ = predictor.ids.encode(pl.Series(chosen), histories=pl.Series([history] * candidates),
                                   unknown=UnknownIds())
    batch = predictor.batch(rows)
    return (batch["history"], batch["mask"], batch["target"]), history, chosen


def bulk_inputs(predictor: Predictor) -> Inputs:
    """BULK store rows (the first ones, repeated if the store is smaller)."""
    store = predictor.store
    rows = np.resize(np.arange(sum(store.schema["splits"].values())), BULK)
    encoded = Encoded(store.gather("histories", rows)[:, :, 0].astype(np.int64),
                      store.gather("lengths", rows).astype(np.int64),
                      store.gather("targets", rows)[:, 0].astype(np.int64))
    batch = predictor.batch(encoded)
    return batch["history"], batch["mask"], batch["target"]


def timed(call: Callable[[object], object], argument: object, repeats: int,
          warmup: int = 2) -> np.ndarray:
    """Seconds of ``repeats`` calls of ``call(argument)`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call(argument)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(argument)
        seconds.append(time.perf_counter() - start)
    return np.asarray(seconds)


def engines(predictor: Predictor, folder: Path, threads: int, compiled: bool
            ) -> dict[str, Callable[[Inputs], object]]:
    graph = ProbabilityGraph(predictor.model).eval()

    def eager(inputs: Inputs) -> object:
        with torch.inference_mode():
            return graph(*inputs)

    out: dict[str, Callable[[Inputs], object]] = {"eager": eager}
    if compiled:
        fast = torch.compile(graph, dynamic=True)

        def compiled_call(inputs: Inputs) -> object:
            with torch.no_grad():
                return fast(*inputs)

        out["compiled"] = compiled_call
    try:
        require_serve()
    except DataError as error:
        print(f"onnx skipped: {error}")
        return out
    import onnxruntime

    path = folder / "model.onnx"
    if not path.exists():
        export(predictor, "onnx", path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def onnx(inputs: Inputs) -> object:
        return session.run(None, dict(zip(names, (t.numpy() for t in inputs), strict=True)))

    out["onnx"] = onnx
    return out


def measure(predictor: Predictor, folder: Path, threads: int, args: argparse.Namespace
            ) -> list[dict]:
    torch.set_num_threads(threads)
    results = []
    users = {n: user_inputs(predictor, n) for n in CANDIDATES}
    bulk = bulk_inputs(predictor)
    for name, call in engines(predictor, folder, threads, args.compile).items():
        for n, (inputs, _, _) in users.items():
            seconds = timed(call, inputs, args.repeats)
            results.append({"engine": name, "threads": threads, "candidates": n,
                            "median_ms": 1e3 * float(np.median(seconds)),
                            "p99_ms": 1e3 * float(np.percentile(seconds, 99))})
        seconds = timed(call, bulk, args.bulk_repeats, warmup=1)
        results.append({"engine": name, "threads": threads, "candidates": BULK,
                        "rows_per_s": BULK / float(np.median(seconds))})
    for n, (_, history, chosen) in users.items():
        seconds = timed(lambda pair: predictor.score(*pair), ([history], chosen), args.repeats)
        results.append({"engine": "api", "threads": threads, "candidates": n,
                        "median_ms": 1e3 * float(np.median(seconds)),
                        "p99_ms": 1e3 * float(np.percentile(seconds, 99))})
    return results


def markdown(results: list[dict], predictor: Predictor) -> str:
    engines_seen = list(dict.fromkeys(r["engine"] for r in results))
    lines = [f"{predictor.name}, k = {len(predictor.attributes)}, L = {predictor.max_len}; "
             "latency median / p99 in ms for one user's candidates; throughput in rows/s at "
             f"batch {BULK:,}", "",
             "| engine | threads | " + " | ".join(f"{n:,} cand." for n in CANDIDATES)
             + f" | rows/s @ {BULK:,} |", "|---|---|" + "---|" * (len(CANDIDATES) + 1)]
    for engine in engines_seen:
        for threads in sorted({r["threads"] for r in results}):
            mine = [r for r in results if r["engine"] == engine and r["threads"] == threads]
            cells = []
            for n in CANDIDATES:
                hit = [r for r in mine if r["candidates"] == n]
                cells.append(f"{hit[0]['median_ms']:.2f} / {hit[0]['p99_ms']:.2f}" if hit else "")
            bulk = [r for r in mine if "rows_per_s" in r]
            cells.append(f"{bulk[0]['rows_per_s']:,.0f}" if bulk else "–")
            lines.append(f"| {engine} | {threads} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a camn train run (default: train one)")
    parser.add_argument("--model", default="camn", help="model trained without --run")
    parser.add_argument("--threads", default="1,2", help="comma-separated CPU thread counts")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per latency cell")
    parser.add_argument("--bulk-repeats", type=int, default=5,
                        help=f"timed calls of a {BULK:,}-row batch")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the model")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        run = args.run or make_run(folder, args.model)
        predictor = camn.load(run)
        results = []
        for threads in (int(t) for t in args.threads.split(",")):
            results += measure(predictor, folder, threads, args)
    print(markdown(results, predictor))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
