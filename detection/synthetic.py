"""A tiny, easy COCO instance-segmentation set (coloured squares and discs on grey), written in
clevr_gen's layout (``coco.json`` + ``images.npy``, or PNG files): for tests, benchmarks and a demo
that needs no generator."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

CATEGORIES = ({"id": 1, "name": "square"}, {"id": 2, "name": "disc"})
# Saturated colours, all far from the grey background: the shape, not the hue, is the class.
PALETTE = np.array([[220, 40, 40], [40, 200, 40], [40, 80, 230], [230, 200, 30], [200, 40, 200], [20, 20, 20]],
                   np.uint8)


def _shape_mask(kind: str, h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    if kind == "square":
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_shapes_coco(out_dir: str | os.PathLike, n: int = 64, size: int = 80, max_objects: int = 3,
                     seed: int = 0, png: bool = False) -> Path:
    """Write ``n`` images with 1..max_objects non-overlapping shapes; returns ``out_dir``."""
    from pycocotools import mask as mask_util

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    coco = {"images": [], "annotations": [], "categories": [dict(c) for c in CATEGORIES]}
    for i in range(n):
        img = np.full((size, size, 3), 128, np.uint8)
        taken = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _try in range(20):
                r = int(rng.integers(size // 12, size // 6 + 1))
                cy, cx = (int(v) for v in rng.integers(r, size - r, 2))
                cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
                m = _shape_mask(cat["name"], size, size, cy, cx, r)
                if not (m & taken).any():
                    break
            else:
                continue
            taken |= m
            img[m] = PALETTE[int(rng.integers(len(PALETTE)))]
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": cat["id"],
                "bbox": [x, y, w, h], "area": float(m.sum()), "iscrowd": 0, "segmentation": rle})
        images[i] = img
        entry = {"id": i + 1, "index": i, "width": size, "height": size, "file_name": f"{i:06d}.png"}
        coco["images"].append(entry)
    if png:
        from PIL import Image

        for i, img in enumerate(images):
            Image.fromarray(img).save(out / f"{i:06d}.png")
    else:
        np.save(out / "images.npy", images)
    (out / "coco.json").write_text(json.dumps(coco))
    return out
