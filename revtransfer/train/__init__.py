"""Pretraining: the loop, checkpoints (save/resume), DDP and metrics."""
from .checkpoint import CheckpointError, load_checkpoint, load_training_checkpoint, save_checkpoint
from .config import PretrainConfig
from .data import BatchLoader, ClevrArrays, DatasetError, Normalize, open_dataset
from .pretrain import PretrainResult, Pretrainer, build_model, pretrain, read_summary

__all__ = [
    "BatchLoader", "CheckpointError", "ClevrArrays", "DatasetError", "Normalize",
    "PretrainConfig", "PretrainResult", "Pretrainer", "build_model", "load_checkpoint",
    "load_training_checkpoint", "open_dataset", "pretrain", "read_summary", "save_checkpoint",
]
