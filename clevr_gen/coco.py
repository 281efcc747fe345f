"""COCO instance annotations: compressed RLE of each object's visible pixels, bbox, area.

The RLE is COCO's own format (column-major run lengths, the first run counting zeros, packed into
the ASCII string of pycocotools' rleToString), written here in numpy so the generator does not
need pycocotools; tests check it decodes with pycocotools to the same masks.
"""
from __future__ import annotations

import numpy as np

from . import vocab

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


def run_lengths(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a boolean (H, W) mask, starting with a (possibly empty) run
    of zeros, as COCO's uncompressed RLE."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return counts


def rle_string(counts: list[int]) -> str:
    """Pack run lengths into COCO's compressed RLE string (pycocotools rleToString)."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]  # delta against the run two back (same colour)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as C's on a signed long
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def encode_mask(mask: np.ndarray) -> dict:
    """{'size': [H, W], 'counts': str}: a COCO compressed RLE."""
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": rle_string(run_lengths(mask))}


def annotations(object_ids: np.ndarray, scene: dict, image_id: int, mode: str) -> list[dict]:
    """One annotation per object with visible pixels (ids are assigned when the file is written)."""
    anns = []
    for k, obj in enumerate(scene["objects"]):
        mask = object_ids == k
        area = int(mask.sum())
        if area == 0:
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        x0, y0 = int(cols[0]), int(rows[0])
        bbox = [x0, y0, int(cols[-1]) + 1 - x0, int(rows[-1]) + 1 - y0]
        anns.append({
            "image_id": int(image_id),
            "category_id": category_id(obj, mode),
            "segmentation": encode_mask(mask),
            "area": area,
            "bbox": bbox,
            "iscrowd": 0,
            "object_index": k,
        })
    return anns


def image_entry(index: int, width: int, height: int, file_name: str) -> dict:
    return {"id": int(index), "file_name": file_name, "width": int(width), "height": int(height)}
