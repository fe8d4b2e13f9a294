"""The ``dien`` source: DIEN's Amazon files, rows that carry their own history (label, user,
item, category, history items and categories joined by \\x02), written here from hand and from
the Amazon Beauty data."""

from __future__ import annotations

import json
from pathlib import Path

import beauty_as_rows
import numpy as np
import polars as pl
import pytest
import torch

from camn.cli import main
from camn.data.raw import DataError
from camn.data.sources import dien
from camn.data.store import PreparedStore
from camn.train.loop import ResidentSplit

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_beauty_5core"
BEAUTY_INTER = BEAUTY / "recbole" / "amazon_beauty.inter"
BEAUTY_ITEMS = BEAUTY / "recbole" / "amazon_beauty.item"
SEP = "\x02"


def dien_line(label: int, user: str, item: str, category: str, history: list[str],
              categories: list[str]) -> str:
    return "\t".join([str(label), user, item, category, SEP.join(history), SEP.join(categories)])


def write_dien(folder: Path, train: list[str], test: list[str], item_info: str | None) -> Path:
    """A folder of DIEN's files: the train and test rows, item-info when given."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / dien.TRAIN_FILE).write_text("\n".join(train) + "\n")
    (folder / dien.TEST_FILE).write_text("\n".join(test) + "\n")
    if item_info is not None:
        (folder / dien.ITEM_FILE).write_text(item_info)
    return folder


def prepare(folder: Path, out: Path, *argv: str) -> PreparedStore:
    assert main(["prepare", "dien", "--path", str(folder), *argv, "--out", str(out),
                 "--force"]) == 0
    return PreparedStore(out)


def refusal(capsys: pytest.CaptureFixture, folder: Path, out: Path, *argv: str) -> str:
    capsys.readouterr()
    assert main(["prepare", "dien", "--path", str(folder), *argv, "--out", str(out)]) == 2
    return capsys.readouterr().err


def decoded(store: PreparedStore, rows: np.ndarray, slot: int = 0) -> list[list[str]]:
    """The histories of ``rows`` as the values of attribute ``slot``."""
    vocab = np.asarray(store.vocab(store.attributes[slot]), dtype=object)
    ids, lengths = store.gather("histories", rows)[:, :, slot], store.gather("lengths", rows)
    return [vocab[row[:n]].tolist() for row, n in zip(ids, lengths, strict=True)]


# u1 clicked a, b, c (oldest first) before d; e is its sampled non-click; u2 saw a then e
HAND_TRAIN = [
    dien_line(1, "u1", "d", "X", ["a", "b", "c"], ["X", "Y", "X"]),
    dien_line(0, "u1", "e", "Y", ["a", "b", "c"], ["X", "Y", "X"]),
    dien_line(1, "u2", "e", "Y", ["a"], ["X"]),
    dien_line(0, "u2", "b", "Y", ["a"], ["X"]),
]
HAND_TEST = [
    dien_line(1, "u3", "a", "X", ["d", "e", "b", "c"], ["X", "Y", "Y", "X"]),
    dien_line(0, "u3", "f", "Z", ["d", "e", "b", "c"], ["X", "Y", "Y", "X"]),
]
ITEM_INFO = "a\tX\nb\tY\nc\tX\nd\tX\ne\tY\n"  # f only in the rows; b's "Y" in a row of u3 too


def test_hand_written_rows_keep_their_own_history_cut_to_the_most_recent(
    tmp_path: Path,
) -> None:
    folder = write_dien(tmp_path / "dien", HAND_TRAIN, HAND_TEST, ITEM_INFO)
    store = prepare(folder, tmp_path / "store", "--max-len", "3", "--valid-fraction", "0.5")
    assert store.schema["history"] == "rows"
    assert store.schema["notes"][0] == ("2 of 6 row histories hold more than max_len 3 items "
                                        "(their most recent max_len kept)")
    # rows sorted by (split, user, row order); half of the train file's two users validate
    splits = store.gather("splits", slice(None)).tolist()
    assert sorted(splits) == [0, 0, 1, 1, 2, 2] and splits == sorted(splits)
    assert store.gather("labels", slice(None)).tolist() == [1, 0, 1, 0, 1, 0]
    by_user = {}
    user_names = (store.root / "users.txt").read_text().split()
    items = store.vocab("item")
    for row, (user, item) in enumerate(zip(store.gather("users", slice(None)),
                                           store.gather("target_items", slice(None)),
                                           strict=True)):
        by_user.setdefault(user_names[user], []).append((items[item], decoded(store, [row])[0]))
    assert by_user == {
        "u1": [("d", ["a", "b", "c"]), ("e", ["a", "b", "c"])],
        "u2": [("e", ["a"]), ("b", ["a"])],
        "u3": [("a", ["e", "b", "c"]), ("f", ["e", "b", "c"])],  # d, the oldest, cut
    }
    # each history written twice is stored once: 3 histories, 3 + 1 + 3 items
    assert store.schema["histories"] == {"distinct": 3, "items": 7}
    assert store.array("impression_histories").tolist() in ([0, 0, 1, 1, 2, 2],
                                                            [1, 1, 0, 0, 2, 2])
    # categories: item-info's, f's from its row
    assert decoded(store, [4], slot=1)[0] == ["Y", "Y", "X"]
    table = store.item_table
    category = np.asarray(store.vocab("category"), dtype=object)
    assert dict(zip(items[2:], category[table[2:, 1]], strict=True)) == {
        "a": "X", "b": "Y", "c": "X", "d": "X", "e": "Y", "f": "Z"}
    assert store.schema["origin"]["labels"] == {"split": "valid-users", "negatives": 0,
                                                "valid_fraction": 0.5}


def test_a_first_row_without_history_is_read_as_dien_layout(tmp_path: Path) -> None:
    """The layout check counts the first line's fields as written: a user's first row has an
    empty history (two empty fields at the end of the line)."""
    train = [dien_line(1, "u1", "a", "X", [], []), dien_line(0, "u1", "b", "Y", [], []),
             dien_line(1, "u2", "b", "Y", ["a"], ["X"])]
    assert train[0].endswith("\t\t")
    folder = write_dien(tmp_path / "dien", train, [dien_line(1, "u3", "a", "X", ["b"], ["Y"])],
                        None)
    store = prepare(folder, tmp_path / "store", "--valid-fraction", "0.5")
    assert store.num_samples == 4 and store.schema["bad_input"] == {}


def test_a_category_the_rows_disagree_on_is_item_infos_and_noted(tmp_path: Path) -> None:
    train = [*HAND_TRAIN, dien_line(1, "u4", "a", "Y", ["c"], ["Z"])]  # a is X, c is X
    store = prepare(write_dien(tmp_path / "dien", train, HAND_TEST, ITEM_INFO),
                    tmp_path / "store")
    assert ("2 item(s) appear in the rows with another category than item-info gives "
            "(item-info's kept; the rows' first for an item it lacks)") in store.schema["notes"]
    assert decoded(store, np.arange(store.num_samples), slot=1).count(["Z"]) == 0


def test_without_item_info_the_rows_give_the_categories(tmp_path: Path) -> None:
    store = prepare(write_dien(tmp_path / "dien", HAND_TRAIN, HAND_TEST, None),
                    tmp_path / "store")
    assert store.schema["notes"][0].endswith("item-info not found: every item's category is the "
                                             "one the rows give it")
    assert store.vocab("category")[2:] == ["X", "Y", "Z"]


def test_bad_lines_are_counted_and_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = [
        dien_line(2, "u5", "a", "X", ["b"], ["Y"]),  # line 5: label not 0 or 1
        dien_line(1, "u5", "a", "X", ["b", "c"], ["Y"]),  # line 6: lists of different lengths
        dien_line(1, "", "a", "X", ["b"], ["Y"]),  # line 7: empty user
        "1\tu5\ta\tX\tb",  # line 8: five fields
        dien_line(1, "u5", "a", "X", ["b", "", "c"], ["Y", "X", "X"]),  # line 9: a hole
        dien_line(1, "u5", "a", "", ["b"], ["Y"]),  # line 10: empty category
        "nan\tu5\ta\tX\tb\tY",  # line 11: NaN label
    ]
    folder = write_dien(tmp_path / "dien", HAND_TRAIN + bad, HAND_TEST, ITEM_INFO + "a\tZ\n")
    store = prepare(folder, tmp_path / "store")
    assert store.schema["bad_input"] == {
        "empty category (line skipped)": 1,
        "empty user (line skipped)": 1,
        "empty value in a history list (line skipped)": 1,
        "history items and categories differ in length (line skipped)": 1,
        "item listed again in item-info (first kept)": 1,
        "label is NaN (row skipped)": 1,
        "label is not 0 or 1 (row skipped)": 1,
        "not 6 tab-separated fields (line skipped)": 1,
    }
    assert store.num_samples == 6
    train = folder / dien.TRAIN_FILE
    out = capsys.readouterr().out
    assert f"{train}:5: label is not 0 or 1 (row skipped)" in out
    assert f"{train}:6: history items and categories differ in length (line skipped)" in out
    assert refusal(capsys, folder, tmp_path / "strict", "--strict") == (
        f"camn: error: {train}:5: label is not 0 or 1\n")


def test_input_of_the_wrong_shape_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    reviews = write_dien(tmp_path / "reviews", ["u1\ta\t5.0\t100", "u1\tb\t4.0\t200"],
                         HAND_TEST, ITEM_INFO)
    assert refusal(capsys, reviews, tmp_path / "out") == (
        f"camn: error: {reviews / dien.TRAIN_FILE}: not DIEN's layout: line 1 has 4 "
        "tab-separated field(s); expected 6 (label, user, item, category, history_items, "
        "history_categories)\n")
    folder = write_dien(tmp_path / "dien", HAND_TRAIN, HAND_TEST, "a\tX\tmore\n")
    assert refusal(capsys, folder, tmp_path / "out") == (
        f"camn: error: {folder / dien.ITEM_FILE}: not DIEN's layout: line 1 has 3 "
        "tab-separated field(s); expected 2 (item, category)\n")
    (folder / dien.TEST_FILE).unlink()
    assert refusal(capsys, folder, tmp_path / "out") == (
        f"camn: error: {folder / dien.TEST_FILE}: no such file\n")
    assert refusal(capsys, tmp_path / "nowhere", tmp_path / "out").startswith(
        f"camn: error: {tmp_path / 'nowhere'}: no such folder")
    every_bad = write_dien(tmp_path / "bad", [dien_line(3, "u1", "a", "X", ["b"], ["Y"])],
                           HAND_TEST, ITEM_INFO)
    assert refusal(capsys, every_bad, tmp_path / "out") == (
        f"camn: error: {every_bad / dien.TRAIN_FILE}: every line is bad input, e.g. "
        f"{every_bad / dien.TRAIN_FILE}:1: label is not 0 or 1 (row skipped)\n")
    with pytest.raises(DataError, match=r"must lie in \(0, 1\), got 1.5"):
        dien.read(path=folder.parent / "dien", valid_fraction=1.5)


def synthetic_rows(users: list[str], rng: np.random.Generator, items: int = 40
                   ) -> list[str]:
    """A click and a non-click a user, with a history of 1-8 items: the user clicks an item
    of the category most frequent in their history, the non-click is of another category."""
    lines = []
    for user in users:
        history = rng.choice(items, size=int(rng.integers(1, 9)), replace=False)
        favourite = np.bincount(history % 4, minlength=4).argmax()
        clicked = int(rng.choice([i for i in range(items) if i % 4 == favourite]))
        skipped = int(rng.choice([i for i in range(items) if i % 4 != favourite]))
        names = [f"i{i}" for i in history]
        categories = [f"c{i % 4}" for i in history]
        lines += [dien_line(1, user, f"i{clicked}", f"c{clicked % 4}", names, categories),
                  dien_line(0, user, f"i{skipped}", f"c{skipped % 4}", names, categories)]
    return lines


def synthetic_folder(folder: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    info = "".join(f"i{i}\tc{i % 4}\n" for i in range(40))
    return write_dien(folder, synthetic_rows([f"u{u}" for u in range(200)], rng),
                      synthetic_rows([f"t{u}" for u in range(40)], rng), info)


def test_validation_is_a_seeded_user_split_of_the_train_file_or_a_file(tmp_path: Path) -> None:
    folder = synthetic_folder(tmp_path / "dien")
    store = prepare(folder, tmp_path / "store", "--seed", "3")
    users = store.gather("users", slice(None))
    splits = store.gather("splits", slice(None))
    names = np.asarray((store.root / "users.txt").read_text().split())
    assert store.schema["splits"] == {"train": 360, "valid": 40, "test": 80}
    assert {n[0] for n in names[users[splits == 2]]} == {"t"}  # the test file, as it is
    assert {n[0] for n in names[users[splits < 2]]} == {"u"}
    assert not set(users[splits == 0]) & set(users[splits == 1])  # no user in both
    again = prepare(folder, tmp_path / "again", "--seed", "3")
    other = prepare(folder, tmp_path / "other", "--seed", "4")
    assert np.array_equal(again.gather("users", slice(None)), users)
    assert not np.array_equal(other.gather("users", slice(None)), users)
    valid = tmp_path / "valid_rows"
    valid.write_text("\n".join(synthetic_rows(["v1", "v2"], np.random.default_rng(1))) + "\n")
    with_file = prepare(folder, tmp_path / "with_file", "--valid", str(valid))
    assert with_file.schema["splits"] == {"train": 400, "valid": 4, "test": 80}
    assert with_file.schema["origin"]["labels"]["split"] == "files"


def test_batches_and_the_device_copy_read_the_same_rows(tmp_path: Path) -> None:
    store = prepare(synthetic_folder(tmp_path / "dien"), tmp_path / "store", "--max-len", "5")
    resident = ResidentSplit(store, "train", torch.device("cpu"))
    from_store = next(store.batches("train", 64))
    from_device = next(resident.batches(64))
    for key in from_store:
        assert from_store[key].equal(from_device[key]), key
    assert int(from_store["mask"].sum(1).max()) == 5


def test_stats_train_evaluate_and_benchmark_on_dien_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = prepare(synthetic_folder(tmp_path / "dien"), tmp_path / "store")
    capsys.readouterr()
    assert main(["stats", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "histories" in out and "samples 480" in out
    for model in ("din", "camn"):
        run = tmp_path / f"run-{model}"
        assert main(["train", "--data", str(store.root), "--model", model, "--out", str(run),
                     "--epochs", "1", "--threads", "1", "--batch-size", "64", "--no-progress",
                     "--option", "embed_dim=4"]) == 0
        results = json.loads((run / "results.json").read_text())
        assert 0 <= results["test_auc"]["mean"] <= 1
    assert main(["evaluate", "--run", str(tmp_path / "run-din")]) == 0
    assert main(["benchmark", "--data", str(store.root), "--models", "din", "--seeds", "1",
                 "--epochs", "1", "--threads", "1", "--option", "embed_dim=4", "--out",
                 str(tmp_path / "bench")]) == 0
    rows = (tmp_path / "bench" / "results.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["model"] == "din"


# ---------------------------------------------------------------- DIEN's files from Amazon Beauty


def check_histories(store: PreparedStore, rows: pl.DataFrame, max_len: int) -> None:
    """Every sample's history is its row's list, the last ``max_len`` items, with their
    categories; its label is its row's."""
    samples = np.arange(store.num_samples)
    users = np.asarray((store.root / "users.txt").read_text().splitlines(), dtype=object)
    items = np.asarray(store.vocab(store.attributes[0]), dtype=object)
    found = pl.DataFrame({
        "user": users[store.gather("users", samples)],
        "item": items[store.gather("target_items", samples)],
        "label": store.gather("labels", samples).astype(np.int64),
        "stored": decoded(store, samples), "stored_categories": decoded(store, samples, 1),
    })
    joined = found.join(rows.with_columns(pl.col("label").cast(pl.Int64)),
                        on=["user", "item", "label"], how="left")
    assert joined["history"].null_count() == 0  # every sample is a row, with its label
    assert joined["stored"].equals(joined["history"].list.tail(max_len), null_equal=True)
    assert joined["stored_categories"].equals(
        joined["history_categories"].list.tail(max_len), null_equal=True)


@pytest.fixture(scope="module")
def beauty() -> pl.DataFrame:
    if not (BEAUTY_INTER.exists() and BEAUTY_ITEMS.exists()):
        pytest.skip(f"Amazon Beauty's RecBole files not found under {BEAUTY}")
    return beauty_as_rows.beauty_rows(BEAUTY_INTER, BEAUTY_ITEMS)


def test_beauty_written_as_dien_files(beauty: pl.DataFrame, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    folder = beauty_as_rows.write_dien(beauty, tmp_path / "dien")
    store = prepare(folder, tmp_path / "store", "--max-len", "10")
    check_histories(store, beauty, 10)
    users = beauty["user"].n_unique()
    assert store.num_samples == len(beauty) == 2 * users
    # DIEN's twice-written histories are stored once
    assert store.schema["histories"]["distinct"] == users
    test_users = beauty.filter(pl.col("part") == "test")["user"].n_unique()
    assert store.schema["splits"]["test"] == 2 * test_users
    train_file_users = users - test_users
    assert store.schema["splits"]["valid"] == 2 * int(0.1 * train_file_users)
    assert store.schema["bad_input"] == {}
    capsys.readouterr()
    assert main(["stats", str(store.root)]) == 0
    print(capsys.readouterr().out)  # the store's size against its rows, shown with -s
    for model in ("din", "camn"):
        assert main(["train", "--data", str(store.root), "--model", model, "--out",
                     str(tmp_path / model), "--epochs", "1", "--threads", "1", "--batch-size",
                     "1024", "--no-progress", "--option", "embed_dim=4"]) == 0
        auc = json.loads((tmp_path / model / "results.json").read_text())["test_auc"]["mean"]
        assert 0.5 < auc <= 1  # the click is the user's real next item, the other random
