"""The prepared store: what ``camn prepare`` writes and every model reads.

Layout of a store directory::

    schema.json              sizes, attribute names, vocab sizes, protocol, seed, splits, origin
    arrays/histories.npy     (N, L, k) int32  attribute ids of the history, left-aligned, 0 = pad
    arrays/lengths.npy       (N,)      int32  real history length (0..L)
    arrays/targets.npy       (N, k)    int32  attribute ids of the target item
    arrays/labels.npy        (N,)      int8   1 = click, 0 = sampled negative
    arrays/users.npy         (N,)      int32  user index
    arrays/splits.npy        (N,)      int8   0 train, 1 valid, 2 test
    arrays/item_attributes.npy (num_items + 2, k) int32  attribute ids of every item id
    arrays/history_driver*.npy, target_driver*.npy   planted truth (synthetic data only)
    vocab/<attribute>.txt    one value a line; line i is id i (0 <pad>, 1 <unk>)
    users.txt                one user id a line; line i is user index i of users.npy (older
                             stores lack it: their users cannot be looked up by id)

Arrays are ``.npy`` files, opened memory-mapped, so a store larger than memory trains fine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from camn.data.protocols import FIRST_ITEM_ID, SPLITS
from camn.data.raw import DataError
from camn.outputs import STORE, check_output, replacing

SCHEMA_VERSION = 1
PAD, UNK = "<pad>", "<unk>"
USERS = "users.txt"


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
        (tmp / "vocab").mkdir()
        for name, array in arrays.items():
            np.save(tmp / "arrays" / f"{name}.npy", np.ascontiguousarray(array))
        for name, values in vocabularies.items():
            # one value a line, as PreparedStore.vocab reads it back with str.splitlines
            lines = (" ".join(v.splitlines()) for v in [PAD, UNK, *values])
            (tmp / "vocab" / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if users is not None:
            lines = (" ".join(u.splitlines()) for u in users)
            (tmp / USERS).write_text("".join(f"{u}\n" for u in lines), encoding="utf-8")
        schema = {"schema_version": SCHEMA_VERSION, **schema}
        (tmp / "schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    return out


class PreparedStore:
    """Read side of a prepared store: its schema, memory-mapped arrays, and batches.

    A damaged store is named, not crashed on, in two steps of different cost:

    - **on open** (always, O(1) in the data size): ``schema.json`` parses and has the keys
      camn reads, every array's ``.npy`` header gives the dtype and shape the schema implies
      and the file holds as many bytes as the header promises (a truncated file), and every
      vocabulary file is present. Only headers are read, never the data.
    - **the content scan** (:meth:`check_contents`, one chunked, vectorised pass over every
      array, i.e. about one training epoch of reading, done at most once per store object):
      ids inside their vocabularies slot by slot, split codes 0/1/2 with the counts of
      ``schema.json``, labels 0/1, lengths in 0..max_len, users below num_users, planted
      drivers, vocabulary line counts. ``camn stats``, the trainer (:meth:`check_trainable`,
      which adds: every split holds both labels) and ``camn evaluate``/``explain`` run it;
      its cost is below that of the work they then do.

    Either raises one :class:`DataError` naming the store, the file and what is wrong; with
    ``validate=False`` the open check is left to :meth:`problems` (``camn stats`` lists all).
    """

    def __init__(self, root: str | Path, *, validate: bool = True) -> None:
        self.root = Path(root)
        self.schema: dict = read_schema(self.root)
        self._arrays: dict[str, np.ndarray] = {}
        self._scan: ContentScan | None = None
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
            if not (self.root / "vocab" / f"{attribute}.txt").is_file()
        ]
        return problems

    def content_problems(self) -> list[str]:
        """What the content scan finds (run once, then remembered); needs a sound layout."""
        return self._content_scan().problems

    def training_problems(self) -> list[str]:
        """Why the trainer would learn or score nothing: a split without samples, or with one
        label only (the train loss, the validation AUC of early stopping, the test AUC)."""
        problems = []
        for split, (negatives, positives) in zip(SPLITS, self._content_scan().labels, strict=True):
            if negatives + positives == 0:
                problems.append(
                    f"arrays/splits.npy: the {split} split has no samples; training needs "
                    "samples in train, valid and test (each of valid and test gets 10% of the "
                    "users: prepare more users)"
                )
            elif not negatives or not positives:
                label = "1 (clicks)" if positives else "0 (non-clicks)"
                problems.append(
                    f"arrays/labels.npy: the {split} split has only label {label}; "
                    f"{LABEL_USES[split]} needs both clicks and non-clicks"
                )
        return problems

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

    def _content_scan(self) -> ContentScan:
        if self._scan is None:
            self._scan = scan_contents(self)
        return self._scan

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
    def has_drivers(self) -> bool:
        return (self.root / "arrays" / "history_driver.npy").is_file()

    def array(self, name: str) -> np.ndarray:
        """A stored array, memory-mapped (read-only)."""
        if name not in self._arrays:
            path = self.root / "arrays" / f"{name}.npy"
            if not path.is_file():
                raise DataError(f"{path} is missing from the store")
            self._arrays[name] = np.load(path, mmap_mode="r")
        return self._arrays[name]

    def vocab(self, attribute: str) -> list[str]:
        return (self.root / "vocab" / f"{attribute}.txt").read_text(encoding="utf-8").splitlines()

    def split_indices(self, split: str) -> np.ndarray:
        """Row indices of one split (rows of a split are contiguous and sorted)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.array("splits") == SPLITS.index(split))

    def num_batches(self, split: str, batch_size: int, world_size: int = 1) -> int:
        per_rank = -(-len(self.split_indices(split)) // world_size)
        return -(-per_rank // batch_size)

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
        """Yield ready batches of one split: every field gathered with one fancy index.

        Keys: ``index`` (B,) store row, ``history`` (B, L, k), ``mask`` (B, L) bool (True = real
        item), ``target`` (B, k), ``label`` (B,) float, ``user`` (B,), and with
        ``history_negatives`` a ``history_negative`` (B, L, k): for every history position a
        uniformly drawn item (seeded by seed and epoch), for auxiliary losses (DIEN, DMIN).
        With ``world_size`` > 1 each rank gets a disjoint shard of the (shuffled) rows, padded
        by wrapping so that every rank has the same number of batches (DistributedSampler-like).
        ``length_buckets``: see ``batch_slices``; each batch is then cut to its longest history.
        """
        rows = self.split_indices(split)
        rng = np.random.default_rng([seed, epoch])
        rows = rows[epoch_order(len(rows), shuffle, rng, rank, world_size)]
        lengths = self.array("lengths")[rows] if length_buckets else None
        if history_negatives:  # a copy: torch cannot wrap the read-only memory map
            item_attributes = torch.from_numpy(np.array(self.array("item_attributes")))
        for positions, length in batch_slices(len(rows), batch_size, rng, lengths):
            index = rows[positions]
            fields = [self.array(name)[index] for name in BATCH_ARRAYS]
            fields[0] = fields[0][:, :length]  # histories
            batch = make_batch(torch.from_numpy(index), *map(torch.from_numpy, fields))
            if history_negatives:
                batch["history_negative"] = draw_items(rng, item_attributes, batch["mask"])
            yield batch


BATCH_ARRAYS = ("histories", "lengths", "targets", "labels", "users")


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
    zeros at padding. ``item_attributes`` (num_items + 2, k) is on the batch's device."""
    ids = rng.integers(FIRST_ITEM_ID, len(item_attributes), size=tuple(mask.shape))
    drawn = item_attributes[torch.from_numpy(ids).to(item_attributes.device)].long()
    return drawn * mask[..., None]


def table1_line(schema: dict) -> str:
    """The paper's Table 1 line and the split sizes."""
    s = schema["splits"]
    return (
        f"users {schema['num_users']:,} | items {schema['num_items']:,} | "
        f"attributes {len(schema['attributes'])} | samples {sum(s.values()):,}\n"
        f"splits ({schema['protocol']}, max_len {schema['max_len']}, seed {schema['seed']}): "
        f"train {s['train']:,} / valid {s['valid']:,} / test {s['test']:,}"
    )


# ------------------------------------------------------------------ checking a store (see above)

SCHEMA_KEYS = (
    "schema_version", "attributes", "vocab_sizes", "max_len", "splits", "num_users",
    "num_items", "protocol", "seed",
)
ARRAY_DTYPES = {
    "histories": np.int32, "lengths": np.int32, "targets": np.int32, "labels": np.int8,
    "users": np.int32, "splits": np.int8, "item_attributes": np.int32,
}
DRIVER_ARRAYS = ("history_driver", "history_driver_kind", "target_driver", "target_driver_kind")
LABEL_USES = {
    "train": "training", "valid": "early stopping (the validation AUC)", "test": "the test AUC",
}
CHUNK_BYTES = 1 << 25  # rows of about 32 MiB at a time: the scan's memory stays bounded


def raise_problems(root: Path, what: str, problems: list[str]) -> None:
    """One DataError for a list of problems: the first named, the others counted."""
    if problems:
        more = len(problems) - 1
        tail = f" (and {more} more problem(s); camn stats {root} lists them)" if more else ""
        raise DataError(f"{root} {what}: {problems[0]}{tail}")


def read_schema(root: Path) -> dict:
    """``schema.json`` of the store at ``root``, parsed and checked for the keys camn reads."""
    path = root / "schema.json"
    if not path.is_file():
        raise DataError(f"{root} is not a prepared store (no schema.json): camn prepare")
    try:
        schema = json.loads(path.read_bytes())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{root} is a damaged store: schema.json {json_problem(error)}") from None
    problems = [f"schema.json {problem}" for problem in schema_problems(schema)]
    raise_problems(root, "is a damaged store", problems)
    return schema


def json_problem(error: ValueError) -> str:
    """Why a file did not parse as JSON, to read after its name, e.g. ``is not valid JSON
    (Expecting value: line 1, column 1)``."""
    if isinstance(error, json.JSONDecodeError):
        return f"is not valid JSON ({error.msg}: line {error.lineno}, column {error.colno})"
    return f"is not text ({error})"


def _is_int(value: object, minimum: int) -> bool:
    return type(value) is int and value >= minimum  # type(): JSON true is no count


def schema_problems(schema: object) -> list[str]:
    """What makes a parsed ``schema.json`` unusable (each reason reads after the file name)."""
    if not isinstance(schema, dict):
        return [f"holds a JSON {type(schema).__name__}, not an object"]
    missing = [key for key in SCHEMA_KEYS if key not in schema]
    if missing:
        return [f"lacks {', '.join(missing)}"]
    problems = []
    if schema["schema_version"] != SCHEMA_VERSION:
        problems.append(
            f"has schema_version {schema['schema_version']!r}; this camn reads {SCHEMA_VERSION}"
        )
    attributes, sizes = schema["attributes"], schema["vocab_sizes"]
    if not (isinstance(attributes, list) and attributes
            and all(isinstance(a, str) and a for a in attributes)
            and len(set(attributes)) == len(attributes)):
        problems.append("attributes must be a non-empty list of distinct names")
    if not (isinstance(sizes, list) and all(_is_int(n, FIRST_ITEM_ID) for n in sizes)):
        problems.append(f"vocab_sizes must be a list of integers of at least {FIRST_ITEM_ID}")
    elif isinstance(attributes, list) and len(sizes) != len(attributes):
        problems.append(f"vocab_sizes has {len(sizes)} entries for {len(attributes)} attributes")
    for key in ("max_len", "num_users", "num_items"):
        if not _is_int(schema[key], 1):
            problems.append(f"{key} must be an integer of at least 1, got {schema[key]!r}")
    splits = schema["splits"]
    if not (isinstance(splits, dict) and sorted(splits) == sorted(SPLITS)
            and all(_is_int(n, 0) for n in splits.values())):
        problems.append(f"splits must give the sample counts of {', '.join(SPLITS)}")
    if not problems and sizes[0] != schema["num_items"] + FIRST_ITEM_ID:
        problems.append(
            f"has vocab_sizes[0] {sizes[0]} (item ids) but num_items + 2 = "
            f"{schema['num_items'] + FIRST_ITEM_ID}"
        )
    return problems


def expected_arrays(schema: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array, as ``schema.json`` implies them (drivers included)."""
    n, length, k = sum(schema["splits"].values()), schema["max_len"], len(schema["attributes"])
    shapes = {
        "histories": (n, length, k), "lengths": (n,), "targets": (n, k), "labels": (n,),
        "users": (n,), "splits": (n,), "item_attributes": (schema["num_items"] + FIRST_ITEM_ID, k),
    }
    arrays = {name: (shape, np.dtype(ARRAY_DTYPES[name])) for name, shape in shapes.items()}
    for name in DRIVER_ARRAYS:
        arrays[name] = ((n, length) if name.startswith("history") else (n,), np.dtype(np.int8))
    return arrays


def npy_problems(path: Path, label: str, shape: tuple[int, ...], dtype: np.dtype) -> list[str]:
    """Problems of one ``.npy`` file, from its header and size alone (no data is read)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with path.open("rb") as file:
            version = np.lib.format.read_magic(file)
            if version not in readers:
                return [f"{label} is a .npy file of version {version}, which camn never writes"]
            actual_shape, _, actual_dtype = readers[version](file)
            data_start = file.tell()
    except (ValueError, OSError) as error:
        return [f"{label} is not a readable .npy array ({error})"]
    if actual_dtype != dtype:
        return [f"{label} holds {actual_dtype} values; a store holds {dtype} there"]
    problems = []
    if actual_shape != shape:
        problems.append(f"{label} has shape {actual_shape}; schema.json implies {shape}")
    promised = data_start + int(np.prod(actual_shape)) * actual_dtype.itemsize
    size = path.stat().st_size
    if size != promised:
        state = "truncated" if size < promised else "longer than its header says"
        problems.append(
            f"{label} is {state}: its header promises {promised:,} bytes, the file has {size:,}"
        )
    return problems


@dataclass(frozen=True)
class ContentScan:
    """What :func:`scan_contents` found: the problems, and the (3, 2) sample counts of every
    split (train, valid, test) with label 0 and 1 (zeros where splits or labels are damaged)."""

    problems: list[str]
    labels: np.ndarray


def scan_contents(store: PreparedStore) -> ContentScan:
    """One chunked pass over every array of a store whose layout is sound (class docstring)."""
    k, vocab_top = len(store.attributes), np.asarray(store.vocab_sizes) - 1
    top_user = store.schema["num_users"] - 1
    rules: dict[str, tuple[int, int | np.ndarray, str]] = {  # name -> lowest, highest, rule
        "histories": (0, vocab_top, ""), "targets": (0, vocab_top, ""),
        "item_attributes": (0, vocab_top, ""),  # "": ids, checked per attribute slot
        "lengths": (0, store.max_len, f"lengths are 0..max_len ({store.max_len})"),
        "users": (0, top_user, f"users are 0..num_users - 1 ({top_user})"),
        "labels": (0, 1, "labels are 0 (non-click) or 1 (click)"),
        "splits": (0, len(SPLITS) - 1, "split codes are 0 (train), 1 (valid) or 2 (test)"),
    }
    if store.has_drivers:
        slots = (-1, k - 1, f"drivers are -1 (no click) or an attribute slot 0..{k - 1}")
        kinds = (-1, 1, "driver kinds are -1 (no click), 0 or 1")
        rules |= {name: kinds if name.endswith("kind") else slots for name in DRIVER_ARRAYS}
    problems: list[str] = []
    damaged: set[str] = set()  # arrays with a value out of range
    for name, (lowest, highest, rule) in rules.items():
        found = first_outside(store.array(name), lowest, highest)
        if found is None:
            continue
        damaged.add(name)
        row, slot, value = found
        if rule:
            problems.append(f"arrays/{name}.npy holds {value} at row {row:,}; {rule}")
        else:
            where = "item id" if name == "item_attributes" else "row"
            problems.append(
                f"arrays/{name}.npy holds id {value} of attribute '{store.attributes[slot]}' at "
                f"{where} {row:,}, outside its vocabulary of ids 0..{vocab_top[slot]:,} "
                "(vocab_sizes in schema.json)"
            )
    labels = np.zeros((len(SPLITS), 2), dtype=np.int64)
    if not damaged & {"splits", "labels"}:
        labels = count_labels(store.array("splits"), store.array("labels"))
        counts = dict(zip(SPLITS, labels.sum(axis=1).tolist(), strict=True))
        if counts != store.schema["splits"]:
            problems.append(f"arrays/splits.npy has {counts} samples per split; schema.json says "
                            f"{store.schema['splits']}")
    return ContentScan(problems + vocab_problems(store), labels)


def first_outside(
    array: np.ndarray, lowest: int, highest: int | np.ndarray
) -> tuple[int, int, int] | None:
    """The first value of ``array`` outside [lowest, highest] (bounds broadcast over the last
    axis, so per attribute slot for id arrays): (row, last-axis index, value), or None."""
    rows = max(1, CHUNK_BYTES // max(1, array[:1].nbytes))
    for start in range(0, len(array), rows):
        chunk = np.asarray(array[start : start + rows])
        bad = (chunk < lowest) | (chunk > highest)
        if bad.any():
            where = tuple(np.argwhere(bad)[0])
            return start + int(where[0]), int(where[-1]), int(chunk[where])
    return None


def count_labels(splits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(3, 2) samples of every split code with label 0 and 1, counted in chunks."""
    counts = np.zeros(2 * len(SPLITS), dtype=np.int64)
    rows = CHUNK_BYTES // 8  # the codes are int64
    for start in range(0, len(splits), rows):
        code = 2 * splits[start : start + rows].astype(np.int64) + labels[start : start + rows]
        counts += np.bincount(code, minlength=len(counts))
    return counts.reshape(len(SPLITS), 2)


def vocab_problems(store: PreparedStore) -> list[str]:
    """Vocabulary files that do not hold one line per id (``vocab_sizes`` in the schema)."""
    problems = []
    for attribute, size in zip(store.attributes, store.vocab_sizes, strict=True):
        label = f"vocab/{attribute}.txt"
        try:
            lines = len(store.vocab(attribute))
        except UnicodeDecodeError as error:
            problems.append(f"{label} is not UTF-8 text ({error})")
            continue
        if lines != size:
            problems.append(
                f"{label} has {lines:,} lines; vocab_sizes in schema.json says {size:,}"
            )
    return problems
