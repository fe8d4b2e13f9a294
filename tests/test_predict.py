"""The Python API: ``camn.load(run)`` -> Predictor, scoring raw ids of the user's own data."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import camn
from camn.data.prepare import prepare
from camn.data.raw import DataError, RawData
from camn.data.store import PreparedStore
from camn.encoded_rows import Lookup, UnknownIds, UnknownIdsWarning
from camn.models.base import FeatureSpec
from camn.models.registry import build_model
from camn.predict import Predictor
from camn.train.metrics import auc, predict


def as_raw_ids(store: PreparedStore,
               rows: np.ndarray) -> tuple[list[list[str]], list[str], list[str]]:
    """Store rows as the ids of the user's data: (histories, candidates, users)."""
    items = store.vocab(store.attributes[0])
    users = (store.root / "users.txt").read_text().splitlines()
    history = np.asarray(store.gather("histories", slice(None)))[rows][:, :, 0]
    lengths = np.asarray(store.gather("lengths", slice(None)))[rows]
    histories = [[items[i] for i in history[r, : lengths[r]]] for r in range(len(rows))]
    candidates = [items[i] for i in np.asarray(store.gather("targets", slice(None)))[rows][:, 0]]
    return histories, candidates, [users[u] for u in store.gather("users", rows)]


@pytest.fixture(scope="module")
def predictor(trained_run: Callable[[str], Path]) -> Predictor:
    return camn.load(trained_run("camn"))


@pytest.mark.parametrize("lookup", ["dictionary", "join"])
def test_scores_equal_evaluate_predictions(predictor: Predictor, lookup: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The same store rows fed as raw ids score as camn evaluate scores them (ids looked up
    one by one, as for a few rows, or joined, as for many)."""
    if lookup == "join":
        monkeypatch.setattr(Lookup, "few", 0)
    store = predictor.store
    for split in ("test", "train"):
        rows = store.split_indices(split)
        histories, candidates, _ = as_raw_ids(store, rows)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every id is known: no warning
            scores = predictor.score(histories, candidates)
        reference = predict(predictor.model, store, split, 8192, "cpu")
        np.testing.assert_array_equal(reference.index, rows)
        np.testing.assert_allclose(scores, 1 / (1 + np.exp(-reference.logits)), rtol=0, atol=1e-6)
        assert predictor.unknown.total == 0
        assert auc(reference.labels, scores) == pytest.approx(auc(reference.labels,
                                                                  reference.logits), abs=1e-6)


def test_frames_in_frames_out(predictor: Predictor) -> None:
    store = predictor.store
    histories, candidates, _ = as_raw_ids(store, store.split_indices("test")[:9])
    expected = predictor.score(histories, candidates)
    as_lists = pl.DataFrame({"history": histories, "candidate": candidates, "n": range(9)})
    scored = predictor.score(as_lists)
    assert scored.columns == ["history", "candidate", "n", "score"]
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, atol=1e-7)
    as_text = pl.DataFrame({"h": ["|".join(h) for h in histories], "c": candidates})
    scored = predictor.score(as_text, history_col="h", candidate_col="c", separator="|")
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, atol=1e-7)
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"history": [" ".join(h) for h in histories], "candidate": candidates})
    scored = predictor.score(frame)
    assert isinstance(scored, pd.DataFrame) and "score" not in frame.columns
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, atol=1e-7)


def test_unknown_ids_are_unknown_and_counted(predictor: Predictor) -> None:
    items = predictor.vocabulary(predictor.attributes[0])
    known = items[2:5]
    histories = [[known[0], "never-seen", known[1]], ["x1", "x2"], [known[2]]]
    message = r"5 item id\(s\) not in the store \(e\.g\. 'never-seen', 'x1'"
    with pytest.warns(UnknownIdsWarning, match=message):
        scores = predictor.score(histories, ["x9", known[0], "x9"])
    assert predictor.unknown.items == 5 and predictor.unknown.users == 0
    # an unknown id is id 1 in every slot: the same scores as the store's unknown row
    unknown = predictor.vocabulary(predictor.attributes[0])[1]
    assert unknown == "<unk>"
    with torch.no_grad():
        by_hand = predictor.model({
            "history": torch.from_numpy(predictor.ids.table[[2, 1, 3, 0]])[None],
            "mask": torch.tensor([[True, True, True, False]]),
            "target": torch.ones(1, 3, dtype=torch.long),
        }).logits
    assert scores[0] == pytest.approx(float(torch.sigmoid(by_hand.double())), abs=1e-6)


def latest_history(predictor: Predictor, user: str) -> list[str]:
    """The item ids of ``user``'s latest history in the store, oldest first."""
    unknown = UnknownIds()
    history, lengths = predictor.ids.user_histories(pl.Series([user]), unknown)
    assert not unknown.users, f"user {user!r} is not in the store"
    items = predictor.vocabulary(predictor.attributes[0])
    return [items[i] for i in predictor.ids.table[history[0, : lengths[0]], 0]]


def test_users_get_their_latest_history(predictor: Predictor, serve_store: Path) -> None:
    """A user's latest history: the last click row's history followed by its clicked item,
    cut to max_len (here 4)."""
    store = predictor.store
    labels, users = store.gather("labels", slice(None)), store.gather("users", slice(None))
    user = int(users[0])  # a train user with several click rows (sliding protocol)
    rows = np.flatnonzero((users == user) & (labels == 1))
    assert len(rows) >= 2
    histories, candidates, names = as_raw_ids(store, rows[-1:])
    expected = (histories[0] + candidates[:1])[-store.max_len:]
    assert latest_history(predictor, names[0]) == expected
    items = predictor.vocabulary(predictor.attributes[0])[2:6]
    np.testing.assert_allclose(predictor.score(candidates=items, users=names),  # one for all
                               predictor.score([expected] * 4, items), atol=1e-7)


def test_latest_history_on_hand_made_data(tmp_path: Path) -> None:
    """Known sequences: user 'b' clicked a1..a7 in time order (file order shuffled)."""
    times = [5, 1, 7, 3, 2, 6, 4]
    sequence = [f"a{t}" for t in times]
    interactions = pl.DataFrame({
        "user": ["b"] * 7 + ["c", "c"] + [f"z{i}" for i in range(20) for _ in range(2)],
        "item": [*sequence, "a1", "a2", *(f"a{1 + i % 9}" for i in range(40))],
        "time": [*times, 1, 2, *range(40)],
    })
    items = pl.DataFrame({"item": [f"a{i}" for i in range(1, 10)]})
    raw = RawData(interactions, items, ["item"], {"source": "test"})
    prepare(raw, tmp_path / "store", protocol="last", max_len=4, seed=0)
    store = PreparedStore(tmp_path / "store")
    model = build_model("din", FeatureSpec.from_schema(store.schema), embed_dim=4)
    predictor = Predictor(model, {"model": "din"}, store)
    assert predictor.user_ids()[:2] == ["b", "c"]
    assert latest_history(predictor, "b") == ["a4", "a5", "a6", "a7"]
    assert latest_history(predictor, "c") == ["a1", "a2"]


def test_unknown_users_get_an_empty_history(predictor: Predictor) -> None:
    names = predictor.user_ids()
    items = predictor.vocabulary(predictor.attributes[0])[2:4]
    with pytest.warns(UnknownIdsWarning, match=r"1 user\(s\) without a history \(e\.g\. "
                      r"'no-such-user'\), scored with an empty history"):
        scores = predictor.score(candidates=items, users=["no-such-user", names[3]])
    assert predictor.unknown.users == 1
    cold = predictor.score([[], latest_history(predictor, names[3])], items)
    np.testing.assert_allclose(scores, cold, atol=1e-7)


def test_a_batch_of_new_users_only(predictor: Predictor) -> None:
    """Every history empty (cold starts only): the packed CPU path has no row to compute."""
    items = predictor.vocabulary(predictor.attributes[0])[2:4]
    scores = predictor.score([[], []], items)
    assert np.isfinite(scores).all() and scores[0] != scores[1]


def test_long_histories_keep_the_most_recent(predictor: Predictor) -> None:
    items = predictor.vocabulary(predictor.attributes[0])[2:]
    history = items[:9]
    long, cut = predictor.score([history], items[:1]), predictor.score([history[-4:]], items[:1])
    assert long == pytest.approx(cut, abs=1e-9)
    assert predictor.score([history[:4]], items[:1]) != pytest.approx(cut, abs=1e-9)


@pytest.mark.parametrize(
    ("histories", "candidates", "separator", "message"),
    [([["x"], ["y"]], [None, None], None, "row 0: no candidate value (and 1 more bad row(s))"),
     (['["a", "b"', "a b"], ["a", "b"], None, "row 0: history is not a list of item ids"),
     (["a|b", "a||b"], ["a", "b"], "|", "row 1: history holds an empty or missing item id"),
     ([["a"]] * 3, ["a", "b"], None, "3 history(s) for 2 candidate(s)")],
)
def test_bad_rows_are_named(predictor: Predictor, histories: list, candidates: list,
                            separator: str | None, message: str) -> None:
    with pytest.raises(DataError) as error:
        predictor.score(histories, candidates, separator=separator)
    assert str(error.value).startswith(message)


def test_items_table_gives_new_items_attributes(predictor: Predictor,
                                                trained_run: Callable[[str], Path]) -> None:
    fresh = camn.load(trained_run("camn"))  # add_items changes a predictor's item table
    a, b = fresh.attributes[1:]
    known = fresh.vocabulary(fresh.attributes[0])[2]
    values = [fresh.vocabulary(a)[3], fresh.vocabulary(b)[4]]
    table = pl.DataFrame({fresh.attributes[0]: ["brand-new", "brand-new", known],
                          a: [values[0], "never", values[0]], b: [values[1], None, "unseen"]})
    message = f"1 value\\(s\\) of {b} not in the store \\(e.g. 'unseen'\\)"
    with pytest.warns(UnknownIdsWarning, match=message):
        unknown = fresh.add_items(table)
    assert unknown.values == {b: 1}  # the repeated item's second row is ignored; null is no id
    new_row = fresh.ids.items.codes(pl.Series(["brand-new"]))[0]
    assert list(fresh.ids.table[new_row]) == [1, 3, 4]  # item id unknown, attributes given
    assert list(fresh.ids.table[2]) == [2, 3, 1]
    history = fresh.vocabulary(fresh.attributes[0])[5:7]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an item of the table is known now
        given = fresh.score([history], ["brand-new"])[0]
    with pytest.warns(UnknownIdsWarning):
        assert given != pytest.approx(predictor.score([history], ["brand-new"])[0], abs=1e-7)


def test_explain_gives_routing_per_history_item(predictor: Predictor,
                                                trained_run: Callable[[str], Path]) -> None:
    store = predictor.store
    histories, candidates, _ = as_raw_ids(store, store.split_indices("test")[:3])
    table = predictor.explain(histories, candidates)
    k = len(predictor.attributes)
    assert len(table) == k * sum(map(len, histories))
    assert table.columns == ["row", "candidate", "probability", "position", "item", "attribute",
                             "value", "score", "top"]
    first = table.filter((pl.col("row") == 0) & (pl.col("position") == 1))
    assert first["item"].to_list() == [histories[0][0]] * k
    assert first["value"][0] == histories[0][0]
    assert first["attribute"].to_list() == predictor.attributes
    assert first["score"].sum() == pytest.approx(1.0, abs=1e-5)  # P is a softmax over k
    assert first.filter(pl.col("top"))["score"][0] == first["score"].max()
    np.testing.assert_allclose(table.group_by("row").agg(pl.col("probability").first())
                               .sort("row")["probability"].to_numpy(),
                               predictor.score(histories, candidates), atol=1e-7)
    with pytest.raises(DataError, match="model din returns no routing scores"):
        camn.load(trained_run("din")).explain(histories, candidates)


def test_load_names_what_is_wrong(trained_run: Callable[[str], Path], tmp_path: Path) -> None:
    run = trained_run("camn")
    with pytest.raises(DataError, match=r"seed 7 is not in the run .*; it has seeds \[1\]"):
        camn.load(run, seed=7)
    with pytest.raises(DataError, match=r"is not a camn train run .* nor a saved model"):
        camn.load(tmp_path)
    with pytest.raises(DataError, match="is not a prepared store"):
        camn.load(run, store=tmp_path)
    seed_folder = camn.load(run / "seed_1")  # a saved model folder loads by itself
    assert seed_folder.name == "camn" and seed_folder.seed == 1


def test_import_camn_stays_cheap() -> None:
    code = "import sys, camn; assert callable(camn.load); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
