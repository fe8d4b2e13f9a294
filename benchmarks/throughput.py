"""Training and inference throughput of camn's models on a real store, against the machine's
own GEMM peak and, optionally, FuxiCTR's DIN and DMIN in the same run.

Per model, each measurement in a fresh process (so that every peak-memory figure is its own):

- training samples/s: the trainer's own pieces (``training_data`` and ``run_epoch``, Adam as
  ``train_one`` builds it) over one whole epoch's steps, batches made as the trainer makes
  them (shuffled, history negatives drawn where the model needs them), after ``--warmup``
  steps of an earlier epoch; ``--steps N`` times only the first N steps (and inference on as
  many samples);
- inference samples/s: eval mode, no gradient, the training split's samples in store order in
  batches of ``--eval-batch-size``, read from the store and scored as camn's ``predict`` does
  (Beauty's valid and test splits are one such batch each, too few to time);
- peak memory: the process's resident-set high-water mark (and torch's largest CUDA allocation);
- FLOPs: the matrix products of one training step (forward and backward) and of one inference
  batch on a real batch (``torch.utils.flop_counter``; elementwise work is not counted), hence
  the achieved GFLOP/s and its fraction of the GEMM peak ("roofline") of the precision used;
- the GEMM peak: a 2048 x 2048 matrix product in fp32 and in bf16, best of 5, measured at the
  start and at the end of the run (the higher is kept). On a CPU without AVX512-BF16 or AMX,
  bf16 is emulated (about 100x slower than fp32): its peak is then measured on 512 x 512 and
  labelled so, and ``--precision bf16`` model rows are skipped unless ``--force-bf16``.

``--precision bf16`` is the trainer's: the forward pass autocast to bf16 on the device, weights
and optimiser state staying fp32 (``TrainConfig.precision``, ``camn.train.precision``).

The store defaults to Amazon Beauty ``sliding``: ``stores/beauty-sliding`` of this checkout,
else ``benchmarks/out/beauty-sliding``, which is prepared on first use with ``camn prepare
amazon`` from McAuley's 2014 5-core files under ``--data-root``.

FuxiCTR 2.3.10 (``--fuxictr PYTHON --fuxictr-zoo DIR``): its DIN and DMIN, each with its own
model code (DIR is the ``model_zoo`` folder of FuxiCTR's repository, read at run time) and its
own training step, run by ``fuxictr_throughput.py`` in FuxiCTR's interpreter on the same store
and alternating with camn's models: camn din, dmin, camn, FuxiCTR din, dmin, then again for
every repeat. Their settings are in that file's header. Figures are medians over ``--repeats``.

Output: a table, the camn / FuxiCTR ratios, then as the last line one JSON object.

    python benchmarks/throughput.py                      # din, dmin, camn: one full epoch each
    python benchmarks/throughput.py --steps 20 --repeats 3 --models din,dmin \\
        --fuxictr /tmp/fuxictr/bin/python --fuxictr-zoo /tmp/fuxictr_zoo/model_zoo
    python benchmarks/throughput.py --precision bf16 --device cuda --batch-size 8192

``--compile`` puts camn's training steps under ``torch.compile`` as ``camn train --compile``
does (the batches bring DMIN's and CAMN's packed rows, as the trainer's do, so the compiled graph
computes real history items only); compilation falls in the warm-up steps, untimed.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from speed_common import (
    EMULATED_BF16_GEMM_SIZE,
    add_measurement_arguments,
    count_flops,
    device_name,
    emit,
    forwarded,
    gemm_gflops,
    peak_memory,
    set_threads,
    synchronize,
    timed_batches,
    worker_environment,
)

from camn.config import TrainConfig, parse_options
from camn.data.raw import DataError
from camn.data.store import PreparedStore
from camn.models.base import Batch, CTRModel, FeatureSpec
from camn.models.registry import build_model, check_options, model_names, resolved_options
from camn.train.loop import fused, run_epoch, seed_everything, training_data
from camn.train.precision import autocast, native_bf16

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / "out" / "beauty-sliding"
PREPARED = (REPO / "stores" / "beauty-sliding", CACHE)
DATA_ROOT = REPO.parent / "shared" / "data"
BEAUTY_FILES = Path("amazon_beauty_5core") / "mcauley2014"
REVIEWS, META = "reviews_Beauty_5.json.gz", "meta_Beauty.json.gz"
FUXICTR_WORKER = HERE / "fuxictr_throughput.py"
FUXICTR_MODELS = ("din", "dmin")
KINDS = ("train", "infer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, default=None,
                        help="a store written by `camn prepare` (default: Beauty sliding)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT,
                        help=f"folder holding {BEAUTY_FILES}/{{{REVIEWS},{META}}}, read only "
                             "when the default store must be prepared")
    parser.add_argument("--models", default="din,dmin,camn", help="camn models, comma-separated")
    parser.add_argument("--option", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                        help="a model option, as `camn benchmark --option`: camn:q=2")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all models; medians")
    parser.add_argument("--force-bf16", action="store_true",
                        help="measure bf16 even where the CPU only emulates it")
    parser.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n GEMM peak")
    parser.add_argument("--fuxictr", metavar="PYTHON", default=None,
                        help="the interpreter of a venv holding fuxictr 2.3.10")
    parser.add_argument("--fuxictr-zoo", type=Path, metavar="DIR", default=None,
                        help="FuxiCTR's model_zoo folder (DIN/src/DIN.py, DMIN/src/DMIN.py)")
    parser.add_argument("--compile", action="store_true",
                        help="camn's training steps under torch.compile, as `camn train "
                             "--compile` (compilation happens in the warm-up, not timed)")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    add_measurement_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("repeats", "gemm_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if (args.fuxictr is None) != (args.fuxictr_zoo is None):
        parser.error("--fuxictr and --fuxictr-zoo go together")
    return args


# ---------------------------------------------------------------- measurements (worker side)


def trainer_config(name: str, args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(model=name, batch_size=args.batch_size, device=args.device,
                       eval_batch_size=args.eval_batch_size, precision=args.precision,
                       progress=False)


def train_steps(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[Batch], count: int,
    config: TrainConfig,
) -> tuple[torch.Tensor, int]:
    """Adam steps over ``batches``, the trainer's ``run_epoch``; (summed loss, samples)."""
    return run_epoch(model, optimizer, batches, count, config, torch.device(config.device),
                     "throughput")


def model_options(items: list[str], models: list[str]) -> dict[str, dict]:
    """``[MODEL:]KEY=VALUE`` items -> {model: {key: value}}, as ``camn benchmark --option``."""
    return parse_options(items, models)


def built(store: PreparedStore, name: str, options: dict, args: argparse.Namespace) -> CTRModel:
    seed_everything(args.seed)
    spec = FeatureSpec.from_schema(store.schema)
    return build_model(name, spec, **resolved_options(name, **options)).to(args.device)


def measure_training(
    store: PreparedStore, name: str, options: dict, args: argparse.Namespace
) -> dict:
    """Training samples/s of one model over one epoch's steps (capped at ``args.steps``); the
    first warm-up step, on a real batch, is FLOP-counted."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as train_one sets it
    model = built(store, name, options, args)
    config = trainer_config(name, args)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, **fused(device))  # train_one's
    data = training_data(store, device)

    def epoch(number: int) -> Iterator[Batch]:
        return data.batches(args.batch_size, shuffle=True, seed=args.seed, epoch=number,
                            history_negatives=model.needs_history_negatives,
                            packed_rows=model.packs_rows)  # as train_one asks

    warm = epoch(0)
    first = next(warm)
    flops = count_flops(lambda: train_steps(model, optimizer, iter([first]), 1, config))
    module = torch.compile(model, dynamic=True) if args.compile else model  # as train_one
    train_steps(module, optimizer, itertools.islice(warm, args.warmup - 1), args.warmup, config)
    synchronize(device)
    steps = timed_batches(store.num_batches("train", args.batch_size), args)
    start = time.perf_counter()
    total, seen = train_steps(module, optimizer, itertools.islice(epoch(1), steps), steps,
                              config)
    loss = float(total) / seen  # waits for the device: the steps are done
    seconds = time.perf_counter() - start
    return {"samples_per_s": seen / seconds, "steps": steps, "samples": seen,
            "seconds": seconds, "loss": loss, "flop_per_sample": flops / len(first["label"]),
            "trainer_step": "run_epoch", **peak_memory(device)}


@torch.no_grad()
def measure_inference(
    store: PreparedStore, name: str, options: dict, args: argparse.Namespace
) -> dict:
    """Inference samples/s of one model over the training split (or as many samples as
    ``args.steps`` training steps), batches streamed from the store and scored as
    ``camn.train.metrics.predict`` scores them."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    model = built(store, name, options, args).eval()

    def score(batch: Batch) -> torch.Tensor:
        inputs = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with autocast(args.precision, device):
            return model(inputs).logits.float().cpu()

    def scored(batches: Iterable[Batch]) -> int:
        return sum(len(score(batch)) for batch in batches)

    warm = store.batches("train", args.eval_batch_size)
    first = next(warm)
    flops = count_flops(lambda: score(first))
    scored(itertools.islice(warm, args.warmup - 1))
    steps = timed_batches(store.num_batches("train", args.eval_batch_size), args, inference=True)
    start = time.perf_counter()
    seen = scored(itertools.islice(store.batches("train", args.eval_batch_size), steps))
    seconds = time.perf_counter() - start  # score() copied the logits to the host: all done
    return {"samples_per_s": seen / seconds, "steps": steps, "samples": seen,
            "seconds": seconds, "flop_per_sample": flops / len(first["label"]),
            **peak_memory(device)}


def run_worker(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    store = PreparedStore(args.store)
    name = args.models
    options = model_options(args.option, [name]).get(name, {})
    measure = measure_training if args.worker == "train" else measure_inference
    emit({"model": name, "kind": args.worker, **measure(store, name, options, args)})
    return 0


# ---------------------------------------------------------------- the run (parent side)


def resolve_store(
    store: Path | None, data_root: Path, prepared: tuple[Path, ...] = PREPARED,
    cache: Path = CACHE, log: Callable[[str], None] = print,
) -> Path:
    """``store`` if given, else the first of ``prepared`` that holds a store, else Beauty
    ``sliding`` prepared into ``cache`` from the raw files under ``data_root``."""
    if store is not None:
        return store
    for candidate in prepared:
        if (candidate / "schema.json").is_file():
            return candidate
    raw = data_root / BEAUTY_FILES
    missing = [str(raw / name) for name in (REVIEWS, META) if not (raw / name).is_file()]
    if missing:
        raise DataError(
            f"no --store given, no prepared Beauty store in {', '.join(map(str, prepared))}, "
            f"and the raw files to prepare one are missing ({', '.join(missing)}): pass "
            "--store DIR (a `camn prepare` output) or --data-root DIR holding "
            f"{BEAUTY_FILES}/{REVIEWS} and {META}"
        )
    log(f"preparing Amazon Beauty sliding into {cache} (once) from {raw}")
    done = subprocess.run(
        [sys.executable, "-m", "camn", "prepare", "amazon", "--reviews", str(raw / REVIEWS),
         "--meta", str(raw / META), "--protocol", "sliding", "--out", str(cache)],
        stdout=sys.stderr,
    )
    if done.returncode != 0:
        raise DataError(f"`camn prepare amazon` into {cache} failed (exit {done.returncode}); "
                        "its message is above")
    return cache


def model_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in model_names()]
    if unknown or not names:
        raise DataError(f"--models {text!r}: unknown {', '.join(unknown) or 'empty list'}; "
                        f"choose from {', '.join(model_names())}")
    return list(dict.fromkeys(names))


def check_fuxictr(python: str, zoo: Path) -> Path:
    """The model_zoo folder (``zoo`` or ``zoo/model_zoo``); refuses a missing interpreter,
    fuxictr package or model file with one message."""
    if (zoo / "model_zoo").is_dir():
        zoo = zoo / "model_zoo"
    for name in ("DIN", "DMIN"):
        if not (zoo / name / "src" / f"{name}.py").is_file():
            raise DataError(f"--fuxictr-zoo {zoo}: no {name}/src/{name}.py; pass the model_zoo "
                            "folder of FuxiCTR's repository (github.com/reczoo/FuxiCTR)")
    try:
        found = subprocess.run([python, "-c", "import fuxictr; print(fuxictr.__version__)"],
                               capture_output=True, text=True)
    except OSError as error:
        raise DataError(f"--fuxictr {python}: cannot run it ({error})") from None
    if found.returncode != 0:
        raise DataError(f"--fuxictr {python}: cannot import fuxictr there; install it with "
                        f"`{python} -m pip install fuxictr==2.3.10`")
    if found.stdout.strip() != "2.3.10":
        print(f"note: fuxictr {found.stdout.strip()} found; these settings are for 2.3.10",
              file=sys.stderr)
    return zoo


@dataclasses.dataclass
class Entry:
    """One benchmarked model: its label in the output, its worker command, and the option
    that tells the worker which measurement to make."""

    label: str
    command: list[str]
    kind_flag: str = "--worker"

    def run(self, kind: str, threads: int) -> dict:
        done = subprocess.run([*self.command, self.kind_flag, kind], capture_output=True,
                              text=True, env=worker_environment(threads))
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise DataError(f"{self.label} {kind} failed (exit {done.returncode}):\n{tail}")
        return json.loads(lines[-1])


def entries(args: argparse.Namespace, store: Path, models: list[str], zoo: Path | None) -> list:
    shared = ["--store", str(store), *forwarded(args)]
    camn = [Entry(name, [sys.executable, str(Path(__file__).resolve()), "--models", name,
                         *itertools.chain.from_iterable(
                             ("--option", item) for item in args.option
                             if item.partition(":")[0] == name),
                         *(["--compile"] if args.compile else []), *shared]) for name in models]
    if zoo is None:
        return camn
    fuxictr = [Entry(f"fuxictr_{name}", [args.fuxictr, str(FUXICTR_WORKER), "--model", name,
                                         "--zoo", str(zoo), *shared], "--kind")
               for name in FUXICTR_MODELS]
    return camn + fuxictr


def gemm_peaks(device: torch.device, size: int, force_bf16: bool) -> dict:
    """fp32 and bf16 GEMM peaks in GFLOP/s; bf16 on a smaller product where it is emulated."""
    emulated = not native_bf16(device)
    bf16_size = size if force_bf16 or not emulated else min(size, EMULATED_BF16_GEMM_SIZE)
    return {"gemm_fp32_gflops": gemm_gflops(torch.float32, device, size),
            "gemm_bf16_gflops": gemm_gflops(torch.bfloat16, device, bf16_size),
            "gemm_bf16_emulated": emulated, "gemm_size": size, "gemm_bf16_size": bf16_size}


def best_peaks(first: dict, second: dict) -> dict:
    return {key: max(value, second[key]) if key.endswith("_gflops") else value
            for key, value in first.items()}


def skip_reason(args: argparse.Namespace, device: torch.device) -> str | None:
    if args.precision == "bf16" and not native_bf16(device) and not args.force_bf16:
        return ("bf16 is emulated on this CPU (no AVX512-BF16 or AMX), ~100x slower than fp32: "
                "model rows skipped; --force-bf16 measures them anyway")
    return None


def median_of(results: list[dict], key: str) -> float | None:
    values = [result[key] for result in results if key in result]
    return statistics.median(values) if values else None


def throughput_document(
    args: argparse.Namespace, device: torch.device, store: Path, results: dict[str, dict],
    peaks: dict, skipped: str | None,
) -> dict:
    """The JSON document: medians over repeats per model label, roofline fractions, ratios."""
    labels = list(results)
    train = {label: results[label]["train"] for label in labels}
    infer = {label: results[label]["infer"] for label in labels}

    def per_model(runs: dict[str, list[dict]], key: str, scale: float = 1.0) -> dict:
        values = {label: median_of(runs[label], key) for label in labels}
        return {label: None if v is None else v * scale for label, v in values.items()}

    speed = per_model(train, "samples_per_s")
    gflop = per_model(train, "flop_per_sample", 1e-9)
    peak = peaks[f"gemm_{args.precision}_gflops"]
    achieved = {label: None if speed[label] is None else speed[label] * gflop[label]
                for label in labels}
    summary = {
        "device": args.device, "device_name": device_name(device), "threads": args.threads,
        "precision": args.precision, "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size, "store": str(store), "steps": args.steps,
        "warmup": args.warmup, "repeats": args.repeats, "torch": torch.__version__,
        "samples_per_s": speed,
        "inference_samples_per_s": per_model(infer, "samples_per_s"),
        "peak_rss_mib": per_model(train, "peak_rss_mib"),
        "inference_peak_rss_mib": per_model(infer, "peak_rss_mib"),
        "gflop_per_sample": gflop,
        "inference_gflop_per_sample": per_model(infer, "flop_per_sample", 1e-9),
        "achieved_gflops": achieved,
        "roofline": {**peaks, **{label: None if value is None else value / peak
                                 for label, value in achieved.items()}},
        "ratios": ratios(speed),
        "trainer_step": {label: runs[0]["trainer_step"] for label, runs in train.items()
                         if runs and "trainer_step" in runs[0]},
    }
    if device.type == "cuda":
        summary["peak_cuda_mib"] = per_model(train, "peak_cuda_mib")
    if skipped:
        summary["skipped"] = skipped
    return summary


def ratios(speed: dict[str, float | None]) -> dict[str, dict[str, float]]:
    """Training samples/s of each camn model over each FuxiCTR model's."""
    theirs = {label: value for label, value in speed.items() if label.startswith("fuxictr_")}
    return {label: {other: value / reference for other, reference in theirs.items() if reference}
            for label, value in speed.items()
            if value and not label.startswith("fuxictr_") and theirs}


def table(summary: dict) -> str:
    roofline = summary["roofline"]
    bf16_note = (f" (emulated: no AVX512-BF16/AMX; {roofline['gemm_bf16_size']}^2)"
                 if roofline["gemm_bf16_emulated"] else "")
    lines = [
        f"store {summary['store']}; {summary['device']} ({summary['device_name']}), torch "
        f"{summary['torch']}, {summary['threads']} threads, {summary['precision']}, batch "
        f"{summary['batch_size']} (inference {summary['eval_batch_size']}), steps "
        f"{summary['steps'] or 'full epoch'}, warm-up {summary['warmup']}, median of "
        f"{summary['repeats']}",
        f"GEMM peak ({roofline['gemm_size']}^2, best of 5): fp32 "
        f"{roofline['gemm_fp32_gflops']:.1f} GFLOP/s, bf16 {roofline['gemm_bf16_gflops']:.2f} "
        f"GFLOP/s{bf16_note}",
    ]
    if "skipped" in summary:
        return "\n".join([*lines, summary["skipped"]])
    header = (f"{'model':<14}{'train/s':>10}{'infer/s':>10}{'MFLOP/sample':>14}{'GFLOP/s':>9}"
              f"{'roofline':>10}{'RSS MiB train':>15}{'infer':>7}")
    lines += ["", header]
    for label, speed in summary["samples_per_s"].items():
        lines.append(
            f"{label:<14}{speed:>10,.0f}{summary['inference_samples_per_s'][label]:>10,.0f}"
            f"{summary['gflop_per_sample'][label] * 1e3:>14.2f}"
            f"{summary['achieved_gflops'][label]:>9.2f}{roofline[label]:>10.1%}"
            f"{summary['peak_rss_mib'][label]:>15,.0f}"
            f"{summary['inference_peak_rss_mib'][label]:>7,.0f}"
        )
    for label, row in summary["ratios"].items():
        parts = ", ".join(f"x{value:.2f} {other}" for other, value in row.items())
        lines.append(f"{label} training samples/s vs FuxiCTR: {parts}")
    return "\n".join(lines)


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """Every measurement of the run, alternating models within each repeat; the summary."""
    set_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    store_path = resolve_store(args.store, args.data_root, log=log)
    store = PreparedStore(store_path)
    models = model_list(args.models)
    spec = FeatureSpec.from_schema(store.schema)
    for name, values in model_options(args.option, models).items():
        check_options(name, values, spec)
    zoo = None if args.fuxictr is None else check_fuxictr(args.fuxictr, args.fuxictr_zoo)
    skipped = skip_reason(args, device)
    peaks = gemm_peaks(device, args.gemm_size, args.force_bf16)
    jobs = [] if skipped else entries(args, store_path, models, zoo)
    results: dict[str, dict] = {job.label: {kind: [] for kind in KINDS} for job in jobs}
    for repeat in range(args.repeats):
        for job in jobs:
            for kind in KINDS:
                result = job.run(kind, args.threads)
                results[job.label][kind].append(result)
                log(f"repeat {repeat + 1}/{args.repeats} {job.label} {kind}: "
                    f"{result['samples_per_s']:,.0f} samples/s over {result['steps']} steps")
    peaks = best_peaks(peaks, gemm_peaks(device, args.gemm_size, args.force_bf16))
    if skipped:
        results = {name: {kind: [] for kind in KINDS} for name in models}
    return throughput_document(args, device, store_path, results, peaks, skipped)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.worker:
            return run_worker(args)
        summary = run(args, log=lambda message: print(message, file=sys.stderr, flush=True))
    except DataError as error:
        print(f"throughput.py: error: {error}", file=sys.stderr)
        return 2
    print(table(summary))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
