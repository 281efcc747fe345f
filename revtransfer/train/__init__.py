"""Pretraining as a library of functions: the loop, checkpoints (save/resume), DDP, metrics and
the training-step benchmark. Apps use the names below."""
from revtransfer.data import BatchLoader, ClevrArrays, DatasetError, Normalize, open_dataset  # re-exported

from .checkpoint import BEST, LAST, CheckpointError, load_checkpoint, load_training_checkpoint, save_checkpoint
from .config import PretrainConfig
from .pretrain import Pretrainer, PretrainResult, build_model, pretrain, read_summary

__all__ = [
    "BEST", "LAST", "BatchLoader", "CheckpointError", "ClevrArrays", "DatasetError", "Normalize",
    "PretrainConfig", "PretrainResult", "Pretrainer", "build_model", "load_checkpoint",
    "load_training_checkpoint", "open_dataset", "pretrain", "read_summary", "save_checkpoint",
]
