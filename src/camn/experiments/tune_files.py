"""The files ``camn tune`` writes beside its study: ``trials.csv``, ``best.toml`` (a config
file ``camn train`` and ``camn benchmark`` take as is) and Optuna's plots.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from camn.config import VOLATILE, store_name, training_settings
from camn.experiments.tune_space import Tuning, optuna_module

HISTORY_PLOT, IMPORTANCE_PLOT, TRIALS = "history.png", "importance.png", "trials"
MARKER, DATABASE, BEST, TABLE = "tune.json", "study.db", "best.toml", "trials.csv"


def finished(study) -> list:
    optuna = optuna_module()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def trial_folder(tuning: Tuning, number: int) -> Path:
    return Path(tuning.out) / TRIALS / f"trial-{number:04d}"


# ------------------------------------------------------------------------------- the files


def write_tables(tuning: Tuning, study) -> None:
    """``trials.csv`` and ``best.toml``, each replaced whole (several processes write them)."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({key for trial in trials for key in trial.params})
    extra = ("valid_auc", "valid_logloss", "valid_gauc", "best_epoch", "epochs",
             "train_seconds")
    rows = [{"trial": t.number, "state": t.state.name.lower(), "valid_score": t.value,
             **{key: t.user_attrs.get(key) for key in extra},
             "last_epoch": max(t.intermediate_values, default=None),
             **{key: t.params.get(key) for key in params},
             "run": t.user_attrs.get("run") if t.state.name == "COMPLETE" else None}
            for t in trials]
    header = ["trial", "state", "valid_score", *extra, "last_epoch", *params, "run"]
    with _replaced(Path(tuning.out) / TABLE) as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        writer.writerows(rows)
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        with _replaced(Path(tuning.out) / BEST) as handle:
            handle.write(best_toml(tuning, best, len(finished(study))))


@contextlib.contextmanager
def _replaced(path: Path) -> Iterator:
    """A file written beside ``path`` under a name of this process and thread, renamed onto
    it when complete: a reader never sees half a file, whichever process wrote last."""
    partial = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def toml_value(value: object) -> str:
    """A TOML value: strings, numbers, booleans and lists of them (JSON writes them alike)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"no TOML value for {value}")
    return json.dumps(value)


def best_toml(tuning: Tuning, best, done: int) -> str:
    """A config file of the best trial: its model, seed, store, every setting that says what
    the run computes (the tuned ones marked), and its options."""
    values = {d.key: d.suggest(_Fixed(best.params)) for d in tuning.space.dimensions}
    config = tuning.config(values)
    name = store_name(tuning.store)
    out = Path(tuning.out)
    lines = [
        f"# camn tune: the best of {done} finished trials of study {tuning.study_name!r}: "
        f"trial {best.number},",
        f"# valid score {best.value:.6f} ({config.monitor}) at epoch "
        f"{best.user_attrs.get('best_epoch')}; run folder {trial_folder(tuning, best.number)}.",
        "# Its test figures over seeds, and the trial again:",
        f"#   camn benchmark --config {out / BEST} --seeds 5 --out "
        f"bench/{config.model}-tuned",
        f"#   camn train --config {out / BEST} --out runs/{config.model}-tuned",
        f"models = [{toml_value(config.model)}]",
        f"seed = {tuning.seed}",
        "",
        f"[data.{name}]",
        f"path = {toml_value(tuning.store)}",
        "",
        f"[model.{config.model}]",
    ]
    searched = {d.key for d in tuning.space.dimensions}
    for key, value in config.to_dict().items():
        if key in training_settings() and key not in VOLATILE:
            lines.append(f"{key} = {toml_value(value)}" + ("  # tuned" if key in searched
                                                            else ""))
    lines += ["", f"[model.{config.model}.options]"]
    for key, value in config.options.items():
        if value is None:  # TOML has no null: the option's default is None too
            lines.append(f"# {key}: null (the default)")
        else:
            lines.append(f"{key} = {toml_value(value)}" + ("  # tuned" if key in searched
                                                            else ""))
    return "\n".join(lines) + "\n"


class _Fixed:
    """A stand-in trial that answers every suggestion with a finished trial's value."""

    def __init__(self, params: Mapping[str, object]) -> None:
        self.params = params

    def suggest_categorical(self, key: str, choices: Sequence) -> object:
        return self.params[key]

    def suggest_int(self, key: str, *args, **kwargs) -> int:
        return int(self.params[key])  # type: ignore[call-overload]

    def suggest_float(self, key: str, *args, **kwargs) -> float:
        return float(self.params[key])  # type: ignore[arg-type]


def write_plots(tuning: Tuning, study) -> list[str]:
    """Optuna's optimisation history and parameter importances as PNG; the reasons for a plot
    that cannot be drawn yet (importances need two finished trials that differ)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from optuna.visualization import matplotlib as plots

    notes = []
    for name, draw in ((HISTORY_PLOT, plots.plot_optimization_history),
                       (IMPORTANCE_PLOT, plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():  # "too few trials": the plot says it as it is
                warnings.simplefilter("ignore", UserWarning)
                axes = draw(study)
        except (ValueError, RuntimeError) as error:
            notes.append(f"{name} not drawn: {error}")
            continue
        figure = axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(Path(tuning.out) / name, dpi=100)
        pyplot.close(figure)
    return notes


