"""Training, scoring and saved models: the loop, metrics, checkpoints and DDP set-up."""

from camn.train.checkpoints import load_model, save_checkpoint
from camn.train.loop import TrainConfig, train_one, train_seeds
from camn.train.metrics import auc, evaluate, gauc, logloss

__all__ = [
    "TrainConfig",
    "auc",
    "evaluate",
    "gauc",
    "load_model",
    "logloss",
    "save_checkpoint",
    "train_one",
    "train_seeds",
]
