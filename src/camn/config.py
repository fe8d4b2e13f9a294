"""The training configuration: :class:`TrainConfig` (every training setting with its default,
help text and rule), the flags made from it, config files (TOML) and their layers.

The training settings of a run are resolved in one place, :func:`resolve`, from layers applied
in order, each overriding the ones before it:

1. the defaults: the fields of :class:`TrainConfig` (and a command's own defaults, such as
   ``camn demo``'s short runs);
2. a ``--config`` file's ``[train]`` table, for every run;
3. its ``[data.NAME]`` table, for the runs on the store in the folder named NAME;
4. its ``[model.NAME]`` table, for the runs of model NAME (constructor options in
   ``[model.NAME.options]``);
5. the command line: a flag per training setting, for every run, and ``--option``.

A config file (TOML, read with the standard library's ``tomllib``)::

    models = ["din", "dmin", "camn"]   # what to run: models, seeds, seed, jobs, threads
    seeds = 5

    [train]                            # any TrainConfig field
    lr = 0.002

    [data.beauty-last]                 # the store in a folder named beauty-last
    path = "stores/beauty-last"        # relative to the current folder
    batch_size = 256

    [model.camn.options]               # camn's constructor options
    pooled_history = true

The stores run are ``--data`` when given, else the ``path`` of every ``[data.NAME]`` table. An
unknown key, a wrong type or a value out of its domain is a DataError that names the file, the
table and the key; a flag is checked by the same rule while the command line is parsed.

``--option [MODEL:]KEY=VALUE`` is the one syntax of model options on every command: with MODEL,
for that model only; without, for every model the command runs. Values are read as JSON where
they parse (``2``, ``true``, ``[200, 80]``), else as text; in command-line order, the later wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from camn.argtypes import (
    float_at_least,
    positive_finite_float,
    positive_int,
    seed_int,
)
from camn.data.raw import DataError

MONITORS = ("auc", "logloss", "auc-logloss")  # see camn.train.objective
PRECISIONS = ("fp32", "bf16")  # see camn.train.precision
# What ``camn tune`` searches of the training settings, for every model (a model class adds
# its options' own in its ``search_space``); a ``[tune.MODEL]`` table overrides any of them.
# A list is a choice among its values; a table a range, on a log scale with ``log = true``.
SEARCH_SPACE: dict[str, object] = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "embedding_l2": [0.0, 1e-7, 1e-6, 1e-5, 1e-4],
    "weight_decay": [0.0, 1e-6, 1e-5, 1e-4],
    "batch_size": [256, 512, 1024, 2048],
}
NOT_SETTINGS = ("model", "options")  # TrainConfig fields that are not flags: given otherwise
# settings that say where and how visibly a run trains, not what it computes: the runs of one
# benchmark folder may differ in them (a resumed benchmark on another machine)
VOLATILE = frozenset({"device", "progress", "tensorboard"})
# what a config file's top level and the commands' own flags say: what to run, not how to train
COMMAND_KEYS: dict[str, Callable[[str], object]] = {
    "seeds": positive_int, "seed": seed_int, "jobs": positive_int, "threads": positive_int,
}
# ``tune``: the search of ``camn tune`` (camn.experiments.tune), which the other commands skip
TOP_LEVEL = ("models", *COMMAND_KEYS, "train", "data", "model", "tune")
OPTION_SYNTAX = "expected [MODEL:]KEY=VALUE, e.g. q=2 or camn:q=2"


# ------------------------------------------------------------------------ training settings


def setting(default: object, text: str, rule: Callable[[str], object] | None = None,
            **more: object):
    """A TrainConfig field: its default and, in its metadata, the help text, the ``rule`` its
    value obeys (an argparse type: text -> value, ArgumentTypeError(reason); every int and
    float setting has one) and, for a str, its ``choices``. Flags, config files and
    TrainConfig itself check a value by this one rule."""
    return field(default=default, metadata={"help": text, "rule": rule, **more})


@dataclass
class TrainConfig:
    """How to train one model; ``options`` are the model's constructor options.

    Every field has a default, a help text and a rule in its metadata (:func:`setting`); the
    ``train`` and ``benchmark`` commands make their flags and config keys from them, and a
    value outside its rule is refused here too (ValueError). ``batch_size`` is per process:
    under torchrun with N processes a step sees N x batch_size. ``monitor``,
    ``weight_decay``, ``embedding_l2`` and ``clip_grad`` are explained in
    :mod:`camn.train.objective`, ``precision`` in :mod:`camn.train.precision`;
    ``length_buckets`` is ``store.batch_slices``'s. ``compile``: the training step's model
    under ``torch.compile``.
    """

    model: str = field(metadata={"help": "registered model name (camn models)"})
    options: dict = field(
        default_factory=dict, metadata={"help": "the model's constructor options"}
    )
    epochs: int = setting(30, "maximum epochs", positive_int)
    batch_size: int = setting(2048, "training batch size (per process under torchrun)",
                              positive_int)
    eval_batch_size: int = setting(8192, "batch size of the validation and test scoring",
                                   positive_int)
    lr: float = setting(0.002, "Adam learning rate", positive_finite_float)
    patience: int = setting(
        3, "stop after this many epochs without a better monitored validation score",
        positive_int,
    )
    monitor: str = setting(
        "auc", "validation score that picks the best epoch and drives early stopping: auc, "
        "logloss (lower is better) or auc-logloss", choices=MONITORS,
    )
    weight_decay: float = setting(
        0.0, "Adam's L2 weight decay on every parameter outside the attribute embedding "
        "table (0 = off)", float_at_least(0.0),
    )
    embedding_l2: float = setting(
        0.0, "weight of an L2 penalty on the embedding rows each batch uses (their summed "
        "squared norms), added to the loss (0 = off)", float_at_least(0.0),
    )
    clip_grad: float = setting(
        0.0, "clip the gradient's total norm to this value before each step (0 = off)",
        float_at_least(0.0),
    )
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    precision: str = setting(
        "fp32", "bf16: autocast with fp32 master weights, where the device has bf16 "
        "instructions (GPUs, CPUs with AVX512-BF16 or AMX)", choices=PRECISIONS,
    )
    length_buckets: bool = setting(
        False, "batches of similar history lengths, cut to their longest history (faster "
        "with dense rows; cost 0.01 AUC on Amazon Beauty: check validation first)"
    )
    compile: bool = setting(
        False, "torch.compile the model for training (minutes of compilation)"
    )
    progress: bool = setting(True, "a progress bar per epoch (on standard error)")
    tensorboard: bool = setting(
        False, "also write each epoch's numbers as TensorBoard scalars to "
        "seed_<s>/tensorboard (needs the tensorboard package)",
    )

    def __post_init__(self) -> None:
        for name, rule in training_settings().items():
            try:
                rule.check(getattr(self, name))
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Setting:
    """One training setting: a :class:`TrainConfig` field, as a flag and as a config key."""

    name: str
    kind: type  # int, float, str or bool
    default: object
    help: str
    rule: Callable[[str], object] | None = None  # text -> value (numbers only)
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse_text(self, text: str) -> object:
        """A command-line value (argparse ``type``), checked by the setting's rule."""
        return text if self.rule is None else self.rule(text)

    def check(self, value: object) -> object:
        """A config file's value: its type and rule checked; raises ValueError(reason)."""
        if self.kind is bool:
            if type(value) is not bool:
                raise ValueError(f"expected true or false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            if self.choices and value not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                self.kind is int and not isinstance(value, int)):
            kind = "an integer" if self.kind is int else "a number"
            raise ValueError(f"expected {kind}, got {value!r}")
        try:
            return self.parse_text(str(value))
        except argparse.ArgumentTypeError as error:
            raise ValueError(str(error)) from None


def _kind(name: str, hint: object) -> type:
    """int, float, str or bool from a field's type (``X | None`` counts as ``X``)."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if len(options) == 1 and options[0] in (int, float, str, bool):
        return options[0]  # type: ignore[return-value]
    raise TypeError(f"TrainConfig.{name}: a training setting is an int, float, str or bool, "
                    f"not {hint}")


@functools.cache
def training_settings() -> dict[str, Setting]:
    """Every training setting, in TrainConfig's field order: the one source of their names,
    defaults, help texts and rules (a field's ``metadata``, see :func:`setting`). A numeric
    field without a rule is a TypeError."""
    hints = typing.get_type_hints(TrainConfig)
    settings = {}
    for item in dataclasses.fields(TrainConfig):
        if item.name in NOT_SETTINGS:
            continue
        kind = _kind(item.name, hints[item.name])
        rule = item.metadata.get("rule")
        if kind in (int, float) and rule is None:
            raise TypeError(f"TrainConfig.{item.name}: a number needs a rule (setting(rule=))")
        choices = item.metadata.get("choices")
        settings[item.name] = Setting(item.name, kind, item.default, item.metadata["help"],
                                      rule, tuple(choices) if choices else None)
    return settings


def shown(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_training_flags(
    parser: argparse.ArgumentParser, defaults: Mapping[str, object] | None = None,
    exclude: Sequence[str] = (), config_file: bool = True,
) -> None:
    """A flag per training setting (``--weight-decay`` for ``weight_decay``; ``--X/--no-X`` for
    a bool), parsed to None when not given; the help shows the effective default (the
    command's ``defaults``, else TrainConfig's). ``config_file``: whether the command also
    takes ``--config`` (then the group's help says that the flags override it)."""
    defaults = defaults or {}
    group = parser.add_argument_group(
        "training settings", "each overrides the --config file's value for every run"
        if config_file else "each applies to every run")
    for setting in training_settings().values():
        if setting.name in exclude:
            continue
        text = f"{setting.help} (default: {shown(defaults.get(setting.name, setting.default))})"
        if setting.kind is bool:
            group.add_argument(setting.flag, dest=setting.name, default=None, help=text,
                               action=argparse.BooleanOptionalAction)
        else:
            group.add_argument(setting.flag, dest=setting.name, default=None, help=text,
                               type=setting.parse_text, choices=setting.choices,
                               metavar=None if setting.choices else setting.name.upper())


def given_settings(args: argparse.Namespace) -> dict[str, object]:
    """The training settings given on the command line (flags left out are None)."""
    return {name: getattr(args, name) for name in training_settings()
            if getattr(args, name, None) is not None}


# ---------------------------------------------------------------------------- model options


def parse_value(text: str) -> object:
    """JSON where it parses (``2``, ``true``, ``[200, 80]``), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(
    items: Sequence[str], models: Sequence[str], *, check: bool = True
) -> dict[str, dict]:
    """``--option [MODEL:]KEY=VALUE`` items -> {model: {key: value}} for the ``models`` run.
    Without MODEL an option is every model's; the later item wins. ``check``: against each
    model's signature (names, types, domains) now; a caller that knows the store checks them
    against it instead (bounds such as ``q <= k`` need the store)."""
    from camn.models.registry import check_options

    options: dict[str, dict] = {}
    for item in items:
        head, equals, text = item.partition("=")
        model, _, key = head.rpartition(":")
        if not equals or not key:
            raise DataError(f"--option {item!r}: {OPTION_SYNTAX}")
        if model and model not in models:
            raise DataError(f"--option {item!r} is for model {model!r}, which is not run "
                            f"({', '.join(models)})")
        for name in [model] if model else models:
            options.setdefault(name, {})[key] = parse_value(text)
    for name, values in options.items() if check else ():
        check_options(name, values)
    return options


# --------------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class Layer:
    """Training settings and model options from one source, for the runs it covers."""

    settings: Mapping[str, object] = field(default_factory=dict)
    options: Mapping[str, object] = field(default_factory=dict)
    store: str | None = None  # the folder name of the store it covers; None: every store
    model: str | None = None  # the model it covers; None: every model

    def covers(self, store: str, model: str) -> bool:
        return self.store in (None, store) and self.model in (None, model)


def store_name(path: str | Path) -> str:
    """The name a ``[data.NAME]`` table goes by: the store's folder name."""
    return Path(path).resolve().name


def resolve(layers: Sequence[Layer], store: str | Path, model: str) -> TrainConfig:
    """The TrainConfig of one run: TrainConfig's defaults, then every layer covering it."""
    name = store_name(store)
    settings: dict[str, object] = {}
    options: dict[str, object] = {}
    for layer in layers:
        if layer.covers(name, model):
            settings.update(layer.settings)
            options.update(layer.options)
    try:
        return TrainConfig(model=model, options=options, **settings)
    except ValueError as error:  # a combination that TrainConfig refuses
        raise DataError(f"the settings of {model} on {store}: {error}") from None


class Settings:
    """The layered training settings of a command's runs; :meth:`config` resolves one run's.

    ``Settings(*layers)`` takes layers as :func:`plan` builds them; keyword settings
    (``epochs=2``) and ``options`` ({model: {key: value}}) add one layer on top of them.
    ``verbose``: whether a benchmark shows each run's per-epoch lines.
    """

    def __init__(self, *layers: Layer, options: Mapping[str, Mapping] | None = None,
                 verbose: bool = True, **settings: object) -> None:
        unknown = sorted(set(settings) - set(training_settings()))
        if unknown:
            raise TypeError(f"not training settings: {unknown}")
        given = [Layer(dict(settings))] if settings else []
        given += [Layer(options=dict(values), model=model)
                  for model, values in (options or {}).items()]
        self.layers: tuple[Layer, ...] = (*layers, *given)
        self.verbose = verbose

    def config(self, store: str | Path, model: str) -> TrainConfig:
        return resolve(self.layers, store, model)


# ------------------------------------------------------------------------------ config files


@dataclass(frozen=True)
class ConfigFile:
    """A parsed and checked ``--config`` file."""

    path: str
    text: str
    command: dict[str, object]  # models, seeds, seed, jobs, threads given at the top level
    layers: tuple[Layer, ...]  # [train], then each [data.NAME], then each [model.NAME]
    stores: dict[str, str | None]  # NAME of each [data.NAME] -> its path (None: not given)

    @classmethod
    def read(cls, path: str | Path) -> ConfigFile:
        path = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except OSError as error:
            raise DataError(f"--config {path}: cannot be read ({error.strerror})") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise DataError(f"{path} is not a valid TOML file: {error}") from None
        return _parse(path, text, data)


def _fail(path: str, where: str, message: str) -> DataError:
    return DataError(f"{path} {where}: {message}")


def _table(path: str, where: str, value: object) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, where, f"expected a table, got {value!r}")
    return value


def _settings(path: str, where: str, table: Mapping, extra: Sequence[str] = ()) -> dict:
    """The training settings of one table, checked; keys in ``extra`` are left to the caller."""
    known = training_settings()
    out = {}
    for key, value in table.items():
        if key in extra:
            continue
        if key not in known:
            allowed = ", ".join([*extra, *known])
            raise _fail(path, where, f"unknown key {key!r} (a training setting: {allowed})")
        try:
            out[key] = known[key].check(value)
        except ValueError as error:
            raise _fail(path, where, f"{key}: {error}") from None
    return out


def _models_value(path: str, value: object) -> list[str]:
    names = value.split(",") if isinstance(value, str) else value
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise _fail(path, "models", f"expected a list of model names, got {value!r}")
    return [n.strip() for n in names if n.strip()]


def _parse(path: str, text: str, data: dict) -> ConfigFile:
    unknown = [key for key in data if key not in TOP_LEVEL]
    if unknown:
        raise _fail(path, "(top level)", f"unknown key {unknown[0]!r} (known: "
                    f"{', '.join(TOP_LEVEL)})")
    train = Layer(_settings(path, "[train]", _table(path, "[train]", data.get("train", {}))))
    stores, data_layers = _data_tables(path, _table(path, "[data]", data.get("data", {})))
    model_layers = _model_tables(path, _table(path, "[model]", data.get("model", {})))
    return ConfigFile(path, text, _command_keys(path, data),
                      (train, *data_layers, *model_layers), stores)


def _command_keys(path: str, data: Mapping) -> dict[str, object]:
    """The top level's models, seeds, seed, jobs and threads, checked."""
    command: dict[str, object] = {}
    if "models" in data:
        command["models"] = _models_value(path, data["models"])
    for key, domain in COMMAND_KEYS.items():
        if key in data:
            value = data[key]
            try:
                if type(value) is not int:
                    raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
                command[key] = domain(str(value))
            except argparse.ArgumentTypeError as error:
                raise _fail(path, key, str(error)) from None
    return command


def _data_tables(path: str, tables: Mapping) -> tuple[dict[str, str | None], list[Layer]]:
    """Each ``[data.NAME]``: its store's path (None when not given) and its layer."""
    stores: dict[str, str | None] = {}
    layers = []
    for name, table in tables.items():
        where = f"[data.{name}]"
        table = _table(path, where, table)
        store = table.get("path")
        if store is not None and not (isinstance(store, str) and store_name(store) == name):
            raise _fail(path, where, f"path {store!r} must name a folder called {name!r} "
                        "(a [data.NAME] table is the store in the folder NAME)")
        stores[name] = store
        layers.append(Layer(_settings(path, where, table, ["path"]), store=name))
    return stores, layers


def _model_tables(path: str, tables: Mapping) -> list[Layer]:
    """Each ``[model.NAME]``: its training settings and ``options``, checked (the options
    against the model's signature; against a store once one is known)."""
    from camn.models.registry import check_options, model_names

    registered = model_names()
    layers = []
    for name, table in tables.items():
        where = f"[model.{name}]"
        if name not in registered:
            raise _fail(path, where, f"unknown model {name!r}; registered: "
                        f"{', '.join(registered)}")
        table = _table(path, where, table)
        options_where = f"[model.{name}.options]"
        options = _table(path, options_where, table.get("options", {}))
        try:
            check_options(name, options)
        except DataError as error:
            raise _fail(path, options_where, str(error)) from None
        layers.append(Layer(_settings(path, where, table, ["options"]), options=options,
                            model=name))
    return layers


# ---------------------------------------------------------------------------- a command's plan


@dataclass(frozen=True)
class Plan:
    """What a command runs, resolved from its flags, its ``--config`` file and its defaults."""

    stores: list[str]
    models: list[str]
    seeds: list[int]
    jobs: int
    threads: int | None
    settings: Settings
    config_file: ConfigFile | None


def plan(
    args: argparse.Namespace,
    defaults: Mapping[str, object],
    expand_models: Callable[[list[str]], list[str]],
    *,
    need_stores: bool = True,
    check_options: bool = True,
) -> Plan:
    """Resolve a command's arguments: ``args.config`` (a file or None), ``args.data`` (a path,
    paths or None), ``args.models`` or ``args.model`` (names or None), the
    :data:`COMMAND_KEYS`, the training flags and ``args.option``. ``defaults`` holds the
    command's own defaults (command keys, models, training settings that differ from
    TrainConfig's); ``expand_models`` turns the names given into the models run (checked);
    ``check_options``: see :func:`parse_options`."""
    file = ConfigFile.read(args.config) if getattr(args, "config", None) else None
    given = file.command if file else {}

    def pick(key: str) -> object:
        value = getattr(args, key, None)
        return value if value is not None else given.get(key, defaults.get(key))

    names = getattr(args, "models", None) or getattr(args, "model", None) or given.get(
        "models", defaults.get("models"))
    if not names:
        raise DataError("no model given: pass it on the command line or as `models` in a "
                        "--config file")
    models = expand_models(names.split(",") if isinstance(names, str) else list(names))
    stores = _stores(getattr(args, "data", None), file) if need_stores else []
    bottom = {k: v for k, v in defaults.items() if k in training_settings()}
    layers = [Layer(bottom)] if bottom else []
    layers += list(file.layers) if file else []
    layers.append(Layer(given_settings(args)))
    layers += [Layer(options=values, model=model)
               for model, values in parse_options(getattr(args, "option", None) or [], models,
                                                  check=check_options).items()]
    seed, count = int(pick("seed")), int(pick("seeds"))  # type: ignore[call-overload]
    threads = pick("threads")
    return Plan(stores, models, list(range(seed, seed + count)), int(pick("jobs") or 1),
                None if threads is None else int(threads),  # type: ignore[call-overload]
                Settings(*layers), file)


def _stores(data: str | Sequence[str] | None, file: ConfigFile | None) -> list[str]:
    """``--data`` when given (each store's folder name must have its table in a file that has
    ``[data.NAME]`` tables), else the file's stores."""
    if data:
        stores = [data] if isinstance(data, str) else list(data)
        if file and file.stores:
            for store in stores:
                if store_name(store) not in file.stores:
                    raise DataError(
                        f"store {store}: {file.path} has no [data.{store_name(store)}] table "
                        f"(it has {', '.join(f'[data.{n}]' for n in file.stores)}); a table "
                        "covers the store in the folder of its name")
        return stores
    if not file or not file.stores:
        raise DataError("no store given: pass --data, or a --config file with [data.NAME] "
                        "tables")
    missing = [name for name, path in file.stores.items() if path is None]
    if missing:
        raise DataError(f"{file.path} [data.{missing[0]}]: no path; give it, or pass --data")
    return [path for path in file.stores.values() if path is not None]
