"""A store in shards: a log too large for one machine, prepared as N independent jobs.

1. ``camn prepare SOURCE ... --vocab-only --out BIG``: the vocabulary pass reads the whole log
   once and writes what every shard shares: the users (``users.txt``, sorted), the attribute
   vocabularies, the item table and ``shards.json``.
2. ``camn prepare SOURCE ... --vocab BIG --shard I/N --out BIG/shard-I`` (I = 0..N-1, any
   order, on any machines): the store of shard I's users, user indices and item ids those of
   the vocabulary pass. Shard I holds the users of indices ``[I U / N, (I + 1) U / N)``
   (integer division; U users, numbered in sorted order of their id strings), so the rows
   of BIG come in the order of the unsharded store's. Each user's split and negatives are
   drawn from that user alone (:mod:`camn.data.negatives`), so the N shards hold exactly the
   samples of ``camn prepare ... --negatives-by user`` on the whole log. Each shard is a
   store of its own; its vocabularies, users and item table are hard links to BIG's (copies
   where the file system has none).

Layout of BIG::

    shards.json                   the vocabulary pass: sizes, attributes, origin, its token
    users.txt, vocab/<attribute>.txt, arrays/item_attributes.npy   as in a store
    shard-0/ ... shard-<N-1>/     one store each (``schema.json`` names its shard: index, count)

:class:`ShardedStore` opens BIG as one store (:func:`open_store` opens either kind). Rows are
numbered split by split, and within a split shard by shard: train of shard 0, ..., train of
shard N-1, valid of shard 0, ..., so every split is one range of rows. Under torchrun with W
processes and N >= W shards, rank r trains on the rows of shards r, r + W, ... only (each
process reads its share), shuffled, wrapped to the largest share's count so that every rank
takes as many steps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from camn.data.impressions import is_labelled
from camn.data.negatives import user_keys
from camn.data.prepare import encode_interactions, encode_items, split_warnings
from camn.data.protocols import FIRST_ITEM_ID, SPLITS, Protocol, build_samples
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.store import PreparedStore, epoch_order, write_users, write_vocabularies
from camn.data.store_checks import SCHEMA_VERSION, USERS, raise_problems
from camn.outputs import STORE, check_output, replacing

MANIFEST = "shards.json"
ITEM_TABLE = "arrays/item_attributes.npy"
SHARD_FOLDER = re.compile(r"shard-\d+")


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (shard I of N, I = 0..N-1) as (I, N); an argparse type."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (shard I of N, e.g. 0/4)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise argparse.ArgumentTypeError(
            f"{text!r}: shard I of N needs N >= 1 and I in 0..N-1 (shards are numbered from 0)")
    return index, count


def shard_users(num_users: int, index: int, count: int) -> tuple[int, int]:
    """[first, stop) user indices of shard ``index`` of ``count``."""
    return index * num_users // count, (index + 1) * num_users // count


def refuse_labelled(raw: RawData, flag: str) -> None:
    """Shards hold logs of clicks: a DataError for a log of labelled impressions."""
    if is_labelled(raw):
        raise DataError(f"{flag} is for logs of clicks; a log of labelled impressions is "
                        f"prepared whole (not in shards) for now: leave out {flag}")


# ------------------------------------------------------------------------ the vocabulary pass


def prepare_vocabularies(
    raw: RawData, out: str | Path, report: BadInputReport, force: bool = False
) -> dict:
    """Write BIG's shared part (module docstring) from the whole log; return ``shards.json``."""
    refuse_labelled(raw, "--vocab-only")
    out = Path(out)
    check_vocabulary_output(out, force)
    encoded = encode_interactions(raw, report)
    if len(encoded.user) == 0:
        raise DataError("no user has 2 or more interactions: nothing to prepare")
    if encoded.dropped_users:
        raw.notes.append(f"{encoded.dropped_users:,} user(s) with under 2 interactions dropped")
    item_attributes, vocabularies = encode_items(raw, encoded.items, report)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "token": secrets.token_hex(8),  # each shard records it: all from this pass
        "num_users": encoded.num_users,
        "num_items": len(encoded.items),
        "num_interactions": len(encoded.user),
        "attributes": raw.attributes,
        "vocab_sizes": [len(vocabularies[a]) + FIRST_ITEM_ID for a in raw.attributes],
        "origin": raw.origin,
        "dropped_users_under_2_interactions": encoded.dropped_users,
        "bad_input": dict(sorted(report.counts.items())),
        "notes": raw.notes,
    }
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(8)}")
    tmp.mkdir(parents=True)
    try:
        (tmp / "arrays").mkdir()
        np.save(tmp / ITEM_TABLE, item_attributes)
        write_vocabularies(tmp, vocabularies)
        write_users(tmp, encoded.users.to_list())
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def check_vocabulary_output(out: Path, force: bool) -> None:
    """BIG may be new, an empty folder, or (with ``force``) a sharded store camn wrote."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"--out {out} is a file or a link; choose a new folder")
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise DataError(f"--out {out} is a folder camn did not write (no {MANIFEST}); "
                            "choose a new folder")
        if not force:
            raise DataError(f"--out {out} already holds a sharded store; --force replaces it "
                            "(its shards included)")


def read_manifest(root: Path) -> dict:
    """``shards.json`` of the sharded store at ``root``."""
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{root} is no sharded store's vocabulary folder (no {MANIFEST}): "
                        "camn prepare ... --vocab-only --out " + str(root))
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise DataError(f"{path} is not valid JSON ({error})") from None


# ------------------------------------------------------------------------------- one shard


def prepare_shard(
    raw: RawData,
    out: str | Path,
    vocab: str | Path,
    index: int,
    count: int,
    protocol: Protocol = "last",
    max_len: int = 20,
    seed: int = 2022,
    report: BadInputReport | None = None,
    force: bool = False,
) -> dict:
    """Write the store of shard ``index`` of ``count`` (module docstring); return its schema.

    The log must be the one the vocabulary pass at ``vocab`` read (its rows of other users
    may be left out): a user or item it does not know is an error.
    """
    refuse_labelled(raw, "--shard")
    report = report or BadInputReport()
    vocab = Path(vocab)
    manifest = read_manifest(vocab)
    users = pl.Series(Path(vocab / USERS).read_text(encoding="utf-8").splitlines(),
                      dtype=pl.String)
    first, stop = shard_users(len(users), index, count)
    if first == stop:
        raise DataError(f"shard {index}/{count} has no users ({len(users):,} users in all): "
                        "choose fewer shards")
    bounds = pl.lit(users[first]), pl.lit(users[stop - 1])  # sorted: one range of strings
    raw.interactions = raw.interactions.filter(pl.col("user").cast(pl.String).is_between(*bounds))
    encoded = encode_interactions(raw, report)
    if not encoded.users.equals(users.slice(first, stop - first)):
        raise DataError(f"{vocab}: the log's users of shard {index}/{count} are not those of "
                        "the vocabulary pass: prepare every shard from the log it read")
    items = pl.Series(vocab_lines(vocab, manifest["attributes"][0])[FIRST_ITEM_ID:],
                      dtype=pl.String)
    item_ids = global_ids(encoded.items, items, vocab)
    arrays, splits = build_samples(
        encoded.user, item_ids[encoded.item - FIRST_ITEM_ID], encoded.time, len(items),
        protocol=protocol, seed=seed, annotations=encoded.annotations,
        user_names=encoded.users, user_keys=user_keys(encoded.users),
    )
    for name in ("timeline_users", "pair_users"):
        arrays[name] = arrays[name] + np.int32(first)
    schema = {
        "num_users": manifest["num_users"],
        "num_items": manifest["num_items"],
        "num_interactions": len(encoded.user),
        "attributes": manifest["attributes"],
        "vocab_sizes": manifest["vocab_sizes"],
        "protocol": protocol,
        "seed": seed,
        "negatives_by": "user",
        "max_len": max_len,
        "splits": splits,
        "timelines": {"users": encoded.num_users, "clicks": len(encoded.user),
                      "time_dtype": str(arrays["click_times"].dtype)},
        "origin": raw.origin,
        "shard": {"index": index, "count": count, "users": [first, stop],
                  "vocabulary_pass": manifest["token"]},
        "bad_input": dict(sorted(report.counts.items())),
        "notes": raw.notes,
    }
    write_shard(out, vocab, schema, arrays, force)
    return schema


def shard_user_ids(vocab: Path, index: int, count: int) -> tuple[str, str]:
    """The first and last user id of a shard: a source may read only the rows between them
    (the table source does, of a Parquet log, while scanning)."""
    read_manifest(vocab)
    users = (vocab / USERS).read_text(encoding="utf-8").splitlines()
    first, stop = shard_users(len(users), index, count)
    if first == stop:
        raise DataError(f"shard {index}/{count} has no users ({len(users):,} users in all): "
                        "choose fewer shards")
    return users[first], users[stop - 1]


def vocab_lines(root: Path, attribute: str) -> list[str]:
    return (root / "vocab" / f"{attribute}.txt").read_text(encoding="utf-8").splitlines()


def global_ids(local: pl.Series, items: pl.Series, vocab: Path) -> np.ndarray:
    """(len(local),) item id in the vocabulary pass of every item string of ``local``."""
    lookup = pl.DataFrame({"item": items, "id": np.arange(len(items)) + FIRST_ITEM_ID})
    ids = pl.DataFrame({"item": local}).join(lookup, on="item", how="left",
                                             maintain_order="left")["id"]
    if ids.null_count():
        unknown = local.filter(ids.is_null())[0]
        raise DataError(f"{vocab}: item {unknown!r} is not in the vocabulary pass's items: "
                        "prepare every shard from the log it read")
    return ids.to_numpy().astype(np.int32)


def write_shard(out: str | Path, vocab: Path, schema: dict, arrays: dict, force: bool) -> None:
    """A store whose vocabularies, users and item table are links to the vocabulary pass's."""
    out = check_output(out, STORE, force=force)
    with replacing(out, STORE) as tmp:
        (tmp / "arrays").mkdir()
        (tmp / "vocab").mkdir()
        for name, array in arrays.items():
            np.save(tmp / "arrays" / f"{name}.npy", np.ascontiguousarray(array))
        shared = [USERS, ITEM_TABLE, *(f"vocab/{a}.txt" for a in schema["attributes"])]
        for name in shared:
            link_or_copy(vocab / name, tmp / name)
        schema = {"schema_version": SCHEMA_VERSION, **schema}
        (tmp / "schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)


def run_sharded_prepare(
    args: argparse.Namespace, inputs: list[str], read_source: Callable[..., RawData]
) -> int:
    """``camn prepare`` with ``--vocab-only`` or ``--shard`` (its options checked by the CLI);
    ``read_source(report, **extra)`` reads the source named on the command line (``extra``:
    ``users_between``, for a source that can keep a shard's rows as it reads)."""
    from camn.data.store import table1_line
    from camn.outputs import writing

    if args.vocab_only:  # before the (long) read
        check_vocabulary_output(Path(args.out), args.force)
    else:
        check_output(args.out, STORE, force=args.force, inputs=inputs)
        users_between = shard_user_ids(Path(args.vocab), *args.shard)
    report = BadInputReport(strict=args.strict)
    raw = read_source(report) if args.vocab_only else read_source(
        report, users_between=users_between)
    with writing(args.out):
        if args.vocab_only:
            manifest = prepare_vocabularies(raw, args.out, report, force=args.force)
            print(f"users {manifest['num_users']:,} | items {manifest['num_items']:,} | "
                  f"attributes {len(manifest['attributes'])} | interactions "
                  f"{manifest['num_interactions']:,}")
        else:
            index, count = args.shard
            schema = prepare_shard(raw, args.out, args.vocab, index, count,
                                   protocol=args.protocol or "last", max_len=args.max_len,
                                   seed=args.seed, report=report, force=args.force)
            print(table1_line(schema).replace("users", f"shard {index}/{count}: users", 1))
            for warning in split_warnings(schema["splits"], schema["timelines"]["users"]):
                print(f"camn: note: {args.out}: {warning} (in this shard)")
    for note in raw.notes:
        print(note)
    print(report.summary())
    what = "vocabularies" if args.vocab_only else f"shard {args.shard[0]}/{args.shard[1]}"
    print(f"{what} written to {args.out}")
    return 0


# ------------------------------------------------------------------------------ reading BIG


def open_store(root: str | Path, *, validate: bool = True) -> PreparedStore:
    """The store at ``root``: a :class:`ShardedStore` where it holds ``shards.json``, else a
    :class:`~camn.data.store.PreparedStore`."""
    if (Path(root) / MANIFEST).is_file():
        return ShardedStore(root, validate=validate)
    return PreparedStore(root, validate=validate)


class ShardedStore(PreparedStore):
    """BIG (module docstring) read as one store: the interface of
    :class:`~camn.data.store.PreparedStore` (schema, splits as row ranges, ``gather``,
    ``batches``, the checks), each call handed to the shards that hold the rows.

    It always streams (``streams_only``): its batches are gathered from the shards' memory
    maps, never copied whole onto the training device.
    """

    streams_only = True

    def __init__(self, root: str | Path, *, validate: bool = True) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.shards = [PreparedStore(path, validate=validate) for path in shard_folders(
            self.root, self.manifest)]
        self.schema = merged_schema(self.manifest, [s.schema for s in self.shards])
        self._arrays, self._scan, self._table, self._wide_table = {}, None, None, None
        self.labelled = False  # shards hold logs of clicks (pairs) only
        counts = np.array([[s.schema["splits"][split] for split in SPLITS]
                           for s in self.shards])  # (N, 3) samples
        self._segment_starts = np.cumsum([0, *counts.T.ravel()])[:-1]  # split-major
        self._segment_shard = np.tile(np.arange(len(self.shards)), len(SPLITS))
        self._segment_local = (np.cumsum(counts, axis=1) - counts).T.ravel()
        self._counts = counts
        if validate:
            raise_problems(self.root, "is a damaged store", self.layout_problems())

    def layout_problems(self) -> list[str]:
        problems = [f"{name} is missing" for name in (USERS, ITEM_TABLE) if not
                    (self.root / name).is_file()]
        problems += [f"vocab/{a}.txt is missing" for a in self.attributes
                     if not self.vocab_path(a).is_file()]
        for shard in self.shards:
            problems += [f"{shard.root.name}/{p}" for p in shard.layout_problems()]
        return problems

    def _content_scan(self) -> list[str]:
        if self._scan is None:
            self._scan = [f"{shard.root.name}/{p}" for shard in self.shards
                          for p in shard.content_problems()]
        return self._scan

    @property
    def has_drivers(self) -> bool:
        return self.shards[0].has_drivers

    def array(self, name: str) -> np.ndarray:
        """The item table (the shards' other arrays are read through them)."""
        if name != "item_attributes":
            raise DataError(f"{self.root} is a sharded store: arrays/{name}.npy lies in its "
                            "shards, read it through gather or batches")
        return super().array(name)

    def size_bytes(self) -> int:
        """Bytes of every file, a file linked into the shards counted once."""
        seen = {(s.st_dev, s.st_ino): s.st_size for path in self.root.rglob("*")
                if path.is_file() and (s := path.stat())}
        return sum(seen.values())

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row within that shard) of every row."""
        segment = np.searchsorted(self._segment_starts, rows, side="right") - 1
        local = rows - self._segment_starts[segment] + self._segment_local[segment]
        return self._segment_shard[segment], local

    def _from_shards(self, rows: np.ndarray, read) -> list[np.ndarray]:
        """``read(shard, local rows)`` (a list of arrays) for the rows of every shard, put
        back in the order of ``rows``."""
        shard, local = self.locate(rows)
        out: list[np.ndarray] | None = None
        for number in np.unique(shard):
            where = np.flatnonzero(shard == number)
            parts = read(self.shards[number], local[where])
            if out is None:
                out = [np.empty((len(rows), *p.shape[1:]), dtype=p.dtype) for p in parts]
            for whole, part in zip(out, parts, strict=True):
                whole[where] = part
        return out if out is not None else read(self.shards[0], local)

    def gather(self, name: str, rows: np.ndarray | slice, width: int | None = None) -> np.ndarray:
        rows = self.row_numbers(rows)
        if name == "splits":
            return super().gather(name, rows)
        return self._from_shards(rows, lambda shard, local: [shard.gather(name, local, width)])[0]

    def batch_fields(self, rows: np.ndarray, width: int | None = None) -> list[np.ndarray]:
        width = width or self.max_len  # one width for every shard's part
        return self._from_shards(rows, lambda shard, local: shard.batch_fields(local, width))

    def references(self, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        raise DataError(f"{self.root} is a sharded store: its references lie in its shards")

    def shares(self, split: str, world_size: int) -> list[np.ndarray] | None:
        """Every rank's rows of ``split`` (the rows of shards r, r + W, ...), or None where
        some rank would have none (fewer shards than ranks, or empty shards)."""
        if world_size < 2 or len(self.shards) < world_size:
            return None
        code = SPLITS.index(split)
        starts = self._segment_starts[code * len(self.shards):]
        ranges = [np.arange(starts[i], starts[i] + self._counts[i, code])
                  for i in range(len(self.shards))]
        shares = [np.concatenate(ranges[rank::world_size]) for rank in range(world_size)]
        return shares if all(len(share) for share in shares) else None

    def num_batches(self, split: str, batch_size: int, world_size: int = 1) -> int:
        shares = self.shares(split, world_size)
        if shares is None:
            return super().num_batches(split, batch_size, world_size)
        return -(-max(map(len, shares)) // batch_size)

    def epoch_rows(self, split: str, shuffle: bool, rng: np.random.Generator, rank: int = 0,
                   world_size: int = 1) -> np.ndarray:
        shares = self.shares(split, world_size)
        if shares is None:
            return super().epoch_rows(split, shuffle, rng, rank, world_size)
        mine = shares[rank]
        positions = epoch_order(len(mine), shuffle, rng)
        return mine[np.resize(positions, max(map(len, shares)))]


def shard_folders(root: Path, manifest: dict) -> list[Path]:
    """The shard folders of BIG in shard order, checked to be one complete set prepared
    against this vocabulary pass with the same protocol, seed and length."""
    schemas = {}
    for path in sorted(p for p in root.iterdir() if p.is_dir() and SHARD_FOLDER.fullmatch(p.name)):
        try:
            schemas[path] = json.loads((path / "schema.json").read_text())
        except (OSError, ValueError):
            raise DataError(f"{path} is no prepared shard (its schema.json is missing or not "
                            "JSON): prepare it again with --shard") from None
    if not schemas:
        raise DataError(f"{root} holds no shards yet: camn prepare ... --vocab {root} "
                        f"--shard I/N --out {root}/shard-I, for I = 0..N-1")
    first = next(iter(schemas.values()))
    count = first.get("shard", {}).get("count")
    same = ("protocol", "seed", "max_len")
    by_index: dict[int, Path] = {}
    for path, schema in schemas.items():
        shard = schema.get("shard", {})
        if shard.get("vocabulary_pass") != manifest["token"]:
            raise DataError(f"{path} was prepared against another vocabulary pass than "
                            f"{root}'s: prepare it again with --vocab {root}")
        if shard.get("count") != count or any(schema.get(k) != first.get(k) for k in same):
            raise DataError(f"{path} differs from the other shards in its shard count, "
                            f"protocol, seed or max_len ({', '.join(same)} and N of I/N must "
                            "be the same for every shard)")
        by_index[shard["index"]] = path
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise DataError(f"{root} lacks shard(s) {', '.join(map(str, missing))} of {count}: "
                        f"camn prepare ... --vocab {root} --shard I/{count}")
    return [by_index[i] for i in range(count)]


def merged_schema(manifest: dict, schemas: list[dict]) -> dict:
    """One schema for BIG: the shards' settings, their sample and click counts summed."""
    first = schemas[0]
    times = np.result_type(*(np.dtype(s["timelines"]["time_dtype"]) for s in schemas))
    return {
        **first,
        **{key: manifest[key] for key in ("num_users", "num_items", "num_interactions",
                                          "origin", "notes", "bad_input",
                                          "dropped_users_under_2_interactions")},
        "splits": {split: sum(s["splits"][split] for s in schemas) for split in SPLITS},
        "timelines": {"users": sum(s["timelines"]["users"] for s in schemas),
                      "clicks": sum(s["timelines"]["clicks"] for s in schemas),
                      "time_dtype": str(times)},
        "shard": {"count": len(schemas), "vocabulary_pass": manifest["token"]},
    }
