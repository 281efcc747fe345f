"""COCO instance annotations: compressed RLE of each object's visible pixels, bbox, area.

The RLE is COCO's own format (column-major run lengths, the first run counting zeros, packed into
the ASCII string of pycocotools' rleToString), written here (a numba kernel encoding every object
of an object map in one pass) so the generator does not need pycocotools; tests check it equals
pycocotools' encoding.
"""
from __future__ import annotations

import numpy as np

from . import vocab
from .jit import kernel

SUPERCATEGORY = "clevr_object"


def categories(mode: str) -> list[dict]:
    """COCO categories: one per shape ('shape') or per shape+color+material
    ('shape_color_material'); ids start at 1, in vocab order."""
    if mode == "shape":
        names = list(vocab.SHAPES)
    elif mode == "shape_color_material":
        names = [f"{color} {material} {shape}" for shape in vocab.SHAPES
                 for color in vocab.COLORS for material in vocab.MATERIALS]
    else:
        raise ValueError(f"unknown COCO category mode {mode!r}; allowed: shape, "
                         f"shape_color_material")
    return [{"id": i + 1, "name": n, "supercategory": SUPERCATEGORY} for i, n in enumerate(names)]


def category_id(obj: dict, mode: str) -> int:
    if mode == "shape":
        return vocab.SHAPES.index(obj["shape"]) + 1
    n_colors, n_materials = len(vocab.COLORS), len(vocab.MATERIALS)
    return (vocab.SHAPES.index(obj["shape"]) * n_colors * n_materials
            + list(vocab.COLORS).index(obj["color"]) * n_materials
            + vocab.MATERIALS.index(obj["material"]) + 1)


@kernel
def _encode_objects(ids, n):
    """Masks ids == k for k < n of an (H, W) object map, encoded: (area (n,), bbox (n, 4) as
    x, y, w, h, chars (uint8), offsets (n + 1,)): object k's compressed RLE string is
    chars[offsets[k]:offsets[k + 1]].

    COCO's RLE: column-major run lengths, the first run counting zeros (possibly none), each
    from the third on stored as the difference to the run two back, in 5-bit groups with a
    continuation bit, offset by 48 into printable ASCII (pycocotools rleToString)."""
    h, w = ids.shape
    area = np.zeros(n, dtype=np.int64)
    box = np.empty((n, 4), dtype=np.int64)  # x0, y0, x1, y1 inclusive
    for k in range(n):  # (loops: numba's slice assignment is slow to compile)
        box[k, 0], box[k, 1], box[k, 2], box[k, 3] = w, h, -1, -1
    for y in range(h):
        for x in range(w):
            k = ids[y, x]
            if 0 <= k < n:
                area[k] += 1
                box[k, 0], box[k, 1] = min(box[k, 0], x), min(box[k, 1], y)
                box[k, 2], box[k, 3] = max(box[k, 2], x), max(box[k, 3], y)
    # Runs: only the object's columns are scanned; all before and after them is zeros.
    capacity = 0
    for k in range(n):
        capacity += (box[k, 2] - box[k, 0] + 1) * h + 2 if area[k] else 1
    runs = np.empty(capacity, dtype=np.int64)
    run_offsets = np.zeros(n + 1, dtype=np.int64)
    m = 0
    for k in range(n):
        if area[k] == 0:  # all zeros
            runs[m] = h * w
            m += 1
        else:
            x0, x1 = box[k, 0], box[k, 2]
            value, run = False, x0 * h
            for x in range(x0, x1 + 1):
                for y in range(h):
                    v = ids[y, x] == k
                    if v == value:
                        run += 1
                    else:
                        runs[m] = run
                        m += 1
                        value, run = v, 1
            tail = (w - 1 - x1) * h
            if value:
                runs[m] = run
                m += 1
                run = tail
            else:
                run += tail
            if run:
                runs[m] = run
                m += 1
        run_offsets[k + 1] = m
    # At most 13 characters of 5 bits per int64 run.
    chars = np.empty(13 * m, dtype=np.uint8)
    offsets = np.zeros(n + 1, dtype=np.int64)
    c = 0
    for k in range(n):
        start = run_offsets[k]
        for i in range(start, run_offsets[k + 1]):
            x = runs[i] - runs[i - 2] if i - start > 2 else runs[i]
            more = True
            while more:
                group = x & 0x1F
                x >>= 5  # arithmetic shift, as C's on a signed long
                more = (x != -1) if group & 0x10 else (x != 0)
                chars[c] = (group | 0x20 if more else group) + 48
                c += 1
        offsets[k + 1] = c
    bbox = np.empty((n, 4), dtype=np.int64)
    for k in range(n):
        bbox[k, 0], bbox[k, 1] = box[k, 0], box[k, 1]
        bbox[k, 2], bbox[k, 3] = box[k, 2] + 1 - box[k, 0], box[k, 3] + 1 - box[k, 1]
    return area, bbox, chars[:c], offsets


def encode_mask(mask: np.ndarray) -> dict:
    """{'size': [H, W], 'counts': str}: a COCO compressed RLE."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    _, _, chars, offsets = _encode_objects(np.where(mask, 0, -1).astype(np.int16), 1)
    return {"size": [int(h), int(w)], "counts": chars[offsets[0]:offsets[1]].tobytes().decode()}


def annotations(object_ids: np.ndarray, scene: dict, image_id: int, mode: str) -> list[dict]:
    """One annotation per object with visible pixels (ids are assigned when the file is written)."""
    h, w = object_ids.shape
    area, bbox, chars, offsets = _encode_objects(object_ids, len(scene["objects"]))
    text, offsets = chars.tobytes().decode(), offsets.tolist()
    anns = []
    for k, (obj, a, b) in enumerate(zip(scene["objects"], area.tolist(), bbox.tolist())):
        if a == 0:
            continue
        anns.append({
            "image_id": int(image_id),
            "category_id": category_id(obj, mode),
            "segmentation": {"size": [h, w], "counts": text[offsets[k]:offsets[k + 1]]},
            "area": a,
            "bbox": b,
            "iscrowd": 0,
            "object_index": k,
        })
    return anns


def image_entry(index: int, width: int, height: int, file_name: str) -> dict:
    return {"id": int(index), "file_name": file_name, "width": int(width), "height": int(height)}
