"""Model registry: ``@register("name", **preset)`` on a model class; ``build_model`` by name.

A class can be registered under several names with preset options (CAMN's ablations).
Every option is a keyword argument of the class's ``__init__``; ``resolved_options`` gives the
full set with defaults, which the trainer saves next to the weights.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass

from camn.models.base import CTRModel, FeatureSpec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[CTRModel]
    preset: dict
    summary: str


_MODELS: dict[str, ModelEntry] = {}


def register(name: str, summary: str = "", **preset):
    """Class decorator registering ``cls`` as ``name`` with preset options."""

    def decorate(cls: type[CTRModel]) -> type[CTRModel]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} registered twice")
        doc = (cls.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelEntry(name, cls, dict(preset), summary or (doc[0] if doc else ""))
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


def resolved_options(name: str, **options) -> dict:
    """All constructor options of model ``name``: defaults < preset < ``options``."""
    entry = get_entry(name)
    parameters = inspect.signature(entry.cls.__init__).parameters
    defaults = {
        key: p.default
        for key, p in parameters.items()
        if key not in {"self", "spec"} and p.default is not inspect.Parameter.empty
    }
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(
            f"model {name!r} has no option(s) {sorted(unknown)}; it takes {sorted(defaults)}"
        )
    return {**defaults, **entry.preset, **options}


def build_model(name: str, spec: FeatureSpec, **options) -> CTRModel:
    entry = get_entry(name)
    return entry.cls(spec, **resolved_options(name, **options))
