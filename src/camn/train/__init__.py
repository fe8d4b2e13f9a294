"""Training, scoring and saved models: the loop, its hooks and history, metrics, checkpoints
and DDP set-up."""

from camn.train.checkpoints import load_model, save_checkpoint
from camn.train.history import Hook, read_history
from camn.train.loop import TrainConfig, train_one, train_seeds
from camn.train.metrics import auc, evaluate, gauc, logloss

__all__ = [
    "Hook",
    "TrainConfig",
    "auc",
    "evaluate",
    "gauc",
    "load_model",
    "logloss",
    "read_history",
    "save_checkpoint",
    "train_one",
    "train_seeds",
]
