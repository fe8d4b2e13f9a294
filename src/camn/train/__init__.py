"""Training, scoring and saved models: the loop, its hooks and epoch log, metrics, checkpoints
and DDP set-up."""

from camn.config import TrainConfig
from camn.train.checkpoints import load_model, save_checkpoint
from camn.train.epoch_log import Hook, read_epoch_log
from camn.train.loop import train_one, train_seeds
from camn.train.metrics import auc, evaluate, gauc, logloss

__all__ = [
    "Hook",
    "TrainConfig",
    "auc",
    "evaluate",
    "gauc",
    "load_model",
    "logloss",
    "read_epoch_log",
    "save_checkpoint",
    "train_one",
    "train_seeds",
]
