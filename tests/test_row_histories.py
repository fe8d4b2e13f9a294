"""Rows that carry their own history: the store form (``"history": "rows"``), its checks, and
``camn prepare table --history-col`` on BARS/FuxiCTR-style CSVs, hand-written and written from
the Amazon Beauty data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from beauty_as_rows import beauty_rows, write_bars
from test_dien import BEAUTY_INTER, BEAUTY_ITEMS, check_histories, decoded

from camn.cli import main
from camn.data.raw import DataError
from camn.data.row_histories import distinct_runs
from camn.data.store import PreparedStore
from camn.data.store_checks import SCHEMA_KEYS

HEADER = "label,user_id,item_id,cate_id,item_history,cate_history,price,hour\n"
# u1 clicked a, b, c (oldest first) before d, and skipped e; u2 saw a, clicked e, skipped b
TRAIN = HEADER + """1,u1,d,X,a^b^c,X^Y^X,1.5,9
0,u1,e,Y,a^b^c,X^Y^X,2.5,9
1,u2,e,Y,a,X,3.0,10
0,u2,b,Y,a,X,1.0,10
"""
VALID = HEADER + "1,u3,c,X,,,2.0,11\n0,u3,a,X,,,2.0,11\n"  # no history yet
TEST = HEADER + "1,u4,a,X,d^e^b^c,X^Y^Y^X,1.0,12\n0,u4,f,Z,d^e^b^c,X^Y^Y^X,1.0,12\n"
COLUMNS = ("--label-col", "label", "--user-col", "user_id", "--item-col", "item_id",
           "--history-col", "item_history,cate_id=cate_history")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def split_files(tmp_path: Path, train: str = TRAIN) -> list[str]:
    return ["--interactions", str(write(tmp_path / "train.csv", train)),
            "--valid", str(write(tmp_path / "valid.csv", VALID)),
            "--test", str(write(tmp_path / "test.csv", TEST))]


def prepare(tmp_path: Path, *argv: str, name: str = "store") -> PreparedStore:
    out = tmp_path / name
    assert main(["prepare", "table", *argv, "--out", str(out), "--force"]) == 0
    return PreparedStore(out)


def refusal(capsys: pytest.CaptureFixture, tmp_path: Path, *argv: str) -> str:
    capsys.readouterr()
    assert main(["prepare", "table", *argv, "--out", str(tmp_path / "refused")]) == 2
    return capsys.readouterr().err


def test_equal_consecutive_histories_are_stored_once() -> None:
    # rows: [1 2] [1 2] [3] [1 2] [] [] [1 3]: equal to the row before for rows 1 and 5 only
    items = np.array([1, 2, 1, 2, 3, 1, 2, 1, 3])
    offsets, kept, which = distinct_runs(items, np.array([2, 2, 1, 2, 0, 0, 2]))
    assert offsets.tolist() == [0, 2, 3, 5, 5, 7]
    assert kept.tolist() == [1, 2, 3, 1, 2, 1, 3]
    assert which.tolist() == [0, 0, 1, 2, 3, 3, 4]
    offsets, kept, which = distinct_runs(np.array([], dtype=np.int32), np.array([0, 0]))
    assert offsets.tolist() == [0, 0] and which.tolist() == [0, 0]


def test_bars_rows_keep_their_files_histories_and_attributes(tmp_path: Path) -> None:
    store = prepare(tmp_path, *split_files(tmp_path), *COLUMNS, "--max-len", "3")
    assert store.schema["splits"] == {"train": 4, "valid": 2, "test": 2}
    assert store.schema["clicks_per_split"] == {"train": 2, "valid": 1, "test": 1}
    assert store.schema["origin"]["labels"]["split"] == "files"
    assert store.schema["origin"]["history_columns"] == {"item_id": "item_history",
                                                         "cate_id": "cate_history"}
    assert store.attributes == ["item_id", "cate_id"]
    rows = np.arange(8)
    items = store.vocab("item_id")
    assert [items[i] for i in store.gather("target_items", rows)] == list("deebcaaf")
    assert store.gather("labels", rows).tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert decoded(store, rows) == [list("abc")] * 2 + [["a"]] * 2 + [[]] * 2 + [list("ebc")] * 2
    assert decoded(store, rows, slot=1)[-1] == ["Y", "Y", "X"]  # d, the oldest, cut
    assert store.schema["histories"] == {"distinct": 4, "items": 7}
    category = np.asarray(store.vocab("cate_id"), dtype=object)
    assert dict(zip(items[2:], category[store.item_table[2:, 1]], strict=True)) == {
        "a": "X", "b": "Y", "c": "X", "d": "X", "e": "Y", "f": "Z"}


def test_the_rows_disagreeing_on_an_items_category_are_noted(tmp_path: Path) -> None:
    train = TRAIN + "1,u5,a,Y,c,Z,1.0,9\n0,u5,f,Z,c,Z,1.0,9\n"  # a was X, c was X
    store = prepare(tmp_path, *split_files(tmp_path, train), *COLUMNS)
    assert store.schema["notes"][0] == ("2 item(s) appear in the rows with more than one "
                                        "cate_id (the first kept)")
    category = np.asarray(store.vocab("cate_id"), dtype=object)
    # an item's first value as a row's item, before those of the histories: a is u5's Y, c is
    # u3's X (valid) rather than u5's history's Z
    assert category[store.item_table[[2, 4], 1]].tolist() == ["Y", "X"]


def test_bad_rows_are_counted_and_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = ("2,u5,a,X,b,Y,1.0,9\n"  # line 6: label not 0 or 1
           "1,u5,a,X,b^c,Y,1.0,9\n"  # line 7: lists of different lengths
           "1,u5,a,X,b^^c,Y^X^X,1.0,9\n"  # line 8: an empty value
           "1,u5,a,X,b,Y,abc,9\n"  # line 9: not a number
           "1,u5,a,X,b,Y,NaN,9\n"  # line 10: NaN
           ",u5,a,X,b,Y,1.0,9\n"  # line 11: no label
           "1,,a,X,b,Y,1.0,9\n"  # line 12: no user
           "nan,u5,a,X,b,Y,1.0,9\n")  # line 13: NaN label
    users = write(tmp_path / "users.csv", "user_id,age\nu1,30\nu2,40\nu1,31\nu9,50\n")
    store = prepare(tmp_path, *split_files(tmp_path, TRAIN + bad), *COLUMNS, "--numeric",
                    "price", "--context", "hour", "--users", str(users), "--user-features",
                    "age")
    assert store.schema["bad_input"] == {
        "empty value in history column 'item_history' (row skipped)": 1,
        "history columns 'item_history' and 'cate_history' differ in length (row skipped)": 1,
        "label is NaN (row skipped)": 1,
        "label is not 0 or 1 (row skipped)": 1,
        "no label value (row skipped)": 1,
        "no user value (row skipped)": 1,
        "numeric feature 'price' is not a number (row skipped)": 2,
        "user listed again in the user table (first kept)": 1,
    }
    assert store.num_samples == 8
    # u3 and u4 are not in the user table (unknown), u9 is not in the log (no part)
    assert "user features age: 2 of 4 users have no row in the user table (their features " \
           "unknown)" in store.schema["notes"]
    out = capsys.readouterr().out
    train = tmp_path / "train.csv"
    assert (f"{train}:7: history columns 'item_history' and 'cate_history' differ in length "
            "(row skipped)") in out
    batch = next(store.batches("train", 4))
    assert batch["user_features"][:, 0].tolist() == [2, 2, 3, 3]  # 30, 30, 40, 40
    assert batch["context"][:, 0].tolist() == [5, 5, 2, 2]  # "10" < "11" < "12" < "9"
    assert batch["numeric"].shape == (4, 1)
    assert refusal(capsys, tmp_path, *split_files(tmp_path, TRAIN + bad), *COLUMNS,
                   "--strict") == f"camn: error: {train}:6: label is not 0 or 1\n"


def test_what_rows_with_their_history_cannot_take_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    files = split_files(tmp_path)
    unlabelled = [a for a in COLUMNS if a not in ("--label-col", "label")]
    assert refusal(capsys, tmp_path, *files, *unlabelled) == (
        "camn: error: --history-col reads labelled rows: pass --label-col COL or --label EXPR\n")
    assert refusal(capsys, tmp_path, *files, *COLUMNS, "--negatives", "1") == (
        "camn: error: --negatives: not for rows that carry their history (--history-col): they "
        "hold no times, and their history is their own\n")
    interactions = files[:2]
    assert "--split time: not for rows" in refusal(capsys, tmp_path, *interactions, *COLUMNS,
                                                   "--split", "time")
    spec = [*COLUMNS[:-1], "item_history,cate_history"]
    assert refusal(capsys, tmp_path, *files, *spec) == (
        "camn: error: --history-col 'item_history,cate_history': name the items' history "
        "column once, and each attribute as COL=HIST, e.g. item_history,cate_id=cate_history\n")
    spec = [*COLUMNS[:-1], "item_history,cate_id=cate_hist"]
    assert refusal(capsys, tmp_path, *files, *spec) == (
        f"camn: error: {tmp_path / 'train.csv'}: no column 'cate_hist'; available columns: "
        "label, user_id, item_id, cate_id, item_history, cate_history, price, hour\n")
    items = write(tmp_path / "items.csv", "item_id,cate_id,brand\na,X,B1\n")
    assert refusal(capsys, tmp_path, *files, *COLUMNS, "--items", str(items), "--attributes",
                   "cate_id") == ("camn: error: --attributes cate_id: read from the rows by "
                                  "--history-col already; name each attribute once\n")


def test_an_items_file_adds_attributes_after_the_rows(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,brand\na,B1\nb,B2\nc,B1\nd,B3\ne,B2\n")
    store = prepare(tmp_path, *split_files(tmp_path), *COLUMNS, "--items", str(items),
                    "--attributes", "brand")
    assert store.attributes == ["item_id", "cate_id", "brand"]
    assert decoded(store, [0], slot=2) == [["B1", "B2", "B1"]]
    assert "1 item(s) of the rows have no row in" in store.schema["notes"][0]  # f
    assert store.vocab("brand")[store.item_table[7, 2]] == "<unk>"


def test_a_log_in_one_file_is_split_by_user(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = [HEADER.strip()]
    for user in range(50):
        history = "^".join(f"i{i}" for i in rng.choice(20, size=3, replace=False))
        lines += [f"{label},u{user},i{rng.integers(20)},X,{history},X^X^X,1.0,9"
                  for label in (1, 0)]
    log = write(tmp_path / "log.csv", "\n".join(lines) + "\n")
    store = prepare(tmp_path, "--interactions", str(log), *COLUMNS)
    assert store.schema["origin"]["labels"]["split"] == "user"
    assert store.schema["splits"] == {"train": 80, "valid": 10, "test": 10}
    users, splits = store.gather("users", slice(None)), store.gather("splits", slice(None))
    assert all(len(set(splits[users == u])) == 1 for u in np.unique(users))


def test_train_din_and_camn_on_bars_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    files = {}
    for name, count in (("train", 160), ("valid", 30), ("test", 30)):
        lines = [HEADER.strip()]
        for user in range(count):
            history = rng.choice(24, size=int(rng.integers(1, 7)), replace=False)
            favourite = int(np.bincount(history % 3, minlength=3).argmax())
            joined = "^".join(f"i{i}" for i in history)
            cats = "^".join(f"c{i % 3}" for i in history)
            click = int(rng.choice([i for i in range(24) if i % 3 == favourite]))
            skip = int(rng.choice([i for i in range(24) if i % 3 != favourite]))
            lines += [f"1,{name}{user},i{click},c{click % 3},{joined},{cats},1.0,9",
                      f"0,{name}{user},i{skip},c{skip % 3},{joined},{cats},1.0,9"]
        files[name] = write(tmp_path / f"{name}.csv", "\n".join(lines) + "\n")
    store = prepare(tmp_path, "--interactions", str(files["train"]), "--valid",
                    str(files["valid"]), "--test", str(files["test"]), *COLUMNS)
    store.check_trainable()
    for model in ("din", "camn"):
        run = tmp_path / model
        assert main(["train", "--data", str(store.root), "--model", model, "--out", str(run),
                     "--epochs", "1", "--threads", "1", "--batch-size", "64", "--no-progress",
                     "--option", "embed_dim=4"]) == 0
        assert 0 <= json.loads((run / "results.json").read_text())["test_auc"]["mean"] <= 1


# ---------------------------------------------------------------- the store's checks


def damaged(tmp_path: Path) -> PreparedStore:
    return prepare(tmp_path, *split_files(tmp_path), *COLUMNS, "--max-len", "3")


def test_the_content_scan_names_damaged_row_histories(tmp_path: Path) -> None:
    store = damaged(tmp_path)
    arrays = store.root / "arrays"
    which = np.load(arrays / "impression_histories.npy")
    which[5] = 9
    np.save(arrays / "impression_histories.npy", which)
    assert PreparedStore(store.root).content_problems() == [
        "arrays/impression_histories.npy holds 9 at row 5: stored histories are 0..3"]
    which[5] = 2
    np.save(arrays / "impression_histories.npy", which)
    offsets = np.load(arrays / "history_offsets.npy")
    np.save(arrays / "history_offsets.npy", offsets[[0, 2, 1, 3, 4]])
    assert PreparedStore(store.root).content_problems() == [
        "arrays/history_offsets.npy does not ascend from 0 to the item count (7 in "
        "arrays/clicks.npy)"]
    np.save(arrays / "history_offsets.npy", offsets)
    schema = json.loads((store.root / "schema.json").read_text())
    (store.root / "schema.json").write_text(json.dumps(schema | {"max_len": 2}))
    assert PreparedStore(store.root).content_problems() == [
        "arrays/history_offsets.npy holds a history of 3 items, longer than max_len 2"]


def test_the_open_check_names_a_row_store_without_its_parts(tmp_path: Path) -> None:
    store = damaged(tmp_path)
    (store.root / "arrays" / "history_offsets.npy").unlink()
    assert PreparedStore(store.root, validate=False).layout_problems() == [
        "arrays/history_offsets.npy is missing"]
    schema = json.loads((store.root / "schema.json").read_text())
    assert "timelines" in SCHEMA_KEYS and "timelines" not in schema
    del schema["histories"]
    (store.root / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(DataError) as caught:
        PreparedStore(store.root)
    assert str(caught.value) == (f"{store.root} is a damaged store: schema.json histories must "
                                 "give the distinct and items counts of the stored row histories")


# ---------------------------------------------------------------- BARS's CSVs from Amazon Beauty


BEAUTY_COLUMNS = ("--label-col", "label", "--user-col", "user", "--item-col", "item",
                  "--history-col", "history,category=history_categories")


def test_beauty_written_as_bars_csvs(tmp_path: Path) -> None:
    if not (BEAUTY_INTER.exists() and BEAUTY_ITEMS.exists()):
        pytest.skip(f"Amazon Beauty's RecBole files not found under {BEAUTY_INTER.parent}")
    rows = beauty_rows(BEAUTY_INTER, BEAUTY_ITEMS)
    files = write_bars(rows, tmp_path)
    store = prepare(tmp_path, "--interactions", str(files["train"]), "--valid",
                    str(files["valid"]), "--test", str(files["test"]), *BEAUTY_COLUMNS)
    check_histories(store, rows, 20)
    assert store.schema["splits"] == {
        part: rows.filter(pl.col("part") == part).height for part in ("train", "valid", "test")}
    assert store.schema["bad_input"] == {}
    assert store.schema["histories"]["distinct"] == rows["user"].n_unique()
