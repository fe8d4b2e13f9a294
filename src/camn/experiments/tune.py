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
import csv
import json
import logging
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from camn.argtypes import positive_finite_float, positive_int, seed_int
from camn.config import (
    SEARCH_SPACE,
    VOLATILE,
    Layer,
    Settings,
    add_training_flags,
    given_settings,
    parse_options,
    plan,
    store_name,
    training_settings,
)
from camn.data.raw import DataError

LOGGER = logging.getLogger("camn.tune")
TUNE_DEFAULTS = {"seeds": 1, "seed": 1, "jobs": 1}
MARKER, DATABASE, BEST, TABLE = "tune.json", "study.db", "best.toml", "trials.csv"
HISTORY_PLOT, IMPORTANCE_PLOT, TRIALS = "history.png", "importance.png", "trials"
PRUNERS = ("median", "halving", "none")
# what camn tune writes in its folder (and another process's files being written)
OWN_ENTRIES = re.compile(r"tune\.json|study\.db(\.lock|-journal|-wal|-shm)?|best\.toml|"
                         r"trials\.csv|history\.png|importance\.png|trials|\..+\.partial")
HEARTBEAT_SECONDS = 60  # a killed process's trial is failed after twice this
SQLITE_WAIT_SECONDS = 60  # how long a process waits for another's write to the SQLite file
INSTALL = "camn tune needs Optuna: pip install 'camn[tune]' (or pip install optuna)"


# --------------------------------------------------------------------- the study's settings


@dataclass(frozen=True)
class StudySettings:
    """The ``[tune]`` table's keys (the command line's flags override them)."""

    trials: int | None = None  # trials to finish (completed or pruned); --trials
    timeout: float | None = None  # seconds after which a process starts no new trial
    pruner: str = "median"
    startup_trials: int = 5  # TPE's random trials, and those the median pruner waits for
    warmup_epochs: int = 1  # epochs before a trial may be pruned (halving: its first rung)
    halving_rate: int = 3  # successive halving keeps the best 1 / rate at each rung
    defaults_first: bool = True  # the first trial tries the unsearched values: the defaults


def _check_study_key(key: str, value: object) -> object:
    """A ``[tune]`` key's value, checked; ValueError(reason)."""
    integer = {"trials": 1, "startup_trials": 0, "warmup_epochs": 0, "halving_rate": 2}
    if key in integer:
        if type(value) is not int or value < integer[key]:
            raise ValueError(f"expected an integer of at least {integer[key]}, got {value!r}")
    elif key == "timeout":
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value > 0):
            raise ValueError(f"expected a positive number of seconds, got {value!r}")
    elif key == "pruner":
        if value not in PRUNERS:
            raise ValueError(f"must be one of {', '.join(PRUNERS)}, got {value!r}")
    elif key == "defaults_first" and type(value) is not bool:
        raise ValueError(f"expected true or false, got {value!r}")
    return value


# ------------------------------------------------------------------------ the search space


@dataclass(frozen=True)
class Dimension:
    """One searched key, a training setting or a model option (``option``): a choice among
    ``choices``, or a range [low, high] (integers where ``integer``), on a log scale with
    ``log``, in steps of ``step`` where given."""

    key: str
    option: bool
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial) -> object:
        """The trial's value (Optuna's choices are scalars: a list value goes as JSON)."""
        if self.choices:
            labels = {_label(choice): choice for choice in self.choices}
            return labels[trial.suggest_categorical(self.key, list(labels))]
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def holds(self, value: object) -> bool:
        if self.choices:
            return value in self.choices
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and self.low <= value <= self.high and (  # type: ignore[operator]
            not self.integer or float(value).is_integer())  # type: ignore[arg-type]

    def declaration(self) -> object:
        """As a ``[tune.MODEL]`` table declares it."""
        if self.choices:
            return list(self.choices)
        bounds = (int(self.low), int(self.high)) if self.integer else (self.low, self.high)
        table: dict[str, object] = {"low": bounds[0], "high": bounds[1]}
        if self.log:
            table["log"] = True
        if self.step is not None:
            table["step"] = self.step
        return table


def _label(value: object) -> object:
    return value if value is None or isinstance(value, bool | int | float | str) else (
        json.dumps(value))


@dataclass(frozen=True)
class Space:
    """A model's search: the searched dimensions, and what the declarations fix."""

    dimensions: tuple[Dimension, ...]
    fixed_settings: dict = field(default_factory=dict)
    fixed_options: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"search": {d.key: d.declaration() for d in self.dimensions},
                "fixed_settings": self.fixed_settings, "fixed_options": self.fixed_options}


def parse_declaration(key: str, value: object, where: str, model: str, spec) -> object:
    """One declaration: a :class:`Dimension`, or (a single value) the value that fixes the
    key; DataError ``"WHERE KEY: reason"`` for a bad one."""
    from camn.models.registry import check_options, option_types

    settings = training_settings()
    options = option_types(model)
    if key not in settings and key not in options:
        raise DataError(f"{where}: unknown key {key!r}: neither a training setting "
                        f"({', '.join(settings)}) nor an option of model {model!r} "
                        f"({', '.join(options)})")
    option = key not in settings

    def check(candidate: object) -> object:
        try:
            if not option:
                return settings[key].check(candidate)
            check_options(model, {key: candidate}, spec)
        except (ValueError, DataError) as error:
            raise DataError(f"{where} {key}: {error}") from None
        return candidate

    if isinstance(value, list):
        if not value:
            raise DataError(f"{where} {key}: an empty list of choices")
        return Dimension(key, option, choices=tuple(check(choice) for choice in value))
    if not isinstance(value, dict):
        return check(value)
    return _range(key, value, where, option, check, _is_integer(key, option, model))


def _is_integer(key: str, option: bool, model: str) -> bool | None:
    """True for an integer key, False for a float one, None for one that takes no numbers."""
    import typing

    from camn.models.registry import option_types

    hint = option_types(model)[key] if option else training_settings()[key].kind
    kinds = set(typing.get_args(hint)) or {hint}
    return True if int in kinds and float not in kinds else (False if float in kinds else None)


def _range(key: str, table: dict, where: str, option: bool,
           check: Callable[[object], object], integer: bool | None) -> Dimension:
    unknown = sorted(set(table) - {"low", "high", "log", "step"})
    if unknown:
        raise DataError(f"{where} {key}: unknown range key {unknown[0]!r} (a range has low, "
                        "high, log and step; a list is a choice)")
    if integer is None:
        raise DataError(f"{where} {key}: takes no numbers, so no range: give a list of choices")
    numbers = {name: table[name] for name in ("low", "high", "step") if name in table}
    for name, number in numbers.items():
        if isinstance(number, bool) or not isinstance(number, int | float) or not (
                math.isfinite(number)) or (integer and not isinstance(number, int)):
            kind = "an integer" if integer else "a number"
            raise DataError(f"{where} {key}: {name} must be {kind}, got {number!r}")
    if "low" not in numbers or "high" not in numbers:
        raise DataError(f"{where} {key}: a range needs low and high")
    low, high, log, step = table["low"], table["high"], table.get("log", False), table.get("step")
    if type(log) is not bool:
        raise DataError(f"{where} {key}: log must be true or false, got {log!r}")
    if low > high:
        raise DataError(f"{where} {key}: empty range: low {low} > high {high}")
    if log and low <= 0:
        raise DataError(f"{where} {key}: a log scale needs low > 0, got low {low} (a log "
                        "range cannot reach zero: give a list of choices to include 0)")
    if step is not None and (step <= 0 or log):
        raise DataError(f"{where} {key}: step must be positive and without log, got {step}")
    check(low)
    check(high)
    return Dimension(key, option, low=low, high=high, log=log, step=step, integer=integer)


def search_space(model: str, spec, fixed_by_files: set[str], fixed_by_flags: set[str],
                 declared: Mapping[str, object], declared_where: str) -> Space:
    """The search of ``model`` on a store of ``spec``: the shared and the model class's
    declarations, less the preset's options and ``fixed_by_files``; then the ``declared``
    table's; less ``fixed_by_flags``. DataError for a bad declaration."""
    from camn.models.registry import get_entry

    entry = get_entry(model)
    sources = [(SEARCH_SPACE, "camn.config.SEARCH_SPACE"),
               (entry.cls.search_space, f"{entry.cls.__module__}.{entry.cls.__qualname__}"
                ".search_space")]
    parsed: dict[str, object] = {}
    for table, where in sources:
        for key, value in table.items():
            if key not in entry.preset and key not in fixed_by_files:
                parsed[key] = parse_declaration(key, value, where, model, spec)
    for key, value in declared.items():
        parsed[key] = parse_declaration(key, value, declared_where, model, spec)
    kept = {key: value for key, value in parsed.items() if key not in fixed_by_flags}
    dimensions = tuple(v for v in kept.values() if isinstance(v, Dimension))
    fixed = {key: v for key, v in kept.items() if not isinstance(v, Dimension)}
    settings = training_settings()
    return Space(dimensions, {k: v for k, v in fixed.items() if k in settings},
                 {k: v for k, v in fixed.items() if k not in settings})


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Tuning:
    """Everything a process needs to run trials of one study (picklable, for --jobs)."""

    store: str
    model: str
    seed: int
    out: str
    storage: str
    study_name: str
    space: Space
    layers: tuple[Layer, ...]
    study: StudySettings
    verbose: bool = True  # the trainer's per-epoch lines (one process on the terminal)

    def config(self, values: Mapping[str, object]):
        """The TrainConfig of a trial with these searched ``values``."""
        dims = {d.key: d for d in self.space.dimensions}
        settings = {**self.space.fixed_settings,
                    **{k: v for k, v in values.items() if not dims[k].option}}
        options = {**self.space.fixed_options,
                   **{k: v for k, v in values.items() if dims[k].option}}
        top = Layer(settings, options, model=self.model)
        return Settings(*self.layers, top).config(self.store, self.model)

    def record(self, summary: dict) -> dict:
        """What the study remembers of its settings: a rerun must match it."""
        base = self.config({})
        fixed = {key: value for key, value in base.to_dict().items()
                 if key not in VOLATILE and key not in {d.key for d in self.space.dimensions}}
        return json.loads(json.dumps({"model": self.model, "seed": self.seed, "data": summary,
                                      "fixed": fixed, "space": self.space.record()}))


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


def optuna_module():
    """Optuna, or a DataError that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise DataError(INSTALL) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # camn prints its own lines
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


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


def finished(study) -> list:
    optuna = optuna_module()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


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


def trial_folder(tuning: Tuning, number: int) -> Path:
    return Path(tuning.out) / TRIALS / f"trial-{number:04d}"


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


# ------------------------------------------------------------------------------- the files


def write_tables(tuning: Tuning, study) -> None:
    """``trials.csv`` and ``best.toml``, each replaced whole (several processes write them)."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({key for trial in trials for key in trial.params})
    extra = ("valid_auc", "valid_logloss", "valid_gauc", "best_epoch", "epochs",
             "train_seconds")
    rows = [{"trial": t.number, "state": t.state.name.lower(), "valid_score": t.value,
             **{key: t.user_attrs.get(key) for key in extra},
             "last_epoch": max(t.intermediate_values, default=None),
             **{key: t.params.get(key) for key in params},
             "run": t.user_attrs.get("run") if t.state.name == "COMPLETE" else None}
            for t in trials]
    header = ["trial", "state", "valid_score", *extra, "last_epoch", *params, "run"]
    with _replaced(Path(tuning.out) / TABLE) as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        writer.writerows(rows)
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        with _replaced(Path(tuning.out) / BEST) as handle:
            handle.write(best_toml(tuning, best, len(finished(study))))


@contextlib.contextmanager
def _replaced(path: Path) -> Iterator:
    """A file written beside ``path`` under a name of this process and thread, renamed onto
    it when complete: a reader never sees half a file, whichever process wrote last."""
    partial = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def toml_value(value: object) -> str:
    """A TOML value: strings, numbers, booleans and lists of them (JSON writes them alike)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"no TOML value for {value}")
    return json.dumps(value)


def best_toml(tuning: Tuning, best, done: int) -> str:
    """A config file of the best trial: its model, seed, store, every setting that says what
    the run computes (the tuned ones marked), and its options."""
    values = {d.key: d.suggest(_Fixed(best.params)) for d in tuning.space.dimensions}
    config = tuning.config(values)
    name = store_name(tuning.store)
    out = Path(tuning.out)
    lines = [
        f"# camn tune: the best of {done} finished trials of study {tuning.study_name!r}: "
        f"trial {best.number},",
        f"# valid score {best.value:.6f} ({config.monitor}) at epoch "
        f"{best.user_attrs.get('best_epoch')}; run folder {trial_folder(tuning, best.number)}.",
        "# Its test figures over seeds, and the trial again:",
        f"#   camn benchmark --config {out / BEST} --seeds 5 --out "
        f"bench/{config.model}-tuned",
        f"#   camn train --config {out / BEST} --out runs/{config.model}-tuned",
        f"models = [{toml_value(config.model)}]",
        f"seed = {tuning.seed}",
        "",
        f"[data.{name}]",
        f"path = {toml_value(tuning.store)}",
        "",
        f"[model.{config.model}]",
    ]
    searched = {d.key for d in tuning.space.dimensions}
    for key, value in config.to_dict().items():
        if key in training_settings() and key not in VOLATILE:
            lines.append(f"{key} = {toml_value(value)}" + ("  # tuned" if key in searched
                                                            else ""))
    lines += ["", f"[model.{config.model}.options]"]
    for key, value in config.options.items():
        if value is None:  # TOML has no null: the option's default is None too
            lines.append(f"# {key}: null (the default)")
        else:
            lines.append(f"{key} = {toml_value(value)}" + ("  # tuned" if key in searched
                                                            else ""))
    return "\n".join(lines) + "\n"


class _Fixed:
    """A stand-in trial that answers every suggestion with a finished trial's value."""

    def __init__(self, params: Mapping[str, object]) -> None:
        self.params = params

    def suggest_categorical(self, key: str, choices: Sequence) -> object:
        return self.params[key]

    def suggest_int(self, key: str, *args, **kwargs) -> int:
        return int(self.params[key])  # type: ignore[call-overload]

    def suggest_float(self, key: str, *args, **kwargs) -> float:
        return float(self.params[key])  # type: ignore[arg-type]


def write_plots(tuning: Tuning, study) -> list[str]:
    """Optuna's optimisation history and parameter importances as PNG; the reasons for a plot
    that cannot be drawn yet (importances need two finished trials that differ)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from optuna.visualization import matplotlib as plots

    notes = []
    for name, draw in ((HISTORY_PLOT, plots.plot_optimization_history),
                       (IMPORTANCE_PLOT, plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():  # "too few trials": the plot says it as it is
                warnings.simplefilter("ignore", UserWarning)
                axes = draw(study)
        except (ValueError, RuntimeError) as error:
            notes.append(f"{name} not drawn: {error}")
            continue
        figure = axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(Path(tuning.out) / name, dpi=100)
        pyplot.close(figure)
    return notes


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
