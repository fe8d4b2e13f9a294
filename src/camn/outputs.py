"""Where camn may write, and what it may delete: the one check behind every ``--out``.

camn deletes only what it wrote itself. An existing folder counts as camn's when every entry in
it is one that camn writes there (the layouts below, a run's from :mod:`camn.run_folder`; a
symbolic link never is) and its marker file parses as camn's: ``schema.json`` of a prepared
store, ``results.json`` or a ``seed_N/config.json`` of a ``camn train`` run, ``benchmark.json``
of a benchmark. A single foreign file makes the whole folder foreign, and camn then neither
writes into it nor deletes anything in it. A single output
file (``camn export``, ``camn score``) is checked by :func:`check_output_file`: never an input,
never inside an input or a camn output folder, and replaced only when it is a file of its kind
that camn wrote.

:func:`check_output` runs before any work (before a large input is read); it touches nothing.
:func:`replacing` writes a new output into a temporary sibling folder and swaps it in at the end,
so a failed or interrupted command leaves the earlier output as it was. :func:`remove_owned`
deletes camn's own files and folders one by one, never a whole tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from camn.data.raw import DataError
from camn.run_folder import FILE, RUN_LAYOUT, RUN_RESULTS, SEED_LAYOUT, Layout, RunFolder

STORE, RUN, BENCHMARK, DEMO, SEED = "store", "run", "benchmark", "demo", "seed"
DESCRIPTION = {
    STORE: "a prepared store",
    RUN: "a camn train run folder",
    BENCHMARK: "a camn benchmark folder",
    DEMO: "a camn demo folder",
    SEED: "a saved model folder",
}
CHOOSE = "choose a new or empty folder"

STORE_LAYOUT: Layout = {
    "schema.json": FILE, "users.txt": FILE, "arrays": {r".+\.npy": FILE},
    "vocab": {r".+\.txt": FILE},
}
BENCHMARK_LAYOUT: Layout = {
    "benchmark.json": FILE, "results.jsonl": FILE, "results.csv": FILE, "table.md": FILE,
    "summary.json": FILE,
    "auc.png": FILE, "runs": {r".+": {r".+": {r"seed-?\d+": SEED_LAYOUT}}},
}
DEMO_LAYOUT: Layout = {"data": {"synthetic-last": STORE_LAYOUT}, "benchmark": BENCHMARK_LAYOUT}
LAYOUTS = {STORE: STORE_LAYOUT, RUN: RUN_LAYOUT, BENCHMARK: BENCHMARK_LAYOUT,
           DEMO: DEMO_LAYOUT, SEED: SEED_LAYOUT}
MARKERS = {STORE: "schema.json", RUN: RUN_RESULTS, BENCHMARK: "benchmark.json"}


def walk(root: Path, layout: Layout) -> tuple[list[Path], list[Path]]:
    """(owned, foreign) entries under ``root``: owned ones in deletion order (a folder after its
    contents); foreign ones are the topmost entries that the layout does not allow."""
    owned: list[Path] = []
    foreign: list[Path] = []
    for entry in sorted(root.iterdir()):
        rule = next((r for r in layout if re.fullmatch(r, entry.name)), "")
        sub = layout.get(rule, FILE)
        if not rule or entry.is_symlink():
            foreign.append(entry)
        elif sub is FILE and entry.is_file():
            owned.append(entry)
        elif sub is not FILE and entry.is_dir():
            inner, strange = walk(entry, sub)
            owned += [*inner, entry]
            foreign += strange
        else:
            foreign.append(entry)
    return owned, foreign


def _json_has(path: Path, *keys: str) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and all(key in data for key in keys)


def signed(root: Path, kind: str) -> bool:
    """Whether ``root``'s marker file is camn's (a demo or saved model folder has none)."""
    if kind == STORE:
        return _json_has(root / "schema.json", "schema_version", "attributes")
    if kind == RUN:
        run = RunFolder(root)
        return _json_has(run.results, "model", "seeds") or any(
            _json_has(seed.config, "model", "spec") for seed in run.seed_folders()
        )
    if kind == BENCHMARK:
        return _json_has(root / "benchmark.json", "settings")
    return True


def identify(root: Path) -> str | None:
    """Which camn output the existing folder ``root`` is, or None when it is not camn's."""
    for kind in (STORE, RUN, BENCHMARK):
        if signed(root, kind) and not walk(root, LAYOUTS[kind])[1]:
            return kind
    return None


def _names(root: Path, paths: list[Path], shown: int = 3) -> str:
    names = [str(p.relative_to(root)) for p in paths]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _foreign_reason(root: Path, kind: str) -> str:
    foreign = walk(root, LAYOUTS[kind])[1]
    if foreign:
        return f"holds files camn did not write ({_names(root, foreign)})"
    return f"has no {MARKERS[kind]} written by camn"


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _refuse_special(where: str, real: Path, inputs: Iterable[str | Path]) -> None:
    """The folders that are never an output: root, home, the current folder, an input's."""
    if real == Path(real.anchor):
        raise DataError(f"{where} is the filesystem root; {CHOOSE}")
    if real == Path(os.path.expanduser("~")).resolve():
        raise DataError(f"{where} is your home folder; {CHOOSE}")
    cwd = Path.cwd().resolve()
    if real == cwd:
        raise DataError(f"{where} is the current folder; {CHOOSE}")
    if _is_within(cwd, real):
        raise DataError(f"{where} contains the current folder; {CHOOSE}")
    for item in inputs:
        source = Path(item).resolve()
        if real == source:
            raise DataError(f"{where} is the input {item}; {CHOOSE}")
        if _is_within(source, real):
            raise DataError(f"{where} contains the input {item}; {CHOOSE}")


def _refuse_nested(where: str, real: Path, choose: str = CHOOSE, place: str = "folder") -> None:
    """An output never goes inside another camn output (it would make that one foreign), nor
    below a file (found now, not when the work is done)."""
    for folder in real.parents:
        if folder.exists() and not folder.is_dir():
            raise DataError(f"{where}: {folder} is a file, not a folder; {choose}")
        for kind in (STORE, RUN, BENCHMARK):
            if signed(folder, kind):
                raise DataError(f"{where} is inside {DESCRIPTION[kind]}, {folder}; "
                                f"choose a {place} outside it")


def check_output(
    out: str | Path,
    kind: str,
    *,
    force: bool = False,
    inputs: Iterable[str | Path] = (),
    option: str = "--out",
) -> Path:
    """Refuse with a DataError unless camn may write ``kind`` at ``out``; touches nothing.

    Allowed: a path that does not exist yet, an empty folder, and a folder that already is a
    ``kind`` written by camn (a store or run only with ``force``; a benchmark or demo folder is
    resumed). Refused: everything else, and always the filesystem root, the home folder, the
    current folder or one containing it, an ``inputs`` path or a folder containing one, a
    symbolic link, and a path inside another camn output.
    """
    path = Path(out)
    where = f"{option} {out}"
    real = path.resolve()
    _refuse_special(where, real, inputs)
    if path.is_symlink():
        raise DataError(f"{where} is a symbolic link (to {os.readlink(path)}); camn replaces "
                        f"only a folder it wrote itself; {CHOOSE}")
    if path.exists() and not path.is_dir():
        raise DataError(f"{where} is a file, not a folder; camn will not replace it; {CHOOSE}")
    if path.exists() and any(path.iterdir()):
        _check_existing(path, where, kind, force)
    _refuse_nested(where, real)
    return path


CHOOSE_FILE = "choose another file"


def check_output_file(
    out: str | Path,
    what: str,
    owned: Callable[[Path], bool],
    *,
    force: bool = False,
    inputs: Iterable[str | Path] = (),
    option: str = "--out",
) -> Path:
    """Refuse with a DataError unless camn may write the single file ``out``; touches nothing.

    Refused always: a folder, a symbolic link, an ``inputs`` path or a path inside an input
    folder, a path inside a camn store, run or benchmark folder, and a path below a file. An
    existing file is replaced only with ``force``, and only when ``owned(out)`` says it is a
    file camn wrote of this kind (``what``: "an export written by camn", ...).
    """
    path = Path(out)
    where = f"{option} {out}"
    if path.is_symlink():
        raise DataError(f"{where} is a symbolic link (to {os.readlink(path)}); camn replaces "
                        f"only a file it wrote itself; {CHOOSE_FILE}")
    if path.is_dir():
        raise DataError(f"{where} is a folder; name a file")
    real = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if real == source:
            raise DataError(f"{where} is the input {item}; {CHOOSE_FILE}")
        if _is_within(real, source):
            raise DataError(f"{where} is inside the input {item}; choose a file outside it")
    _refuse_nested(where, real, CHOOSE_FILE, "file")
    if path.exists():
        if not force:
            raise DataError(f"{where} already exists; pass --force to overwrite it")
        if not owned(path):
            raise DataError(f"{where} is not {what}; --force replaces only such a file, camn "
                            f"will not write over it; {CHOOSE_FILE}")
    return path


def _check_existing(path: Path, where: str, kind: str, force: bool) -> None:
    """The rule for an existing, non-empty ``path`` (see :func:`check_output`)."""
    demo = kind == DEMO and not walk(path, DEMO_LAYOUT)[1]  # a demo folder has no marker
    found = DEMO if demo else identify(path)
    if found == kind and (force or kind in (BENCHMARK, DEMO)):
        return
    if found == kind:
        held = "exists"
        if kind == RUN:  # seed folders without results.json: an interrupted run
            marker = RUN_RESULTS if RunFolder(path).results.is_file() else "seed folders"
            held = f"holds a run ({marker})"
        raise DataError(f"{path} already {held}; pass --force to overwrite it")
    if found is not None:
        raise DataError(f"{where} is {DESCRIPTION[found]}, not {DESCRIPTION[kind]}; camn will "
                        f"not write over it; {CHOOSE}")
    raise DataError(f"{where} {_foreign_reason(path, kind)}; camn will not write into it or "
                    f"delete it; {CHOOSE}")


def remove_owned(root: str | Path, kind: str) -> None:
    """Delete the camn output ``root`` file by file; a missing ``root`` is fine.

    Refused (DataError, nothing deleted) when ``root`` holds anything camn did not write there.
    """
    root = Path(root)
    if not os.path.lexists(root):
        return
    if root.is_symlink() or not root.is_dir():
        raise DataError(f"{root} is not {DESCRIPTION[kind]}; camn will not delete it")
    owned, foreign = walk(root, LAYOUTS[kind])
    if foreign:
        raise DataError(f"{root} holds files camn did not write ({_names(root, foreign)}); "
                        "camn will not delete it")
    for entry in owned:
        if entry.is_dir():
            entry.rmdir()  # empty by now: its contents come first in ``owned``
        else:
            entry.unlink()
    root.rmdir()


@contextlib.contextmanager
def writing(out: str | Path, option: str = "--out") -> Iterator[None]:
    """An OSError raised in the block (a folder camn may not write, a full disk, a read-only
    file system) as a DataError naming ``out``, the file and the reason. The block's own
    clean-up has run by then (a temporary file or folder removed)."""
    try:
        yield
    except BrokenPipeError:  # stdout closed: not the output's fault (camn.cli handles it)
        raise
    except OSError as error:
        raise DataError(f"{option} {out} cannot be written: {describe_os_error(error)}") from None


def describe_os_error(error: OSError) -> str:
    """``FILE: reason`` of an OSError (``FILE -> OTHER: reason`` for a rename)."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename is None:
        return reason
    other = f" -> {error.filename2}" if error.filename2 is not None else ""
    return f"{error.filename}{other}: {reason}"


@contextlib.contextmanager
def replacing(out: str | Path, kind: str) -> Iterator[Path]:
    """Yield a new temporary folder beside ``out``; when the block succeeds, it becomes ``out``.

    The earlier ``out`` (checked with :func:`check_output` before the work began) stays in place
    until the new one is complete, then is renamed aside and deleted with :func:`remove_owned`.
    On any failure, Ctrl-C included, only the temporary folder is removed.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(8)}")
    tmp.mkdir()  # with the user's umask, unlike tempfile.mkdtemp's 0700
    try:
        yield tmp
        old = _set_aside(out, kind, tmp.with_name(tmp.name + ".old"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the folder made above, nothing else
        raise
    tmp.rename(out)
    if old is not None:
        remove_owned(old, kind)


def swap_in(new: str | Path, out: str | Path, kind: str) -> None:
    """Make the finished folder ``new`` (a sibling of ``out``) the output ``out``, as
    :func:`replacing` does at the end of its block: the earlier ``out`` (a camn output of
    ``kind``, checked again) is renamed aside, ``new`` renamed to ``out``, the earlier one
    deleted. For work staged in a folder of its own that must outlive a failure (a resumable
    ``camn train``)."""
    new, out = Path(new), Path(out)
    old = _set_aside(out, kind, new.with_name(new.name + ".old"))
    new.rename(out)
    if old is not None:
        remove_owned(old, kind)


def _set_aside(out: Path, kind: str, old: Path) -> Path | None:
    """Clear the way for the new ``out``: an empty folder is removed, an earlier camn output
    (checked again: the work may have taken hours) renamed to ``old``, which is returned."""
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
    if not os.path.lexists(out):
        return None
    check_output(out, kind, force=True)
    out.rename(old)
    return old
