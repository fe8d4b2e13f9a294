"""Nothing lost, round two: single output files (``camn export``, ``camn score``) never replace
an input or a file camn did not write; an output that cannot be written, an empty split, two
trainings of one run at once and a diverged run each end in one line; a failed run leaves no
trap; a run meets only the store it was trained on. Every refusal is checked by its message
(the path named, the reason given) and by a snapshot of the files around it."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_outputs import snapshot

from camn.cli import build_parser, main
from camn.data.fingerprint import fingerprint
from camn.experiments import benchmark
from camn.train import loop
from camn.train.resume import StagingLock, in_use, staging_folder

STORE_ARGS = ["prepare", "synthetic", "--users", "200", "--items", "60", "--attributes", "3"]
TRAIN = ["--model", "wide-deep", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
         "--no-progress", "--option", "embed_dim=4"]
DAMAGED = "the run is damaged; train it again"


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The one ``camn: error:`` line of the last command, without its prefix."""
    err = capsys.readouterr().err
    assert err.startswith("camn: error: ") and err.count("\n") == 1, err
    return err.removeprefix("camn: error: ").strip()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as a user has it: a store, a run trained on it, an export, a scores file, and
    files of the user's own (an interaction log, candidates, notes)."""
    root = tmp_path_factory.mktemp("work")
    assert main([*STORE_ARGS, "--out", str(root / "store")]) == 0
    assert main(["train", "--data", str(root / "store"), *TRAIN, "--out", str(root / "run")]) == 0
    (root / "raw").mkdir()
    rng = np.random.default_rng(0)
    rows = [f"u{u},i{rng.integers(30)},{t}" for u in range(40) for t in range(6)]
    (root / "raw" / "inter.csv").write_text("user,item,time\n" + "\n".join(rows) + "\n")
    (root / "notes.txt").write_text("my own notes, not camn's\n")
    (root / "candidates.csv").write_text("user,candidate\nu0001,i002\nu0002,i003\n")
    assert main(["export", "--run", str(root / "run"), "--format", "torchscript", "--out",
                 str(root / "export.pt")]) == 0
    assert main(["score", "--run", str(root / "run"), "--candidates",
                 str(root / "candidates.csv"), "--out", str(root / "scored.csv"),
                 "--no-progress"]) == 0
    return root


@pytest.fixture
def copy(work: Path, tmp_path: Path) -> Path:
    """A fresh copy of ``work`` for a test that may change it (the run records its store's
    absolute path, so the copy's run is pointed at the copy's store)."""
    root = tmp_path / "work"
    shutil.copytree(work, root, symlinks=True)
    config = root / "run" / "seed_1" / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "data": str(root / "store")}, indent=2))
    return root


# ------------------------------------------------------------- 1. single files never replace inputs


@pytest.mark.parametrize("target", ["run/seed_1/model.safetensors", "run/seed_1/config.json",
                                    "run/results.json", "store/schema.json",
                                    "store/vocab/item_id.txt", "store/arrays/labels.npy"])
def test_export_never_writes_over_a_file_of_its_run_or_store(copy: Path, target: str,
                                                             capsys: pytest.CaptureFixture):
    before = snapshot(copy)
    out = copy / target
    inside = "run" if target.startswith("run") else "store"
    assert main(["export", "--run", str(copy / "run"), "--format", "torchscript", "--out",
                 str(out), "--force"]) == 2
    assert error_line(capsys) == (f"--out {out} is inside the input {copy / inside}; choose a "
                                  "file outside it")
    assert snapshot(copy) == before  # every file byte for byte, nothing added


def test_single_output_files_replace_only_camns_own(copy: Path, capsys: pytest.CaptureFixture):
    before = snapshot(copy)
    export = ["export", "--run", str(copy / "run"), "--format", "torchscript", "--out"]
    notes = copy / "notes.txt"
    assert main([*export, str(notes), "--force"]) == 2
    assert error_line(capsys) == (
        f"--out {notes} is not an export written by camn (no camn sidecar notes.txt.json names "
        "it); --force replaces only such a file, camn will not write over it; choose another "
        "file")
    score = ["score", "--run", str(copy / "run"), "--candidates", str(copy / "candidates.csv"),
             "--no-progress", "--force", "--out"]
    for out, message in [
        (copy / "export.pt.json", "is not a scores file written by camn (no 'score' column)"),
        (copy / "raw" / "inter.csv", "is not a scores file written by camn (no 'score' column)"),
    ]:
        assert main([*score, str(out)]) == 2
        assert error_line(capsys) == (f"--out {out} {message}; --force replaces only such a "
                                      "file, camn will not write over it; choose another file")
    assert main([*score, str(copy / "candidates.csv")]) == 2
    assert error_line(capsys) == (f"--out {copy / 'candidates.csv'} is the input "
                                  f"{copy / 'candidates.csv'}; choose another file")
    assert main([*score, str(copy / "store" / "scores.csv")]) == 2  # a new file in the store
    assert error_line(capsys) == (f"--out {copy / 'store' / 'scores.csv'} is inside the input "
                                  f"{copy / 'store'}; choose a file outside it")
    below = copy / "notes.txt" / "scores.csv"
    assert main([*score, str(below)]) == 2
    assert error_line(capsys) == (f"--out {below}: {copy / 'notes.txt'} is a file, not a folder; "
                                  "choose another file")
    assert snapshot(copy) == before
    assert main([*export, str(copy / "export.pt"), "--force"]) == 0  # camn's own: replaced
    assert main([*score, str(copy / "scored.csv")]) == 0
    after = snapshot(copy)
    changed = {key for key in before if after.get(key) != before[key]}
    assert changed <= {"export.pt", "export.pt.json", "scored.csv"}


# ------------------------------------------------------------ 2. outputs that cannot be written


def refuse_mkdir_under(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int) -> None:
    """Creating any folder under ``folder`` fails with ``code`` (EACCES: a read-only folder;
    the tests run as root, whom chmod does not stop)."""
    real = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        if Path(os.path.abspath(self)).is_relative_to(folder):
            raise OSError(code, os.strerror(code), str(self))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


@pytest.mark.parametrize("command", ["prepare", "train", "score", "export", "benchmark"])
def test_an_output_folder_that_cannot_be_written_is_one_line(
    command: str, copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    locked = copy / "locked"
    out = locked / {"score": "s.csv", "export": "m.pt"}.get(command, "out")
    argv = {
        "prepare": [*STORE_ARGS, "--out", str(out)],
        "train": ["train", "--data", str(copy / "store"), *TRAIN, "--out", str(out)],
        "score": ["score", "--run", str(copy / "run"), "--candidates",
                  str(copy / "candidates.csv"), "--out", str(out), "--no-progress"],
        "export": ["export", "--run", str(copy / "run"), "--format", "torchscript", "--out",
                   str(out)],
        "benchmark": ["benchmark", "--data", str(copy / "store"), "--models", "wide-deep",
                      "--seeds", "1", "--epochs", "1", "--device", "cpu", "--out", str(out)],
    }[command]
    before = snapshot(copy)
    refuse_mkdir_under(monkeypatch, locked, errno.EACCES)
    assert main(argv) == 2
    message = error_line(capsys)
    assert message.startswith(f"--out {out} cannot be written: {locked}")
    assert message.endswith(": Permission denied")
    assert snapshot(copy) == before  # nothing partial


def test_a_full_disk_while_scoring_or_exporting_leaves_nothing(
    copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    from camn import score

    before = snapshot(copy)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(copy / ".part"))

    monkeypatch.setattr(score.ChunkWriter, "write", full)
    out = copy / "new.csv"
    assert main(["score", "--run", str(copy / "run"), "--candidates",
                 str(copy / "candidates.csv"), "--out", str(out), "--no-progress"]) == 2
    assert error_line(capsys) == (f"--out {out} cannot be written: {copy / '.part'}: No space "
                                  "left on device")
    monkeypatch.setattr(Path, "write_text", full)  # the sidecar, after the graph
    out = copy / "new.pt"
    assert main(["export", "--run", str(copy / "run"), "--format", "torchscript", "--out",
                 str(out)]) == 2
    assert error_line(capsys) == (f"--out {out} cannot be written: {copy / '.part'}: No space "
                                  "left on device")
    assert snapshot(copy) == before  # no graph without its sidecar, no temporary file


# ---------------------------------------------------------------- 2, 3. train fails cleanly


def test_two_trainings_of_one_run_at_once(copy: Path, capsys: pytest.CaptureFixture):
    """The first holds the staging folder's lock while it trains (here: the test holds it);
    a second, with --force or without, and --resume are refused and change nothing."""
    run = copy / "fresh"
    staging = staging_folder(run)
    staging.mkdir()
    (staging / "train.json").write_text("{}")
    busy = (f"{run} is being written by another camn train now ({staging} is in use); wait "
            "for it to end, or choose another --out")
    before = snapshot(copy)
    with StagingLock(run) as lock:
        lock.acquire()
        assert in_use(staging)
        for extra in ([], ["--force"]):
            assert main(["train", "--data", str(copy / "store"), *TRAIN, "--out", str(run),
                         *extra]) == 2
            assert error_line(capsys) == busy
        assert snapshot(copy) == before
    assert not in_use(staging)
    assert main(["train", "--data", str(copy / "store"), *TRAIN, "--out", str(run)]) == 2
    assert error_line(capsys) == (f"{run} has an interrupted run ({staging}); pass --resume "
                                  f"{run} to continue it, or --force to start again")


def test_a_diverged_run_stops_and_keeps_nothing(copy: Path, capsys: pytest.CaptureFixture):
    run = copy / "diverged"
    before = snapshot(copy)
    assert main(["train", "--data", str(copy / "store"), *TRAIN, "--model", "din", "--out",
                 str(run), "--lr", "1e6", "--epochs", "3"]) == 2
    assert error_line(capsys) == (
        "training diverged (loss is nan) at epoch 1 of seed 1 with lr 1e+06; nothing of it was "
        "kept: lower --lr, or set --clip-grad")
    assert snapshot(copy) == before  # no run, no .diverged.partial


def test_the_library_trainer_names_a_divergence(copy: Path, tmp_path: Path):
    from camn.data.store import PreparedStore

    config = loop.TrainConfig(model="din", epochs=2, batch_size=64, lr=1e6, device="cpu",
                              progress=False)
    with pytest.raises(loop.Diverged, match=r"training diverged \(loss is nan\) at epoch 1"):
        loop.train_one(PreparedStore(copy / "store"), config, seed=1, out_dir=tmp_path / "s1")
    assert not (tmp_path / "s1").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(
    copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    tiny = tmp_path / "tiny"
    assert main(["prepare", "synthetic", "--users", "5", "--items", "30", "--out", str(tiny)]) == 0
    capsys.readouterr()
    run = copy / "r"
    before = snapshot(copy)
    assert main(["train", "--data", str(tiny), *TRAIN, "--out", str(run)]) == 2
    assert "the valid split has no samples" in error_line(capsys)
    assert snapshot(copy) == before  # no .r.partial: the next plain run is no "interrupted run"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "x"))

    monkeypatch.setattr(loop, "save_training_state", full_disk)  # the first checkpoint
    assert main(["train", "--data", str(copy / "store"), *TRAIN, "--out", str(run)]) == 2
    assert error_line(capsys) == (f"--out {run} cannot be written: {run / 'x'}: No space left on "
                                  "device")
    assert snapshot(copy) == before
    monkeypatch.undo()
    assert main(["train", "--data", str(copy / "store"), *TRAIN, "--out", str(run)]) == 0


# ---------------------------------------------------------------------- 2. evaluate, 4, 5, 6


def test_evaluate_an_empty_split_is_one_line(copy: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture):
    tiny = tmp_path / "tiny"
    assert main(["prepare", "synthetic", "--users", "5", "--items", "30", "--out", str(tiny)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(copy / "run"), "--data", str(tiny), "--split",
                 "valid"]) == 2
    assert error_line(capsys) == (f"{tiny}: the valid split has no samples; there is nothing "
                                  "to evaluate (choose another --split)")


def test_evaluate_defaults_to_the_runs_store(copy: Path, capsys: pytest.CaptureFixture):
    assert main(["evaluate", "--run", str(copy / "run")]) == 0
    given = capsys.readouterr().out
    assert main(["evaluate", "--run", str(copy / "run"), "--data", str(copy / "store")]) == 0
    assert capsys.readouterr().out == given
    assert given.startswith("seed 1: AUC ")


def swapped_vocabulary(store: Path, attribute: str) -> None:
    """Give ids 2 and 3 of ``attribute`` each other's values: the same sizes, other values."""
    path = store / "vocab" / f"{attribute}.txt"
    lines = path.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("\n".join(lines) + "\n")


def test_a_store_with_other_vocabularies_is_refused(copy: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture):
    other = tmp_path / "other"
    shutil.copytree(copy / "store", other)
    swapped_vocabulary(other, "item_id")
    run, trained = copy / "run", copy / "store"
    message = (f"{other} is not the store the run was trained on ({trained}): its vocabulary of "
               "item_id gives the ids to other values, so the model would read them as other "
               f"items; pass --data {trained}, or a store prepared from the same data")
    for argv in (["evaluate", "--run", str(run)],
                 ["explain", "--run", str(run)],
                 ["score", "--run", str(run), "--candidates", str(copy / "candidates.csv"),
                  "--out", str(tmp_path / "s.csv"), "--no-progress"],
                 ["export", "--run", str(run), "--format", "torchscript", "--out",
                  str(tmp_path / "m.pt")]):
        assert main([*argv, "--data", str(other)]) == 2
        assert error_line(capsys) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "work"]
    config = run / "seed_1" / "config.json"
    recorded = json.loads(config.read_text())
    assert recorded["vocabularies"]["item_id"] == fingerprint(
        (trained / "vocab" / "item_id.txt").read_text().splitlines())
    del recorded["vocabularies"]  # a run trained before camn recorded them: accepted as it is
    config.write_text(json.dumps(recorded))
    assert main(["evaluate", "--run", str(run), "--data", str(other)]) == 0


def test_fingerprints_tell_values_and_their_order_apart():
    assert fingerprint(["", "<unk>", "a", "b"]) == fingerprint(["", "<unk>", "a", "b"])
    assert fingerprint(["a", "b"]) != fingerprint(["b", "a"])
    assert fingerprint(["a b"]) != fingerprint(["a", "b"])
    assert fingerprint([]).startswith("sha256:")


def test_a_deleted_seed_folder_is_named(copy: Path, capsys: pytest.CaptureFixture):
    run = copy / "run"
    shutil.rmtree(run / "seed_1")
    message = (f"{run / 'seed_1'} is missing: {run / 'results.json'} lists seed 1 but its "
               f"folder is gone (deleted or moved): {DAMAGED}")
    for argv in (["evaluate", "--run", str(run), "--data", str(copy / "store")],
                 ["evaluate", "--run", str(run)], ["explain", "--run", str(run)]):
        assert main(argv) == 2
        assert error_line(capsys) == message


@pytest.mark.parametrize("suffix", ["csv", "tsv", "parquet"])
def test_score_of_a_header_only_file_writes_the_columns(copy: Path, suffix: str):
    source = copy / f"empty.{suffix}"
    frame = pl.DataFrame(schema={"user": pl.String, "candidate": pl.String})
    if suffix == "parquet":
        frame.write_parquet(source)
    else:
        frame.write_csv(source, separator="," if suffix == "csv" else "\t")
    out = copy / f"scored-empty.{suffix}"
    assert main(["score", "--run", str(copy / "run"), "--candidates", str(source), "--out",
                 str(out), "--no-progress"]) == 0
    if suffix == "parquet":
        assert pl.read_parquet(out).columns == ["user", "candidate", "score"]
    else:
        assert out.read_text() == "\t".join(["user", "candidate", "score"]).replace(
            "\t", "," if suffix == "csv" else "\t") + "\n"
    assert main(["score", "--run", str(copy / "run"), "--candidates", str(source), "--out",
                 str(out), "--no-progress", "--force"]) == 0  # and it is a scores file


def test_benchmark_of_no_model_is_an_error(copy: Path, capsys: pytest.CaptureFixture):
    out = copy / "bench"
    for models in (",", " , "):
        assert main(["benchmark", "--data", str(copy / "store"), "--models", models, "--out",
                     str(out)]) == 2
        assert error_line(capsys) == (
            f"--models {models!r} names no model; give all (the paper's models) or a "
            "comma-separated list, e.g. camn,dmin (camn models lists them)")
    assert not out.exists()


def test_demo_help_offers_no_config_file():
    parser = build_parser("demo")
    demo_help = parser._subparsers._group_actions[0].choices["demo"].format_help()
    assert "--config" not in demo_help
    bench_help = build_parser("benchmark")._subparsers._group_actions[0].choices[
        "benchmark"].format_help()
    assert "--config" in bench_help


def test_benchmark_runs_print_a_line_per_epoch_naming_the_run(copy: Path,
                                                              capsys: pytest.CaptureFixture):
    settings = benchmark.Settings(epochs=2, patience=2, batch_size=64, device="cpu",
                                  verbose=True, progress=False)
    run = benchmark.Run("store (last)", str(copy / "store"), "wide-deep", 3)
    benchmark.train_run(run, settings)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "  store (last) wide-deep seed 3 epoch 1", "  store (last) wide-deep seed 3 epoch 2"]
    assert all(line.endswith("s (at most 2 epochs)") for line in lines)


# ------------------------------------------------------------------------------------- fuzz


def fuzz_argv(command: str, out: str) -> list[str]:
    return {
        "prepare": ["prepare", "table", "--interactions", "raw/inter.csv", "--out", out],
        "train": ["train", "--data", "store", *TRAIN, "--out", out],
        "score": ["score", "--run", "run", "--candidates", "candidates.csv", "--out", out,
                  "--no-progress"],
        "export": ["export", "--run", "run", "--format", "torchscript", "--out", out],
        "benchmark": ["benchmark", "--data", "store", "--models", "wide-deep", "--seeds", "1",
                      "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--option",
                      "embed_dim=4", "--out", out],
        "demo": ["demo", "--models", "wide-deep", "--seeds", "1", "--epochs", "1", "--out", out],
    }[command]


FUZZ_PATHS = [".", "..", "raw", "raw/inter.csv", "notes.txt", "candidates.csv", "store",
              "store/schema.json", "store/vocab", "store/vocab/item_id.txt",
              "store/arrays/labels.npy", "store/users.txt", "run", "run/results.json",
              "run/seed_1", "run/seed_1/model.safetensors", "run/seed_1/config.json",
              "export.pt", "export.pt.json", "scored.csv"]
RESUMED = ("benchmark", "demo")  # no --force: an earlier folder of theirs is resumed
INPUTS = {"prepare": ["raw"], "train": ["store"], "score": ["store", "run", "candidates.csv"],
          "export": ["store", "run"], "benchmark": ["store"], "demo": []}


def test_fuzz_no_command_changes_a_file_it_did_not_write(
    copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """Each command that writes, against a seeded random choice of existing paths (inputs,
    store and run files, the current folder and its parent), with and without --force (where
    the command has it): it
    exits 0 or 2 (a one-line message), and every file outside what it may write (its --out,
    and an export's sidecar, and only on success) is byte for byte as before."""
    monkeypatch.chdir(copy)
    rng = random.Random(21)
    cases = [(command, path, force) for command in INPUTS for path in FUZZ_PATHS
             for force in ((False,) if command in RESUMED else (False, True))]
    own = [("train", "run", True), ("export", "export.pt", True),
           ("score", "scored.csv", True), ("prepare", "store", True)]  # each replaces its own
    for command, path, force in rng.sample(cases, 40) + own:
        before = snapshot(copy.parent)
        argv = [*fuzz_argv(command, path), *(["--force"] if force else [])]
        code = main(argv)
        captured = capsys.readouterr()
        assert code in (0, 2), (argv, captured.err)
        assert code == 0 or (command, path, force) not in own, (argv, captured.err)
        after = snapshot(copy.parent)
        out = str((copy / path).resolve().relative_to(copy.parent))
        written = {out, f"{out}.json"} if command == "export" else {out}
        for key, value in before.items():
            if not (code == 0 and any(key == w or key.startswith(w + "/") for w in written)):
                assert after.get(key) == value, (argv, key, captured.err)
        for item in (*INPUTS[command], "raw/inter.csv", "notes.txt"):  # never, even on success
            assert {k: v for k, v in after.items() if k.startswith(f"work/{item}")} == {
                k: v for k, v in before.items() if k.startswith(f"work/{item}")}, (argv, item)
        if code == 2:
            assert captured.err.startswith("camn: error: ") and captured.err.count("\n") == 1
            assert after == before, argv
