"""User features of labelled impressions: a user table stored once per user, gathered by the
sample's user into the batch key ``user_features``, and read by the models' output network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from camn.cli import main
from camn.data.raw import DataError
from camn.data.sources import movielens, table
from camn.data.store import PreparedStore
from camn.models import FeatureSpec, build_model
from camn.train.loop import ResidentSplit

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens_100k"

LOG = """user,item,time,click
u1,a,10,1
u1,b,20,0
u2,a,15,0
u2,b,25,1
u3,a,12,1
u3,c,22,0
u1,c,30,1
u2,c,35,0
"""
# u2's age is missing, u9 is not in the log, u1's second row (line 5) is a repeat; u3 has none
USERS = """user,age,gender
u1,30,F
u2,,M
u9,40,F
u1,31,M
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def prepare(tmp_path: Path, *argv: str) -> PreparedStore:
    out = tmp_path / "store"
    assert main(["prepare", "table", *argv, "--out", str(out), "--force"]) == 0
    return PreparedStore(out)


def test_user_features_are_stored_once_per_user_and_gathered_by_the_samples_user(
    tmp_path: Path,
) -> None:
    log, users = write(tmp_path / "log.csv", LOG), write(tmp_path / "users.csv", USERS)
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "click",
                    "--users", str(users), "--user-features", "age,gender")
    assert store.schema["bad_input"] == {"user listed again in the user table (first kept)": 1}
    assert store.schema["user_features"] == ["age", "gender"]
    assert store.schema["user_feature_sizes"] == [2 + 1, 2 + 2]  # u9's age 40 is not a value
    assert store.vocab("user.age") == ["<pad>", "<unk>", "30"]
    assert store.vocab("user.gender") == ["<pad>", "<unk>", "F", "M"]
    # users u1, u2, u3: u1 as its first row says, u2's age unknown, u3 without a row unknown
    expected = [[2, 2], [1, 3], [1, 1]]
    assert np.load(store.root / "arrays" / "user_features.npy").tolist() == expected
    assert any("1 of 3 users have no row" in note for note in store.schema["notes"])
    rows = np.arange(store.num_samples)
    by_user = np.asarray(expected)[store.gather("users", rows)]
    assert store.side_fields(rows)["user_features"].tolist() == by_user.tolist()
    batch = next(store.batches("train", 64))
    assert batch["user_features"].dtype == torch.int64
    assert batch["user_features"].tolist() == np.asarray(expected)[batch["user"]].tolist()
    resident = ResidentSplit(store, "train", torch.device("cpu")).gather(slice(None))
    assert torch.equal(resident["user_features"], batch["user_features"])
    spec = FeatureSpec.from_schema(store.schema)
    assert (spec.user_features, spec.user_feature_sizes) == (("age", "gender"), (3, 4))


def test_a_strict_prepare_stops_at_the_repeated_user(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    log, users = write(tmp_path / "log.csv", LOG), write(tmp_path / "users.csv", USERS)
    assert main(["prepare", "table", "--interactions", str(log), "--label-col", "click",
                 "--users", str(users), "--user-features", "age", "--strict",
                 "--out", str(tmp_path / "store")]) == 2
    assert f"{users}:5: user listed again in the user table" in capsys.readouterr().err


def test_user_features_are_refused_where_they_cannot_be_used(tmp_path: Path) -> None:
    log, users = write(tmp_path / "log.csv", LOG), write(tmp_path / "users.csv", USERS)
    with pytest.raises(DataError, match="user features are for labelled impressions for now"):
        table.read(interactions=log, users=users, user_features=["age"])
    with pytest.raises(DataError, match=r"--user-features names columns .* pass --users FILE"):
        table.read(interactions=log, label_col="click", user_features=["age"])
    with pytest.raises(DataError, match=r"without --user-features: .* --user-features age,gend"):
        table.read(interactions=log, label_col="click", users=users)
    with pytest.raises(DataError, match=rf"{users}: no column 'occupation'"):
        table.read(interactions=log, label_col="click", users=users,
                   user_features=["occupation"])
    with pytest.raises(DataError, match="pass --rating-labels T"):
        movielens.read(path=tmp_path, user_features=True)
    raw = table.read(interactions=log, label_col="click", users=users, user_features=["age"])
    assert raw.users is not None and raw.users["user"].to_list() == ["u1", "u2", "u9"]


def test_a_user_feature_id_outside_its_vocabulary_is_found_by_the_scan(tmp_path: Path) -> None:
    log, users = write(tmp_path / "log.csv", LOG), write(tmp_path / "users.csv", USERS)
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "click",
                    "--users", str(users), "--user-features", "age,gender")
    path = store.root / "arrays" / "user_features.npy"
    ids = np.load(path)
    ids[2, 1] = 4
    np.save(path, ids)
    with pytest.raises(DataError, match=r"user_features\.npy holds id 4 of user feature 'gender' "
                                        r"at user 2, outside its vocabulary of ids 0\.\.3"):
        PreparedStore(store.root).check_contents()


def user_log(folder: Path, users: int = 60, rows: int = 30, seed: int = 2) -> tuple[Path, Path]:
    """Impressions whose label follows the user's group only, and the user table."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(2, size=users)
    lines = ["user,item,time,clicked"]
    for user in range(users):
        for step in range(rows):
            chance = 0.8 if groups[user] else 0.2
            lines.append(f"u{user},i{int(rng.integers(40))},{1000 + 10 * step},"
                         f"{int(rng.random() < chance)}")
    table_lines = ["user,group"] + [f"u{user},g{groups[user]}" for user in range(users)]
    return (write(folder / "log.csv", "\n".join(lines) + "\n"),
            write(folder / "users.csv", "\n".join(table_lines) + "\n"))


def test_train_on_user_features_and_the_logits_follow_them(tmp_path: Path) -> None:
    log, users = user_log(tmp_path)
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "clicked",
                    "--split", "user", "--users", str(users), "--user-features", "group")
    run = tmp_path / "run"
    assert main(["train", "--data", str(store.root), "--model", "din", "--out", str(run),
                 "--epochs", "2", "--threads", "1", "--no-progress"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["test_auc"]["mean"] > 0.6  # only the user's group tells the label
    candidates = tmp_path / "candidates.csv"
    candidates.write_text("user,candidate\nu1,i1\n")  # u1's group read from the store
    assert main(["score", "--run", str(run), "--candidates", str(candidates), "--out",
                 str(tmp_path / "scored.csv")]) == 0  # tests/test_side_features_use.py

    torch.manual_seed(0)
    model = build_model("din", FeatureSpec.from_schema(store.schema)).eval()
    batch = next(store.batches("test", 8))
    before = model(batch).logits
    batch["user_features"][0, 0] = 5 - batch["user_features"][0, 0]  # g0 <-> g1 (ids 2, 3)
    after = model(batch).logits
    assert not torch.isclose(before[0], after[0])
    assert torch.equal(before[1:], after[1:])


@pytest.mark.skipif(not ML100K.is_dir(), reason=f"MovieLens 100K not found at {ML100K}")
def test_movielens_100k_user_features(tmp_path: Path) -> None:
    out = tmp_path / "ml"
    assert main(["prepare", "movielens", "--path", str(ML100K), "--rating-labels", "4",
                 "--user-features", "--out", str(out)]) == 0
    store = PreparedStore(out)
    store.check_trainable()
    assert store.schema["user_features"] == ["age", "gender", "occupation"]
    ids = np.load(out / "arrays" / "user_features.npy")
    names = store.vocab("user.age"), store.vocab("user.gender"), store.vocab("user.occupation")
    index = store.root / "users.txt"
    user_index = {user: i for i, user in enumerate(index.read_text().splitlines())}
    # u.user: 1|24|M|technician, 2|53|F|other, 30|7|M|student
    for user, values in (("1", ["18-24", "M", "technician"]), ("2", ["50-55", "F", "other"]),
                         ("30", ["under 18", "M", "student"])):
        row = ids[user_index[user]]
        assert [vocab[i] for vocab, i in zip(names, row, strict=True)] == values
    assert set(names[0][2:]) <= set(movielens.AGE_GROUPS)


ITEMS = """item,genres,brand
a,Drama|Comedy,x
b,Comedy,y
c,,x
d,Action| Drama|Drama,y
"""


def test_a_multi_valued_attribute_is_a_bag_per_item(tmp_path: Path) -> None:
    log, items = write(tmp_path / "log.csv", LOG), write(tmp_path / "items.csv", ITEMS)
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "click", "--items",
                    str(items), "--attributes", "genres,brand", "--multi-valued", "genres:|")
    # items a, b, c (ids 2, 3, 4); d is not in the log, so Action is no value
    assert store.vocab("genres") == ["<pad>", "<unk>", "Comedy", "Drama"]
    assert (store.schema["bag_slots"], store.schema["bag_lengths"]) == ([1], [2])
    bags = np.load(store.root / "arrays" / "bags.genres.npy")
    assert bags.tolist() == [[0, 0], [0, 0], [3, 2], [2, 0], [0, 0]]
    assert store.item_table[2:, 1].tolist() == [3, 2, 1]  # the first value; 1: an empty bag
    spec = FeatureSpec.from_schema(store.schema)
    assert (spec.bag_slots, spec.bag_lengths) == ((1,), (2,))
    with pytest.raises(DataError, match="'brands' is not one of --attributes"):
        table.read(interactions=log, label_col="click", items=items, attributes="genres,brand",
                   multi_valued="brands:|")
    with pytest.raises(DataError, match="--multi-valued is for labelled impressions"):
        table.read(interactions=log, items=items, attributes="genres", multi_valued="genres:|")


def test_the_trainer_fills_the_bags_and_saves_them_with_the_weights(tmp_path: Path) -> None:
    import camn

    log, _ = user_log(tmp_path)
    genres = ["Drama|Comedy", "Comedy", "", "Action|Drama|War"]
    items = write(tmp_path / "items.csv", "item,genres\n" + "".join(
        f"i{item},{genres[item % 4]}\n" for item in range(40)))
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "clicked",
                    "--split", "user", "--items", str(items), "--attributes", "genres",
                    "--multi-valued", "genres:|")
    run = tmp_path / "run"
    assert main(["train", "--data", str(store.root), "--model", "din", "--out", str(run),
                 "--epochs", "1", "--threads", "1", "--no-progress"]) == 0
    model = camn.load(run).model
    stored = np.load(store.root / "arrays" / "bags.genres.npy")
    assert stored.shape == (42, 3) and stored[2:].any()
    assert model.embedding.bags_1.tolist() == stored.tolist()
