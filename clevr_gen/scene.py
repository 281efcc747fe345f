"""Scene sampling: CLEVR's placement rules, built to a label cell (has_x, has_y).

A scene in a cell with has_x=1 gets one inserted object matching X (its free attributes drawn
uniformly among those that do not complete a label whose cell is 0); every other object is drawn
uniformly among the object types that complete no label whose cell is 0. So a scene's labels
always equal its cell. Placement follows CLEVR's generator: x, y ~ U(-3, 3), edge-to-edge distance
at least 0.25, and at least 0.4 apart along the camera's left/right and front/behind axes.

A scene is first drawn as numbers (`draw_scene`); the pipeline renders those and builds the
CLEVR-schema dict (`scene_dict`) only for a draw that passes the visibility check. All floats
are rounded as scenes.json stores them before rendering, so a scene read back from scenes.json
re-renders to the same bytes.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import vocab
from .camera import (
    CAMERA_JITTER,
    CAMERA_LOCATION,
    FOCAL_LENGTH_MM,
    LIGHT_JITTER,
    LIGHT_LOCATIONS,
    SENSOR_WIDTH_MM,
    Camera,
)
from .jit import kernel
from .render import LIGHT_NAMES, SceneGeometry, look

PLACEMENT_HALF_EXTENT = 3.0
MIN_DIST = 0.25  # edge to edge
MARGIN = 0.4  # along the camera's cardinal ground directions
MAX_PLACEMENT_TRIES = 50  # per object, as CLEVR; then the whole layout is redrawn
MAX_LAYOUT_TRIES = 1000
DECIMALS = 5

_CAMERA_BASE = np.array(CAMERA_LOCATION)
_LIGHT_BASE = np.array([LIGHT_LOCATIONS[name] for name in LIGHT_NAMES])
# Per object type: CLEVR's size radius r (placement uses it for the object being placed), and
# its half-height, which is also its footprint radius once placed (a cube's half-size is
# r / sqrt(2)).
_TYPE_RADIUS = np.array([vocab.SIZES[t["size"]] for t in vocab.OBJECT_TYPES])
_TYPE_HALF_HEIGHT = np.where([t["shape"] == "cube" for t in vocab.OBJECT_TYPES],
                             _TYPE_RADIUS / math.sqrt(2), _TYPE_RADIUS)
_TYPE_LOOK = np.array([look(t) for t in vocab.OBJECT_TYPES])


class SceneSamplingError(RuntimeError):
    pass


def _round(values) -> np.ndarray:
    return np.round(np.asarray(values, dtype=np.float64), DECIMALS)


@functools.lru_cache(maxsize=64)
def _allowed_types(x_items: tuple, y_items: tuple, has_x: int, has_y: int
                   ) -> dict[str, np.ndarray]:
    """Per role ('x', 'y', 'other'): indices into vocab.OBJECT_TYPES of the types allowed for
    it in the cell (has_x, has_y)."""
    x, y = dict(x_items), dict(y_items)
    out = {}
    for role in ("x", "y", "other"):
        allowed = []
        for i, obj in enumerate(vocab.OBJECT_TYPES):
            is_x, is_y = vocab.matches(obj, x), vocab.matches(obj, y)
            if role == "x" and not is_x or role == "y" and not is_y:
                continue
            # Never complete a label whose cell says 0.
            if (is_x and not has_x) or (is_y and not has_y):
                continue
            allowed.append(i)
        out[role] = np.array(allowed, dtype=np.int64)
    return out


@kernel
def _place_objects(uniforms, radius, footprint, left, behind):
    """CLEVR's rejection placement. Object i tries spots x, y ~ U(-3, 3) (uniforms[i]: (tries,
    2) in [0, 1)) and takes the first whose edge-to-edge distance to every object already
    placed is at least MIN_DIST (its own radius[i] against their footprint) and whose offsets
    along the camera's left and behind axes are not in (0, MARGIN). Returns (xy (n, 2), all
    placed)."""
    n, tries = uniforms.shape[0], uniforms.shape[1]
    xy = np.empty((n, 2))
    for i in range(n):
        placed = False
        for c in range(tries):
            x = -PLACEMENT_HALF_EXTENT + 2 * PLACEMENT_HALF_EXTENT * uniforms[i, c, 0]
            y = -PLACEMENT_HALF_EXTENT + 2 * PLACEMENT_HALF_EXTENT * uniforms[i, c, 1]
            ok = True
            for j in range(i):
                dx, dy = x - xy[j, 0], y - xy[j, 1]
                m_left = abs(dx * left[0] + dy * left[1])
                m_behind = abs(dx * behind[0] + dy * behind[1])
                if (math.hypot(dx, dy) - radius[i] - footprint[j] < MIN_DIST
                        or 0 < m_left < MARGIN or 0 < m_behind < MARGIN):
                    ok = False
                    break
            if ok:
                xy[i, 0], xy[i, 1] = x, y
                placed = True
                break
        if not placed:
            return xy, False
    return xy, True


@dataclass
class SceneDraw:
    """A scene drawn for its cell, as the (rounded) numbers scenes.json will hold."""
    camera: Camera
    lights: np.ndarray  # (3, 3) key, fill, back locations
    light_jitter: np.ndarray  # (3, 3)
    roles: list[str]
    types: np.ndarray  # (K,) indices into vocab.OBJECT_TYPES
    coords: np.ndarray  # (K, 3) centres; z is the half-height
    rotations: np.ndarray  # (K,) degrees about z

    def geometry(self) -> SceneGeometry:
        return SceneGeometry.build(self.camera.location, self.lights, _TYPE_LOOK[self.types],
                                   self.coords, self.rotations)


def draw_scene(rng: np.random.Generator, has_x: int, has_y: int, spec, index: int) -> SceneDraw:
    """Draw one scene whose labels are exactly (has_x, has_y), as numbers."""
    # One draw for every scalar: camera and light jitter, object count, then per object its
    # type and rotation (a few numpy calls instead of one per number).
    m = spec.max_objects
    u = rng.random(13 + 2 * m)
    jitter = np.concatenate([CAMERA_JITTER * (2 * u[:3] - 1), LIGHT_JITTER * (2 * u[3:12] - 1)])
    # Rounded as scenes.json stores them: camera location, light locations, light jitter.
    rounded = np.round(np.concatenate([_CAMERA_BASE + jitter[:3], _LIGHT_BASE.ravel()
                                       + jitter[3:], jitter[3:]]), DECIMALS)
    camera = Camera(rounded[:3], spec.width, spec.height)
    n_objects = spec.min_objects + int(u[12] * (m - spec.min_objects + 1))

    roles = (["x"] if has_x else []) + (["y"] if has_y else [])
    roles += ["other"] * (n_objects - len(roles))
    allowed = _allowed_types(tuple(spec.x.items()), tuple(spec.y.items()), has_x, has_y)
    types = np.array([allowed[role][int(p * len(allowed[role]))]
                      for role, p in zip(roles, u[13:13 + n_objects].tolist())], dtype=np.int64)

    directions = camera.ground_directions()
    left, behind = np.array(directions["left"][:2]), np.array(directions["behind"][:2])
    radius, half_height = _TYPE_RADIUS[types], _TYPE_HALF_HEIGHT[types]
    for _ in range(MAX_LAYOUT_TRIES):
        xy, placed = _place_objects(rng.random((n_objects, MAX_PLACEMENT_TRIES, 2)), radius,
                                    half_height, left, behind)
        if placed:
            break
    else:
        raise SceneSamplingError(f"scene {index}: could not place {n_objects} objects in "
                                 f"{MAX_LAYOUT_TRIES} layouts; lower max_objects")
    # Centres (resting on the ground: z is the half-height) and rotations; rounding can give
    # 360.0, the stored angle stays in [0, 360).
    placement = np.round(np.column_stack([xy, half_height, 360 * u[13 + m:13 + m + n_objects]]),
                         DECIMALS)
    return SceneDraw(camera=camera, lights=rounded[3:12].reshape(3, 3),
                     light_jitter=rounded[12:].reshape(3, 3), roles=roles, types=types,
                     coords=placement[:, :3], rotations=placement[:, 3] % 360.0)


def scene_dict(draw: SceneDraw, spec, index: int, visible_pixels=None) -> dict:
    """The CLEVR-schema dict of a drawn scene (with each object's visible pixels if given)."""
    camera = draw.camera
    pixels = camera.project(draw.coords)
    objects = []
    for k, (role, t, coords, rotation, pix) in enumerate(zip(
            draw.roles, draw.types.tolist(), draw.coords.tolist(), draw.rotations.tolist(),
            pixels.tolist())):
        a = vocab.OBJECT_TYPES[t]
        obj = {"shape": a["shape"], "size": a["size"], "material": a["material"],
               "color": a["color"], "3d_coords": coords, "rotation": rotation,
               "pixel_coords": [int(round(pix[0])), int(round(pix[1])), round(pix[2], 4)],
               "role": role}
        if visible_pixels is not None:
            obj["visible_pixels"] = int(visible_pixels[k])
        objects.append(obj)
    location = camera.location.tolist()
    return {
        "image_index": index,
        "image_filename": image_filename(index),
        "split": spec.split,
        "objects": objects,
        "directions": camera.ground_directions(),
        "camera": {"location": location, "look_at": [0.0, 0.0, 0.0],
                   "jitter": _round(camera.location - _CAMERA_BASE).tolist(),
                   "focal_length_mm": FOCAL_LENGTH_MM, "sensor_width_mm": SENSOR_WIDTH_MM},
        "lights": {name: {"location": loc, "jitter": jitter} for name, loc, jitter in zip(
            LIGHT_NAMES, draw.lights.tolist(), draw.light_jitter.tolist())},
        "has_x": int(any(r == "x" for r in draw.roles)),
        "has_y": int(any(r == "y" for r in draw.roles)),
    }


def sample_scene(rng: np.random.Generator, has_x: int, has_y: int, spec, index: int) -> dict:
    """Draw one scene (a CLEVR-schema dict) whose labels are exactly (has_x, has_y)."""
    return scene_dict(draw_scene(rng, has_x, has_y, spec, index), spec, index)


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
