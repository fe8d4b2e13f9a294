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

Arrays are ``.npy`` files, opened memory-mapped, so a store larger than memory trains fine.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from camn.data.protocols import FIRST_ITEM_ID, SPLITS
from camn.data.raw import DataError

SCHEMA_VERSION = 1
PAD, UNK = "<pad>", "<unk>"


def write_store(
    out: str | Path,
    schema: dict,
    arrays: dict[str, np.ndarray],
    vocabularies: dict[str, list[str]],
    force: bool = False,
) -> Path:
    """Write a store atomically: into a temporary sibling directory, renamed at the end.

    A failed run leaves nothing behind; an existing ``out`` is replaced only with ``force``.
    """
    out = Path(out)
    if out.exists() and not force:
        raise DataError(f"{out} already exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "arrays").mkdir()
        (tmp / "vocab").mkdir()
        for name, array in arrays.items():
            np.save(tmp / "arrays" / f"{name}.npy", np.ascontiguousarray(array))
        for name, values in vocabularies.items():
            # one value a line, as PreparedStore.vocab reads it back with str.splitlines
            lines = (" ".join(v.splitlines()) for v in [PAD, UNK, *values])
            (tmp / "vocab" / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        schema = {"schema_version": SCHEMA_VERSION, **schema}
        (tmp / "schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class PreparedStore:
    """Read side of a prepared store: its schema, memory-mapped arrays, and batches."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        schema_path = self.root / "schema.json"
        if not schema_path.is_file():
            raise DataError(f"{self.root} is not a prepared store (no schema.json): camn prepare")
        self.schema: dict = json.loads(schema_path.read_text())
        self._arrays: dict[str, np.ndarray] = {}

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
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ready batches of one split: every field gathered with one fancy index.

        Keys: ``index`` (B,) store row, ``history`` (B, L, k), ``mask`` (B, L) bool (True = real
        item), ``target`` (B, k), ``label`` (B,) float, ``user`` (B,), and with
        ``history_negatives`` a ``history_negative`` (B, L, k): for every history position a
        uniformly drawn item (seeded by seed and epoch), for auxiliary losses (DIEN, DMIN).
        With ``world_size`` > 1 each rank gets a disjoint shard of the (shuffled) rows, padded
        by wrapping so that every rank has the same number of batches (DistributedSampler-like).
        """
        rows = self.split_indices(split)
        rng = np.random.default_rng([seed, epoch])
        rows = rows[epoch_order(len(rows), shuffle, rng, rank, world_size)]
        if history_negatives:  # a copy: torch cannot wrap the read-only memory map
            item_attributes = torch.from_numpy(np.array(self.array("item_attributes")))
        for start in range(0, len(rows), batch_size):
            index = rows[start : start + batch_size]
            fields = (self.array(name)[index] for name in BATCH_ARRAYS)
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
