"""Datasets over clevr_gen's on-disk format (see clevr_gen/FORMAT.md): the one reader of a dataset
dir (:func:`open_dataset`), a torch Dataset over it, split helpers, the batch loader and the
on-device normalisation that training, probes and benchmarks share."""
from revtransfer.errors import DatasetError

from .clevr import ClevrDataset  # noqa: E402  (imports torch)
from .loader import BatchLoader, Normalize
from .reader import ClevrArrays, DatasetIncompleteError, open_dataset, read_labels, read_manifest
from .splits import holdout_split, split_indices, subset_fraction

__all__ = ["BatchLoader", "ClevrArrays", "ClevrDataset", "DatasetError", "DatasetIncompleteError", "Normalize",
           "holdout_split", "open_dataset", "read_labels", "read_manifest", "split_indices", "subset_fraction"]
