"""``--numeric price --bucketize price``: a numeric feature put into deciles of the training
split, stored as a context feature, and scored with the same edges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from camn.cli import main
from camn.data.store import PreparedStore
from camn.encoded_rows import UnknownIds
from camn.encoding import IdEncoder


def write_log(path: Path) -> Path:
    """100 impressions, one a time step 0..99 over 10 users, each priced at its time: the
    time split (validation from 80% of the range) trains on prices 0..79."""
    rows = [f"u{t % 10},i{t % 7},{t},{t % 2},{t},{t * 0.5},h{t % 3}" for t in range(100)]
    path.write_text("user,item,time,clicked,price,weight,hour\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> PreparedStore:
    folder = tmp_path_factory.mktemp("buckets")
    log = write_log(folder / "log.csv")
    assert main(["prepare", "table", "--interactions", str(log), "--label-col", "clicked",
                 "--context", "hour", "--numeric", "price,weight", "--bucketize", "price",
                 "--out", str(folder / "store")]) == 0
    return PreparedStore(folder / "store")


def test_a_bucketed_number_is_a_context_feature_of_training_deciles(store) -> None:
    schema = store.schema
    assert schema["context_features"] == ["hour", "price"]
    assert schema["context_sizes"] == [3 + 2, 10 + 2]
    assert schema["numeric_features"] == ["weight"]  # standardised as before
    expected = np.quantile(np.arange(80.0), np.arange(1, 10) / 10)
    assert schema["numeric_buckets"]["price"] == pytest.approx(expected.tolist())
    prices = np.asarray(store.array("impression_times"), dtype=float)  # price = time
    ids = np.asarray(store.array("impression_context"))[:, 1]
    assert ids.tolist() == (np.searchsorted(expected, prices, side="right") + 2).tolist()
    assert ids.min() == 2 and ids.max() == 11  # q0 .. q9; 80..99 lie above the last edge
    vocabulary = (store.root / "vocab" / "context.price.txt").read_text().splitlines()
    assert vocabulary[2:] == [f"q{k}" for k in range(10)]
    assert np.asarray(store.array("impression_numeric")).shape == (100, 1)


def test_scoring_puts_a_number_in_the_stores_bucket_and_refuses_a_non_number(store) -> None:
    encoder = IdEncoder(store)
    prices = pl.Series("price", ["0", "7.8", "8", "71", "250", "abc"])
    features = {"hour": pl.Series(["h0"] * 6), "price": prices,
                "weight": pl.Series([1.0] * 6)}
    side, reasons = encoder.side_features(features, None, pl.Series([None] * 6, dtype=pl.String),
                                          unknown=UnknownIds())
    # edges 7.9, 15.8 ... 63.2, 71.1 (a value at an edge goes up); a bad row's id is moot
    assert side["context"][:, 1].tolist()[:5] == [2, 2, 3, 10, 11]
    assert reasons.to_list()[:5] == [None] * 5
    assert reasons[5] == "numeric feature 'price' is not a number (row skipped)"


def test_bucketize_names_an_attribute_or_a_numeric_feature(tmp_path, capsys) -> None:
    log = write_log(tmp_path / "log.csv")
    assert main(["prepare", "table", "--interactions", str(log), "--label-col", "clicked",
                 "--numeric", "weight", "--bucketize", "price", "--out",
                 str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == (
        "camn: error: --bucketize price: 'price' is not among --attributes (none) or --numeric "
        "(weight); --bucketize names attribute or numeric columns to put into buckets\n")


def test_an_exports_sidecar_gives_the_bucket_edges(store, tmp_path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(store.root), "--model", "din", "--epochs", "1",
                 "--threads", "1", "--out", str(run)]) == 0
    assert main(["export", "--run", str(run), "--format", "torchscript",
                 "--out", str(tmp_path / "model")]) == 0
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["numeric_buckets"]["price"]["edges"] == store.schema["numeric_buckets"][
        "price"]

