"""A run's result as one schema: :class:`RunResult` (one trained seed), its JSON-lines file, its
CSV export, and ``camn train``'s ``results.json`` document.

A run's result records what it scored and everything needed to redo it
(:mod:`camn.provenance`): the fully resolved training configuration (every
:class:`~camn.config.TrainConfig` field, the model's complete constructor options) and the
environment it ran in. ``camn benchmark`` appends one line per finished run to
``results.jsonl`` (its resumable record, with a CSV export beside it); ``camn train`` lists its
seeds' results in ``results.json`` (:func:`train_results`); tables, plots and the demo read
:class:`RunResult` objects. Every mean ± std is :class:`camn.stats.Stat`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from camn.data.raw import DataError
from camn.provenance import data_summary, dataset_name, environment, resolved_config
from camn.stats import Stat, finite_mean, finite_or_none

if TYPE_CHECKING:
    from camn.config import TrainConfig
    from camn.data.store import PreparedStore

METRICS = ("test_auc", "test_logloss", "test_gauc", "valid_auc")
ROUTING_KEYS = ("overall", "item", "user", "item_matched", "user_matched")
# the columns of the CSV export (and of the committed docs/bench/*.csv tables)
CSV_COLUMNS = (
    "dataset", "model", "seed", "test_auc", "test_logloss", "test_gauc", "valid_auc",
    "best_epoch", "epochs", "train_seconds", "samples_per_second",
    *(f"routing_{key}" for key in ROUTING_KEYS),
    "attention_entropy", "attention_abs_logit", "attention_diversity",  # means over heads
)
Key = tuple[str, str, int]


# ------------------------------------------------------------------------ one run's result


@dataclass(frozen=True)
class RunResult:
    """One trained (store, model, seed): its scores, its resolved configuration, its
    environment. Metrics undefined on a run are NaN (null in JSON)."""

    dataset: str  # the store's display name: folder name and protocol, "beauty-last (last)"
    model: str
    seed: int
    test_auc: float
    test_logloss: float
    test_gauc: float
    valid_auc: float  # at the best epoch
    best_epoch: int
    epochs: int  # epochs run
    train_seconds: float
    samples_per_second: float
    routing: dict[str, float] | None = None  # routing recovery, where the store plants drivers
    attention: dict | None = None  # the test split's attention health (health_of_terms())
    store: str = ""  # the store's path as given
    config: dict = field(default_factory=dict)  # resolved_config(...) of the run
    environment: dict = field(default_factory=dict)  # environment(...) of the run

    @property
    def key(self) -> Key:
        return (self.dataset, self.model, self.seed)

    def metric(self, name: str) -> float | None:
        """A metric by its table name: a field, or ``routing_<key>`` of the routing recovery."""
        if name.startswith("routing_"):
            return None if self.routing is None else self.routing.get(name.removeprefix("routing_"))
        if name in HEALTH_METRICS:
            return health_metric(self.attention, name)
        value = getattr(self, name)
        return None if value is None else float(value)

    @classmethod
    def from_metrics(
        cls, metrics: Mapping, *, dataset: str, store: str, model: str, config: dict,
        environment: dict,
    ) -> RunResult:
        """From the trainer's result dict of one seed (:func:`camn.train.loop.train_one`)."""
        routing = metrics.get("routing_recovery")
        return cls(
            dataset=dataset, model=model, seed=int(metrics["seed"]),
            **{name: float(metrics[name]) for name in (*METRICS, "train_seconds",
                                                       "samples_per_second")},
            best_epoch=int(metrics["best_epoch"]), epochs=int(metrics["epochs"]),
            routing=None if routing is None else {k: float(v) for k, v in routing.items()},
            attention=health_of_terms(metrics.get("test_terms") or {}),
            store=store, config=config, environment=environment,
        )

    def to_dict(self) -> dict:
        """JSON-ready: non-finite floats as None, those of the routing recovery too (a group
        of clicks the store lacks, e.g. user-level ones, has no recovery)."""
        data = {key: finite_or_none(value) if isinstance(value, float) else value
                for key, value in asdict(self).items()}
        if self.routing is not None:
            data["routing"] = {key: finite_or_none(v) for key, v in self.routing.items()}
        return data

    @classmethod
    def from_dict(cls, data: object) -> RunResult:
        """The inverse of :meth:`to_dict`; raises ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        required = [name for name, f in known.items() if name not in data
                    and f.default is MISSING and f.default_factory is MISSING]
        if unknown or required:
            problems = [f"unknown key(s) {unknown}"] if unknown else []
            problems += [f"missing key(s) {required}"] if required else []
            raise ValueError("; ".join(problems))
        values = dict(data)
        for name in ("dataset", "model", "store"):
            if name in values and not isinstance(values[name], str):
                raise ValueError(f"{name} must be a string, got {values[name]!r}")
        for name in ("seed", "best_epoch", "epochs"):
            if type(values[name]) is not int:
                raise ValueError(f"{name} must be an integer, got {values[name]!r}")
        for name in (*METRICS, "train_seconds", "samples_per_second"):
            value = values[name]
            if value is None:
                values[name] = math.nan
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number or null, got {value!r}")
        for name in ("config", "environment"):
            if name in values and not isinstance(values[name], dict):
                raise ValueError(f"{name} must be an object, got {values[name]!r}")
        routing = values.get("routing")
        if routing is not None and not (isinstance(routing, dict) and all(
                v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                for v in routing.values())):
            raise ValueError(f"routing must be an object of numbers (or nulls) or null, got "
                             f"{routing!r}")
        if routing is not None:
            values["routing"] = {k: math.nan if v is None else float(v)
                                 for k, v in routing.items()}
        check_attention(values.get("attention"))
        return cls(**values)


# ------------------------------------------------------------------------- attention health

# evaluation-time terms of a model (``ModelOutput.aux_terms``) -> keys of RunResult.attention
HEALTH_TERMS = {"attention_entropy": "entropy", "attention_abs_logit": "abs_logit",
                "diversity": "diversity"}
# table metrics: the mean over heads of each per-head value, and L_d
HEALTH_METRICS = ("attention_entropy", "attention_abs_logit", "attention_diversity")


def health_of_terms(terms: Mapping) -> dict | None:
    """The attention health among a split's averaged evaluation terms: ``entropy`` and
    ``abs_logit`` per head (lists; ``layers.attention_health``), ``diversity`` (L_d, Eq. 7, a
    number) where the model reports it, NaN as None; None for a model without attention heads."""
    health = {}
    for term, key in HEALTH_TERMS.items():
        value = terms.get(term)
        if value is None:
            continue
        values = [finite_or_none(float(v)) for v in np.atleast_1d(value).tolist()]
        health[key] = values[0] if key == "diversity" else values
    return health if "entropy" in health else None


def health_metric(attention: dict | None, name: str) -> float | None:
    """``attention_entropy`` / ``attention_abs_logit``: the mean over heads (NaN heads left
    out); ``attention_diversity``: L_d. None where the run has no such value."""
    if attention is None:
        return None
    key = name.removeprefix("attention_")
    value = attention.get(key)
    if value is None:
        return None
    return finite_mean(value if isinstance(value, list) else [value])


def check_attention(attention: object) -> None:
    """ValueError unless ``attention`` is None or {entropy: [numbers], abs_logit: [numbers],
    diversity: number} (any of them absent; nulls allowed: NaN heads)."""
    if attention is None:
        return
    def number(v: object) -> bool:
        return v is None or (isinstance(v, int | float) and not isinstance(v, bool))
    ok = isinstance(attention, dict) and set(attention) <= set(HEALTH_TERMS.values()) and all(
        number(v) if key == "diversity" else isinstance(v, list) and all(map(number, v))
        for key, v in attention.items())
    if not ok:
        raise ValueError(f"attention must be null or an object of per-head lists, got "
                         f"{attention!r}")


# --------------------------------------------------------------------- the JSON-lines file


class ResultsLog:
    """A JSON-lines file of :class:`RunResult`: one line per run, appended and synced as each
    run ends (``camn benchmark``'s ``results.jsonl``).

    Reading drops a cut-off last line (a process killed while writing it: no final newline) and
    keeps the first line of each (dataset, model, seed); any other line that is not a result is
    a DataError naming the file and line. Appending first cuts such a tail off the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _complete_bytes(self) -> bytes:
        if not self.path.is_file():
            return b""
        data = self.path.read_bytes()
        return data[: data.rfind(b"\n") + 1]  # b"" when no line is complete

    def load(self) -> list[RunResult]:
        results: dict[Key, RunResult] = {}
        text = self._complete_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                result = RunResult.from_dict(json.loads(line))
            except ValueError as error:  # JSONDecodeError included
                raise DataError(f"{self.path}:{number}: not a camn run result ({error}); "
                                "remove or repair that line") from None
            results.setdefault(result.key, result)
        return list(results.values())

    def append(self, result: RunResult) -> None:
        complete = self._complete_bytes()
        if self.path.is_file() and self.path.stat().st_size != len(complete):
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete))
        line = json.dumps(result.to_dict(), sort_keys=True, allow_nan=False) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def write_csv(results: Sequence[RunResult], path: str | Path) -> Path:
    """The results as a CSV table (:data:`CSV_COLUMNS`; empty cells where undefined), written
    whole: an export for spreadsheets and ``docs/bench/*.csv``, not a record to resume from."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for result in results:
            writer.writerow([_cell(result, column) for column in CSV_COLUMNS])
    return path


def _cell(result: RunResult, column: str) -> str:
    if column in ("dataset", "model", "seed", "best_epoch", "epochs"):
        return str(getattr(result, column))
    value = result.metric(column)
    return "" if value is None or not math.isfinite(value) else repr(value)


def read_csv(path: str | Path) -> list[RunResult]:
    """Results from a CSV table of :data:`CSV_COLUMNS` (or an older prefix of it, without the
    matched routing columns or the attention health), such as the committed
    ``docs/bench/*.csv``; their configuration and environment are not in the table and stay
    empty, and the attention health is the table's means over heads (one value a key)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return []
    header = rows[0]
    if header != list(CSV_COLUMNS[: len(header)]) or len(header) < CSV_COLUMNS.index(
            "routing_item_matched"):
        raise DataError(f"{path} has columns {header}; expected {list(CSV_COLUMNS)}")
    results = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{number}: {len(row)} fields, expected {len(header)}")
        cells = dict(zip(header, row, strict=True))
        try:
            results.append(_from_cells(cells))
        except ValueError as error:
            raise DataError(f"{path}:{number}: {error}") from None
    return results


def _from_cells(cells: dict[str, str]) -> RunResult:
    def number(name: str) -> float:
        return float(cells[name]) if cells.get(name) else math.nan

    routing = {key: float(cells[f"routing_{key}"]) for key in ROUTING_KEYS
               if cells.get(f"routing_{key}")}
    health = {key: number(f"attention_{key}") for key in HEALTH_TERMS.values()
              if cells.get(f"attention_{key}")}
    return RunResult(
        dataset=cells["dataset"], model=cells["model"], seed=int(cells["seed"]),
        **{name: number(name) for name in (*METRICS, "train_seconds", "samples_per_second")},
        best_epoch=int(cells["best_epoch"]), epochs=int(cells["epochs"]),
        routing=routing or None,
        attention=health_of_terms({f"attention_{k}" if k != "diversity" else k: v
                                    for k, v in health.items()}),
    )


# --------------------------------------------------------------------------- camn train


def train_results(store: PreparedStore, config: TrainConfig, runs: list[dict]) -> dict:
    """The ``results.json`` document of one ``camn train`` run from its seeds' trainer results:
    each metric's :class:`Stat`, the resolved configuration, the environment, and every seed
    as a :class:`RunResult` (``runs``, the schema of a benchmark's ``results.jsonl`` lines)."""
    resolved = resolved_config(config)
    env = environment(config.device, config.precision)
    name = dataset_name(store.root, store.schema["protocol"])
    results = [RunResult.from_metrics(run, dataset=name, store=str(store.root),
                                      model=config.model, config=resolved, environment=env)
               for run in runs]
    document: dict = {
        "model": config.model,
        "options": resolved["options"],
        "data": data_summary(store),
        "seeds": [run["seed"] for run in runs],
        **{metric: Stat.of(run[metric] for run in runs).to_dict() for metric in METRICS},
        "best_epoch": [run["best_epoch"] for run in runs],
        "samples_per_second": Stat.of(run["samples_per_second"] for run in runs).to_dict(),
        "config": resolved,
        "environment": env,
        "runs": [result.to_dict() for result in results],
    }
    healths = [result.attention for result in results]
    if healths and all(health is not None for health in healths):
        document["attention_health"] = mean_health(healths)
    if all("routing_recovery" in run for run in runs):
        document["routing_recovery"] = {
            key: finite_mean(run["routing_recovery"][key] for run in runs)
            for key in runs[0]["routing_recovery"]
        }
    return document


def mean_health(healths: Sequence[dict]) -> dict:
    """The seeds' attention health averaged key by key (and head by head); NaN heads left out."""
    out: dict = {}
    for key in healths[0]:
        per_seed = [value if isinstance(value, list) else [value]
                    for value in (health[key] for health in healths if key in health)]
        means = [finite_mean(column) for column in zip(*per_seed, strict=True)]
        out[key] = means[0] if key == "diversity" else means
    return out
