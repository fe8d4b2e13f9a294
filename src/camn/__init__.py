"""camn: CAMN (CIKM 2022) and its baselines for CTR prediction from behaviour sequences."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing camn stays cheap: torch is imported by load()
    from pathlib import Path

    from camn.predict import Predictor

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def load(
    run: str | Path,
    seed: int | None = None,
    *,
    store: str | Path | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
) -> Predictor:
    """The :class:`~camn.predict.Predictor` of a trained run (``camn train --out`` folder, or
    one saved model folder): ``camn.load("run").score(histories, candidates)`` gives click
    probabilities from the ids of your own data. See :func:`camn.predict.load`."""
    from camn.predict import load as load_predictor

    return load_predictor(run, seed, store=store, device=device, batch_size=batch_size)
