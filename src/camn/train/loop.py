"""The training loop: one seed (:func:`train_one`) and several seeds (:func:`train_seeds`).

The objective is BCE on the click logits plus the model's weighted auxiliary loss (Eq. 8-9 for
CAMN: L = BCE + alpha L_d), minimised with Adam (lr 0.002, batch 2048: paper Sec. 3.2), with
the optional regularisers of :mod:`camn.train.objective` (weight decay, embedding L2, gradient
clipping; all off by default). After every epoch the model is scored on the validation split;
the best state by the monitored score (validation AUC by default) is kept and restored for
the test scores, and training stops after ``patience`` epochs without improvement (early
stopping).

A seed with a folder is checkpointed after every epoch (:mod:`camn.train.checkpoints`), and
its epochs are recorded and reported through hooks (:mod:`camn.train.epoch_log`); a run of
several seeds is staged beside its folder so that ``resume`` can continue it after an
interruption (:mod:`camn.train.resume`).

Speed: a split whose sample references and clicks fit in ``RESIDENT_LIMIT_BYTES`` lives as
tensors on the training device and each batch is gathered there (no per-batch host work
besides the shuffle order); larger splits stream from the memory-mapped store. Both give the
same batches as :meth:`PreparedStore.batches` for the same (seed, epoch, rank, world_size).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from camn.config import TrainConfig
from camn.data.raw import DataError
from camn.data.store import (
    PreparedStore,
    batch_slices,
    draw_items,
    epoch_order,
    history_items,
    item_rows,
    make_batch,
)
from camn.models.base import Batch, CTRModel, FeatureSpec
from camn.models.layers import PACKED_PAIRS, PACKED_ROWS, packed_positions
from camn.models.registry import build_model, resolved_options
from camn.outputs import RUN, SEED, check_output, remove_owned, swap_in
from camn.results import train_results
from camn.run_folder import RunFolder, SeedFolder
from camn.train import distributed
from camn.train.checkpoints import (
    Progress,
    load_training_state,
    remove_checkpoint,
    remove_training_state,
    save_checkpoint,
    save_training_state,
    saved_model_config,
    write_run_json,
)
from camn.train.epoch_log import LOGGER, EpochLogFile, Hook, LogLines, TensorBoardLog
from camn.train.metrics import TermAverages, evaluate
from camn.train.objective import embedding_penalty, improves, make_optimizer, monitored
from camn.train.precision import autocast, check_precision
from camn.train.resume import (
    RunSettings,
    StagingLock,
    check_same,
    discard,
    finished_seed,
    read_settings,
    resumable,
    staging_folder,
    start_staging,
)

RESIDENT_LIMIT_BYTES = 2 << 30  # splits of up to 2 GiB (references, clicks) live on the device


def load_bags(model: CTRModel, store: PreparedStore) -> None:
    """Fill the model's bag tables (``FeatureSpec.bag_slots``) from the store's
    (``arrays/bags.<attribute>.npy``); they are then saved with the weights."""
    for slot in model.spec.bag_slots:
        bags = np.asarray(store.array(f"bags.{store.attributes[slot]}"), dtype=np.int64)
        model.embedding.set_bags(slot, bags)


class Diverged(DataError):
    """Training diverged: the epoch's loss, or a parameter, is not a finite number."""


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (model initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ResidentSplit:
    """One split's sample references and the timelines they point into, as tensors on
    ``device``; a batch's histories are gathered from them (:func:`history_items`)."""

    FIELDS = ("row", "end", "length", "target_item", "label", "user")  # columns of samples

    def __init__(self, store: PreparedStore, split: str, device: torch.device) -> None:
        self.store, self.device = store, device
        rows = store.split_indices(split)
        ends, lengths = store.references(rows)
        self.host_lengths = lengths  # for length buckets and packed positions
        columns = [rows, ends, lengths,
                   *(store.gather(name, rows) for name in ("target_items", "labels", "users"))]
        # one (n, 6) int64 table: a batch's fields are one row gather
        self.samples = torch.from_numpy(np.stack(columns, axis=1).astype(np.int64)).to(device)
        self.side = {key: torch.from_numpy(values).to(device)  # context, numeric: if any
                     for key, values in store.side_fields(rows).items()}
        # copies: torch cannot wrap the read-only memory maps
        self.clicks = torch.from_numpy(np.array(store.array("clicks"))).to(device)
        self.item_attributes = torch.from_numpy(store.wide_item_table).to(device)  # (V, k)
        self.slots = torch.arange(store.max_len, device=device)

    def __len__(self) -> int:
        return len(self.samples)

    @classmethod
    def size_bytes(cls, store: PreparedStore, split: str) -> int:
        """Bytes on the device: the per-sample table, the clicks and the item table."""
        return (len(store.split_indices(split)) * 8 * len(cls.FIELDS)
                + store.array("clicks").nbytes + 2 * store.array("item_attributes").nbytes)

    def gather(self, positions: torch.Tensor | slice, length: int | None = None) -> Batch:
        """The batch of the given split positions (the store's batch, same keys and dtypes),
        histories cut to their first ``length`` positions when given."""
        if isinstance(positions, torch.Tensor):
            picked = self.samples.index_select(0, positions)
        else:
            picked = self.samples[positions]
        row, end, lengths, target, label, user = picked.T
        items = history_items(self.clicks, end, lengths, self.slots[:length])
        batch = make_batch(row, item_rows(self.item_attributes, items), lengths,
                           item_rows(self.item_attributes, target), label, user)
        for key, values in self.side.items():
            batch[key] = (values.index_select(0, positions)
                          if isinstance(positions, torch.Tensor) else values[positions])
        return batch

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
        packed_rows: bool = False,
    ) -> Iterator[Batch]:
        """The store's ``batches`` from the device copy; ``packed_rows`` adds the batch's
        ``layers.packed_positions``, found from the host's lengths: no device synchronisation."""
        rng = np.random.default_rng([seed, epoch])
        order = epoch_order(len(self), shuffle, rng, rank, world_size)
        host_lengths = self.host_lengths[order]
        positions = torch.from_numpy(order).to(self.device)
        for chosen, length in batch_slices(
            len(order), batch_size, rng, host_lengths if length_buckets else None
        ):
            index = chosen  # a slice, or split positions on the host
            if not isinstance(chosen, slice):
                index = torch.from_numpy(chosen).to(self.device)
            batch = self.gather(positions[index], length)
            if history_negatives:
                batch["history_negative"] = draw_items(rng, self.item_attributes, batch["mask"])
            if packed_rows:
                found = positions_of_lengths(host_lengths[chosen], batch["mask"].shape[1])
                batch |= {key: value.to(self.device, non_blocking=True)
                          for key, value in found.items()}
            yield batch


class StreamedSplit:
    """A split too large for the device: the store's batches, moved as they come."""

    def __init__(self, store: PreparedStore, split: str, device: torch.device) -> None:
        self.store, self.split, self.device = store, split, device

    def batches(self, batch_size: int, packed_rows: bool = False, **kwargs) -> Iterator[Batch]:
        for batch in self.store.batches(self.split, batch_size, **kwargs):
            if packed_rows:  # found on the host, before the move
                batch |= packed_positions(batch["mask"])
            yield {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}


def positions_of_lengths(lengths: np.ndarray, width: int) -> dict[str, torch.Tensor]:
    """``layers.packed_positions`` of a batch whose row b holds ``lengths[b]`` real items
    (left-aligned) of ``width`` positions, computed on the host from the lengths alone."""
    counts = np.asarray(lengths, dtype=np.int64)
    sample = np.repeat(np.arange(len(counts)), counts)  # (N,)
    position = np.arange(len(sample)) - (np.cumsum(counts) - counts)[sample]
    return {
        PACKED_ROWS: torch.from_numpy(sample * width + position),
        PACKED_PAIRS: torch.from_numpy(np.flatnonzero(position < counts[sample] - 1)),
    }


def training_data(
    store: PreparedStore, device: torch.device
) -> ResidentSplit | StreamedSplit:
    if not store.streams_only and ResidentSplit.size_bytes(store, "train") <= RESIDENT_LIMIT_BYTES:
        return ResidentSplit(store, "train", device)
    return StreamedSplit(store, "train", device)


def unwrap(module: torch.nn.Module) -> CTRModel:
    """The model inside ``torch.compile`` and DistributedDataParallel wrappers."""
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module)


def run_epoch(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    total_batches: int,
    config: TrainConfig,
    device: torch.device,
    description: str,
    terms: TermAverages | None = None,
) -> tuple[torch.Tensor, int]:
    """One pass of Adam steps; returns the summed loss (a device scalar) and the sample count.

    The loss is BCE plus the model's weighted extra losses plus ``config.embedding_l2`` times
    :func:`~camn.train.objective.embedding_penalty`; the gradient is clipped to
    ``config.clip_grad`` where set. ``terms`` collects the model's ``aux_terms``.
    """
    module.train()
    model = unwrap(module)
    total = torch.zeros((), device=device)
    seen = 0
    bar = tqdm(
        batches, total=total_batches, desc=description, leave=False, unit="batch",
        disable=None if config.progress else True,
    )
    for step, batch in enumerate(bar):
        with autocast(config.precision, device):
            output = module(batch, extra_losses=True)
        loss = F.binary_cross_entropy_with_logits(output.logits.float(), batch["label"])
        loss = loss + output.aux_loss.float()
        if config.embedding_l2:
            loss = loss + config.embedding_l2 * embedding_penalty(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()
        size = len(batch["label"])
        total += loss.detach() * size
        seen += size
        if terms is not None:
            terms.add(output.aux_terms, size)
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


def own_hooks(config: TrainConfig, out_dir: Path | None) -> list[Hook]:
    """The trainer's hooks on the main process: log lines, and with a seed folder its
    epoch log and, where asked for, TensorBoard scalars."""
    hooks: list[Hook] = [LogLines(config.monitor)]
    if config.tensorboard:
        if out_dir is None:
            raise ValueError("tensorboard = true needs a run folder to write to (out_dir)")
        hooks.append(TensorBoardLog(SeedFolder(out_dir).tensorboard))
    if out_dir is not None:
        hooks.append(EpochLogFile(SeedFolder(out_dir).epoch_log))
    return hooks


def stopped(progress: Progress, config: TrainConfig) -> bool:
    """Whether training is over: every epoch run, or ``patience`` epochs without a better
    monitored score (the rule holds for a resumed seed too)."""
    return (progress.epoch >= config.epochs
            or progress.epoch - progress.best_epoch >= config.patience)


def starting_point(
    out_dir: Path | None,
    resume: bool,
    writes: bool,
    model: CTRModel,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> tuple[Progress, dict[str, torch.Tensor]]:
    """(progress, best state) a seed starts from: its newest checkpoint, loaded into
    ``model``, ``optimizer`` and the generators, when resuming and ``out_dir`` has one; else
    epoch 0 with the initial weights. Where it ``writes``, the checkpoint folders it will
    not continue from (unfinished ones, an older run's) are deleted."""
    restored = None
    if resume and out_dir is not None:
        restored = load_training_state(out_dir, model, optimizer, device)
    progress, best_state = restored or (Progress(), state_copy(model))
    if writes:
        out_dir.mkdir(parents=True, exist_ok=True)
        folder = SeedFolder(out_dir)
        for leftover in folder.checkpoint_folders():
            if restored is None or leftover != folder.checkpoint(progress.epoch):
                remove_checkpoint(leftover)
    return progress, best_state


def train_one(
    store: PreparedStore,
    config: TrainConfig,
    seed: int,
    out_dir: Path | None = None,
    *,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
    score_test: bool = True,
) -> dict:
    """Train one seed with early stopping on the monitored validation score; score the best
    state on test (``score_test=False``: not at all, the test metrics are NaN, for a choice
    that must see validation only).

    Returns test_auc, test_logloss, test_gauc, the best epoch's valid_auc, valid_logloss and
    valid_gauc, valid_score (its monitored score), best_epoch, epochs (run), train_seconds
    (time in training passes), fit_seconds (with validation), samples_per_second (training
    samples of all processes / train_seconds), the per-epoch history
    (:mod:`camn.train.epoch_log`), and routing_recovery where the store has planted drivers and
    the model routes.

    With ``out_dir`` a checkpoint is written there after every epoch
    (:func:`~camn.train.checkpoints.save_training_state`), with ``history.jsonl``; at the end
    the best state (``model.safetensors``, ``config.json``) and ``metrics.json``, and the
    checkpoint is deleted. ``resume``: continue from the newest checkpoint in ``out_dir``
    (from scratch where there is none); the model, optimizer and generator states are
    restored, so the seed ends as an uninterrupted run would. ``hooks`` are called on the main
    process after the trainer's own (:class:`~camn.train.epoch_log.Hook`).

    Under torchrun every rank reads a checkpoint to resume, but only rank 0 scores, writes
    and calls the hooks; the other ranks return an empty dict. A damaged store, or one whose
    splits would train or score nothing, raises a DataError before any work
    (:meth:`PreparedStore.check_trainable`, once per store object).
    """
    store.check_trainable()
    context = distributed.current()
    device = distributed.resolve_device(config.device)
    check_precision(config.precision, device)
    out_dir = None if out_dir is None else Path(out_dir)
    writes = context.is_main and out_dir is not None
    hooks = [*own_hooks(config, out_dir if writes else None), *hooks] if context.is_main else []
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    seed_everything(seed)
    spec = FeatureSpec.from_schema(store.schema)
    options = resolved_options(config.model, **config.options)
    model: CTRModel = build_model(config.model, spec, **options).to(device)
    load_bags(model, store)
    data = training_data(store, device)
    batch_options = {
        "shuffle": True, "seed": seed, "history_negatives": model.needs_history_negatives,
        "rank": context.rank, "world_size": context.world_size,
        "length_buckets": config.length_buckets, "packed_rows": model.packs_rows,
    }
    module: torch.nn.Module = model
    if context.enabled:
        probe = next(data.batches(config.batch_size, **batch_options))
        module = distributed.wrap(model, distributed.has_unused_parameters(model, probe))
    if config.compile:  # packed rows arrive with the batches: one graph, no data-dependent shape
        module = torch.compile(module, dynamic=True)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, fused(device))
    progress, best_state = starting_point(out_dir, resume, writes, model, optimizer, device)
    fit = Fit(config, seed, store, context, device, model, module, optimizer, data,
              batch_options, out_dir if writes else None, hooks)
    try:
        for hook in hooks:
            hook.start(seed, list(progress.history))
        model.load_state_dict(fit.run(progress, best_state))
        if not context.is_main:
            return {}
        metrics = test_metrics(model, store, config, seed, progress, device, score_test)
        if writes:
            save_checkpoint(out_dir, model, saved_model_config(store, config, seed, spec, options))
            write_run_json(SeedFolder(out_dir).metrics, metrics)
            remove_training_state(out_dir)
        for hook in hooks:
            hook.end(seed, metrics)
        return metrics
    except Diverged:
        if writes:  # its checkpoints would only diverge again
            remove_owned(out_dir, SEED)
        raise
    finally:
        for hook in hooks:
            hook.close()


@dataclass
class Fit:
    """One seed's epochs: train, validate, keep the best state, checkpoint, call the hooks."""

    config: TrainConfig
    seed: int
    store: PreparedStore
    context: distributed.Context
    device: torch.device
    model: CTRModel
    module: torch.nn.Module  # the model as trained: under DDP and torch.compile where asked
    optimizer: torch.optim.Optimizer
    data: ResidentSplit | StreamedSplit
    batch_options: dict
    out_dir: Path | None  # where checkpoints go (rank 0 with a seed folder), else None
    hooks: Sequence[Hook]

    def run(self, progress: Progress, best_state: dict[str, torch.Tensor]) -> dict:
        """Epochs from ``progress.epoch + 1`` until :func:`stopped`, ``progress`` updated in
        place; returns the best state."""
        config = self.config
        steps = self.store.num_batches("train", config.batch_size, self.context.world_size)
        while not stopped(progress, config):
            epoch, start = progress.epoch + 1, time.perf_counter()
            terms = TermAverages()
            batches = self.data.batches(config.batch_size, epoch=epoch, **self.batch_options)
            total, seen = run_epoch(self.module, self.optimizer, batches, steps, config,
                                    self.device, f"seed {self.seed} epoch {epoch}", terms)
            pair = torch.stack([total, total.new_tensor(seen)])
            total = distributed.sum_over_ranks(pair, self.context)
            loss = float(total[0] / total[1])  # syncs the device: the epoch's work is done
            self.check_finite(loss, epoch)
            seconds = time.perf_counter() - start
            record = {"epoch": epoch, "loss": loss, "terms": terms.averages(),
                      **self.validate(), "seconds": seconds,
                      "samples_per_second": int(total[1]) / seconds}
            progress.epoch, progress.samples = epoch, progress.samples + int(total[1])
            progress.train_seconds += seconds
            progress.fit_seconds += time.perf_counter() - start
            progress.history.append(record)
            if improves(record["score"], progress.best_score):
                progress.best_epoch, progress.best_score = epoch, record["score"]
                best_state = state_copy(self.model)
            if self.out_dir is not None:
                save_training_state(self.out_dir, progress, self.model, best_state,
                                    self.optimizer)
            for hook in self.hooks:
                hook.epoch(self.seed, record)
        return best_state

    def check_finite(self, loss: float, epoch: int) -> None:
        """Stop with :class:`Diverged` when the epoch's loss or a parameter is NaN or
        infinite (every rank sees the same summed loss and weights)."""
        if math.isfinite(loss) and all(bool(torch.isfinite(p).all())
                                       for p in self.model.parameters()):
            return
        what = f"loss is {loss}" if not math.isfinite(loss) else "a weight is nan/inf"
        raise Diverged(
            f"training diverged ({what}) at epoch {epoch} of seed {self.seed} with lr "
            f"{self.config.lr:g}; nothing of it was kept: lower --lr, or set --clip-grad"
        )

    def validate(self) -> dict:
        """``valid_<key>`` of every validation metric (rank 0) and the monitored ``score``
        (every rank: it drives early stopping)."""
        metrics, score = {}, float("nan")
        if self.context.is_main:
            metrics = evaluate(self.model, self.store, "valid", self.config.eval_batch_size,
                               self.device)
            score = monitored(metrics, self.config.monitor)
        score = distributed.broadcast_float(score, self.context, self.device)
        return {**{f"valid_{key}": value for key, value in metrics.items()}, "score": score}


def test_metrics(
    model: CTRModel,
    store: PreparedStore,
    config: TrainConfig,
    seed: int,
    progress: Progress,
    device: torch.device,
    score_test: bool = True,
) -> dict:
    """The seed's result: the best state's test scores (NaN without ``score_test``), the best
    epoch's validation scores, time, throughput and history (see :func:`train_one`)."""
    test = (evaluate(model, store, "test", config.eval_batch_size, device) if score_test
            else dict.fromkeys(("auc", "logloss", "gauc"), float("nan")))
    best = progress.history[progress.best_epoch - 1] if progress.best_epoch else {}
    metrics = {
        "seed": seed,
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "test_gauc": test["gauc"],
        **{f"valid_{key}": best.get(f"valid_{key}", float("nan"))
           for key in ("auc", "logloss", "gauc")},
        "monitor": config.monitor,
        "valid_score": progress.best_score,
        "best_epoch": progress.best_epoch,
        "epochs": progress.epoch,
        "train_seconds": progress.train_seconds,
        "fit_seconds": progress.fit_seconds,
        "train_samples": progress.samples,
        "samples_per_second": progress.samples / progress.train_seconds,
        "world_size": distributed.current().world_size,
        "history": progress.history,
    }
    if "routing_recovery" in test:
        metrics["routing_recovery"] = test["routing_recovery"]
    if "terms" in test:
        metrics["test_terms"] = test["terms"]
    return metrics


def train_seeds(
    store: PreparedStore,
    config: TrainConfig,
    seeds: Sequence[int],
    out: Path,
    *,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
    score_test: bool = True,
) -> dict:
    """Train every seed into ``out/seed_<s>/`` and write ``out/results.json``; return it.

    The run is built in the hidden sibling ``.<out>.partial`` and swapped in whole at the end
    (:mod:`camn.train.resume`): an earlier run at ``out`` (a camn run folder, else refused
    before training) is replaced entirely, none of its seeds left behind, and until then stays
    as it was. An interrupted run leaves its staging folder; ``resume`` continues it with the
    same settings (finished seeds kept, the interrupted one from its last checkpoint), and a
    fresh call deletes it first. A run that fails with nothing to continue from, or whose
    training diverged, deletes its staging folder (:mod:`camn.train.resume`); while one
    process writes it, another is refused (:class:`~camn.train.resume.StagingLock`).
    ``hooks`` and ``score_test``: see :func:`train_one`. Under torchrun only rank 0 writes and
    gets the results; the other ranks get an empty dict.
    """
    context, out = distributed.current(), Path(out)
    staging = staging_folder(out)
    with StagingLock(out) as lock:
        if context.is_main:
            check_output(out, RUN, force=True)
            lock.acquire()  # refused while another process writes this run
            if resume:
                check_same(out, read_settings(out), RunSettings.of(store, config, seeds))
        try:
            if context.is_main and not resume:
                start_staging(staging, RunSettings.of(store, config, seeds))
                lock.acquire()  # the new folder
            runs = seed_results(store, config, seeds, staging, resume, hooks, score_test)
        except Diverged:
            if context.is_main:
                discard(staging)
            raise
        except Exception:  # Ctrl-C aside: a stopped run is continued with --resume
            if context.is_main and not resumable(staging):
                discard(staging)
            raise
        if not context.is_main:
            return {}
        results = train_results(store, config, runs)
        write_run_json(RunFolder(staging).results, results)
        RunFolder(staging).settings.unlink()  # results.json has them: nothing left to resume
        swap_in(staging, out, RUN)
    return results


def seed_results(
    store: PreparedStore,
    config: TrainConfig,
    seeds: Sequence[int],
    staging: Path,
    resume: bool,
    hooks: Sequence[Hook],
    score_test: bool = True,
) -> list[dict]:
    """Each seed's metrics: a finished seed's kept when resuming, the others trained."""
    runs = []
    for seed in seeds:
        seed_dir = RunFolder(staging).seed(seed).root
        kept = finished_seed(seed_dir) if resume else None
        if kept is None:
            kept = train_one(store, config, seed, seed_dir, resume=resume, hooks=hooks,
                             score_test=score_test)
        elif distributed.current().is_main:
            LOGGER.info("seed %d: finished before the interruption, kept", seed)
        runs.append(kept)
    return runs
