"""A vectorised numpy ray caster for CLEVR scenes: spheres, cubes (rotated about z), cylinders.

Two passes, so a scene that fails the visibility check costs only the first:

1. `trace`: primary rays through every sub-pixel (supersample x supersample per pixel) against the
   ground plane and each object's analytic surface, culled to the object's screen box, keeping the
   nearest hit (a z-buffer) with its normal and object index.
2. `shade`: Lambert + Blinn-Phong specular from CLEVR's key (warm, casts shadows), fill (cool) and
   back lamps plus a hemispherical ambient term; metal also reflects a sky/ground environment and
   has a tight white highlight, rubber is matte. Shadow rays go to the key light, which is an area
   light: each sub-pixel aims at a different point on it, so averaging sub-pixels gives both
   anti-aliasing and soft shadow edges. Shadow rays are culled to each object's shadow-volume box.

Determinism: the arithmetic is elementwise float32 (+, -, *, /, sqrt: correctly rounded IEEE ops;
powers are repeated squaring; sub-pixel averages are summed in a fixed order), so the bytes do not
depend on how scenes are batched or which worker renders them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .camera import Camera
from .vocab import COLORS

# Bump when the rendered bytes change, so a resumed or compared dataset knows its renderer.
RENDERER_VERSION = "1"

SPHERE, CUBE, CYLINDER = 0, 1, 2
_KIND = {"sphere": SPHERE, "cube": CUBE, "cylinder": CYLINDER}
GROUND, SKY = -1, -2

# Light colours (linear RGB) and strengths at the origin; CLEVR's key is warm, fill is cool.
KEY_COLOR = np.array([1.0, 0.929, 0.816], dtype=np.float32) * 1.05
FILL_COLOR = np.array([0.761, 0.816, 1.0], dtype=np.float32) * 0.32
BACK_COLOR = np.array([1.0, 1.0, 1.0], dtype=np.float32) * 0.30
AMBIENT = 0.20  # hemispherical: full for up-facing normals, AMBIENT_DOWN for down-facing ones
AMBIENT_DOWN = 0.08
KEY_LIGHT_SIZE = 1.2  # side of the square area light, world units (soft shadow width)
GROUND_ALBEDO = 0.36
SKY_RADIANCE = np.array([0.36, 0.36, 0.36], dtype=np.float32)

# Materials: diffuse weight, specular weight, specular exponent as a power of two (repeated
# squaring), environment reflection weight.
RUBBER = dict(kd=0.95, ks=0.06, shine_log2=3, kr=0.0)
METAL = dict(kd=0.30, ks=1.20, shine_log2=6, kr=0.75)

# sRGB 8-bit colours -> linear albedo.
_ALBEDO = {name: np.array([(c / 255.0) ** 2.2 for c in rgb], dtype=np.float32)
           for name, rgb in COLORS.items()}
# 12-bit linear -> 8-bit sRGB-ish (gamma 2.2) lookup table: no float pow per pixel at run time.
_LUT_BITS = 12
_GAMMA_LUT = np.array([round(255 * (i / (2 ** _LUT_BITS - 1)) ** (1 / 2.2))
                       for i in range(2 ** _LUT_BITS)], dtype=np.uint8)


@dataclass
class SceneGeometry:
    """The scene's objects as arrays (K objects)."""
    kind: np.ndarray  # (K,) int
    center: np.ndarray  # (K, 3) float32: x, y and z = half-height (object rests on the ground)
    radius: np.ndarray  # (K,) float32: sphere/cylinder radius, cube half-size
    cos_t: np.ndarray  # (K,) float32: rotation about z
    sin_t: np.ndarray
    albedo: np.ndarray  # (K, 3) float32 linear
    metal: np.ndarray  # (K,) bool

    @classmethod
    def from_scene(cls, scene: dict) -> "SceneGeometry":
        objs = scene["objects"]
        theta = np.radians([o["rotation"] for o in objs]) if objs else np.zeros(0)
        return cls(
            kind=np.array([_KIND[o["shape"]] for o in objs], dtype=np.int64),
            center=np.array([o["3d_coords"] for o in objs], dtype=np.float32).reshape(-1, 3),
            radius=np.array([o["3d_coords"][2] for o in objs], dtype=np.float32),
            cos_t=np.cos(theta).astype(np.float32),
            sin_t=np.sin(theta).astype(np.float32),
            albedo=np.array([_ALBEDO[o["color"]] for o in objs], dtype=np.float32).reshape(-1, 3),
            metal=np.array([o["material"] == "metal" for o in objs], dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.kind)

    def bounding_corners(self) -> np.ndarray:
        """(K, 8, 3) corners of each object's world-axis-aligned bounding box. A cube rotated
        about z stays within radius * sqrt(2) of its axis, spheres and cylinders within radius."""
        ext = np.where(self.kind == CUBE, self.radius * np.float32(math.sqrt(2)), self.radius)
        sx = np.array([-1, 1, -1, 1, -1, 1, -1, 1], dtype=np.float32)
        sy = np.array([-1, -1, 1, 1, -1, -1, 1, 1], dtype=np.float32)
        top = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.float32)
        cx, cy, cz = self.center[:, 0:1], self.center[:, 1:2], self.center[:, 2:3]
        return np.stack([cx + sx * ext[:, None], cy + sy * ext[:, None],
                         np.broadcast_to(top * 2 * cz, (len(self), 8))], axis=-1)


@dataclass
class Hits:
    """Result of the primary pass at sub-pixel resolution (Hs = H * s, Ws = W * s)."""
    camera: Camera
    supersample: int
    geometry: SceneGeometry
    lights: dict
    ray: tuple[np.ndarray, np.ndarray, np.ndarray]  # (Hs, Ws) direction components
    t: np.ndarray  # (Hs, Ws) ray parameter of the nearest hit (inf: none)
    obj: np.ndarray  # (Hs, Ws) int8: object index, GROUND or SKY
    normal: tuple[np.ndarray, np.ndarray, np.ndarray]  # (Hs, Ws) unit normal components
    depth_order: np.ndarray  # object indices from farthest to nearest (ties in the object map)
    boxes: list  # per object its sub-pixel screen box (y0, y1, x0, x1)


def _screen_boxes(camera: Camera, points: np.ndarray, s: int) -> list[tuple[int, int, int, int]]:
    """(K, M, 3) world points -> per object the sub-pixel box (y0, y1, x0, x1) holding them."""
    hs, ws = camera.height * s, camera.width * s
    proj = camera.project(points)
    boxes = []
    for k in range(points.shape[0]):
        px, py, depth = proj[k, :, 0], proj[k, :, 1], proj[k, :, 2]
        if np.any(depth <= 1e-3) or not np.all(np.isfinite(proj[k])):
            boxes.append((0, hs, 0, ws))  # behind or at the camera: no culling
            continue
        x0 = max(int(math.floor(px.min() * s)) - 1, 0)
        x1 = min(int(math.ceil(px.max() * s)) + 1, ws)
        y0 = max(int(math.floor(py.min() * s)) - 1, 0)
        y1 = min(int(math.ceil(py.max() * s)) + 1, hs)
        boxes.append((y0, max(y1, y0), x0, max(x1, x0)))
    return boxes


def _intersect(geo: SceneGeometry, k: int, ox, oy, oz, dx, dy, dz, want_normal: bool):
    """Entry/exit ray parameters of rays o + t d against object k (convex: one interval).

    o is a scalar (camera) or arrays (shadow-ray origins); returns (t_in, t_out) with t_in > t_out
    where the ray misses, plus the entry normal (nx, ny, nz) if asked.
    """
    cx, cy, cz = (float(v) for v in geo.center[k])
    r = float(geo.radius[k])
    kind = geo.kind[k]
    px, py, pz = ox - cx, oy - cy, oz - cz
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == SPHERE:
            a = dx * dx + dy * dy + dz * dz
            b = dx * px + dy * py + dz * pz
            c = px * px + py * py + pz * pz - r * r
            disc = b * b - a * c
            sq = np.sqrt(np.maximum(disc, 0))
            t_in = np.where(disc >= 0, (-b - sq) / a, np.inf)
            t_out = np.where(disc >= 0, (-b + sq) / a, -np.inf)
            if not want_normal:
                return t_in, t_out
            inv_r = 1.0 / r
            return t_in, t_out, ((px + t_in * dx) * inv_r, (py + t_in * dy) * inv_r,
                                 (pz + t_in * dz) * inv_r)
        # Slab along z shared by cube and cylinder: |p_z + t d_z| <= r.
        tz0 = (-r - pz) / dz
        tz1 = (r - pz) / dz
        z_in, z_out = np.minimum(tz0, tz1), np.maximum(tz0, tz1)
        if kind == CYLINDER:
            a = dx * dx + dy * dy
            b = dx * px + dy * py
            c = px * px + py * py - r * r
            disc = b * b - a * c
            sq = np.sqrt(np.maximum(disc, 0))
            side_in = np.where(disc >= 0, (-b - sq) / a, np.inf)
            side_out = np.where(disc >= 0, (-b + sq) / a, -np.inf)
            t_in = np.maximum(side_in, z_in)
            t_out = np.minimum(side_out, z_out)
            if not want_normal:
                return t_in, t_out
            on_side = side_in > z_in
            inv_r = 1.0 / r
            nx = np.where(on_side, (px + t_in * dx) * inv_r, 0)
            ny = np.where(on_side, (py + t_in * dy) * inv_r, 0)
            nz = np.where(on_side, 0, np.where(dz < 0, 1, -1)).astype(np.float32)
            return t_in, t_out, (nx, ny, nz)
        # Cube: rotate the ray into the cube's frame (rotation by -theta about z), then slabs.
        ct, st = float(geo.cos_t[k]), float(geo.sin_t[k])
        lpx, lpy = ct * px + st * py, -st * px + ct * py
        ldx, ldy = ct * dx + st * dy, -st * dx + ct * dy
        tx0, tx1 = (-r - lpx) / ldx, (r - lpx) / ldx
        ty0, ty1 = (-r - lpy) / ldy, (r - lpy) / ldy
        x_in, y_in = np.minimum(tx0, tx1), np.minimum(ty0, ty1)
        t_in = np.maximum(np.maximum(x_in, y_in), z_in)
        t_out = np.minimum(np.minimum(np.maximum(tx0, tx1), np.maximum(ty0, ty1)), z_out)
        if not want_normal:
            return t_in, t_out
        # Entry face: the slab entered last; its outward normal opposes the ray.
        hit_x = (x_in >= y_in) & (x_in >= z_in)
        hit_y = ~hit_x & (y_in >= z_in)
        hit_z = ~hit_x & ~hit_y
        lnx = np.where(hit_x, -np.sign(ldx), 0).astype(np.float32)
        lny = np.where(hit_y, -np.sign(ldy), 0).astype(np.float32)
        nz = np.where(hit_z, -np.sign(dz), 0).astype(np.float32)
        return t_in, t_out, (ct * lnx - st * lny, st * lnx + ct * lny, nz)


def trace(scene: dict, width: int, height: int, supersample: int = 2) -> Hits:
    """Primary visibility: nearest surface, its normal and object index at every sub-pixel."""
    s = supersample
    camera = Camera(np.asarray(scene["camera"]["location"], dtype=np.float64), width, height)
    geo = SceneGeometry.from_scene(scene)
    dx, dy, dz = camera.ray_grid(s)
    ox, oy, oz = (np.float32(v) for v in camera.location)
    with np.errstate(divide="ignore"):
        t = np.where(dz < 0, -oz / dz, np.float32(np.inf)).astype(np.float32)
    obj = np.where(dz < 0, GROUND, SKY).astype(np.int8)
    nx = np.zeros_like(t)
    ny = np.zeros_like(t)
    nz = np.ones_like(t)
    boxes = []
    if len(geo):
        boxes = _screen_boxes(camera, geo.bounding_corners(), s)
        for k, (y0, y1, x0, x1) in enumerate(boxes):
            if y1 <= y0 or x1 <= x0:
                continue
            win = (slice(y0, y1), slice(x0, x1))
            t_in, t_out, (knx, kny, knz) = _intersect(
                geo, k, ox, oy, oz, dx[win], dy[win], dz[win], want_normal=True)
            closer = (t_in <= t_out) & (t_in > 0) & (t_in < t[win])
            np.copyto(t[win], t_in, where=closer)
            np.copyto(obj[win], np.int8(k), where=closer)
            np.copyto(nx[win], knx, where=closer)
            np.copyto(ny[win], kny, where=closer)
            np.copyto(nz[win], knz, where=closer)
        depth = camera.project(geo.center)[:, 2]
        order = np.argsort(-depth, kind="stable")
    else:
        order = np.zeros(0, dtype=np.int64)
    return Hits(camera=camera, supersample=s, geometry=geo, lights=scene["lights"],
                ray=(dx, dy, dz), t=t, obj=obj, normal=(nx, ny, nz), depth_order=order,
                boxes=boxes)


def object_map(hits: Hits) -> np.ndarray:
    """(H, W) int16 map of the object each output pixel shows, -1 for background.

    A pixel belongs to the object covering the most of its sub-pixels; an object wins ties with
    the background, and the nearer object wins ties between objects. These are the masks COCO
    annotations and the visibility check use.
    """
    s = hits.supersample
    h, w = hits.camera.height, hits.camera.width
    if s == 1:
        out = hits.obj.astype(np.int16)
        out[out < 0] = -1
        return out
    blocks = hits.obj.reshape(h, s, w, s)
    best_id = np.full((h, w), -1, dtype=np.int16)
    best_count = np.zeros((h, w), dtype=np.int16)
    for a in range(s):
        for b in range(s):
            best_count += blocks[:, a, :, b] < 0  # background sub-pixels
    for k in hits.depth_order:  # far to near, so on equal counts the nearer object wins
        y0, y1, x0, x1 = hits.boxes[k]  # the object's pixels lie in its box (in output pixels)
        win = (slice(y0 // s, -(-y1 // s)), slice(x0 // s, -(-x1 // s)))
        sub = blocks[win[0], :, win[1], :]
        count = np.zeros(sub.shape[::2], dtype=np.int16)
        for a in range(s):
            for b in range(s):
                count += sub[:, a, :, b] == k
        bc, bi = best_count[win], best_id[win]
        wins = (count >= bc) & (count > 0)
        bi[wins] = k
        bc[wins] = count[wins]
    return best_id


def visible_pixels(object_ids: np.ndarray, n_objects: int) -> np.ndarray:
    """Number of pixels each object owns in an object map."""
    return np.bincount(object_ids[object_ids >= 0].ravel(), minlength=n_objects)[:n_objects]


def _key_light_samples(lights: dict, s: int) -> np.ndarray:
    """(s, s, 3): the point of the square area key light that sub-pixel (a, b) aims at.

    The square faces the origin; the sub-pixel -> light-sample assignment is a Latin square so each
    sub-pixel row and column sees every light row and column.
    """
    centre = np.array(lights["key"]["location"], dtype=np.float64)
    axis = -centre / np.linalg.norm(centre)
    u = np.cross(axis, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    v = np.cross(u, axis)
    offs = ((np.arange(s) + 0.5) / s - 0.5) * KEY_LIGHT_SIZE
    out = np.empty((s, s, 3))
    for a in range(s):
        for b in range(s):
            out[a, b] = centre + offs[b] * u + offs[(a + b) % s] * v
    return out.astype(np.float32)


def _pow2k(x: np.ndarray, log2: int) -> np.ndarray:
    for _ in range(log2):
        x = x * x
    return x


def _key_shadow(hits: Hits, px, py, pz, lx, ly, lz, light_samples: np.ndarray) -> np.ndarray:
    """Boolean (Hs, Ws): the segment from the surface point to its key-light sample is blocked."""
    geo, s = hits.geometry, hits.supersample
    blocked = np.zeros(hits.t.shape, dtype=bool)
    if not len(geo):
        return blocked
    corners = geo.bounding_corners()  # (K, 8, 3)
    # Shadow volume of an object: its box corners and their projections onto the ground from
    # every light sample. Points it can shadow lie inside, so their pixels lie in its screen box.
    ls = light_samples.reshape(-1, 3).astype(np.float64)  # (L, 3)
    c = corners[:, None, :, :].astype(np.float64)  # (K, 1, 8, 3)
    l = ls[None, :, None, :]  # (1, L, 1, 3)
    scale = l[..., 2:3] / np.maximum(l[..., 2:3] - c[..., 2:3], 1e-3)
    ground = l + (c - l) * scale  # (K, L, 8, 3)
    pts = np.concatenate([corners, ground.reshape(len(geo), -1, 3)], axis=1)
    boxes = _screen_boxes(hits.camera, pts, s)
    eps = np.float32(1e-4)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        if y1 <= y0 or x1 <= x0:
            continue
        win = (slice(y0, y1), slice(x0, x1))
        wpx, wpy, wpz = px[win], py[win], pz[win]
        t_in, t_out = _intersect(geo, k, wpx, wpy, wpz, lx[win] - wpx, ly[win] - wpy,
                                 lz[win] - wpz, want_normal=False)
        # Convex occluder: blocked if [t_in, t_out] overlaps (0, 1); an object never shadows
        # itself on the side facing the light.
        hit = (t_in <= t_out) & (t_out > eps) & (t_in < 1) & (hits.obj[win] != k)
        blocked[win] |= hit
    return blocked


def shade(hits: Hits) -> np.ndarray:
    """(H, W, 3) uint8 image from the primary hits.

    Shadow rays are cast from every sub-pixel. Shading is adaptive: a pixel whose sub-pixels all
    show the same surface with the same shadow state is shaded once (its first sub-pixel); pixels on
    silhouettes and shadow edges are shaded at every sub-pixel and averaged.
    """
    s = hits.supersample
    cam = hits.camera
    h, w = cam.height, cam.width
    dx, dy, dz = hits.ray
    ox, oy, oz = (np.float32(v) for v in cam.location)
    t = np.where(hits.obj == SKY, np.float32(0), hits.t)
    px, py, pz = ox + t * dx, oy + t * dy, oz + t * dz
    pz[hits.obj == GROUND] = 0  # exactly on the ground

    samples = _key_light_samples(hits.lights, s)  # (s, s, 3)
    lx = np.tile(samples[:, :, 0], (h, w))
    ly = np.tile(samples[:, :, 1], (h, w))
    lz = np.tile(samples[:, :, 2], (h, w))
    blocked = _key_shadow(hits, px, py, pz, lx, ly, lz, samples)

    if s == 1:
        uniform = None
        selected = np.arange(hits.obj.size)
    else:
        ob = hits.obj.reshape(h, s, w, s)
        bb = blocked.reshape(h, s, w, s)
        o0, b0 = ob[:, 0, :, 0], bb[:, 0, :, 0]
        uniform = np.ones((h, w), dtype=bool)
        for a in range(s):
            for b in range(s):
                if a or b:
                    uniform &= (ob[:, a, :, b] == o0) & (bb[:, a, :, b] == b0)
        need = np.empty((h, s, w, s), dtype=bool)
        need[:] = ~uniform[:, None, :, None]
        need[:, 0, :, 0] = True
        selected = np.flatnonzero(need.reshape(-1))  # (h, s, w, s) is the (Hs, Ws) memory layout

    def take(a):
        return a.reshape(-1)[selected]

    color = _shade_points(
        hits, take(hits.obj), (take(px), take(py), take(pz)),
        tuple(take(c) for c in hits.normal), tuple(take(c) for c in hits.ray),
        (take(lx), take(ly), take(lz)), take(blocked))
    buf = np.empty((3, hits.obj.size), dtype=np.float32)
    buf[:, selected] = color
    if uniform is not None:
        b4 = buf.reshape(3, h, s, w, s)
        for a in range(s):
            for b in range(s):
                if a or b:
                    np.copyto(b4[:, :, a, :, b], b4[:, :, 0, :, 0], where=uniform)
    return _resolve(buf.reshape(3, h * s, w * s), s, h, w)


def _shade_points(hits: Hits, obj, p, n, d, key, blocked) -> np.ndarray:
    """Linear radiance (3, M) of M surface points: obj index, position, normal, ray direction,
    key-light sample position and whether the key light is blocked, each a length-M array."""
    geo = hits.geometry
    out = np.empty((3, len(obj)), dtype=np.float32)
    out[:, obj == SKY] = SKY_RADIANCE[:, None]
    lights = [(key, KEY_COLOR, np.array(hits.lights["key"]["location"], dtype=np.float32))]
    for name, color in (("fill", FILL_COLOR), ("back", BACK_COLOR)):
        loc = np.array(hits.lights[name]["location"], dtype=np.float32)
        lights.append((tuple(loc), color, loc))

    def light_terms(sel, normal):
        """Per light: (diffuse n.l * falloff with the key's shadow, falloff-weighted lit mask,
        unit light direction) at the points `sel`."""
        qx, qy, qz = p[0][sel], p[1][sel], p[2][sel]
        shadowed = blocked[sel]
        for i, (loc, color, nominal) in enumerate(lights):
            lx, ly, lz = ((c[sel] if isinstance(c, np.ndarray) else c) for c in loc)
            ldx, ldy, ldz = lx - qx, ly - qy, lz - qz
            dist2 = ldx * ldx + ldy * ldy + ldz * ldz
            inv = 1 / np.sqrt(dist2)
            ldx, ldy, ldz = ldx * inv, ldy * inv, ldz * inv
            # Soft, capped inverse-square falloff, 1 at the origin: the ground brightens a
            # little towards a lamp without burning out near it.
            falloff = 0.65 + 0.35 * np.minimum(np.float32(nominal @ nominal) / dist2,
                                               np.float32(1.6))
            if normal is None:  # ground: n = (0, 0, 1)
                ndl = np.maximum(ldz, 0) * falloff
            else:
                ndl = np.maximum(normal[0] * ldx + normal[1] * ldy + normal[2] * ldz, 0) * falloff
            if i == 0:
                ndl = np.where(shadowed, np.float32(0), ndl)
            yield color, ndl, falloff, (ldx, ldy, ldz)

    # Ground: Lambert only.
    g = np.flatnonzero(obj == GROUND)
    if len(g):
        diffuse = np.zeros((3, len(g)), dtype=np.float32)
        for color, ndl, _, _ in light_terms(g, None):
            for c in range(3):
                diffuse[c] += ndl * color[c]
        out[:, g] = GROUND_ALBEDO * (AMBIENT + diffuse)

    o = np.flatnonzero(obj >= 0)
    if len(o):
        k = obj[o].astype(np.intp)
        metal = geo.metal[k]
        nx, ny, nz = n[0][o], n[1][o], n[2][o]
        dx, dy, dz = d[0][o], d[1][o], d[2][o]
        inv = 1 / np.sqrt(dx * dx + dy * dy + dz * dz)
        vx, vy, vz = -dx * inv, -dy * inv, -dz * inv  # towards the camera
        diffuse = np.zeros((3, len(o)), dtype=np.float32)
        spec = np.zeros(len(o), dtype=np.float32)
        for color, ndl, falloff, (ldx, ldy, ldz) in light_terms(o, (nx, ny, nz)):
            for c in range(3):
                diffuse[c] += ndl * color[c]
            hx, hy, hz = ldx + vx, ldy + vy, ldz + vz  # Blinn-Phong half vector
            ndh = np.maximum((nx * hx + ny * hy + nz * hz) / np.sqrt(hx * hx + hy * hy + hz * hz),
                             0)
            lit = np.where(ndl > 0, falloff * np.float32(color.mean()), np.float32(0))
            rubber = _pow2k(ndh, RUBBER["shine_log2"])
            shine = np.where(metal, _pow2k(rubber, METAL["shine_log2"] - RUBBER["shine_log2"]),
                             rubber)
            spec += shine * lit
        kd = np.where(metal, np.float32(METAL["kd"]), np.float32(RUBBER["kd"]))
        ks = np.where(metal, np.float32(METAL["ks"]), np.float32(RUBBER["ks"]))
        ambient = AMBIENT_DOWN + (AMBIENT - AMBIENT_DOWN) * (0.5 + 0.5 * nz)
        # Metal mirrors a simple environment: bright overhead, grey ground below.
        ndv = nx * vx + ny * vy + nz * vz
        rz = 2 * ndv * nz - vz
        env = np.where(rz > 0, 0.35 + 0.65 * rz, 0.18 + 0.1 * rz)
        env = np.where(metal, env * np.float32(METAL["kr"]), np.float32(0))
        albedo = geo.albedo[k]  # (M, 3)
        for c in range(3):
            out[c, o] = albedo[:, c] * (kd * (ambient + diffuse[c]) + env) + ks * spec
    return out


def _resolve(linear: np.ndarray, s: int, h: int, w: int) -> np.ndarray:
    """(3, Hs, Ws) linear radiance -> (H, W, 3) uint8: box-filter sub-pixels, then gamma LUT."""
    blocks = linear.reshape(3, h, s, w, s)
    acc = np.zeros((3, h, w), dtype=np.float32)
    for a in range(s):  # fixed summation order: deterministic bytes
        for b in range(s):
            acc += blocks[:, :, a, :, b]
    acc *= np.float32(1 / (s * s))
    top = 2 ** _LUT_BITS - 1
    q = (np.clip(acc, 0, 1) * top + 0.5).astype(np.intp)
    return np.ascontiguousarray(_GAMMA_LUT[q].transpose(1, 2, 0))


def render(scene: dict, width: int, height: int, supersample: int = 2
           ) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene dict: (image (H, W, 3) uint8, object map (H, W) int16, -1 = background)."""
    hits = trace(scene, width, height, supersample)
    return shade(hits), object_map(hits)
