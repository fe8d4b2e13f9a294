"""The package's layers: every module's camn imports point down, never up, and form no cycle.

Layers, bottom first (docs/architecture.md draws them):

1. ``data``: reading, preparing and storing data, and what every layer writes with (value rules
   of ``argtypes``, ``outputs``, the run folder's layout);
2. ``models``: the registry, the shared layers and one model a file;
3. ``train``: the configuration, the trainer and what it records (results, statistics,
   provenance);
4. ``api``: what a Python caller uses besides the trainer: ``camn.load`` (``predict``, the id
   ``encoding``) and the experiments' tables, plots and benchmark runner;
5. ``cli``: the ``camn`` command and each command's argument parsing and printing.

A module may import its own layer or any below it. Every import counts, those inside a function
(imported late to keep start-up cheap) and under ``TYPE_CHECKING`` too. The package's root,
``camn/__init__.py``, holds ``__version__`` (imported anywhere) and ``camn.load`` (which imports
``predict`` when called): it is the front door, not a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
LAYERS = ("data", "models", "train", "api", "cli")
# module (or package prefix) -> layer; the longest matching prefix wins
PLACES = {
    "camn.data": "data",
    "camn.argtypes": "data",
    "camn.outputs": "data",
    "camn.run_folder": "data",
    "camn.models": "models",
    "camn.config": "train",
    "camn.train": "train",
    "camn.results": "train",
    "camn.stats": "train",
    "camn.provenance": "train",
    "camn.encoded_rows": "api",
    "camn.encoding": "api",
    "camn.predict": "api",
    "camn.experiments": "api",
    "camn.cli": "cli",
    "camn.__main__": "cli",
    "camn.train.commands": "cli",
    "camn.score": "cli",
    "camn.explain": "cli",
    "camn.export": "cli",
    "camn.experiments.benchmark": "cli",
    "camn.experiments.demo": "cli",
    "camn.experiments.tune": "cli",
}
ROOT = "camn"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / "camn").rglob("*.py"))}


def layer_of(module: str) -> str:
    matches = [p for p in PLACES if module == p or module.startswith(p + ".")]
    if not matches:
        raise AssertionError(f"{module} has no layer: add it to PLACES in {__file__}")
    return PLACES[max(matches, key=len)]


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The camn modules that ``path`` (module ``name``) imports, resolved to modules of the
    package (``from camn.x import y`` counts as camn.x.y where that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names
                      if f"{base}.{alias.name}" in known}
    return {module for module in found if module in known and module != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, name, known) for name, path in found.items()}


def test_every_module_has_a_layer() -> None:
    for name in modules():
        if name != ROOT:
            layer_of(name)


def test_imports_point_down_the_layers() -> None:
    upward = []
    for name, targets in graph().items():
        if name == ROOT:
            continue
        rank = LAYERS.index(layer_of(name))
        for target in sorted(targets - {ROOT}):
            if LAYERS.index(layer_of(target)) > rank:
                upward.append(f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_library_imports_no_command_line_module() -> None:
    """What a Python caller uses (every layer but cli) never imports argparse front ends."""
    cli = {name for name in modules() if name != ROOT and layer_of(name) == "cli"}
    library = {name for name in modules() if name != ROOT and layer_of(name) != "cli"}
    offending = {name: sorted(targets & cli) for name, targets in graph().items()
                 if name in library and targets & cli}
    assert not offending


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_there_is_no_import_cycle() -> None:
    # a package imports its own modules to re-export them; that is no cycle of the code
    edges = {name: {t for t in targets if not (t.startswith(name + ".")) and t != ROOT}
             for name, targets in graph().items() if name != ROOT}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(("edges", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a"}}, ["a", "a"]),
])
def test_find_cycle_finds_a_cycle_when_there_is_one(edges, expected) -> None:
    assert find_cycle(edges) == expected


def test_a_module_that_imports_upwards_is_named(tmp_path: Path) -> None:
    """The parser sees imports inside functions and ``from`` imports of modules."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from camn.train import loop\n    import camn.cli\n")
    known = {"camn.train", "camn.train.loop", "camn.cli"}
    assert imports(source, "camn.data.m", known) == {"camn.train", "camn.train.loop", "camn.cli"}


def test_every_source_reads_its_flags_as_keyword_arguments() -> None:
    """A source's ``read`` is a library function: keyword-only arguments named as its flags'
    destinations (what ``camn prepare`` maps them onto), and ``report``."""
    import argparse
    import inspect

    from camn.data.sources import available_sources

    for name, module in available_sources().items():
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        flags = {action.dest for action in parser._actions if action.dest != "help"}
        parameters = inspect.signature(module.read).parameters
        kinds = {p.kind for p in parameters.values()}
        assert kinds <= {inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD}, name
        assert "report" in parameters, name
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            assert flags <= set(parameters), f"{name}: flags without a keyword: " \
                f"{sorted(flags - set(parameters))}"
