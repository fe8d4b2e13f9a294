"""``camn tune``: a search over one model's training settings and options, on Optuna.

A study tunes one model on one store. Each trial draws its values with TPE (its first
``startup_trials`` at random), trains one seed as ``camn train`` would, with every training
setting of the command line and the ``--config`` file, into a normal run folder
``DIR/trials/trial-NNNN`` (weights, ``history.jsonl``, ``results.json``), and is scored by
the monitored validation score of its best epoch (``--monitor``, validation AUC by default).
The test split is never scored: its figures come from ``camn benchmark --config
DIR/best.toml``, which trains the best settings over seeds. After each epoch the trial reports
its validation score, and the pruner (``median``: below the median of the earlier trials at
that epoch; ``halving``: successive halving; ``none``) may stop it there; a pruned trial keeps
no run folder.

**What is searched.** The shared training settings of :data:`camn.config.SEARCH_SPACE`
(learning rate, embedding L2, weight decay, batch size) and the options in the model class's
``search_space`` (DMIN's auxiliary loss weight, CAMN's alpha, q and reading, ...), less what is
fixed: a model preset's options (``camn-route`` keeps alpha = 0) and every key a ``--config``
table or the command line sets. A ``[tune.MODEL]`` table declares keys of its own, each a list
of choices, a range ``{low, high, log, step}`` (an integer range for an integer key), or a
single value that fixes the key; a declaration searches its key even where a config table sets
it, but a flag or ``--option`` on the command line always fixes it. Every declaration is
checked before any trial (unknown key, wrong type, empty range, log scale over zero, a value
the setting or the model refuses on the store): :class:`~camn.data.raw.DataError` naming where
it was declared.

**Where the study lives.** In a database: ``DIR/study.db`` (SQLite) by default, or any URL
Optuna takes (``--storage postgresql://...``), which processes on several machines then share,
each writing its trials' folders to its own ``DIR``. Rerunning the command resumes the study:
it adds trials until ``--trials`` have finished (completed or pruned; processes that run at
once may add one each beyond). The study records its settings (the store, the fixed settings,
the search space); a rerun with others is refused. ``--jobs J`` runs J processes on this
machine. Each running trial beats a heartbeat in the database; a trial whose process was
killed is marked failed once its heartbeat is stale and is tried again once with the same
values. Ctrl-C ends the running trials (marked failed, their folders deleted) and writes the
files.

**Files.** ``DIR/best.toml``: a config file of the best trial that ``camn train --config`` and
``camn benchmark --config`` take as is; ``DIR/trials.csv``: one row a trial; ``DIR/history.png``
and ``DIR/importance.png``: Optuna's optimisation history and parameter importances.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from camn.argtypes import positive_finite_float, positive_int, seed_int
from camn.config import (
    Layer,
    add_training_flags,
    given_settings,
    parse_options,
    plan,
    store_name,
)
from camn.data.raw import DataError
from camn.experiments.tune_files import (
    BEST,
    DATABASE,
    HISTORY_PLOT,
    IMPORTANCE_PLOT,
    MARKER,
    TABLE,
    TRIALS,
    _replaced,
    finished,
    trial_folder,
    write_plots,
    write_tables,
)
from camn.experiments.tune_space import (
    PRUNERS,
    StudySettings,
    Tuning,
    _check_study_key,
    _label,
    optuna_module,
    search_space,
)

LOGGER = logging.getLogger("camn.tune")
TUNE_DEFAULTS = {"seeds": 1, "seed": 1, "jobs": 1}
# what camn tune writes in its folder (and another process's files being written)
OWN_ENTRIES = re.compile(r"tune\.json|study\.db(\.lock|-journal|-wal|-shm)?|best\.toml|"
                         r"trials\.csv|history\.png|importance\.png|trials|\..+\.partial")
HEARTBEAT_SECONDS = 60  # a killed process's trial is failed after twice this
SQLITE_WAIT_SECONDS = 60  # how long a process waits for another's write to the SQLite file


# ------------------------------------------------------------------------------ the plan


def tune_section(path: str, text: str) -> tuple[dict, dict[str, dict]]:
    """A config file's ``[tune]`` table: its study keys and its ``[tune.MODEL]`` tables."""
    import tomllib

    from camn.models.registry import model_names

    table = tomllib.loads(text).get("tune", {})
    if not isinstance(table, dict):
        raise DataError(f"{path} [tune]: expected a table, got {table!r}")
    keys, models = {}, {}
    known = [name for name in StudySettings.__dataclass_fields__]
    for key, value in table.items():
        if isinstance(value, dict):
            if key not in model_names():
                raise DataError(f"{path} [tune.{key}]: unknown model {key!r}; registered: "
                                f"{', '.join(model_names())}")
            models[key] = value
        elif key not in known:
            raise DataError(f"{path} [tune]: unknown key {key!r} (known: {', '.join(known)}, "
                            "and a [tune.MODEL] table per model)")
        else:
            try:
                keys[key] = _check_study_key(key, value)
            except ValueError as error:
                raise DataError(f"{path} [tune] {key}: {error}") from None
    return keys, models


def make_tuning(args: argparse.Namespace) -> tuple[Tuning, dict, int, int | None]:
    """The study ``args`` ask for, every declaration checked; the store's summary, the
    processes and their torch threads."""
    from camn.data.shards import open_store
    from camn.models.base import FeatureSpec
    from camn.models.registry import check_options
    from camn.results import data_summary
    from camn.train.commands import one_model

    resolved = plan(args, TUNE_DEFAULTS, one_model, check_options=False)
    if len(resolved.stores) != 1:
        raise DataError(f"camn tune tunes on one store; {args.config} lists "
                        f"{len(resolved.stores)}: pass --data")
    path, model = resolved.stores[0], resolved.models[0]
    store = open_store(path)
    store.check_trainable()
    spec = FeatureSpec.from_schema(store.schema)
    file = resolved.config_file
    keys, declared = tune_section(file.path, file.text) if file else ({}, {})
    given = {"trials": args.trials, "timeout": args.timeout, "pruner": args.pruner}
    study = StudySettings(**{**keys, **{k: v for k, v in given.items() if v is not None}})
    if study.trials is None:
        raise DataError("camn tune needs --trials (or trials in the config file's [tune])")
    name = store_name(path)
    covering = [layer for layer in (file.layers if file else ()) if layer.covers(name, model)]
    fixed_by_files = {key for layer in covering for key in (*layer.settings, *layer.options)}
    options = parse_options(args.option or [], [model], check=False).get(model, {})
    fixed_by_flags = set(given_settings(args)) | set(options)
    where = f"{file.path} [tune.{model}]" if file else "[tune]"
    space = search_space(model, spec, fixed_by_files, fixed_by_flags,
                         declared.get(model, {}), where)
    out = Path(args.out)
    layers = list(resolved.settings.layers)
    if resolved.jobs > 1:  # bars of several processes on one terminal would garble it
        layers.append(Layer({"progress": False}))
    tuning = Tuning(
        store=path, model=model, seed=resolved.seeds[0], out=str(out),
        storage=args.storage or f"sqlite:///{(out / DATABASE).resolve()}",
        study_name=args.study_name or f"{model}@{name}", space=space,
        layers=tuple(layers), study=study, verbose=resolved.jobs == 1,
    )
    check_options(model, tuning.config({}).options, spec)
    summary = {k: v for k, v in data_summary(store).items() if k != "path"}
    return tuning, summary, resolved.jobs, resolved.threads


# ------------------------------------------------------------------------------ the study


def storage_of(tuning: Tuning):
    optuna = optuna_module()
    sqlite = tuning.storage.startswith("sqlite")
    return optuna.storages.RDBStorage(
        tuning.storage,
        engine_kwargs={"connect_args": {"timeout": SQLITE_WAIT_SECONDS}} if sqlite else None,
        heartbeat_interval=HEARTBEAT_SECONDS,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=1),
    )


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def study_lock(tuning: Tuning) -> Iterator[None]:
    """Processes that open one SQLite study at once create its tables one at a time (a
    server database orders them itself)."""
    if not tuning.storage.startswith("sqlite"):
        yield
        return
    from filelock import FileLock

    with FileLock(str(Path(tuning.out) / f"{DATABASE}.lock")):
        yield


def open_study(tuning: Tuning, summary: dict, worker: int = 0):
    """The study, created or loaded, its settings checked against ``tuning``'s; TPE seeded
    by (seed, trials so far, worker), so that a resumed or parallel process draws anew."""
    import numpy as np

    optuna = optuna_module()
    with study_lock(tuning):
        study = optuna.create_study(storage=storage_of(tuning), study_name=tuning.study_name,
                                    direction="maximize", pruner=pruner_of(tuning.study),
                                    load_if_exists=True)
        record = tuning.record(summary)
        stored = study.user_attrs.get("camn")
        if stored is None:
            if any(t.state.is_finished() for t in study.get_trials(deepcopy=False)):
                raise DataError(f"study {tuning.study_name!r} in {redacted(tuning.storage)} "
                                "was not made by camn tune; choose another --study-name")
            study.set_user_attr("camn", record)
            if tuning.study.defaults_first:
                enqueue_defaults(study, tuning)
        elif stored != record:
            raise DataError(different(tuning, stored, record))
    optuna.storages.fail_stale_trials(study)  # a killed process's trials: failed, retried
    seed = np.random.SeedSequence([tuning.seed, len(study.trials), worker]).generate_state(1)
    study.sampler = optuna.samplers.TPESampler(
        n_startup_trials=tuning.study.startup_trials, seed=int(seed[0]), multivariate=True,
        constant_liar=True)
    return study


def pruner_of(settings: StudySettings):
    optuna = optuna_module()
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials,
                                           n_warmup_steps=settings.warmup_epochs)
    if settings.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, settings.warmup_epochs), reduction_factor=settings.halving_rate)
    return optuna.pruners.NopPruner()


def enqueue_defaults(study, tuning: Tuning) -> None:
    """A first trial at the values the run would have without the search, where the search
    holds them (the others are drawn): tuning then starts from the untuned settings."""
    base = tuning.config({})
    resolved = {**base.to_dict(), **_resolved_options(base)}
    values = {d.key: _label(resolved[d.key]) for d in tuning.space.dimensions
              if d.holds(resolved.get(d.key))}
    if values:
        study.enqueue_trial(values)


def _resolved_options(config) -> dict:
    from camn.models.registry import resolved_options

    return resolved_options(config.model, **config.options)


def different(tuning: Tuning, stored: dict, record: dict) -> str:
    keys = sorted(key for key in {*stored, *record} if stored.get(key) != record.get(key))
    shown = []
    for key in keys:
        old, new = stored.get(key), record.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            inner = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
            shown += [f"{key}.{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in inner]
        else:
            shown.append(f"{key}: {old!r} then, {new!r} now")
    return (f"study {tuning.study_name!r} in {redacted(tuning.storage)} was made with other "
            f"settings ({'; '.join(shown)}); rerun it as it was, or choose another --out "
            "(or --study-name)")


# ------------------------------------------------------------------------------- a trial


def make_objective(tuning: Tuning) -> Callable:
    """Optuna's objective: one trial, trained as ``camn train`` does with one seed."""
    from camn.data.shards import open_store
    from camn.outputs import RUN, remove_owned
    from camn.train.epoch_log import Hook
    from camn.train.loop import train_seeds
    from camn.train.resume import staging_folder

    optuna = optuna_module()
    store = open_store(tuning.store)

    class Pruning(Hook):
        """Reports each epoch's monitored validation score; raises TrialPruned when the
        pruner says so, before the last epoch (a trial that has run them all is complete).
        Keeps the seed's final metrics."""

        def __init__(self, trial, epochs: int) -> None:
            self.trial, self.epochs, self.metrics = trial, epochs, {}

        def epoch(self, seed: int, record: dict) -> None:
            self.trial.report(record["score"], record["epoch"])
            if record["epoch"] < self.epochs and self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        def end(self, seed: int, metrics: dict) -> None:
            self.metrics = metrics

    def objective(trial) -> float:
        values = {d.key: d.suggest(trial) for d in tuning.space.dimensions}
        config = tuning.config(values)
        out = trial_folder(tuning, trial.number)
        trial.set_user_attr("run", str(out))
        LOGGER.info("trial %d: %s", trial.number, shown(values) or "no searched values")
        pruning = Pruning(trial, config.epochs)
        try:
            with epoch_lines(tuning.verbose):
                train_seeds(store, config, [tuning.seed], out, hooks=[pruning],
                            score_test=False)
        except BaseException as error:  # pruned, interrupted or failed: no half-run left
            remove_owned(staging_folder(out), RUN)
            if isinstance(error, optuna.TrialPruned):
                LOGGER.info("trial %d: %s", trial.number, error)
            raise
        metrics = pruning.metrics
        for key in ("valid_auc", "valid_logloss", "valid_gauc", "best_epoch", "epochs",
                    "train_seconds"):
            trial.set_user_attr(key, metrics[key])
        LOGGER.info("trial %d: valid score %.4f (best epoch %d of %d)", trial.number,
                    metrics["valid_score"], metrics["best_epoch"], metrics["epochs"])
        return metrics["valid_score"]

    return objective


def shown(values: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def remove_leftovers(tuning: Tuning, study) -> None:
    """The folders of trials that no process runs any more (killed ones)."""
    from camn.outputs import RUN, remove_owned

    optuna = optuna_module()
    running = {t.number for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    for folder in (Path(tuning.out) / TRIALS).glob(".trial-*.partial"):
        number = folder.name.removeprefix(".trial-").removesuffix(".partial")
        if number.isdigit() and int(number) not in running:
            with contextlib.suppress(DataError):  # not camn's: left alone
                remove_owned(folder, RUN)


def optimize(tuning: Tuning, summary: dict, worker: int = 0) -> None:
    """Run trials until the study has ``tuning.study.trials`` finished ones (or the timeout)."""
    optuna = optuna_module()
    study = open_study(tuning, summary, worker)
    left = tuning.study.trials - len(finished(study))
    if left <= 0:
        return
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    study.optimize(
        make_objective(tuning), n_trials=left, timeout=tuning.study.timeout,
        callbacks=[optuna.study.MaxTrialsCallback(tuning.study.trials, states=states),
                   lambda study, trial: write_tables(tuning, study)],
    )


@contextlib.contextmanager
def epoch_lines(shown: bool) -> Iterator[None]:
    """The trainer's per-epoch log lines shown or not (several processes: only the trials')."""
    logger = logging.getLogger("camn.train")
    previous = logger.level
    logger.setLevel(logging.INFO if shown else logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _worker(tuning: Tuning, summary: dict, worker: int, threads: int) -> None:
    """A --jobs process: SIGINT is ignored until here (set while it was spawned), then a
    Ctrl-C ends its trial as Optuna does (failed) and the process quietly."""
    import torch
    from tqdm import tqdm

    from camn.train.epoch_log import console

    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        torch.set_num_threads(threads)
        tqdm.set_lock(threading.RLock())  # a worker draws no bars: no process lock to leak
        with console(logging.INFO):
            optimize(tuning, summary, worker)
    except KeyboardInterrupt:
        os._exit(130)
    except DataError as error:
        print(f"camn: error: {error}", file=sys.stderr, flush=True)
        os._exit(2)


def run_jobs(tuning: Tuning, summary: dict, jobs: int, threads: int) -> None:
    """``jobs`` spawned processes on one study; Ctrl-C is passed on and waited for."""
    context = multiprocessing.get_context("spawn")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        processes = [context.Process(target=_worker, args=(tuning, summary, worker, threads))
                     for worker in range(jobs)]
        for process in processes:
            process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGINT)
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
        raise
    failed = [p.exitcode for p in processes if p.exitcode not in (0, 130)]
    if failed:
        raise DataError(f"{len(failed)} of {jobs} tune processes failed (exit status "
                        f"{', '.join(map(str, failed))}); see their messages above")


# ------------------------------------------------------------------------------ the command


def check_out(tuning: Tuning) -> Path:
    """``--out``: new, or a folder of nothing but what camn tune writes, of this study (its
    ``tune.json`` names it); several processes may start on it at once."""
    out = Path(tuning.out)
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; choose a new or empty folder")
    foreign = sorted(entry.name for entry in (out.iterdir() if out.is_dir() else ())
                     if not OWN_ENTRIES.fullmatch(entry.name) or entry.is_symlink())
    if foreign:
        raise DataError(f"--out {out} holds files camn tune did not write "
                        f"({', '.join(foreign[:3])}); choose a new or empty folder")
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))["study"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{marker} is damaged; choose a new or empty folder") from None
        if recorded != tuning.study_name:
            raise DataError(f"--out {out} holds study {recorded!r}, not {tuning.study_name!r};"
                            " choose another --out")
    (out / TRIALS).mkdir(parents=True, exist_ok=True)
    with _replaced(marker) as handle:
        json.dump({"study": tuning.study_name, "storage": redacted(tuning.storage),
                   "model": tuning.model, "store": tuning.store}, handle, indent=2)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Searched: the learning rate, embedding L2, weight decay and batch size, and the\n"
        "model's own options (its class's search_space), less what a --config table, a\n"
        "training flag or --option fixes; [tune.MODEL] tables change the search. Each trial\n"
        "trains one seed and is scored on validation only; camn benchmark --config\n"
        "OUT/best.toml gives the test figures over seeds.")
    parser.add_argument("--config", metavar="FILE",
                        help="a TOML file: the store, training settings, and the search in "
                        "[tune] and [tune.MODEL] tables (see configs/tune-*.toml)")
    parser.add_argument("--data", help="directory of a prepared store (default: the --config "
                        "file's)")
    parser.add_argument("--model", help="the registered model to tune (default: the --config "
                        "file's)")
    parser.add_argument("--out", required=True,
                        help="the study's folder: trial runs, best.toml, trials.csv, plots "
                        "and, without --storage, the study's SQLite database (resumable)")
    parser.add_argument("--trials", type=positive_int, default=None,
                        help="finished trials to reach (completed or pruned); a rerun adds "
                        "the missing ones")
    parser.add_argument("--timeout", type=positive_finite_float, default=None,
                        help="seconds after which a process starts no new trial")
    parser.add_argument("--pruner", choices=PRUNERS, default=None,
                        help="stop a trial early on its per-epoch validation score: median, "
                        "halving (successive halving) or none (default: median)")
    parser.add_argument("--storage", metavar="URL",
                        help="the study's database as a SQLAlchemy URL (PostgreSQL, MySQL, "
                        "SQLite), shared by processes on several machines (default: "
                        "sqlite:///OUT/study.db)")
    parser.add_argument("--study-name", help="the study's name in the database (default: "
                        "MODEL@STORE-FOLDER)")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="processes running trials at once on this machine (default: 1)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per process (default: torch's own, or cores / "
                        "jobs with --jobs)")
    parser.add_argument("--seed", type=seed_int, default=None,
                        help="the seed every trial trains with (default: 1)")
    parser.add_argument("--option", action="append", metavar="[MODEL:]KEY=VALUE",
                        help="a model option, fixed for every trial (not searched); "
                        "repeatable")
    add_training_flags(parser)


def run(args: argparse.Namespace) -> int:
    from camn.experiments.benchmark import available_cores
    from camn.train.distributed import resolve_device
    from camn.train.epoch_log import console
    from camn.train.precision import check_precision

    optuna_module()  # before any work: the message that says how to install it
    tuning, summary, jobs, threads = make_tuning(args)
    base = tuning.config({})
    check_precision(base.precision, resolve_device(base.device))
    out = check_out(tuning)
    study = open_study(tuning, summary)  # creates it, or refuses other settings, once
    remove_leftovers(tuning, study)
    LOGGER.info("study %r: %d of %d trials finished; searching %s", tuning.study_name,
                len(finished(study)), tuning.study.trials,
                ", ".join(d.key for d in tuning.space.dimensions) or "nothing")
    completed = False
    with console(logging.INFO):
        try:
            if jobs == 1:
                if threads:
                    import torch

                    torch.set_num_threads(threads)
                optimize(tuning, summary)
            else:
                run_jobs(tuning, summary, jobs, threads or max(1, available_cores() // jobs))
            completed = True
        finally:
            write_tables(tuning, study)
    notes = write_plots(tuning, study) if completed else []
    print(report(tuning, study, out, notes))
    return 0


def report(tuning: Tuning, study, out: Path, notes: list[str]) -> str:
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    lines = [f"study {tuning.study_name!r}: " + ", ".join(f"{n} {s}" for s, n in states.items())]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        lines.append(f"best: trial {best.number}, valid score {best.value:.4f}: "
                     f"{shown(best.params)}")
        lines.append(f"written: {out / BEST}, {out / TABLE}" + (
            f", {out / HISTORY_PLOT}, {out / IMPORTANCE_PLOT}" if not notes else ""))
        lines.append(f"its test figures over seeds: camn benchmark --config {out / BEST} "
                     f"--seeds 5 --out bench/{tuning.model}-tuned")
    lines += notes
    return "\n".join(lines)
