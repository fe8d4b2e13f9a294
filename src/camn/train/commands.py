"""``camn train`` and ``camn evaluate``: argument parsing and printing (``camn explain`` is
:mod:`camn.explain`).

``camn train`` may run under ``torchrun --nproc_per_node N`` for data-parallel training; see
:mod:`camn.train.distributed` (``--batch-size`` is then per process).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from camn.argtypes import positive_int, seed_int
from camn.config import TrainConfig, add_training_flags, plan, training_settings
from camn.data.fingerprint import check_vocabularies
from camn.data.raw import DataError
from camn.data.shards import MANIFEST, open_store
from camn.data.store import PreparedStore
from camn.models.base import FeatureSpec
from camn.models.registry import check_options
from camn.outputs import RUN, check_output, writing
from camn.run_folder import RunFolder
from camn.stats import Stat
from camn.train import distributed
from camn.train.checkpoints import DAMAGED, load_model, read_results, seed_folder
from camn.train.distributed import resolve_device
from camn.train.epoch_log import console
from camn.train.loop import train_seeds
from camn.train.metrics import evaluate
from camn.train.precision import check_precision
from camn.train.resume import interrupted_problem, read_settings

TRAIN_DEFAULTS = {"seeds": 1, "seed": 1}


# ---------------------------------------------------------------- helpers shared by the commands


def load_seed_model(run: Path, seed: int, store: PreparedStore, device: torch.device):
    """The saved model of one seed, checked against the store it is applied to (whose contents
    are scanned first: :meth:`PreparedStore.check_contents`): the same feature spec and, where
    the run recorded them, the same vocabularies (:mod:`camn.data.fingerprint`)."""
    store.check_contents()
    folder = seed_folder(run, seed)
    model, config = load_model(folder.root, device=str(device))
    if config["spec"] != FeatureSpec.from_schema(store.schema).to_dict():
        raise DataError(
            f"{store.root} does not match the store the run was trained on "
            f"(attributes, vocabulary sizes or history length differ)"
        )
    check_vocabularies(config, store)
    train = config.get("train")
    if not (isinstance(train, dict) and type(train.get("eval_batch_size")) is int
            and train["eval_batch_size"] > 0):
        raise DataError(f"{folder.config} lacks train.eval_batch_size: {DAMAGED}")
    return model, config


def format_spread(name: str, values: dict) -> str:
    """``test AUC MEAN ± STD`` from a results.json entry (``runs``: the seeds' values)."""
    return f"{name} {Stat.of(values['runs']).cell()}"


# ------------------------------------------------------------------------------------ camn train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="a TOML file of the run: model, seeds, training settings, store "
                        "(see configs/); flags override it")
    parser.add_argument("--data", help="directory of a prepared store (default: the --config "
                        "file's)")
    parser.add_argument("--model", help="registered model name, see camn models (default: "
                        "the --config file's)")
    parser.add_argument("--out", help="run directory for results and weights (required "
                        "unless --resume)")
    parser.add_argument("--resume", metavar="RUN",
                        help="continue the interrupted camn train run RUN (failed, stopped or "
                        "killed) with the settings it began with; only --threads goes with it")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help=f"number of seeds; the paper: 5 (default: {TRAIN_DEFAULTS['seeds']})")
    parser.add_argument("--seed", type=seed_int, default=None,
                        help=f"first seed (default: {TRAIN_DEFAULTS['seed']})")
    parser.add_argument("--option", action="append", metavar="[MODEL:]KEY=VALUE",
                        help="a model option, repeatable; values are read as JSON where they "
                        "parse")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: torch's own; per process under torchrun)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing run")
    add_training_flags(parser)


def one_model(names: list[str]) -> list[str]:
    """The one registered model ``camn train`` trains."""
    if len(names) != 1:
        raise DataError(f"camn train trains one model, got {len(names)}: {', '.join(names)}")
    check_options(names[0], {})  # an unknown name: a message that lists the registered ones
    return names


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
    if args.resume is not None:
        return run_resume(args)
    if args.out is None:
        raise DataError("camn train needs --out (the run folder to write), or --resume RUN")
    resolved = plan(args, TRAIN_DEFAULTS, one_model, check_options=False)  # below, on the store
    if len(resolved.stores) != 1:
        raise DataError(f"camn train trains on one store; {args.config} lists "
                        f"{len(resolved.stores)}: pass --data")
    path = resolved.stores[0]
    out = check_output(args.out, RUN, force=args.force, inputs=[path])  # before any reading
    if not args.force and (problem := interrupted_problem(out)):
        raise DataError(problem)
    store = open_store(path)
    config = resolved.settings.config(path, resolved.models[0])
    check_options(config.model, config.options, FeatureSpec.from_schema(store.schema))
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    if resolved.threads:
        torch.set_num_threads(resolved.threads)
    with writing(out), distributed.session(device) as context, console():  # epoch lines
        results = train_seeds(store, config, resolved.seeds, out)
    if context.is_main:
        print(train_summary(results))
        print(f"results written to {RunFolder(out).results}")
    return 0


RESUME_ALONE = ("config", "data", "model", "out", "seeds", "seed", "option", "force")


def run_resume(args: argparse.Namespace) -> int:
    """``camn train --resume RUN``: continue an interrupted run with the settings of its
    ``train.json`` (:mod:`camn.train.resume`); no setting may be given again."""
    given = [f"--{name}" for name in RESUME_ALONE if getattr(args, name, None) not in (None, False)]
    given += [setting.flag for name, setting in training_settings().items()
              if getattr(args, name, None) is not None]
    if given:
        raise DataError(f"--resume {args.resume} continues the run with the settings it began "
                        f"with; drop {', '.join(given)}")
    run = Path(args.resume)
    settings = read_settings(run)
    path = settings.data["path"]
    check_output(run, RUN, force=True, inputs=[path], option="--resume")
    store = open_store(path)
    try:
        config = TrainConfig(**settings.train)
    except (TypeError, ValueError) as error:
        path = RunFolder(run).staging.settings
        raise DataError(f"{path}: {error}: the interrupted run is damaged; start it again "
                        "with --force") from None
    check_options(config.model, config.options, FeatureSpec.from_schema(store.schema))
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with writing(run, "--resume"), distributed.session(device) as context, console():
        if context.world_size != settings.world_size:
            raise DataError(f"--resume {run}: the run began with {settings.world_size} "
                            f"process(es), this is {context.world_size}; resume it with as many")
        results = train_seeds(store, config, settings.seeds, run, resume=True)
    if context.is_main:
        print(train_summary(results))
        print(f"results written to {RunFolder(run).results}")
    return 0


# --------------------------------------------------------------------------------- camn evaluate


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory written by camn train")
    parser.add_argument("--data", help="directory of a prepared store (default: the one the "
                        "run was trained on)")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"),
                        help="split to score")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def evaluate_run(run: Path, store: PreparedStore, split: str, device: torch.device) -> dict:
    """Re-score every seed's saved weights of ``run`` on ``split``: per-seed and aggregated."""
    results = read_results(run)
    if not len(store.split_indices(split)):
        raise DataError(f"{store.root}: the {split} split has no samples; there is nothing to "
                        "evaluate (choose another --split)")
    per_seed = {}
    for seed in results["seeds"]:
        model, config = load_seed_model(run, seed, store, device)
        per_seed[seed] = evaluate(model, store, split, config["train"]["eval_batch_size"], device)
    summary: dict = {"model": results["model"], "split": split, "seeds": per_seed}
    for key in ("auc", "logloss", "gauc"):
        summary[key] = Stat.of(metrics[key] for metrics in per_seed.values()).to_dict()
    return summary


def trained_store(run: Path) -> Path:
    """The store ``run`` was trained on, as its first seed's ``config.json`` records it."""
    from camn.predict import run_store_path

    path = run_store_path(seed_folder(run, read_results(run)["seeds"][0]).root)
    if not ((path / "schema.json").is_file() or (path / MANIFEST).is_file()):
        raise DataError(f"{path} (the store {run} was trained on) is not a prepared store; "
                        "name the store to evaluate on with --data")
    return path


def run_evaluate(args: argparse.Namespace) -> int:
    run = Path(args.run)
    store = open_store(args.data if args.data is not None else trained_store(run))
    summary = evaluate_run(run, store, args.split, resolve_device(args.device))
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
