"""One configuration (issue 11, items 1 and 5): config files and their layers, flags made from
TrainConfig's fields, one ``--option`` syntax, and the acceptance checks: a ``--config`` run is
the run of the same flags (``camn train`` and ``camn benchmark``), and the committed configs
are those of the committed tables."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from camn.cli import build_parser, main
from camn.config import (
    ConfigFile,
    TrainConfig,
    parse_options,
    plan,
    resolve,
    training_settings,
)
from camn.data.prepare import prepare
from camn.data.raw import DataError
from camn.data.sources.synthetic import generate
from camn.experiments.benchmark import BENCHMARK_DEFAULTS, changes, resolve_models
from camn.provenance import resolved_config
from camn.results import ResultsLog, read_csv

REPO = Path(__file__).resolve().parent.parent
CONFIGS, TABLES = REPO / "configs", REPO / "docs" / "bench"
# every committed table and the config behind it (the paper's three tables: one benchmark)
CONFIG_OF = {
    "beauty-last.csv": "paper-tables.toml", "beauty-sliding.csv": "paper-tables.toml",
    "ml100k-sliding.csv": "paper-tables.toml",
    **{f"{name}.csv": f"{name}.toml" for name in (
        "beauty-last-camn-pooled-residual-cpu", "beauty-last-dien-nopool-256-cpu",
        "beauty-last-dien-nopool-noaux-256-cpu", "beauty-last-din-default-2048-cpu",
        "beauty-last-din-paper-2048-cpu", "beauty-last-din-paper-relu-2048-cpu",
        "beauty-last-din-paper-relu-256-cpu", "beauty-last-dmin-nopool-256-cpu",
        "beauty-last-dmin-nopool-noaux-256-cpu",
        "beauty-last-dmin-nopool-noaux-auclogloss-256-cpu")},
}
# a one-off run with the output MLP patched in place (docs/results.md says so): no config
ONE_OFF = {"beauty-last-dmin-nopool-noaux-bnlayers-256-cpu.csv"}
# the H200 grid of the paper's tables ran before every model had the one output head: its rows
# of these models are those of the presets with their own heads
OWN_HEADS = {"mind": "mind-paper", "comirec-sa": "comirec-sa-paper",
             "camn-standalone": "camn-standalone-paper",
             "camn-standalone-route": "camn-standalone-paper-route",
             "camn-standalone-loss": "camn-standalone-paper-loss"}
COMPARED = ("dataset", "model", "seed", "test_auc", "test_logloss", "test_gauc", "valid_auc",
            "best_epoch", "epochs", "routing", "config")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny store in a folder named like the Beauty one, so that the committed configs'
    [data.beauty-last] table covers it."""
    path = tmp_path_factory.mktemp("config") / "beauty-last"
    prepare(generate(users=80, items=40, seed=3), path, protocol="last", seed=3)
    return path


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def benchmark_plan(argv: list[str]):
    args = build_parser("benchmark").parse_args(["benchmark", "--out", "o", *argv])
    return plan(args, BENCHMARK_DEFAULTS, resolve_models)


def fail(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("camn: error: ") and err.count("\n") == 1  # one line, no traceback
    return err.removeprefix("camn: error: ").strip()


# ------------------------------------------------------------------------------ the layers

LAYERED = """\
models = ["din", "camn"]
seeds = 2
seed = 7

[train]
lr = 0.01
epochs = 5

[data.tiny]
path = "stores/tiny"
epochs = 3
batch_size = 64

[data.other]
path = "elsewhere/other"
batch_size = 32

[model.camn]
epochs = 2

[model.camn.options]
q = 2
alpha = 0.5
"""


def test_layers_resolve_defaults_file_tables_and_command_line_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, LAYERED)
    resolved = benchmark_plan(["--config", str(path), "--patience", "4",
                               "--option", "camn:alpha=0.25"])
    assert resolved.stores == ["stores/tiny", "elsewhere/other"]  # the file's, in its order
    assert resolved.models == ["din", "camn"] and resolved.seeds == [7, 8]

    def config(store: str, model: str) -> TrainConfig:
        return resolved.settings.config(store, model)

    din = config("stores/tiny", "din")  # defaults < [train] < [data.tiny] < command line
    assert (din.lr, din.epochs, din.batch_size, din.patience) == (0.01, 3, 64, 4)
    assert din.eval_batch_size == TrainConfig(model="din").eval_batch_size and din.options == {}
    camn = config("stores/tiny", "camn")  # [model.camn] over [data.tiny]
    assert (camn.epochs, camn.batch_size) == (2, 64)
    assert camn.options == {"q": 2, "alpha": 0.25}  # the command line's alpha over the file's
    other = config("elsewhere/other", "din")  # [data.other] leaves epochs to [train]
    assert (other.epochs, other.batch_size, other.lr) == (5, 32, 0.01)
    everywhere = benchmark_plan(["--config", str(path), "--epochs", "9", "--seeds", "1",
                                 "--models", "camn", "--data", "x/tiny"])
    assert everywhere.stores == ["x/tiny"] and everywhere.seeds == [7]
    assert everywhere.settings.config("x/tiny", "camn").epochs == 9  # the flag over all


def test_a_flag_left_out_leaves_the_file_value_and_a_bool_flag_can_say_no(tmp_path) -> None:
    path = write(tmp_path, "[train]\nlength_buckets = true\nepochs = 4\n")
    args = ["--config", str(path), "--data", "s", "--models", "din"]
    assert benchmark_plan(args).settings.config("s", "din").length_buckets is True
    off = benchmark_plan([*args, "--no-length-buckets"]).settings.config("s", "din")
    assert off.length_buckets is False and off.epochs == 4


def test_without_a_file_the_defaults_are_trainconfigs() -> None:
    resolved = benchmark_plan(["--data", "s", "--models", "din"])
    assert resolved.settings.config("s", "din") == TrainConfig(model="din")
    assert resolved.seeds == [1, 2, 3, 4, 5] and resolved.jobs == 1 and resolved.threads is None


# -------------------------------------------------------------------------- bad config files


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs = 3\n", "(top level): unknown key 'epochs' (known: models, seeds"),
        ("seeds = 0\n", "seeds: must be at least 1, got '0'"),
        ("seeds = 2.0\n", "seeds: expected an integer, got 2.0"),
        ("models = 3\n", "models: expected a list of model names, got 3"),
        ("[train]\nepoch = 3\n", "[train]: unknown key 'epoch' (a training setting: epochs,"),
        ("[train]\nepochs = 0\n", "[train]: epochs: must be at least 1, got '0'"),
        ("[train]\nepochs = 2.5\n", "[train]: epochs: expected an integer, got 2.5"),
        ("[train]\nepochs = true\n", "[train]: epochs: expected an integer, got True"),
        ("[train]\nlr = 'fast'\n", "[train]: lr: expected a number, got 'fast'"),
        ("[train]\nlr = inf\n", "[train]: lr: must be a finite number, got 'inf'"),
        ("[train]\ncompile = 1\n", "[train]: compile: expected true or false, got 1"),
        ("[train]\nmonitor = 'loss'\n",
         "[train]: monitor: must be one of auc, logloss, auc-logloss, got 'loss'"),
        ("[train]\noptions = {q = 2}\n", "[train]: unknown key 'options'"),
        ("train = 3\n", "[train]: expected a table, got 3"),
        ("[data.beauty-last]\nbatch = 3\n", "[data.beauty-last]: unknown key 'batch' (a "
         "training setting: path, epochs"),
        ("[data.beauty-last]\npath = 'stores/other'\n", "[data.beauty-last]: path "
         "'stores/other' must name a folder called 'beauty-last'"),
        ("[model.camm]\n", "[model.camm]: unknown model 'camm'; registered: "),
        ("[model.camn]\nq = 2\n", "[model.camn]: unknown key 'q' (a training setting: options,"),
        ("[model.camn.options]\nq = 'two'\n", "[model.camn.options]: model 'camn': option "
         "q=two: expected an integer"),
        ("[model.camn.options]\nnope = 1\n", "[model.camn.options]: model 'camn' has no option "
         "'nope'"),
    ],
)
def test_a_bad_file_names_itself_its_table_and_the_key(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    for command in ("benchmark", "train"):
        out = tmp_path / "out"
        err = fail([command, "--config", str(path), "--data", str(store), "--model" if
                    command == "train" else "--models", "din", "--out", str(out)], capsys)
        assert err.startswith(f"{path} {message}"), err
        assert not out.exists()


def test_an_unreadable_or_invalid_file_is_one_message(tmp_path, capsys) -> None:
    missing = tmp_path / "nope.toml"
    argv = ["benchmark", "--models", "din", "--out", str(tmp_path / "o"), "--config"]
    assert fail([*argv, str(missing)], capsys) == (
        f"--config {missing}: cannot be read (No such file or directory)")
    broken = write(tmp_path, "[train\nepochs = 3\n")
    assert fail([*argv, str(broken)], capsys).startswith(f"{broken} is not a valid TOML file: ")


def test_stores_come_from_data_or_the_files_tables(tmp_path, capsys) -> None:
    path = write(tmp_path, "[data.beauty-last]\npath = 'stores/beauty-last'\n"
                 "[data.ml100k]\nbatch_size = 64\n")
    out = str(tmp_path / "o")
    assert fail(["benchmark", "--config", str(path), "--models", "din", "--out", out],
                capsys) == f"{path} [data.ml100k]: no path; give it, or pass --data"
    assert fail(["benchmark", "--config", str(path), "--models", "din", "--out", out,
                 "--data", "x/beauty_last"], capsys) == (
        f"store x/beauty_last: {path} has no [data.beauty_last] table (it has "
        "[data.beauty-last], [data.ml100k]); a table covers the store in the folder of its name")
    assert fail(["benchmark", "--models", "din", "--out", out], capsys) == (
        "no store given: pass --data, or a --config file with [data.NAME] tables")
    assert fail(["train", "--out", out, "--data", "s"], capsys) == (
        "no model given: pass it on the command line or as `models` in a --config file")
    two = write(tmp_path, "models = ['din', 'camn']\n", "two.toml")
    assert fail(["train", "--config", str(two), "--data", "s", "--out", out], capsys) == (
        "camn train trains one model, got 2: din, camn")
    assert not Path(out).exists()


# ------------------------------------------------------------------------- --option, flags


def test_one_option_syntax_for_one_model_or_every_model() -> None:
    models = ["din", "camn"]
    assert parse_options(["embed_dim=8", "camn:q=2", "camn:embed_dim=4", "mlp_hidden=[16, 8]"],
                         models) == {"din": {"embed_dim": 8, "mlp_hidden": [16, 8]},
                                     "camn": {"embed_dim": 4, "q": 2, "mlp_hidden": [16, 8]}}
    assert parse_options(["camn:embed_dim=4", "embed_dim=8"], models)["camn"] == {
        "embed_dim": 8}  # the later item wins
    assert parse_options(["camn:heads=slot"], models) == {"camn": {"heads": "slot"}}  # text
    for item in ("q", "=2", "camn:=2", ":"):
        with pytest.raises(DataError, match="expected \\[MODEL:\\]KEY=VALUE"):
            parse_options([item], models)
    with pytest.raises(DataError, match="model 'din' has no option 'q'"):
        parse_options(["q=2"], models)  # camn has q, din has not
    with pytest.raises(DataError, match="is for model 'dmin', which is not run \\(din, camn\\)"):
        parse_options(["dmin:q=2"], models)
    assert parse_options(["q=x"], ["camn"], check=False) == {"camn": {"q": "x"}}


@pytest.mark.parametrize("command", ["train", "benchmark"])
def test_every_training_setting_is_a_flag_that_is_none_unless_given(command: str) -> None:
    parser = build_parser(command)._subparsers._group_actions[0].choices[command]
    flags = {a.dest: a for a in parser._actions if a.option_strings}
    text = "".join(parser.format_help().split())  # help lines wrap, at hyphens too
    for name, setting in training_settings().items():
        if command == "benchmark" and name == "progress":
            continue  # a benchmark draws bars itself, one job on a terminal only
        action = flags[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        assert action.default is None and setting.help
        default = setting.default
        shown = ("on" if default else "off") if isinstance(default, bool) else str(default)
        assert "".join(f"{setting.help} (default: {shown})".split()) in text


def test_training_settings_are_trainconfigs_fields_and_numbers_have_domains() -> None:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert list(training_settings()) == [n for n in fields if n not in ("model", "options")]
    for name, setting in training_settings().items():
        assert setting.default == fields[name].default
        if setting.kind in (int, float):
            assert setting.rule is fields[name].metadata["rule"] is not None, (
                f"TrainConfig.{name} has no rule in its field (setting(rule=))")
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1"):
        training_settings()["epochs"].parse_text("0")
    # the flag's rule is TrainConfig's own: one rule, not a second check that could differ
    with pytest.raises(ValueError, match="epochs: must be at least 1, got '0'"):
        TrainConfig(model="din", epochs=0)
    with pytest.raises(ValueError, match="lr: must be a finite number, got 'nan'"):
        TrainConfig(model="din", lr=float("nan"))


# -------------------------------------------------------------------------------- acceptance

TINY = """\
models = ["din", "camn"]
seeds = 2
threads = 1

[train]
device = "cpu"
epochs = 2
progress = false

[data.beauty-last]
batch_size = 64

[model.camn.options]
embed_dim = 4
q = 2
"""
SAME_BY_FLAGS = ["--models", "din,camn", "--seeds", "2", "--threads", "1", "--device", "cpu",
                 "--epochs", "2", "--batch-size", "64", "--option", "camn:embed_dim=4",
                 "--option", "camn:q=2"]


def compared(rows) -> list[dict]:
    return [{key: getattr(row, key) for key in COMPARED} for row in rows]


def test_benchmark_config_gives_the_rows_of_the_same_flags(store, tmp_path, capsys) -> None:
    path = write(tmp_path, TINY)
    assert main(["benchmark", "--config", str(path), "--data", str(store),
                 "--out", str(tmp_path / "file")]) == 0
    assert main(["benchmark", "--data", str(store), *SAME_BY_FLAGS,
                 "--out", str(tmp_path / "flags")]) == 0
    printed = capsys.readouterr().out
    assert f"camn benchmark --config {path}" in printed  # table.md quotes the command as typed
    by_file = ResultsLog(tmp_path / "file" / "results.jsonl").load()
    by_flags = ResultsLog(tmp_path / "flags" / "results.jsonl").load()
    assert len(by_file) == 4 and compared(by_file) == compared(by_flags)
    assert [r.environment for r in by_file] == [r.environment for r in by_flags]
    row = by_file[-1]
    assert (row.model, row.config["batch_size"], row.config["options"]["q"]) == ("camn", 64, 2)
    assert row.environment["threads"] == 1 and row.environment["device"] == "cpu"
    record = json.loads((tmp_path / "file" / "benchmark.json").read_text())
    assert record["config_file"] == {"path": str(path), "text": TINY}
    assert record["settings"]["beauty-last (last)"]["camn"] == row.config


def test_train_config_gives_the_run_of_the_same_flags(store, tmp_path) -> None:
    path = write(tmp_path, TINY.replace('["din", "camn"]', '["camn"]').replace("seeds = 2",
                                                                               "seeds = 1"))
    assert main(["train", "--config", str(path), "--data", str(store),
                 "--out", str(tmp_path / "file")]) == 0
    assert main(["train", "--data", str(store), "--model", "camn", "--threads", "1",
                 "--device", "cpu", "--epochs", "2", "--batch-size", "64", "--no-progress",
                 "--option", "embed_dim=4", "--option", "q=2",
                 "--out", str(tmp_path / "flags")]) == 0
    by_file, by_flags = (json.loads((tmp_path / f / "results.json").read_text())
                         for f in ("file", "flags"))
    for key in ("test_auc", "test_logloss", "test_gauc", "valid_auc", "config", "options"):
        assert by_file[key] == by_flags[key], key
    assert by_file["config"]["batch_size"] == 64 and by_file["options"]["embed_dim"] == 4
    assert by_file["environment"]["threads"] == 1 and by_file["environment"]["camn"]
    (run,) = by_file["runs"]
    assert run["dataset"] == "beauty-last (last)" and run["config"] == by_file["config"]
    assert run["test_auc"] == by_file["test_auc"]["runs"][0]
    assert by_file["test_auc"]["std"] is None  # one seed has no spread
    weights = [(tmp_path / f / "seed_1" / "model.safetensors").read_bytes()
               for f in ("file", "flags")]
    assert weights[0] == weights[1]  # the same training, bit for bit


def test_a_committed_config_drives_its_runs_on_a_tiny_store(store, tmp_path) -> None:
    """configs/beauty-last-dien-nopool-noaux-256-cpu.toml as committed, on a tiny store named
    like Beauty's (one seed, one epoch by flags): its rows carry the file's settings and equal
    the rows of the flags docs/results.md once gave for that table."""
    config = CONFIGS / "beauty-last-dien-nopool-noaux-256-cpu.toml"
    quick = ["--data", str(store), "--seeds", "1", "--epochs", "1", "--threads", "1"]
    assert main(["benchmark", "--config", str(config), *quick,
                 "--out", str(tmp_path / "file")]) == 0
    assert main(["benchmark", *quick, "--models", "dien", "--batch-size", "256",
                 "--patience", "2", "--device", "cpu", "--option", "dien:pooled_history=false",
                 "--option", "dien:aux_weight=0", "--out", str(tmp_path / "flags")]) == 0
    (row,) = ResultsLog(tmp_path / "file" / "results.jsonl").load()
    assert (row.config["batch_size"], row.config["patience"], row.config["epochs"]) == (256, 2, 1)
    assert row.config["options"]["pooled_history"] is False
    assert row.config["options"]["aux_weight"] == 0
    assert compared([row]) == compared(ResultsLog(tmp_path / "flags" / "results.jsonl").load())


def test_every_committed_table_has_the_config_its_rows_show() -> None:
    """Each docs/bench table's (store, model, seed) rows are exactly its config's runs, and
    every row stopped as the config's epoch cap and patience say: at the cap, or ``patience``
    epochs after its best one."""
    assert set(CONFIG_OF) | ONE_OFF == {p.name for p in TABLES.glob("*.csv")}
    for table, name in CONFIG_OF.items():
        config = ConfigFile.read(CONFIGS / name)
        rows = read_csv(TABLES / table)
        models = config.command["models"]
        seeds = range(config.command.get("seed", 1),
                      config.command.get("seed", 1) + config.command["seeds"])
        # the CPU tables ran on a store folder called beauty_last
        store = table.removesuffix(".csv") if name == "paper-tables.toml" else "beauty-last"
        protocol = "last" if store.endswith("last") else "sliding"
        row_name = OWN_HEADS if name == "paper-tables.toml" else {}
        assert sorted((r.model, r.seed) for r in rows) == sorted(
            (row_name.get(m, m), s) for m in models for s in seeds), table
        assert {r.dataset.replace("_", "-") for r in rows} == {f"{store} ({protocol})"}
        for row in rows:
            model = next(m for m in models if row_name.get(m, m) == row.model)
            trained = resolve(config.layers, f"stores/{store}", model)
            assert row.epochs == trained.epochs or (
                row.epochs - row.best_epoch == trained.patience), (table, row)


# the grids committed as docs/bench/<name>/results.jsonl: the config file each ran from, its
# store, and the models of it that the grid reran (None: all of them)
RERUN = ("mind", "comirec-sa", "camn-standalone", "camn-standalone-route", "camn-standalone-loss")
GRIDS = {
    "verdict-beauty-last": ("verdict-beauty-last.toml", "stores/beauty-last", None),
    "verdict-beauty-sliding": ("verdict-sliding.toml", "stores/beauty-sliding", None),
    "verdict-ml100k-sliding": ("verdict-sliding.toml", "stores/ml100k-sliding", None),
    **{f"rerun-{store}": ("paper-tables.toml", f"stores/{store}", RERUN)
       for store in ("beauty-last", "beauty-sliding", "ml100k-sliding")},
}


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_a_committed_grids_rows_are_its_configs_runs_under_todays_model_names(grid) -> None:
    """The rows, as committed under today's model names, are exactly the config's (model,
    seed) runs (of the models a rerun reran), each with the configuration the config gives it
    today, the device aside: so ``camn benchmark --config`` finds them finished and resumes
    past them."""
    name, store, models = GRIDS[grid]
    config = ConfigFile.read(CONFIGS / name)
    rows = ResultsLog(TABLES / grid / "results.jsonl").load()
    first = config.command.get("seed", 1)
    seeds = range(first, first + config.command["seeds"])
    models = models or config.command["models"]
    assert set(models) <= set(config.command["models"])
    assert sorted((r.model, r.seed) for r in rows) == sorted(
        (m, s) for m in models for s in seeds)
    for row in rows:
        planned = resolved_config(resolve(config.layers, store, row.model))
        assert changes(row.config, planned) == [], (row.model, row.seed)



def test_the_tuned_verdicts_rows_are_its_configs_runs() -> None:
    """The tuned verdict's rows (one folder a model, each run from that model's best.toml)
    are exactly configs/tuned-beauty-last.toml's runs, each with the configuration it gives:
    the one config reproduces them and resumes past them."""
    config = ConfigFile.read(CONFIGS / "tuned-beauty-last.toml")
    models = config.command["models"]
    rows = [row for model in models
            for row in ResultsLog(TABLES / "tuned-beauty-last" / model / "results.jsonl").load()]
    assert sorted((r.model, r.seed) for r in rows) == sorted(
        (m, s) for m in models for s in range(1, 1 + config.command["seeds"]))
    for row in rows:
        planned = resolved_config(resolve(config.layers, "stores/beauty-last", row.model))
        assert changes(row.config, planned) == [], (row.model, row.seed)

def test_the_real_label_grids_rows_are_its_configs_runs_on_both_stores() -> None:
    """configs/ml100k-labels.toml's rows (four models on two stores, one folder): each store
    holds exactly the config's (model, seed) runs with the configuration it gives them, so the
    one config reproduces them and resumes past them."""
    config = ConfigFile.read(CONFIGS / "ml100k-labels.toml")
    rows = ResultsLog(TABLES / "ml100k-labels" / "results.jsonl").load()
    seeds = range(config.command["seed"], config.command["seed"] + config.command["seeds"])
    assert sorted(config.stores.values()) == sorted({row.store for row in rows})
    for store in config.stores.values():
        runs = [row for row in rows if row.store == store]
        assert sorted((r.model, r.seed) for r in runs) == sorted(
            (m, s) for m in config.command["models"] for s in seeds), store
        for row in runs:
            planned = resolved_config(resolve(config.layers, store, row.model))
            assert changes(row.config, planned) == [], (store, row.model, row.seed)


def test_every_committed_row_names_a_registered_model() -> None:
    """The committed rows are written under today's model names (nothing renames them on
    read): every model a docs/bench table or grid names is registered, and a grid row's
    recorded configuration names the model its row does."""
    from camn.models.registry import model_names

    registered = set(model_names())
    rows = [row for table in TABLES.glob("*.csv") for row in read_csv(table)]
    grids = [row for log in TABLES.glob("*/results.jsonl") for row in ResultsLog(log).load()]
    assert len(grids) > 100 and len(rows) > 100
    unknown = {(row.model, row.dataset) for row in rows + grids if row.model not in registered}
    assert unknown == set()
    assert [row for row in grids if row.config["model"] != row.model] == []
