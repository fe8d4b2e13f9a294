"""The prepared store: what ``camn prepare`` writes and every model reads.

Every user's clicks are stored once, as a timeline; a sample is a reference into it (whose
history ends where, which target, which label), and a batch's histories are gathered from the
timelines when it is made. Layout of a store directory (version 2)::

    schema.json                  sizes, attribute names, vocab sizes, protocol, seed, splits, origin
    arrays/item_attributes.npy   (num_items + 2, k) int32  attribute ids of every item id
    arrays/timeline_users.npy    (U,)     int32  user index of each stored timeline, ascending
    arrays/timeline_offsets.npy  (U + 1,) int64  timeline u is clicks[offsets[u]:offsets[u + 1]]
    arrays/clicks.npy            (E,)     int32  item ids, each user's clicks in time order
    arrays/click_times.npy       (E,)     int32, int64 or float64  the clicks' times
    arrays/click_driver*.npy     (E,)     int8   planted truth of each click (synthetic data only)
    arrays/pair_users.npy        (P,)     int32  user index of each click to predict
    arrays/pair_positions.npy    (P,)     int32  p: that click's index in the user's timeline
    arrays/pair_negatives.npy    (P,)     int32  item id of its sampled non-click
    vocab/<attribute>.txt        one value a line; line i is id i (0 <pad>, 1 <unk>)
    users.txt                    one user id a line; line i is user index i

Every click to predict gives two samples, rows 2i (label 1, the click) and 2i + 1 (label 0,
its negative), with one history: the user's clicks before it, clicks[e - n : e] with
e = offsets[u] + p and n = min(p, max_len) (the length), left-aligned and padded with item 0.
Pairs are sorted by (split, user, position), so a split's rows are one range, its bounds the
counts of ``splits`` in ``schema.json`` (train, valid, test). ``histories`` (N, L, k),
``lengths``, ``targets`` (N, k), ``labels``, ``users``, ``splits`` and the drivers are
:meth:`PreparedStore.gather`-ed from these, never stored. Arrays are ``.npy`` files, opened
memory-mapped, so a store larger than memory trains fine.

A store of labelled impressions (``"samples": "impressions"``) has the same timelines and one
sample a logged row instead of the pairs (:mod:`camn.data.impressions`); gathering and batches
are the same. A store of rows that carry their own history (``"history": "rows"``) keeps those
histories instead of timelines, and its samples point into them with the same (ends, lengths)
references (:mod:`camn.data.row_histories`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from camn.data import features, impressions, row_histories
from camn.data.protocols import FIRST_ITEM_ID, SPLITS
from camn.data.raw import DataError
from camn.data.store_checks import (
    ANNOTATIONS,
    DRIVER_ARRAYS,
    SCHEMA_VERSION,
    USERS,
    expected_arrays,
    npy_problems,
    raise_problems,
    read_schema,
    scan_contents,
)
from camn.outputs import STORE, check_output, replacing

PAD, UNK = "<pad>", "<unk>"


def write_store(
    out: str | Path,
    schema: dict,
    arrays: dict[str, np.ndarray],
    vocabularies: dict[str, list[str]],
    force: bool = False,
    users: Sequence[str] | None = None,
) -> Path:
    """Write a store atomically: into a temporary sibling directory, swapped in at the end.

    ``users``: the user id strings, user index i at position i (``users.txt``).

    A failed run leaves nothing behind. An existing ``out`` is replaced only with ``force`` and
    only when it is a store camn wrote (:func:`camn.outputs.check_output`).
    """
    out = check_output(out, STORE, force=force)
    with replacing(out, STORE) as tmp:
        (tmp / "arrays").mkdir()
        for name, array in arrays.items():
            np.save(tmp / "arrays" / f"{name}.npy", np.ascontiguousarray(array))
        write_vocabularies(tmp, vocabularies)
        if users is not None:
            write_users(tmp, users)
        schema = {"schema_version": SCHEMA_VERSION, **schema}
        (tmp / "schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    return out


def write_vocabularies(folder: Path, vocabularies: dict[str, list[str]]) -> None:
    """``vocab/<attribute>.txt``: one value a line, after ``<pad>`` and ``<unk>``."""
    (folder / "vocab").mkdir()
    for name, values in vocabularies.items():
        # one value a line, as PreparedStore.vocab reads it back with str.splitlines
        lines = (" ".join(v.splitlines()) for v in [PAD, UNK, *values])
        (folder / "vocab" / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_users(folder: Path, users: Sequence[str]) -> None:
    """``users.txt``: user index i on line i."""
    lines = (" ".join(u.splitlines()) for u in users)
    (folder / USERS).write_text("".join(f"{u}\n" for u in lines), encoding="utf-8")


def history_items(clicks, ends, lengths, slots):
    """(n, len(slots)) item ids of n histories, left-aligned, 0 at padding: row b holds
    ``clicks[ends[b] - lengths[b] : ends[b]]``. numpy arrays or torch tensors alike
    (``clicks`` may be a memory map: only the rows read are touched)."""
    valid = slots[None, :] < lengths[:, None]
    source = ((ends - lengths)[:, None] + slots[None, :]) * valid
    if isinstance(clicks, torch.Tensor):
        return torch.take(clicks, source) * valid
    return np.take(clicks, source) * valid


def item_rows(table, items):
    """``table[items]``: the (..., k) rows of a (V, k) table for an index array of any shape,
    numpy arrays or torch tensors alike (the faster take, not fancy indexing)."""
    if isinstance(table, torch.Tensor) and table.device.type != "cpu":
        return table.index_select(0, items.reshape(-1).long()).view(*items.shape, table.shape[1])
    if isinstance(table, torch.Tensor):  # numpy's take beats index_select on the host
        return torch.from_numpy(np.take(table.numpy(), items.numpy(), axis=0))
    return np.take(table, items, axis=0)


class PreparedStore:
    """Read side of a prepared store: its schema, memory-mapped arrays, and batches.

    A damaged store is named, not crashed on, in two steps of different cost:

    - **on open** (always, O(1) in the data size): ``schema.json`` parses and has the keys
      camn reads, every array's ``.npy`` header gives the dtype and shape the schema implies
      and the file holds as many bytes as the header promises (a truncated file), and every
      vocabulary file and ``users.txt`` is present. Only headers are read, never the data.
    - **the content scan** (:meth:`check_contents`, one chunked, vectorised pass over every
      array, about one training epoch of reading, done at most once per store object):
      ids inside their vocabularies slot by slot, users below num_users, timelines (offsets
      ascending from 0 to the click count, users ascending), every pair's user with a
      timeline and its position inside it, planted drivers, vocabulary line counts. ``camn
      stats``, the trainer (:meth:`check_trainable`, which adds: no split is empty) and
      ``camn evaluate``/``explain`` run it; its cost is below that of the work they then do.

    Either raises one :class:`DataError` naming the store, the file and what is wrong; with
    ``validate=False`` the open check is left to :meth:`problems` (``camn stats`` lists all).
    """

    streams_only = False  # True: train from batches(), never from a device copy of a split
    row_histories = False  # True: samples carry their own histories (camn.data.row_histories)

    def __init__(self, root: str | Path, *, validate: bool = True) -> None:
        self.root = Path(root)
        self.schema: dict = read_schema(self.root)
        self._arrays: dict[str, np.ndarray] = {}
        self._scan: list[str] | None = None
        self._table: np.ndarray | None = None
        self._wide_table: np.ndarray | None = None
        self.labelled = impressions.is_impressions(self.schema)
        self.row_histories = row_histories.is_row_store(self.schema)
        if validate:
            raise_problems(self.root, "is a damaged store", self.layout_problems())

    def layout_problems(self) -> list[str]:
        """What the open check finds: missing files, unreadable headers, wrong dtypes or
        shapes, truncated arrays (each problem starts with the file, relative to the store)."""
        problems = []
        for name, (shape, dtype) in expected_arrays(self.schema).items():
            path = self.root / "arrays" / f"{name}.npy"
            if path.is_file():
                problems += npy_problems(path, f"arrays/{name}.npy", shape, dtype)
            elif name not in DRIVER_ARRAYS or self.has_drivers:
                problems.append(f"arrays/{name}.npy is missing")
        problems += [
            f"vocab/{attribute}.txt is missing"
            for attribute in self.attributes
            if not self.vocab_path(attribute).is_file()
        ]
        if not (self.root / USERS).is_file():
            problems.append(f"{USERS} is missing (user index i is its line i)")
        return problems

    def content_problems(self) -> list[str]:
        """What the content scan finds (run once, then remembered); needs a sound layout."""
        return self._content_scan()

    def training_problems(self) -> list[str]:
        """Why the trainer would learn or score nothing: a split without samples, or with one
        label only (the train loss, the validation AUC of early stopping, the test AUC); a
        split's samples are pairs of a click and a non-click, so only an empty one (a split of
        impressions may also hold one label only)."""
        if self.labelled:
            return impressions.training_problems(self.schema)
        return [
            f"schema.json: the {split} split has no samples; training needs samples in train, "
            "valid and test (each of valid and test gets 10% of the users: prepare more users)"
            for split in SPLITS if self.schema["splits"][split] == 0
        ]

    def problems(self, training: bool = False) -> list[str]:
        """Every problem found: the open check's, then (on a sound layout) the content scan's,
        then with ``training`` (on sound contents) :meth:`training_problems`."""
        problems = self.layout_problems()
        if not problems:
            problems = self.content_problems()
        if not problems and training:
            problems = self.training_problems()
        return problems

    def check_contents(self) -> None:
        """Raise a DataError if the content scan finds a problem (see the class docstring)."""
        raise_problems(self.root, "is a damaged store", self.content_problems())

    def check_trainable(self) -> None:
        """:meth:`check_contents`, then a DataError if a split would train or score nothing."""
        self.check_contents()
        raise_problems(self.root, "cannot be trained on", self.training_problems())

    def _content_scan(self) -> list[str]:
        if self._scan is None:
            self._scan = scan_contents(self)
        return self._scan

    def vocab_path(self, attribute: str) -> Path:
        return self.root / "vocab" / f"{attribute}.txt"

    @property
    def attributes(self) -> list[str]:
        return self.schema["attributes"]

    @property
    def vocab_sizes(self) -> list[int]:
        return self.schema["vocab_sizes"]

    @property
    def max_len(self) -> int:
        return self.schema["max_len"]

    @property
    def num_samples(self) -> int:
        return sum(self.schema["splits"].values())

    @property
    def has_drivers(self) -> bool:
        return (self.root / "arrays" / "click_driver.npy").is_file()

    def array(self, name: str) -> np.ndarray:
        """A stored array, memory-mapped (read-only)."""
        if name not in self._arrays:
            path = self.root / "arrays" / f"{name}.npy"
            if not path.is_file():
                raise DataError(f"{path} is missing from the store")
            self._arrays[name] = np.load(path, mmap_mode="r")
        return self._arrays[name]

    @property
    def item_table(self) -> np.ndarray:
        """(num_items + 2, k) int32 attribute ids of every item id, in memory."""
        if self._table is None:
            self._table = np.array(self.array("item_attributes"))
        return self._table

    @property
    def wide_item_table(self) -> np.ndarray:
        """:attr:`item_table` as int64, what batches hold (no conversion per batch)."""
        if self._wide_table is None:
            self._wide_table = self.item_table.astype(np.int64)
        return self._wide_table

    def vocab(self, attribute: str) -> list[str]:
        return self.vocab_path(attribute).read_text(encoding="utf-8").splitlines()

    def size_bytes(self) -> int:
        """Bytes of every file of the store."""
        return sum(path.stat().st_size for path in self.root.rglob("*") if path.is_file())

    @property
    def split_bounds(self) -> np.ndarray:
        """(4,) the first row of train, valid, test, and the row count."""
        return np.cumsum([0, *(self.schema["splits"][split] for split in SPLITS)])

    def split_indices(self, split: str) -> np.ndarray:
        """Row indices of one split (rows of a split are contiguous and sorted)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        code = SPLITS.index(split)
        return np.arange(self.split_bounds[code], self.split_bounds[code + 1])

    def num_batches(self, split: str, batch_size: int, world_size: int = 1) -> int:
        per_rank = -(-len(self.split_indices(split)) // world_size)
        return -(-per_rank // batch_size)

    # ------------------------------------------------------------------ gathering samples

    def references(self, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """(ends, lengths) of the samples at ``rows``, int64: the history of sample b is
        ``clicks[ends[b] - lengths[b] : ends[b]]``, and a positive's target ``clicks[ends[b]]``
        (in a store of pairs)."""
        samples, kind = self.sample_numbers(rows)
        if self.row_histories:
            return row_histories.references(self, samples)
        users = self.array(f"{kind}_users")[samples]
        timeline = np.searchsorted(self.array("timeline_users"), users)
        positions = self.array(f"{kind}_positions")[samples].astype(np.int64)
        ends = self.array("timeline_offsets")[timeline] + positions
        return ends, np.minimum(positions, self.max_len)

    def sample_numbers(self, rows: np.ndarray | slice) -> tuple[np.ndarray, str]:
        """The stored samples of ``rows`` and the prefix of their arrays: pair numbers
        (row // 2) and ``pair``, or the rows themselves and ``impression``."""
        if self.labelled:
            return self.row_numbers(rows), "impression"
        return self.row_numbers(rows) // 2, "pair"

    def row_numbers(self, rows: np.ndarray | slice) -> np.ndarray:
        """``rows`` as an int64 array of row numbers."""
        if isinstance(rows, slice):
            return np.arange(self.num_samples)[rows]
        return np.asarray(rows, dtype=np.int64)

    def gather(self, name: str, rows: np.ndarray | slice, width: int | None = None) -> np.ndarray:
        """One field of the samples at ``rows`` as the models see it: ``histories``
        (n, width, k) int32 (width: max_len unless given), ``lengths`` (n,) int32, ``targets``
        (n, k) int32, ``target_items`` (n,) int32, ``labels`` (n,) int8 (1 click, 0 sampled
        negative), ``users`` (n,) int32, ``splits`` (n,) int8 (0 train, 1 valid, 2 test),
        ``history_driver``/``history_driver_kind`` (n, width) int8 (-1 where no click),
        ``target_driver``/``target_driver_kind`` (n,) int8 (-1 for a non-click)."""
        rows = self.row_numbers(rows)
        if name == "labels":
            if self.labelled:
                return np.asarray(self.array("impression_labels")[rows])
            return (1 - rows % 2).astype(np.int8)
        if name == "users":
            samples, kind = self.sample_numbers(rows)
            return np.asarray(self.array(f"{kind}_users")[samples])
        if name == "splits":
            return (np.searchsorted(self.split_bounds, rows, side="right") - 1).astype(np.int8)
        if name == "targets":
            return item_rows(self.item_table, self.gather("target_items", rows))
        if name not in GATHERED:
            raise ValueError(f"no sample field {name!r}; choose one of "
                             f"{', '.join(SAMPLE_FIELDS)}")
        ends, lengths = self.references(rows)
        slots = np.arange(width or self.max_len)
        if name == "lengths":
            return lengths.astype(np.int32)
        if name == "histories":
            return item_rows(self.item_table, history_items(self.array("clicks"), ends, lengths,
                                                            slots))
        if name == "target_items" and self.labelled:
            return np.asarray(self.array("impression_items")[rows])
        clicked = rows % 2 == 0
        if name == "target_items":
            negatives = self.array("pair_negatives")[rows // 2]
            return np.where(clicked, self.array("clicks")[np.where(clicked, ends, 0)], negatives)
        values = self.array(f"click_{name.split('_', 1)[1]}")  # a planted-truth annotation
        if name.startswith("history_"):
            valid = slots[None, :] < lengths[:, None]
            return np.where(valid, history_items(values, ends, lengths, slots), -1).astype(np.int8)
        return np.where(clicked, values[np.where(clicked, ends, 0)], -1).astype(np.int8)

    def batch_fields(self, rows: np.ndarray, width: int | None = None) -> list[np.ndarray]:
        """histories (n, width, k), lengths, targets (n, k), labels, users of ``rows``: what
        :func:`make_batch` takes (:meth:`gather`'s fields, the references read once)."""
        ends, lengths = self.references(rows)
        clicks, clicked = self.array("clicks"), rows % 2 == 0
        items = history_items(clicks, ends, lengths, np.arange(width or self.max_len))
        if self.labelled:
            targets, clicked = self.gather("target_items", rows), self.gather("labels", rows)
            users = self.gather("users", rows)
        else:
            targets = np.where(clicked, clicks[np.where(clicked, ends, 0)],
                               self.array("pair_negatives")[rows // 2])
            users = np.asarray(self.array("pair_users")[rows // 2])
        table = self.wide_item_table
        return [item_rows(table, items), lengths, item_rows(table, targets), clicked, users]

    def side_fields(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The batch keys of the side features of ``rows`` (``context``, ``numeric``), those
        the store has (:mod:`camn.data.impressions`); none for a store of pairs."""
        return features.side_fields(self, rows) if self.labelled else {}

    def epoch_rows(self, split: str, shuffle: bool, rng: np.random.Generator, rank: int = 0,
                   world_size: int = 1) -> np.ndarray:
        """The rows of one epoch of ``split`` on this rank, in batch order (:func:`epoch_order`)."""
        rows = self.split_indices(split)
        return rows[epoch_order(len(rows), shuffle, rng, rank, world_size)]

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        history_negatives: bool = False,
        rank: int = 0,
        world_size: int = 1,
        length_buckets: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ready batches of one split, gathered from the timelines (no per-sample loop).

        Keys: ``index`` (B,) store row, ``history`` (B, L, k), ``mask`` (B, L) bool (True = real
        item), ``target`` (B, k), ``label`` (B,) float, ``user`` (B,), and with
        ``history_negatives`` a ``history_negative`` (B, L, k): for every history position a
        uniformly drawn item (seeded by seed and epoch), for auxiliary losses (DIEN, DMIN).
        With ``world_size`` > 1 each rank gets a disjoint shard of the (shuffled) rows, padded
        by wrapping so that every rank has the same number of batches (DistributedSampler-like).
        ``length_buckets``: see ``batch_slices``; each batch is then cut to its longest history.
        """
        rng = np.random.default_rng([seed, epoch])
        rows = self.epoch_rows(split, shuffle, rng, rank, world_size)
        lengths = self.gather("lengths", rows) if length_buckets else None
        if history_negatives:
            item_attributes = torch.from_numpy(self.wide_item_table)
        for positions, length in batch_slices(len(rows), batch_size, rng, lengths):
            index = rows[positions]
            fields = self.batch_fields(index, length)
            batch = make_batch(torch.from_numpy(index), *map(torch.from_numpy, fields))
            batch |= {key: torch.from_numpy(v) for key, v in self.side_fields(index).items()}
            if history_negatives:
                batch["history_negative"] = draw_items(rng, item_attributes, batch["mask"])
            yield batch


GATHERED = ("histories", "lengths", "target_items",
            *(f"{where}_{name}" for where in ("history", "target") for name in ANNOTATIONS))
SAMPLE_FIELDS = ("labels", "users", "splits", "targets", *GATHERED)


def epoch_order(
    n: int, shuffle: bool, rng: np.random.Generator, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """Positions of one epoch's rows of a split (of n rows): shuffled or not, and this rank's
    shard, padded by wrapping so that every rank has as many rows (DistributedSampler-like)."""
    positions = rng.permutation(n) if shuffle else np.arange(n)
    if world_size > 1:
        per_rank = -(-n // world_size)
        positions = np.resize(positions, per_rank * world_size)[rank::world_size]
    return positions


BUCKET_WINDOW = 16  # batches whose rows are sorted together by history length


def batch_slices(
    n: int, batch_size: int, rng: np.random.Generator, lengths: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray | slice, int | None]]:
    """The batches of an epoch's n ordered rows: (positions, history length to keep).

    Without ``lengths``: consecutive slices of ``batch_size`` rows, full histories. With the
    rows' history ``lengths``: length-bucketed batches. Windows of ``BUCKET_WINDOW`` batches
    of the (shuffled) order are sorted by length, cut into batches, and the batches of the
    epoch are visited in random order; each keeps only its longest history's positions, so
    padding shrinks while every row is still seen once per epoch. Histories are left-aligned,
    so the positions cut are padding in every row of the batch.
    """
    if lengths is None:
        for start in range(0, n, batch_size):
            yield slice(start, start + batch_size), None
        return
    span = BUCKET_WINDOW * batch_size
    batches = []
    for start in range(0, n, span):
        window = start + np.argsort(lengths[start : start + span], kind="stable")
        batches += [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
    for number in rng.permutation(len(batches)):
        positions = batches[number]
        yield positions, max(1, int(lengths[positions].max()))


def make_batch(
    index: torch.Tensor,
    histories: torch.Tensor,
    lengths: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    users: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """A batch dict (see ``PreparedStore.batches``) from the gathered rows, on their device."""
    slots = torch.arange(histories.shape[1], device=histories.device)
    return {
        "index": index.long(),
        "history": histories.long(),
        "mask": slots[None, :] < lengths.long()[:, None],
        "target": targets.long(),
        "label": labels.float(),
        "user": users.long(),
    }


def draw_items(
    rng: np.random.Generator, item_attributes: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """A uniformly drawn item for every position of ``mask`` (B, L): (B, L, k) attribute ids,
    zeros at padding. ``item_attributes`` (num_items + 2, k) is on the batch's device.

    A draw at a padding position is replaced by item 0, whose row is all zeros (the store
    checks it), before the lookup: cheaper than zeroing the (B, L, k) rows after it.
    """
    ids = rng.integers(FIRST_ITEM_ID, len(item_attributes), size=tuple(mask.shape))
    ids = torch.from_numpy(ids).to(item_attributes.device).mul_(mask)
    return item_rows(item_attributes, ids).long()


def table1_line(schema: dict) -> str:
    """The paper's Table 1 line and the split sizes."""
    s = schema["splits"]
    return (
        f"users {schema['num_users']:,} | items {schema['num_items']:,} | "
        f"attributes {len(schema['attributes'])} | samples {sum(s.values()):,}\n"
        f"splits ({schema['protocol']}, max_len {schema['max_len']}, seed {schema['seed']}): "
        f"train {s['train']:,} / valid {s['valid']:,} / test {s['test']:,}"
    )


def size_line(store: PreparedStore) -> str:
    """The store's bytes on disk, in all and per sample, and where they lie (in a sharded
    store: summed over its shards, the item table they share counted once a shard)."""
    histories = "histories" if store.row_histories else "timelines"
    parts = {histories: ("timeline_users", "timeline_offsets", "clicks", "click_times",
                         "history_offsets", *DRIVER_ARRAYS),
             "samples": ("pair_users", "pair_positions", "pair_negatives",
                         *impressions.SAMPLE_ARRAYS, "impression_histories"),
             "item table": ("item_attributes",)}
    folders = [part.root for part in getattr(store, "shards", [])] or [store.root]  # a shard's
    sizes = {part: sum(path.stat().st_size for name in names for folder in folders
                       if (path := folder / "arrays" / f"{name}.npy").is_file())
             for part, names in parts.items()}
    total = store.size_bytes()
    return (f"size {total / 1e6:,.1f} MB, {total / max(1, store.num_samples):,.1f} bytes a sample ("
            + ", ".join(f"{part} {size / 1e6:,.1f} MB" for part, size in sizes.items()) + ")")
