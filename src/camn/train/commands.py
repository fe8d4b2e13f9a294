"""``camn train``, ``camn evaluate`` and ``camn explain``: argument parsing and printing.

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
from camn.models.base import CTRModel, FeatureSpec
from camn.models.registry import check_options
from camn.outputs import RUN, check_output
from camn.train import distributed
from camn.train.checkpoints import CONFIG, DAMAGED, load_model, read_run_json
from camn.train.loop import ResidentSplit, TrainConfig, spread, train_seeds
from camn.train.metrics import evaluate

RESULTS = "results.json"
MAX_VALUE = 24  # characters of an attribute value shown by camn explain


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
                        default=defaults.eval_batch_size)
    parser.add_argument("--lr", type=positive_finite_float, default=defaults.lr,
                        help="Adam learning rate")
    parser.add_argument(
        "--patience", type=positive_int, default=defaults.patience,
        help="stop after this many epochs without a better validation AUC",
    )
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument(
        "--option", action="append", metavar="KEY=VALUE",
        help="model option, repeatable; values are parsed as JSON where possible",
    )
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
            device=args.device, bf16=args.bf16, progress=not args.no_progress,
        )
    except ValueError as error:
        raise DataError(str(error)) from None
    seeds = list(range(args.seed, args.seed + args.seeds))
    with distributed.session(resolve_device(args.device)) as context:
        results = train_seeds(store, config, seeds, out)
    if context.is_main:
        print(train_summary(results))
        print(f"results written to {out / RESULTS}")
    return 0


# --------------------------------------------------------------------------------- camn evaluate


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory written by camn train")
    parser.add_argument("--data", required=True, help="directory of a prepared store")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
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


# ---------------------------------------------------------------------------------- camn explain


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory written by camn train")
    parser.add_argument("--data", required=True, help="directory of a prepared store")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--seed", type=seed_int,
                        help="which seed's model (default: the run's first)")
    parser.add_argument("--limit", type=positive_int, default=5,
                        help="number of clicked samples to show")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")


@torch.no_grad()
def explain_samples(
    model: CTRModel, store: PreparedStore, split: str, limit: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The first ``limit`` clicks (label 1 with a history) of ``split``: their batch, the routing
    scores P (n, L, k) (Eq. 2) and the click probabilities (n,)."""
    data = ResidentSplit(store, split, device)
    labels, lengths = data.arrays["labels"], data.arrays["lengths"]
    chosen = torch.nonzero((labels == 1) & (lengths > 0)).flatten()[:limit]
    batch = data.gather(chosen)
    model.eval()
    output = model(batch)
    if output.routing is None:
        raise DataError(
            f"model {type(model).__name__} returns no routing scores, so there is nothing to "
            "explain; only models with a routing module (camn, camn-route) do"
        )
    return batch, output.routing.float().cpu(), torch.sigmoid(output.logits.float()).cpu()


def describe_sample(
    store: PreparedStore,
    vocabularies: list[list[str]],
    batch: dict[str, torch.Tensor],
    routing: torch.Tensor,
    probability: float,
    row: int,
) -> str:
    """One sample as the paper's Figure 1: every history click, its attribute values with their
    routing scores, the top attribute marked with * (and the planted driver where known)."""
    attributes = store.attributes
    index = int(batch["index"][row])
    target = ", ".join(
        f"{name}={vocabularies[slot][int(code)][:MAX_VALUE]}"
        for slot, (name, code) in enumerate(zip(attributes, batch["target"][row], strict=True))
    )
    header = ["click", *attributes, "top"]
    table = []
    for position in range(int(batch["mask"][row].sum())):
        scores = routing[row, position]  # (k,)
        top = int(scores.argmax())
        cells = [
            f"{vocabularies[slot][int(code)][:MAX_VALUE]} {float(p):.2f}" + "*" * (slot == top)
            for slot, (code, p) in enumerate(zip(batch["history"][row, position], scores,
                                                 strict=True))
        ]
        table.append([str(position + 1), *cells, attributes[top]])
    if store.has_drivers:
        header.append("planted")
        drivers = store.array("history_driver")[index]
        for position, cells in enumerate(table):
            cells.append(attributes[drivers[position]])
    widths = [max(len(cells[c]) for cells in [header, *table]) for c in range(len(header))]
    lines = [
        f"store row {index}, user {int(batch['user'][row])}: clicked {target} "
        f"(predicted p = {probability:.3f})"
    ]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
              for cells in [header, *table]]
    return "\n".join(lines)


def run_explain(args: argparse.Namespace) -> int:
    store = PreparedStore(args.data)
    results = load_results(Path(args.run))
    seed = results["seeds"][0] if args.seed is None else args.seed
    if seed not in results["seeds"]:
        raise DataError(f"seed {seed} is not in the run; it has seeds {results['seeds']}")
    device = resolve_device(args.device)
    model, _ = load_seed_model(Path(args.run), seed, store, device)
    batch, routing, probabilities = explain_samples(model, store, args.split, args.limit, device)
    batch = {key: value.cpu() for key, value in batch.items()}
    vocabularies = [store.vocab(attribute) for attribute in store.attributes]
    print(f"{results['model']} (seed {seed}): routing scores P of every history click (Eq. 2); "
          "* marks the attribute that drove the click in the model's view.\n"
          "Caveat: Eq. 2-4 tie column r to attribute r only through 'P[:, r] scales head r'; on "
          "planted data the router sorts items by their driving attribute but often under "
          "another column (docs/results.md).")
    for row in range(len(probabilities)):
        print()
        print(describe_sample(store, vocabularies, batch, routing, float(probabilities[row]), row))
    if not len(probabilities):
        print(f"no clicked sample with a history in the {args.split} split")
    return 0

