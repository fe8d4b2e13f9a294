"""The movielens source: the three layouts on tiny files, bad input, and the real 100K data."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from camn.cli import main
from camn.data.raw import BadInputReport, DataError
from camn.data.sources import available_sources, movielens
from camn.data.store import PreparedStore

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens_100k"


def read(folder: Path, strict: bool = False) -> tuple[dict, BadInputReport]:
    parser = argparse.ArgumentParser()
    movielens.add_arguments(parser)
    report = BadInputReport(strict=strict)
    raw = movielens.read(report=report, **vars(parser.parse_args(["--path", str(folder)])))
    assert raw.attributes == movielens.ATTRIBUTES
    assert raw.items.columns == ["item", *movielens.ATTRIBUTES[1:]]
    items = {row[0]: row[1:] for row in raw.items.rows()}
    return {"raw": raw, "items": items}, report


def write(folder: Path, name: str, lines: list[str], encoding: str = "utf-8") -> None:
    (folder / name).write_bytes(("\n".join(lines) + "\n").encode(encoding))


def flags(*on: int, count: int = 19) -> str:
    return "|".join("1" if i in on else "0" for i in range(count))


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    write(tmp_path, "u.data", [
        "1\t10\t5\t100", "1\t11\t3\t90", "2\t10\t4\t50", "2\t12\t1\t60", "3\t11\t2\t70",
        "3\t12\t2\t80",
    ])
    write(tmp_path, "u.item", [
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 4, 5, 8)}",  # 4 genres: first 3
        f"11|Café Society (1971)|||http://x|{flags(1)}",  # no date: the title's year
        f"12|unknown|||http://x|{flags(0)}",  # genre "unknown" only, no year at all
        f"13|Nothing (2001)|02-Feb-1987||http://x|{flags()}",  # no genre flag at all
    ], encoding="latin-1")
    return tmp_path


def test_100k_attributes(ml100k: Path) -> None:
    data, report = read(ml100k)
    assert data["raw"].origin["layout"] == "100k"
    assert data["items"] == {
        "10": ("Animation", "Children's", "Comedy", "1990s"),
        "11": ("Action", "none", "none", "1970s"),
        "12": (None, None, None, None),
        "13": ("none", "none", "none", "1980s"),  # the release date wins over the title
    }
    interactions = data["raw"].interactions
    assert interactions.columns == ["user", "item", "time"]
    assert interactions.rows()[:2] == [("1", "10", 100), ("1", "11", 90)]
    assert report.total == 0


def test_100k_genre_names_from_u_genre(ml100k: Path) -> None:
    write(ml100k, "u.genre", ["Zeta|2", "Alpha|0", "Beta|1", ""])
    write(ml100k, "u.item", ["10|A (1995)|||u|1|0|1", "11|B (1995)|||u|0|1|1"])
    data, report = read(ml100k)
    assert data["items"]["10"] == ("Alpha", "Zeta", "none", "1990s")
    assert data["items"]["11"] == ("Beta", "Zeta", "none", "1990s")
    assert report.total == 0
    write(ml100k, "u.genre", ["Alpha|0", "Beta|1"])
    with pytest.raises(DataError, match=r"u\.item: no line has the 7 fields.*2 genres"):
        read(ml100k)


def test_1m_layout(tmp_path: Path) -> None:
    write(tmp_path, "ratings.dat", ["1::1::5::978300760", "1::2::3::978302109", "2::3::4::1"])
    write(tmp_path, "movies.dat", [
        "1::Toy Story (1995)::Animation|Children's|Comedy|Fantasy",
        "2::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance",
        "3::Metropolis (1927)::Sci-Fi",
    ], encoding="latin-1")
    data, report = read(tmp_path)
    assert data["raw"].origin["layout"] == "1m"
    assert data["items"] == {
        "1": ("Animation", "Children's", "Comedy", "1990s"),
        "2": ("Comedy", "Romance", "none", "2000s"),
        "3": ("Sci-Fi", "none", "none", "1920s"),
    }
    assert data["raw"].interactions.rows()[-1] == ("2", "3", 1)
    assert report.total == 0


def test_csv_layout(tmp_path: Path) -> None:
    write(tmp_path, "ratings.csv", [
        "userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,2,4.5,964981247",
        "2,3,2.5,1",
    ])
    write(tmp_path, "movies.csv", [
        "movieId,title,genres",
        '1,"American President, The (1995)",Comedy|Drama|Romance',
        "2,Some Show (2006–2007),(no genres listed)",
        "3,No Year At All,Horror",
    ])
    data, report = read(tmp_path)
    assert data["raw"].origin["layout"] == "csv"
    assert data["items"] == {
        "1": ("Comedy", "Drama", "Romance", "1990s"),
        "2": (None, None, None, "2000s"),
        "3": ("Horror", "none", "none", None),
    }
    assert data["raw"].interactions.rows() == [
        ("1", "1", 964982703), ("1", "2", 964981247), ("2", "3", 1)
    ]
    assert report.total == 0


def test_csv_ratings_missing_column(tmp_path: Path) -> None:
    write(tmp_path, "ratings.csv", ["user,movieId,rating,timestamp", "1,1,4,5"])
    write(tmp_path, "movies.csv", ["movieId,title,genres", "1,A (1995),Drama"])
    with pytest.raises(DataError, match=r"ratings\.csv.*'userId'.*available columns: user"):
        read(tmp_path)


def test_csv_ratings_header_naming_a_column_twice(tmp_path: Path) -> None:
    write(tmp_path, "ratings.csv", ["userId,movieId,timestamp,timestamp", "1,1,4,5"])
    write(tmp_path, "movies.csv", ["movieId,title,genres", "1,A (1995),Drama"])
    with pytest.raises(DataError) as error:  # was a polars panic (duplicate field names)
        read(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'ratings.csv'}:1: the header names the column 'timestamp' twice"
    )


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{tmp_path}.*u\.data \+ u\.item.*ratings\.dat"):
        read(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        read(tmp_path / "absent")
    write(tmp_path, "u.data", ["1\t1\t1\t1"])
    with pytest.raises(DataError, match=r"has u\.data but not u\.item"):
        read(tmp_path)
    (tmp_path / "u.item").write_text("\n")
    with pytest.raises(DataError, match=r"u\.item: the file is empty"):
        read(tmp_path)
    (tmp_path / "u.data").write_text("")
    with pytest.raises(DataError, match=r"u\.data: no rating could be read"):
        read(tmp_path)


def test_malformed_lines_are_counted(ml100k: Path) -> None:
    text = (ml100k / "u.data").read_text()
    (ml100k / "u.data").write_text(text + "4\t10\t3\n\n4\t11\t3\t7\n5\t10\t1\tlate\n")
    data, report = read(ml100k)
    assert len(data["raw"].interactions) == 7  # 6 good lines + user 4's good one
    assert sum(report.counts.values()) == 2
    assert any("u.data:7:" in e and "4 '\\t'-separated fields" in e for e in report.examples)
    assert any("u.data:10:" in e and "timestamp" in e for e in report.examples)


def test_strict_stops_at_the_first_bad_line(ml100k: Path, tmp_path_factory, capsys) -> None:
    (ml100k / "u.data").write_text("1\t10\t5\t100\n1\t11\n")
    out = tmp_path_factory.mktemp("out") / "store"
    code = main(["prepare", "movielens", "--path", str(ml100k), "--out", str(out), "--strict"])
    assert code == 2
    assert "u.data:2:" in capsys.readouterr().err
    assert not out.exists()


def test_registered_and_prepares_end_to_end(ml100k: Path, tmp_path_factory, capsys) -> None:
    assert available_sources()["movielens"] is movielens
    out = tmp_path_factory.mktemp("out") / "store"
    assert main(["prepare", "movielens", "--path", str(ml100k), "--out", str(out)]) == 0
    assert "users 3 | items 3 | attributes 5 | samples 6" in capsys.readouterr().out
    store = PreparedStore(out)
    assert store.vocab("genre_1") == ["<pad>", "<unk>", "Action", "Animation"]
    assert store.schema["origin"]["source"] == "movielens"


def test_rating_bytes_that_are_not_utf8_are_counted_not_replaced(ml100k: Path) -> None:
    text = (ml100k / "u.data").read_bytes()
    (ml100k / "u.data").write_bytes(text + b"J\xf6rg\t10\t3\t7\n4\t11\t3\t8\n")
    data, report = read(ml100k)
    users = data["raw"].interactions["user"].to_list()
    assert len(users) == 7 and not any("\ufffd" in user for user in users)
    assert report.examples == [f"{ml100k / 'u.data'}:7: bytes that are not UTF-8 text "
                               "(line skipped)"]
    with pytest.raises(DataError) as error:
        read(ml100k, strict=True)
    assert str(error.value) == f"{ml100k / 'u.data'}:7: bytes that are not UTF-8 text"


def test_csv_movies_bad_rows_are_counted_with_their_line(tmp_path: Path) -> None:
    write(tmp_path, "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4,5", "1,2,4,6"])
    (tmp_path / "movies.csv").write_bytes(
        b"movieId,title,genres\n1,A (1995),Drama\n2,B (1996),Comedy,extra\n"
        b",C (1997),Drama\n3,D\xe9j\xe0 (1998),Drama\n"
    )
    data, report = read(tmp_path)
    assert data["items"] == {"1": ("Drama", "none", "none", "1990s")}
    where = tmp_path / "movies.csv"
    assert report.examples == [
        f"{where}:3: more fields than the header's 3 columns (row skipped)",
        f"{where}:5: bytes that are not UTF-8 text (row skipped)",
        f"{where}:4: no movieId value (row skipped)",
    ]


@pytest.mark.skipif(not ML100K.is_dir(), reason=f"MovieLens 100K not found at {ML100K}")
def test_real_movielens_100k(tmp_path: Path) -> None:
    stores = {}
    for protocol in ("last", "sliding"):
        out = tmp_path / protocol
        argv = ["prepare", "movielens", "--path", str(ML100K), "--out", str(out)]
        assert main([*argv, "--protocol", protocol]) == 0
        stores[protocol] = PreparedStore(out)
    schema = stores["last"].schema
    assert (schema["num_users"], schema["num_items"], schema["num_interactions"]) == (
        943, 1682, 100_000
    )
    assert schema["vocab_sizes"][0] == 1682 + 2 and len(schema["attributes"]) == 5
    assert schema["splits"] == {"train": 2 * 754, "valid": 2 * 94, "test": 2 * 95}
    assert schema["bad_input"] == {}
    raw = read(ML100K)[0]["raw"]
    per_user = raw.interactions.group_by("user").len().sort("user")["len"].to_numpy()
    sliding = stores["sliding"]
    train_users = np.unique(sliding.gather("users", slice(None))[sliding.split_indices("train")])
    assert len(train_users) == 754
    assert sliding.schema["splits"] == {
        "train": 2 * int((per_user[train_users] - 1).sum()), "valid": 188, "test": 190
    }
    for split in ("valid", "test"):
        for name in ("histories", "targets", "labels", "lengths"):
            a = stores["last"].gather(name, stores["last"].split_indices(split))
            b = stores["sliding"].gather(name, stores["sliding"].split_indices(split))
            np.testing.assert_array_equal(a, b)


def test_a_file_given_as_path_is_named_as_a_file(ml100k: Path) -> None:
    """Before, ``--path ml-100k/u.data`` said "no such folder" of a file that exists."""
    with pytest.raises(DataError) as error:
        read(ml100k / "u.data")
    assert str(error.value) == f"{ml100k / 'u.data'} is a file; --path takes a folder: give its" \
        f" folder, {ml100k}"
    notes = ml100k / "notes.txt"
    notes.write_text("mine\n")
    with pytest.raises(DataError) as error:
        read(notes)
    assert str(error.value) == f"{notes} is a file; --path takes a folder: give the folder of" \
        " the MovieLens files, e.g. ml-100k"


def test_cli_names_a_file_given_as_path(ml100k: Path, tmp_path_factory, capsys) -> None:
    out = tmp_path_factory.mktemp("out") / "store"
    assert main(["prepare", "movielens", "--path", str(ml100k / "u.item"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"camn: error: {ml100k / 'u.item'} is a file; --path takes a folder: give its folder,"
        f" {ml100k}\n"
    )
    assert not out.exists()
