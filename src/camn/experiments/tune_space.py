"""What ``camn tune`` searches: the study's settings (the ``[tune]`` table) and the search
space (:data:`camn.config.SEARCH_SPACE`, each model's ``search_space`` and the ``[tune.MODEL]``
declarations), checked before any trial, and :class:`Tuning`, what a process needs to run
trials of one study.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from camn.config import SEARCH_SPACE, VOLATILE, Layer, Settings, training_settings
from camn.data.raw import DataError

PRUNERS = ("median", "halving", "none")
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


def optuna_module():
    """Optuna, or a DataError that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise DataError(INSTALL) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # camn prints its own lines
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna
