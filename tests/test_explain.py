"""``camn explain``: routing scores per history click, with the ids and values of one's data."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import camn
from camn.cli import main
from camn.data.prepare import prepare
from camn.data.raw import RawData
from camn.data.store import PreparedStore
from camn.explain import encoded
from camn.models.base import FeatureSpec
from camn.models.registry import build_model, resolved_options
from camn.train.checkpoints import save_checkpoint


@pytest.fixture(scope="module")
def run(trained_run: Callable[[str], Path]) -> Path:
    return trained_run("camn")


def explain(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(["explain", *argv]) == 0
    return capsys.readouterr().out


def test_the_formats_tell_the_same_story(run: Path, capsys: pytest.CaptureFixture) -> None:
    predictor = camn.load(run)
    store = predictor.store
    table = pl.read_csv(io.StringIO(explain(capsys, "--run", str(run), "--format", "csv",
                                            "--limit", "3")))
    rows = store.split_indices("test")
    clicks = rows[(np.asarray(store.gather("labels", slice(None)))[rows] == 1)
                  & (np.asarray(store.gather("lengths", slice(None)))[rows] > 0)][:3]
    lengths = np.asarray(store.gather("lengths", slice(None)))[clicks]
    k = len(store.attributes)
    assert table.columns == ["sample", "store_row", "split", "user", "candidate", "probability",
                             "position", "item", "attribute", "value", "score", "top", "planted"]
    assert len(table) == k * lengths.sum()
    assert table["store_row"].unique(maintain_order=True).to_list() == clicks.tolist()
    users = predictor.user_ids()
    assert table["user"].unique(maintain_order=True).to_list() == [
        users[u] for u in dict.fromkeys(np.asarray(store.gather("users", slice(None)))[clicks])]
    # the same numbers as the API's explain of those rows given as raw ids
    items = predictor.vocabulary(store.attributes[0])
    history = np.asarray(store.gather("histories", slice(None)))[clicks][:, :, 0]
    histories = [[items[i] for i in history[r, : lengths[r]]] for r in range(len(clicks))]
    candidates = [items[i] for i in np.asarray(store.gather("targets", slice(None)))[clicks][:, 0]]
    api = predictor.explain(histories, candidates)
    assert table["item"].to_list() == api["item"].to_list()
    assert table["value"].to_list() == api["value"].to_list()
    np.testing.assert_allclose(table["score"].to_numpy(), api["score"].to_numpy(), atol=1e-6)
    assert table["top"].to_list() == api["top"].to_list()

    samples = json.loads(explain(capsys, "--run", str(run), "--format", "json", "--limit", "3"))
    assert [s["store_row"] for s in samples] == clicks.tolist()
    assert [len(s["history"]) for s in samples] == lengths.tolist()
    first = samples[0]["history"][0]
    assert set(first["values"]) == set(store.attributes) and first["item"] == histories[0][0]
    assert first["top"] == max(first["scores"], key=first["scores"].get)
    assert samples[0]["candidate"][store.attributes[0]] == candidates[0]

    text = explain(capsys, "--run", str(run), "--limit", "3")
    assert text.count("store row") == 3 and "routing scores P" in text
    assert f"store row {clicks[0]} (test), user {table['user'][0]}: clicked " \
           f"{store.attributes[0]}={candidates[0]}" in text


def test_user_shows_that_users_latest_clicks(run: Path, capsys: pytest.CaptureFixture) -> None:
    predictor = camn.load(run)
    store = predictor.store
    users, labels = store.gather("users", slice(None)), store.gather("labels", slice(None))
    user = int(users[0])  # a train user: several clicks under the sliding protocol
    clicks = np.flatnonzero((users == user) & (labels == 1)
                            & (np.asarray(store.gather("lengths", slice(None))) > 0))
    name = predictor.user_ids()[user]
    samples = json.loads(explain(capsys, "--run", str(run), "--user", name, "--limit", "2",
                                 "--format", "json"))
    assert [s["store_row"] for s in samples] == clicks[-2:].tolist()
    assert {s["user"] for s in samples} == {name} and {s["split"] for s in samples} == {"train"}
    assert main(["explain", "--run", str(run), "--user", "nobody"]) == 2
    assert capsys.readouterr().err.startswith(
        f"camn: error: user 'nobody' is not in the store {store.root} (users.txt; e.g. ")


def test_full_values_and_a_store_without_user_ids(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """Values are shown whole; a store without users.txt is damaged; a saved model's folder
    explains by itself (here an untrained CAMN)."""
    long_brand = "A Brand Whose Name Runs On For Well Over Forty Characters"
    interactions = pl.DataFrame({
        "user": [f"user-{u}" for u in range(12) for _ in range(3)],
        "item": [f"item-{(u + t) % 5}" for u in range(12) for t in range(3)],
        "time": [t for _ in range(12) for t in range(3)],
    })
    items = pl.DataFrame({"item": [f"item-{i}" for i in range(5)],
                          "brand": [long_brand, "b1", "b2", "b3", "b4"]})
    prepare(RawData(interactions, items, ["item", "brand"], {"source": "test"}),
            tmp_path / "store", max_len=3, seed=0)
    store = PreparedStore(tmp_path / "store")
    spec = FeatureSpec.from_schema(store.schema)
    save_checkpoint(tmp_path / "model", build_model("camn", spec, embed_dim=4), {
        "model": "camn", "options": resolved_options("camn", embed_dim=4),
        "spec": spec.to_dict(), "data": str(store.root), "seed": 0,
        "train": {"eval_batch_size": 64},
    })
    text = explain(capsys, "--run", str(tmp_path / "model"), "--split", "train", "--limit", "12")
    assert f"brand={long_brand} (predicted" in text or f"{long_brand} 0." in text
    assert "user user-" in text
    (store.root / "users.txt").unlink()  # not an older store: a damaged one
    assert main(["explain", "--run", str(tmp_path / "model"), "--split", "train"]) == 2
    assert capsys.readouterr().err == (
        f"camn: error: {store.root} is a damaged store: users.txt is missing (user index i is "
        "its line i)\n")


def test_text_ends_with_the_heads_attention_health_over_the_splits_clicks(
    run: Path, capsys: pytest.CaptureFixture
) -> None:
    predictor = camn.load(run)
    store = predictor.store
    text = explain(capsys, "--run", str(run), "--limit", "1")
    rows = store.split_indices("test")
    clicks = rows[(np.asarray(store.gather("labels", slice(None)))[rows] == 1)
                  & (np.asarray(store.gather("lengths", slice(None)))[rows] > 0)]
    health = text.split("attention health of the ")[1].splitlines()
    k = len(store.attributes)
    assert health[0].startswith(f"{k} interest heads over {len(clicks):,} clicks of the test split")
    entropy = [float(v) for v in health[1].split("(")[0].split()[3:]]
    abs_logit = [float(v) for v in health[2].split()[2:]]
    assert len(entropy) == len(abs_logit) == k and all(0 < e <= 1.0005 for e in entropy)
    # the numbers of the evaluation's averaged terms on the same clicks
    expected = predictor.health(encoded(predictor, clicks))
    np.testing.assert_allclose(entropy, expected["attention_entropy"], atol=6e-4)
    np.testing.assert_allclose(abs_logit, expected["attention_abs_logit"], atol=6e-4)
    assert health[3].split()[:2] == ["diversity", "L_d"]
