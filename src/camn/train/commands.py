"""``camn train`` and ``camn evaluate``: argument parsing and printing (``camn explain`` is
:mod:`camn.explain`).

``camn train`` may run under ``torchrun --nproc_per_node N`` for data-parallel training; see
:mod:`camn.train.distributed` (``--batch-size`` is then per process).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from camn.argtypes import positive_finite_float, positive_int, seed_int
from camn.data.raw import DataError
from camn.data.store import PreparedStore
from camn.models.base import FeatureSpec
from camn.models.registry import check_options
from camn.outputs import RUN, check_output
from camn.train import distributed
from camn.train.checkpoints import CONFIG, DAMAGED, load_model, read_run_json
from camn.train.loop import TrainConfig, spread, train_seeds
from camn.train.metrics import evaluate
from camn.train.precision import PRECISIONS, check_precision

RESULTS = "results.json"


# ---------------------------------------------------------------- helpers shared by the commands


def parse_options(pairs: list[str] | None) -> dict:
    """``["q=2", "scale_side=query"]`` -> ``{"q": 2, "scale_side": "query"}`` (JSON values
    where they parse, strings otherwise)."""
    options = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise DataError(f"--option {pair!r}: expected key=value")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def check_model(name: str, options: dict, spec: FeatureSpec) -> None:
    """Check the name and every option (type, domain, one build on the store's spec) so that a
    bad one fails before training; see :func:`camn.models.registry.check_options`."""
    check_options(name, options, spec)


def resolve_device(requested: str) -> torch.device:
    try:
        return distributed.resolve_device(requested)
    except (RuntimeError, ValueError) as error:
        raise DataError(str(error)) from None


def load_results(run: Path) -> dict:
    """A finished run's ``results.json``, checked for the model name and the seeds it lists."""
    path = Path(run) / RESULTS
    if not path.is_file():
        raise DataError(f"{path} is missing: not a finished camn train run")
    results = read_run_json(path)
    if not (isinstance(results, dict) and isinstance(results.get("model"), str)
            and isinstance(results.get("seeds"), list) and results["seeds"]
            and all(type(seed) is int for seed in results["seeds"])):
        raise DataError(f"{path} does not name the model and its seeds: {DAMAGED}")
    return results


def load_seed_model(run: Path, seed: int, store: PreparedStore, device: torch.device):
    """The saved model of one seed, checked against the store it is applied to (whose contents
    are scanned first: :meth:`PreparedStore.check_contents`)."""
    store.check_contents()
    model, config = load_model(Path(run) / f"seed_{seed}", device=str(device))
    if config["spec"] != FeatureSpec.from_schema(store.schema).to_dict():
        raise DataError(
            f"{store.root} does not match the store the run was trained on "
            f"(attributes, vocabulary sizes or history length differ)"
        )
    train = config.get("train")
    if not (isinstance(train, dict) and type(train.get("eval_batch_size")) is int
            and train["eval_batch_size"] > 0):
        path = Path(run) / f"seed_{seed}" / CONFIG
        raise DataError(f"{path} lacks train.eval_batch_size: {DAMAGED}")
    return model, config


def format_spread(name: str, values: dict) -> str:
    return f"{name} {values['mean']:.4f} ± {values['std']:.4f}"


# ------------------------------------------------------------------------------------ camn train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(model="")
    parser.add_argument("--data", required=True, help="directory of a prepared store")
    parser.add_argument("--model", required=True, help="registered model name (camn models)")
    parser.add_argument("--out", required=True, help="run directory for results and weights")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="number of seeds (the paper: 5)")
    parser.add_argument("--seed", type=seed_int, default=1, help="first seed")
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs,
                        help="maximum epochs")
    parser.add_argument(
        "--batch-size", type=positive_int, default=defaults.batch_size,
        help="training batch size (per process under torchrun)",
    )
    parser.add_argument("--eval-batch-size", type=positive_int,
                        default=defaults.eval_batch_size,
                        help="batch size of the validation and test scoring")
    parser.add_argument("--lr", type=positive_finite_float, default=defaults.lr,
                        help="Adam learning rate")
    parser.add_argument(
        "--patience", type=positive_int, default=defaults.patience,
        help="stop after this many epochs without a better validation AUC",
    )
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--length-buckets", action="store_true",
                        help="batches of similar history lengths, cut to their longest history")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model for training (minutes of compilation)")
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                        help="bf16: autocast with fp32 master weights, where the device has bf16 "
                        "instructions (GPUs, CPUs with AVX512-BF16 or AMX)")
    parser.add_argument(
        "--option", action="append", metavar="KEY=VALUE",
        help="model option, repeatable; values are parsed as JSON where possible",
    )
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: torch's own; per process under torchrun)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true", help="overwrite an existing run")


def train_summary(results: dict) -> str:
    lines = [
        f"{results['model']} on {results['data']['path']} ({results['data']['protocol']}), "
        f"seeds {', '.join(map(str, results['seeds']))}",
        " | ".join(
            format_spread(label, results[key])
            for label, key in (("test AUC", "test_auc"), ("logloss", "test_logloss"),
                               ("gAUC", "test_gauc"))
        ),
        f"best epochs {results['best_epoch']}, "
        f"{results['samples_per_second']['mean']:,.0f} training samples/s",
    ]
    if "routing_recovery" in results:
        recovery = results["routing_recovery"]
        lines.append(
            "routing recovery: " + ", ".join(f"{k} {v:.3f}" for k, v in recovery.items())
        )
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    out = check_output(args.out, RUN, force=args.force, inputs=[args.data])  # before any reading
    store = PreparedStore(args.data)
    options = parse_options(args.option)
    check_model(args.model, options, FeatureSpec.from_schema(store.schema))
    if args.seeds < 1:
        raise DataError(f"--seeds must be at least 1, got {args.seeds}")
    try:
        config = TrainConfig(
            model=args.model, options=options, epochs=args.epochs, batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size, lr=args.lr, patience=args.patience,
            device=args.device, precision=args.precision, length_buckets=args.length_buckets,
            compile=args.compile, progress=not args.no_progress,
        )
    except ValueError as error:
        raise DataError(str(error)) from None
    device = resolve_device(args.device)
    check_precision(config.precision, device)
    seeds = list(range(args.seed, args.seed + args.seeds))
    if args.threads:
        torch.set_num_threads(args.threads)
    with distributed.session(device) as context:
        results = train_seeds(store, config, seeds, out)
    if context.is_main:
        print(train_summary(results))
        print(f"results written to {out / RESULTS}")
    return 0


# --------------------------------------------------------------------------------- camn evaluate


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory written by camn train")
    parser.add_argument("--data", required=True, help="directory of a prepared store")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"),
                        help="split to score")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def evaluate_run(run: Path, store: PreparedStore, split: str, device: torch.device) -> dict:
    """Re-score every seed's saved weights of ``run`` on ``split``: per-seed and aggregated."""
    results = load_results(run)
    per_seed = {}
    for seed in results["seeds"]:
        model, config = load_seed_model(run, seed, store, device)
        per_seed[seed] = evaluate(model, store, split, config["train"]["eval_batch_size"], device)
    summary: dict = {"model": results["model"], "split": split, "seeds": per_seed}
    for key in ("auc", "logloss", "gauc"):
        summary[key] = spread([metrics[key] for metrics in per_seed.values()])
    return summary


def run_evaluate(args: argparse.Namespace) -> int:
    store = PreparedStore(args.data)
    summary = evaluate_run(Path(args.run), store, args.split, resolve_device(args.device))
    for seed, metrics in summary["seeds"].items():
        line = f"seed {seed}: AUC {metrics['auc']:.4f}, logloss {metrics['logloss']:.4f}, " \
               f"gAUC {metrics['gauc']:.4f}"
        if "routing_recovery" in metrics:
            line += f", routing recovery {metrics['routing_recovery']['overall']:.3f}"
        print(line)
    print(f"{summary['model']} on {args.split}: " + " | ".join(
        format_spread(label, summary[key])
        for label, key in (("AUC", "auc"), ("logloss", "logloss"), ("gAUC", "gauc"))
    ))
    return 0
