"""--out and --force: camn replaces only what it wrote itself, and touches nothing it refuses.

Every refusal is checked two ways: the message (the path named, the reason given) and a
snapshot of the whole temporary tree (every file's bytes, every folder, every link), equal
before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from camn.cli import main
from camn.data.raw import DataError
from camn.data.store import PreparedStore
from camn.experiments import benchmark
from camn.outputs import (
    BENCHMARK,
    DEMO,
    RUN,
    SEED,
    STORE,
    check_output,
    identify,
    remove_owned,
    replacing,
)
from camn.train import loop

SYNTHETIC = ["prepare", "synthetic", "--users", "80", "--items", "40", "--attributes", "3"]
TRAIN = ["--model", "wide-deep", "--epochs", "1", "--batch-size", "256", "--device", "cpu",
         "--no-progress", "--option", "embed_dim=4"]
CHOOSE = "choose a new or empty folder"


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's SHA-256, a link's target, "dir" for a folder."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = "link -> " + os.readlink(path)
        elif path.is_dir():
            state[key] = "dir"
        else:
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def write_inputs(folder: Path) -> Path:
    """A tiny interaction log (40 users, 6 clicks each) and a notes file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = [f"u{u},i{rng.integers(30)},{t}" for u in range(40) for t in range(6)]
    (folder / "inter.csv").write_text("user,item,time\n" + "\n".join(rows) + "\n")
    (folder / "notes.txt").write_text("my own notes, not camn's\n")
    return folder / "inter.csv"


def prepare_argv(interactions: Path, out: str | Path, *extra: str) -> list[str]:
    return ["prepare", "table", "--interactions", str(interactions), "--out", str(out), *extra]


def refused(argv: list[str], root: Path, capsys: pytest.CaptureFixture) -> str:
    """Run ``camn argv``, expect exit 2 and an unchanged ``root``; return the error line."""
    before = snapshot(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("camn: error: ") and err.count("\n") == 1
    assert snapshot(root) == before
    return err.removeprefix("camn: error: ").strip()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synthetic"
    assert main([*SYNTHETIC, "--out", str(path)]) == 0
    return path


# ------------------------------------------------------------------------------ camn prepare


def test_prepare_refuses_the_folder_of_its_input_files(tmp_path, capsys):
    raw = tmp_path / "raw"
    interactions = write_inputs(raw)
    message = refused(prepare_argv(interactions, raw, "--force"), tmp_path, capsys)
    assert message == f"--out {raw} contains the input {interactions}; {CHOOSE}"


def test_prepare_refuses_a_parent_of_its_input_files(tmp_path, capsys):
    interactions = write_inputs(tmp_path / "data" / "amazon" / "raw")
    message = refused(prepare_argv(interactions, tmp_path / "data", "--force"), tmp_path, capsys)
    assert message == f"--out {tmp_path / 'data'} contains the input {interactions}; {CHOOSE}"


def test_prepare_refuses_its_input_file_itself(tmp_path, capsys):
    interactions = write_inputs(tmp_path / "raw")
    message = refused(prepare_argv(interactions, interactions, "--force"), tmp_path, capsys)
    assert message == f"--out {interactions} is the input {interactions}; {CHOOSE}"


def test_prepare_refuses_the_current_folder(tmp_path, monkeypatch, capsys):
    interactions = write_inputs(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    message = refused(prepare_argv(interactions, ".", "--force"), tmp_path, capsys)
    assert message == f"--out . is the current folder; {CHOOSE}"


def test_prepare_refuses_a_parent_of_the_current_folder(tmp_path, monkeypatch, capsys):
    interactions = write_inputs(tmp_path / "inputs")
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    message = refused(prepare_argv(interactions, tmp_path / "a", "--force"), tmp_path, capsys)
    assert message == f"--out {tmp_path / 'a'} contains the current folder; {CHOOSE}"


def test_prepare_refuses_a_regular_file(tmp_path, capsys):
    interactions = write_inputs(tmp_path / "raw")
    target = tmp_path / "results.txt"
    target.write_text("a file of the user's\n")
    message = refused(prepare_argv(interactions, target, "--force"), tmp_path, capsys)
    assert message == (f"--out {target} is a file, not a folder; camn will not replace it; "
                       f"{CHOOSE}")
    below = target / "store"  # refused before reading, not when the store is written
    message = refused(prepare_argv(interactions, below, "--force"), tmp_path, capsys)
    assert message == f"--out {below}: {target} is a file, not a folder; {CHOOSE}"


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_prepare_refuses_a_folder_with_other_files(tmp_path, capsys, force):
    interactions = write_inputs(tmp_path / "raw")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\section{Results}\n")
    (mine / "figures").mkdir()
    message = refused(prepare_argv(interactions, mine, *force), tmp_path, capsys)
    assert message == (f"--out {mine} holds files camn did not write (figures, thesis.tex); "
                       f"camn will not write into it or delete it; {CHOOSE}")


def test_prepare_refuses_a_store_with_a_foreign_file_in_it(tmp_path, capsys):
    interactions = write_inputs(tmp_path / "raw")
    out = tmp_path / "store"
    assert main(prepare_argv(interactions, out)) == 0
    (out / "arrays" / "my_features.parquet").write_bytes(b"PAR1")
    capsys.readouterr()
    message = refused(prepare_argv(interactions, out, "--force"), tmp_path, capsys)
    assert message == (f"--out {out} holds files camn did not write (arrays/my_features.parquet)"
                       f"; camn will not write into it or delete it; {CHOOSE}")


def test_prepare_refuses_a_folder_whose_schema_is_not_camns(tmp_path, capsys):
    interactions = write_inputs(tmp_path / "raw")
    out = tmp_path / "lookalike"
    (out / "arrays").mkdir(parents=True)
    (out / "schema.json").write_text(json.dumps({"title": "someone else's schema"}))
    message = refused(prepare_argv(interactions, out, "--force"), tmp_path, capsys)
    assert message == (f"--out {out} has no schema.json written by camn; camn will not write "
                       f"into it or delete it; {CHOOSE}")


def test_prepare_refuses_a_symbolic_link(tmp_path, capsys):
    interactions = write_inputs(tmp_path / "raw")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.bin").write_bytes(b"\x00\x01")
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    message = refused(prepare_argv(interactions, link, "--force"), tmp_path, capsys)
    assert message == (f"--out {link} is a symbolic link (to {elsewhere}); camn replaces only a "
                       f"folder it wrote itself; {CHOOSE}")


def test_prepare_refuses_the_filesystem_root_and_the_home_folder(tmp_path, monkeypatch, capsys):
    interactions = write_inputs(tmp_path / "raw")
    message = refused(prepare_argv(interactions, "/", "--force"), tmp_path, capsys)
    assert message == f"--out / is the filesystem root; {CHOOSE}"
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    message = refused(prepare_argv(interactions, home, "--force"), tmp_path, capsys)
    assert message == f"--out {home} is your home folder; {CHOOSE}"


def test_prepare_refuses_a_path_inside_a_store(tmp_path, store, capsys):
    interactions = write_inputs(tmp_path / "raw")
    inside = store / "more"
    before = snapshot(store)
    message = refused(prepare_argv(interactions, inside), tmp_path, capsys)
    assert message == (f"--out {inside} is inside a prepared store, {store.resolve()}; "
                       "choose a folder outside it")
    assert snapshot(store) == before


def test_prepare_replaces_its_own_earlier_store(tmp_path, capsys):
    interactions = write_inputs(tmp_path / "raw")
    out = tmp_path / "store"
    assert main(prepare_argv(interactions, out, "--seed", "1")) == 0
    inputs = snapshot(tmp_path / "raw")
    assert main(prepare_argv(interactions, out, "--seed", "2")) == 2
    assert f"{out} already exists; pass --force to overwrite it" in capsys.readouterr().err
    assert main(prepare_argv(interactions, out, "--seed", "2", "--force")) == 0
    assert PreparedStore(out).schema["seed"] == 2
    assert snapshot(tmp_path / "raw") == inputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "store"]  # no hidden leftovers


def test_prepare_writes_into_an_empty_folder_without_force(tmp_path):
    interactions = write_inputs(tmp_path / "raw")
    out = tmp_path / "empty"
    out.mkdir()
    assert main(prepare_argv(interactions, out)) == 0
    assert PreparedStore(out).schema["num_users"] == 40


def test_a_store_and_a_run_never_replace_each_other(tmp_path, store, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(store), *TRAIN, "--out", str(run)]) == 0
    interactions = write_inputs(tmp_path / "raw")
    capsys.readouterr()
    message = refused(prepare_argv(interactions, run, "--force"), tmp_path, capsys)
    assert message == (f"--out {run} is a camn train run folder, not a prepared store; camn will "
                       f"not write over it; {CHOOSE}")
    other = tmp_path / "other_store"
    assert main(prepare_argv(interactions, other)) == 0
    capsys.readouterr()
    for force in ([], ["--force"]):
        message = refused(["train", "--data", str(store), *TRAIN, "--out", str(other), *force],
                          tmp_path, capsys)
        assert message == (f"--out {other} is a prepared store, not a camn train run folder; "
                           f"camn will not write over it; {CHOOSE}")


# -------------------------------------------------------------------------------- camn train


def test_train_force_with_fewer_seeds_leaves_no_earlier_seed(tmp_path, store, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(store), *TRAIN, "--out", str(run), "--seeds", "2"]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["results.json", "seed_1", "seed_2"]
    capsys.readouterr()
    message = refused(["train", "--data", str(store), *TRAIN, "--out", str(run)], tmp_path,
                      capsys)
    assert message == f"{run} already holds a run (results.json); pass --force to overwrite it"
    data = snapshot(store)
    assert main(["train", "--data", str(store), *TRAIN, "--out", str(run), "--seed", "5",
                 "--force"]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["results.json", "seed_5"]
    assert json.loads((run / "results.json").read_text())["seeds"] == [5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it
    assert snapshot(store) == data


def test_train_refuses_its_store_the_current_folder_and_foreign_folders(
    tmp_path, store, monkeypatch, capsys
):
    argv = ["train", "--data", str(store), *TRAIN, "--force", "--out"]
    message = refused([*argv, str(store)], store.parent, capsys)
    assert message == f"--out {store} is the input {store}; {CHOOSE}"
    message = refused([*argv, str(store.parent)], store.parent, capsys)
    assert message == f"--out {store.parent} contains the input {store}; {CHOOSE}"
    inside = store / "run"
    message = refused([*argv, str(inside)], store.parent, capsys)
    assert message.startswith(f"--out {inside} is inside a prepared store")
    mine = tmp_path / "experiments"
    mine.mkdir()
    (mine / "results.json").write_text('{"accuracy": 0.9}\n')  # another tool's results
    message = refused([*argv, str(mine)], tmp_path, capsys)
    assert message == (f"--out {mine} has no results.json written by camn; camn will not write "
                       f"into it or delete it; {CHOOSE}")
    monkeypatch.chdir(tmp_path)
    message = refused([*argv, "."], tmp_path, capsys)
    assert message == f"--out . is the current folder; {CHOOSE}"


def test_an_interrupted_train_force_keeps_the_earlier_run(tmp_path, store, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(store), *TRAIN, "--out", str(run), "--seeds", "2"]) == 0
    before = snapshot(tmp_path)
    real, calls = loop.train_one, []

    def interrupted_after_one_seed(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one", interrupted_after_one_seed)
    capsys.readouterr()
    assert main(["train", "--data", str(store), *TRAIN, "--out", str(run), "--seeds", "3",
                 "--force"]) == 130
    assert capsys.readouterr().err == "camn: interrupted\n"
    after = snapshot(tmp_path)
    staging = tmp_path / ".run.partial"  # what camn train --resume continues
    assert {k: v for k, v in after.items() if not k.startswith(staging.name)} == before
    assert sorted(p.name for p in staging.iterdir()) == ["seed_1", "train.json"]


# ---------------------------------------------------------------------- camn benchmark, demo


def test_benchmark_refuses_a_foreign_folder_and_a_store(tmp_path, store, capsys):
    argv = ["benchmark", "--data", str(store), "--models", "wide-deep", "--out"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("name,score\nx,1\n")  # half a line would be cut off
    message = refused([*argv, str(mine)], tmp_path, capsys)
    assert message == (f"--out {mine} has no benchmark.json written by camn; camn will not "
                       f"write into it or delete it; {CHOOSE}")
    message = refused([*argv, str(store)], store.parent, capsys)
    assert message == f"--out {store} is the input {store}; {CHOOSE}"
    other = tmp_path / "store"
    assert main([*SYNTHETIC, "--out", str(other)]) == 0
    capsys.readouterr()
    message = refused([*argv, str(other)], tmp_path, capsys)
    assert message == (f"--out {other} is a prepared store, not a camn benchmark folder; camn "
                       f"will not write over it; {CHOOSE}")


def test_benchmark_deletes_an_interrupted_run_only_when_it_is_camns(tmp_path, store, capsys):
    """A --keep-runs run folder left by an interrupted run is cleared before its rerun; with a
    foreign file in it, camn benchmark refuses OUT, and the trainer of that run refuses too."""
    bench = tmp_path / "bench"
    run_dir = bench / "runs" / "synthetic.last" / "wide-deep" / "seed1"
    run_dir.mkdir(parents=True)
    (bench / "benchmark.json").write_text(json.dumps({"settings": {}}))
    (run_dir / "model.safetensors").write_bytes(b"half written")
    settings = benchmark.Settings(epochs=1, batch_size=256, device="cpu", verbose=False,
                                  options={"wide-deep": {"embed_dim": 4}})
    run = benchmark.Run("synthetic (last)", str(store), "wide-deep", 1, str(run_dir))
    assert 0 <= benchmark.train_run(run, settings)["test_auc"] <= 1
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json", "history.jsonl", "metrics.json", "model.safetensors"]
    (run_dir / "notes.txt").write_text("mine\n")
    argv = ["benchmark", "--data", str(store), "--models", "wide-deep", "--keep-runs", "--out",
            str(bench)]
    message = refused(argv, tmp_path, capsys)
    assert message == (f"--out {bench} holds files camn did not write (runs/synthetic.last/"
                       f"wide-deep/seed1/notes.txt); camn will not write into it or delete it; "
                       f"{CHOOSE}")
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as error:
        benchmark.train_run(run, settings)
    assert str(error.value) == (f"{run_dir} holds files camn did not write (notes.txt); camn "
                                "will not delete it")
    assert snapshot(tmp_path) == before


def test_demo_refuses_a_foreign_folder_and_other_camn_outputs(tmp_path, store, capsys):
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "survey.csv").write_text("a,b\n1,2\n")
    message = refused(["demo", "--out", str(mine)], tmp_path, capsys)
    assert message == (f"--out {mine} holds files camn did not write (data/survey.csv); camn "
                       f"will not write into it or delete it; {CHOOSE}")
    message = refused(["demo", "--out", str(store)], store.parent, capsys)
    assert message == (f"--out {store} is a prepared store, not a camn demo folder; camn will "
                       f"not write over it; {CHOOSE}")


# --------------------------------------------------------------------- the rules, one by one


def test_identify_knows_each_output_and_check_output_applies_the_rule(tmp_path, store):
    assert identify(store) == STORE
    run = tmp_path / "run" / "seed_3"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "din", "spec": {}}))
    assert identify(run.parent) == RUN  # seeds without results.json: an interrupted run
    with pytest.raises(DataError) as error:
        check_output(run.parent, RUN)
    assert str(error.value) == f"{run.parent} already holds a run (seed folders); pass --force " \
                               "to overwrite it"
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "benchmark.json").write_text(json.dumps({"settings": {}}))
    assert identify(bench) == BENCHMARK
    assert check_output(bench, BENCHMARK) == bench  # resumed without --force
    (tmp_path / "demo" / "data").mkdir(parents=True)
    assert check_output(tmp_path / "demo", DEMO) == tmp_path / "demo"
    with pytest.raises(DataError, match="already exists; pass --force"):
        check_output(store, STORE)
    assert check_output(store, STORE, force=True) == store
    assert check_output(tmp_path / "new" / "store", STORE) == tmp_path / "new" / "store"
    assert not (tmp_path / "new").exists()  # a check creates nothing


def test_remove_owned_deletes_camns_files_one_by_one_and_nothing_else(tmp_path):
    seed = tmp_path / "seed1"
    seed.mkdir()
    (seed / "config.json").write_text("{}")
    remove_owned(seed, SEED)
    assert not seed.exists()
    remove_owned(tmp_path / "missing", SEED)  # nothing to do
    seed.mkdir()
    (seed / "model.safetensors").write_bytes(b"w")
    (seed / "keep.me").write_text("mine")
    with pytest.raises(DataError, match=r"holds files camn did not write \(keep.me\)"):
        remove_owned(seed, SEED)
    assert sorted(p.name for p in seed.iterdir()) == ["keep.me", "model.safetensors"]
    link = tmp_path / "link"
    link.symlink_to(seed)
    with pytest.raises(DataError, match="is not a saved model folder"):
        remove_owned(link, SEED)
    assert (seed / "keep.me").is_file()


def test_replacing_swaps_in_whole_or_leaves_the_old_output(tmp_path, store):
    out = tmp_path / "store"
    with replacing(out, STORE) as tmp:
        (tmp / "schema.json").write_text(json.dumps({"schema_version": 1, "attributes": []}))
    assert identify(out) == STORE
    before = snapshot(tmp_path)
    with pytest.raises(OSError, match="disk full"), replacing(out, STORE) as tmp:
        (tmp / "schema.json").write_text("{}")
        raise OSError("disk full")
    assert snapshot(tmp_path) == before
    (out / "stray.txt").write_text("appeared while the work ran")
    with pytest.raises(DataError, match=r"\(stray\.txt\)"), replacing(out, STORE) as tmp:
        (tmp / "schema.json").write_text("{}")
    assert snapshot(tmp_path) == {**before, "store/stray.txt": snapshot(out)["stray.txt"]}


def test_every_file_of_the_run_folder_is_one_force_may_replace(tmp_path: Path) -> None:
    """Each name run_folder.py gives a file of a run is in the layouts that --force reads, so
    a file the trainer starts writing is named once and replaceable at once."""
    from camn import run_folder as names
    from camn.outputs import LAYOUTS, RUN, walk

    run = names.RunFolder(tmp_path / "run")
    seed = run.seed(3)
    checkpoint = seed.checkpoint(2)
    checkpoint.mkdir(parents=True)
    (seed.tensorboard).mkdir()
    files = [run.results, run.settings, seed.weights, seed.config, seed.metrics, seed.epoch_log,
             seed.tensorboard / "events.out.tfevents.1.host",
             *(checkpoint / name for name in names.CHECKPOINT_FILES)]
    for path in files:
        path.write_text("{}")
    owned, foreign = walk(run.root, LAYOUTS[RUN])
    assert foreign == [] and set(files) <= set(owned)
    (seed.root / "notes.txt").write_text("mine")  # anything else stays foreign
    assert walk(run.root, LAYOUTS[RUN])[1] == [seed.root / "notes.txt"]
