"""Shared fixtures of the inference tests (API, ``camn score``, ``explain``, ``export``): one
tiny synthetic store and tiny models trained on it once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from camn.cli import main
from camn.data.prepare import prepare
from camn.data.sources.synthetic import generate

SERVE_MAX_LEN = 4


@pytest.fixture(scope="session")
def serve_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sliding protocol (train users have several click rows, so "latest" is a real choice);
    max_len 4 < most users' click counts (histories are cut)."""
    path = tmp_path_factory.mktemp("serve") / "store"
    raw = generate(users=100, items=50, attributes=3, clicks_per_user=5, seed=5)
    prepare(raw, path, protocol="sliding", max_len=SERVE_MAX_LEN, seed=1)
    return path


@pytest.fixture(scope="session")
def trained_run(serve_store: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Callable[[str], Path]:
    """``trained_run(model)``: a one-seed, one-epoch run of that model (trained once)."""
    runs: dict[str, Path] = {}

    def train(model: str) -> Path:
        if model not in runs:
            out = tmp_path_factory.mktemp("serve-runs") / model
            assert main(["train", "--data", str(serve_store), "--model", model, "--out",
                         str(out), "--epochs", "1", "--batch-size", "256", "--lr", "0.01",
                         "--device", "cpu", "--no-progress", "--option", "embed_dim=4"]) == 0
            runs[model] = out
        return runs[model]

    return train
