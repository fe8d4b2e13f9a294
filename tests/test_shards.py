"""A store in shards (camn.data.shards) holds exactly the samples of the unsharded store prepared
with per-user draws (camn.data.negatives), in the same row order, so training on it gives the
same result; each user's draws depend on that user alone."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from camn.cli import main
from camn.data.negatives import user_keys
from camn.data.prepare import prepare
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.shards import (
    ShardedStore,
    open_store,
    parse_shard,
    prepare_shard,
    prepare_vocabularies,
)
from camn.data.sources import available_sources
from camn.data.sources._files import read_table
from camn.data.sources.synthetic import generate
from camn.data.sources.table import shard_rows
from camn.data.store import PreparedStore
from camn.train.loop import TrainConfig, train_one

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BEAUTY = DATA / "amazon_beauty_5core" / "mcauley2014"
FIELDS = ("histories", "lengths", "targets", "labels", "users", "splits")
MASK = (1 << 64) - 1


def copy(raw: RawData) -> RawData:
    """prepare empties the interactions it reads: one copy a use."""
    return RawData(raw.interactions.clone(), raw.items, raw.attributes, raw.origin,
                   notes=list(raw.notes))


def shard_all(raw: RawData, big: Path, count: int, protocol: str) -> ShardedStore:
    prepare_vocabularies(copy(raw), big, BadInputReport())
    for index in reversed(range(count)):  # any order
        prepare_shard(copy(raw), big / f"shard-{index}", big, index, count, protocol=protocol)
    return ShardedStore(big)


def digests(store: PreparedStore, chunk: int = 100_000) -> dict[str, str]:
    found = {}
    for name in FIELDS:
        digest = hashlib.sha256()
        for start in range(0, store.num_samples, chunk):
            rows = np.arange(start, min(store.num_samples, start + chunk))
            digest.update(np.ascontiguousarray(store.gather(name, rows)).tobytes())
        found[name] = digest.hexdigest()
    return found


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[PreparedStore, ShardedStore]:
    root = tmp_path_factory.mktemp("shards")
    raw = generate(users=900, items=300, attributes=3)
    whole = root / "whole"
    prepare(copy(raw), whole, protocol="sliding", negatives_by="user")
    return PreparedStore(whole), shard_all(raw, root / "big", 3, "sliding")


def fnv_mix(text: str) -> int:
    """user_keys by hand: FNV-1a 64 of the UTF-8 bytes, xor the length, SplitMix64's finaliser."""
    value = 0xCBF29CE484222325
    data = text.encode()
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & MASK
    value ^= len(data)
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK
    return value ^ (value >> 31)


def test_user_keys_are_fnv_1a_mixed_whatever_the_other_users() -> None:
    names = ["A1B2", "", "é-user", "a" * 40]
    assert user_keys(names).tolist() == [fnv_mix(n) for n in names]
    assert user_keys(["é-user"]).tolist() == user_keys(names)[2:3].tolist()


def test_three_shards_hold_exactly_the_unsharded_samples_in_its_order(synthetic) -> None:
    whole, big = synthetic
    users = whole.schema["num_users"]
    assert [s.schema["shard"]["users"] for s in big.shards] == [
        [0, users // 3], [users // 3, 2 * users // 3], [2 * users // 3, users]]
    assert big.schema["splits"] == whole.schema["splits"]
    assert big.schema["num_users"] == whole.schema["num_users"]
    assert digests(big) == digests(whole)
    rows = np.array([5, 0, whole.num_samples - 1, 2 * whole.schema["splits"]["train"] // 3])
    np.testing.assert_array_equal(big.gather("targets", rows), whole.gather("targets", rows))
    assert all(big.vocab(a) == whole.vocab(a) for a in whole.attributes)
    big.check_trainable()


def test_per_user_draws_differ_from_the_default_stream_but_keep_its_layout(tmp_path) -> None:
    raw = generate(users=300, items=100, attributes=2)
    stream = prepare(copy(raw), tmp_path / "stream", protocol="last")
    user = prepare(copy(raw), tmp_path / "user", protocol="last", negatives_by="user")
    assert (stream["negatives_by"], user["negatives_by"]) == ("stream", "user")
    negatives = [np.load(tmp_path / kind / "arrays" / "pair_negatives.npy")
                 for kind in ("stream", "user")]
    assert len(negatives[0]) == len(negatives[1]) == 300
    assert not np.array_equal(negatives[0], negatives[1])
    share = user["splits"]["train"] / (2 * 300)  # 80% in expectation, not exactly
    assert 0.7 < share < 0.9


def test_training_on_the_shards_gives_the_unsharded_result(synthetic) -> None:
    whole, big = synthetic
    config = TrainConfig("din", epochs=1, batch_size=256, device="cpu", progress=False)
    results = [train_one(store, config, seed=3) for store in (whole, big)]
    keys = ("test_auc", "test_logloss", "valid_auc", "valid_gauc")
    assert [results[0][k] for k in keys] == [results[1][k] for k in keys]


def test_each_rank_reads_the_rows_of_its_own_shards(synthetic) -> None:
    _, big = synthetic
    rng = np.random.default_rng(0)
    shares = [big.epoch_rows("train", True, rng, rank, 2) for rank in range(2)]
    shard_of = [np.unique(big.locate(rows)[0]).tolist() for rows in shares]
    assert shard_of == [[0, 2], [1]]
    train = [s.schema["splits"]["train"] for s in big.shards]
    longest = max(train[0] + train[2], train[1])
    assert len(shares[0]) == len(shares[1]) == longest  # wrapped to the largest share
    assert big.num_batches("train", 256, 2) == -(-longest // 256)
    assert len(set(shares[1].tolist())) == train[1]


def test_a_missing_or_foreign_shard_is_named(tmp_path) -> None:
    raw = generate(users=300, items=100, attributes=2)
    big = tmp_path / "big"
    prepare_vocabularies(copy(raw), big, BadInputReport())
    prepare_shard(copy(raw), big / "shard-0", big, 0, 2)
    with pytest.raises(DataError, match=r"lacks shard\(s\) 1 of 2: camn prepare"):
        ShardedStore(big)
    other = tmp_path / "other"
    prepare_vocabularies(copy(raw), other, BadInputReport())
    prepare_shard(copy(raw), big / "shard-1", other, 1, 2)
    with pytest.raises(DataError, match="shard-1 was prepared against another vocabulary pass"):
        ShardedStore(big)


def test_the_shard_option_takes_i_of_n_from_zero() -> None:
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "-1/2", "0/0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shard(bad)


def test_camn_prepares_shards_and_reads_the_folder_as_one_store(tmp_path, capsys) -> None:
    big = tmp_path / "big"
    source = ["prepare", "synthetic", "--users", "400", "--items", "150", "--attributes", "2"]
    assert main([*source, "--vocab-only", "--out", str(big)]) == 0
    for index in range(2):
        assert main([*source, "--vocab", str(big), "--shard", f"{index}/2",
                     "--out", str(big / f"shard-{index}")]) == 0
    assert main([*source, "--negatives-by", "user", "--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    assert main(["stats", str(big)]) == 0
    stats = capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "schema.json").read_text())
    assert f"samples {sum(whole['splits'].values()):,}" in stats
    assert isinstance(open_store(big), ShardedStore)
    assert main([*source, "--vocab", str(big), "--shard", "0/2", "--negatives-by", "stream",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--negatives-by stream needs every user" in capsys.readouterr().err


@pytest.mark.skipif(not BEAUTY.is_dir(), reason=f"Amazon Beauty not found at {BEAUTY}")
def test_three_shards_of_beauty_sliding_hold_the_unsharded_samples(tmp_path) -> None:
    raw = available_sources()["amazon"].read(
        reviews=BEAUTY / "reviews_Beauty_5.json.gz", meta=BEAUTY / "meta_Beauty.json.gz",
        report=BadInputReport())
    prepare(copy(raw), tmp_path / "whole", protocol="sliding", negatives_by="user")
    whole, big = PreparedStore(tmp_path / "whole"), shard_all(raw, tmp_path / "big", 3, "sliding")
    assert big.schema["splits"] == whole.schema["splits"]
    assert digests(big) == digests(whole)
    batches = [store.batches("train", 2048, shuffle=True, seed=1, history_negatives=True)
               for store in (whole, big)]
    for _, (one, other) in zip(range(5), zip(*batches, strict=True), strict=False):
        assert all(np.array_equal(one[key], other[key]) for key in one)


def test_a_shard_of_a_parquet_log_reads_only_its_users_rows(tmp_path) -> None:
    raw = generate(users=500, items=120, attributes=2)
    log = tmp_path / "log.parquet"
    raw.interactions.select("user", "item", "time").with_columns(
        pl.col("user").str.strip_prefix("u").cast(pl.Int64)).write_parquet(log)  # integer ids
    table = ["prepare", "table", "--interactions", str(log), "--user-col", "user",
             "--item-col", "item", "--time-col", "time", "--protocol", "sliding"]
    big = tmp_path / "big"
    assert main([*table, "--vocab-only", "--out", str(big)]) == 0
    for index in range(3):
        assert main([*table, "--vocab", str(big), "--shard", f"{index}/3",
                     "--out", str(big / f"shard-{index}")]) == 0
    assert main([*table, "--negatives-by", "user", "--out", str(tmp_path / "whole")]) == 0
    assert digests(ShardedStore(big)) == digests(PreparedStore(tmp_path / "whole"))
    users = (big / "users.txt").read_text().splitlines()
    keep = shard_rows("user", (users[0], users[9]))
    rows = read_table(log, "parquet", BadInputReport(), keep)
    assert sorted(rows["user"].cast(pl.String).unique()) == users[:10]
    whole = pl.read_parquet(log).with_row_index("__line", offset=1)
    assert rows.equals(whole.filter(pl.col("user").cast(pl.String).is_in(users[:10])))


def test_torchrun_ranks_train_on_their_own_shards(tmp_path) -> None:
    raw = generate(users=300, items=100, attributes=2)
    big = tmp_path / "big"
    prepare_vocabularies(copy(raw), big, BadInputReport())
    for index in range(2):
        prepare_shard(copy(raw), big / f"shard-{index}", big, index, 2, protocol="sliding")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "camn", "train", "--data", str(big), "--model", "din", "--epochs", "1",
               "--batch-size", "128", "--device", "cpu", "--no-progress", "--out",
               str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "seed_1" / "metrics.json").read_text())
    shares = [ShardedStore(big).shards[rank].schema["splits"]["train"] for rank in range(2)]
    assert metrics["world_size"] == 2 and shares[0] != shares[1]
    # each rank its own shard, wrapped to the larger (interleaving all rows: sum(shares) (+ 1))
    assert metrics["train_samples"] == 2 * max(shares)


def test_a_log_of_labelled_impressions_is_refused_in_shards(tmp_path, capsys) -> None:
    """Shards hold clicks: a labelled log's vocabulary pass or shard job stops with one line
    rather than prepare its impressions as clicks with the labels dropped."""
    log = tmp_path / "log.csv"
    log.write_text("user,item,time,click\n" + "".join(
        f"u{u},i{(u + r) % 5},{r},{r % 2}\n" for u in range(6) for r in range(4)))
    table = ["prepare", "table", "--interactions", str(log), "--protocol", "sliding"]
    big = tmp_path / "big"
    assert main([*table, "--vocab-only", "--out", str(big)]) == 0  # as a log of clicks
    labelled = [*table[:-2], "--label-col", "click"]
    assert main([*labelled, "--vocab-only", "--out", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.endswith(
        "camn: error: --vocab-only is for logs of clicks; a log of labelled impressions is "
        "prepared whole (not in shards) for now: leave out --vocab-only\n")
    assert main([*labelled, "--vocab", str(big), "--shard", "0/2",
                 "--out", str(big / "shard-0")]) == 2
    assert "--shard is for logs of clicks" in capsys.readouterr().err
    assert not (tmp_path / "other").exists() and not (big / "shard-0").exists()
