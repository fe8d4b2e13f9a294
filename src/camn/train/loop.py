"""The training loop: one seed (:func:`train_one`) and several seeds (:func:`train_seeds`).

The objective is BCE on the click logits plus the model's weighted auxiliary loss (Eq. 8-9 for
CAMN: L = BCE + alpha L_d), minimised with Adam (lr 0.002, batch 2048: paper Sec. 3.2). After
every epoch the model is scored on the validation split; the best state by validation AUC is
kept in memory and restored for the test scores, and training stops after ``patience`` epochs
without improvement (early stopping, SPEC 1 "Training").

Speed: a split that fits in ``RESIDENT_LIMIT_BYTES`` is gathered once as tensors on the
training device and batches are slices of it (no per-batch host work besides the shuffle
order); larger splits stream from the memory-mapped store. Both give the same batches as
:meth:`PreparedStore.batches` for the same (seed, epoch, rank, world_size).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from camn.data.store import (
    BATCH_ARRAYS,
    PreparedStore,
    batch_slices,
    draw_items,
    epoch_order,
    make_batch,
)
from camn.models.base import Batch, CTRModel, FeatureSpec
from camn.models.registry import build_model, resolved_options
from camn.outputs import RUN, check_output, replacing
from camn.train import distributed
from camn.train.checkpoints import save_checkpoint
from camn.train.metrics import evaluate
from camn.train.precision import PRECISIONS, autocast, check_precision

RESIDENT_LIMIT_BYTES = 2 << 30  # splits up to 2 GiB of int32 arrays live on the device
METRICS = ("test_auc", "test_logloss", "test_gauc", "valid_auc")


@dataclass
class TrainConfig:
    """How to train one model; ``options`` are the model's constructor options.

    ``batch_size`` is per process: under torchrun with N processes a step sees N x batch_size.
    ``precision``: "fp32", or "bf16" autocast (:mod:`camn.train.precision`).
    ``length_buckets``: batches of similar history lengths, cut to their longest history
    (``store.batch_slices``). ``compile``: the training step's model under ``torch.compile``.
    """

    model: str
    options: dict = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 2048
    eval_batch_size: int = 8192
    lr: float = 0.002
    patience: int = 3
    device: str = "auto"
    precision: str = "fp32"
    length_buckets: bool = False
    compile: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (model initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ResidentSplit:
    """One split's arrays, gathered once as tensors on ``device``; batches are slices of them."""

    def __init__(self, store: PreparedStore, split: str, device: torch.device) -> None:
        self.store, self.device = store, device
        rows = store.split_indices(split)
        self.rows = torch.from_numpy(rows.astype(np.int64)).to(device)

        def load(name: str) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(store.array(name)[rows])).to(device)

        self.arrays = {name: load(name) for name in BATCH_ARRAYS}  # histories (n, L, k), ...
        self.host_lengths = np.asarray(store.array("lengths")[rows])  # for length buckets
        self.item_attributes = torch.from_numpy(np.array(store.array("item_attributes"))).to(
            device
        )  # (num_items + 2, k)

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def size_bytes(store: PreparedStore, split: str) -> int:
        n = len(store.split_indices(split))
        return sum(n * store.array(name)[:1].nbytes for name in BATCH_ARRAYS)

    def gather(self, positions: torch.Tensor, length: int | None = None) -> Batch:
        """The batch of the given split positions (same keys and dtypes as the store's),
        histories cut to their first ``length`` positions when given."""
        fields = [array[positions] for array in self.arrays.values()]
        fields[0] = fields[0][:, :length]  # histories
        return make_batch(self.rows[positions], *fields)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        history_negatives: bool = False,
        rank: int = 0,
        world_size: int = 1,
        length_buckets: bool = False,
    ) -> Iterator[Batch]:
        rng = np.random.default_rng([seed, epoch])
        order = epoch_order(len(self), shuffle, rng, rank, world_size)
        lengths = self.host_lengths[order] if length_buckets else None
        positions = torch.from_numpy(order).to(self.device)
        for chosen, length in batch_slices(len(order), batch_size, rng, lengths):
            if not isinstance(chosen, slice):
                chosen = torch.from_numpy(chosen).to(self.device)
            batch = self.gather(positions[chosen], length)
            if history_negatives:
                batch["history_negative"] = draw_items(rng, self.item_attributes, batch["mask"])
            yield batch


class StreamedSplit:
    """A split too large for the device: the store's batches, moved as they come."""

    def __init__(self, store: PreparedStore, split: str, device: torch.device) -> None:
        self.store, self.split, self.device = store, split, device

    def batches(self, batch_size: int, **kwargs) -> Iterator[Batch]:
        for batch in self.store.batches(self.split, batch_size, **kwargs):
            yield {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}


def training_data(
    store: PreparedStore, device: torch.device
) -> ResidentSplit | StreamedSplit:
    if ResidentSplit.size_bytes(store, "train") <= RESIDENT_LIMIT_BYTES:
        return ResidentSplit(store, "train", device)
    return StreamedSplit(store, "train", device)


def run_epoch(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    total_batches: int,
    config: TrainConfig,
    device: torch.device,
    description: str,
) -> tuple[torch.Tensor, int]:
    """One pass of Adam steps; returns the summed loss (a device scalar) and the sample count."""
    module.train()
    total = torch.zeros((), device=device)
    seen = 0
    bar = tqdm(
        batches, total=total_batches, desc=description, leave=False, unit="batch",
        disable=None if config.progress else True,
    )
    for step, batch in enumerate(bar):
        with autocast(config.precision, device):
            output = module(batch)
        loss = F.binary_cross_entropy_with_logits(output.logits.float(), batch["label"])
        loss = loss + output.aux_loss.float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        size = len(batch["label"])
        total += loss.detach() * size
        seen += size
        if not bar.disable and step % 10 == 0:  # .item() syncs CUDA: only now and then
            bar.set_postfix(loss=f"{total.item() / seen:.4f}")
    bar.close()
    return total, seen


def fused(device: torch.device) -> dict:
    """Adam's fused kernel (one pass over all parameters) where this torch has it for the
    device; the same update as the default loop, computed in fewer kernels."""
    return {"fused": True} if device.type in {"cpu", "cuda"} else {}


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def checkpoint_config(
    store: PreparedStore, config: TrainConfig, seed: int, spec: FeatureSpec, options: dict
) -> dict:
    return {
        "model": config.model,
        "options": options,
        "spec": spec.to_dict(),
        "train": config.to_dict(),
        "seed": seed,
        "data": str(store.root.resolve()),
        "world_size": distributed.current().world_size,
    }


def log(message: str) -> None:
    print(message, flush=True)


def train_one(
    store: PreparedStore, config: TrainConfig, seed: int, out_dir: Path | None = None
) -> dict:
    """Train one seed with early stopping on validation AUC; score the best state on test.

    Returns test_auc, test_logloss, test_gauc, valid_auc (best), best_epoch, epochs (run),
    train_seconds (time in training passes), fit_seconds (with validation), samples_per_second
    (training samples of all processes / train_seconds), the per-epoch history, and
    routing_recovery where the store has planted drivers and the model routes. Under torchrun
    only rank 0 scores and writes ``out_dir``; the other ranks return an empty dict.
    A damaged store, or one whose splits would train or score nothing, raises a DataError
    before any work (:meth:`PreparedStore.check_trainable`, once per store object).
    """
    store.check_trainable()
    context = distributed.current()
    device = distributed.resolve_device(config.device)
    check_precision(config.precision, device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    seed_everything(seed)
    spec = FeatureSpec.from_schema(store.schema)
    options = resolved_options(config.model, **config.options)
    model: CTRModel = build_model(config.model, spec, **options).to(device)
    data = training_data(store, device)
    batch_options = {
        "shuffle": True, "seed": seed, "history_negatives": model.needs_history_negatives,
        "rank": context.rank, "world_size": context.world_size,
        "length_buckets": config.length_buckets,
    }
    module: torch.nn.Module = model
    if context.enabled:
        probe = next(data.batches(config.batch_size, **batch_options))
        module = distributed.wrap(model, distributed.has_unused_parameters(model, probe))
    if config.compile:  # dense rows under compile (layers.Packing): no data-dependent shapes
        module = torch.compile(module, dynamic=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, **fused(device))
    steps = store.num_batches("train", config.batch_size, context.world_size)

    best_auc, best_epoch, best_state = float("-inf"), 0, state_copy(model)
    history: list[dict] = []
    train_seconds, samples, fit_start = 0.0, 0, time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        batches = data.batches(config.batch_size, epoch=epoch, **batch_options)
        total, seen = run_epoch(
            module, optimizer, batches, steps, config, device, f"seed {seed} epoch {epoch}"
        )
        total = distributed.sum_over_ranks(torch.stack([total, total.new_tensor(seen)]), context)
        loss = float(total[0] / total[1])  # syncs the device: the epoch's work is done
        seconds = time.perf_counter() - start
        train_seconds += seconds
        samples += int(total[1])
        valid_auc = float("nan")
        if context.is_main:
            valid_auc = evaluate(model, store, "valid", config.eval_batch_size, device)["auc"]
        valid_auc = distributed.broadcast_float(valid_auc, context, device)
        history.append({"epoch": epoch, "loss": loss, "valid_auc": valid_auc, "seconds": seconds})
        if context.is_main:
            log(f"seed {seed} epoch {epoch}: loss {loss:.4f}, valid AUC {valid_auc:.4f}, "
                f"{seconds:.1f}s ({int(total[1]) / seconds:,.0f} samples/s)")
        if valid_auc > best_auc:
            best_auc, best_epoch, best_state = valid_auc, epoch, state_copy(model)
        elif epoch - best_epoch >= config.patience:
            break
    fit_seconds = time.perf_counter() - fit_start
    model.load_state_dict(best_state)
    if not context.is_main:
        return {}

    test = evaluate(model, store, "test", config.eval_batch_size, device)
    metrics = {
        "seed": seed,
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "test_gauc": test["gauc"],
        "valid_auc": best_auc,
        "best_epoch": best_epoch,
        "epochs": len(history),
        "train_seconds": train_seconds,
        "fit_seconds": fit_seconds,
        "train_samples": samples,
        "samples_per_second": samples / train_seconds,
        "world_size": context.world_size,
        "history": history,
    }
    if "routing_recovery" in test:
        metrics["routing_recovery"] = test["routing_recovery"]
    if out_dir is not None:
        out_dir = Path(out_dir)
        save_checkpoint(out_dir, model, checkpoint_config(store, config, seed, spec, options))
        write_json(out_dir / "metrics.json", metrics)
    return metrics


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def spread(values: Sequence[float]) -> dict:
    """Mean, standard deviation (ddof=1; 0 for one value) and the values themselves."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "runs": [float(v) for v in array]}


def data_summary(store: PreparedStore) -> dict:
    schema = store.schema
    keys = ("protocol", "seed", "max_len", "attributes", "splits", "num_users", "num_items")
    return {"path": str(store.root.resolve()), **{key: schema[key] for key in keys}}


def summarise(store: PreparedStore, config: TrainConfig, runs: list[dict]) -> dict:
    """The results.json document of several seeds' metrics."""
    results: dict = {
        "model": config.model,
        "options": resolved_options(config.model, **config.options),
        "data": data_summary(store),
        "seeds": [run["seed"] for run in runs],
        **{name: spread([run[name] for run in runs]) for name in METRICS},
        "best_epoch": [run["best_epoch"] for run in runs],
        "samples_per_second": spread([run["samples_per_second"] for run in runs]),
        "config": config.to_dict(),
    }
    if all("routing_recovery" in run for run in runs):
        results["routing_recovery"] = {
            key: float(np.mean([run["routing_recovery"][key] for run in runs]))
            for key in runs[0]["routing_recovery"]
        }
    return results


def train_seeds(
    store: PreparedStore, config: TrainConfig, seeds: Sequence[int], out: Path
) -> dict:
    """Train every seed into ``out/seed_<s>/`` and write ``out/results.json``; return it.

    The run is written beside ``out`` and swapped in whole at the end: an earlier run there (a
    camn run folder, else refused before training) is replaced entirely, none of its seeds left
    behind, and an interrupted run leaves the earlier one as it was. Under torchrun only rank 0
    writes and gets the results; the other ranks get an empty dict.
    """
    if not distributed.current().is_main:
        for seed in seeds:
            train_one(store, config, seed)
        return {}
    check_output(out, RUN, force=True)
    with replacing(out, RUN) as work:
        runs = [train_one(store, config, seed, work / f"seed_{seed}") for seed in seeds]
        results = summarise(store, config, runs)
        write_json(work / "results.json", results)
    return results
