"""One scene from (spec, index, cell): sample, check every object is visible, render, label.

Scene i draws from its own random stream, SeedSequence((seed, split), spawn_key=(SCENE_STREAM,
i)), so its bytes do not depend on which worker makes it or in what order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import coco, labels, vocab
from .render import object_map, shade, trace, visible_pixels
from .scene import sample_scene, scene_labels

CELL_STREAM, SCENE_STREAM = 0, 1
SPLIT_CODES = {"pretrain": 0, "transfer": 1}
MAX_VISIBILITY_TRIES = 500


class VisibilityError(RuntimeError):
    pass


@dataclass
class SceneResult:
    scene: dict
    image: np.ndarray  # (H, W, 3) uint8
    object_ids: np.ndarray  # (H, W) int16, -1 = background


def cell_assignment(spec) -> np.ndarray:
    """(n, 2) uint8 (has_x, has_y) per scene: the exact cell counts, shuffled with the seed."""
    return labels.assign_cells(
        spec.cell_counts(), np.random.SeedSequence(_entropy(spec), spawn_key=(CELL_STREAM,)))


def _entropy(spec) -> tuple[int, int]:
    # The split is mixed in so a pretrain and a transfer set with the same seed share no scenes.
    return (spec.seed, SPLIT_CODES[spec.split])


def scene_rng(spec, index: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence(_entropy(spec), spawn_key=(SCENE_STREAM, index)))


def make_scene(spec, index: int, has_x: int, has_y: int) -> SceneResult:
    """Sample scenes for this cell until every object shows >= spec.min_pixels pixels; render it."""
    rng = scene_rng(spec, index)
    for attempt in range(1, MAX_VISIBILITY_TRIES + 1):
        scene = sample_scene(rng, has_x, has_y, spec, index)
        hits = trace(scene, spec.width, spec.height, spec.supersample)
        ids = object_map(hits)
        counts = visible_pixels(ids, len(scene["objects"]))
        if counts.min() >= spec.min_pixels:
            break
    else:
        raise VisibilityError(
            f"scene {index}: no layout in {MAX_VISIBILITY_TRIES} tries kept every object at >= "
            f"{spec.min_pixels} visible pixels at {spec.width}x{spec.height}; lower min_pixels or "
            f"max_objects, or render larger images")
    for obj, c in zip(scene["objects"], counts):
        obj["visible_pixels"] = int(c)
    # Built to the cell; checked here so a bug can never write a mislabelled scene.
    measured = scene_labels(scene, spec.x, spec.y)
    if measured != (has_x, has_y):
        raise AssertionError(f"scene {index}: labels {measured} differ from its cell "
                             f"{(has_x, has_y)}")
    return SceneResult(scene=scene, image=shade(hits), object_ids=ids)


def label_columns() -> list[str]:
    """labels.csv columns: index, has_x, has_y, n_objects, n_x, n_y, then one count per value."""
    cols = ["index", "has_x", "has_y", "n_objects", "n_x", "n_y"]
    for attr, values in vocab.ATTRIBUTES.items():
        cols += [f"n_{v}" for v in values]
    return cols


def label_row(scene: dict, spec) -> list[int]:
    objs = scene["objects"]
    row = [scene["image_index"], scene["has_x"], scene["has_y"], len(objs),
           sum(vocab.matches(o, spec.x) for o in objs),
           sum(vocab.matches(o, spec.y) for o in objs)]
    for attr, values in vocab.ATTRIBUTES.items():
        row += [sum(o[attr] == v for o in objs) for v in values]
    return row


def scene_record(result: SceneResult, spec) -> dict:
    """What a shard stores per scene besides the image: the scene, its labels row, its COCO
    annotations (when asked for)."""
    rec = {"scene": result.scene, "labels": label_row(result.scene, spec)}
    if spec.coco:
        rec["annotations"] = coco.annotations(result.object_ids, result.scene,
                                              result.scene["image_index"], spec.coco_categories)
    return rec
