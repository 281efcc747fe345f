"""Datasets over clevr_gen's on-disk format (see clevr_gen/FORMAT.md) and split helpers."""
from .clevr import ClevrDataset, DatasetIncompleteError, read_labels
from .splits import split_indices, subset_fraction

__all__ = ["ClevrDataset", "DatasetIncompleteError", "read_labels", "split_indices",
           "subset_fraction"]
