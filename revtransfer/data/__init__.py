"""Datasets over clevr_gen's on-disk format (see clevr_gen/FORMAT.md): the one reader of a dataset
dir (:func:`open_dataset`), a torch Dataset over it, and split helpers."""
from .reader import ClevrArrays, DatasetError, DatasetIncompleteError, open_dataset, read_labels, read_manifest
from .splits import split_indices, subset_fraction
from .clevr import ClevrDataset  # noqa: E402  (imports torch)

__all__ = ["ClevrArrays", "ClevrDataset", "DatasetError", "DatasetIncompleteError", "open_dataset", "read_labels",
           "read_manifest", "split_indices", "subset_fraction"]
