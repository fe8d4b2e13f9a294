"""``camn prepare --config FILE``: a TOML data file stands for the flags of ``camn prepare
SOURCE``; typed flags override it; a bad file is one line naming the file and the key."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from camn.cli import expand_data_file, main, source_parser
from camn.data.sources import available_sources
from camn.data.store import PreparedStore

LOG = "user,item,time,click,hour,price\n" + "".join(
    f"u{u},i{(u * 7 + r) % 13},{100 * r + u},{(u + r) % 2},h{r % 3},{u + r / 10}\n"
    for u in range(12) for r in range(6))
ITEMS = "item,genres,brand\n" + "".join(
    f"i{i},{['Drama|Comedy', 'Comedy', 'War|Drama'][i % 3]},b{i % 4}\n" for i in range(13))

TABLE_FLAGS = ["--label-col", "click", "--split", "user", "--context", "hour", "--numeric",
               "price", "--attributes", "genres,brand", "--multi-valued", "genres:|",
               "--max-len", "4", "--seed", "3"]
TABLE_TOML = """
source = "table"
label_col = "click"
split = "user"
context = ["hour"]
numeric = "price"
attributes = ["genres", "brand"]
multi_valued = {genres = "|"}
max-len = 4
seed = 3
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    log, items = tmp_path / "log.csv", tmp_path / "items.csv"
    log.write_text(LOG)
    items.write_text(ITEMS)
    return {"log": log, "items": items}


def data_file(folder: Path, text: str, name: str = "data.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def arrays(store: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted((store / "arrays").glob("*.npy"))}


def assert_same_store(first: Path, second: Path) -> None:
    one, two = arrays(first), arrays(second)
    assert one.keys() == two.keys()
    for name in one:
        assert np.array_equal(one[name], two[name]), name
    assert sorted(p.name for p in (first / "vocab").iterdir()) == \
        sorted(p.name for p in (second / "vocab").iterdir())
    for vocab in (first / "vocab").iterdir():
        assert vocab.read_text() == (second / "vocab" / vocab.name).read_text()
    schemas = PreparedStore(first).schema, PreparedStore(second).schema
    assert {k: v for k, v in schemas[0].items() if k != "created"} == \
        {k: v for k, v in schemas[1].items() if k != "created"}


def test_a_data_file_prepares_the_store_its_flags_prepare(files, tmp_path: Path) -> None:
    paths = [f"--interactions={files['log']}", f"--items={files['items']}"]
    assert main(["prepare", "table", *paths, *TABLE_FLAGS, "--out", str(tmp_path / "a")]) == 0
    toml = data_file(tmp_path, TABLE_TOML + f"interactions = '{files['log']}'\n"
                     f"items = '{files['items']}'\nout = '{tmp_path / 'b'}'\n")
    assert main(["prepare", "--config", str(toml)]) == 0
    assert_same_store(tmp_path / "a", tmp_path / "b")
    store = PreparedStore(tmp_path / "b")
    assert store.schema["context_features"] == ["hour"]
    assert store.schema["numeric_features"] == ["price"]
    assert store.schema["bag_slots"] == [1] and store.schema["max_len"] == 4


def test_typed_flags_override_the_file(files, tmp_path: Path) -> None:
    toml = data_file(tmp_path, TABLE_TOML + f"interactions = '{files['log']}'\n"
                     f"items = '{files['items']}'\nout = '{tmp_path / 'ignored'}'\n")
    out = tmp_path / "typed"
    assert main(["prepare", "--config", str(toml), "--seed", "9", "--context=", "--out",
                 str(out)]) == 0
    assert not (tmp_path / "ignored").exists()
    schema = PreparedStore(out).schema
    assert schema["seed"] == 9 and schema["max_len"] == 4  # typed, and the file's
    assert "context_features" not in schema  # the typed empty list replaced the file's


def test_the_expanded_command_line(tmp_path: Path) -> None:
    toml = data_file(tmp_path, 'source = "recbole"\ninter = "-x.inter"\nitem = "b.item"\n'
                     'recipe = "amazon"\nbucketize = []\nstrict = true\nforce = false\n'
                     'out = "s"\n')
    # a value that starts with a dash stays a value; false leaves a flag out; a typed
    # --attributes replaces the file's recipe, which it excludes; the name may be typed too
    assert expand_data_file(["prepare", "--config", str(toml), "recbole", "--attributes",
                             "a,b"]) == \
        ["prepare", "recbole", "--inter=-x.inter", "--item=b.item", "--bucketize=",
         "--strict", "--out=s", "--attributes", "a,b"]
    assert expand_data_file(["prepare", f"--config={toml}"])[1:4] == \
        ["recbole", "--inter=-x.inter", "--item=b.item"]
    assert expand_data_file(["prepare", "table", "--interactions", "x"]) == \
        ["prepare", "table", "--interactions", "x"]


@pytest.mark.parametrize(("text", "message"), [
    ('path = "x"\nout = "s"\n',
     "{f}: no key 'source': name the source, e.g. source = \"movielens\" (one of amazon, dien, "
     "movielens, recbole, synthetic, table)"),
    ('source = "movie"\n', "{f} source: 'movie' is not a source (one of amazon, dien, movielens, "
     "recbole, synthetic, table)"),
    ('source = "movielens"\npath = "p"\nuser_col = "u"\n',
     "{f}: unknown key 'user_col' for camn prepare movielens (known: source, context, force, "),
    ('source = "movielens"\npath = "p"\nrating_labels = "four"\n',
     "{f} rating_labels: 'four' is not a valid float"),
    ('source = "movielens"\npath = "p"\nmax_len = 0\n', "{f} max_len: must be at least 1"),
    ('source = "movielens"\npath = "p"\nprotocol = "every"\n',
     "{f} protocol: 'every' is not one of last, sliding"),
    ('source = "movielens"\npath = "p"\ngenres = "bags"\n',
     "{f} genres: 'bags' is not one of slots, multi"),
    ('source = "movielens"\npath = "p"\nuser-features = "yes"\n',
     "{f} user-features: expected true or false, got 'yes'"),
    ('source = "movielens"\npath = "p"\ncontext = {hour = 1}\n',
     "{f} context: expected a text A[,B...] or an array of texts, got {'hour': 1}"),
    ('source = "movielens"\npath = 3\n', "{f} path: expected a text (a path), got 3"),
    ('source = "table"\ninteractions = "x"\nmulti_valued = ["genres"]\n',
     "{f} multi_valued: expected a text COL:SEP[,COL:SEP...] or a table of texts"),
    ('source = "table"\ninteractions = "x"\ncontext = ["a,b"]\n',
     "{f} context: an item holds a comma"),
    ('source = "table"\ninteractions = "x"\nuser_col = "u"\nuser-col = "v"\n',
     "{f} user-col: given twice, as 'user_col' and 'user-col'"),
    ('source = "movielens"\nrating_labels = 4\n',
     "{f}: no key 'path': camn prepare movielens needs --path; give it in the file or on the "
     "command line"),
    ('source = "movielens"\npath = "p"\n[extra]\n', "{f}: unknown key 'extra'"),
    ('source = "movielens"\npath = \n', "{f} is not a valid TOML file: "),
])
def test_a_bad_data_file_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, capsys, text: str, message: str,
) -> None:
    toml = data_file(tmp_path, text)
    assert main(["prepare", "--config", str(toml), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("camn: error: " + message.replace("{f}", str(toml))), err
    assert err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_the_source_typed_and_the_files_must_agree(tmp_path: Path, capsys) -> None:
    toml = data_file(tmp_path, 'source = "movielens"\npath = "p"\n')
    assert main(["prepare", "--config", str(toml), "table", "--out", "s"]) == 2
    assert capsys.readouterr().err == (
        f"camn: error: {toml} source: the file prepares 'movielens', the command line names "
        "'table'; leave the name out of one of them\n")
    assert main(["prepare", "--config", str(tmp_path / "none.toml")]) == 2
    assert capsys.readouterr().err.startswith(
        f"camn: error: --config {tmp_path / 'none.toml'}: cannot be read (No such file")
    assert main(["prepare", "--config"]) == 2
    assert capsys.readouterr().err == "camn: error: --config needs a FILE: the TOML data file\n"


def test_the_example_data_file_lists_only_keys_of_its_source() -> None:
    example = Path(__file__).resolve().parents[1] / "configs" / "data-movielens-labels.toml"
    argv = expand_data_file(["prepare", "--config", str(example)])
    assert argv == ["prepare", "movielens", "--path=../shared/data/movielens_100k",
                    "--rating-labels=4", "--user-features", "--genres=multi",
                    "--context=hour,weekday", "--out=stores/ml100k-ctr-full"]


@pytest.mark.parametrize("source", available_sources())
def test_every_list_flag_shows_a_list_metavar_so_a_data_file_may_give_an_array(
    source: str,
) -> None:
    # a data file takes an array for a flag whose metavar reads COL[,COL...]
    for action in source_parser(source)._actions:
        if callable(action.type) and action.nargs is None and action.option_strings:
            try:
                parsed = action.type("a,b")
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                continue
            if isinstance(parsed, list | dict):
                assert "[," in str(action.metavar), (source, action.option_strings)
