"""``type=`` functions for the command line's numeric options, checked while arguments are parsed.

A value outside its range stops ``camn`` before any work with argparse's usual message, which
names the option: ``camn train: error: argument --lr: must be a finite number above 0, got
'nan'``. Plain ``int``/``float`` would let ``--epochs 0`` or ``--lr nan`` through to fail (or not)
much later.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer ``>= low``."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text!r}")
        return value

    return parse


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer in ``[low, high]``."""

    def parse(text: str) -> int:
        value = _integer(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be an integer in [{low}, {high}], got {text!r}"
            )
        return value

    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def float_above(low: float) -> Callable[[str], float]:
    """A finite float ``> low``."""

    def parse(text: str) -> float:
        value = _finite(text)
        if value <= low:
            raise argparse.ArgumentTypeError(f"must be a number above {low:g}, got {text!r}")
        return value

    return parse


def float_at_least(low: float) -> Callable[[str], float]:
    """A finite float ``>= low``."""

    def parse(text: str) -> float:
        value = _finite(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text!r}")
        return value

    return parse


def float_between(low: float, high: float) -> Callable[[str], float]:
    """A finite float in ``[low, high]``."""

    def parse(text: str) -> float:
        value = _finite(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be a number in [{low:g}, {high:g}], got {text!r}"
            )
        return value

    return parse


positive_int = int_at_least(1)
# numpy's generators refuse negative seeds, torch.manual_seed those of 2**64 and more
seed_int = int_between(0, 2**63 - 1)
positive_finite_float = float_above(0.0)
fraction = float_between(0.0, 1.0)
