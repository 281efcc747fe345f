"""Tiny clevr_gen-format dataset dirs written directly (no generator), and tiny models, for the
pretraining, probe and sweep tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY_VIT = dict(patch_size=4, embed_dim=16, depth=2, num_heads=2)


def write_dataset(path, n: int = 160, size: int = 16, seed: int = 0, signal: bool = True,
                  p_x: float = 0.5, transfer: bool = False) -> Path:
    """A dataset dir in the clevr_gen format. X is a bright green square in the top-left quarter,
    Y a bright red one in the bottom-right quarter, on noise; ``signal=False`` draws no squares
    (labels are then unlearnable). Transfer sets have no X."""
    rng = np.random.default_rng(seed)
    has_x = np.zeros(n, np.int64) if transfer else (rng.random(n) < p_x).astype(np.int64)
    has_y = rng.integers(0, 2, n)
    images = rng.integers(0, 80, (n, size, size, 3), dtype=np.uint8)
    if signal:
        h = size // 2
        images[has_x == 1, :h, :h, 1] = 240
        images[has_y == 1, h:, h:, 0] = 240
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "images.npy", images)
    rows = ["index,has_x,has_y,n_objects"] + [f"{i},{x},{y},3" for i, (x, y) in enumerate(zip(has_x, has_y))]
    (path / "labels.csv").write_text("\n".join(rows) + "\n")
    (path / "manifest.json").write_text(json.dumps({"seed": seed, "n": n, "image_shape": [size, size, 3],
                                                    "signal": signal, "transfer": transfer}))
    return path
