"""A frozen backbone's features, kept by the content of its input image.

A frozen backbone is a fixed function of its input, so an image it has seen before need not be
run again: its feature map is looked up by a hash of the image's bytes (after the detector's
normalisation and padding), together with the dtype and autocast state the features were made
under and its device, so training (bf16) and evaluation (fp32) never share an entry; loading
weights into the backbone empties it. A lookup returns what the
backbone would compute (the same function; only the batch around an image may differ, which
changes float summation order at most). Whether it saves anything depends on the augmentation:
with flips only, each image has two inputs and a run of several epochs hits from the second on;
with random rescaling nearly every input is new, and the cache only costs the hashing (its hit
rate says so: :attr:`FeatureCache.stats`).

Bounded: past ``max_bytes`` the least recently used maps are dropped.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch


class FeatureCache:
    """Feature maps by input content; LRU within ``max_bytes``."""

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes={max_bytes}: give a positive size")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._maps: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    @staticmethod
    def key(image: torch.Tensor, context: str) -> bytes:
        """A digest of one input image (C, H, W), its shape and dtype, and ``context``."""
        data = image.detach().contiguous()
        h = hashlib.blake2b(digest_size=20)
        h.update(f"{context}|{tuple(data.shape)}|{data.dtype}".encode())
        h.update(data.cpu().view(torch.uint8).numpy().tobytes() if data.dtype == torch.bfloat16
                 else data.cpu().numpy().tobytes())
        return h.digest()

    def get(self, key: bytes) -> torch.Tensor | None:
        fmap = self._maps.get(key)
        if fmap is None:
            self.misses += 1
            return None
        self._maps.move_to_end(key)
        self.hits += 1
        return fmap

    def put(self, key: bytes, fmap: torch.Tensor) -> None:
        if key in self._maps:
            return
        size = fmap.numel() * fmap.element_size()
        if size > self.max_bytes:
            return
        self._maps[key] = fmap
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._maps.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        """Forget every map (the backbone's weights changed: a checkpoint was loaded)."""
        self._maps.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._maps)

    @property
    def stats(self) -> dict:
        looked = self.hits + self.misses
        return {"entries": len(self), "megabytes": round(self.nbytes / 2**20, 1), "hits": self.hits,
                "misses": self.misses, "hit_rate": round(self.hits / looked, 4) if looked else None}


def cached_forward(cache: FeatureCache, images: torch.Tensor, compute, context: str) -> torch.Tensor:
    """``compute(images)`` (B, ...) -> (B, ...), running ``compute`` only on the images the cache
    does not hold, and storing what it computes."""
    keys = [FeatureCache.key(img, context) for img in images]
    found = [cache.get(k) for k in keys]
    todo = [i for i, f in enumerate(found) if f is None]
    if todo:
        fresh = compute(images[todo] if len(todo) < len(keys) else images)
        for j, i in enumerate(todo):
            found[i] = fresh[j].clone()  # its own storage, not a view pinning the whole batch
            cache.put(keys[i], found[i])
    out = torch.stack(found)
    # channels-last, whatever mix of hits and misses: a ViT's token map is laid out so already, and
    # it is the layout the pyramid's convolutions run fastest in
    return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out
