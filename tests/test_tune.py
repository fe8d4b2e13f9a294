"""``camn tune``: studies of one-epoch trials on a small synthetic store."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from camn.cli import main
from camn.config import SEARCH_SPACE
from camn.data.raw import DataError
from camn.data.store import PreparedStore
from camn.experiments import tune
from camn.models.base import FeatureSpec
from camn.models.registry import model_names
from camn.outputs import RUN, remove_owned
from camn.train import loop

try:
    import optuna
except ImportError:  # camn without the tune extra: only the tests that need no study run
    optuna = None
needs_optuna = pytest.mark.skipif(optuna is None, reason="needs camn[tune] (optuna)")

CAMN = str(Path(sys.executable).with_name("camn"))
FAST = ["--epochs", "1", "--batch-size", "128", "--device", "cpu", "--no-progress",
        "--threads", "1", "--option", "embed_dim=4"]


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[None]:
    """``--threads 1`` in this process: the other tests get torch's count back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k = 3 attributes; 1,500 users: 300 validation samples."""
    path = tmp_path_factory.mktemp("tune") / "synthetic"
    assert main(["prepare", "synthetic", "--users", "1500", "--items", "100", "--attributes",
                 "3", "--out", str(path)]) == 0
    return path


def tune_args(store: Path, out: Path, trials: int, *more: str) -> list[str]:
    return ["tune", "--data", str(store), "--model", "din", "--trials", str(trials),
            "--out", str(out), *FAST, *more]


def rows(out: Path) -> list[dict]:
    with (out / "trials.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def study_of(out: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- a study and its files


@pytest.fixture(scope="module")
def study_out(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study") / "din"
    assert main(tune_args(store, out, 3)) == 0
    return out


@needs_optuna
def test_a_study_of_one_epoch_trials_writes_its_files(study_out: Path):
    table = rows(study_out)
    assert [row["trial"] for row in table] == ["0", "1", "2"]
    assert {row["state"] for row in table} == {"complete"}
    # searched: the shared settings less the batch size the command line fixes; DIN adds none
    assert set(table[0]) >= {"lr", "embedding_l2", "weight_decay"}
    assert "batch_size" not in table[0] and "embed_dim" not in table[0]
    # the first trial tries the settings the run has without a search
    assert (float(table[0]["lr"]), float(table[0]["embedding_l2"]),
            float(table[0]["weight_decay"])) == (0.002, 0.0, 0.0)
    for row in table:
        run = Path(row["run"])
        assert run.parent == study_out / "trials"
        results = json.loads((run / "results.json").read_text())
        assert results["test_auc"]["mean"] is None  # a trial never scores the test split
        assert results["valid_auc"]["mean"] == pytest.approx(float(row["valid_score"]))
        assert (run / "seed_1" / "model.safetensors").is_file()
        assert len((run / "seed_1" / "history.jsonl").read_text().splitlines()) == 1
    for plot in ("history.png", "importance.png"):
        assert (study_out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_optuna
def test_best_toml_holds_the_best_trials_settings(study_out: Path):
    table = rows(study_out)
    best = max(table, key=lambda row: (float(row["valid_score"]), -int(row["trial"])))
    config = tomllib.loads((study_out / "best.toml").read_text())
    assert config["models"] == ["din"] and config["seed"] == 1
    assert list(config["data"]) == ["synthetic"]
    settings = config["model"]["din"]
    assert settings["lr"] == float(best["lr"])
    assert settings["embedding_l2"] == float(best["embedding_l2"])
    assert (settings["batch_size"], settings["epochs"]) == (128, 1)
    assert "device" not in settings  # where it runs is the command's
    assert config["model"]["din"]["options"] == {"embed_dim": 4}


@needs_optuna
def test_best_toml_round_trips_through_camn_train_and_benchmark(study_out: Path, tmp_path):
    """The same seed and settings: camn train retrains the best trial to the same score."""
    table = rows(study_out)
    best = max(table, key=lambda row: (float(row["valid_score"]), -int(row["trial"])))
    run = tmp_path / "run"
    assert main(["train", "--config", str(study_out / "best.toml"), "--out", str(run),
                 "--device", "cpu", "--no-progress", "--threads", "1"]) == 0
    retrained = json.loads((run / "results.json").read_text())
    assert retrained["valid_auc"]["mean"] == float(best["valid_auc"])
    assert retrained["test_auc"]["mean"] is not None
    bench = tmp_path / "bench"
    assert main(["benchmark", "--config", str(study_out / "best.toml"), "--seeds", "1",
                 "--device", "cpu", "--out", str(bench)]) == 0
    assert (bench / "results.jsonl").read_text().count("\n") == 1


@needs_optuna
def test_a_rerun_resumes_the_study_up_to_the_trials_asked(study_out: Path, store, capsys):
    before = rows(study_out)
    assert main(tune_args(store, study_out, 4)) == 0
    after = rows(study_out)
    assert [row["trial"] for row in after] == ["0", "1", "2", "3"]
    assert after[:3] == before  # the finished trials are kept as they were
    assert main(tune_args(store, study_out, 4)) == 0  # nothing left to add
    assert len(rows(study_out)) == 4
    assert "study 'din@synthetic': 4 complete" in capsys.readouterr().out


@needs_optuna
def test_after_the_timeout_a_process_starts_no_new_trial(store, tmp_path):
    out = tmp_path / "timeout"
    assert main(tune_args(store, out, 5, "--timeout", "0.001")) == 0
    assert [row["state"] for row in rows(out)] == ["complete"]  # the one it had started


@needs_optuna
def test_a_rerun_with_other_settings_is_refused(study_out: Path, store, capsys):
    args = tune_args(store, study_out, 4)
    args[args.index("--epochs") + 1] = "2"
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "study 'din@synthetic'" in error and "made with other settings" in error
    assert "fixed.epochs: 1 then, 2 now" in error


@needs_optuna
def test_an_out_folder_of_other_files_is_refused(store, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(tune_args(store, out, 1)) == 2
    assert "holds files camn tune did not write (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------------- pruning


@needs_optuna
def test_a_trial_below_the_median_is_pruned_after_its_first_epoch(store, tmp_path):
    """Two trials at lr 0.05 set the median of epoch 1; a third at lr 1e-6 has barely moved
    from its initial weights, scores below it, and is pruned there: no run folder left."""
    config = write_config(tmp_path / "prune.toml", """
[train]
embedding_l2 = 0.0
weight_decay = 0.0

[tune]
pruner = "median"
startup_trials = 2
warmup_epochs = 0
defaults_first = false

[tune.din]
lr = [0.05, 0.000001]
""")
    out = tmp_path / "prune"
    out.mkdir()
    study = optuna.create_study(study_name="din@synthetic", direction="maximize",
                                storage=f"sqlite:///{out / 'study.db'}")
    for lr in (0.05, 0.05, 0.000001):  # Optuna's own queue: run first, in this order
        study.enqueue_trial({"lr": lr})
    args = tune_args(store, out, 3, "--config", str(config))
    args[args.index("--epochs") + 1] = "3"
    assert main(args) == 0
    table = rows(out)
    assert [row["state"] for row in table] == ["complete", "complete", "pruned"]
    assert table[2]["last_epoch"] == "1" and table[2]["run"] == ""
    pruned = study_of(out, "din@synthetic").trials[2]
    median = sorted(t.intermediate_values[1] for t in study_of(out, "din@synthetic").trials[:2])
    assert pruned.intermediate_values[1] < sum(median) / 2
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial-0000", "trial-0001"]


# ------------------------------------------------------------------------- several processes


@needs_optuna
def test_two_processes_on_one_sqlite_file_share_the_study(store, tmp_path):
    out = tmp_path / "shared"
    command = [CAMN, *tune_args(store, out, 4)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    trials = study_of(out, "din@synthetic").trials
    # a process that starts a trial while the other finishes the fourth may add one more
    assert len(trials) in (4, 5)
    assert [t.number for t in trials] == list(range(len(trials)))
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert all(Path(t.user_attrs["run"], "results.json").is_file() for t in trials)
    ran = [re.findall(r"^trial (\d+): valid score", stdout, re.MULTILINE)
           for stdout, _ in outputs]
    assert all(ran)  # both processes trained trials, none trained by both
    assert sorted(int(n) for numbers in ran for n in numbers) == list(range(len(trials)))
    assert len(rows(out)) == len(trials)


@needs_optuna
def test_jobs_run_trials_in_processes_of_their_own(store, tmp_path):
    out = tmp_path / "jobs"
    assert main(tune_args(store, out, 4, "--jobs", "2")) == 0
    trials = study_of(out, "din@synthetic").trials
    assert 4 <= len(trials) <= 5
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}


@needs_optuna
def test_a_killed_process_leaves_the_study_usable(store, tmp_path, monkeypatch):
    """SIGKILL mid-trial: the trial stays running in the database; once its heartbeat is stale
    the next run marks it failed, tries its values again and finishes the study."""
    out = tmp_path / "killed"
    args = tune_args(store, out, 3)
    args[args.index("--epochs") + 1] = "4"
    process = subprocess.Popen([CAMN, *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    caught: list[Path] = []
    while not caught and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)  # until a trial has checkpointed an epoch
        caught = list((out / "trials").glob(".trial-*.partial/seed_1/checkpoint-*"))
    assert caught, "no trial was caught running"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    number = int(caught[0].parents[1].name.removeprefix(".trial-").removesuffix(".partial"))
    assert study_of(out, "din@synthetic").trials[number].state.name == "RUNNING"
    monkeypatch.setattr(tune, "HEARTBEAT_SECONDS", 1)  # stale after 2 s instead of 120
    time.sleep(2.5)
    assert main(args) == 0
    trials = study_of(out, "din@synthetic").trials
    killed = trials[number]
    assert killed.state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert len(retried) == 1 and retried[0].params == killed.params
    assert retried[0].state == optuna.trial.TrialState.COMPLETE
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    assert not list((out / "trials").glob(".trial-*"))  # the killed trial's folder is gone


def test_a_killed_trials_folder_is_camns_half_written_safetensors_file_included(tmp_path):
    """safetensors writes through a .tmpXXXXXX file: a process killed while it writes a
    checkpoint leaves one, and the folder is still camn's to delete (a foreign file is not)."""
    staging = tmp_path / ".trial-0003.partial"
    checkpoint = staging / "seed_1" / "checkpoint-2.partial"
    checkpoint.mkdir(parents=True)
    (staging / "train.json").write_text("{}")
    (checkpoint / "state.json").write_text("{}")
    (checkpoint / ".tmpAb12Cd").write_bytes(b"half")
    (checkpoint / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"holds files camn did not write \(seed_1/checkpoint"):
        remove_owned(staging, RUN)
    (checkpoint / "notes.txt").unlink()
    remove_owned(staging, RUN)
    assert not staging.exists()


@needs_optuna
def test_ctrl_c_ends_the_running_trial_and_keeps_the_study(store, tmp_path, monkeypatch,
                                                           capsys):
    out = tmp_path / "interrupted"
    validate = loop.Fit.validate
    calls = []

    def interrupted_in_the_second_trial(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return validate(self)

    monkeypatch.setattr(loop.Fit, "validate", interrupted_in_the_second_trial)
    assert main(tune_args(store, out, 3)) == 130
    assert "camn: interrupted" in capsys.readouterr().err
    assert [row["state"] for row in rows(out)] == ["complete", "fail"]
    assert not list((out / "trials").glob(".trial-*"))  # no half-trained trial left
    assert (out / "best.toml").is_file()
    monkeypatch.setattr(loop.Fit, "validate", validate)
    assert main(tune_args(store, out, 3)) == 0
    assert [row["state"] for row in rows(out)] == ["complete", "fail", "complete", "complete"]


# ----------------------------------------------------------------------- the search's declarations


@pytest.mark.parametrize(("table", "message"), [
    ("[tune.din]\nfoo = [1, 2]", "[tune.din]: unknown key 'foo': neither a training setting"),
    ("[tune.din]\nlr = {low = 0.1, high = 0.01}", "[tune.din] lr: empty range: low 0.1 > high "
     "0.01"),
    ("[tune.din]\nembedding_l2 = {low = 0.0, high = 0.1, log = true}",
     "[tune.din] embedding_l2: a log scale needs low > 0, got low 0.0"),
    ("[tune.din]\nbatch_size = []", "[tune.din] batch_size: an empty list of choices"),
    ("[tune.din]\nbatch_size = {low = 64.5, high = 512}",
     "[tune.din] batch_size: low must be an integer, got 64.5"),
    ("[tune.din]\nlr = {low = 0.001, hi = 0.1}", "[tune.din] lr: unknown range key 'hi'"),
    ("[tune.din]\nactivation = {low = 1, high = 2}",
     "[tune.din] activation: takes no numbers, so no range"),
    ("[tune.din]\nlr = [0.01, -1.0]", "[tune.din] lr: must be a number above 0, got '-1.0'"),
    ("[tune.camn]\nq = {low = 1, high = 9}", "[tune.camn] q: model 'camn': option q=9: must be "
     "between 1 and k = 3"),
    ("[tune.nosuch]\nlr = [0.1]", "[tune.nosuch]: unknown model 'nosuch'"),
    ("[tune]\npruner = \"hyperband\"", "[tune] pruner: must be one of median, halving, none"),
    ("[tune]\ntrails = 3", "[tune]: unknown key 'trails'"),
])
@needs_optuna
def test_a_bad_declaration_is_an_error_before_any_trial(store, tmp_path, capsys, table,
                                                        message):
    config = write_config(tmp_path / "bad.toml", table + "\n")
    model = "camn" if "tune.camn]" in table else "din"
    out = tmp_path / "never"
    args = tune_args(store, out, 2, "--config", str(config))
    args[args.index("--model") + 1] = model
    assert main(args) == 2
    error = capsys.readouterr().err
    assert str(config) in error and message in error
    assert not out.exists()


def test_a_declaration_searches_what_a_config_table_fixes_but_not_what_a_flag_fixes(store):
    spec = FeatureSpec.from_schema(PreparedStore(store).schema)
    space = tune.search_space("dmin", spec, fixed_by_files={"lr", "aux_weight"},
                              fixed_by_flags={"weight_decay"},
                              declared={"aux_weight": [0.5, 1.0], "weight_decay": [0.0, 1e-4],
                                        "embed_dim": 8}, declared_where="x.toml [tune.dmin]")
    searched = {d.key: d.declaration() for d in space.dimensions}
    assert searched == {"embedding_l2": SEARCH_SPACE["embedding_l2"],
                        "batch_size": SEARCH_SPACE["batch_size"], "aux_weight": [0.5, 1.0]}
    assert space.fixed_options == {"embed_dim": 8}


def test_a_presets_options_are_not_searched(store):
    spec = FeatureSpec.from_schema(PreparedStore(store).schema)
    keys = {d.key for d in tune.search_space("camn-route", spec, set(), set(), {}, "").dimensions}
    assert "alpha" not in keys  # camn-route is alpha = 0
    assert {"q", "heads", "aux_weight"} <= keys


@pytest.mark.parametrize("model", model_names())
def test_every_models_declared_search_is_valid_on_a_store(store, model):
    spec = FeatureSpec.from_schema(PreparedStore(store).schema)
    space = tune.search_space(model, spec, set(), set(), {}, "")
    assert {"lr", "embedding_l2", "weight_decay", "batch_size"} <= {
        d.key for d in space.dimensions}


# ------------------------------------------------------------------------------ without Optuna


def test_without_optuna_tune_says_how_to_install_it(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert main(tune_args(store, tmp_path / "out", 2)) == 2
    assert "pip install 'camn[tune]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
