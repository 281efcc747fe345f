"""Scene sampling: CLEVR's placement rules, built to a label cell (has_x, has_y).

A scene in a cell with has_x=1 gets one inserted object matching X (its free attributes drawn
uniformly among those that do not complete a label whose cell is 0); every other object is drawn
uniformly among the object types that complete no label whose cell is 0. So a scene's labels
always equal its cell. Placement follows CLEVR's generator: x, y ~ U(-3, 3), edge-to-edge distance
at least 0.25, and at least 0.4 apart along the camera's left/right and front/behind axes.

All floats are rounded before rendering, so a scene read back from scenes.json re-renders to the
same bytes.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from . import vocab
from .camera import (CAMERA_JITTER, CAMERA_LOCATION, FOCAL_LENGTH_MM, LIGHT_JITTER, LIGHT_LOCATIONS,
                     SENSOR_WIDTH_MM, Camera)

PLACEMENT_HALF_EXTENT = 3.0
MIN_DIST = 0.25  # edge to edge
MARGIN = 0.4  # along the camera's cardinal ground directions
MAX_PLACEMENT_TRIES = 50  # per object, as CLEVR; then the whole layout is redrawn
MAX_LAYOUT_TRIES = 1000
DECIMALS = 5


class SceneSamplingError(RuntimeError):
    pass


def _round(values) -> list[float]:
    return [round(float(v), DECIMALS) for v in values]


@functools.lru_cache(maxsize=64)
def _allowed_types(x_items: tuple, y_items: tuple, role: str, has_x: int, has_y: int
                   ) -> tuple[tuple[tuple[str, str], ...], ...]:
    """Object types (attribute item tuples) allowed for `role` ('x', 'y' or 'other') in a cell."""
    x, y = dict(x_items), dict(y_items)
    out = []
    for obj in vocab.all_combinations():
        is_x, is_y = vocab.matches(obj, x), vocab.matches(obj, y)
        if role == "x" and not is_x or role == "y" and not is_y:
            continue
        # Never complete a label whose cell says 0.
        if (is_x and not has_x) or (is_y and not has_y):
            continue
        out.append(tuple(obj.items()))
    return tuple(out)


def _draw_layout(rng: np.random.Generator, radii: list[float], cube_flags: list[bool],
                 directions: dict) -> list[tuple[float, float, float]] | None:
    """CLEVR's rejection placement; None if some object found no spot in MAX_PLACEMENT_TRIES.

    Each object draws MAX_PLACEMENT_TRIES candidate spots at once and takes the first that keeps
    the edge-to-edge distance and the directional margins to every object already placed.
    """
    axes = np.array([directions["left"][:2], directions["behind"][:2]]).T  # (2, 2)
    n = len(radii)
    xy = np.empty((n, 2))
    r_placed = np.empty(n)
    candidates = rng.uniform(-PLACEMENT_HALF_EXTENT, PLACEMENT_HALF_EXTENT,
                             size=(n, MAX_PLACEMENT_TRIES, 2))
    for i, (r, is_cube) in enumerate(zip(radii, cube_flags)):
        cand = candidates[i]
        if i:
            d = cand[:, None, :] - xy[None, :i, :]  # (tries, placed, 2)
            dist_ok = np.hypot(d[..., 0], d[..., 1]) - r - r_placed[:i] >= MIN_DIST
            m = np.abs(d @ axes)  # offsets along left and behind
            margin_ok = ~((m > 0) & (m < MARGIN)).any(axis=-1)
            good = np.flatnonzero((dist_ok & margin_ok).all(axis=1))
            if len(good) == 0:
                return None
            cand = cand[good[:1]]
        xy[i] = cand[0]
        r_placed[i] = r / math.sqrt(2) if is_cube else r
    return [(float(x), float(y), float(rr)) for (x, y), rr in zip(xy, r_placed)]


def sample_scene(rng: np.random.Generator, has_x: int, has_y: int, spec, index: int) -> dict:
    """Draw one scene (a CLEVR-schema dict) whose labels are exactly (has_x, has_y)."""
    cam_loc = np.array(CAMERA_LOCATION) + rng.uniform(-CAMERA_JITTER, CAMERA_JITTER, 3)
    cam_loc = np.array(_round(cam_loc))
    camera = Camera(cam_loc, spec.width, spec.height)
    directions = camera.ground_directions()
    lights = {}
    for name, loc in LIGHT_LOCATIONS.items():
        jitter = rng.uniform(-LIGHT_JITTER, LIGHT_JITTER, 3)
        lights[name] = {"location": _round(np.array(loc) + jitter), "jitter": _round(jitter)}

    n_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    roles = (["x"] if has_x else []) + (["y"] if has_y else [])
    roles += ["other"] * (n_objects - len(roles))
    x_items, y_items = tuple(spec.x.items()), tuple(spec.y.items())
    attrs = []
    for role in roles:
        types = _allowed_types(x_items, y_items, role, has_x, has_y)
        attrs.append(dict(types[int(rng.integers(len(types)))]))

    radii = [vocab.SIZES[a["size"]] for a in attrs]
    is_cube = [a["shape"] == "cube" for a in attrs]
    for _ in range(MAX_LAYOUT_TRIES):
        placed = _draw_layout(rng, radii, is_cube, directions)
        if placed is not None:
            break
    else:
        raise SceneSamplingError(f"scene {index}: could not place {n_objects} objects in "
                                 f"{MAX_LAYOUT_TRIES} layouts; lower max_objects")
    thetas = rng.uniform(0, 360, n_objects)

    coords_all = [_round(p) for p in placed]  # z: resting on the ground, centre at height r
    pixels = camera.project(np.array(coords_all))
    objects = []
    for a, role, coords, pix, theta in zip(attrs, roles, coords_all, pixels, thetas):
        objects.append({
            "shape": a["shape"], "size": a["size"], "material": a["material"],
            "color": a["color"], "3d_coords": coords, "rotation": round(float(theta), DECIMALS),
            "pixel_coords": [int(round(pix[0])), int(round(pix[1])), round(float(pix[2]), 4)],
            "role": role,
        })
    return {
        "image_index": index,
        "image_filename": image_filename(index),
        "split": spec.split,
        "objects": objects,
        "directions": directions,
        "camera": {"location": _round(cam_loc), "look_at": [0.0, 0.0, 0.0],
                   "jitter": _round(cam_loc - np.array(CAMERA_LOCATION)),
                   "focal_length_mm": FOCAL_LENGTH_MM, "sensor_width_mm": SENSOR_WIDTH_MM},
        "lights": lights,
        "has_x": int(has_x),
        "has_y": int(has_y),
    }


def image_filename(index: int) -> str:
    return f"images/{index:06d}.png"


def scene_labels(scene: dict, x: dict, y: dict) -> tuple[int, int]:
    """(has_x, has_y) measured from the scene's objects."""
    objs = scene["objects"]
    return (int(any(vocab.matches(o, x) for o in objs)),
            int(any(vocab.matches(o, y) for o in objs)))


def relationships(scene: dict, eps: float = 0.2) -> dict[str, list[list[int]]]:
    """CLEVR's spatial relationships (left/right/front/behind), computed from 3d_coords and the
    scene's directions, for users who need them (not stored, to keep scenes.json small)."""
    out = {}
    coords = [np.array(o["3d_coords"]) for o in scene["objects"]]
    for name in ("left", "right", "front", "behind"):
        d = np.array(scene["directions"][name])
        out[name] = [[j for j, cj in enumerate(coords) if j != i and float((cj - ci) @ d) > eps]
                     for i, ci in enumerate(coords)]
    return out
