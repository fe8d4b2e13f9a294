"""Data-parallel training under ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc_per_node N -m camn train ...`` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK set. :func:`session` joins them into a process group (NCCL on CUDA, Gloo on CPU);
each rank trains on a disjoint shard of every epoch's shuffled training rows with its own
``batch_size`` (the batch size is per process: the effective batch is N x batch_size), gradients
are averaged by DDP, validation and test scoring run on rank 0, and only rank 0 writes files.
Without those variables everything runs as one ordinary process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from camn.data.raw import DataError


class DeviceError(DataError, ValueError):
    """A device that is no torch device, or one this machine lacks."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Context:
    """The context of the initialised process group, or a single-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; under torchrun a bare ``cuda`` or ``auto``
    becomes ``cuda:LOCAL_RANK`` (one GPU a process). A :class:`DeviceError` for a name torch
    does not know or a CUDA device without CUDA."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise DeviceError(str(error)) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {requested!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextmanager
def session(device: torch.device) -> Iterator[Context]:
    """Join the torchrun process group for the duration of the block (no-op when not launched)."""
    if not launched():
        yield Context()
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield current()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def has_unused_parameters(model: nn.Module, batch: dict[str, torch.Tensor]) -> bool:
    """Whether one training step on ``batch`` leaves a parameter without a gradient.

    DDP must then be told (``find_unused_parameters``), which costs a graph traversal per step,
    so it is only switched on where needed. The probe leaves weights and buffers unchanged.
    """
    buffers = {key: value.clone() for key, value in model.state_dict().items()}
    model.train()
    output = model(batch, extra_losses=True)  # what a training step asks of it
    (output.logits.sum() + output.aux_loss).backward()
    unused = any(p.grad is None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(buffers)
    return unused


def wrap(model: nn.Module, find_unused_parameters: bool) -> DistributedDataParallel:
    """``model`` wrapped for data-parallel training (gradients averaged over the ranks)."""
    device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def broadcast_float(value: float, context: Context, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (e.g. the validation AUC that drives early stopping)."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def sum_over_ranks(value: torch.Tensor, context: Context) -> torch.Tensor:
    """Sum of ``value`` over all ranks (e.g. the epoch's summed loss and sample count)."""
    if context.enabled:
        value = value.clone()
        dist.all_reduce(value)
    return value
