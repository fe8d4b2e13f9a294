"""What the trainer reports as a seed trains: hooks, the epoch log, log lines, TensorBoard.

:func:`camn.train.loop.train_one` calls every :class:`Hook` on the main process: ``start``
before its first epoch (with the records of the epochs a resumed seed already has), ``epoch``
after each epoch is scored and checkpointed, ``end`` with the seed's final metrics, and
``close`` always, on failure too. Its own hooks are :class:`LogLines` (the ``camn.train``
logger), :class:`EpochLogFile` (the epoch log, ``history.jsonl`` in the seed's folder) and,
where asked for, :class:`TensorBoardLog`; a caller adds its own through ``hooks``.

An epoch's record holds ``epoch``, ``loss`` (BCE plus the weighted extra losses and the
embedding penalty, averaged over the epoch's samples), ``terms`` (each of the model's
``aux_terms``, unweighted, averaged over the samples of the batches that reported it),
``valid_<key>`` for every key of the validation pass's metrics (``auc``, ``logloss``,
``gauc``, ``samples``, and where the model or store have them ``routing_recovery`` and
``terms``: the model's evaluation-time terms, e.g. CAMN's attention health per head),
``score`` (the monitored validation score, higher is better), ``seconds`` (the training
pass) and ``samples_per_second``. Under torchrun ``terms`` are rank 0's (its shard); the loss
is averaged over every rank.

Logging goes through the ``camn`` logger; a library caller sees nothing unless it configures
logging. :func:`console` shows the records on standard output for a block: what the CLI
does, at INFO (the per-epoch lines) or WARNING (silent).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from camn.data.raw import DataError

LOGGER = logging.getLogger("camn.train")


class Hook:
    """A trainer hook: override what you need (all are no-ops here)."""

    def start(self, seed: int, records: list[dict]) -> None:
        """Before the seed's first epoch of this process; ``records``: the records of the
        epochs done before (a resumed seed), else empty."""

    def epoch(self, seed: int, record: dict) -> None:
        """After an epoch is scored and its checkpoint written."""

    def end(self, seed: int, metrics: dict) -> None:
        """After the best state is scored on test (and the seed's files are written)."""

    def close(self) -> None:
        """Always, last: release what ``start`` opened."""


class LogLines(Hook):
    """One INFO line an epoch on the ``camn.train`` logger, and one when a seed resumes."""

    def __init__(self, monitor: str = "auc") -> None:
        self.monitor = monitor

    def start(self, seed: int, records: list[dict]) -> None:
        if records:
            LOGGER.info("seed %d: resumed after epoch %d", seed, records[-1]["epoch"])

    def epoch(self, seed: int, record: dict) -> None:
        valid = f"valid AUC {record['valid_auc']:.4f}"
        if self.monitor != "auc":
            valid += f", valid logloss {record['valid_logloss']:.4f}"
        LOGGER.info(
            "seed %d epoch %d: loss %.4f, %s, %.1fs (%s samples/s)", seed, record["epoch"],
            record["loss"], valid, record["seconds"], f"{record['samples_per_second']:,.0f}",
        )


class EpochLogFile(Hook):
    """The epoch log (``history.jsonl``): one JSON line an epoch, flushed to disk as each
    epoch ends. A resumed seed's file is rewritten to the checkpoint's records first, which
    drops the lines of epochs that ended after the last checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def start(self, seed: int, records: list[dict]) -> None:
        with self.path.open("w", encoding="utf-8") as handle:
            handle.writelines(json_line(record) for record in records)
            sync(handle)

    def epoch(self, seed: int, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json_line(record))
            sync(handle)


def json_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


def sync(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def read_epoch_log(path: Path) -> list[dict]:
    """The records of an epoch log (``history.jsonl``); a cut-off last line (no newline: the
    writer was killed) is dropped, a damaged complete line is a DataError naming it."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")[:-1]  # the part after the last newline is cut off (or empty)
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number} is not a JSON object (one epoch's record)")
        records.append(record)
    return records


def scalars(record: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) of every number in a record, nested keys and list positions joined by
    ``/`` (``valid_terms/attention_entropy/0``); the epoch itself is the step, not a scalar."""
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, tag + "/")
        elif isinstance(value, list):
            yield from scalars({str(i): v for i, v in enumerate(value)}, tag + "/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and tag != "epoch":
            yield tag, float(value)


def summary_writer_class() -> type:
    """TensorBoard's SummaryWriter; a DataError saying what to install where it is absent."""
    try:
        return importlib.import_module("torch.utils.tensorboard").SummaryWriter
    except ImportError:
        raise DataError(
            "tensorboard = true needs the tensorboard package, which is not installed "
            "(pip install tensorboard), or set tensorboard = false"
        ) from None


class TensorBoardLog(Hook):
    """Every number of each epoch's record as a TensorBoard scalar (step = epoch) under
    ``folder``. A resumed seed purges the events of epochs after its checkpoint."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.writer_class = summary_writer_class()  # fails before any training
        self.writer = None

    def start(self, seed: int, records: list[dict]) -> None:
        resumed = records[-1]["epoch"] + 1 if records else None
        self.writer = self.writer_class(log_dir=str(self.folder), purge_step=resumed)

    def epoch(self, seed: int, record: dict) -> None:
        for tag, value in scalars(record):
            if not math.isnan(value):
                self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _StandardOutput(logging.Handler):
    """Writes to whatever ``sys.stdout`` is when a record comes (pytest's capture too)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # logging's own rule: a handler never raises
            self.handleError(record)


@contextlib.contextmanager
def console(level: int = logging.INFO) -> Iterator[None]:
    """Show the ``camn`` logger's records of ``level`` and above on standard output, message
    only, for the block: INFO shows the trainer's per-epoch lines, WARNING silences them."""
    logger = logging.getLogger("camn")
    handler = _StandardOutput()
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
