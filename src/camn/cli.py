"""The ``camn`` command: parses arguments and calls the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from camn import __version__
from camn.data.raw import BadInputReport, DataError, RawData
from camn.outputs import STORE, check_output, describe_os_error, identify, writing

# command -> (module, help); the module defines add_arguments(parser) and run(args) -> int
# "module:prefix" means add_<prefix>_arguments and run_<prefix> in that module
DELEGATED: dict[str, tuple[str, str]] = {
    "train": ("camn.train.commands:train", "train a model on a prepared store over seeds"),
    "evaluate": ("camn.train.commands:evaluate", "re-score a trained run's saved weights"),
    "explain": ("camn.explain", "show which attribute drove each history click"),
    "score": ("camn.score", "click probabilities for a file of candidates, with a trained run"),
    "export": ("camn.export", "a trained model as ONNX or TorchScript, for serving"),
    "benchmark": ("camn.experiments.benchmark", "the paper's Tables 2 and 3 over seeds"),
    "tune": ("camn.experiments.tune", "search a model's training settings and options (Optuna)"),
    "demo": ("camn.experiments.demo", "the whole story on built-in synthetic data, in minutes"),
}


DESCRIPTION = """\
Click-through-rate prediction from user behaviour sequences: CAMN (CIKM 2022) and its
baselines. Prepare a store from your logs (or synthetic data), train models over seeds,
evaluate and explain them, score new candidates, export a model for serving.

a first run:  camn demo --out camn-demo
your data:    camn prepare table --interactions log.csv --out store
              camn train --data store --model camn --out run
              camn score --run run --candidates candidates.csv --out scored.csv
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written; every option's default in its help line, unless it has none
    (None, or a flag's False) or its help already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or ""


def _delegate(target: str):
    module_name, _, prefix = target.partition(":")
    module = importlib.import_module(module_name)
    add = getattr(module, f"add_{prefix}_arguments" if prefix else "add_arguments")
    run = getattr(module, f"run_{prefix}" if prefix else "run")
    return add, run


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    from camn.data.sources import available_sources

    prepare = commands.add_parser("prepare", help="read a dataset into a prepared store",
                                  formatter_class=HelpFormatter)
    prepare.add_argument("--config", metavar="FILE",
                         help="a TOML data file naming the source and its flags (source = "
                         "\"movielens\", path = ..., context = [\"hour\"]); flags typed after "
                         "it override the file's keys (docs/architecture.md, data files)")
    sources = prepare.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, module in available_sources().items():
        parser = sources.add_parser(name, help=module.HELP, description=module.HELP,
                                    formatter_class=HelpFormatter)
        _add_source_arguments(parser, module)


def source_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``camn prepare NAME``'s flags alone (what a data file is checked with)."""
    from camn.data.sources import available_sources

    module = available_sources()[name]
    parser = argparse.ArgumentParser(prog=f"camn prepare {name}", description=module.HELP,
                                     formatter_class=HelpFormatter)
    _add_source_arguments(parser, module)
    return parser


def _add_source_arguments(parser: argparse.ArgumentParser, module) -> None:
    """The flags of ``camn prepare SOURCE``: the source module's own, then the store's."""
    from camn.argtypes import positive_int, seed_int
    from camn.data.protocols import PROTOCOLS

    module.add_arguments(parser)
    parser.add_argument("--out", required=True, help="directory of the prepared store")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="samples of a log of clicks: last (each user's last click and a "
                        "sampled non-click, as the paper; the default) or sliding (also every "
                        "earlier click of the train users); a labelled log's rows are its "
                        "samples")
    parser.add_argument("--max-len", type=positive_int, default=20, help="history length L")
    parser.add_argument("--seed", type=seed_int, default=2022,
                        help="seed of the user split and the sampled negatives")
    _add_shard_arguments(parser)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad input")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.set_defaults(handler=run_prepare)


def expand_data_file(argv: list[str]) -> list[str]:
    """``argv`` with ``prepare --config FILE [FLAG ...]`` replaced by ``prepare SOURCE`` and
    the file's flags, then the flags typed (:mod:`camn.data.data_file`); other commands as
    they are."""
    from camn.data import data_file
    from camn.data.sources import available_sources

    if "prepare" not in argv:
        return argv
    start = argv.index("prepare") + 1
    path, rest = data_file.config_path(argv[start:])
    if path is None:
        return argv
    parsers = {name: functools.partial(source_parser, name) for name in available_sources()}
    return [*argv[:start], *data_file.expand(path, rest, parsers)]


def _add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    from camn.data.prepare import NEGATIVES_BY
    from camn.data.shards import parse_shard

    parser.add_argument("--negatives-by", choices=NEGATIVES_BY, default=None,
                        help="draw the user split and the negatives from one seeded stream over "
                        "all users (stream, the default), or each user's from that user alone "
                        "(user: what --shard always does)")
    parser.add_argument("--vocab-only", action="store_true",
                        help="the vocabulary pass of a sharded store: write only the users, "
                        "vocabularies and item table to --out (then prepare each --shard)")
    parser.add_argument("--vocab", metavar="DIR", help="with --shard: the --vocab-only folder")
    parser.add_argument("--shard", type=parse_shard, metavar="I/N",
                        help="prepare shard I (0..N-1) of N of the users, into DIR/shard-I")


def _check_shard_arguments(args: argparse.Namespace) -> None:
    if args.vocab_only and (args.shard or args.vocab):
        raise DataError("--vocab-only writes the vocabularies; --vocab and --shard read them")
    if bool(args.shard) != bool(args.vocab):
        raise DataError("--shard I/N and --vocab DIR go together (DIR: the --vocab-only folder)")
    if args.shard and args.negatives_by == "stream":
        raise DataError("--shard draws negatives by user: --negatives-by stream needs every "
                        "user in one process")


# the flags of camn prepare that are not a source's own (and what _run adds)
PREPARE_FLAGS = frozenset({"command", "source", "handler", "out", "protocol", "max_len", "seed",
                           "strict", "force", "argv", "negatives_by", "config",
                           "vocab_only", "vocab", "shard"})


def source_options(args: argparse.Namespace, read) -> dict[str, object]:
    """The keyword arguments of a source's ``read`` from the parsed flags: the source's own
    flags (each named as its keyword), and ``--seed`` where ``read`` takes a seed."""
    options = {key: value for key, value in vars(args).items() if key not in PREPARE_FLAGS}
    if "seed" in inspect.signature(read).parameters:
        options["seed"] = args.seed
    return options


def read_source(args: argparse.Namespace, report: BadInputReport, **extra) -> RawData:
    """The source named on the command line, read with its flags as keyword arguments; of
    ``extra``, those its ``read`` takes."""
    from camn.data.sources import available_sources

    read = available_sources()[args.source].read
    accepted = inspect.signature(read).parameters
    options = source_options(args, read) | {k: v for k, v in extra.items() if k in accepted}
    return read(report=report, **options)


def run_prepare(args: argparse.Namespace) -> int:
    from camn.data.impressions import is_labelled
    from camn.data.prepare import prepare
    from camn.data.store import table1_line

    _check_shard_arguments(args)
    if args.vocab_only or args.shard:
        from camn.data.shards import run_sharded_prepare

        return run_sharded_prepare(args, _input_paths(args),
                                   lambda report, **extra: read_source(args, report, **extra))
    check_output(args.out, STORE, force=args.force, inputs=_input_paths(args))  # before reading
    report = BadInputReport(strict=args.strict)
    raw = read_source(args, report)
    if args.protocol and is_labelled(raw):
        raise DataError(f"--protocol {args.protocol} is for logs of clicks: each row of a "
                        "labelled log is one sample; leave out --protocol")
    with writing(args.out):  # the store is written into a temporary folder, removed on failure
        schema = prepare(
            raw, args.out, protocol=args.protocol or "last", max_len=args.max_len, seed=args.seed,
            report=report, force=args.force, negatives_by=args.negatives_by or "stream",
        )
    print(table1_line(schema))
    for note in raw.notes:
        print(note)
    print(report.summary())
    print(f"prepared store written to {args.out}")
    return 0


def _input_paths(args: argparse.Namespace) -> list[str]:
    """The source's arguments that name an existing file or folder: its inputs, which --out
    must never contain (a folder camn wrote is no input: a column named like a store is not)."""
    values = [v for k, v in vars(args).items()
              if k not in PREPARE_FLAGS and isinstance(v, str | Path)]
    return [str(v) for v in values if str(v) and Path(v).exists()
            and not (Path(v).is_dir() and identify(Path(v)))]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--run``, ``--seed`` and ``--data``: which trained model a command uses."""
    from camn.argtypes import seed_int

    parser.add_argument("--run", required=True,
                        help="run directory written by camn train (or one saved model folder)")
    parser.add_argument("--seed", type=seed_int,
                        help="which seed's model (default: the run's first)")
    parser.add_argument("--data", help="prepared store (default: the one the run was trained on)")


def run_stats(args: argparse.Namespace) -> int:
    from camn.data.quality import stats_lines
    from camn.data.shards import open_store
    from camn.data.store import size_line, table1_line

    store = open_store(args.store, validate=False)
    problems = store.problems(training=True)
    if problems:  # every problem, not only the first that opening or training would name
        print(f"camn: error: {store.root} is a damaged store or cannot be trained on "
              f"({len(problems)} problem(s)):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    print(table1_line(store.schema))
    print(size_line(store))
    print("attributes: " + ", ".join(
        f"{a} ({n - 2:,} values)" for a, n in zip(store.attributes, store.vocab_sizes, strict=True)
    ))
    bad = store.schema.get("bad_input") or {}
    print("bad input: " + (", ".join(f"{n:,} x {r}" for r, n in bad.items()) or "none"))
    print("\n".join(stats_lines(store.schema)))
    return 0


def run_models(args: argparse.Namespace) -> int:
    from camn.models.registry import model_entries

    for name, entry in model_entries().items():
        print(f"{name:<12} {entry.summary}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (torch is not needed to prepare data)."""
    parser = argparse.ArgumentParser(prog="camn", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"camn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in {"prepare", None}:
        _add_prepare(commands)
    else:
        commands.add_parser("prepare", help="read a dataset into a prepared store")
    stats = commands.add_parser("stats", help="print a prepared store's Table 1 line")
    stats.add_argument("store", help="directory of a prepared store")
    stats.set_defaults(handler=run_stats)
    commands.add_parser("models", help="list registered models").set_defaults(handler=run_models)
    for name, (target, help_text) in DELEGATED.items():
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=HelpFormatter)
        if name == command:
            add, run = _delegate(target)
            add(sub)
            sub.set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 a user error (``camn: error: ...``, also a
    file that cannot be read or written: its path and the reason), 130 Ctrl-C
    (``camn: interrupted``), 141 stdout closed early (``camn ... | head``: quietly, as a program
    ended by SIGPIPE), argparse's own 2 for a bad command line."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe then shows here, not as a traceback at exit
    except BrokenPipeError:
        _discard_stdout()
        return 141


def _run(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        expanded = expand_data_file(argv) if command == "prepare" else argv
        args = build_parser(command).parse_args(expanded)  # imports torch: Ctrl-C may come here
        args.argv = argv  # the command as typed, which a benchmark's table.md quotes
        return args.handler(args)
    except DataError as error:
        print(f"camn: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except OSError as error:  # a file camn cannot read or write, named with the reason
        print(f"camn: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camn: interrupted", file=sys.stderr)
        return 130


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush at exit has nowhere to fail."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured, in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)
