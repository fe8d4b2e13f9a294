"""The front door: ``camn --help`` describes the tool, every option has a help line with its
default, and ``camn train`` takes ``--threads``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest
import torch

from camn.cli import DELEGATED, build_parser, main


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, subsub in subparsers(sub):
                    yield f"{name} {inner}", subsub


COMMANDS = ["prepare", "stats", "models", *DELEGATED]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_a_help_line_with_its_default(command: str) -> None:
    parsers = [(name, sub) for name, sub in subparsers(build_parser(command))
               if name.split()[0] == command]
    for name, parser in parsers:
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"camn {name} {action.option_strings[-1]} has no help line"
            if action.default not in (None, False) and action.option_strings[0] != "-h":
                line = action.help if "default" in action.help else (
                    f"{action.help} (default: {action.default})")
                assert " ".join(line.split()) in " ".join(text.split()), (name, action.dest)


def test_train_help_shows_the_paper_defaults() -> None:
    text = " ".join(build_parser("train")._subparsers._group_actions[0].choices["train"]
                    .format_help().split())
    for default in ("(default: 30)", "(default: 2048)", "(default: 0.002)", "(default: 3)"):
        assert default in text


def test_top_level_help_describes_the_tool(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "Click-through-rate prediction from user behaviour sequences" in text
    assert "parses arguments" not in text
    for command in COMMANDS:
        assert command in text


def test_train_takes_threads(serve_store, tmp_path, capsys: pytest.CaptureFixture) -> None:
    parser = build_parser("train")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--model", "din", "--out", "o",
                           "--threads", "0"])
    assert "argument --threads: must be at least 1, got '0'" in capsys.readouterr().err
    before = torch.get_num_threads()
    try:
        assert main(["train", "--data", str(serve_store), "--model", "din", "--out",
                     str(tmp_path / "run"), "--epochs", "1", "--device", "cpu", "--no-progress",
                     "--option", "embed_dim=4", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
