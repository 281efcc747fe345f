"""A torch Dataset over a clevr_gen dataset directory.

Images come from images.npy memory-mapped (no decode, no copy of the file into RAM; each worker
process maps it on first access) or, for --png datasets, from images/NNNNNN.png. Items are uint8
CHW tensors: conversion to float and normalisation happen later, on the device.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .splits import SPLIT_NAMES, split_indices, subset_fraction

TARGETS = ("has_x", "has_y")


class DatasetIncompleteError(FileNotFoundError):
    """The directory has no manifest.json: generation has not finished (or it is not a dataset)."""


def read_manifest(root: str | Path) -> dict:
    root = Path(root)
    path = root / "manifest.json"
    if not path.exists():
        hint = (" (an unfinished run: re-run the same `revtransfer gen` command to finish it)"
                if (root / ".partial").exists() else "")
        raise DatasetIncompleteError(
            f"{root} is not a complete clevr_gen dataset: {path.name} is missing{hint}")
    return json.loads(path.read_text())


def read_labels(root: str | Path) -> dict[str, np.ndarray]:
    """labels.csv as {column: int64 array}, rows in index order."""
    with open(Path(root) / "labels.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = np.array([[int(v) for v in r] for r in reader], dtype=np.int64).reshape(-1, len(header))
    return {name: rows[:, j] for j, name in enumerate(header)}


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
        self.manifest = read_manifest(self.root)
        self.n_total = int(self.manifest["n"])
        self.height, self.width = self.manifest["image_shape"][:2]
        self.image_format = self.manifest["spec"]["image_format"]
        names = (target,) if isinstance(target, str) else tuple(target)
        for name in names:
            if name not in TARGETS:
                raise ValueError(f"target={name!r} is unknown; allowed: {', '.join(TARGETS)}")
        self.target = target
        self.labels = read_labels(self.root)
        if len(self.labels["index"]) != self.n_total:
            raise DatasetIncompleteError(f"{self.root}/labels.csv has {len(self.labels['index'])} "
                                         f"rows, manifest says {self.n_total}")
        self._targets = np.stack([self.labels[name] for name in names], axis=1)

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
        self._images = None  # opened lazily: one memory map per (worker) process

    def __len__(self) -> int:
        return len(self.indices)

    def _image(self, i: int) -> np.ndarray:
        if self.image_format == "npy":
            if self._images is None:
                self._images = np.load(self.root / "images.npy", mmap_mode="r")
            return self._images[i]
        from PIL import Image
        with Image.open(self.root / "images" / f"{i:06d}.png") as im:
            return np.asarray(im.convert("RGB"))

    def __getitem__(self, item: int):
        i = int(self.indices[item])
        img = torch.from_numpy(np.ascontiguousarray(self._image(i).transpose(2, 0, 1)))
        if self.transform is not None:
            img = self.transform(img)
        t = self._targets[i]
        label = torch.tensor(t[0] if isinstance(self.target, str) else t, dtype=torch.int64)
        return img, label

    def targets(self) -> np.ndarray:
        """Labels of the selected items, without touching the images."""
        t = self._targets[self.indices]
        return t[:, 0] if isinstance(self.target, str) else t

    def __getstate__(self):  # do not pickle an open memory map into DataLoader workers
        state = dict(self.__dict__)
        state["_images"] = None
        return state
