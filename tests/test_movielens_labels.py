"""movielens as labelled impressions with side features: ``--genres multi`` (every genre of a
movie, one multi-valued attribute) and ``--context hour,weekday`` (of the rating's timestamp,
UTC), on tiny files, through a data file, and on the real 100K data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from camn.cli import main
from camn.data.raw import DataError
from camn.data.sources import movielens
from camn.data.store import PreparedStore

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens_100k"
GENRES = movielens.STANDARD_GENRES


def flags(*names: str) -> str:
    return "|".join("1" if genre in names else "0" for genre in GENRES)


def write_folder(folder: Path, users: int = 4, ratings: int = 2) -> Path:
    """A 100K-layout folder: ``users`` users with ``ratings`` ratings each over 10 movies, one
    rating an hour from 1998-01-01 00:00 UTC (a Thursday), and a u.user."""
    folder.mkdir(exist_ok=True)
    start = 883612800  # 1998-01-01T00:00:00Z
    lines = [f"{u}\t{(u * 3 + r) % 10}\t{1 + (u + r) % 5}\t{start + 3600 * (u * ratings + r)}"
             for u in range(1, users + 1) for r in range(ratings)]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    movies = [
        "0|Toy Story (1995)|01-Jan-1995||u|" + flags("Animation", "Children's", "Comedy", "Drama"),
        f"1|Star Wars (1977)|01-Jan-1977||u|"
        f"{flags('Action', 'Adventure', 'Romance', 'Sci-Fi', 'War')}",
        f"2|unknown|||u|{flags('unknown')}",
        f"3|Nothing (2001)|||u|{flags()}",
        *(f"{i}|Movie {i} (1990)|||u|{flags('Drama')}" for i in range(4, 10)),
    ]
    (folder / "u.item").write_text("\n".join(movies) + "\n", encoding="latin-1")
    (folder / "u.user").write_text("".join(f"{u}|{15 + 7 * u}|{'MF'[u % 2]}|writer|0\n"
                                           for u in range(1, users + 1)))
    return folder


def test_genres_multi_keeps_every_genre_of_a_movie(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "ml")
    raw = movielens.read(path=folder, rating_labels=4, genres="multi")
    assert raw.attributes == ["item_id", "genres", "release_decade"]
    assert raw.origin["multi_valued"] == {"genres": "|"}
    assert dict(raw.items.select("item", "genres").rows()) == {
        "0": "Animation|Children's|Comedy|Drama",  # four: the slots keep three
        "1": "Action|Adventure|Romance|Sci-Fi|War",  # five: the slots keep three
        "2": None,  # marked unknown
        "3": "none",  # no genre at all
        **{str(i): "Drama" for i in range(4, 10)},
    }
    slots = movielens.read(path=folder, rating_labels=4)
    assert slots.attributes == movielens.ATTRIBUTES and "multi_valued" not in slots.origin
    assert slots.items.row(1) == ("1", "Action", "Adventure", "Romance", "1970s")


def test_time_context_is_the_hour_and_weekday_in_utc(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "ml", users=1, ratings=1)
    (folder / "u.data").write_text("1\t0\t5\t881250949\n1\t1\t3\t891717742\n1\t2\t4\t0\n")
    raw = movielens.read(path=folder, rating_labels=4, context=["weekday", "hour"])
    assert raw.origin["context"] == ["weekday", "hour"]
    # 1997-12-04 15:55:49 Thursday, 1998-04-04 19:22:22 Saturday, 1970-01-01 00:00 Thursday
    assert raw.interactions.select("time", "context:weekday", "context:hour").rows() == [
        (881250949, "Thu", "15"), (891717742, "Sat", "19"), (0, "Thu", "00")]


@pytest.mark.parametrize(("options", "message"), [
    ({"genres": "multi"}, "--genres multi is for labelled impressions for now (a store of "
     "clicks takes no side features or bags): pass --rating-labels T"),
    ({"context": ["hour"]}, "--context is for labelled impressions for now"),
    ({"rating_labels": 4, "context": ["month"]},
     "--context month: distinct names among hour, weekday (of the rating's timestamp)"),
    ({"rating_labels": 4, "context": ["hour", "hour"]}, "--context hour,hour: distinct names"),
    ({"rating_labels": 4, "genres": "bag"}, "--genres 'bag': one of slots, multi"),
])
def test_side_options_are_refused_before_reading(tmp_path: Path, options, message) -> None:
    with pytest.raises(DataError) as error:  # no folder: refused before it is looked at
        movielens.read(path=tmp_path / "absent", **options)
    assert str(error.value).startswith(message)


def test_a_data_file_prepares_movielens_with_every_side_feature_and_din_trains(
    tmp_path: Path,
) -> None:
    folder = write_folder(tmp_path / "ml", users=40, ratings=8)
    typed = ["--path", str(folder), "--rating-labels", "4", "--user-features", "--genres",
             "multi", "--context", "hour,weekday", "--split", "user"]
    assert main(["prepare", "movielens", *typed, "--out", str(tmp_path / "typed")]) == 0
    toml = tmp_path / "data.toml"
    toml.write_text(f'source = "movielens"\npath = "{folder}"\nrating-labels = 4\n'
                    'user_features = true\ngenres = "multi"\ncontext = ["hour", "weekday"]\n'
                    f'split = "user"\nout = "{tmp_path / "file"}"\n')
    assert main(["prepare", "--config", str(toml)]) == 0
    stores = PreparedStore(tmp_path / "typed"), PreparedStore(tmp_path / "file")
    for name in ("impression_items", "impression_context", "item_attributes", "bags.genres",
                 "user_features"):
        assert np.array_equal(stores[0].array(name), stores[1].array(name)), name
    store = stores[1]
    assert store.schema["context_features"] == ["hour", "weekday"]
    assert store.schema["user_features"] == ["age", "gender", "occupation"]
    run = tmp_path / "run"
    assert main(["train", "--data", str(store.root), "--model", "din", "--out", str(run),
                 "--epochs", "1", "--batch-size", "64", "--threads", "1", "--no-progress",
                 "--option", "embed_dim=4"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert np.isfinite(results["test_auc"]["mean"])


@pytest.mark.skipif(not ML100K.is_dir(), reason=f"MovieLens 100K not found at {ML100K}")
def test_movielens_100k_genre_bags_and_time_context(tmp_path: Path) -> None:
    out = tmp_path / "ml"
    assert main(["prepare", "movielens", "--path", str(ML100K), "--rating-labels", "4",
                 "--genres", "multi", "--context", "hour,weekday", "--out", str(out)]) == 0
    store = PreparedStore(out)
    store.check_trainable()
    genres, items = store.vocab("genres"), store.vocab("item_id")
    bags = store.array("bags.genres")
    # u.item's flags of movies 50, 172, 1 and 267 (marked unknown), read by hand
    for movie, expected in (
        ("50", {"Action", "Adventure", "Romance", "Sci-Fi", "War"}),
        ("172", {"Action", "Adventure", "Drama", "Romance", "Sci-Fi", "War"}),
        ("1", {"Animation", "Children's", "Comedy"}),
        ("267", set()),
    ):
        bag = bags[items.index(movie)]
        assert {genres[i] for i in bag[bag > 0]} == expected, movie
        assert np.count_nonzero(bag) == len(expected)
    assert set(genres[2:]) == set(GENRES[1:])  # every genre but the unknown marker
    assert store.schema["bag_lengths"] == [6]
    # u.data line 1: user 196 rated movie 242 at 881250949, 1997-12-04 15:55:49 UTC, a Thursday
    users = (out / "users.txt").read_text().splitlines()
    found = np.flatnonzero((store.array("impression_users") == users.index("196"))
                           & (store.array("impression_items") == items.index("242")))
    assert store.array("impression_times")[found].tolist() == [881250949]
    hours, weekdays = store.vocab("context.hour"), store.vocab("context.weekday")
    context = store.array("impression_context")[found[0]]
    assert (hours[context[0]], weekdays[context[1]]) == ("15", "Thu")
    assert len(hours) == 2 + 24 and len(weekdays) == 2 + 7
