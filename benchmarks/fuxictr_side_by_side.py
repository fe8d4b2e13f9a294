"""FuxiCTR's DIN and DNN trained by FuxiCTR itself on a camn prepared store (docs/results.md).

Separates the data from the models: FuxiCTR's layers (FeatureEmbeddingDict, DIN_Attention,
MLP_Block) and its training loop (BaseModel.fit: Xavier init, embeddings N(0, 1e-4), early
stopping on AUC - logloss, LR decay on plateau, gradient clipping) read the same arrays as camn's
trainer, so any AUC difference left is the models', not the data pipeline's or the test set's.

FuxiCTR is not a camn dependency; run this in its own environment:

    python3 -m venv /tmp/fuxictr && /tmp/fuxictr/bin/pip install torch==2.13.0 fuxictr==2.3.10
    /tmp/fuxictr/bin/python benchmarks/fuxictr_side_by_side.py STORE --model din --seeds 3

``--head fuxictr`` is FuxiCTR's output network (MLP on [target, pooled history]);
``--head dien`` adds camn's (DIEN code base's) extra inputs, the sum-pooled history and
target * sum-pooled history, and ``--head dien-bn`` also batch-normalises the MLP input.
One JSON line per call: the settings, the test AUC of each seed, mean and standard deviation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from fuxictr.features import FeatureMap
from fuxictr.pytorch.layers import DIN_Attention, FeatureEmbeddingDict, MLP_Block
from fuxictr.pytorch.models import BaseModel
from fuxictr.pytorch.torch_utils import seed_everything
from torch import nn

from camn.data.store import PreparedStore

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}  # camn's splits.npy
ARRAYS = ("histories", "lengths", "targets", "labels", "splits")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store", type=Path, help="a directory written by `camn prepare`")
    parser.add_argument("--model", choices=("din", "dnn"), default="din")
    parser.add_argument("--head", choices=("fuxictr", "dien", "dien-bn"), default="fuxictr")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--embed-dim", type=int, default=18)
    parser.add_argument("--embedding-std", type=float, default=1e-4)
    parser.add_argument("--activation", default="relu", help="output MLP: relu or dice")
    parser.add_argument("--monitor", choices=("auc-logloss", "auc"), default="auc-logloss")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def read_store(store: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A camn store's schema and the arrays that :class:`SplitBatches` reads, gathered into
    memory."""
    prepared = PreparedStore(store)
    everything = np.arange(prepared.num_samples)
    return prepared.schema, {name: prepared.gather(name, everything) for name in ARRAYS}


def feature_map(store: Path, schema: dict, embed_dim: int) -> FeatureMap:
    """One categorical feature per attribute of the target, one sequence feature per attribute
    of the history sharing its embedding table; id 0 is camn's padding."""
    fmap = FeatureMap("camn", str(store))  # data_dir: read only for pretrained embeddings
    pairs = list(zip(schema["attributes"], schema["vocab_sizes"], strict=True))
    for name, size in pairs:
        fmap.features[name] = {
            "type": "categorical", "source": "item", "vocab_size": size, "padding_idx": 0
        }
    for name, size in pairs:
        fmap.features[f"hist_{name}"] = {
            "type": "sequence", "source": "item", "vocab_size": size, "padding_idx": 0,
            "max_len": schema["max_len"], "share_embedding": name,
        }
    fmap.labels = ["label"]
    fmap.default_emb_dim = embed_dim
    fmap.num_fields = len(fmap.features)
    return fmap


class SplitBatches:
    """FuxiCTR-style batch dicts of one split of the store (reshuffled every pass if asked)."""

    def __init__(self, arrays: dict, attributes: list[str], split: str, batch: int,
                 shuffle: bool, seed: int = 0) -> None:
        self.arrays, self.attributes = arrays, attributes
        self.rows = np.flatnonzero(arrays["splits"] == SPLIT_CODES[split])
        self.batch, self.shuffle = batch, shuffle
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch)

    def __iter__(self):
        rows = self.rng.permutation(self.rows) if self.shuffle else self.rows
        for start in range(0, len(rows), self.batch):
            index = rows[start : start + self.batch]
            targets = self.arrays["targets"][index].astype(np.int64)
            histories = self.arrays["histories"][index].astype(np.int64)
            batch = {"label": torch.from_numpy(self.arrays["labels"][index].astype(np.float32))}
            for slot, name in enumerate(self.attributes):
                batch[name] = torch.from_numpy(targets[:, slot])
                batch[f"hist_{name}"] = torch.from_numpy(histories[:, :, slot])
            yield batch


class Network(BaseModel):
    """FuxiCTR's DIN (DIN_Attention, no softmax, 64 Dice units) or DNN (mean-pooled history),
    with the output network chosen by ``head``."""

    def __init__(self, fmap: FeatureMap, attributes: list[str], args: argparse.Namespace,
                 **kwargs) -> None:
        super().__init__(fmap, model_id=args.model, **kwargs)
        self.attributes, self.kind, self.head = attributes, args.model, args.head
        self.embedding_layer = FeatureEmbeddingDict(
            fmap, args.embed_dim,
            embedding_initializer=f"partial(nn.init.normal_, std={args.embedding_std})",
        )
        width = args.embed_dim * len(attributes)
        if self.kind == "din":
            self.attention = DIN_Attention(
                width, attention_units=[64], hidden_activations="Dice", use_softmax=False
            )
        inputs = 2 * width if self.head == "fuxictr" else 4 * width
        self.input_norm = nn.BatchNorm1d(inputs) if self.head == "dien-bn" else nn.Identity()
        self.dnn = MLP_Block(
            input_dim=inputs, output_dim=1, hidden_units=[200, 80],
            hidden_activations=args.activation, output_activation=self.output_activation,
        )
        self.compile("adam", "binary_crossentropy", args.lr)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs: dict) -> dict:
        features = self.get_inputs(inputs)
        embedded = self.embedding_layer(features)
        target = torch.cat([embedded[name] for name in self.attributes], dim=-1)
        history = torch.cat([embedded[f"hist_{name}"] for name in self.attributes], dim=-1)
        mask = features[f"hist_{self.attributes[0]}"] != 0
        summed = (history * mask[..., None]).sum(1)
        if self.kind == "din":
            pooled = self.attention(target, history, mask)
        else:
            pooled = summed / mask.sum(1, keepdim=True).clamp(min=1)
        parts = [target, pooled]
        if self.head != "fuxictr":
            parts += [summed, target * summed]
        return {"y_pred": self.dnn(self.input_norm(torch.cat(parts, dim=-1)))}


def run_seed(args, fmap, arrays, attributes, seed: int) -> float:
    seed_everything(seed)
    monitor = {"AUC": 1, "logloss": -1} if args.monitor == "auc-logloss" else "AUC"
    with tempfile.TemporaryDirectory() as model_root:  # FuxiCTR's best-epoch checkpoint
        os.makedirs(os.path.join(model_root, fmap.dataset_id))
        model = Network(
            fmap, attributes, args, gpu=-1, monitor=monitor, early_stop_patience=2, verbose=0,
            model_root=model_root, metrics=["AUC", "logloss"],
        )
        model.fit(
            SplitBatches(arrays, attributes, "train", args.batch, shuffle=True, seed=seed),
            epochs=100,
            validation_data=SplitBatches(arrays, attributes, "valid", 8192, shuffle=False),
        )
    test = SplitBatches(arrays, attributes, "test", 8192, shuffle=False)
    return float(model.evaluate(test, metrics=["AUC"])["AUC"])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    schema, arrays = read_store(args.store)
    fmap = feature_map(args.store, schema, args.embed_dim)
    aucs = [run_seed(args, fmap, arrays, schema["attributes"], s) for s in range(args.seeds)]
    settings = {k: v for k, v in vars(args).items() if k not in ("store", "threads")}
    print(json.dumps({
        "store": str(args.store), **settings,
        "test_auc_mean": round(statistics.mean(aucs), 4),
        "test_auc_std": round(statistics.stdev(aucs), 4) if len(aucs) > 1 else 0.0,
        "test_auc": [round(auc, 4) for auc in aucs],
    }), flush=True)


if __name__ == "__main__":
    main()
