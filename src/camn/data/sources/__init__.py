"""Data sources: one module a format, found automatically.

A source module defines ``NAME`` (the ``camn prepare`` sub-command), ``HELP`` (one line),
``add_arguments(parser)`` and ``read(*, report=None, **options) -> RawData``, a library function
whose keyword arguments are named as its flags' destinations (``--user-col`` is ``user_col``;
``seed`` is ``camn prepare --seed``): the command line maps its flags onto them
(:func:`camn.cli.source_options`). Adding a format is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def available_sources() -> dict[str, ModuleType]:
    """Every source module of this package, keyed by its NAME, in sorted order."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found[module.NAME] = module
    return found
