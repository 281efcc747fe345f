"""Batches straight from a clevr_gen dataset's memory-mapped ``images.npy``.

The data path is: memory-mapped uint8 (N, H, W, 3) -> fancy-indexed batch (a copy of just the
batch) read by a background thread -> uint8 tensor to the device -> float and normalised there.
Nothing is decoded or converted per image on the host, so a 2-core laptop or a GPU's host never
starves the model. The order of every epoch is a pure function of (seed, epoch), so resumed and
distributed runs see exactly the batches of an uninterrupted single-process run.
"""
from __future__ import annotations

import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Sequence

# Re-exported: the split helpers the loop uses live in revtransfer.data.
__all__ = ["BatchLoader", "ClevrArrays", "DatasetError", "Normalize", "holdout_split", "open_dataset",
           "split_indices", "subset_fraction"]

import numpy as np
import torch

from revtransfer.data import DatasetIncompleteError, read_labels, split_indices, subset_fraction
from revtransfer.data.clevr import read_manifest


class DatasetError(ValueError):
    pass


@dataclass
class ClevrArrays:
    """A clevr_gen dataset dir opened read-only: memory-mapped images plus the label table."""

    path: Path
    images: np.ndarray            # uint8 (N, H, W, 3), memory-mapped
    labels: dict[str, np.ndarray]  # labels.csv columns (index, has_x, has_y, n_objects, ...)
    manifest: dict

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def column(self, name: str) -> np.ndarray:
        if name not in self.labels:
            raise DatasetError(f"{self.path}/labels.csv has no column {name!r}; it has {', '.join(self.labels)}")
        return self.labels[name]

    def binary_labels(self, name: str) -> np.ndarray:
        y = self.column(name).astype(np.int64)
        bad = set(np.unique(y).tolist()) - {0, 1}
        if bad:
            raise DatasetError(f"{self.path}/labels.csv column {name!r} is not binary (values {sorted(bad)})")
        return y

    @property
    def fingerprint(self) -> str:
        """Identifies the dataset's content: from its manifest (seed, spec, stats), not its path."""
        import hashlib

        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_dataset(path: str | Path) -> ClevrArrays:
    """Open a complete clevr_gen dataset dir (``manifest.json`` present: it is written last).

    Unlike the item-wise :class:`revtransfer.data.ClevrDataset`, this hands out the whole
    memory map, so that a batch is one fancy-indexed read instead of ``batch_size`` item reads."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"dataset dir {path} does not exist; make one with `revtransfer gen`")
    try:
        manifest = read_manifest(path)
    except DatasetIncompleteError as e:
        raise DatasetError(f"dataset dir {path} is incomplete: {e}") from e
    for name in ("images.npy", "labels.csv"):
        if not (path / name).exists():
            raise DatasetError(f"dataset dir {path} lacks {name}"
                               + (" (a PNG-format dataset: pretraining reads images.npy; regenerate "
                                  "with the npy format)" if name == "images.npy" else ""))
    try:
        images = np.load(path / "images.npy", mmap_mode="r")
    except (ValueError, OSError) as e:
        raise DatasetError(f"{path / 'images.npy'} is unreadable: {e}") from e
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"{path / 'images.npy'} must be uint8 (N, H, W, 3); it is {images.dtype} {images.shape}")
    labels = read_labels(path)
    n_rows = len(next(iter(labels.values()))) if labels else 0
    if n_rows != len(images):
        raise DatasetError(f"{path}: labels.csv has {n_rows} rows but images.npy {len(images)} images")
    if "index" in labels and not np.array_equal(labels["index"], np.arange(n_rows)):
        raise DatasetError(f"{path}/labels.csv: column 'index' is not 0..N-1 in order")
    return ClevrArrays(path, images, labels, manifest)


# --- splits ---------------------------------------------------------------------------------------
def holdout_split(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sorted index arrays of ``range(n)``; the same for every training seed and
    fraction (``revtransfer.data.split_indices`` with an empty test part)."""
    parts = split_indices(n, (1 - val_frac, val_frac, 0.0), seed)
    if not len(parts["val"]) or not len(parts["train"]):
        raise DatasetError(f"val_frac={val_frac} of {n} images leaves an empty train or held-out part")
    return parts["train"], parts["val"]


# --- batches ---------------------------------------------------------------------------------------
class BatchLoader:
    """Iterates batches of ``(uint8 images (b, H, W, 3), int64 labels (b,))`` over ``indices``.

    ``batch_size`` is the global batch. With ``world > 1`` each rank gets every ``world``-th
    sample of each global batch; for training (``even=True``) a final short batch is cut to a
    multiple of ``world`` so all ranks hold equally many samples and averaging their mean
    gradients equals the global-batch gradient of one process.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, batch_size: int, *,
                 shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1, even: bool | None = None,
                 prefetch: int = 2, pin_memory: bool = False):
        if batch_size < world:
            raise ValueError(f"batch_size={batch_size} is smaller than the number of processes ({world})")
        self.images, self.labels = images, labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.even = shuffle if even is None else even
        self.prefetch, self.pin_memory = prefetch, pin_memory
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return self.indices[np.random.default_rng([self.seed, self.epoch]).permutation(len(self.indices))]

    def _local_batches(self) -> Iterator[np.ndarray]:
        order = self.order()
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            if self.even:
                batch = batch[: len(batch) - len(batch) % self.world]
            local = batch[self.rank::self.world]
            if len(local):
                yield local

    def __len__(self) -> int:
        return sum(1 for _ in self._local_batches())

    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return sum(len(b) for b in self._local_batches())

    def _fetch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # Sorted reads are sequential in the memory map; the order inside a batch is irrelevant
        # to a mean loss, and sorting keeps it deterministic.
        idx = np.sort(idx)
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        y = torch.from_numpy(np.ascontiguousarray(self.labels[idx]))
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._local_batches()
        if self.prefetch <= 0:
            for b in batches:
                yield self._fetch(b)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prefetch") as pool:
            pending = deque(pool.submit(self._fetch, b) for b in islice(batches, self.prefetch))
            while pending:
                ready = pending.popleft().result()
                nxt = next(batches, None)
                if nxt is not None:
                    pending.append(pool.submit(self._fetch, nxt))
                yield ready


class Normalize:
    """uint8 NHWC on the host -> normalised float NCHW on ``device``: ``(x / 255 - mean) / std``,
    done as one multiply-add on the device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, dtype: torch.dtype):
        mean_t = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).to(device=device, dtype=dtype)
        self.shift = (mean_t / std_t).to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(self.dtype)
        return torch.addcmul(-self.shift, x, self.scale)
