"""No model module imports another model module: shared pieces live in ``layers``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import camn.models

PACKAGE = "camn.models"
SHARED = {"layers", "base", "registry"}  # what a model module may import from the package
MODELS_DIR = Path(camn.models.__file__).parent
MODULES = sorted(path.stem for path in MODELS_DIR.glob("*.py") if path.stem != "__init__")
LAYERS = sorted((MODELS_DIR / "layers").glob("*.py"))  # the shared layers, a package


def source(name: str) -> str:
    """The text of module ``name`` of the package (every file of it for the layers)."""
    paths = LAYERS if name == "layers" else [MODELS_DIR / f"{name}.py"]
    return "\n".join(path.read_text() for path in paths)


def package_imports(source: str) -> set[str]:
    """The modules of ``camn.models`` that ``source`` (a module of that package) imports, by
    any form: ``import camn.models.x``, ``from camn.models.x import ...``, ``from camn.models
    import x``, and the relative ``from .x import ...`` / ``from . import x``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name.split(".")[2])
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:  # relative to camn.models
                module = f"{PACKAGE}.{module}" if module else PACKAGE
            if module == PACKAGE:  # from camn.models import x: x may be a module
                found |= {alias.name for alias in node.names if alias.name in MODULES}
            elif module.startswith(PACKAGE + "."):
                found.add(module.split(".")[2])
    return found


def test_the_check_sees_every_form_of_import() -> None:
    source = "\n".join([
        "import camn.models.dmin",
        "from camn.models.din import item_vectors",
        "from camn.models import mind, FeatureSpec",
        "from .wide_deep import POOLS",
        "from . import dien",
        "from camn.models.layers import OutputHead",
        "import torch",
        "def late():\n    from camn.models.camn import CAMN",
    ])
    assert package_imports(source) == {"dmin", "din", "mind", "wide_deep", "dien", "layers",
                                       "camn"}


def test_the_package_has_model_modules() -> None:
    assert {"din", "dien", "dmin", "camn", "camn_standalone", "mind", "pnn"} <= set(MODULES)


@pytest.mark.parametrize("name", [m for m in MODULES if m not in SHARED])
def test_a_model_module_imports_only_the_shared_modules(name: str) -> None:
    imported = package_imports(source(name))
    assert imported <= SHARED, f"models/{name}.py imports {sorted(imported - SHARED)}"


@pytest.mark.parametrize("name", sorted(SHARED))
def test_the_shared_modules_import_no_model_module(name: str) -> None:
    imported = package_imports(source(name))
    assert imported <= SHARED, f"models/{name} imports {sorted(imported - SHARED)}"


def test_the_layers_package_is_read_file_by_file() -> None:
    assert {"attention", "dmin", "embeddings", "packing", "routing"} <= {p.stem for p in LAYERS}
