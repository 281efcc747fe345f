"""Deterministic index splits: train/val/test, and nested pretrain fractions."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from revtransfer.errors import DatasetError

SPLIT_NAMES = ("train", "val", "test")


def split_indices(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """Shuffle range(n) with `seed` and cut it into train/val/test by `fractions` (summing to 1).

    Sizes are floor(n * f) for val and test, the rest goes to train; each part is sorted (so
    reading a memory-mapped file stays sequential). Same (n, fractions, seed) -> same split.
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or abs(fr.sum() - 1) > 1e-9:
        raise ValueError(f"fractions={tuple(fractions)} must be three non-negative numbers "
                         f"(train, val, test) summing to 1")
    perm = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))).permutation(n)
    n_val, n_test = int(n * fr[1]), int(n * fr[2])
    n_train = n - n_val - n_test
    parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
    return {name: np.sort(p) for name, p in zip(SPLIT_NAMES, parts)}


def subset_fraction(indices: Sequence[int] | np.ndarray, fraction: float, seed: int = 0
                    ) -> np.ndarray:
    """A seeded random `fraction` of `indices` (round(fraction * len), at least 1 if fraction > 0).

    Nested: for one seed, the subset at a smaller fraction is contained in the subset at a larger
    one (both are prefixes of the same seeded permutation), so pretrain-fraction sweeps only add
    data as the fraction grows.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must lie in (0, 1]")
    idx = np.asarray(indices)
    k = max(1, round(fraction * len(idx))) if len(idx) else 0
    perm = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(len(idx))
    return np.sort(idx[perm[:k]])


def holdout_split(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sorted index arrays of ``range(n)``; the same for every training seed and
    fraction (:func:`split_indices` with an empty test part)."""
    parts = split_indices(n, (1 - val_frac, val_frac, 0.0), seed)
    if not len(parts["val"]) or not len(parts["train"]):
        raise DatasetError(f"val_frac={val_frac} of {n} images leaves an empty train or held-out part")
    return parts["train"], parts["val"]
