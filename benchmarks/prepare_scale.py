"""``camn prepare`` at scale: a log shaped like Taobao's UserBehavior, prepared with ``sliding``.

The log is generated reproducibly (``--seed``) at ``--events`` rows, as Parquet with
UserBehavior's columns: ``user_id``, ``item_id``, ``category_id``, ``behavior_type`` (pv, cart,
fav, buy in UserBehavior's shares) and ``timestamp`` (Unix seconds over nine days). About
``--events-per-user`` (100) events a user, drawn from a geometric spread; item popularity is
Zipf-like (item rank r drawn with probability about 1 / r, as with log-uniform ranks), one item
for every 25 events (UserBehavior: 100 M events on 4 M items); each item has one category
(one for every 400 items) and each category a parent group (one for every 20 categories), the
items table ``item_id, category_id, category_group``: k = 3 attributes.

Then, each as its own process:

1. ``camn prepare table ... --protocol sliding``: wall time, peak memory of the process tree
   (the sum of the resident sets of the process and its children, sampled every 50 ms, and the
   kernel's high-water mark of the largest), the store's bytes, bytes a sample, and the bytes a
   sample the store of the previous layout would take (its (L, k) history, target, length, label,
   user and split per sample: ``4 L k + 4 k + 10``);
2. the batches alone (no model), one torch thread: ``PreparedStore.batches`` (memory-mapped,
   shuffled) and the trainer's device-resident split (``train.loop.ResidentSplit``), samples/s
   over ``--batch-steps`` batches of 2048 (best of 3 rounds), without and with the history
   negatives DMIN draws;
3. with ``--shards N``: the same log as a sharded store (``camn.data.shards``): the vocabulary
   pass (``--vocab-only``) and each of the N shards (``--vocab DIR --shard I/N``) as its own
   process, one after the other, each with its wall time and peak memory, and each shard's
   samples, users and bytes;
4. with ``--labelled``: the same log as labelled impressions (a cart or a buy is a click, a page
   view a shown and skipped item that enters the histories, split by time): wall time, peak
   memory, the store's bytes and bytes an impression;
5. with ``--train-steps N``: the training samples/s of DIN and DMIN for N steps, by
   ``benchmarks/throughput.py --threads 1``, on this store and, with ``--beside STORE``, on that
   store in the same run (Amazon Beauty ``sliding``).

    python benchmarks/prepare_scale.py --events 1e6 --work /tmp/scale
    python benchmarks/prepare_scale.py --events 1e7 --work /tmp/scale --shards 4 --threads 1
    python benchmarks/prepare_scale.py --events 1e7 --work /tmp/scale --train-steps 30 \\
        --beside stores/beauty-sliding
    python benchmarks/prepare_scale.py --events 1e8 --work /tmp/scale --batch-steps 0 --labelled

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

BEHAVIOURS = ("pv", "cart", "fav", "buy")
BEHAVIOUR_SHARES = (0.895, 0.055, 0.029, 0.021)  # UserBehavior's
START, DAYS = 1_511_539_200, 9  # 2017-11-25 00:00 UTC
EVENTS_PER_ITEM, ITEMS_PER_CATEGORY, CATEGORIES_PER_GROUP = 25, 400, 20
CHUNK_USERS = 200_000  # users generated at a time: the generator's memory stays bounded
HERE = Path(__file__).resolve().parent
SLIDING = ("--protocol", "sliding")
LABELLED = ("--label", "behavior_type IN ('cart', 'buy')",
            "--history-where", "behavior_type = 'pv'")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=float, required=True, help="log rows, e.g. 1e7")
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for the log, its store and the measurements")
    parser.add_argument("--events-per-user", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-steps", type=int, default=100,
                        help="batches timed without a model (best of 3 rounds; 0: none)")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="training steps of DIN and DMIN timed (0: none)")
    parser.add_argument("--beside", type=Path, default=None,
                        help="another store whose training samples/s to measure in the same run")
    parser.add_argument("--keep", action="store_true", help="keep the store after measuring")
    parser.add_argument("--shards", type=int, default=0,
                        help="also prepare the log as a sharded store of this many shards "
                        "(the vocabulary pass, then each shard as its own process) and "
                        "measure each step (0: not)")
    parser.add_argument("--labelled", action="store_true",
                        help="also prepare the log as labelled impressions and measure it")
    parser.add_argument("--threads", type=int, default=0,
                        help="polars threads of each prepare (POLARS_MAX_THREADS; 0: all)")
    return parser.parse_args(argv)


def generate(events: int, per_user: float, seed: int, log: Path, items: Path) -> None:
    """Write the log and its items table (see the module docstring), users in ascending id,
    each user's events in random time order."""
    rng = np.random.default_rng(seed)
    num_items = max(100, events // EVENTS_PER_ITEM)
    num_categories = max(2, num_items // ITEMS_PER_CATEGORY)
    counts = rng.geometric(1 / per_user, size=int(events / per_user * 1.2))
    counts = counts[np.cumsum(counts) <= events]
    counts[-1] += events - counts.sum()  # exactly ``events`` rows
    item_of_rank = rng.permutation(num_items)  # rank r (popularity order) -> item id
    frames, first = [], 0
    for start in range(0, len(counts), CHUNK_USERS):
        chunk = counts[start : start + CHUNK_USERS]
        n = int(chunk.sum())
        ranks = np.exp(rng.random(n) * np.log(num_items)).astype(np.int64) - 1
        frames.append(pl.DataFrame({
            "user_id": np.repeat(np.arange(first, first + len(chunk)), chunk).astype(np.int32),
            "item_id": item_of_rank[np.minimum(ranks, num_items - 1)].astype(np.int32),
            "behavior_type": pl.Series(rng.choice(len(BEHAVIOURS), n, p=BEHAVIOUR_SHARES)
                                       .astype(np.uint32)),
            "timestamp": (START + rng.integers(0, DAYS * 86_400, n)).astype(np.int64),
        }))
        first += len(chunk)
    category = rng.integers(0, num_categories, num_items).astype(np.int32)
    frame = pl.concat(frames).with_columns(
        category_id=pl.col("item_id").map_batches(lambda ids: pl.Series(category[ids.to_numpy()])),
        behavior_type=pl.col("behavior_type").replace_strict(
            list(range(len(BEHAVIOURS))), list(BEHAVIOURS), return_dtype=pl.String),
    ).select("user_id", "item_id", "category_id", "behavior_type", "timestamp")
    frame.write_parquet(log)
    pl.DataFrame({
        "item_id": np.arange(num_items, dtype=np.int32), "category_id": category,
        "category_group": category // CATEGORIES_PER_GROUP,
    }).write_parquet(items)


def tree_rss(pid: int) -> int:
    """Bytes resident in process ``pid`` and all its descendants now (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines()
                          if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue  # the process ended meanwhile
    return total


def run_measured(command: list[str]) -> dict:
    """Run ``command``; its wall time, the process tree's peak resident bytes (sampled every
    50 ms), the high-water mark of its largest process (the kernel's), and its output."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output}")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"seconds": wall, "peak_tree_bytes": peak[0], "largest_process_peak_bytes": largest,
            "output": output}


def prepare(log: Path, items: Path, store: Path, options: tuple[str, ...] = SLIDING) -> dict:
    camn = Path(sys.executable).with_name("camn")
    command = [str(camn), "prepare", "table", "--interactions", str(log), "--items", str(items),
               "--user-col", "user_id", "--item-col", "item_id", "--time-col", "timestamp",
               "--attributes", "category_id,category_group", "--out", str(store), "--force",
               *options]
    measured = run_measured(command)
    return {"command": " ".join(command[1:]), **measured}


def prepare_sharded(log: Path, items: Path, big: Path, count: int) -> dict:
    """The vocabulary pass, then each of ``count`` shards, one process each (as N machines
    would run them), each measured; the shards' sizes."""
    from camn.data.shards import ShardedStore

    steps = {"vocabulary_pass": prepare(log, items, big, (*SLIDING, "--vocab-only"))}
    for index in range(count):
        steps[f"shard_{index}"] = prepare(
            log, items, big / f"shard-{index}",
            (*SLIDING, "--vocab", str(big), "--shard", f"{index}/{count}"))
    for step in steps.values():
        step.pop("output")
    sharded = ShardedStore(big)
    for index, shard in enumerate(sharded.shards):
        steps[f"shard_{index}"] |= {"samples": shard.num_samples,
                                    "users": shard.schema["timelines"]["users"],
                                    "store_bytes": shard.size_bytes()}
    return {"steps": steps, "samples": sharded.num_samples, "store_bytes": sharded.size_bytes()}


def prepare_labelled(log: Path, items: Path, store: Path, keep: bool) -> dict:
    """The log prepared as labelled impressions, measured: wall time, peak memory, bytes."""
    from camn.data.store import PreparedStore

    measured = prepare(log, items, store, LABELLED)
    measured.pop("output")
    prepared = PreparedStore(store)
    figures = {"impressions": prepared.num_samples, "store_bytes": prepared.size_bytes(),
               "bytes_per_impression": prepared.size_bytes() / prepared.num_samples}
    if not keep:
        subprocess.run(["rm", "-r", str(store)], check=True)
    return measured | figures


def store_figures(store: Path) -> dict:
    from camn.data.store import PreparedStore

    prepared = PreparedStore(store)
    size = prepared.size_bytes()
    samples = prepared.num_samples
    k, length = len(prepared.attributes), prepared.max_len
    previous = 4 * length * k + 4 * k + 10
    return {"samples": samples, "users": prepared.schema["num_users"],
            "items": prepared.schema["num_items"], "store_bytes": size,
            "bytes_per_sample": size / samples, "previous_layout_bytes_per_sample": previous,
            "fraction_of_previous": size / samples / previous}


def batch_speed(store: Path, steps: int, rounds: int = 3) -> dict:
    """Samples/s of the batches alone, one torch thread, best of ``rounds`` (see the module
    docstring), without and with the history negatives; the resident split only where the
    trainer would hold it (``RESIDENT_LIMIT_BYTES``; a larger one streams)."""
    import torch

    from camn.data.store import PreparedStore
    from camn.train.loop import RESIDENT_LIMIT_BYTES, ResidentSplit

    torch.set_num_threads(1)
    prepared = PreparedStore(store)
    kinds = ["streamed"]
    if ResidentSplit.size_bytes(prepared, "train") <= RESIDENT_LIMIT_BYTES:
        resident = ResidentSplit(prepared, "train", torch.device("cpu"))
        kinds.append("resident")
    speeds = {}
    for negatives in (False, True):
        for kind in kinds:
            best = 0.0
            for seed in range(rounds):
                options = {"shuffle": True, "seed": seed, "history_negatives": negatives}
                batches = (prepared.batches("train", 2048, **options) if kind == "streamed"
                           else resident.batches(2048, **options))
                next(batches)  # the epoch's set-up and the first batch, untimed
                started, seen = time.perf_counter(), 0
                for _, batch in zip(range(steps), batches, strict=False):
                    seen += len(batch["label"])
                best = max(best, seen / (time.perf_counter() - started))
            speeds[f"{kind}{'_negatives' if negatives else ''}_samples_per_s"] = best
    return speeds


def training_speed(stores: dict[str, Path], steps: int) -> dict:
    """DIN's and DMIN's training samples/s on each store, by throughput.py, one thread."""
    speeds = {}
    for name, store in stores.items():
        command = [sys.executable, str(HERE / "throughput.py"), "--store", str(store),
                   "--models", "din,dmin", "--steps", str(steps), "--threads", "1"]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        speeds[name] = json.loads(output.strip().splitlines()[-1])["samples_per_s"]
    return speeds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        os.environ["POLARS_MAX_THREADS"] = str(args.threads)  # inherited by every prepare
    events = int(args.events)
    args.work.mkdir(parents=True, exist_ok=True)
    log, items = args.work / f"log-{events}.parquet", args.work / f"items-{events}.parquet"
    if not log.is_file():
        started = time.perf_counter()
        generate(events, args.events_per_user, args.seed, log, items)
        print(f"generated {log} in {time.perf_counter() - started:.1f}s", flush=True)
    store = args.work / f"store-{events}"
    result = {"events": events, "log_bytes": log.stat().st_size}
    prepared = prepare(log, items, store)
    print(prepared.pop("output"), flush=True)
    result["prepare"] = prepared
    result |= store_figures(store)
    if args.batch_steps:
        result["batches"] = batch_speed(store, args.batch_steps)
    if args.labelled:
        result["labelled"] = prepare_labelled(log, items, args.work / f"labelled-{events}",
                                              args.keep)
    if args.shards:
        result["sharded"] = prepare_sharded(log, items, args.work / f"big-{events}", args.shards)
        if not args.keep:
            subprocess.run(["rm", "-r", str(args.work / f"big-{events}")], check=True)
    if args.train_steps:
        stores = {"scale": store} | ({"beside": args.beside} if args.beside else {})
        result["training_samples_per_s"] = training_speed(stores, args.train_steps)
    print(json.dumps(result))
    if not args.keep:
        subprocess.run(["rm", "-r", str(store)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
