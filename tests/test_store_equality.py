"""The version-2 store (timelines stored once, samples as references) yields the very samples
and batches of the version-1 store (every sample's own (L, k) history), on Amazon Beauty
``last`` and ``sliding``, MovieLens-100K ``sliding`` and the synthetic default.

``data/store_v1_fingerprints.json`` holds SHA-256 digests of the version-1 arrays
(``histories``, ``lengths``, ``targets``, ``labels``, ``users``, ``splits``, the item table and,
on synthetic data, the planted drivers) and of the first 20 training batches of the trainer's
device-resident split and of :meth:`PreparedStore.batches`, computed by the camn that wrote
version 1 from stores it prepared with the same commands.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from camn.data.prepare import prepare
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.sources import available_sources
from camn.data.sources.synthetic import generate
from camn.data.store import PreparedStore
from camn.train.loop import ResidentSplit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BEAUTY = DATA / "amazon_beauty_5core" / "mcauley2014"
ML100K = DATA / "movielens_100k"
FINGERPRINTS = json.loads((Path(__file__).parent / "data" / "store_v1_fingerprints.json")
                          .read_text())
FIELDS = ("histories", "lengths", "targets", "labels", "users", "splits")
DRIVERS = ("history_driver", "history_driver_kind", "target_driver", "target_driver_kind")
CHUNK = 50_000  # rows hashed at a time


def fingerprints(store: PreparedStore) -> dict[str, str]:
    """The digests of the fingerprint file, from a version-2 store."""
    found = {}
    for name in FIELDS + (DRIVERS if store.has_drivers else ()):
        digest = hashlib.sha256()
        for start in range(0, store.num_samples, CHUNK):
            rows = np.arange(start, min(store.num_samples, start + CHUNK))
            array = np.ascontiguousarray(store.gather(name, rows))
            digest.update(array.dtype.str.encode())
            digest.update(array.tobytes())
        found[name] = digest.hexdigest()
    found["item_attributes"] = hashlib.sha256(store.item_table.tobytes()).hexdigest()
    batches = {
        "resident": ResidentSplit(store, "train", torch.device("cpu")).batches(
            512, shuffle=True, seed=1, epoch=2, history_negatives=True, length_buckets=True,
            packed_rows=True),
        "streamed": store.batches("valid", 512, shuffle=True, seed=1, epoch=2,
                                  history_negatives=True, length_buckets=True),
    }
    for kind, batch_iterator in batches.items():
        digest = hashlib.sha256()
        for _, batch in zip(range(20), batch_iterator, strict=False):
            for key in sorted(batch):
                digest.update(key.encode())
                digest.update(batch[key].numpy().tobytes())
        found[f"batches_{kind}"] = digest.hexdigest()
    return found


def read_source(name: str, argv: list[str]) -> RawData:
    source = available_sources()[name]
    parser = argparse.ArgumentParser()
    source.add_arguments(parser)
    return source.read(report=BadInputReport(), **vars(parser.parse_args(argv)))


def check(raw: RawData, out: Path, protocol: str, key: str) -> None:
    prepare(raw, out, protocol=protocol, max_len=20, seed=2022)
    assert fingerprints(PreparedStore(out)) == FINGERPRINTS[key]


def test_the_synthetic_default_store_equals_version_1(tmp_path: Path) -> None:
    check(generate(), tmp_path / "store", "last", "synthetic")


@pytest.mark.skipif(not ML100K.is_dir(), reason=f"MovieLens 100K not found at {ML100K}")
def test_the_movielens_sliding_store_equals_version_1(tmp_path: Path) -> None:
    check(read_source("movielens", ["--path", str(ML100K)]), tmp_path / "store", "sliding",
          "ml100k-sliding")


@pytest.mark.skipif(not BEAUTY.is_dir(), reason=f"Amazon Beauty not found at {BEAUTY}")
def test_the_beauty_stores_equal_version_1(tmp_path: Path) -> None:
    raw = read_source("amazon", ["--reviews", str(BEAUTY / "reviews_Beauty_5.json.gz"),
                                 "--meta", str(BEAUTY / "meta_Beauty.json.gz")])
    for protocol in ("last", "sliding"):  # prepare empties the interactions: one copy each
        copy = RawData(raw.interactions.clone(), raw.items, raw.attributes, raw.origin)
        check(copy, tmp_path / protocol, protocol, f"beauty-{protocol}")


def test_a_version_1_store_is_named_with_the_command_to_prepare_it_again(
    tmp_path: Path
) -> None:
    (tmp_path / "arrays").mkdir()
    (tmp_path / "arrays" / "histories.npy").write_bytes(b"")
    schema = {"schema_version": 1, "protocol": "last", "max_len": 20, "seed": 2022,
              "origin": {"source": "movielens", "layout": "100k"}}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(DataError) as caught:
        PreparedStore(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path} was prepared by an earlier camn (store version 1; this camn reads version "
        "2): prepare it again with camn prepare movielens (origin in schema.json: layout=100k; "
        "protocol last, max_len 20, seed 2022)"
    )
