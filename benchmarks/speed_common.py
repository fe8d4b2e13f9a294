"""What `throughput.py` and its FuxiCTR worker share: the measurement options, precision,
FLOP counting, peak memory and the machine's GEMM peak.

torch and the standard library only (no camn, no FuxiCTR), so that both interpreters, camn's
and FuxiCTR's, import it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

PRECISIONS = ("fp32", "bf16")
GEMM_REPEATS = 5
EMULATED_BF16_GEMM_SIZE = 512  # emulated bf16 runs at ~0.3 GFLOP/s: 2048^3 would take minutes


def add_measurement_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every measurement takes, the same in camn's and FuxiCTR's interpreter."""
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="time only the first N training steps, and inference on as many "
                             "samples (default: one full epoch, one full pass)")
    parser.add_argument("--warmup", type=positive_int, default=3,
                        help="steps run before the clock starts (the first one is FLOP-counted)")
    parser.add_argument("--batch-size", type=positive_int, default=2048)
    parser.add_argument("--eval-batch-size", type=positive_int, default=8192)
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: autocast on the device, fp32 master weights")
    parser.add_argument("--seed", type=int, default=0)


def forwarded(args: argparse.Namespace) -> list[str]:
    """``args``' measurement options as command-line items, to hand to a worker process."""
    items = ["--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
             "--eval-batch-size", str(args.eval_batch_size), "--threads", str(args.threads),
             "--device", args.device, "--precision", args.precision, "--seed", str(args.seed)]
    return items + (["--steps", str(args.steps)] if args.steps is not None else [])


def timed_batches(available: int, args: argparse.Namespace, inference: bool = False) -> int:
    """How many of ``available`` batches a measurement times: all, or ``--steps`` training
    batches, or inference batches holding as many samples (at least one)."""
    if args.steps is None:
        return available
    wanted = -(-args.steps * args.batch_size // args.eval_batch_size) if inference else args.steps
    return min(available, wanted)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def worker_environment(threads: int) -> dict[str, str]:
    """The environment of a worker process: its OpenMP/MKL pools sized before torch starts."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision`` "bf16", a no-op context for "fp32" (as
    ``camn.train.precision.autocast``, which FuxiCTR's interpreter cannot import)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _cpu_sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args,
                       out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's FLOP table covers the CUDA attention kernels only; the CPU ones get the same formulas
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def count_flops(work: Callable[[], object]) -> int:
    """FLOPs of the matrix products (mm, bmm, addmm, attention, ...) that ``work()`` runs,
    backward included when it calls ``backward``; elementwise work is not counted."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        work()
    return int(counter.get_total_flops())


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's resident-set high-water mark in MiB (Linux reports ru_maxrss in KiB) and,
    on CUDA, the most device memory torch has held allocated."""
    peaks = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peaks["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peaks


def gemm_gflops(dtype: torch.dtype, device: torch.device, size: int,
                repeats: int = GEMM_REPEATS) -> float:
    """GFLOP/s of a size x size matrix product in ``dtype``: the best of ``repeats`` after one
    warm-up product (2 size^3 FLOPs each)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


def emit(result: dict) -> None:
    """A worker's answer: one JSON line on stdout, the last thing it prints."""
    print(json.dumps(result), flush=True)
