"""A torch Dataset over a clevr_gen dataset directory.

Images come from images.npy memory-mapped (no decode, no copy of the file into RAM; each worker
process maps it on first access) or, for --png datasets, from images/NNNNNN.png, through the one
dataset reader (:mod:`.reader`). Items are uint8 CHW tensors: conversion to float and
normalisation happen later, on the device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .reader import open_dataset
from .splits import SPLIT_NAMES, split_indices, subset_fraction

TARGETS = ("has_x", "has_y")


class ClevrDataset(Dataset):
    """Items (image uint8 (3, H, W), label) of a clevr_gen dataset.

    root: dataset directory (must hold manifest.json).
    split: None for all images, or "train"/"val"/"test" of split_indices(n, fractions, split_seed).
    target: "has_x" or "has_y" (int64 scalar label), or a sequence of them (int64 vector).
    indices: explicit image indices (applied after `split`: positions within it if both given).
    fraction, fraction_seed: keep a nested seeded fraction of the selection (pretrain fractions).
    transform: optional callable on the uint8 CHW tensor.
    """

    def __init__(self, root: str | Path, split: str | None = None,
                 target: str | Sequence[str] = "has_x", indices: Sequence[int] | None = None,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), split_seed: int = 0,
                 fraction: float = 1.0, fraction_seed: int = 0,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.root = Path(root)
        names = (target,) if isinstance(target, str) else tuple(target)
        for name in names:
            if name not in TARGETS:
                raise ValueError(f"target={name!r} is unknown; allowed: {', '.join(TARGETS)}")
        self.data = open_dataset(self.root)
        self.manifest, self.labels, self.n_total = self.data.manifest, self.data.labels, len(self.data)
        self.height, self.width = self.data.image_size
        self.target = target
        self._targets = np.stack([self.data.binary_labels(name) for name in names], axis=1)

        sel = np.arange(self.n_total)
        if split is not None:
            if split not in SPLIT_NAMES:
                raise ValueError(f"split={split!r} is unknown; allowed: None, "
                                 f"{', '.join(SPLIT_NAMES)}")
            sel = split_indices(self.n_total, fractions, split_seed)[split]
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= len(sel)):
                raise IndexError(f"indices must lie in [0, {len(sel)}) for this selection")
            sel = sel[idx]
        if fraction != 1.0:
            sel = subset_fraction(sel, fraction, fraction_seed)
        self.indices = sel
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        i = int(self.indices[item])
        img = torch.from_numpy(np.ascontiguousarray(self.data.image(i).transpose(2, 0, 1)))
        if self.transform is not None:
            img = self.transform(img)
        t = self._targets[i]
        label = torch.tensor(t[0] if isinstance(self.target, str) else t, dtype=torch.int64)
        return img, label

    def targets(self) -> np.ndarray:
        """Labels of the selected items, without touching the images."""
        t = self._targets[self.indices]
        return t[:, 0] if isinstance(self.target, str) else t
