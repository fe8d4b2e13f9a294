"""Each speed lever of the trainer on and off, side by side: what it buys, model by model.

Training samples/s through the trainer's own ``run_epoch`` (data included) on a real store,
every (model, lever) in a fresh process, the levers alternating within each repeat so that a
busy machine slows them alike; medians of the repeats. The levers:

- ``default``: what ``camn train`` runs on a CPU: packed rows (only the real history items are
  computed), fused Adam, fp32, eager.
- ``adam-loop``: Adam's per-parameter loop instead of its fused kernel.
- ``dense-rows``: every history position computed and padding masked (``layers.Packing``'s
  path for batches without their packed rows: evaluation on accelerators).
- ``buckets``: length-bucketed batches cut to their longest history (``--length-buckets``).
- ``dense+buckets``: both, the accelerator path with the padding it saves.
- ``compile``: ``torch.compile`` (inductor) of the packed rows, which the trainer hands in
  (``layers.packed_positions``); its compilation time is reported apart, not in the rate.
- ``compile+buckets``: the same with length buckets.
- ``bf16``: bf16 autocast with fp32 master weights (``--precision bf16``); skipped, saying
  so, where the CPU has no bf16 matrix instructions and would emulate them.
- ``compile+bf16``: both.
- ``--baseline-src DIR``: the same model and batches run by an older camn source tree (for
  instance ``git worktree add /tmp/old COMMIT`` then ``--baseline-src /tmp/old/src``), with
  that tree's default Adam, as ``baseline``.

    python benchmarks/speed_levers.py --models dmin,camn,din --steps 40 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LEVERS = (
    "default", "adam-loop", "dense-rows", "buckets", "dense+buckets", "compile", "compile+buckets",
    "bf16", "compile+bf16",
)
DEFAULT_STORE = Path(__file__).resolve().parents[1] / "stores" / "beauty-sliding"


def measure(args: argparse.Namespace) -> dict:
    """One (model, lever) in this process: samples/s over ``args.steps`` timed steps."""
    import itertools

    import torch

    from camn.data.store import PreparedStore
    from camn.models.base import FeatureSpec
    from camn.models.registry import build_model
    from camn.train import loop

    torch.set_num_threads(args.threads)
    lever = args.lever
    if lever == "adam-loop":
        loop.fused = lambda device: {}
    if lever.startswith("dense"):
        torch.compiler.is_compiling = lambda: True
    store = PreparedStore(args.store)
    torch.manual_seed(0)
    model = build_model(args.model, FeatureSpec.from_schema(store.schema))
    device = torch.device("cpu")
    precision = "bf16" if "bf16" in lever else "fp32"
    config = loop.TrainConfig(model=args.model, batch_size=args.batch_size, progress=False,
                              precision=precision)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, **loop.fused(device))
    module = torch.compile(model, dynamic=True) if lever.startswith("compile") else model
    data = loop.training_data(store, device)
    batches = data.batches(
        args.batch_size, shuffle=True, seed=1, epoch=1, length_buckets="buckets" in lever,
        history_negatives=model.needs_history_negatives,
        packed_rows=model.packs_rows and not lever.startswith("dense"),
    )
    start = time.perf_counter()
    loop.run_epoch(module, optimizer, itertools.islice(batches, args.warmup), args.warmup,
                   config, device, "warm-up")
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, seen = loop.run_epoch(module, optimizer, itertools.islice(batches, args.steps),
                             args.steps, config, device, lever)
    seconds = time.perf_counter() - start
    return {"model": args.model, "lever": lever, "samples_per_s": seen / seconds,
            "warmup_seconds": warmup_seconds}


def measure_baseline(args: argparse.Namespace) -> dict:
    """The same steps with an older source tree's model and trainer loop, default Adam."""
    import itertools

    import torch

    from camn.data.store import PreparedStore
    from camn.models.base import FeatureSpec
    from camn.models.registry import build_model
    from camn.train import loop

    torch.set_num_threads(args.threads)
    store = PreparedStore(args.store)
    torch.manual_seed(0)
    model = build_model(args.model, FeatureSpec.from_schema(store.schema))
    device = torch.device("cpu")
    config = loop.TrainConfig(model=args.model, batch_size=args.batch_size, progress=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    data = loop.training_data(store, device)
    batches = data.batches(args.batch_size, shuffle=True, seed=1, epoch=1,
                           history_negatives=model.needs_history_negatives)
    loop.run_epoch(model, optimizer, itertools.islice(batches, args.warmup), args.warmup,
                   config, device, "warm-up")
    start = time.perf_counter()
    _, seen = loop.run_epoch(model, optimizer, itertools.islice(batches, args.steps),
                             args.steps, config, device, "baseline")
    return {"model": args.model, "lever": "baseline",
            "samples_per_s": seen / (time.perf_counter() - start)}


def run_one(args: argparse.Namespace, model: str, lever: str) -> dict:
    command = [sys.executable, __file__, "--worker", "--model", model, "--lever", lever,
               "--store", str(args.store), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--batch-size", str(args.batch_size), "--threads",
               str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if lever == "baseline":
        env["PYTHONPATH"] = args.baseline_src
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{model} {lever} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE,
                        help="a prepared store (default: stores/beauty-sliding)")
    parser.add_argument("--models", default="dmin,camn,din")
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--baseline-src", help="an older camn src/ tree to time as 'baseline'")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the clock starts")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--lever", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = measure_baseline(args) if args.lever == "baseline" else measure(args)
        print(json.dumps(result))
        return 0
    if not (args.store / "schema.json").is_file():
        raise SystemExit(f"{args.store} is not a prepared store: camn prepare amazon ... first")
    levers = args.levers.split(",") + (["baseline"] if args.baseline_src else [])
    import torch  # here, not at the top: a --baseline-src worker imports an older camn

    from camn.data.raw import DataError
    from camn.train.precision import check_precision

    try:
        check_precision("bf16", torch.device("cpu"))
    except DataError as refusal:  # the trainer's own reason, where bf16 would be emulated
        skipped = [lever for lever in levers if "bf16" in lever]
        if skipped:
            print(f"skipped {', '.join(skipped)}: {refusal}", flush=True)
        levers = [lever for lever in levers if "bf16" not in lever]
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for model in args.models.split(","):
            for lever in levers:
                result = run_one(args, model, lever)
                runs.setdefault((model, lever), []).append(result)
                print(f"{model:<8} {lever:<16} {result['samples_per_s']:>9,.0f} samples/s",
                      flush=True)
    summary: dict[str, dict[str, float]] = {}
    for (model, lever), results in runs.items():
        summary.setdefault(model, {})[lever] = round(
            statistics.median(r["samples_per_s"] for r in results))
    print(f"\nmedians over {args.repeats} repeats, {args.steps} steps of batch "
          f"{args.batch_size}, {args.threads} threads; x default in brackets")
    for model, rates in summary.items():
        base = rates.get("default")
        print(f"{model:<8} " + "  ".join(
            f"{lever} {rate:,}" + (f" ({rate / base:.2f}x)" if base else "")
            for lever, rate in rates.items()))
    compile_seconds = {f"{m} {lever}": statistics.median(r["warmup_seconds"] for r in results)
                       for (m, lever), results in runs.items() if lever.startswith("compile")}
    print(json.dumps({"threads": args.threads, "batch_size": args.batch_size,
                      "steps": args.steps, "samples_per_s": summary,
                      "compile_warmup_seconds": compile_seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
