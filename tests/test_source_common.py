"""The readers shared by the sources: bounded detection, long lines, delimited tables, messages."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from camn.data import reading
from camn.data.raw import BadInputReport, DataError
from camn.data.sources import amazon, movielens, recbole

BIG = 6 << 20  # a 6 MiB file of one line: six times what detection may read


class CountingReader:
    """A stream that counts the bytes handed out (a wrapper around open_binary's result)."""

    def __init__(self, stream, counter: list[int]) -> None:
        self.stream, self.counter = stream, counter

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.counter[0] += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()


@pytest.fixture
def bytes_read(monkeypatch) -> list[int]:
    counter = [0]
    opener = reading.open_binary
    monkeypatch.setattr(reading, "open_binary", lambda p: CountingReader(opener(p), counter))
    return counter


@pytest.mark.parametrize("gz", [False, True])
def test_layout_detection_reads_a_bounded_prefix_of_a_one_line_file(tmp_path, bytes_read, gz):
    data = b'{"reviewerID": "' + b"x" * BIG + b'"}'
    path = tmp_path / "reviews.json"
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    for detect in (amazon.check_reviews_layout, amazon.detect_meta_layout,
                   lambda p: recbole.read_columns(p, ["user_id"], False, BadInputReport()),
                   movielens.csv_rating_names):
        bytes_read[0] = 0
        with pytest.raises(DataError) as error:
            detect(path)
        assert str(error.value) == (
            f"{path}: no complete line in the first 1 MiB (expected text with one record a line)"
        )
        assert 0 < bytes_read[0] <= reading.DETECT_BYTES


def test_first_lines_keeps_the_lines_that_end_within_the_limit(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"\n  \nfirst\nsecond\n" + b"y" * 100 + b"\nlast\n")
    assert reading.first_lines(path, 2, max_bytes=40) == [(3, b"first"), (4, b"second")]
    assert reading.first_lines(path, 9, max_bytes=40) == [(3, b"first"), (4, b"second")]
    assert reading.first_lines(path, 9)[-1] == (6, b"last")  # short file: all of it
    path.write_bytes(b"no end")
    assert reading.first_lines(path, 1) == [(1, b"no end")]  # the end of the file ends it
    path.write_bytes(b" \n\t\n")
    with pytest.raises(DataError, match=r"f\.txt: empty file"):
        reading.first_lines(path, 1)


def test_a_line_longer_than_many_blocks_comes_whole(tmp_path):
    path = tmp_path / "f.txt"
    long = b"z" * 10_000
    path.write_bytes(b"a\n" + long + b"\nb\n" + long)
    blocks = list(reading.iter_blocks(path, block_bytes=16))
    lines = [(first + k, text) for first, block in blocks
             for k, text in enumerate(block.split(b"\n")[:-1])]
    assert lines == [(1, b"a"), (2, long), (3, b"b"), (4, long)]


def read_csv(tmp_path: Path, data: bytes, name: str = "t.csv", strict: bool = False,
             separator: str = ",", quote: str | None = '"'):
    path = tmp_path / name
    path.write_bytes(data)
    report = BadInputReport(strict=strict)
    frame = reading.read_delimited(path, separator, quote, report)
    return path, frame, report


def test_rows_with_more_fields_than_the_header_are_counted_with_their_line(tmp_path):
    data = (b"user,item,time\nu1,a,1\nu1,b,2,extra\nu1,c,3,\nu2,\"x\ny\",4\n"
            b"u2,d,5,,late\nu2,e,6\n")
    path, frame, report = read_csv(tmp_path, data)
    assert frame.rows() == [("u1", "a", "1", 2), ("u1", "c", "3", 4), ("u2", "x\ny", "4", 5),
                            ("u2", "e", "6", 8)]  # a trailing empty field carries nothing
    reason = "more fields than the header's 3 columns (row skipped)"
    assert report.counts == {reason: 2}
    assert report.examples == [f"{path}:3: {reason}", f"{path}:7: {reason}"]
    for word in ("truncate_ragged_lines", "polars", "Schema", "Consider"):
        assert all(word not in example for example in report.examples)
    with pytest.raises(DataError) as error:
        read_csv(tmp_path, data, strict=True)
    assert str(error.value) == f"{path}:3: more fields than the header's 3 columns"


def test_bytes_that_are_not_utf8_skip_their_row_with_its_line(tmp_path):
    replacement_character = "\ufffd".encode()  # valid UTF-8: kept
    data = (b"user\titem\ttime\nu1\ta\t1\nJos\xe9\tb\t2\nu2\t" + replacement_character
            + b"\t3\nu2\tc\t4\n")  # line 3 is Latin-1
    path, frame, report = read_csv(tmp_path, data, "t.tsv", separator="\t", quote=None)
    assert frame.rows() == [("u1", "a", "1", 2), ("u2", "\ufffd", "3", 4), ("u2", "c", "4", 5)]
    assert report.counts == {"bytes that are not UTF-8 text (row skipped)": 1}
    assert report.examples == [f"{path}:3: bytes that are not UTF-8 text (row skipped)"]


def test_blank_lines_and_quoted_line_breaks_keep_the_line_numbers(tmp_path):
    data = b'user,item,time\n\nu1,"multi\n\nline",1\n,,\nu1,b,\xff\n'
    path, frame, report = read_csv(tmp_path, data)
    assert frame.rows() == [("u1", "multi\n\nline", "1", 3)]
    assert report.examples == [f"{path}:7: bytes that are not UTF-8 text (row skipped)"]


def test_a_stray_quote_names_its_line_without_polars_advice(tmp_path):
    data = b'user,item,time\nu1,a,1\nu1,"b"c,2\nu1,d,3\n'
    with pytest.raises(DataError) as error:
        read_csv(tmp_path, data)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 't.csv'}:3: a quoted field does not end at a")
    assert "stray or unclosed quote" in message and "infer_schema" not in message


def test_a_repeated_header_name_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"t\.csv:2: the header names the column 'user' twice"):
        read_csv(tmp_path, b"\nuser,user,time\nu1,a,1\n")


def test_gzip_reads_as_the_plain_file(tmp_path):
    data = b"user,item,time\nu1,a,1\nu1,b,2,x\n"
    _, plain, plain_report = read_csv(tmp_path, data)
    path, packed, packed_report = read_csv(tmp_path, gzip.compress(data), "t.csv.gz")
    assert packed.equals(plain) and packed_report.counts == plain_report.counts
    path.write_bytes(gzip.compress(data)[:-12])
    with pytest.raises(DataError, match=r"t\.csv\.gz: cannot read the file"):
        reading.read_delimited(path, ",", '"', BadInputReport())


def test_column_lists_in_messages_are_cut_short():
    shown = reading.column_list([f"c{i}" for i in range(25)] + ["w" * 500])
    assert shown.endswith("c19 and 6 more") and "www" not in shown
    assert reading.column_list(["a", "x" * 50]) == "a, " + "x" * 37 + "..."


def test_strict_errors_say_what_is_wrong_not_what_would_have_been_done():
    report = BadInputReport(strict=True)
    with pytest.raises(DataError) as error:
        report.bad("f.json", 3, "broken JSON review (line skipped)")
    assert str(error.value) == "f.json:3: broken JSON review"
    with pytest.raises(DataError) as error:
        report.bad("items", None, "item has no metadata (attributes set to unknown)")
    assert str(error.value) == "items: item has no metadata"
    lenient = BadInputReport()
    lenient.bad("f.json", 3, "broken JSON review (line skipped)")
    assert lenient.examples == ["f.json:3: broken JSON review (line skipped)"]
