"""Numeric precision of training and scoring: fp32, or bf16 autocast with fp32 master weights.

bf16 autocast runs the matrix products in bfloat16 while the weights, the optimiser state and
the loss stay in fp32 (``torch.autocast``). It pays where the hardware multiplies bf16
matrices natively: recent GPUs, and x86 CPUs with AVX512-BF16 or AMX. Elsewhere PyTorch
emulates bf16 products, about 100x slower than fp32 (measured on an AVX2-only AMD EPYC), so
camn refuses bf16 there instead of silently running slower.
"""

from __future__ import annotations

import contextlib

import torch

from camn.config import PRECISIONS
from camn.data.raw import DataError


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        return bool(torch.cpu._is_avx512_bf16_supported() or amx())
    return True


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision this device cannot run well, saying why."""
    if precision not in PRECISIONS:
        raise DataError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not native_bf16(device):
        what = "this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX)"
        if device.type != "cpu":
            what = f"{device} does not support bf16"
        raise DataError(
            f"--precision bf16: {what}, so PyTorch would emulate bf16 products, about 100x "
            "slower than fp32; use --precision fp32 (the default) on this machine"
        )


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's autocast context: bf16 products for "bf16", nothing for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
