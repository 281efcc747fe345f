"""One scene from (spec, index, cell): sample, check every object is visible, render, label.

Scene i draws from its own random stream, SeedSequence((seed, split), spawn_key=(SCENE_STREAM,
i)), so its bytes do not depend on which worker makes it or in what order.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from . import coco, labels, vocab
from .render import object_map, shade, trace
from .scene import draw_scene, scene_dict, scene_labels

CELL_STREAM, SCENE_STREAM = 0, 1
SPLIT_CODES = {"pretrain": 0, "transfer": 1}
MAX_VISIBILITY_TRIES = 500
# Stages make_scene and scene_record time when asked (clevr_gen.bench reports them).
STAGES = ("sample", "trace", "object_map", "shade", "scene_dict", "labels", "coco_rle")


class VisibilityError(RuntimeError):
    pass


@dataclass
class SceneResult:
    scene: dict
    image: np.ndarray  # (H, W, 3) uint8
    object_ids: np.ndarray  # (H, W) int16, -1 = background
    attempts: int = 1  # scenes drawn until one passed the visibility check


# The last primary pass of this thread: the next one reuses its buffers.
_last_hits = threading.local()


class _Laps:
    """Adds the seconds between calls to a dict of stage totals; does nothing without one."""

    def __init__(self, totals: dict | None):
        self.totals = totals
        self.last = time.perf_counter() if totals is not None else 0.0

    def __call__(self, stage: str) -> None:
        if self.totals is not None:
            now = time.perf_counter()
            self.totals[stage] = self.totals.get(stage, 0.0) + now - self.last
            self.last = now


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


def make_scene(spec, index: int, has_x: int, has_y: int, timings: dict | None = None
               ) -> SceneResult:
    """Draw scenes for this cell until every object shows >= spec.min_pixels pixels; render it.

    Only the primary pass runs for a draw that fails; shading and the scene dict wait for one
    that passes. `timings`: if given, seconds per stage (STAGES) are added to it.
    """
    lap = _Laps(timings)
    rng = scene_rng(spec, index)
    hits = getattr(_last_hits, "hits", None)
    for attempt in range(1, MAX_VISIBILITY_TRIES + 1):  # noqa: B007  (kept: SceneResult.attempts)
        draw = draw_scene(rng, has_x, has_y, spec, index)
        geometry = draw.geometry()
        lap("sample")
        hits = _last_hits.hits = trace(geometry, spec.width, spec.height, spec.supersample,
                                       reuse=hits)
        lap("trace")
        ids, visible = object_map(hits)
        lap("object_map")
        if visible.min() >= spec.min_pixels:
            break
    else:
        raise VisibilityError(
            f"scene {index}: no layout in {MAX_VISIBILITY_TRIES} tries kept every object at >= "
            f"{spec.min_pixels} visible pixels at {spec.width}x{spec.height}; lower min_pixels or "
            f"max_objects, or render larger images")
    image = shade(hits)
    lap("shade")
    scene = scene_dict(draw, spec, index, visible)
    # Built to the cell; checked here so a bug can never write a mislabelled scene.
    measured = scene_labels(scene, spec.x, spec.y)
    if measured != (has_x, has_y):
        raise AssertionError(f"scene {index}: labels {measured} differ from its cell "
                             f"{(has_x, has_y)}")
    lap("scene_dict")
    return SceneResult(scene=scene, image=image, object_ids=ids, attempts=attempt)


def label_columns() -> list[str]:
    """labels.csv columns: index, has_x, has_y, n_objects, n_x, n_y, then one count per value."""
    cols = ["index", "has_x", "has_y", "n_objects", "n_x", "n_y"]
    for values in vocab.ATTRIBUTES.values():
        cols += [f"n_{v}" for v in values]
    return cols


def label_row(scene: dict, spec) -> list[int]:
    objs = scene["objects"]
    row = [scene["image_index"], scene["has_x"], scene["has_y"], len(objs),
           sum(vocab.matches(o, spec.x) for o in objs),
           sum(vocab.matches(o, spec.y) for o in objs)]
    for attr, values in vocab.ATTRIBUTES.items():
        present = [o[attr] for o in objs]
        row += [present.count(v) for v in values]
    return row


def scene_record(result: SceneResult, spec, timings: dict | None = None) -> dict:
    """What a shard stores per scene besides the image: the scene, its labels row, its COCO
    annotations (when asked for)."""
    lap = _Laps(timings)
    rec = {"scene": result.scene, "labels": label_row(result.scene, spec)}
    lap("labels")
    if spec.coco:
        rec["annotations"] = coco.annotations(result.object_ids, result.scene,
                                              result.scene["image_index"], spec.coco_categories)
        lap("coco_rle")
    return rec


def load_kernels() -> None:
    """Compile every kernel (the first run after an install or an edit; later ones load numba's
    cache) by making one small scene with COCO annotations."""
    from .spec import DatasetSpec
    spec = DatasetSpec(n=2, p_x=0.5, p_y=0.5, corr=0.0, width=32, height=32, coco=True)
    scene_record(make_scene(spec, 0, 1, 0), spec)
