"""``camn score``: click probabilities for a file of candidates, streamed in chunks.

Each row of ``--candidates`` names a candidate item (``--candidate-col``) and whose history to
score it against: a history column (``--history-col``: a list, a JSON array as text, or item
ids joined by ``--separator``, oldest first), or else a user (``--user-col``), whose history is
taken from ``--history`` (an interaction log with user, item and time columns, as ``camn
prepare table`` reads one: each user's items in time order) or, without it, from the store the
run was trained on (the user's latest history: see :mod:`camn.encoding`). A run trained with
side features also reads each row's context and numeric features from the columns named as the
log's columns were at prepare time, and the user features of the row's user (``--user-col``,
needed then beside a history column too) from the store; a context value or a user the store
does not know is scored as unknown and counted, a numeric value that is not a number makes the
row bad.

The output is the input rows plus ``score`` (the click probability) and, for models with
routing scores, ``top_attribute``: the attribute with the largest routing score P summed over
the row's history items (empty for an empty history). It is written chunk by chunk to a file
beside ``--out`` and moved there at the end, so memory stays bounded by the chunk size whatever
the file's size and a failed run leaves no partial output; a candidates file without rows gives
an output of the columns alone (a CSV or TSV header, an empty Parquet table). ``--force``
replaces an existing ``--out`` only when it is a scores file (one with a ``score`` column), and
``--out`` is never an input, a file of the run or of its store
(:func:`camn.outputs.check_output_file`). Bad rows (no candidate, a history
that does not parse, and the reader's own: see :mod:`camn.data.chunks`) are counted, reported
with their line as ``camn prepare`` does, and left out; ids the store does not know are scored
as unknown and counted.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import secrets
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl
from tqdm import tqdm

from camn.argtypes import positive_int
from camn.cli import add_run_arguments
from camn.data.chunks import CHUNK_ROWS, LINE, read_chunks
from camn.data.raw import BadInputReport, DataError
from camn.data.reading import column_list, skip_rows
from camn.data.sources._files import file_format, read_table
from camn.data.sources.table import read_interactions
from camn.encoded_rows import NO_USER, Encoded, UnknownIds, as_ids
from camn.outputs import check_output_file, writing
from camn.predict import Predictor, load, model_inputs

HISTORY = "__history"  # the history column made from --history


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--candidates", required=True, type=Path,
                        help="CSV, TSV, Parquet or JSON lines file of candidates (one a row)")
    parser.add_argument("--history", type=Path,
                        help="interaction log (user, item, time columns) giving the histories of "
                        "the candidates' users (default: their latest history in the store)")
    parser.add_argument("--items", type=Path,
                        help="item table (the store's attribute columns) for items the store "
                        "does not know or whose attributes changed")
    parser.add_argument("--out", required=True, type=Path,
                        help="output file: .csv, .tsv, .parquet or .jsonl (a .gz after a text "
                        "format compresses it)")
    parser.add_argument("--candidate-col", default="candidate", help="candidate item column")
    parser.add_argument("--history-col", default="history",
                        help="history column of the candidates file: a list, a JSON array or "
                        "--separator-joined item ids, oldest first")
    parser.add_argument("--user-col", default="user",
                        help="user column (candidates file and --history), used when there is "
                        "no history column")
    parser.add_argument("--item-col", default="item", help="item column of --history")
    parser.add_argument("--time-col", default="time", help="time column of --history")
    parser.add_argument("--separator", default=None,
                        help="separator of the item ids in a text history (default: white space)")
    parser.add_argument("--format", choices=("csv", "tsv", "parquet", "jsonl"),
                        help="format of --candidates (default: from the extension)")
    parser.add_argument("--chunk-rows", type=positive_int, default=CHUNK_ROWS,
                        help="rows read, scored and written at a time")
    parser.add_argument("--batch-size", type=positive_int,
                        help="rows a model call (default: the run's eval batch size)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's own)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad row")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")


def run(args: argparse.Namespace) -> int:
    inputs = [args.candidates, args.history, args.items,
              *model_inputs(args.run, args.seed, args.data)]
    out_format = check_out_file(args.out, inputs, args.force)
    in_format = file_format(args.candidates, args.format)
    if not args.candidates.is_file():
        raise DataError(f"{args.candidates}: no such file")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    predictor = load(args.run, args.seed, store=args.data, device=args.device,
                     batch_size=args.batch_size)
    report = BadInputReport(strict=args.strict)
    if args.items is not None:
        predictor.add_items(read_table(args.items, file_format(args.items, None), report)
                            .drop(LINE))
    histories = None if args.history is None else user_histories(args, predictor, report)
    scorer = ChunkScorer(predictor, args, histories, report)
    with writing(args.out), ChunkWriter(args.out, out_format) as writer, tqdm(
        desc="scoring", unit=" rows", disable=True if args.no_progress else None
    ) as bar:
        for chunk in read_chunks(args.candidates, in_format, report, rows=args.chunk_rows):
            writer.write(scorer.score(chunk))
            bar.update(len(chunk))
        if not writer.frames and in_format != "jsonl":  # no row: the columns alone
            writer.write(scorer.score(empty_candidates(args.candidates, in_format)))
    print(f"{scorer.scored:,} row(s) of {args.candidates} scored by {predictor.name} "
          f"(seed {predictor.seed}) -> {args.out}")
    if scorer.unknown.total:
        print(scorer.unknown.summary())
    print(report.summary())
    return 0


def check_out_file(out: Path, inputs: list[Path | None], force: bool) -> str:
    """The output's format (from its extension), once :func:`check_output_file` allows
    ``out``: never an input, and an existing file only with ``force`` when it is a scores
    file (:func:`is_scores_file`)."""
    try:
        fmt = file_format(out, None)
    except DataError:
        raise DataError(f"--out {out}: name a .csv, .tsv, .parquet or .jsonl file") from None
    if out.suffix.lower() == ".gz" and fmt == "parquet":
        raise DataError(f"--out {out}: Parquet is compressed already; drop the .gz")
    check_output_file(out, "a scores file written by camn (no 'score' column)",
                      lambda path: is_scores_file(path, fmt), force=force,
                      inputs=[path for path in inputs if path is not None])
    return fmt


def is_scores_file(path: Path, fmt: str) -> bool:
    """Whether ``path`` reads as a ``camn score`` output of format ``fmt``: its columns (the
    header of a CSV or TSV, the first object of JSON lines, a Parquet schema) hold ``score``."""
    try:
        if fmt == "parquet":
            return "score" in pl.read_parquet_schema(path)
        with path.open("rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            with (gzip.GzipFile(fileobj=raw) if gz else raw) as stream:
                first = stream.readline(1 << 20).decode("utf-8").rstrip("\r\n")
        if fmt == "jsonl":
            row = json.loads(first)
            return isinstance(row, dict) and "score" in row
        names = first.split("," if fmt == "csv" else "\t")
        return "score" in [name.strip('"') for name in names]
    except (OSError, ValueError, EOFError, pl.exceptions.PolarsError):
        return False


def empty_candidates(path: Path, fmt: str) -> pl.DataFrame:
    """The columns of a CSV, TSV or Parquet candidates file without rows (a header only), as
    a frame of no rows."""
    if fmt == "parquet":
        return pl.DataFrame(schema=pl.read_parquet_schema(path)).with_columns(
            pl.lit(None, pl.Int64).alias(LINE))
    with path.open("rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        with (gzip.GzipFile(fileobj=raw) if gz else raw) as stream:
            header = stream.readline(1 << 20)
    names = pl.read_csv(io.BytesIO(header), separator="," if fmt == "csv" else "\t", n_rows=0,
                        has_header=True).columns
    return pl.DataFrame(schema={**{name: pl.String for name in names}, LINE: pl.Int64})


def user_histories(args: argparse.Namespace, predictor: Predictor,
                   report: BadInputReport) -> pl.DataFrame:
    """``--history`` read as ``prepare table`` reads interactions: (user, history) with each
    user's last ``max_len`` items in time order (ties keep the file's order)."""
    frame = read_interactions(args.history, user_col=args.user_col, item_col=args.item_col,
                              time_col=args.time_col, report=report)
    frame = frame.with_columns(pl.col("user", "item").cast(pl.String))  # ids as the store's text
    return (frame.sort("user", "time", maintain_order=True)
            .group_by("user", maintain_order=True)
            .agg(pl.col("item").tail(predictor.max_len).alias(HISTORY)))


class ChunkScorer:
    """Scores one chunk of the candidates file at a time; counts what it did."""

    def __init__(self, predictor: Predictor, args: argparse.Namespace,
                 histories: pl.DataFrame | None, report: BadInputReport) -> None:
        self.predictor, self.args, self.histories, self.report = predictor, args, histories, report
        self.routing = predictor.has_routing
        self.unknown = UnknownIds()
        self.scored = 0
        self.mode: str | None = None  # "history" or "user", set by the first chunk's columns

    def columns(self, chunk: pl.DataFrame) -> str:
        """The mode the file's columns ask for; a DataError for missing or clashing columns."""
        args, columns = self.args, [c for c in chunk.columns if c != LINE]
        names = f"its columns: {column_list(columns)}"
        if args.candidate_col not in columns:
            raise DataError(f"{args.candidates}: no column {args.candidate_col!r} (the "
                            f"candidates; --candidate-col); {names}")
        taken = [c for c in ("score", "top_attribute") if c in columns]
        if taken:
            raise DataError(f"{args.candidates}: the output's column {taken[0]!r} is a column "
                            "of the input already; rename it first")
        if args.history_col in columns:
            if self.histories is not None:
                raise DataError(f"{args.candidates} has a history column ({args.history_col!r}) "
                                "and --history names another source of histories: drop one")
            mode = "history"
        elif args.user_col in columns:
            mode = "user"
        else:
            raise DataError(f"{args.candidates}: needs a history column ({args.history_col!r}, "
                            f"--history-col) or a user column ({args.user_col!r}, --user-col); "
                            f"{names}")
        ids = self.predictor.ids
        missing = [name for name in ids.feature_columns if name not in columns]
        if ids.user_features and args.user_col not in columns:
            missing.append(args.user_col)
        if missing:
            raise DataError(f"{args.candidates}: no column {', '.join(map(repr, missing))}; the "
                            f"run reads {ids.describe_features()}; {names}")
        return mode

    def score(self, chunk: pl.DataFrame) -> pl.DataFrame:
        """The chunk's good rows with ``score`` (and ``top_attribute``), without ``__line``."""
        self.mode = self.mode or self.columns(chunk)
        args, unknown = self.args, UnknownIds()
        candidates = chunk[args.candidate_col]
        if self.mode == "history":
            rows, reasons = self.predictor.ids.encode(
                candidates, histories=chunk[args.history_col], separator=args.separator,
                unknown=unknown)
        elif self.histories is not None:
            rows, reasons = self.from_log(chunk, unknown)
        else:
            rows, reasons = self.predictor.ids.encode(candidates, users=chunk[args.user_col],
                                                      unknown=unknown)
        if self.predictor.ids.has_side_features:
            users = chunk[args.user_col] if args.user_col in chunk.columns else None
            rows.side, reasons = self.predictor.ids.side_features(chunk, users, reasons,
                                                                  unknown=unknown)
        self.unknown.merge(unknown)
        good = reasons.is_null().to_numpy()
        kept = skip_rows(chunk, reasons, args.candidates, self.report).drop(LINE)
        rows = rows.take(good)
        probabilities, routing = self.predictor.run(rows, routing=self.routing)
        self.scored += len(kept)
        kept = kept.with_columns(pl.Series("score", probabilities))
        if routing is None:
            return kept
        return kept.with_columns(top_attribute(routing, rows.lengths, self.predictor.attributes))

    def from_log(self, chunk: pl.DataFrame, unknown: UnknownIds) -> tuple[Encoded, pl.Series]:
        """Rows whose users' histories come from ``--history``; users absent from it get an
        empty history (counted as unknown users)."""
        users = as_ids(chunk[self.args.user_col]).alias("user")
        joined = pl.DataFrame({"user": users}).join(self.histories, on="user", how="left",
                                                    maintain_order="left")
        absent = joined[HISTORY].is_null() & users.is_not_null()
        unknown.count("users", users.filter(absent))
        rows, reasons = self.predictor.ids.encode(chunk[self.args.candidate_col],
                                                  histories=joined[HISTORY], unknown=unknown)
        no_user = pl.select(pl.when(users.is_null()).then(pl.lit(NO_USER)))
        return rows, pl.select(pl.coalesce(reasons, no_user.to_series())).to_series()


def top_attribute(routing: np.ndarray, lengths: np.ndarray, attributes: list[str]) -> pl.Series:
    """Per row the attribute with the largest routing score summed over its history items
    (null for an empty history); routing (n, L, k) is zero at padding."""
    top = routing.sum(axis=1).argmax(axis=1) if len(routing) else np.zeros(0, np.int64)
    names = pl.Series("top_attribute", attributes, dtype=pl.String).gather(top)
    return pl.select(pl.when(pl.Series(lengths > 0)).then(names)).to_series().alias(
        "top_attribute")


class ChunkWriter:
    """Writes chunks to ``out`` in ``fmt`` through a temporary sibling file, moved over
    ``out`` only when every chunk is written (on :meth:`__exit__` without an error).

    CSV and TSV get the header once; list columns are written there as their ids joined by
    spaces. Parquet is written as one part file a chunk, merged by polars' streaming engine
    at the end (bounded memory)."""

    def __init__(self, out: Path, fmt: str) -> None:
        self.out, self.fmt = out, fmt
        self.tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
        self.parts: list[Path] = []
        self.stack = ExitStack()
        self.stream: IO[bytes] | None = None
        self.header = True  # a CSV or TSV header is still to write
        self.written = 0  # rows
        self.frames = 0

    def __enter__(self) -> ChunkWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt == "parquet":
            self.tmp.mkdir()
        else:
            raw = self.stack.enter_context(self.tmp.open("wb"))
            gz = self.out.suffix.lower() == ".gz"
            self.stream = self.stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb")) \
                if gz else raw
        return self

    def write(self, frame: pl.DataFrame) -> None:
        if self.fmt == "parquet":
            part = self.tmp / f"part-{len(self.parts):08d}.parquet"
            frame.write_parquet(part)
            self.parts.append(part)
        elif self.fmt == "jsonl":
            frame.write_ndjson(self.stream)
        else:
            flat = frame.with_columns(
                pl.col(name).cast(pl.List(pl.String)).list.join(" ")
                for name, dtype in frame.schema.items() if isinstance(dtype, pl.List | pl.Array)
            )
            flat.write_csv(self.stream, separator="," if self.fmt == "csv" else "\t",
                           include_header=self.header)
            self.header = False
        self.written += len(frame)
        self.frames += 1

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        self.stack.close()
        try:
            if kind is None:
                self.finish()
        finally:
            if self.tmp.is_dir():
                shutil.rmtree(self.tmp)
            elif self.tmp.exists():
                self.tmp.unlink()

    def finish(self) -> None:
        if self.fmt != "parquet":
            os.replace(self.tmp, self.out)
            return
        merged = self.tmp / "all.parquet"
        try:
            if self.parts:
                pl.scan_parquet(self.parts).sink_parquet(merged)
            else:
                pl.DataFrame().write_parquet(merged)
        except pl.exceptions.PolarsError as error:
            raise DataError(f"--out {self.out}: the chunks could not be joined into one Parquet "
                            f"file ({error}); score into .jsonl or .csv instead") from None
        os.replace(merged, self.out)
