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
    path = store / "arrays" / "clicks.npy"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - 1000])
    message = opening_error(store)
    assert message == (
        f"{store} is a damaged store: arrays/clicks.npy is truncated: its header promises "
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
    path = store / "arrays" / "pair_negatives.npy"
    np.save(path, np.load(path)[:-2])
    assert opening_error(store) == (
        f"{store} is a damaged store: arrays/pair_negatives.npy has shape (198,); schema.json "
        "implies (200,)"
    )


def test_array_of_another_dtype(store: Path) -> None:
    path = store / "arrays" / "pair_positions.npy"
    np.save(path, np.load(path).astype(np.float64))
    assert opening_error(store) == (
        f"{store} is a damaged store: arrays/pair_positions.npy holds float64 values; a store "
        "holds int32 there"
    )


def test_array_that_is_not_npy(store: Path) -> None:
    (store / "arrays" / "pair_users.npy").write_bytes(b"\x00garbage, not an array")
    assert opening_error(store) == (
        f"{store} is a damaged store: arrays/pair_users.npy is not a readable .npy array (the "
        "magic string is not correct; expected b'\\x93NUMPY', got b'\\x00garba')"
    )


def test_missing_array_and_vocabulary(store: Path) -> None:
    (store / "arrays" / "timeline_offsets.npy").unlink()
    (store / "vocab" / "brand.txt").unlink()
    assert opening_error(store) == (
        f"{store} is a damaged store: arrays/timeline_offsets.npy is missing (and 1 more "
        f"problem(s); camn stats {store} lists them)"
    )


def test_a_store_without_its_user_ids_is_damaged(store: Path) -> None:
    (store / "users.txt").unlink()
    assert opening_error(store) == (
        f"{store} is a damaged store: users.txt is missing (user index i is its line i)"
    )


@pytest.mark.parametrize(
    ("name", "where", "value", "expected"),
    [
        ("clicks", (3,), 1, "arrays/clicks.npy holds 1 at row 3; item ids are 2..num_items + 1 "
         "(61)"),
        ("pair_negatives", (5,), 62, "arrays/pair_negatives.npy holds 62 at row 5; item ids are "
         "2..num_items + 1 (61)"),
        ("item_attributes", (9, 2), 99, "arrays/item_attributes.npy holds id 99 of attribute "
         "'brand' at item id 9, outside its vocabulary of ids 0..23 (vocab_sizes in schema.json)"),
        ("item_attributes", (7, 0), -1, "arrays/item_attributes.npy holds id -1 of attribute "
         "'item_id' at item id 7, outside its vocabulary of ids 0..61 (vocab_sizes in "
         "schema.json)"),
        ("item_attributes", (0, 1), 4, "arrays/item_attributes.npy row 0 (the padding item) "
         "holds [0, 4, 0]; it must be all 0"),
        ("pair_users", (8,), 200, "arrays/pair_users.npy holds 200 at row 8; users are "
         "0..num_users - 1 (199)"),
        ("timeline_users", (199,), 200, "arrays/timeline_users.npy holds 200 at row 199; users "
         "are 0..num_users - 1 (199)"),
        ("click_driver", (6,), 3, "arrays/click_driver.npy holds 3 at row 6; drivers are "
         "-1 (none) or an attribute slot 0..2"),
        ("click_driver_kind", (1,), 2, "arrays/click_driver_kind.npy holds 2 at row 1; driver "
         "kinds are -1 (none), 0 or 1"),
    ],
)
def test_values_outside_their_range(
    store: Path, name: str, where: tuple, value: int, expected: str
) -> None:
    def damage(array: np.ndarray) -> None:
        array[where] = value

    rewrite(store, name, damage)
    assert scan_error(store) == f"{store} is a damaged store: {expected}"


def test_a_position_outside_its_users_timeline(store: Path) -> None:
    user = int(np.load(store / "arrays" / "pair_users.npy")[4])
    clicks = int(np.diff(np.load(store / "arrays" / "timeline_offsets.npy"))[user])

    def beyond(positions: np.ndarray) -> None:
        positions[4] = clicks

    rewrite(store, "pair_positions", beyond)
    assert scan_error(store) == (
        f"{store} is a damaged store: arrays/pair_positions.npy holds {clicks} at row 4, "
        f"outside user {user}'s timeline of {clicks} clicks"
    )


def test_timelines_out_of_order(store: Path) -> None:
    def swap(offsets: np.ndarray) -> None:
        offsets[[3, 4]] = offsets[[4, 3]]

    rewrite(store, "timeline_offsets", swap)
    clicks = schema(store)["timelines"]["clicks"]
    assert scan_error(store) == (
        f"{store} is a damaged store: arrays/timeline_offsets.npy does not ascend from 0 to the "
        f"click count ({clicks:,})"
    )


def test_split_counts_that_cut_a_users_pairs(store: Path) -> None:
    document = schema(store)
    document["splits"] = {"train": 318, "valid": 42, "test": 40}  # a train pair into valid
    (store / "schema.json").write_text(json.dumps(document))
    assert scan_error(store) == (
        f"{store} is a damaged store: arrays/pair_users.npy: the pairs are not sorted by (user, "
        "position) within each split at pair 160 (schema.json's splits must bound them)"
    )


def test_odd_split_counts(store: Path) -> None:
    document = schema(store)
    document["splits"] = {"train": 319, "valid": 41, "test": 40}
    (store / "schema.json").write_text(json.dumps(document))
    assert opening_error(store) == (
        f"{store} is a damaged store: schema.json splits must give the sample counts of train, "
        "valid, test, even numbers (a click and its non-click)"
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
    def damage(negatives: np.ndarray) -> None:
        negatives[3] = 62

    rewrite(store, "pair_negatives", damage)
    out = tmp_path / "run"
    assert main(["train", "--data", str(store), "--out", str(out), *TRAIN]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"camn: error: {store} is a damaged store: arrays/pair_negatives.npy holds 62 at row 3; "
        "item ids are 2..num_items + 1 (61)\n"
    )
    assert "epoch" not in captured.out and not (out / "seed_1").exists()


def test_stats_lists_every_problem(store: Path, capsys: pytest.CaptureFixture) -> None:
    def damage(clicks: np.ndarray) -> None:
        clicks[0] = 0

    rewrite(store, "clicks", damage)
    with (store / "vocab" / "category.txt").open("a", encoding="utf-8") as file:
        file.write("extra\n")
    assert main(["stats", str(store)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no Table 1 line for a damaged store
    assert captured.err == (
        f"camn: error: {store} is a damaged store or cannot be trained on (2 problem(s)):\n"
        "  arrays/clicks.npy holds 0 at row 0; item ids are 2..num_items + 1 (61)\n"
        "  vocab/category.txt has 15 lines; vocab_sizes in schema.json says 14\n"
    )


def test_stats_reports_a_truncated_array(store: Path, capsys: pytest.CaptureFixture) -> None:
    path = store / "arrays" / "pair_negatives.npy"
    path.write_bytes(path.read_bytes()[:-10])
    assert main(["stats", str(store)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert ("(1 problem(s)):\n  arrays/pair_negatives.npy is truncated: its header promises"
            in captured.err)


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
    "schema.json: the valid split has no samples; training needs samples in train, "
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
