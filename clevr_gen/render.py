"""A ray caster for CLEVR scenes (spheres, cubes rotated about z, cylinders), compiled with numba.

Two passes, so a scene that fails the visibility check costs only the first:

1. `trace`: primary rays through every sub-pixel (supersample x supersample per pixel) against the
   ground plane and each object's analytic surface, each object culled to its screen box; a
   z-buffer keeps the nearest hit's ray parameter, object index and normal. `object_map` gives
   each output pixel to the object covering most of its sub-pixels and counts visible pixels.
2. `shade`: Lambert + Blinn-Phong specular from CLEVR's key (warm, casts shadows), fill (cool) and
   back lamps plus a hemispherical ambient term; metal also reflects a sky/ground environment and
   has a tight white highlight, rubber is matte. The key is an area light: each sub-pixel's shadow
   ray aims at a different point on it (each occluder is tested only inside its shadow volume's
   screen box), so averaging sub-pixels gives both anti-aliasing and soft shadow edges. A pixel
   whose sub-pixels show one surface in one shadow state is shaded once.

The kernels (numba, see jit.py) are single-threaded: parallelism comes from worker processes.
Their inner loops over sub-pixels are branch-free so that LLVM vectorises them, and each object
is tested only inside its screen box. They use only +, -, *, / and sqrt, correctly rounded IEEE
ops (float32 per pixel, float64 for camera rays and boxes; powers are repeated squaring;
sub-pixels are summed in a fixed order), so the bytes do not depend on the worker or the batch.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from . import vocab
from .camera import Camera, project_point
from .jit import kernel

# Bump when the rendered bytes (or the scenes a seed draws) change, so a resumed or compared
# dataset knows its renderer.
RENDERER_VERSION = "2"

SPHERE, CUBE, CYLINDER = 0, 1, 2
_KIND = {"sphere": SPHERE, "cube": CUBE, "cylinder": CYLINDER}
GROUND, SKY = -1, -2

# The kernels read a scene's objects as one float32 row each, these columns:
(COL_KIND, COL_X, COL_Y, COL_Z, COL_RADIUS, COL_COS, COL_SIN, COL_RED, COL_GREEN, COL_BLUE,
 COL_METAL) = range(11)
N_COLUMNS = 11

_f32 = np.float32
ZERO, HALF, ONE, TWO = _f32(0), _f32(0.5), _f32(1), _f32(2)
INF = _f32(np.inf)

# Lights: key (warm, casts shadows), fill (cool), back, in that order in the (3, 3) location
# arrays; colours are linear RGB strengths at the origin.
LIGHT_NAMES = ("key", "fill", "back")
LIGHT_COLORS = np.array([[1.0, 0.929, 0.816], [0.761, 0.816, 1.0], [1.0, 1.0, 1.0]],
                        dtype=np.float32) * np.array([[1.05], [0.32], [0.30]], dtype=np.float32)
LIGHT_MEANS = LIGHT_COLORS.mean(axis=1, dtype=np.float32)  # weight of the white highlight
AMBIENT = _f32(0.20)  # hemispherical: full for up-facing normals, AMBIENT_DOWN for down-facing
AMBIENT_DOWN = _f32(0.08)
KEY_LIGHT_SIZE = 1.2  # side of the square area light, world units (soft shadow width)
GROUND_ALBEDO = _f32(0.36)
SKY_RADIANCE = _f32(0.36)
# Light falloff: soft, capped inverse square, 1 at the origin, so the ground brightens a little
# towards a lamp without burning out near it.
FALLOFF_BASE, FALLOFF_SLOPE, FALLOFF_CAP = _f32(0.65), _f32(0.35), _f32(1.6)
SHADOW_EPS = _f32(1e-4)

# Materials: diffuse weight, specular weight, specular exponent as a power of two (repeated
# squaring), environment reflection weight.
RUBBER = dict(kd=0.95, ks=0.06, shine_log2=3, kr=0.0)
METAL = dict(kd=0.30, ks=1.20, shine_log2=6, kr=0.75)
_KD_RUBBER, _KS_RUBBER = _f32(RUBBER["kd"]), _f32(RUBBER["ks"])
_KD_METAL, _KS_METAL = _f32(METAL["kd"]), _f32(METAL["ks"])
_KR_METAL = _f32(METAL["kr"])
_RUBBER_SQUARINGS = RUBBER["shine_log2"]
_METAL_EXTRA_SQUARINGS = METAL["shine_log2"] - RUBBER["shine_log2"]

# sRGB 8-bit colours -> linear albedo.
ALBEDO = {name: np.array([(c / 255.0) ** 2.2 for c in rgb], dtype=np.float32)
          for name, rgb in vocab.COLORS.items()}
# 12-bit linear -> 8-bit sRGB-ish (gamma 2.2) lookup table: no float pow per pixel.
_LUT_TOP = 2 ** 12 - 1
_GAMMA_LUT = np.array([round(255 * (i / _LUT_TOP) ** (1 / 2.2)) for i in range(_LUT_TOP + 1)],
                      dtype=np.uint8)


_COLOR_INDEX = {c: i for i, c in enumerate(vocab.COLORS)}


def look(obj) -> int:
    """What the renderer needs of an object's attributes (shape, color, material; its size is in
    its coordinates), as an index into _LOOK_ROWS."""
    return ((_KIND[obj["shape"]] * len(vocab.COLORS) + _COLOR_INDEX[obj["color"]]) * 2
            + (obj["material"] == "metal"))


def _look_rows() -> np.ndarray:
    """(3 * 8 * 2, N_COLUMNS) float32: kind, albedo and metal columns of every look."""
    rows = np.zeros((len(_KIND) * len(vocab.COLORS) * 2, N_COLUMNS), dtype=np.float32)
    for shape, color, material in itertools.product(_KIND, vocab.COLORS, vocab.MATERIALS):
        row = rows[look({"shape": shape, "color": color, "material": material})]
        row[COL_KIND] = _KIND[shape]
        row[COL_RED:COL_BLUE + 1] = ALBEDO[color]
        row[COL_METAL] = material == "metal"
    return rows


_LOOK_ROWS = _look_rows()


# --- the scene as arrays ----------------------------------------------------------------------
@dataclass
class SceneGeometry:
    """What the kernels need of a scene: camera location, light locations, packed objects."""
    camera_location: np.ndarray  # (3,) float64
    lights: np.ndarray  # (3, 3) float64: key, fill, back locations
    objects: np.ndarray  # (K, N_COLUMNS) float32, columns COL_KIND..COL_METAL

    @classmethod
    def build(cls, camera_location, light_locations, looks, coords, rotations
              ) -> "SceneGeometry":
        """From the numbers scenes.json stores: each object's look(), centre (z = half-height)
        and rotation in degrees about z. Every renderer input goes through here."""
        looks = np.asarray(looks, dtype=np.int64)
        objects = _LOOK_ROWS[looks]  # kind, albedo, metal
        if len(looks):
            coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
            theta = np.radians(np.asarray(rotations, dtype=np.float64))
            objects[:, COL_X:COL_Z + 1] = coords
            objects[:, COL_RADIUS] = coords[:, 2]
            objects[:, COL_COS] = np.cos(theta)
            objects[:, COL_SIN] = np.sin(theta)
        return cls(camera_location=np.asarray(camera_location, dtype=np.float64),
                   lights=np.asarray(light_locations, dtype=np.float64).reshape(3, 3),
                   objects=objects)

    @classmethod
    def from_scene(cls, scene: dict) -> "SceneGeometry":
        objs = scene["objects"]
        return cls.build(scene["camera"]["location"],
                         [scene["lights"][name]["location"] for name in LIGHT_NAMES],
                         [look(o) for o in objs], [o["3d_coords"] for o in objs],
                         [o["rotation"] for o in objs])

    def __len__(self) -> int:
        return len(self.objects)


@dataclass
class Hits:
    """Result of the primary pass at sub-pixel resolution (Hs = H * s, Ws = W * s). Its
    buffers may be reused by a later trace (see trace's `reuse`)."""
    camera: Camera
    supersample: int
    geometry: SceneGeometry
    ray: np.ndarray  # (3, Hs, Ws) float32 ray directions (unnormalised)
    t: np.ndarray  # (Hs, Ws) float32 ray parameter of the nearest hit (inf: none)
    obj: np.ndarray  # (Hs, Ws) int8: object index, GROUND or SKY
    normal: np.ndarray  # (3, Hs, Ws) float32 unit normal at the hit
    boxes: np.ndarray  # (K, 4) int64 sub-pixel screen box (y0, y1, x0, x1) of each object
    nearness: np.ndarray  # (K,) int64 rank by depth of the centre, 0 = farthest


def _view(camera: Camera) -> tuple[np.ndarray, float, float]:
    """(4, 3) float64 rows location, forward, right, up, and tan of the half fields of view."""
    tx, ty = camera.tan_half_fov
    return camera.view, tx, ty


def trace(geometry: SceneGeometry, width: int, height: int, supersample: int = 2,
          reuse: Hits | None = None) -> Hits:
    """Primary visibility: nearest surface, its normal and object index at every sub-pixel.

    reuse: an earlier result of the same size whose buffers this one overwrites (and so
    invalidates). Fresh buffers cost more than the tracing: ~1 MB per image, page-faulted in.
    """
    camera = Camera(geometry.camera_location, width, height)
    hs, ws = height * supersample, width * supersample
    if reuse is not None and reuse.t.shape == (hs, ws):
        ray, t, obj, normal = reuse.ray, reuse.t, reuse.obj, reuse.normal
    else:
        ray = np.empty((3, hs, ws), dtype=np.float32)
        t = np.empty((hs, ws), dtype=np.float32)
        obj = np.empty((hs, ws), dtype=np.int8)
        normal = np.empty((3, hs, ws), dtype=np.float32)
    view, tx, ty = _view(camera)
    boxes, nearness = _trace_kernel(view, tx, ty, width, height, supersample, geometry.objects,
                                    ray, t, obj, normal)
    return Hits(camera=camera, supersample=supersample, geometry=geometry, ray=ray, t=t, obj=obj,
                normal=normal, boxes=boxes, nearness=nearness)


def object_map(hits: Hits) -> tuple[np.ndarray, np.ndarray]:
    """((H, W) int16 map of the object each output pixel shows, -1 for background;
    (K,) int64 pixels each object owns).

    A pixel belongs to the object covering the most of its sub-pixels; an object wins ties with
    the background, and the nearer object wins ties between objects. These are the masks COCO
    annotations and the visibility check use.
    """
    return _object_map_kernel(hits.obj, hits.camera.height, hits.camera.width, hits.supersample,
                              hits.nearness)


def shade(hits: Hits) -> np.ndarray:
    """(H, W, 3) uint8 image from the primary hits."""
    view, tx, ty = _view(hits.camera)
    return _shade_kernel(view, tx, ty, hits.camera.width, hits.camera.height, hits.supersample,
                         hits.geometry.objects, hits.geometry.lights, hits.ray, hits.t, hits.obj,
                         hits.normal)


def render(scene: dict, width: int, height: int, supersample: int = 2
           ) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene dict: (image (H, W, 3) uint8, object map (H, W) int16, -1 = background)."""
    hits = trace(SceneGeometry.from_scene(scene), width, height, supersample)
    return shade(hits), object_map(hits)[0]


# --- kernels: geometry -------------------------------------------------------------------------
@kernel
def _screen_box(view, tx, ty, w, h, s, points):
    """Sub-pixel box (y0, y1, x0, x1) holding the projections of world points (M, 3) float64,
    with a one sub-pixel margin; the whole image if a point is behind or at the camera."""
    hs, ws = h * s, w * s
    xmin = ymin = np.inf
    xmax = ymax = -np.inf
    for m in range(points.shape[0]):
        px, py, depth = project_point(view, tx, ty, ws, hs, points[m, 0], points[m, 1],
                                      points[m, 2])
        if not depth > 1e-3:
            return 0, hs, 0, ws
        xmin, xmax = min(xmin, px), max(xmax, px)
        ymin, ymax = min(ymin, py), max(ymax, py)
    if not (np.isfinite(xmin) and np.isfinite(xmax) and np.isfinite(ymin) and np.isfinite(ymax)):
        return 0, hs, 0, ws
    x0 = max(int(math.floor(xmin)) - 1, 0)
    x1 = min(int(math.ceil(xmax)) + 1, ws)
    y0 = max(int(math.floor(ymin)) - 1, 0)
    y1 = min(int(math.ceil(ymax)) + 1, hs)
    return y0, max(y1, y0), x0, max(x1, x0)


@kernel
def _bounding_corners(objects, k):
    """(8, 3) float64 corners of object k's world-axis-aligned bounding box. A cube rotated about
    z stays within radius * sqrt(2) of its axis, spheres and cylinders within radius."""
    r = float(objects[k, COL_RADIUS])
    ext = r * math.sqrt(2.0) if int(objects[k, COL_KIND]) == CUBE else r
    out = np.empty((8, 3))
    for i in range(8):
        out[i, 0] = objects[k, COL_X] + (ext if i & 1 else -ext)
        out[i, 1] = objects[k, COL_Y] + (ext if i & 2 else -ext)
        out[i, 2] = 2.0 * objects[k, COL_Z] if i & 4 else 0.0
    return out


# Ray-object intersection, one function per shape. Branch-free (selects only), so loops over
# rays vectorise. Rays o + t d in float32 with p = o - centre; each returns (t_in, t_out, entry
# normal nx, ny, nz), t_in > t_out where the ray misses (the normal is then meaningless).
@kernel(inline="always")
def _hit_sphere(r, px, py, pz, dx, dy, dz):
    a = dx * dx + dy * dy + dz * dz
    b = dx * px + dy * py + dz * pz
    c = px * px + py * py + pz * pz - r * r
    disc = b * b - a * c
    sq = np.sqrt(max(disc, ZERO))
    t_in = (-b - sq) / a
    t_out = (-b + sq) / a
    inv_r = ONE / r
    miss = disc < ZERO
    return (INF if miss else t_in, -INF if miss else t_out,
            (px + t_in * dx) * inv_r, (py + t_in * dy) * inv_r, (pz + t_in * dz) * inv_r)


@kernel(inline="always")
def _z_slab(r, pz, dz):
    """Entry and exit of the slab |p_z + t d_z| <= r (cube and cylinder), and the normal z of
    a cap entered from it (opposing the ray)."""
    tz0 = (-r - pz) / dz
    tz1 = (r - pz) / dz
    return min(tz0, tz1), max(tz0, tz1), ONE if dz < ZERO else -ONE


@kernel(inline="always")
def _hit_cylinder(r, px, py, pz, dx, dy, dz):
    z_in, z_out, cap_nz = _z_slab(r, pz, dz)
    a = dx * dx + dy * dy
    b = dx * px + dy * py
    c = px * px + py * py - r * r
    disc = b * b - a * c
    sq = np.sqrt(max(disc, ZERO))
    side_in = (-b - sq) / a
    side_out = (-b + sq) / a
    on_side = side_in > z_in
    t_in = side_in if on_side else z_in
    t_out = min(side_out, z_out)
    inv_r = ONE / r
    nx, ny = (px + t_in * dx) * inv_r, (py + t_in * dy) * inv_r
    miss = disc < ZERO
    return (INF if miss else t_in, -INF if miss else t_out, nx if on_side else ZERO,
            ny if on_side else ZERO, ZERO if on_side else cap_nz)


@kernel(inline="always")
def _hit_cube(r, ct, st, px, py, pz, dx, dy, dz):
    """Cube rotated by theta about z (ct, st: its cosine and sine): slabs in its own frame."""
    z_in, z_out, cap_nz = _z_slab(r, pz, dz)
    lpx, lpy = ct * px + st * py, -st * px + ct * py
    ldx, ldy = ct * dx + st * dy, -st * dx + ct * dy
    tx0, tx1 = (-r - lpx) / ldx, (r - lpx) / ldx
    ty0, ty1 = (-r - lpy) / ldy, (r - lpy) / ldy
    x_in, y_in = min(tx0, tx1), min(ty0, ty1)
    t_in = max(max(x_in, y_in), z_in)
    t_out = min(min(max(tx0, tx1), max(ty0, ty1)), z_out)
    # Entry face: the slab entered last; its outward normal opposes the ray.
    face_x = (x_in >= y_in) & (x_in >= z_in)
    face_y = ~face_x & (y_in >= z_in)
    sx, sy = ONE if ldx < ZERO else -ONE, ONE if ldy < ZERO else -ONE
    lnx, lny = sx if face_x else ZERO, sy if face_y else ZERO
    return (t_in, t_out, ct * lnx - st * lny, st * lnx + ct * lny,
            ZERO if face_x | face_y else cap_nz)


@kernel(inline="always")
def _keep_nearer(t, obj, normal, y, x, k, t_in, t_out, nx, ny, nz):
    """z-buffer update at sub-pixel (y, x) with object k's hit (branch-free)."""
    nearer = (t_in <= t_out) & (t_in > ZERO) & (t_in < t[y, x])
    t[y, x] = t_in if nearer else t[y, x]
    obj[y, x] = k if nearer else obj[y, x]
    normal[0, y, x] = nx if nearer else normal[0, y, x]
    normal[1, y, x] = ny if nearer else normal[1, y, x]
    normal[2, y, x] = nz if nearer else normal[2, y, x]


@kernel
def _trace_kernel(view, tx, ty, w, h, s, objects, ray, t, obj, normal):
    """Fills ray, t, obj, normal; returns each object's screen box and nearness rank."""
    hs, ws = h * s, w * s
    ox, oy, oz = _f32(view[0, 0]), _f32(view[0, 1]), _f32(view[0, 2])
    fx, fy, fz = view[1, 0], view[1, 1], view[1, 2]
    rx, ry, rz = view[2, 0], view[2, 1], view[2, 2]
    ux, uy, uz = view[3, 0], view[3, 1], view[3, 2]
    sky, ground = np.int8(SKY), np.int8(GROUND)
    for y in range(hs):
        ay = (1.0 - (y + 0.5) / hs * 2.0) * ty
        for x in range(ws):  # vectorised: selects, no branches
            ax = ((x + 0.5) / ws * 2.0 - 1.0) * tx
            dx = _f32(fx + ax * rx + ay * ux)
            dy = _f32(fy + ax * ry + ay * uy)
            dz = _f32(fz + ax * rz + ay * uz)
            ray[0, y, x], ray[1, y, x], ray[2, y, x] = dx, dy, dz
            down = dz < ZERO  # then it meets the ground plane z = 0
            t_ground = -oz / dz
            t[y, x] = t_ground if down else INF
            obj[y, x] = ground if down else sky
            normal[0, y, x], normal[1, y, x], normal[2, y, x] = ZERO, ZERO, ONE
    n = objects.shape[0]
    boxes = np.zeros((n, 4), dtype=np.int64)
    depth = np.empty(n)
    for k in range(n):
        y0, y1, x0, x1 = _screen_box(view, tx, ty, w, h, s, _bounding_corners(objects, k))
        boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = y0, y1, x0, x1
        depth[k] = project_point(view, tx, ty, w, h, float(objects[k, COL_X]),
                                 float(objects[k, COL_Y]), float(objects[k, COL_Z]))[2]
        # One loop per shape, over rows of the object's box: these vectorise.
        kind, r = int(objects[k, COL_KIND]), objects[k, COL_RADIUS]
        ct, st = objects[k, COL_COS], objects[k, COL_SIN]
        px, py, pz = ox - objects[k, COL_X], oy - objects[k, COL_Y], oz - objects[k, COL_Z]
        k8 = np.int8(k)
        # Unsigned indices: numba then emits no negative-index wrap-around, which would keep
        # LLVM from vectorising these loops.
        xs = range(np.uint64(x0), np.uint64(x1))
        for y in range(np.uint64(y0), np.uint64(y1)):
            if kind == SPHERE:
                for x in xs:
                    t_in, t_out, nx, ny, nz = _hit_sphere(r, px, py, pz, ray[0, y, x],
                                                          ray[1, y, x], ray[2, y, x])
                    _keep_nearer(t, obj, normal, y, x, k8, t_in, t_out, nx, ny, nz)
            elif kind == CYLINDER:
                for x in xs:
                    t_in, t_out, nx, ny, nz = _hit_cylinder(r, px, py, pz, ray[0, y, x],
                                                            ray[1, y, x], ray[2, y, x])
                    _keep_nearer(t, obj, normal, y, x, k8, t_in, t_out, nx, ny, nz)
            else:
                for x in xs:
                    t_in, t_out, nx, ny, nz = _hit_cube(r, ct, st, px, py, pz, ray[0, y, x],
                                                        ray[1, y, x], ray[2, y, x])
                    _keep_nearer(t, obj, normal, y, x, k8, t_in, t_out, nx, ny, nz)
    # Rank from far to near; on equal depths the later object counts as nearer.
    nearness = np.zeros(n, dtype=np.int64)
    for k in range(n):
        for j in range(n):
            if depth[j] > depth[k] or (depth[j] == depth[k] and j < k):
                nearness[k] += 1
    return boxes, nearness


@kernel
def _object_map_kernel(obj, h, w, s, nearness):
    n = nearness.shape[0]
    ids = np.empty((h, w), dtype=np.int16)
    visible = np.zeros(n, dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    for py in range(h):
        for px in range(w):
            first = obj[py * s, px * s]
            same = True
            for a in range(s):
                for b in range(s):
                    same = same and obj[py * s + a, px * s + b] == first
            if same:  # the common case: one surface covers the pixel
                ids[py, px] = max(first, -1)
                if first >= 0:
                    visible[first] += 1
                continue
            background = 0
            for a in range(s):
                for b in range(s):
                    o = obj[py * s + a, px * s + b]
                    if o < 0:
                        background += 1
                    else:
                        count[o] += 1
            best, best_count, best_rank = -1, background, -1
            for a in range(s):
                for b in range(s):
                    o = obj[py * s + a, px * s + b]
                    if o >= 0 and count[o] > 0:
                        if count[o] > best_count or (count[o] == best_count
                                                     and nearness[o] > best_rank):
                            best, best_count, best_rank = o, count[o], nearness[o]
                        count[o] = 0  # counted; later sub-pixels of o are skipped
            ids[py, px] = best
            if best >= 0:
                visible[best] += 1
    return ids, visible


# --- kernels: shading --------------------------------------------------------------------------
@kernel
def _key_light_samples(centre, s):
    """(s * s, 3) float32: the point of the square area key light that sub-pixel (a, b) aims at
    (row a * s + b). The square faces the origin; the sub-pixel -> sample assignment is a Latin
    square, so each sub-pixel row and column sees every light row and column."""
    norm = math.sqrt(centre[0] ** 2 + centre[1] ** 2 + centre[2] ** 2)
    ax, ay, az = -centre[0] / norm, -centre[1] / norm, -centre[2] / norm
    ux, uy = ay, -ax  # axis x (0, 0, 1), horizontal
    un = math.sqrt(ux * ux + uy * uy)
    ux, uy = ux / un, uy / un
    vx, vy, vz = uy * az, -ux * az, ux * ay - uy * ax  # u x axis
    out = np.empty((s * s, 3), dtype=np.float32)
    for a in range(s):
        for b in range(s):
            ou = ((b + 0.5) / s - 0.5) * KEY_LIGHT_SIZE
            ov = (((a + b) % s + 0.5) / s - 0.5) * KEY_LIGHT_SIZE
            out[a * s + b, 0] = centre[0] + ou * ux + ov * vx
            out[a * s + b, 1] = centre[1] + ou * uy + ov * vy
            out[a * s + b, 2] = centre[2] + ov * vz
    return out


@kernel
def _shadow_boxes(view, tx, ty, w, h, s, objects, samples):
    """(K, 4) int64 sub-pixel screen box (y0, y1, x0, x1) of each object's shadow volume: its
    bounding corners and their projections onto the ground from every key-light sample. Only
    sub-pixels inside it can be in its shadow."""
    n, m = objects.shape[0], samples.shape[0]
    boxes = np.empty((n, 4), dtype=np.int64)
    points = np.empty((8 * (m + 1), 3))
    for k in range(n):
        corners = _bounding_corners(objects, k)
        for i in range(8):  # (loops: numba's slice assignment is slow to compile)
            for c in range(3):
                points[i, c] = corners[i, c]
        for j in range(m):
            lx, ly, lz = float(samples[j, 0]), float(samples[j, 1]), float(samples[j, 2])
            for i in range(8):
                # Where the ray from the sample through the corner meets the ground (clamped
                # where the light is not above the corner: the box then grows very large).
                scale = lz / max(lz - corners[i, 2], 1e-3)
                points[8 * (j + 1) + i, 0] = lx + (corners[i, 0] - lx) * scale
                points[8 * (j + 1) + i, 1] = ly + (corners[i, 1] - ly) * scale
                points[8 * (j + 1) + i, 2] = lz + (corners[i, 2] - lz) * scale
        y0, y1, x0, x1 = _screen_box(view, tx, ty, w, h, s, points)
        boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = y0, y1, x0, x1
    return boxes


@kernel(inline="always")
def _shadow_ray(origin, y, x, ray, t, obj, normal, key):
    """The shadow ray of sub-pixel (y, x): surface point q (on the ground exactly z = 0), the
    segment l to its key-light sample (key: (3, Ws) samples of this sub-row), and whether the
    light is in front of the surface (else its shadow state does not matter)."""
    tt = t[y, x]
    qx = origin[0] + tt * ray[0, y, x]
    qy = origin[1] + tt * ray[1, y, x]
    qz_surface = origin[2] + tt * ray[2, y, x]
    qz = ZERO if obj[y, x] == GROUND else qz_surface
    lx, ly, lz = key[0, x] - qx, key[1, x] - qy, key[2, x] - qz
    facing = normal[0, y, x] * lx + normal[1, y, x] * ly + normal[2, y, x] * lz > ZERO
    return qx, qy, qz, lx, ly, lz, facing


@kernel(inline="always")
def _occludes(t_in, t_out, facing, own, k):
    """Object k's hit interval blocks a shadow segment (t in (0, 1)) from a surface facing the
    light on `own` (an object never shadows itself on the side facing the light; the sky has
    no shadow)."""
    return (t_in <= t_out) & (t_out > SHADOW_EPS) & (t_in < ONE) & facing & (own != k) \
        & (own != SKY)


@kernel
def _shadow_row(objects, boxes, y, origin, ray, t, obj, normal, key, blocked):
    """blocked[x] for sub-row y: the segment from sub-pixel x's surface point to its key-light
    sample hits an object. Object by object over its shadow box: the loops vectorise, which
    beats stopping at the first occluder."""
    for x in range(blocked.shape[0]):  # (loops: numba's slice assignment is slow to compile)
        blocked[x] = False
    for k in range(objects.shape[0]):
        if y < boxes[k, 0] or y >= boxes[k, 1]:
            continue
        kind, r = int(objects[k, COL_KIND]), objects[k, COL_RADIUS]
        cx, cy, cz = objects[k, COL_X], objects[k, COL_Y], objects[k, COL_Z]
        ct, st = objects[k, COL_COS], objects[k, COL_SIN]
        k8 = np.int8(k)
        xs = range(np.uint64(boxes[k, 2]), np.uint64(boxes[k, 3]))  # unsigned: see _trace_kernel
        yu = np.uint64(y)
        if kind == SPHERE:
            for x in xs:
                qx, qy, qz, lx, ly, lz, facing = _shadow_ray(origin, yu, x, ray, t, obj, normal,
                                                             key)
                t_in, t_out, _, _, _ = _hit_sphere(r, qx - cx, qy - cy, qz - cz, lx, ly, lz)
                blocked[x] |= _occludes(t_in, t_out, facing, obj[yu, x], k8)
        elif kind == CYLINDER:
            for x in xs:
                qx, qy, qz, lx, ly, lz, facing = _shadow_ray(origin, yu, x, ray, t, obj, normal,
                                                             key)
                t_in, t_out, _, _, _ = _hit_cylinder(r, qx - cx, qy - cy, qz - cz, lx, ly, lz)
                blocked[x] |= _occludes(t_in, t_out, facing, obj[yu, x], k8)
        else:
            for x in xs:
                qx, qy, qz, lx, ly, lz, facing = _shadow_ray(origin, yu, x, ray, t, obj, normal,
                                                             key)
                t_in, t_out, _, _, _ = _hit_cube(r, ct, st, qx - cx, qy - cy, qz - cz, lx, ly,
                                                 lz)
                blocked[x] |= _occludes(t_in, t_out, facing, obj[yu, x], k8)


@kernel(inline="always")
def _lamp(lx, ly, lz, norm2, qx, qy, qz, nx, ny, nz):
    """One lamp at surface point q with normal n: (max(n.l, 0) * falloff, falloff, unit l).
    norm2: squared distance of the lamp's nominal position from the origin (falloff 1 there)."""
    ldx, ldy, ldz = lx - qx, ly - qy, lz - qz
    dist2 = ldx * ldx + ldy * ldy + ldz * ldz
    inv = ONE / np.sqrt(dist2)
    ldx, ldy, ldz = ldx * inv, ldy * inv, ldz * inv
    ratio = norm2 / dist2
    falloff = FALLOFF_BASE + FALLOFF_SLOPE * (ratio if ratio < FALLOFF_CAP else FALLOFF_CAP)
    ndl = max(nx * ldx + ny * ldy + nz * ldz, ZERO) * falloff
    return ndl, falloff, ldx, ldy, ldz


@kernel(inline="always")
def _ground_radiance(key_norm2, fill, back, qx, qy, kx, ky, kz, shadowed):
    """Linear RGB (float32) of the ground at (qx, qy, 0): Lambert only. k: the key-light sample;
    shadowed: the key is blocked; fill, back: (x, y, z, norm2) of those lamps. Branch-free on
    scalars, so a loop over pixels vectorises."""
    key = _lamp(kx, ky, kz, key_norm2, qx, qy, ZERO, ZERO, ZERO, ONE)[0]
    key = ZERO if shadowed else key
    fill = _lamp(fill[0], fill[1], fill[2], fill[3], qx, qy, ZERO, ZERO, ZERO, ONE)[0]
    back = _lamp(back[0], back[1], back[2], back[3], qx, qy, ZERO, ZERO, ZERO, ONE)[0]
    return (GROUND_ALBEDO * (AMBIENT + (key * LIGHT_COLORS[0, 0] + fill * LIGHT_COLORS[1, 0]
                                        + back * LIGHT_COLORS[2, 0])),
            GROUND_ALBEDO * (AMBIENT + (key * LIGHT_COLORS[0, 1] + fill * LIGHT_COLORS[1, 1]
                                        + back * LIGHT_COLORS[2, 1])),
            GROUND_ALBEDO * (AMBIENT + (key * LIGHT_COLORS[0, 2] + fill * LIGHT_COLORS[1, 2]
                                        + back * LIGHT_COLORS[2, 2])))


@kernel(inline="always")
def _pow2k(x, squarings):
    for _ in range(squarings):
        x = x * x
    return x


@kernel(inline="always")
def _object_radiance(objects, lights, norm2, o, qx, qy, qz, nx, ny, nz, dx, dy, dz, kx, ky, kz,
                     shadowed):
    """Linear RGB (float32) leaving point q of object o with normal n towards the camera along
    ray direction d. k: the key-light sample; shadowed: the key is blocked."""
    metal = objects[o, COL_METAL] > ZERO
    inv = ONE / np.sqrt(dx * dx + dy * dy + dz * dz)
    vx, vy, vz = -dx * inv, -dy * inv, -dz * inv  # towards the camera
    diffuse_r = diffuse_g = diffuse_b = spec = ZERO
    for i in range(3):
        if i == 0:
            lx, ly, lz = kx, ky, kz
        else:
            lx, ly, lz = lights[i, 0], lights[i, 1], lights[i, 2]
        ndl, falloff, ldx, ldy, ldz = _lamp(lx, ly, lz, norm2[i], qx, qy, qz, nx, ny, nz)
        if i == 0 and shadowed:
            ndl = ZERO
        diffuse_r += ndl * LIGHT_COLORS[i, 0]
        diffuse_g += ndl * LIGHT_COLORS[i, 1]
        diffuse_b += ndl * LIGHT_COLORS[i, 2]
        if ndl > ZERO:
            hx, hy, hz = ldx + vx, ldy + vy, ldz + vz  # Blinn-Phong half vector
            ndh = max((nx * hx + ny * hy + nz * hz) / np.sqrt(hx * hx + hy * hy + hz * hz), ZERO)
            shine = _pow2k(ndh, _RUBBER_SQUARINGS)
            if metal:
                shine = _pow2k(shine, _METAL_EXTRA_SQUARINGS)
            spec += shine * (falloff * LIGHT_MEANS[i])
    kd, ks = (_KD_METAL, _KS_METAL) if metal else (_KD_RUBBER, _KS_RUBBER)
    ambient = AMBIENT_DOWN + (AMBIENT - AMBIENT_DOWN) * (HALF + HALF * nz)
    env = ZERO
    if metal:  # mirrors a simple environment: bright overhead, grey ground below
        rz = TWO * (nx * vx + ny * vy + nz * vz) * nz - vz
        env = (_f32(0.35) + _f32(0.65) * rz if rz > ZERO else _f32(0.18) + _f32(0.1) * rz)
        env = env * _KR_METAL
    return (objects[o, COL_RED] * (kd * (ambient + diffuse_r) + env) + ks * spec,
            objects[o, COL_GREEN] * (kd * (ambient + diffuse_g) + env) + ks * spec,
            objects[o, COL_BLUE] * (kd * (ambient + diffuse_b) + env) + ks * spec)


@kernel(inline="always")
def _subpixel_radiance(objects, lights, norm2, samples, ray, t, obj, normal, blocked, ox, oy,
                       oz, y, x, i):
    """Linear RGB (float32) seen at sub-pixel (y, x), the i-th of its pixel."""
    o = obj[y, x]
    if o == SKY:
        return SKY_RADIANCE, SKY_RADIANCE, SKY_RADIANCE
    tt = t[y, x]
    dx, dy, dz = ray[0, y, x], ray[1, y, x], ray[2, y, x]
    qx, qy = ox + tt * dx, oy + tt * dy
    if o == GROUND:
        return _ground_radiance(norm2[0], (lights[1, 0], lights[1, 1], lights[1, 2], norm2[1]),
                                (lights[2, 0], lights[2, 1], lights[2, 2], norm2[2]), qx, qy,
                                samples[i, 0], samples[i, 1], samples[i, 2], blocked[i])
    return _object_radiance(objects, lights, norm2, o, qx, qy, oz + tt * dz, normal[0, y, x],
                            normal[1, y, x], normal[2, y, x], dx, dy, dz, samples[i, 0],
                            samples[i, 1], samples[i, 2], blocked[i])


@kernel(inline="always")
def _gamma(v):
    """Linear radiance -> 8-bit value through the gamma lookup table."""
    v = min(max(v, ZERO), ONE)
    return _GAMMA_LUT[np.uint32(v * _f32(_LUT_TOP) + HALF)]


@kernel
def _shade_kernel(view, tx, ty, w, h, s, objects, lights64, ray, t, obj, normal):
    samples = _key_light_samples(lights64[0], s)
    boxes = _shadow_boxes(view, tx, ty, w, h, s, objects, samples)
    lights = np.empty((3, 3), dtype=np.float32)
    norm2 = np.empty(3, dtype=np.float32)
    for i in range(3):  # falloff is relative to the nominal (centre) position
        for c in range(3):
            lights[i, c] = lights64[i, c]
        norm2[i] = lights[i, 0] * lights[i, 0] + lights[i, 1] * lights[i, 1] \
            + lights[i, 2] * lights[i, 2]
    origin = np.empty(3, dtype=np.float32)
    origin[0], origin[1], origin[2] = view[0, 0], view[0, 1], view[0, 2]
    ox, oy, oz = origin[0], origin[1], origin[2]
    ws, n_sub = w * s, s * s
    inv_n = ONE / _f32(n_sub)
    # Key-light sample of each sub-pixel of sub-row a: key[a, :, x] (sample a * s + x % s).
    key = np.empty((s, 3, ws), dtype=np.float32)
    for a in range(s):
        for x in range(ws):
            for c in range(3):
                key[a, c, x] = samples[a * s + x % s, c]
    blocked = np.empty((s, ws), dtype=np.bool_)
    sub_blocked = np.empty(n_sub, dtype=np.bool_)  # of one pixel, in sub-pixel order
    # A row of the ground lit by every lamp as each sub-pixel sees it with the first key
    # sample (what a pixel of unshadowed ground shows), and a row of pixels before gamma.
    lit = np.empty((3, ws), dtype=np.float32)
    linear = np.empty((3, w), dtype=np.float32)
    fill = (lights[1, 0], lights[1, 1], lights[1, 2], norm2[1])
    back = (lights[2, 0], lights[2, 1], lights[2, 2], norm2[2])
    kx0, ky0, kz0 = samples[0, 0], samples[0, 1], samples[0, 2]
    image = np.empty((h, w, 3), dtype=np.uint8)
    for py in range(h):
        y0 = py * s
        for a in range(s):
            _shadow_row(objects, boxes, y0 + a, origin, ray, t, obj, normal, key[a], blocked[a])
        for x in range(ws):  # vectorised; values off the ground are unused
            qx, qy = ox + t[y0, x] * ray[0, y0, x], oy + t[y0, x] * ray[1, y0, x]
            lit[0, x], lit[1, x], lit[2, x] = _ground_radiance(
                norm2[0], fill, back, qx, qy, kx0, ky0, kz0, False)
        for px in range(w):
            x0 = px * s
            first, first_blocked = obj[y0, x0], blocked[0, x0]
            uniform = True
            i = 0
            for row in range(s):
                for col in range(s):
                    sub_blocked[i] = blocked[row, x0 + col]
                    uniform = uniform and obj[y0 + row, x0 + col] == first \
                        and sub_blocked[i] == first_blocked
                    i += 1
            if uniform and first == GROUND and not first_blocked:
                r, g, b = lit[0, x0], lit[1, x0], lit[2, x0]
            else:
                # One surface in one shadow state: shade its first sub-pixel. Else (silhouette
                # or shadow edge) average them all, summed in a fixed order.
                r = g = b = ZERO
                for i in range(1 if uniform else n_sub):
                    sr, sg, sb = _subpixel_radiance(objects, lights, norm2, samples, ray, t, obj,
                                                    normal, sub_blocked, ox, oy, oz,
                                                    y0 + i // s, x0 + i % s, i)
                    r, g, b = r + sr, g + sg, b + sb
                if not uniform:
                    r, g, b = r * inv_n, g * inv_n, b * inv_n
            linear[0, px], linear[1, px], linear[2, px] = r, g, b
        for px in range(w):
            for c in range(3):
                image[py, px, c] = _gamma(linear[c, px])
    return image
