"""The statistics of every table, summary and printout: mean ± std over seeds and paired tests.

**Mean ± std** (:class:`Stat`): the mean and the sample standard deviation (ddof = 1) over seeds,
of the finite values only (a metric can be undefined on a seed, e.g. AUC on a one-class split).
One value has no spread: its std is NaN, written ``null`` in JSON and "(1 seed)" in text.

**Paired test** (:class:`PairedTest`): model a minus model b on the seeds both have. A seed
fixes the initialisation and the batch order of both runs on the same split, so the per-seed
differences are far less noisy than either model's own spread over seeds; a paired t-test over
them (``scipy.stats.ttest_rel``) says whether a lead is more than seed noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # significance level of the paired t-test


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (ddof = 1; NaN under two values) of the finite values of a metric;
    ``values`` keeps every value given, in order (None where it was missing)."""

    mean: float
    std: float
    n: int
    values: tuple[float | None, ...] = ()

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        given = tuple(None if v is None else float(v) for v in values)
        finite = np.array([v for v in given if v is not None and math.isfinite(v)])
        mean = float(finite.mean()) if len(finite) else math.nan
        std = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
        return cls(mean, std, len(finite), given)

    def cell(self, digits: int = 4, seeds: int | None = None) -> str:
        """``0.7138 ± 0.0004``, ``0.7138 (1 seed)``, ``–`` without values; ``(n=3)`` appended
        when fewer than ``seeds`` values."""
        if self.n == 0:
            return "–"
        text = f"{self.mean:.{digits}f}"
        text += f" ± {self.std:.{digits}f}" if self.n > 1 else " (1 seed)"
        if seeds is not None and 1 < self.n < seeds:
            text += f" (n={self.n})"
        return text

    def to_dict(self) -> dict:
        """``{"mean", "std", "runs"}``, non-finite numbers as None (JSON null)."""
        return {"mean": finite_or_none(self.mean), "std": finite_or_none(self.std),
                "runs": [None if v is None else finite_or_none(v) for v in self.values]}


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def finite_mean(values: Iterable[float | None]) -> float | None:
    """The mean of the finite values; None where there is none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


@dataclass(frozen=True)
class PairedTest:
    """Model ``a`` minus model ``b`` on the seeds both have: a paired t-test over seeds.

    ``spread`` is the larger of the two models' own seed stds: the lead "exceeds the spread of
    seeds" when the mean difference is larger than it.
    """

    a: str
    b: str
    seeds: tuple[int, ...]
    mean: float
    std: float
    t: float
    p: float
    spread: float

    @classmethod
    def of(cls, a: str, b: str, values_a: Mapping[int, float],
           values_b: Mapping[int, float]) -> PairedTest:
        """From seed -> finite value of each model; the test runs over their common seeds."""
        seeds = tuple(sorted(set(values_a) & set(values_b)))
        x = np.array([values_a[s] for s in seeds])
        y = np.array([values_b[s] for s in seeds])
        diff = x - y
        n = len(seeds)
        mean = float(diff.mean()) if n else math.nan
        std = float(diff.std(ddof=1)) if n > 1 else math.nan
        t = p = math.nan
        if n > 1 and std > 0:
            result = stats.ttest_rel(x, y)
            t, p = float(result.statistic), float(result.pvalue)
        spread = max(Stat.of(values_a.values()).std, Stat.of(values_b.values()).std)
        return cls(a, b, seeds, mean, std, t, p, spread)

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def significant(self) -> bool:
        return self.n > 1 and math.isfinite(self.p) and self.p < ALPHA

    @property
    def exceeds_spread(self) -> bool:
        """``a`` leads ``b`` by more than either model's own seed std."""
        return self.n > 1 and self.mean > self.spread

    def verdict(self, name: Callable[[str], str] = str) -> str:
        """A plain sentence, the models named by ``name``, e.g. "CAMN > DMIN by MEAN ± STD
        (paired t-test over n seeds, p = P)"."""
        a, b = name(self.a), name(self.b)
        if self.n < 2:
            return f"too few paired seeds for a test ({self.n}; need 2)"
        if self.std == 0:
            if self.mean == 0:
                return f"no difference: {a} and {b} give identical results on every seed"
            hi, lo = (a, b) if self.mean > 0 else (b, a)
            return (f"{hi} > {lo} by exactly {abs(self.mean):.4f} on all {self.n} seeds "
                    "(zero spread: the t-test is undefined)")
        test = f"paired t-test over {self.n} seeds, {format_p(self.p)}"
        if not self.significant:
            difference = f"{a} − {b} = {self.mean:+.4f} ± {self.std:.4f}"
            return f"no significant difference ({difference}, {test})"
        hi, lo = (a, b) if self.mean > 0 else (b, a)
        return f"{hi} > {lo} by {abs(self.mean):.4f} ± {self.std:.4f} ({test})"

    def to_dict(self, name: Callable[[str], str] = str) -> dict:
        return {
            "a": self.a, "b": self.b, "seeds": list(self.seeds), "mean_difference": self.mean,
            "std_difference": finite_or_none(self.std), "t": finite_or_none(self.t),
            "p": finite_or_none(self.p),
            "seed_spread": finite_or_none(self.spread), "exceeds_spread": self.exceeds_spread,
            "significant": self.significant, "alpha": ALPHA, "verdict": self.verdict(name),
        }
