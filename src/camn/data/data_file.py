"""Data files: the options of ``camn prepare`` in a TOML file, ``camn prepare --config FILE``.

A data file names the source and gives any flag of ``camn prepare SOURCE`` as a key::

    source = "movielens"                     # the source (required, here or on the command line)
    path = "../shared/data/movielens_100k"   # relative to the current folder
    rating_labels = 4
    user_features = true                     # a flag: true gives it, false leaves it out
    genres = "multi"
    context = ["hour", "weekday"]            # a comma-separated list: an array, or its text
    out = "stores/ml100k-ctr-full"

A key is the flag's destination (``user_col``) or the flag without its dashes (``user-col``).
Its value is what the flag takes: text, a number or a date (``valid_from = 1997-12-01``) for an
option, true or false for a flag, an array for a comma-separated list and a table for a list of
``COL:SEP`` pairs (``multi_valued = {genres = "|"}``), or the flag's text form of either. Flags
on the command line override the file: ``camn prepare --config FILE --seed 7`` replaces its
``seed``, and a flag replaces the keys of the flags it excludes (``recbole --attributes``, a
file's ``recipe``).

The file is checked before any data is read: an unknown source or key, a value of the wrong type
or one that the flag refuses is a :class:`DataError` naming the file and the key. The checked
file becomes the command line ``prepare SOURCE --key=value ...`` followed by the flags typed,
which the command's own parser then reads.
"""

from __future__ import annotations

import argparse
import datetime
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from camn.data.raw import DataError

SOURCE = "source"
OPTION = "--config"
Parsers = Mapping[str, Callable[[], argparse.ArgumentParser]]  # source -> its parser's maker


def config_path(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The FILE of ``--config FILE`` (or ``--config=FILE``) in ``argv`` and ``argv`` without
    it; None and ``argv`` when it is not there."""
    argv = list(argv)
    for index, token in enumerate(argv):
        if token == OPTION:
            if index + 1 == len(argv):
                raise DataError(f"{OPTION} needs a FILE: the TOML data file")
            return argv[index + 1], argv[:index] + argv[index + 2:]
        if token.startswith(OPTION + "="):
            return token.partition("=")[2], argv[:index] + argv[index + 1:]
    return None, argv


def read_data_file(path: str) -> dict:
    """The TOML table of the data file ``path``."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"{OPTION} {path}: cannot be read ({error.strerror})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise DataError(f"{path} is not a valid TOML file: {error}") from None


def expand(path: str, flags: Sequence[str], parsers: Parsers) -> list[str]:
    """The arguments of ``camn prepare`` that the data file ``path`` and the ``flags`` typed
    after it (the source's flags, maybe after its name) stand for: ``[SOURCE, *file's flags,
    *flags]``, the file's flags without those the typed ones replace."""
    data = read_data_file(path)
    flags = list(flags)
    typed_source = flags.pop(0) if flags and not flags[0].startswith("-") else None
    source = _source(path, data, typed_source, parsers)
    parser = parsers[source]()
    keys = {key: value for key, value in data.items() if key != SOURCE}
    values = _file_values(path, source, keys, _options(parser))
    given = _given(parsers[source](), flags)
    replaced = given | _excluded(parser, given)
    _check_required(path, source, parser, set(values) | given)
    tokens = [token for dest, (action, value) in values.items() if dest not in replaced
              for token in _tokens(action, value)]
    return [source, *tokens, *flags]


def _source(path: str, data: Mapping, typed: str | None, parsers: Parsers) -> str:
    """The source named by the file's ``source`` key or on the command line (both: the same)."""
    known = ", ".join(parsers)
    source = data.get(SOURCE, typed)
    if source is None:
        raise DataError(f"{path}: no key {SOURCE!r}: name the source, e.g. "
                        f'source = "movielens" (one of {known})')
    if not isinstance(source, str) or source not in parsers:
        raise DataError(f"{path} {SOURCE}: {source!r} is not a source (one of {known})")
    if typed is not None and typed != source:
        raise DataError(f"{path} {SOURCE}: the file prepares {source!r}, the command line "
                        f"names {typed!r}; leave the name out of one of them")
    return source


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every key a data file may give for ``parser``'s flags: each flag's destination and its
    long names without their dashes."""
    options = {}
    for action in parser._actions:  # argparse lists its flags nowhere public
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        options[action.dest] = action
        for name in action.option_strings:
            if name.startswith("--"):
                options[name[2:]] = action
    return options


def _file_values(
    path: str, source: str, keys: Mapping, options: Mapping[str, argparse.Action]
) -> dict[str, tuple[argparse.Action, object]]:
    """Each key's flag (by destination) and value, checked as the flag checks its text."""
    values: dict[str, tuple[argparse.Action, object]] = {}
    named: dict[str, str] = {}
    for key, value in keys.items():
        action = options.get(key)
        if action is None:
            known = ", ".join(sorted({a.dest for a in options.values()}))
            raise DataError(f"{path}: unknown key {key!r} for camn prepare {source} "
                            f"(known: {SOURCE}, {known})")
        if action.dest in named:
            raise DataError(f"{path} {key}: given twice, as {named[action.dest]!r} and {key!r}")
        named[action.dest] = key
        values[action.dest] = (action, _checked(path, key, action, value))
    return values


def _checked(path: str, key: str, action: argparse.Action, value: object) -> object:
    """``value`` as the flag ``action`` takes it: a bool for a flag, else its text, which the
    flag's type and choices accept."""
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise DataError(f"{path} {key}: expected true or false, got {value!r}")
        return value
    text = _text(path, key, action, value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except argparse.ArgumentTypeError as error:
        raise DataError(f"{path} {key}: {error}") from None
    except (TypeError, ValueError):
        kind = getattr(action.type, "__name__", "value")
        raise DataError(f"{path} {key}: {text!r} is not a valid {kind}") from None
    if action.choices is not None and converted not in action.choices:
        raise DataError(f"{path} {key}: {text!r} is not one of "
                        f"{', '.join(map(str, action.choices))}")
    return text


def _text(path: str, key: str, action: argparse.Action, value: object) -> str:
    """The flag's text form of a TOML value, or a DataError naming the type it expected."""
    metavar = str(action.metavar or "")  # a list flag shows it: COL[,COL...]
    takes_list = "[," in metavar
    takes_pairs = takes_list and ":" in metavar
    if isinstance(value, str):
        return value
    if action.type is Path:
        expected = "a text (a path)"
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    elif isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    elif takes_pairs:
        expected = "a text COL:SEP[,COL:SEP...] or a table of texts, e.g. {genres = \"|\"}"
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return _joined(path, key, [f"{name}:{sep}" for name, sep in value.items()])
    elif takes_list:
        expected = "a text A[,B...] or an array of texts"
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return _joined(path, key, value)
    else:
        expected = "a text or a number"
    raise DataError(f"{path} {key}: expected {expected}, got {value!r}")


def _joined(path: str, key: str, items: list[str]) -> str:
    if any("," in item for item in items):
        raise DataError(f"{path} {key}: an item holds a comma, which separates the items: "
                        f"{items!r}")
    return ",".join(items)


def _given(parser: argparse.ArgumentParser, flags: list[str]) -> set[str]:
    """The destinations of the flags typed (``parser``, a fresh one, is changed to read them:
    no defaults, nothing required)."""
    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
    for group in parser._mutually_exclusive_groups:
        group.required = False
    return set(vars(parser.parse_args(flags)))


def _excluded(parser: argparse.ArgumentParser, given: set[str]) -> set[str]:
    """The destinations of the flags that a typed flag excludes (its mutually exclusive
    group's others)."""
    excluded = set()
    for group in parser._mutually_exclusive_groups:
        dests = {action.dest for action in group._group_actions}
        if dests & given:
            excluded |= dests - given
    return excluded


def _check_required(path: str, source: str, parser: argparse.ArgumentParser,
                    present: set[str]) -> None:
    for action in parser._actions:
        if action.required and action.dest not in present:
            flag = action.option_strings[-1]
            raise DataError(f"{path}: no key {action.dest!r}: camn prepare {source} needs "
                            f"{flag}; give it in the file or on the command line")


def _tokens(action: argparse.Action, value: object) -> list[str]:
    """The command-line tokens of one checked value (``--flag=TEXT``, so that a text that
    starts with a dash is not read as a flag)."""
    flag = next(name for name in action.option_strings if name.startswith("--"))
    if action.nargs == 0:
        return [flag] if value else []
    return [f"{flag}={value}"]
