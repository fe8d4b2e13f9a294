"""Labelled impressions: histories strictly before each impression, labels, splits, training."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from camn.cli import main
from camn.data import impressions
from camn.data.sources import _files, _labels
from camn.data.store import PreparedStore
from camn.train.loop import ResidentSplit

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens_100k"

# u1 clicks a at 10, c at 20 and e at 30; b and d are shown at 20 too, with c (a tie)
HAND_LOG = """user,item,time,click
u1,a,10,1
u1,b,20,0
u1,c,20,1
u1,d,20,0
u2,a,15,0
u2,b,25,1
u1,e,30,1
u1,f,40,0
u2,c,35,0
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def prepare(tmp_path: Path, *argv: str, name: str = "store") -> PreparedStore:
    out = tmp_path / name
    assert main(["prepare", "table", *argv, "--out", str(out), "--force"]) == 0
    return PreparedStore(out)


def refusal(capsys: pytest.CaptureFixture, tmp_path: Path, *argv: str) -> str:
    """The error ``camn prepare table ARGV`` stops with."""
    capsys.readouterr()
    assert main(["prepare", "table", *argv, "--out", str(tmp_path / "refused")]) == 2
    return capsys.readouterr().err


def random_log(path: Path, users: int = 40, rows: int = 30, seed: int = 0) -> Path:
    """Impressions whose label follows the item (even items are clicked more), with times
    that repeat, so that ties occur."""
    rng = np.random.default_rng(seed)
    lines = ["user,item,time,clicked,rating,behavior"]
    for user in range(users):
        for _ in range(rows):
            item = int(rng.integers(30))
            click = int(rng.random() < (0.8 if item % 2 == 0 else 0.2))
            behavior = ["pv", "cart", "buy"][int(rng.integers(3))]
            lines.append(f"u{user},i{item},{int(rng.integers(100, 400))},{click},"
                         f"{int(rng.integers(1, 6))},{behavior}")
    return write(path, "\n".join(lines) + "\n")


def history_times(store: PreparedStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ends, lengths, times) of every sample: its history is click_times[ends - lengths:ends]."""
    rows = np.arange(store.num_samples)
    ends, lengths = store.references(rows)
    return ends, lengths, np.asarray(store.array("impression_times"))


def test_hand_computed_histories_ties_and_time_split(tmp_path: Path) -> None:
    log = write(tmp_path / "log.csv", HAND_LOG)
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "click",
                    "--valid-from", "30", "--test-from", "35")
    # sorted by (split, user, time); equal times keep the file's order
    assert store.schema["splits"] == {"train": 6, "valid": 1, "test": 2}
    assert store.schema["clicks_per_split"] == {"train": 3, "valid": 1, "test": 0}
    a, b, c, d, e, f = range(2, 8)
    assert store.gather("target_items", slice(None)).tolist() == [a, b, c, d, a, b, e, f, c]
    assert store.gather("labels", slice(None)).tolist() == [1, 0, 1, 0, 0, 1, 1, 0, 0]
    assert store.gather("users", slice(None)).tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 1]
    assert store.gather("splits", slice(None)).tolist() == [0] * 6 + [1, 2, 2]
    # at 20 only a (10) precedes: c, clicked at 20 itself, is not in the history of b, c, d
    assert store.gather("lengths", slice(None)).tolist() == [0, 1, 1, 1, 0, 0, 2, 3, 1]
    histories = store.gather("histories", slice(None))[:, :3, 0]
    assert histories.tolist() == [[0, 0, 0], [a, 0, 0], [a, 0, 0], [a, 0, 0], [0, 0, 0],
                                  [0, 0, 0], [a, c, 0], [a, c, e], [b, 0, 0]]
    batch = next(store.batches("test", 8))
    assert batch["label"].tolist() == [0.0, 0.0]
    assert batch["target"][:, 0].tolist() == [f, c]
    assert batch["mask"].sum(1).tolist() == [3, 1]
    assert store.training_problems() == [
        "schema.json: the valid split holds clicks only (1 impressions): its AUC is undefined;"
        " camn train will refuse this store",
        "schema.json: the test split holds non-clicks only (2 impressions): its AUC is undefined;"
        " camn train will refuse this store",
    ]


def test_no_history_event_at_or_after_its_impression_and_no_test_time_in_training(
    tmp_path: Path,
) -> None:
    log = random_log(tmp_path / "log.csv")
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "clicked")
    store.check_trainable()
    ends, lengths, times = history_times(store)
    click_times = np.asarray(store.array("click_times"))
    last = np.maximum(ends - 1, 0)
    assert np.all(click_times[last][lengths > 0] < times[lengths > 0])
    # the next event of the timeline, if the user's, is at or after the impression: nothing
    # before the impression was left out
    offsets = np.asarray(store.array("timeline_offsets"))
    users = store.gather("users", slice(None))
    has_next = ends < offsets[users + 1]
    assert np.all(click_times[ends[has_next]] >= times[has_next])
    splits = store.gather("splits", slice(None))
    assert times[splits == 0].max() < times[splits == 1].min()
    assert times[splits == 1].max() < times[splits == 2].min()
    low, high = 100, 399  # the times' range: valid from 80% of it, test from 90%
    assert times[splits == 2].min() >= low + 0.9 * (high - low)
    assert store.num_samples == 40 * 30


def test_bad_labels_are_counted_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    log = write(tmp_path / "log.csv", HAND_LOG + "u1,a,50,2\nu1,b,51,NaN\nu2,a,52,\n"
                "u2,b,53,yes\nu2,c,54,1.0\n")
    out = tmp_path / "store"
    assert main(["prepare", "table", "--interactions", str(log), "--label-col", "click",
                 "--split", "user", "--out", str(out)]) == 0
    bad = PreparedStore(out).schema["bad_input"]
    assert bad == {"label is not 0 or 1 (row skipped)": 2, "label is NaN (row skipped)": 1,
                   "no label value (row skipped)": 1}
    assert PreparedStore(out).num_samples == 10  # 9 + the 1.0
    capsys.readouterr()
    assert main(["prepare", "table", "--interactions", str(log), "--label-col", "click",
                 "--strict", "--out", str(tmp_path / "strict")]) == 2
    assert capsys.readouterr().err == f"camn: error: {log}:11: label is not 0 or 1\n"


def test_history_counts_in_chunks_are_the_events_strictly_before_each_impression(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(5)
    user, time = rng.integers(0, 4, 200), rng.integers(1_500_000_000, 1_500_000_030, 200)
    clicked = rng.random(200) < 0.5
    expected = [np.sum((user[clicked] == u) & (time[clicked] < t))
                for u, t in zip(user, time, strict=True)]
    monkeypatch.setattr(impressions, "KEY_CHUNK", 7)
    keys = impressions.user_time_keys(user, time, num_users=4)
    stride = time.max() - time.min() + 1
    assert keys.tolist() == (user * stride + time - time.min()).tolist()
    click_keys = np.sort(keys[clicked])
    starts = np.concatenate([[0], np.cumsum(np.bincount(user[clicked], minlength=4))])
    counts = impressions.history_positions(user, keys, click_keys, starts)
    assert counts.dtype == np.int32 and counts.tolist() == expected


@pytest.mark.parametrize("column", [
    pl.Series([1.0, 0.0, 0.5, float("nan"), None, 2.0]),
    pl.Series([1, 0, 3, -1, None, 2], dtype=pl.Int16),
    pl.Series([True, False, None]),
])
def test_labels_of_numbers_and_booleans_read_as_their_text_does(column: pl.Series) -> None:
    as_numbers, as_text = _labels.label_values(column), _labels.label_values(column.cast(pl.String))
    assert [s.to_list() for s in as_numbers] == [s.to_list() for s in as_text]
    labels, reasons = _labels.label_values(pl.Series([1.0, 0.0, 0.5, float("nan"), None]))
    assert labels.to_list() == [1, 0, None, None, None]
    assert reasons.to_list() == [None, None, _labels.LABEL_REASONS["other"],
                                 _labels.LABEL_REASONS["nan"], _labels.LABEL_REASONS["null"]]


def test_label_and_history_expressions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = random_log(tmp_path / "log.csv", users=6, rows=10)
    rows = [line.split(",") for line in log.read_text().splitlines()[1:]]
    store = prepare(tmp_path, "--interactions", str(log), "--label", "rating >= 4",
                    "--split", "user")
    assert store.schema["clicks_per_split"]["train"] + store.schema["clicks_per_split"][
        "valid"] + store.schema["clicks_per_split"]["test"] == sum(int(r[4]) >= 4 for r in rows)
    assert len(store.array("clicks")) == sum(int(r[4]) >= 4 for r in rows)
    store = prepare(tmp_path, "--interactions", str(log), "--label",
                    "behavior IN ('cart', 'buy')", "--history-where", "behavior <> 'buy'",
                    "--split", "user", name="behaviour")
    assert int(store.gather("labels", slice(None)).sum()) == sum(r[5] != "pv" for r in rows)
    assert len(store.array("clicks")) == sum(r[5] != "buy" for r in rows)
    assert refusal(capsys, tmp_path, "--interactions", str(log), "--label", "price > 1") == (
        f"camn: error: --label 'price > 1': {log} has no column 'price'; available columns: "
        "user, item, time, clicked, rating, behavior\n")
    assert "one of --label-col COL or --label EXPR" in refusal(
        capsys, tmp_path, "--interactions", str(log), "--label", "rating > 1", "--label-col",
        "clicked")
    assert refusal(capsys, tmp_path, "--interactions", str(log), "--label-col", "clicked",
                   "--protocol", "sliding") == (
        "camn: error: --protocol sliding is for logs of clicks: each row of a labelled log is "
        "one sample; leave out --protocol\n")
    assert refusal(capsys, tmp_path, "--interactions", str(log), "--label-col", "clicked",
                   "--context", "hour") == (  # the file's columns, not the reader's own
        f"camn: error: {log}: no column 'hour'; available columns: "
        "user, item, time, clicked, rating, behavior\n")



def test_a_parquet_log_is_read_for_the_columns_its_expressions_name(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = random_log(tmp_path / "log.csv", users=6, rows=10)
    log = tmp_path / "log.parquet"
    pl.read_csv(csv).with_columns(unused=pl.lit("x")).write_parquet(log)
    read: list[list[str]] = []
    scan = _files.parquet_rows

    def recorded(source, keep, columns):
        frame = scan(source, keep, columns)
        read.append([c for c in frame.columns if c != "__line"])
        return frame

    monkeypatch.setattr(_files, "parquet_rows", recorded)
    store = prepare(tmp_path, "--interactions", str(log), "--label",
                    "behavior IN ('cart', 'buy')", "--history-where", "rating > 2",
                    "--split", "user", name="parquet")
    assert read == [["user", "item", "time", "behavior", "rating"]]
    expected = prepare(tmp_path, "--interactions", str(csv), "--label",
                       "behavior IN ('cart', 'buy')", "--history-where", "rating > 2",
                       "--split", "user", name="csv")
    for name in ("clicks", "impression_items", "impression_labels", "impression_positions"):
        assert store.array(name).tolist() == expected.array(name).tolist()
    assert refusal(capsys, tmp_path, "--interactions", str(log), "--label", "price > 1") == (
        f"camn: error: --label 'price > 1': {log} has no column 'price'; available columns: "
        "user, item, time, clicked, rating, behavior, unused\n")

def test_a_log_already_split_keeps_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train = write(tmp_path / "train.csv", HAND_LOG)
    valid = write(tmp_path / "valid.csv", "user,item,time,click\nu1,b,50,1\nu2,a,50,0\n")
    test = write(tmp_path / "test.csv", "user,item,time,click\nu1,c,60,0\nu2,d,45,1\n"
                 "u1,a,55,1\n")
    store = prepare(tmp_path, "--interactions", str(train), "--valid", str(valid), "--test",
                    str(test), "--label-col", "click")
    assert store.schema["splits"] == {"train": 9, "valid": 2, "test": 3}
    assert store.schema["origin"]["labels"]["split"] == "files"
    # test, by (user, time): u1 a at 55 follows the clicks a, c, e of train and b of valid;
    # u1 c at 60 also a at 55, a test click; u2 d at 45 follows b at 25
    assert store.gather("target_items", np.arange(11, 14)).tolist() == [2, 4, 5]
    assert store.gather("lengths", np.arange(11, 14)).tolist() == [4, 5, 1]
    assert store.gather("histories", [12])[0, :6, 0].tolist() == [2, 4, 6, 3, 2, 0]
    assert "needs both --valid FILE and --test FILE" in refusal(
        capsys, tmp_path, "--interactions", str(train), "--valid", str(valid), "--label-col",
        "click")


def test_sampled_negatives_share_their_clicks_history(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    log = random_log(tmp_path / "log.csv", users=8, rows=6)
    plain = prepare(tmp_path, "--interactions", str(log), "--label-col", "clicked",
                    "--split", "user", name="plain")
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "clicked",
                    "--split", "user", "--negatives", "2")
    clicks = int(plain.gather("labels", slice(None)).sum())
    assert store.num_samples == plain.num_samples + 2 * clicks
    assert int(store.gather("labels", slice(None)).sum()) == clicks
    users, items = store.gather("users", slice(None)), store.gather("target_items", slice(None))
    logged = set(zip(plain.gather("users", slice(None)).tolist(),
                     plain.gather("target_items", slice(None)).tolist(), strict=True))
    sampled = set(zip(users.tolist(), items.tolist(), strict=True)) - logged
    assert len(sampled) > 0 and not sampled & logged
    # every (user, time) keeps its history length: the negatives copy their click's
    key = (users.astype(np.int64) << 32) + np.asarray(store.array("impression_times"))
    lengths = store.gather("lengths", slice(None))
    for k in np.unique(key):
        assert len(set(lengths[key == k].tolist())) == 1
    assert "are for labelled impressions" in refusal(
        capsys, tmp_path, "--interactions", str(log), "--negatives", "2")


def test_a_history_event_after_its_impression_is_found_by_the_scan(tmp_path: Path) -> None:
    log = write(tmp_path / "log.csv", HAND_LOG)
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "click",
                    "--valid-from", "30", "--test-from", "35")
    positions = np.load(store.root / "arrays" / "impression_positions.npy")
    positions[1] = 2  # b at 20 would see c, clicked at 20
    np.save(store.root / "arrays" / "impression_positions.npy", positions)
    assert PreparedStore(store.root).content_problems() == [
        "arrays/impression_positions.npy holds 2 at row 1: its history would hold an event at "
        "or after the impression's time"]


def test_train_on_a_labelled_store(tmp_path: Path) -> None:
    log = random_log(tmp_path / "log.csv", users=60)
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "clicked")
    run = tmp_path / "run"
    assert main(["train", "--data", str(store.root), "--model", "din", "--out", str(run),
                 "--epochs", "3", "--threads", "1", "--no-progress"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["test_auc"]["mean"] > 0.7  # the label follows the item
    assert 0 < results["test_logloss"]["mean"] < 0.69
    assert "test_gauc" in results


def test_amazon_rating_labels(tmp_path: Path) -> None:
    lines = [{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 100, "overall": 5.0},
             {"reviewerID": "U1", "asin": "A2", "unixReviewTime": 200, "overall": 2.0},
             {"reviewerID": "U2", "asin": "A1", "unixReviewTime": 150, "overall": 4.0},
             {"reviewerID": "U2", "asin": "A2", "unixReviewTime": 250}]
    reviews = tmp_path / "reviews.json.gz"
    reviews.write_bytes(gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode()))
    meta = write(tmp_path / "meta.json", "".join(
        repr({"asin": a, "categories": [["Beauty", "Face"]]}) + "\n" for a in ("A1", "A2")))
    out = tmp_path / "store"
    assert main(["prepare", "amazon", "--reviews", str(reviews), "--meta", str(meta),
                 "--rating-labels", "4", "--split", "user", "--out", str(out)]) == 0
    store = PreparedStore(out)
    assert store.schema["bad_input"] == {"overall (the rating) is not a number (line skipped)": 1}
    assert sorted(store.gather("labels", slice(None)).tolist()) == [0, 1, 1]
    assert len(store.array("clicks")) == 2


@pytest.mark.skipif(not ML100K.is_dir(), reason=f"MovieLens 100K not found at {ML100K}")
def test_movielens_100k_rating_labels(tmp_path: Path) -> None:
    out = tmp_path / "ml"
    assert main(["prepare", "movielens", "--path", str(ML100K), "--rating-labels", "4",
                 "--out", str(out)]) == 0
    store = PreparedStore(out)
    store.check_trainable()
    ratings = np.loadtxt(ML100K / "u.data", dtype=np.int64)
    assert store.num_samples == len(ratings) == 100_000
    assert int(store.gather("labels", slice(None)).sum()) == int((ratings[:, 2] >= 4).sum())
    assert len(store.array("clicks")) == int((ratings[:, 2] >= 4).sum())
    ends, lengths, times = history_times(store)
    click_times = np.asarray(store.array("click_times"))
    seen = lengths > 0
    assert np.all(click_times[ends[seen] - 1] < times[seen])
    splits = store.gather("splits", slice(None))
    assert times[splits == 0].max() < times[splits == 2].min()


def side_log(path: Path, users: int = 60, rows: int = 30, seed: int = 1) -> Path:
    """Impressions whose label follows the device and the price only, never the item."""
    rng = np.random.default_rng(seed)
    lines = ["user,item,time,clicked,hour,device,price"]
    for user in range(users):
        for step in range(rows):
            phone, price = bool(rng.random() < 0.5), float(rng.random() * 100)
            chance = (0.7 if phone else 0.2) * (1.2 if price < 50 else 0.6)
            lines.append(f"u{user},i{int(rng.integers(40))},{1000 + 10 * step},"
                         f"{int(rng.random() < chance)},{int(rng.integers(24))},"
                         f"{'phone' if phone else 'desktop'},{price:.2f}")
    return write(path, "\n".join(lines) + "\n")


def test_context_and_numeric_features_reach_the_model(tmp_path: Path) -> None:
    log = side_log(tmp_path / "log.csv")
    with log.open("a") as file:
        file.write("u1,i3,1290,1,3,phone,abc\nu2,i4,1290,0,,desktop,5\n")
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "clicked",
                    "--context", "hour,device", "--numeric", "price")
    assert store.schema["bad_input"] == {
        "numeric feature 'price' is not a number (row skipped)": 1}
    assert store.schema["context_features"] == ["hour", "device"]
    assert store.schema["context_sizes"] == [2 + 24, 2 + 2]
    assert store.vocab("context.device") == ["<pad>", "<unk>", "desktop", "phone"]
    train = np.arange(store.schema["splits"]["train"])
    numeric = store.side_fields(train)["numeric"][:, 0]
    assert abs(float(numeric.mean())) < 1e-5 and abs(float(numeric.std()) - 1) < 1e-4
    mean, std = store.schema["numeric_standardisation"]["price"]
    batch = next(store.batches("test", 4096))
    assert batch["context"].shape == (store.schema["splits"]["test"], 2)
    unknown_hour = torch.nonzero(batch["context"][:, 0] == 1)[:, 0]  # u2's missing hour
    assert len(unknown_hour) == 1
    assert batch["context"][unknown_hour[0]].tolist() == [1, 2]  # desktop
    assert float(batch["numeric"][unknown_hour[0], 0]) == pytest.approx((5 - mean) / std,
                                                                        rel=1e-5)

    # the trainer's device copy: the same keys
    resident = ResidentSplit(store, "test", torch.device("cpu")).gather(slice(None))
    assert torch.equal(resident["context"], batch["context"])
    assert torch.equal(resident["numeric"], batch["numeric"])

    run = tmp_path / "run"
    assert main(["train", "--data", str(store.root), "--model", "din", "--out", str(run),
                 "--epochs", "3", "--threads", "1", "--no-progress"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["test_auc"]["mean"] > 0.6  # only the side features tell the label


def test_the_library_reads_labelled_rows_with_keyword_arguments(tmp_path: Path) -> None:
    """``table.read`` takes the flags' destinations as keywords; options of labelled rows
    without labels are refused the same way by every source that reads them."""
    from camn.data.raw import DataError
    from camn.data.sources import amazon, movielens, table

    log = write(tmp_path / "log.csv", HAND_LOG)
    raw = table.read(interactions=log, label_col="click", history_where="label = 1",
                     valid_from="30", test_from="35")
    assert raw.interactions["label"].to_list() == [1, 0, 1, 0, 0, 1, 1, 0, 0]
    assert raw.interactions["history"].to_list() == [True, False, True, False, False, True,
                                                     True, False, False]
    assert raw.origin["labels"] == {"split": "time", "negatives": 0, "time_unit": "s",
                                    "valid_from": "30", "test_from": "35", "label_col": "click",
                                    "history_where": "label = 1"}
    with pytest.raises(DataError, match="for labelled impressions: pass --label-col COL"):
        table.read(interactions=log, negatives=2)
    with pytest.raises(DataError, match=r"^--negatives, --split: for labelled impressions; "
                                        r"pass --rating-labels T$"):
        movielens.read(path=tmp_path, negatives=2, split="user")
    with pytest.raises(DataError, match=r"^--valid-from: for labelled impressions"):
        amazon.read(reviews=log, meta=log, valid_from="0.5")


def test_comparable_times_order_as_the_times_without_sorting_integer_ones() -> None:
    from camn.data.impressions import comparable_times

    seconds = np.array([1_700_000_300, 1_700_000_000, 1_700_000_300, 1_700_000_007])
    assert comparable_times(seconds, num_users=3).tolist() == [300, 0, 300, 7]
    assert comparable_times(seconds.astype(np.int32), 3).dtype == np.int64
    fractional = np.array([2.5, -1.0, 2.5, 0.25])
    assert comparable_times(fractional, 3).tolist() == [2, 0, 2, 1]
    # a span that would overflow user * span + time: dense ranks instead
    wide = np.array([0, 2**40, 5, 2**40])
    assert comparable_times(wide, num_users=2**23).tolist() == [0, 2, 1, 2]
    assert comparable_times(wide, num_users=2).tolist() == [0, 2**40, 5, 2**40]
    assert comparable_times(np.array([], dtype=np.int64), 3).tolist() == []


def test_a_store_with_an_empty_split_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    log = write(tmp_path / "log.csv", "user,item,time,click\nu1,a,5,1\nu1,b,5,0\nu2,a,5,1\n"
                "u2,c,5,0\n")  # one time: every impression falls in the test period
    store = prepare(tmp_path, "--interactions", str(log), "--label-col", "click")
    assert store.schema["splits"] == {"train": 0, "valid": 0, "test": 4}
    capsys.readouterr()
    assert main(["train", "--data", str(store.root), "--model", "din", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    assert "the train split has no impressions: camn train will refuse this store" in (
        capsys.readouterr().err)
