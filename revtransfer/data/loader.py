"""Batches straight from a clevr_gen dataset's memory-mapped ``images.npy``.

The data path is: memory-mapped uint8 (N, H, W, 3) -> fancy-indexed batch (a copy of just the
batch) read by a background thread -> uint8 tensor to the device -> float and normalised there.
Nothing is decoded or converted per image on the host, so a 2-core laptop or a GPU's host never
starves the model. The order of every epoch is a pure function of (seed, epoch), so resumed and
distributed runs see exactly the batches of an uninterrupted single-process run.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Iterator, Sequence

import numpy as np
import torch


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
