"""``camn score``: a file of candidates in, the rows with their scores out, chunk by chunk."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import camn
from camn.cli import main
from camn.data.chunks import read_chunks
from camn.data.raw import BadInputReport
from camn.predict import Predictor


@pytest.fixture(scope="module")
def run(trained_run: Callable[[str], Path]) -> Path:
    return trained_run("camn")


@pytest.fixture(scope="module")
def predictor(run: Path) -> Predictor:
    return camn.load(run)


@pytest.fixture(scope="module")
def candidates(predictor: Predictor) -> pl.DataFrame:
    """Every test row of the store as raw ids: user, history (space-joined), candidate."""
    store = predictor.store
    rows = store.split_indices("test")
    items, users = predictor.vocabulary(store.attributes[0]), predictor.user_ids()
    history = np.asarray(store.gather("histories", slice(None)))[rows][:, :, 0]
    lengths = np.asarray(store.gather("lengths", slice(None)))[rows]
    return pl.DataFrame({
        "user": [users[u] for u in np.asarray(store.gather("users", slice(None)))[rows]],
        "history": [" ".join(items[i] for i in history[r, : lengths[r]]) for r in range(len(rows))],
        "candidate": [items[i] for i in store.gather("targets", rows)[:, 0]],
    })


def score(run: Path, source: Path, out: Path, *extra: str) -> int:
    return main(["score", "--run", str(run), "--candidates", str(source), "--out", str(out),
                 "--no-progress", *extra])


def test_scores_every_row_as_the_api_does(run: Path, predictor: Predictor,
                                          candidates: pl.DataFrame, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "candidates.csv"
    candidates.write_csv(source)
    assert score(run, source, tmp_path / "scored.csv") == 0
    out = pl.read_csv(tmp_path / "scored.csv", infer_schema=False)
    assert out.columns == ["user", "history", "candidate", "score", "top_attribute"]
    assert out.drop("score", "top_attribute").equals(candidates)
    expected = predictor.score(candidates)["score"].to_numpy()
    np.testing.assert_allclose(out["score"].cast(pl.Float64).to_numpy(), expected, atol=1e-7)
    assert set(out["top_attribute"].to_list()) <= set(predictor.attributes)
    printed = capsys.readouterr().out
    assert f"{len(candidates)} row(s) of {source} scored by camn (seed 1)" in printed
    assert "no bad input" in printed


def test_bad_rows_are_counted_and_the_rest_scored(run: Path, predictor: Predictor,
                                                  candidates: pl.DataFrame, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "candidates.csv"
    good = candidates.head(4)
    good.write_csv(source)
    item = good["candidate"][0]
    with source.open("a") as file:  # lines 6 to 9: four bad rows
        file.write(f'u1,"[""{item}"", ",{item}\n')  # a JSON history cut short
        file.write(f"u2,{item},\n")  # no candidate
        file.write(f"u3,{item},{item},extra\n")  # a field past the header's
        file.write(f"u4,{item}  {item},{item}\n")
    assert score(run, source, tmp_path / "scored.csv", "--separator", " ") == 0
    out = pl.read_csv(tmp_path / "scored.csv", infer_schema=False)
    assert out.drop("score", "top_attribute").equals(good)  # the bad rows are left out
    np.testing.assert_allclose(out["score"].cast(pl.Float64).to_numpy(),
                               predictor.score(good)["score"].to_numpy(), atol=1e-7)
    printed = capsys.readouterr().out
    assert "bad input: 4 case(s)" in printed
    for line, reason in [(6, "history is not a list of item ids"), (7, "no candidate value"),
                         (8, "more fields than the header's 3 columns"),
                         (9, "history holds an empty or missing item id")]:
        assert f"{source}:{line}: {reason} (row skipped)" in printed
    assert score(run, source, tmp_path / "strict.csv", "--strict") == 2  # the reader's first
    assert capsys.readouterr().err == (
        f"camn: error: {source}:8: more fields than the header's 3 columns\n")
    assert not (tmp_path / "strict.csv").exists()  # a failed run leaves no output


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet", "tsv.gz"])
def test_chunks_give_the_scores_of_one_pass(run: Path, predictor: Predictor,
                                            candidates: pl.DataFrame, tmp_path: Path,
                                            suffix: str) -> None:
    """Chunks of 7 rows (model batches of 4) score as the whole file scored at once."""
    source = tmp_path / f"candidates.{suffix}"
    lists = candidates.with_columns(pl.col("history").str.split(" "))
    if suffix == "csv":
        candidates.write_csv(source)
    elif suffix == "jsonl":
        lists.write_ndjson(source)
    elif suffix == "parquet":
        lists.write_parquet(source, row_group_size=5)
    else:
        source.write_bytes(gzip.compress(candidates.write_csv(separator="\t").encode()))
    assert len(candidates) > 2 * 7
    out = tmp_path / ("out.jsonl" if suffix == "csv" else "out.csv")
    assert score(run, source, out, "--chunk-rows", "7", "--batch-size", "4") == 0
    scored = pl.read_csv(out, infer_schema=False) if out.suffix == ".csv" else pl.read_ndjson(out)
    assert scored.drop("score", "top_attribute").equals(candidates)  # lists written joined
    one_pass = predictor.score(candidates)["score"].to_numpy()
    np.testing.assert_allclose(scored["score"].cast(pl.Float64).to_numpy(), one_pass, atol=1e-7)


def test_text_blocks_cut_anywhere_read_the_same_rows(tmp_path: Path) -> None:
    source = tmp_path / "c.csv"
    source.write_bytes(b'\nuser,candidate,history\nu1,i1,"a b"\n\nu2,,c\n"u3",i3,"x\ny"\n'
                       b'u4,i4,q,extra\nu5,\xff,z\nu6,i6,"k ""q"" \n\n\nw"\nu7,i7,\n')
    reads = []
    for block_bytes in (1, 5, 16, 1 << 20):
        report = BadInputReport()
        frame = pl.concat(read_chunks(source, "csv", report, rows=2, block_bytes=block_bytes))
        reads.append((frame.to_dicts(), report.counts))
    assert all(read == reads[0] for read in reads)
    rows, counts = reads[0]
    assert [r["__line"] for r in rows] == [3, 5, 6, 10, 14]
    assert rows[3]["history"] == 'k "q" \n\n\nw'
    assert counts == {"bytes that are not UTF-8 text (row skipped)": 1,
                      "more fields than the header's 3 columns (row skipped)": 1}


def test_users_from_the_store_or_a_history_log(run: Path, predictor: Predictor,
                                               candidates: pl.DataFrame, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "users.parquet"
    frame = candidates.select("user", "candidate").with_columns(
        pl.Series("user", ["nobody", *candidates["user"][1:]]))
    frame.write_parquet(source)
    assert score(run, source, tmp_path / "store.jsonl") == 0
    out = pl.read_ndjson(tmp_path / "store.jsonl")
    with pytest.warns(UserWarning):
        expected = predictor.score(candidates=frame["candidate"], users=frame["user"])
    np.testing.assert_allclose(out["score"].to_numpy(), expected, atol=1e-7)
    assert "unknown ids: 1 user(s) without a history (e.g. 'nobody'), scored with an empty " \
        "history" in capsys.readouterr().out
    log = tmp_path / "log.csv"  # u-a clicked i2 then i1 (rows out of time order), u-b nothing
    items = predictor.vocabulary(predictor.attributes[0])
    pl.DataFrame({"user": ["u-a", "u-a", "u-c"], "item": [items[2], items[3], items[4]],
                  "time": [20, 10, 5]}).write_csv(log)
    asks = tmp_path / "asks.csv"
    pl.DataFrame({"user": ["u-a", "u-b"], "candidate": [items[5], items[5]]}).write_csv(asks)
    assert score(run, asks, tmp_path / "from-log.csv", "--history", str(log)) == 0
    out = pl.read_csv(tmp_path / "from-log.csv")
    expected = predictor.score([[items[3], items[2]], []], [items[5], items[5]])
    np.testing.assert_allclose(out["score"].to_numpy(), expected, atol=1e-7)
    assert "1 user(s) without a history (e.g. 'u-b')" in capsys.readouterr().out
    numbered = tmp_path / "log.parquet"  # integer user ids in a Parquet log match the text "7"
    pl.DataFrame({"user": [7, 7], "item": [items[2], items[3]], "time": [20, 10]}).write_parquet(
        numbered)
    pl.DataFrame({"user": ["7"], "candidate": [items[5]]}).write_csv(asks)
    assert score(run, asks, tmp_path / "numbered.csv", "--history", str(numbered)) == 0
    out = pl.read_csv(tmp_path / "numbered.csv")
    np.testing.assert_allclose(out["score"].to_numpy(), expected[:1], atol=1e-7)


def test_models_without_routing_give_no_top_attribute(trained_run: Callable[[str], Path],
                                                      candidates: pl.DataFrame,
                                                      tmp_path: Path) -> None:
    source = tmp_path / "c.jsonl"
    candidates.head(5).write_ndjson(source)
    assert score(trained_run("din"), source, tmp_path / "out.jsonl") == 0
    row = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert list(row) == ["user", "history", "candidate", "score"]


def test_outputs_and_columns_are_checked(run: Path, candidates: pl.DataFrame, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "c.csv"
    candidates.head(3).write_csv(source)
    out = tmp_path / "out.csv"
    out.write_text("mine\n")
    assert score(run, source, out) == 2
    assert capsys.readouterr().err == (
        f"camn: error: --out {out} already exists; pass --force to overwrite it\n")
    assert score(run, source, out, "--force") == 2  # not a scores file: kept
    assert capsys.readouterr().err == (
        f"camn: error: --out {out} is not a scores file written by camn (no 'score' column); "
        "--force replaces only such a file, camn will not write over it; choose another file\n")
    assert out.read_text() == "mine\n"
    assert score(run, source, tmp_path / "new.csv", "--candidate-col", "item") == 2
    assert capsys.readouterr().err == (
        f"camn: error: {source}: no column 'item' (the candidates; --candidate-col); its "
        "columns: user, history, candidate\n")
    assert not (tmp_path / "new.csv").exists()
    assert score(run, source, source, "--force") == 2
    assert capsys.readouterr().err == (
        f"camn: error: --out {source} is the input {source}; choose another file\n")
    assert score(run, source, tmp_path / "out.xlsx") == 2
    assert "name a .csv, .tsv, .parquet or .jsonl file" in capsys.readouterr().err
