"""A run trained with side features put to use: ``camn.load(...).score``, ``camn score``,
``camn explain`` and ``camn export`` take each row's context and numeric values (numbers
standardised with the training statistics) and the user features of its user id."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import camn
from camn.cli import main
from camn.data.raw import DataError
from camn.encoded_rows import UnknownIdsWarning
from camn.explain import encoded
from camn.export import export
from camn.predict import Predictor
from camn.train.metrics import predict

DEVICES = ("phone", "desktop", None)
GENRES = ("Drama|Comedy", "Comedy", "", "Action|Drama|War")


def write_inputs(folder: Path, users: int = 40, rows: int = 12) -> tuple[Path, Path, Path]:
    """A log of impressions with context (hour, device: sometimes blank) and a price, whose
    clicks follow the device and the price; a user table (age) lacking the last 5 users; an
    item table with a multi-valued attribute (genres) and a brand."""
    rng = np.random.default_rng(7)
    lines = ["user,item,time,clicked,hour,device,price"]
    for user in range(users):
        for step in range(rows):
            device = DEVICES[int(rng.integers(3))]
            price = round(float(rng.uniform(1, 50)), 2)
            chance = 0.75 if device == "phone" else 0.25
            chance += 0.15 if price < 20 else -0.15
            lines.append(f"u{user},i{int(rng.integers(30))},{1000 + 10 * step},"
                         f"{int(rng.random() < chance)},{int(rng.integers(24))},"
                         f"{device or ''},{price}")
    log = folder / "log.csv"
    log.write_text("\n".join(lines) + "\n")
    table = folder / "users.csv"
    table.write_text("user,age\n" + "".join(f"u{u},{20 + 10 * (u % 4)}\n"
                                            for u in range(users - 5)))
    items = folder / "items.csv"
    items.write_text("item,genres,brand\n" + "".join(
        f"i{item},{GENRES[item % 4]},b{item % 3}\n" for item in range(30)))
    return log, table, items


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pl.DataFrame]:
    """(store, run, the log as read back): one store with every kind of side feature and a
    CAMN run (routing, for explain) trained on it for one epoch."""
    folder = tmp_path_factory.mktemp("side-use")
    log, users, items = write_inputs(folder)
    store, run = folder / "store", folder / "run"
    assert main(["prepare", "table", "--interactions", str(log), "--label-col", "clicked",
                 "--split", "user", "--context", "hour,device", "--numeric", "price",
                 "--users", str(users), "--user-features", "age", "--items", str(items),
                 "--attributes", "genres,brand", "--multi-valued", "genres:|",
                 "--max-len", "5", "--out", str(store)]) == 0
    assert main(["train", "--data", str(store), "--model", "camn", "--out", str(run),
                 "--epochs", "1", "--batch-size", "64", "--threads", "1", "--no-progress",
                 "--option", "embed_dim=4"]) == 0
    return store, run, pl.read_csv(log, infer_schema=False)


@pytest.fixture(scope="module")
def predictor(inputs: tuple[Path, Path, pl.DataFrame]) -> Predictor:
    return camn.load(inputs[1])


def store_rows_as_candidates(predictor: Predictor, log: pl.DataFrame,
                             split: str = "test") -> tuple[np.ndarray, pl.DataFrame]:
    """A split's store rows and, for each, its raw row of the log (user, its history as item
    ids, candidate, and the log's own hour, device and price text)."""
    store = predictor.store
    rows = store.split_indices(split)
    items, users = predictor.vocabulary(predictor.attributes[0]), predictor.user_ids()
    history = store.gather("histories", rows)[:, :, 0]
    lengths = store.gather("lengths", rows)
    times = np.asarray(store.array("impression_times"))[rows]
    frame = pl.DataFrame({
        "user": [users[u] for u in store.gather("users", rows)],
        "time": [str(t) for t in times],
        "history": [" ".join(items[i] for i in history[r, : lengths[r]])
                    for r in range(len(rows))],
        "candidate": [items[i] for i in store.gather("target_items", rows)],
    })
    raw = frame.join(log.select("user", "time", "hour", "device", "price"), on=["user", "time"],
                     how="left", maintain_order="left")
    assert raw["price"].null_count() == 0  # (user, time) names one row of the log
    return rows, raw.drop("time")


def eager(predictor: Predictor, split: str = "test") -> np.ndarray:
    """The model's click probabilities of a split's store rows, as the trainer scores them."""
    reference = predict(predictor.model, predictor.store, split, 4096, "cpu")
    np.testing.assert_array_equal(reference.index, predictor.store.split_indices(split))
    return 1 / (1 + np.exp(-reference.logits))


def test_the_api_and_the_cli_score_raw_rows_as_the_model_scores_the_store(
    inputs: tuple[Path, Path, pl.DataFrame], predictor: Predictor, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    _, run, log = inputs
    assert predictor.ids.describe_features() == ("context features hour, device; numeric "
                                                 "features price; user features age (by the "
                                                 "user id)")
    rows, candidates = store_rows_as_candidates(predictor, log)
    assert candidates["device"].null_count() > 0  # blanks: id 1, as when prepared
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every id and value is known: no warning
        scored = predictor.score(candidates)
    np.testing.assert_allclose(scored["score"].to_numpy(), eager(predictor), rtol=0, atol=1e-6)
    features = {name: candidates[name] for name in ("hour", "device", "price")}
    lists = [h.split() for h in candidates["history"]]
    as_lists = predictor.score(lists, candidates["candidate"], users=candidates["user"],
                               features=features)
    np.testing.assert_array_equal(as_lists, scored["score"].to_numpy())

    source, out = tmp_path / "candidates.csv", tmp_path / "scored.csv"
    candidates.write_csv(source)
    assert main(["score", "--run", str(run), "--candidates", str(source), "--out", str(out),
                 "--no-progress"]) == 0
    assert f"{len(rows)} row(s) of {source} scored" in capsys.readouterr().out
    written = pl.read_csv(out, infer_schema=False)
    assert written.columns == [*candidates.columns, "score", "top_attribute"]
    np.testing.assert_allclose(written["score"].cast(pl.Float64).to_numpy(),
                               scored["score"].to_numpy(), rtol=0, atol=1e-12)


def test_numbers_are_standardised_with_the_training_statistics(
    inputs: tuple[Path, Path, pl.DataFrame], predictor: Predictor,
) -> None:
    store, _, log = inputs
    _, train = store_rows_as_candidates(predictor, log, "train")
    prices = train["price"].cast(pl.Float64).to_numpy()
    mean, std = prices.mean(), prices.std()  # the train split's, by hand
    assert predictor.store.schema["numeric_standardisation"]["price"] == pytest.approx(
        [mean, std], rel=1e-12)
    _, test = store_rows_as_candidates(predictor, log)
    price = float(test["price"][0])
    none = pl.Series([None], dtype=pl.String)
    side, reasons = predictor.ids.side_features(test.head(1), test["user"].head(1), none,
                                                unknown=predictor.unknown)
    assert reasons.to_list() == [None]
    assert float(side["numeric"][0, 0]) == pytest.approx((price - mean) / std, rel=1e-6)
    stored = np.load(store / "arrays" / "impression_numeric.npy")[predictor.store
                                                                   .split_indices("test")[0]]
    assert float(side["numeric"][0, 0]) == float(stored[0])  # the same float32 as prepared
    user = test["user"][0]
    age = predictor.vocabulary("user.age")[int(side["user_features"][0, 0])]
    assert age == str(20 + 10 * (int(user[1:]) % 4))  # the user table's row of this user


def test_unknown_values_and_users_are_counted_and_scored_as_unknown(
    inputs: tuple[Path, Path, pl.DataFrame], predictor: Predictor, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    _, run, log = inputs
    rows, candidates = store_rows_as_candidates(predictor, log)
    known = candidates.head(4)
    changed = known.with_columns(
        pl.Series("hour", ["99", known["hour"][1], known["hour"][2], "25"]),
        pl.Series("user", [known["user"][0], "stranger", known["user"][2], known["user"][3]]),
        pl.Series("device", [known["device"][0], known["device"][1], None, "tablet"]),
    )
    with pytest.warns(UnknownIdsWarning, match="2 value.s. of context hour not in the store"):
        scores = predictor.score(changed)["score"].to_numpy()
    unknown = predictor.unknown
    assert (unknown.values, unknown.feature_users, unknown.items) == (
        {"context hour": 2, "context device": 1}, 1, 0)
    assert unknown.examples["context hour"] == ["99", "25"]
    assert "1 row(s) of a user not in the store (e.g. 'stranger'), scored with unknown user " \
        "features" in unknown.summary()
    # by hand: the store rows' batch with those ids set to 1 (unknown; a blank device is 1 too)
    encoded_rows = encoded(predictor, rows[:4])
    context, users = encoded_rows.side["context"], encoded_rows.side["user_features"]
    context[[0, 3], 0], context[[2, 3], 1], users[1] = 1, 1, 1
    np.testing.assert_allclose(scores, predictor.run(encoded_rows)[0], rtol=0, atol=1e-6)
    assert not np.allclose(scores[[0, 1, 3]], eager(predictor)[[0, 1, 3]], rtol=0, atol=1e-7)

    # users of a candidates file without histories: their latest history and features from
    # the store; a number that is not one makes a bad row, whose unknowns are not counted
    source, out = tmp_path / "candidates.csv", tmp_path / "scored.csv"
    changed.drop("history").with_columns(
        pl.Series("price", ["abc", "1.5", " 2 ", "inf"])).write_csv(source)
    assert main(["score", "--run", str(run), "--candidates", str(source), "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"2 row(s) of {source} scored" in printed
    assert ("unknown ids: 1 user(s) without a history (e.g. 'stranger'), scored with an empty "
            "history; 1 row(s) of a user not in the store (e.g. 'stranger'), scored with "
            "unknown user features\n") in printed
    assert f"{source}:2: numeric feature 'price' is not a number" in printed
    assert f"{source}:5: numeric feature 'price' is not a number" in printed
    assert pl.read_csv(out)["user"].to_list() == ["stranger", known["user"][2]]
    with pytest.raises(DataError, match=r"^row 0: numeric feature 'price' is not a number"):
        predictor.score(changed.with_columns(pl.Series("price", ["abc", "1", "2", "3"])))


def test_missing_feature_columns_are_named(
    inputs: tuple[Path, Path, pl.DataFrame], predictor: Predictor, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    _, run, log = inputs
    _, candidates = store_rows_as_candidates(predictor, log)
    with pytest.raises(DataError, match=r"the run reads context features hour, device; numeric "
                                        r"features price; user features age \(by the user "
                                        r"id\): give 'device', 'price' \(features="):
        predictor.score(candidates.drop("device", "price"))
    with pytest.raises(DataError, match=r"give the rows' user ids \(users=, or a user column"):
        predictor.score(candidates.drop("user"))
    with pytest.raises(DataError, match=r"give 'hour', 'device', 'price'"):
        predictor.score(users=["u1"], candidates=["i1"])
    for dropped, named in ((["device", "price"], "'device', 'price'"), (["user"], "'user'")):
        source = tmp_path / "candidates.csv"
        candidates.drop(dropped).write_csv(source)
        assert main(["score", "--run", str(run), "--candidates", str(source), "--out",
                     str(tmp_path / "scored.csv"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"camn: error: {source}: no column {named}; the run reads context features" in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "scored.csv").exists()


def test_explain_runs_on_the_store_rows_and_on_raw_rows(
    inputs: tuple[Path, Path, pl.DataFrame], predictor: Predictor,
    capsys: pytest.CaptureFixture,
) -> None:
    _, run, log = inputs
    assert main(["explain", "--run", str(run), "--format", "csv", "--limit", "3"]) == 0
    table = pl.read_csv(capsys.readouterr().out.encode())
    assert table["attribute"].unique(maintain_order=True).to_list() == ["item", "genres",
                                                                         "brand"]
    genres = table.filter(pl.col("attribute") == "genres").select("item", "value")
    assert genres.height > 0
    for item, value in genres.iter_rows():  # the whole bag of the multi-valued attribute
        assert value == (GENRES[int(item[1:]) % 4] or "<unk>")
    rows, candidates = store_rows_as_candidates(predictor, log)
    probability = dict(zip(rows.tolist(), eager(predictor).tolist(), strict=True))
    for row, p in table.select("store_row", "probability").unique().iter_rows():
        assert p == pytest.approx(probability[row], abs=1e-6)
    explained = predictor.explain(candidates.head(3))
    scores = predictor.score(candidates.head(3))["score"].to_list()
    for row, p in explained.select("row", "probability").unique().iter_rows():
        assert p == pytest.approx(scores[row], abs=1e-12)
    assert set(explained.filter(pl.col("attribute") == "genres")["value"]) <= {
        bag or "<unk>" for bag in GENRES}


def test_export_takes_the_side_inputs_and_reproduces_the_model(
    inputs: tuple[Path, Path, pl.DataFrame], predictor: Predictor, tmp_path: Path,
) -> None:
    log = inputs[2]
    path = tmp_path / "camn.pt"
    export(predictor, "torchscript", path)
    info = json.loads(Path(f"{path}.json").read_text())
    names = ["history", "mask", "target", "user_features", "context", "numeric"]
    assert [entry["name"] for entry in info["inputs"]] == names
    assert info["inputs"][4] | {"meaning": ""} == {
        "name": "context", "shape": ["batch", 2], "dtype": "int64",
        "features": ["hour", "device"], "meaning": ""}
    mean, std = predictor.store.schema["numeric_standardisation"]["price"]
    assert info["numeric_standardisation"] == {"price": {"mean": mean, "std": std}}
    assert Path(info["user_features_table"]).is_file() and info["bags"] == ["genres"]
    assert all(Path(p).is_file() for p in [*info["context_vocabularies"].values(),
                                           *info["user_feature_vocabularies"].values()])
    graph = torch.jit.load(str(path))  # the file just written by the test
    rows = store_rows_as_candidates(predictor, log)[0]
    batch = predictor.batch(encoded(predictor, rows))
    batch["user_features"][0] = 1  # a user unknown to the store
    with torch.no_grad():
        got = graph(*(batch[name] for name in names)).numpy()
        want = torch.sigmoid(predictor.model(batch).logits).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[1:], eager(predictor)[1:], rtol=0, atol=1e-5)


def test_onnx_export_takes_the_side_inputs(
    inputs: tuple[Path, Path, pl.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    """On DIN, whose ONNX export takes a few seconds (CAMN's several times that)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    store, _, log = inputs
    run, path = tmp_path / "din", tmp_path / "din.onnx"
    assert main(["train", "--data", str(store), "--model", "din", "--out", str(run),
                 "--epochs", "1", "--batch-size", "64", "--threads", "1", "--no-progress",
                 "--option", "embed_dim=4"]) == 0
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(path)]) == 0
    assert "din (seed 1) exported as onnx" in capsys.readouterr().out
    predictor = camn.load(run)
    names = ["history", "mask", "target", "user_features", "context", "numeric"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == names
    rows = store_rows_as_candidates(predictor, log)[0]
    batch = predictor.batch(encoded(predictor, rows))
    got = session.run(None, {name: batch[name].numpy() for name in names})[0]
    np.testing.assert_allclose(got, eager(predictor), rtol=0, atol=1e-5)


def test_new_items_need_no_bag_column(inputs: tuple[Path, Path, pl.DataFrame]) -> None:
    """A multi-valued attribute's bags come with the model: an items table leaves it out, and
    a new item is scored with an empty bag (the unknown value), its brand read as given."""
    predictor = camn.load(inputs[1])  # a predictor of its own: add_items changes it
    assert predictor.add_items(pl.DataFrame({"item": ["new"], "brand": ["b1"]})).total == 0
    row = predictor.ids.items.codes(pl.Series(["new"])).to_numpy()
    assert predictor.ids.table[row, 2].tolist() == [predictor.vocabulary("brand").index("b1")]
    scores = predictor.score([["i1"]], ["new"], users=["u1"],
                             features={"hour": ["3"], "device": ["phone"], "price": [9.5]})
    assert predictor.unknown.total == 0 and 0 < float(scores[0]) < 1
    explained = predictor.explain([["new"]], ["i1"], users=["u1"],
                                  features={"hour": ["3"], "device": ["phone"], "price": [9.5]})
    assert explained.filter(pl.col("attribute") == "genres")["value"].to_list() == ["<unk>"]
