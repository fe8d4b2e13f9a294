"""The prepared store: byte-identical reruns, --force, clean failures, and its batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import camn.data.store as store_module
from camn.cli import main
from camn.data.prepare import prepare
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.store import PreparedStore, table1_line

NUM_USERS, NUM_ITEMS = 61, 40


def raw_data(seed: int = 0) -> RawData:
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 12, NUM_USERS)
    user = np.repeat([f"u{u:03d}" for u in range(NUM_USERS)], counts)
    item = rng.integers(0, NUM_ITEMS, len(user))
    return RawData(
        interactions=pl.DataFrame(
            {"user": user, "item": [f"i{i:02d}" for i in item],
             "time": rng.permutation(len(user)).astype(np.int64)}
        ),
        items=pl.DataFrame(
            {"item": [f"i{i:02d}" for i in range(NUM_ITEMS)],
             "colour": [["red", "green", None][i % 3] for i in range(NUM_ITEMS)]}
        ),
        attributes=["item_id", "colour"],
        origin={"source": "test"},
    )


def make_store(path: Path, protocol: str = "last", seed: int = 2022, **kwargs) -> PreparedStore:
    prepare(raw_data(), path, protocol=protocol, max_len=5, seed=seed, report=BadInputReport(),
            **kwargs)
    return PreparedStore(path)


def files(root: Path) -> dict[str, bytes]:
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def write_csv_source(folder: Path) -> list[str]:
    """A table-source command line for ``raw_data()``, to go through ``camn prepare``."""
    raw = raw_data()
    raw.interactions.write_csv(folder / "inter.csv")
    raw.items.write_csv(folder / "items.csv")
    return ["prepare", "table", "--interactions", str(folder / "inter.csv"),
            "--items", str(folder / "items.csv"), "--attributes", "colour"]


def test_same_seed_gives_byte_identical_stores(tmp_path: Path) -> None:
    a = files(make_store(tmp_path / "a", "sliding").root)
    b = files(make_store(tmp_path / "b", "sliding").root)
    assert "schema.json" in a and "arrays/clicks.npy" in a and "vocab/colour.txt" in a
    assert "arrays/histories.npy" not in a  # gathered from the timelines, never stored
    assert a == b
    other = make_store(tmp_path / "c", "sliding", seed=1)
    first = PreparedStore(tmp_path / "a")
    everyone = slice(None)
    assert not np.array_equal(first.gather("users", everyone), other.gather("users", everyone))
    train = {s: set(st.gather("users", st.split_indices("train"))) for s, st in
             (("a", first), ("c", other))}
    assert train["a"] != train["c"]


def test_existing_out_needs_force(tmp_path: Path, capsys) -> None:
    argv = write_csv_source(tmp_path)
    out = tmp_path / "store"
    assert main([*argv, "--out", str(out)]) == 0
    before = files(out)
    assert main([*argv, "--out", str(out), "--seed", "5"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert files(out) == before
    assert main([*argv, "--out", str(out), "--seed", "5", "--force"]) == 0
    assert PreparedStore(out).schema["seed"] == 5  # a foreign file is refused: test_outputs.py
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inter.csv", "items.csv", "store"]


def test_failed_runs_leave_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out" / "store"
    bad = raw_data()
    bad.items = bad.items.rename({"colour": "size"})  # not the declared attributes
    with pytest.raises(DataError, match="expected item"):
        prepare(bad, out, report=BadInputReport())
    everything = RawData(  # the one user touched every item: build_samples refuses
        interactions=pl.DataFrame({"user": ["u", "u"], "item": ["a", "b"], "time": [1, 2]}),
        items=pl.DataFrame({"item": ["a", "b"]}), attributes=["item_id"], origin={},
    )
    with pytest.raises(DataError, match="every item"):
        prepare(everything, out, report=BadInputReport())
    assert not out.exists()
    real_save, calls = np.save, []

    def failing_save(path, array):  # the disk fills up after two arrays
        calls.append(path)
        if len(calls) > 2:
            raise OSError("No space left on device")
        real_save(path, array)

    monkeypatch.setattr(store_module.np, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        prepare(raw_data(), out, report=BadInputReport())
    assert len(calls) == 3 and list(out.parent.iterdir()) == []
    monkeypatch.undo()
    kept = files(make_store(out).root)
    monkeypatch.setattr(store_module.np, "save", failing_save)
    calls.clear()
    with pytest.raises(OSError):
        prepare(raw_data(), out, seed=9, report=BadInputReport(), force=True)
    assert files(out) == kept  # the old store survives a failed --force run
    assert [p.name for p in out.parent.iterdir()] == ["store"]


def test_failing_source_leaves_no_directory(tmp_path: Path, capsys) -> None:
    argv = write_csv_source(tmp_path)
    (tmp_path / "items.csv").write_text("item,colour\ni00,red\n\"unclosed,x\n")
    out = tmp_path / "store"
    assert main([*argv, "--out", str(out), "--protocol", "sliding"]) == 2
    assert "items.csv" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".store*"))


def test_batches_shapes_masks_and_coverage(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s", "sliding")
    everything = np.arange(store.num_samples)
    histories, lengths = store.gather("histories", everything), store.gather("lengths", everything)
    for split in ("train", "valid", "test"):
        rows = store.split_indices(split)
        seen = []
        batches = list(store.batches(split, 16))
        assert len(batches) == store.num_batches(split, 16) == -(-len(rows) // 16)
        for batch in batches:
            b = len(batch["index"])
            assert batch["history"].shape == (b, 5, 2) and batch["history"].dtype == torch.int64
            assert batch["mask"].shape == (b, 5) and batch["mask"].dtype == torch.bool
            assert batch["target"].shape == (b, 2) and batch["label"].dtype == torch.float32
            assert batch["user"].shape == (b,) and batch["index"].dtype == torch.int64
            index = batch["index"].numpy()
            np.testing.assert_array_equal(batch["mask"].sum(1).numpy(), lengths[index])
            expected_mask = np.arange(5) < lengths[index, None]
            np.testing.assert_array_equal(batch["mask"].numpy(), expected_mask)
            np.testing.assert_array_equal(batch["history"].numpy(), histories[index])
            np.testing.assert_array_equal(batch["target"].numpy(),
                                          store.gather("targets", index))
            np.testing.assert_array_equal(batch["label"].numpy(), store.gather("labels", index))
            seen.append(index)
        np.testing.assert_array_equal(np.concatenate(seen), rows)  # in order, each once


def order(store: PreparedStore, **kwargs) -> np.ndarray:
    return np.concatenate([b["index"].numpy() for b in store.batches("train", 32, **kwargs)])


def test_shuffle_is_deterministic_per_seed_and_epoch(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s", "sliding")
    rows = store.split_indices("train")
    a = order(store, shuffle=True, seed=3, epoch=0)
    np.testing.assert_array_equal(a, order(store, shuffle=True, seed=3, epoch=0))
    np.testing.assert_array_equal(np.sort(a), rows)
    assert not np.array_equal(a, rows)
    assert not np.array_equal(a, order(store, shuffle=True, seed=3, epoch=1))
    assert not np.array_equal(a, order(store, shuffle=True, seed=4, epoch=0))


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_two_ranks_get_equal_disjoint_shards(tmp_path: Path, split: str) -> None:
    store = make_store(tmp_path / "s", "sliding")
    rows = store.split_indices(split)
    shards = [
        [b["index"].numpy() for b in store.batches(split, 8, shuffle=True, seed=1, rank=r,
                                                    world_size=2)]
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == store.num_batches(split, 8, world_size=2)
    first, second = (np.concatenate(s) for s in shards)
    assert len(first) == len(second) == -(-len(rows) // 2)
    np.testing.assert_array_equal(np.union1d(first, second), rows)
    assert len(np.intersect1d(first, second)) == len(rows) % 2  # one row wraps when odd


def test_history_negatives(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s", "sliding")
    items = store.array("item_attributes")
    batches = list(store.batches("train", 64, shuffle=True, seed=2, history_negatives=True))
    again = list(store.batches("train", 64, shuffle=True, seed=2, history_negatives=True))
    for batch, same in zip(batches, again, strict=True):
        negative, mask = batch["history_negative"].numpy(), batch["mask"].numpy()
        assert negative.shape == batch["history"].shape
        assert (negative[~mask] == 0).all()
        ids = negative[mask][:, 0]
        assert (ids >= 2).all() and (ids < len(items)).all()
        np.testing.assert_array_equal(negative[mask], items[ids])
        assert torch.equal(batch["history_negative"], same["history_negative"])
    assert "history_negative" not in next(store.batches("train", 64))


def test_history_negatives_are_the_draws_of_the_seeded_generator() -> None:
    """Each position gets the item of the generator's next draw (padding: zeros), so a seed
    gives the same negatives whatever the lookup's implementation."""
    table = torch.tensor([[0, 0], [1, 1], [12, 5], [13, 6], [14, 7], [15, 5]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    drawn = store_module.draw_items(np.random.default_rng(7), table, mask)
    ids = np.random.default_rng(7).integers(2, 6, size=(2, 3))
    expected = table[torch.from_numpy(ids)] * mask[..., None]
    assert drawn.dtype == torch.int64
    assert torch.equal(drawn, expected)


def test_store_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a prepared store"):
        PreparedStore(tmp_path)
    store = make_store(tmp_path / "s")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        store.split_indices("dev")
    with pytest.raises(DataError, match="missing from the store"):
        store.array("nothing")


def test_stats_prints_the_table1_line(tmp_path: Path, capsys) -> None:
    store = make_store(tmp_path / "s")
    assert main(["stats", str(store.root)]) == 0
    printed = capsys.readouterr().out
    assert table1_line(store.schema) in printed
    n, m = store.schema["num_users"], store.schema["num_items"]
    assert f"users {n} | items {m} | attributes 2 | samples {2 * n}" in printed
    assert "colour (2 values)" in printed
    size = sum(path.stat().st_size for path in store.root.rglob("*") if path.is_file())
    samples = sum(store.schema["splits"].values())
    assert f"size {size / 1e6:,.1f} MB, {size / samples:,.1f} bytes a sample (timelines " in printed


def test_vocab_lines_match_ids_whatever_the_values(tmp_path: Path) -> None:
    raw = raw_data()
    odd = ["p\u2028q", "r\r\ns", "t\x85u", "", "v\nw"]
    raw.items = raw.items.with_columns(
        colour=pl.Series([odd[i % len(odd)] for i in range(NUM_ITEMS)])
    )
    prepare(raw, tmp_path / "s", report=BadInputReport())
    store = PreparedStore(tmp_path / "s")
    vocab = store.vocab("colour")
    assert len(vocab) == store.vocab_sizes[1] == len(odd) + 2
    assert vocab[2:] == sorted(" ".join(v.splitlines()) for v in odd)


def test_planted_drivers_are_stored(tmp_path: Path) -> None:
    assert not make_store(tmp_path / "plain").has_drivers
    raw = raw_data()
    n = len(raw.interactions)
    raw.interactions = raw.interactions.with_columns(
        driver=pl.Series(np.arange(n) % 2, dtype=pl.Int8),
        driver_kind=pl.Series(np.zeros(n), dtype=pl.Int8),
    )
    prepare(raw, tmp_path / "planted", max_len=5, report=BadInputReport())
    store = PreparedStore(tmp_path / "planted")
    assert store.has_drivers
    rows = np.arange(store.num_samples)
    history, real = store.gather("history_driver", rows), np.arange(5) < store.gather(
        "lengths", rows)[:, None]
    assert history.shape == store.gather("histories", rows).shape[:2]
    assert set(np.unique(history[real])) <= {0, 1} and (history[~real] == -1).all()
    target = store.gather("target_driver", rows)
    assert (target[store.gather("labels", rows) == 0] == -1).all()
    assert set(np.unique(target[store.gather("labels", rows) == 1])) == {0, 1}
    assert (store.gather("history_driver_kind", rows)[real] == 0).all()
    # the drivers follow their clicks: interaction i has driver i % 2, and the clicks of a
    # timeline are its user's rows in time order
    frame = raw_data().interactions.with_row_index("row").sort(["user", "time"],
                                                               maintain_order=True)
    np.testing.assert_array_equal(store.array("click_driver"), frame["row"].to_numpy() % 2)
