"""A damaged store is named, not crashed on: the open check, the content scan, ``camn stats``,
the trainer's refusal of splits that would train or score nothing, and prepare's warnings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from camn.cli import main
from camn.config import TrainConfig
from camn.data.prepare import prepare
from camn.data.raw import DataError
from camn.data.sources.synthetic import SALIENCE_STORE, generate
from camn.data.store import PreparedStore
from camn.train.loop import train_one

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens_100k"
TRAIN = ["--model", "wide-deep", "--epochs", "1", "--device", "cpu", "--no-progress"]

# the sizes and ids these tests expect were read from salience stores
SALIENCE = {key: value for key, value in SALIENCE_STORE.items() if key != "users"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sound synthetic store (200 users, item_id, category, brand; max_len 5)."""
    path = tmp_path_factory.mktemp("pristine") / "store"
    prepare(generate(users=200, items=60, attributes=3, seed=1, **SALIENCE), path, max_len=5)
    return path


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the sound store, to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "store"))


def rewrite(store: Path, name: str, change) -> None:
    """Save ``arrays/<name>.npy`` again after ``change(array)``: same dtype and shape."""
    path = store / "arrays" / f"{name}.npy"
    array = np.load(path)
    change(array)
    np.save(path, array)


def schema(store: Path) -> dict:
    return json.loads((store / "schema.json").read_text())


def opening_error(store: Path) -> str:
    with pytest.raises(DataError) as caught:
        PreparedStore(store)
    return str(caught.value)


def scan_error(store: Path) -> str:
    opened = PreparedStore(store)  # the open check passes: only the contents are wrong
    with pytest.raises(DataError) as caught:
        opened.check_contents()
    return str(caught.value)


def test_sound_stores_pass_every_check(pristine: Path, capsys: pytest.CaptureFixture) -> None:
    assert PreparedStore(pristine).problems(training=True) == []
    assert main(["stats", str(pristine)]) == 0
    assert "samples 400" in capsys.readouterr().out


@pytest.mark.skipif(not ML100K.is_dir(), reason=f"MovieLens 100K not found at {ML100K}")
@pytest.mark.parametrize("protocol", ["last", "sliding"])
def test_the_real_movielens_store_passes_every_check(tmp_path: Path, protocol: str) -> None:
    out = tmp_path / "ml"
    argv = ["prepare", "movielens", "--path", str(ML100K), "--out", str(out)]
    assert main([*argv, "--protocol", protocol]) == 0
    assert PreparedStore(out).problems(training=True) == []


def test_truncated_array(store: Path) -> None:
    path = store / "arrays" / "histories.npy"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - 1000])
    message = opening_error(store)
    assert message == (
        f"{store} is a damaged store: arrays/histories.npy is truncated: its header promises "
        f"{size:,} bytes, the file has {size - 1000:,}"
    )


def test_broken_schema_json(store: Path) -> None:
    (store / "schema.json").write_text('{"attributes": ["item_id", "brand"\n')
    assert opening_error(store) == (
        f"{store} is a damaged store: schema.json is not valid JSON "
        "(Expecting ',' delimiter: line 2, column 1)"
    )


def test_schema_json_without_the_keys_camn_reads(store: Path) -> None:
    document = schema(store)
    del document["max_len"], document["splits"]
    (store / "schema.json").write_text(json.dumps(document))
    assert opening_error(store) == f"{store} is a damaged store: schema.json lacks max_len, splits"


def test_schema_json_with_values_of_the_wrong_kind(store: Path) -> None:
    document = schema(store)
    document["max_len"], document["vocab_sizes"] = "5", [62, 14]
    (store / "schema.json").write_text(json.dumps(document))
    message = opening_error(store)
    assert message.startswith(
        f"{store} is a damaged store: schema.json vocab_sizes has 2 entries for 3 attributes"
    )
    assert message.endswith(f"(and 1 more problem(s); camn stats {store} lists them)")


def test_array_of_another_shape(store: Path) -> None:
    path = store / "arrays" / "targets.npy"
    np.save(path, np.load(path)[:-2])
    assert opening_error(store) == (
        f"{store} is a damaged store: arrays/targets.npy has shape (398, 3); schema.json "
        "implies (400, 3)"
    )


def test_array_of_another_dtype(store: Path) -> None:
    path = store / "arrays" / "labels.npy"
    np.save(path, np.load(path).astype(np.float64))
    assert opening_error(store) == (
        f"{store} is a damaged store: arrays/labels.npy holds float64 values; a store holds "
        "int8 there"
    )


def test_array_that_is_not_npy(store: Path) -> None:
    (store / "arrays" / "users.npy").write_bytes(b"\x00garbage, not an array")
    assert opening_error(store) == (
        f"{store} is a damaged store: arrays/users.npy is not a readable .npy array (the magic "
        "string is not correct; expected b'\\x93NUMPY', got b'\\x00garba')"
    )


def test_missing_array_and_vocabulary(store: Path) -> None:
    (store / "arrays" / "lengths.npy").unlink()
    (store / "vocab" / "brand.txt").unlink()
    assert opening_error(store) == (
        f"{store} is a damaged store: arrays/lengths.npy is missing (and 1 more problem(s); "
        f"camn stats {store} lists them)"
    )


@pytest.mark.parametrize(
    ("name", "where", "value", "expected"),
    [
        ("histories", (3, 0, 2), 24, "arrays/histories.npy holds id 24 of attribute 'brand' at "
         "row 3, outside its vocabulary of ids 0..23 (vocab_sizes in schema.json)"),
        ("histories", (7, 1, 0), -1, "arrays/histories.npy holds id -1 of attribute 'item_id' at "
         "row 7, outside its vocabulary of ids 0..61 (vocab_sizes in schema.json)"),
        ("targets", (5, 1), 14, "arrays/targets.npy holds id 14 of attribute 'category' at "
         "row 5, outside its vocabulary of ids 0..13 (vocab_sizes in schema.json)"),
        ("item_attributes", (9, 2), 99, "arrays/item_attributes.npy holds id 99 of attribute "
         "'brand' at item id 9, outside its vocabulary of ids 0..23 (vocab_sizes in schema.json)"),
        ("splits", (11,), 7,
         "arrays/splits.npy holds 7 at row 11; split codes are 0 (train), 1 (valid) or 2 (test)"),
        ("labels", (4,), 3, "arrays/labels.npy holds 3 at row 4; labels are 0 (non-click) or 1 "
         "(click)"),
        ("lengths", (2,), 6, "arrays/lengths.npy holds 6 at row 2; lengths are 0..max_len (5)"),
        ("users", (8,), 200, "arrays/users.npy holds 200 at row 8; users are 0..num_users - 1 "
         "(199)"),
        ("history_driver", (6, 0), 3, "arrays/history_driver.npy holds 3 at row 6; drivers are "
         "-1 (no click) or an attribute slot 0..2"),
        ("target_driver_kind", (1,), 2, "arrays/target_driver_kind.npy holds 2 at row 1; driver "
         "kinds are -1 (no click), 0 or 1"),
    ],
)
def test_values_outside_their_range(
    store: Path, name: str, where: tuple, value: int, expected: str
) -> None:
    def damage(array: np.ndarray) -> None:
        array[where] = value

    rewrite(store, name, damage)
    assert scan_error(store) == f"{store} is a damaged store: {expected}"


def test_split_counts_that_disagree_with_the_schema(store: Path) -> None:
    def move_a_train_row_to_valid(splits: np.ndarray) -> None:
        splits[0] = 1

    rewrite(store, "splits", move_a_train_row_to_valid)
    assert scan_error(store) == (
        f"{store} is a damaged store: arrays/splits.npy has {{'train': 319, 'valid': 41, "
        "'test': 40} samples per split; schema.json says {'test': 40, 'train': 320, 'valid': 40}"
    )


def test_vocabulary_with_the_wrong_line_count(store: Path) -> None:
    with (store / "vocab" / "brand.txt").open("a", encoding="utf-8") as file:
        file.write("one value too many\n")
    assert scan_error(store) == (
        f"{store} is a damaged store: vocab/brand.txt has 25 lines; vocab_sizes in schema.json "
        "says 24"
    )


def test_ids_out_of_range_stop_training_before_it_starts(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def damage(histories: np.ndarray) -> None:
        histories[3, 0, 2] = 24

    rewrite(store, "histories", damage)
    out = tmp_path / "run"
    assert main(["train", "--data", str(store), "--out", str(out), *TRAIN]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"camn: error: {store} is a damaged store: arrays/histories.npy holds id 24 of "
        "attribute 'brand' at row 3, outside its vocabulary of ids 0..23 (vocab_sizes in "
        "schema.json)\n"
    )
    assert "epoch" not in captured.out and not (out / "seed_1").exists()


def test_stats_lists_every_problem(store: Path, capsys: pytest.CaptureFixture) -> None:
    def damage(splits: np.ndarray) -> None:
        splits[0] = 5

    rewrite(store, "splits", damage)
    with (store / "vocab" / "category.txt").open("a", encoding="utf-8") as file:
        file.write("extra\n")
    assert main(["stats", str(store)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no Table 1 line for a damaged store
    assert captured.err == (
        f"camn: error: {store} is a damaged store or cannot be trained on (2 problem(s)):\n"
        "  arrays/splits.npy holds 5 at row 0; split codes are 0 (train), 1 (valid) or 2 (test)\n"
        "  vocab/category.txt has 15 lines; vocab_sizes in schema.json says 14\n"
    )


def test_stats_reports_a_truncated_array(store: Path, capsys: pytest.CaptureFixture) -> None:
    path = store / "arrays" / "labels.npy"
    path.write_bytes(path.read_bytes()[:-10])
    assert main(["stats", str(store)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "(1 problem(s)):\n  arrays/labels.npy is truncated: its header promises" in captured.err


def test_stats_on_a_broken_schema_exits_2(store: Path, capsys: pytest.CaptureFixture) -> None:
    (store / "schema.json").write_text("")
    assert main(["stats", str(store)]) == 2
    assert capsys.readouterr().err == (
        f"camn: error: {store} is a damaged store: schema.json is not valid JSON "
        "(Expecting value: line 1, column 1)\n"
    )


@pytest.fixture(scope="module")
def no_valid_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sound store of 5 users: 4 train, 0 valid (10% of 5 rounds down), 1 test."""
    path = tmp_path_factory.mktemp("five") / "store"
    prepare(generate(users=5, items=60, attributes=3, seed=1, **SALIENCE), path, max_len=5)
    return path


def test_prepare_warns_of_an_empty_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "five"
    argv = ["prepare", "synthetic", "--users", "5", "--items", "60", "--attributes", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"prepared store written to {out}" in captured.out
    assert captured.err == (
        f"camn: warning: {out}: the train split has only 8 samples (under 100): its scores "
        "will be mostly noise\n"
        f"camn: warning: {out}: the valid split has no samples (5 users in all; valid and test "
        "each get 10% of them): camn train will refuse this store; prepare more users\n"
        f"camn: warning: {out}: the test split has only 2 samples (under 100): its scores "
        "will be mostly noise\n"
    )
    assert PreparedStore(out).schema["splits"] == {"train": 8, "valid": 0, "test": 2}


def test_prepare_warns_of_a_tiny_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "seventy"
    argv = ["prepare", "synthetic", "--users", "70", "--items", "60", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert PreparedStore(out).schema["splits"] == {"train": 112, "valid": 14, "test": 14}
    assert err == "".join(
        f"camn: warning: {out}: the {split} split has only 14 samples (under 100): its scores "
        "will be mostly noise\n" for split in ("valid", "test")
    )


def test_prepare_of_a_large_enough_store_warns_of_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["prepare", "synthetic", "--users", "600", "--items", "60", "--attributes", "3"]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().err == ""


EMPTY_VALID = (
    "arrays/splits.npy: the valid split has no samples; training needs samples in train, "
    "valid and test (each of valid and test gets 10% of the users: prepare more users)"
)


def test_an_empty_valid_split_stops_training(
    no_valid_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(no_valid_split), "--out", str(out), *TRAIN]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"camn: error: {no_valid_split} cannot be trained on: {EMPTY_VALID}\n"
    assert "epoch" not in captured.out and not (out / "seed_1").exists()


def test_the_trainer_itself_refuses_an_empty_split(no_valid_split: Path) -> None:
    config = TrainConfig(model="wide-deep", epochs=1, device="cpu", progress=False)
    with pytest.raises(DataError, match="the valid split has no samples"):
        train_one(PreparedStore(no_valid_split), config, seed=1)


def test_benchmark_names_the_reason_and_trains_nothing(
    no_valid_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["benchmark", "--data", str(no_valid_split), "--models", "wide-deep", "--seeds", "1",
            "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "bench")]
    assert main(argv) == 2  # refused before the first run
    captured = capsys.readouterr()
    assert captured.err == f"camn: error: {no_valid_split} cannot be trained on: {EMPTY_VALID}\n"
    assert "epoch 1" not in captured.out
    assert not (tmp_path / "bench" / "results.csv").exists()


def test_stats_reports_an_empty_split(no_valid_split: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["stats", str(no_valid_split)]) == 2
    assert capsys.readouterr().err == (
        f"camn: error: {no_valid_split} is a damaged store or cannot be trained on "
        f"(1 problem(s)):\n  {EMPTY_VALID}\n"
    )


@pytest.mark.parametrize(
    ("split", "label", "use"),
    [("train", 1, "training"), ("valid", 0, "early stopping (the validation AUC)"),
     ("test", 1, "the test AUC")],
)
def test_a_split_with_a_single_label_stops_training(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, split: str, label: int, use: str
) -> None:
    code = ("train", "valid", "test").index(split)
    splits = np.load(store / "arrays" / "splits.npy")

    def one_label(labels: np.ndarray) -> None:
        labels[splits == code] = label

    rewrite(store, "labels", one_label)
    out = tmp_path / "run"
    assert main(["train", "--data", str(store), "--out", str(out), *TRAIN]) == 2
    captured = capsys.readouterr()
    name = "1 (clicks)" if label else "0 (non-clicks)"
    assert captured.err == (
        f"camn: error: {store} cannot be trained on: arrays/labels.npy: the {split} split has "
        f"only label {name}; {use} needs both clicks and non-clicks\n"
    )
    assert "epoch" not in captured.out and not (out / "seed_1").exists()
