"""Model registry: ``@register("name", **preset)`` on a model class; ``build_model`` by name.

A class can be registered under several names with preset options (CAMN's ablations). The
registry also says how tables show a model: its display name (``display=`` on a class's base
name; a preset ``<base>-<suffix>`` shows as ``<Display>-<suffix>``) and the model a preset is
an ablation of (``ablation_of=``), which groups Table 3's rows.
Every option is a keyword argument of the class's ``__init__``; ``resolved_options`` gives the
full set with defaults, which the trainer saves next to the weights.

User-given options (``camn train --option``, ``camn benchmark --option``) go through
:func:`check_options` before any work: each value against the type of its ``__init__`` parameter
(the annotation, else the type of the default), then against the domain that :data:`DOMAINS`
(or the model class's ``option_domains``) declares for the option's name, then, given the
store's spec, by building the model once. Every problem becomes one
:class:`~camn.data.raw.DataError` that names the model and the option.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from camn.data.raw import DataError
from camn.models.base import CTRModel, FeatureSpec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[CTRModel]
    preset: dict
    summary: str
    display: str = ""  # the name in tables; empty: derived (display_name)
    ablation_of: str | None = None  # the model this preset ablates (a Table 3 row of it)


_MODELS: dict[str, ModelEntry] = {}


def register(name: str, summary: str = "", *, display: str = "", ablation_of: str | None = None,
             **preset):
    """Class decorator registering ``cls`` as ``name`` with preset options; ``display`` names it
    in tables, ``ablation_of`` the model whose Table 3 rows it joins."""

    def decorate(cls: type[CTRModel]) -> type[CTRModel]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} registered twice")
        doc = (cls.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelEntry(name, cls, dict(preset), summary or (doc[0] if doc else ""),
                                   display, ablation_of)
        return cls

    return decorate


def _load_all() -> None:
    import camn.models as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in {"base", "layers", "registry"}:
            importlib.import_module(f"camn.models.{info.name}")


def model_entries() -> dict[str, ModelEntry]:
    _load_all()
    return dict(_MODELS)


def model_names() -> list[str]:
    return list(model_entries())


def get_entry(name: str) -> ModelEntry:
    entries = model_entries()
    if name not in entries:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(entries)}")
    return entries[name]


def display_name(name: str) -> str:
    """How tables name model ``name``: its own ``display``, else that of the name of its class
    it extends (``camn-dense-route`` -> "CAMN" + "-dense-route"), else ``name`` itself (also for
    a name that is not registered)."""
    entries = model_entries()
    entry = entries.get(name)
    if entry is None or entry.display:
        return name if entry is None else entry.display
    bases = [other for other in entries.values() if other.cls is entry.cls and other.display
             and name.startswith(f"{other.name}-")]
    if not bases:
        return name
    base = max(bases, key=lambda other: len(other.name))
    return base.display + name.removeprefix(base.name)


def ablations() -> dict[str, list[str]]:
    """Each model that has registered ablations -> their names, sorted; ValueError where an
    ``ablation_of`` names no registered model."""
    entries = model_entries()
    out: dict[str, list[str]] = {}
    for entry in entries.values():
        if entry.ablation_of is None:
            continue
        if entry.ablation_of not in entries:
            raise ValueError(f"model {entry.name!r} is registered as an ablation of "
                             f"{entry.ablation_of!r}, which is not a registered model")
        out.setdefault(entry.ablation_of, []).append(entry.name)
    return {model: sorted(names) for model, names in out.items()}


def _defaults(entry: ModelEntry) -> dict:
    parameters = inspect.signature(entry.cls.__init__).parameters
    return {
        key: p.default
        for key, p in parameters.items()
        if key not in {"self", "spec"} and p.default is not inspect.Parameter.empty
    }


def resolved_options(name: str, **options) -> dict:
    """All constructor options of model ``name``: defaults < preset < ``options``."""
    entry = get_entry(name)
    defaults = _defaults(entry)
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(
            f"model {name!r} has no option(s) {sorted(unknown)}; it takes {sorted(defaults)}"
        )
    return {**defaults, **entry.preset, **options}


def build_model(name: str, spec: FeatureSpec, **options) -> CTRModel:
    entry = get_entry(name)
    return entry.cls(spec, **resolved_options(name, **options))


# ------------------------------------------------------------------------ checking user options

# A domain check: (value, the store's spec or None) -> why the value is refused, or None.
# Spec-dependent bounds (the number of attributes k) are checked only when a spec is given.
Domain = Callable[[float, FeatureSpec | None], str | None]


def at_least(low: float) -> Domain:
    return lambda value, spec: None if value >= low else f"must be at least {low}"


def above(low: float) -> Domain:
    return lambda value, spec: None if value > low else f"must be above {low}"


def slot_range(low: int, below_k: int) -> Domain:
    """``low <= value <= k - below_k``, k the store's number of attributes (known from a spec)."""
    top = "k" if below_k == 0 else f"k - {below_k}"

    def check(value: float, spec: FeatureSpec | None) -> str | None:
        if value >= low and (spec is None or value <= spec.num_slots - below_k):
            return None
        known = "" if spec is None else f" = {spec.num_slots - below_k}"
        return f"must be between {low} and {top}{known} (k: the store's number of attributes)"

    return check


def widths(value: float, spec: FeatureSpec | None) -> str | None:
    return None if value >= 1 else "every layer width must be at least 1"


# What an option of this name may be, in every model that has it (an option name means one
# thing across models). A model declares the domains of its own other numeric options in its
# class's ``option_domains`` (built with at_least, above, slot_range, widths), so that a new
# model is one new file; every numeric option of the package's models has one (a test checks).
DOMAINS: dict[str, Domain] = {
    "embed_dim": at_least(1),
    "q": slot_range(1, 0),  # routing keeps the q top attributes
    "alpha": at_least(0),
    "aux_weight": at_least(0),
    "tie_weight": at_least(0),
    "refiner_heads": at_least(1),
    "num_interests": at_least(1),
    "interest_dim": at_least(1),
    "hidden_factor": at_least(1),
    "iterations": at_least(1),
    "init_std": above(0),
    "pow_p": at_least(0),
    "group_slot": slot_range(0, 1),  # a slot index
    "cross_buckets": at_least(0),
    "mlp_hidden": widths,
    "attention_hidden": widths,
    "aux_hidden": widths,
}


def option_types(name: str) -> dict[str, object]:
    """Option -> its type: the ``__init__`` annotation, else the type of its default (``object``,
    anything goes, for a default of None)."""
    entry = get_entry(name)
    try:
        hints = typing.get_type_hints(entry.cls.__init__)
    except (NameError, TypeError):  # an annotation naming a type imported only for type checkers
        hints = {}
    return {key: hints.get(key, _type_of(default)) for key, default in _defaults(entry).items()}


def _type_of(default: object) -> object:
    if isinstance(default, list | tuple):
        return Sequence[_type_of(default[0])] if default else Sequence
    return object if default is None else type(default)


def _is_sequence(hint: object) -> bool:
    return hint is Sequence or typing.get_origin(hint) in {Sequence, list, tuple}


def _accepts(hint: object, value: object) -> bool:
    """Whether a JSON-parsed ``value`` is of type ``hint`` (unknown types accept anything)."""
    if typing.get_origin(hint) in {typing.Union, types.UnionType}:
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an integer is a float too; NaN and infinities are not
        return isinstance(value, int | float) and not isinstance(value, bool) and (
            not isinstance(value, float) or math.isfinite(value)
        )
    if hint is str:
        return isinstance(value, str)
    if _is_sequence(hint):
        item = (typing.get_args(hint) or (object,))[0]
        return isinstance(value, list | tuple) and all(_accepts(item, v) for v in value)
    return True


def _expected(hint: object, default: object = None) -> str:
    """``hint`` in words: 'a float', 'an integer or null', 'a list of integers such as [1, 2]'."""
    if typing.get_origin(hint) in {typing.Union, types.UnionType}:
        return " or ".join(_expected(h) for h in typing.get_args(hint))
    words = {type(None): "null", bool: "true or false", int: "an integer", float: "a float",
             str: "a string"}
    if _is_sequence(hint):
        item = (typing.get_args(hint) or (object,))[0]
        plural = {int: "integers", float: "floats", str: "strings"}.get(item, "values")
        example = f" such as {json.dumps(list(default))}" if default else ""
        return f"a list of {plural}{example}"
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def _described(value: object) -> str:
    """A JSON-parsed option value in words: 'the string 'x'', 'the number 2.5', 'null'."""
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return f"the non-finite number {json.dumps(value)}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    kind = {list: "list", dict: "object"}.get(type(value), type(value).__name__)
    return f"the {kind} {json.dumps(value, default=str)}"


def _shown(key: str, value: object) -> str:
    """``key=value`` as the user wrote it (JSON for anything that is not a string)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value, default=str)}"


def option_domains(name: str) -> dict[str, Domain]:
    """The domains of model ``name``'s options: :data:`DOMAINS`, then its class's own."""
    return DOMAINS | get_entry(name).cls.option_domains


def _problem(key: str, value: object, hint: object, default: object,
             spec: FeatureSpec | None, domain: Domain | None) -> str | None:
    """Why option ``key=value`` is refused, or None."""
    if not _accepts(hint, value):
        return f"expected {_expected(hint, default)}, got {_described(value)}"
    numbers = value if isinstance(value, list | tuple) else [value]
    for number in numbers:
        if domain is not None and isinstance(number, int | float) and not isinstance(number, bool):
            reason = domain(number, spec)
            if reason:
                return reason
    return None


def check_options(
    name: str, options: Mapping[str, object], spec: FeatureSpec | None = None
) -> dict:
    """Check user-given ``options`` of model ``name``; returns all its options resolved.

    Without ``spec`` only what holds for every store is checked (names, types, domains); with it
    also the bounds that depend on the store (``q <= k``) and whatever the model itself refuses
    when it is built once on ``spec``. Raises DataError naming the model and each bad option.
    """
    try:
        entry = get_entry(name)
    except KeyError as error:
        raise DataError(error.args[0]) from None
    defaults, hints = _defaults(entry), option_types(name)
    unknown = [key for key in options if key not in defaults]
    if unknown:
        raise DataError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
                        f"it takes {', '.join(sorted(defaults))}")
    domains = option_domains(name)
    problems = [
        f"option {_shown(key, value)}: {reason}"
        for key, value in options.items()
        if (reason := _problem(key, value, hints[key], defaults[key], spec, domains.get(key)))
    ]
    if problems:
        raise DataError(f"model {name!r}: " + "; ".join(problems))
    resolved = resolved_options(name, **options)
    if spec is not None:
        try:
            entry.cls(spec, **resolved)
        except (ValueError, TypeError, RuntimeError) as error:
            given = ", ".join(_shown(key, value) for key, value in options.items()) or "none"
            raise DataError(f"model {name!r} (options given: {given}): {error}") from None
    return resolved
