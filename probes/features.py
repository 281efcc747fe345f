"""Frozen-backbone features: pooled pre-logits (``forward_head(..., pre_logits=True)``), extracted
once per (checkpoint, dataset, indices) and cached as ``.npy`` next to the run."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from revtransfer.atomic import atomic_write
from revtransfer.data import BatchLoader, ClevrArrays, Normalize


@torch.inference_mode()
def extract_features(model: nn.Module, images: np.ndarray, indices: np.ndarray, normalize: Normalize, *,
                     batch_size: int = 256, progress: bool = False, desc: str = "features") -> np.ndarray:
    """float32 (len(indices), model.num_features), in the order of ``indices`` (sorted)."""
    indices = np.sort(np.asarray(indices))
    model.eval()
    dummy = np.zeros(len(images), dtype=np.int64)
    loader = BatchLoader(images, dummy, indices, batch_size, shuffle=False,
                         pin_memory=normalize.device.type == "cuda")
    out = np.empty((len(indices), int(model.num_features)), dtype=np.float32)
    pos = 0
    for x, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        feats = model.forward_head(model.forward_features(normalize(x)), pre_logits=True)
        out[pos:pos + len(feats)] = feats.float().cpu().numpy()
        pos += len(feats)
    assert pos == len(indices)
    return out


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def cached_features(cache_dir: str | os.PathLike, key_parts: list[str], model: nn.Module, data: ClevrArrays,
                    indices: np.ndarray, normalize: Normalize, **kwargs) -> np.ndarray:
    """:func:`extract_features`, memoised in ``cache_dir`` under a hash of ``key_parts`` (which
    must identify the weights) plus the dataset fingerprint and the indices."""
    indices = np.sort(np.asarray(indices))
    h = hashlib.sha256("|".join([*key_parts, data.fingerprint]).encode())
    h.update(indices.astype(np.int64).tobytes())
    path = Path(cache_dir) / f"features-{h.hexdigest()[:20]}.npy"
    if path.exists():
        try:
            feats = np.load(path)
            if feats.shape[0] == len(indices):
                return feats
        except (ValueError, OSError):
            pass  # a torn cache file: recompute it
    feats = extract_features(model, data.images, indices, normalize, **kwargs)
    atomic_write(path, lambda tmp: _save_npy(tmp, feats))
    return feats


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object, so np.save does not append ".npy" to the temp name
        np.save(f, array)
