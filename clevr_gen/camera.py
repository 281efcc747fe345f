"""CLEVR's camera and lights: a pinhole camera looking at the origin, and its jitter.

Numbers are those of CLEVR's base scene (camera at (7.48, -6.51, 5.34), 35 mm lens on a 32 mm
sensor, key/fill/back lamps). Blender's sensor fit is AUTO: the 32 mm span the longer image side.
Z is up; the ground is the plane z = 0.
"""
from __future__ import annotations

import math

import numpy as np

from .jit import kernel

CAMERA_LOCATION = (7.48113, -6.50764, 5.34367)
FOCAL_LENGTH_MM = 35.0
SENSOR_WIDTH_MM = 32.0
LIGHT_LOCATIONS = {
    "key": (6.44671, -2.90517, 4.2584),
    "fill": (-4.67112, -4.0136, 3.01122),
    "back": (-1.1685, 2.64602, 5.81574),
}
CAMERA_JITTER = 0.5  # CLEVR default: each coordinate += U(-0.5, 0.5)
LIGHT_JITTER = 1.0  # CLEVR default: each coordinate += U(-1, 1)


class Camera:
    """Pinhole camera at `location` looking at the origin, rendering width x height pixels."""

    def __init__(self, location, width: int, height: int):
        # Plain float arithmetic: a camera is built for every scene attempt, numpy's per-call
        # overhead would dominate on 3-vectors.
        x, y, z = (float(v) for v in location)
        n = math.sqrt(x * x + y * y + z * z)
        f = (-x / n, -y / n, -z / n)
        rn = math.sqrt(f[1] * f[1] + f[0] * f[0])
        r = (f[1] / rn, -f[0] / rn, 0.0)  # forward x up(z), horizontal
        u = (r[1] * f[2] - r[2] * f[1], r[2] * f[0] - r[0] * f[2],
             r[0] * f[1] - r[1] * f[0])  # right x forward
        self.width, self.height = int(width), int(height)
        # Rows: location, forward, right, up (what the render kernels take).
        self.view = np.array([(x, y, z), f, r, u])
        self.location, self.forward, self.right, self.up = self.view

    @property
    def tan_half_fov(self) -> tuple[float, float]:
        """tan of half the horizontal and vertical field of view (sensor fit AUTO)."""
        t = SENSOR_WIDTH_MM / 2 / FOCAL_LENGTH_MM
        if self.width >= self.height:
            return t, t * self.height / self.width
        return t * self.width / self.height, t

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> (..., 3) of (pixel x, pixel y, depth along the view axis),
        in output pixels with (0, 0) the top-left corner of the image."""
        points = np.asarray(points, dtype=np.float64)
        tx, ty = self.tan_half_fov
        flat = _project_points(self.view, tx, ty, self.width, self.height,
                               np.ascontiguousarray(points.reshape(-1, 3)))
        return flat.reshape(points.shape)

    def ground_directions(self) -> dict[str, list[float]]:
        """CLEVR's 'directions': unit vectors on the ground plane as seen from this camera."""
        fx, fy = float(self.forward[0]), float(self.forward[1])
        n = math.sqrt(fx * fx + fy * fy)
        bx, by = round(fx / n, 6), round(fy / n, 6)
        rx, ry = round(float(self.right[0]), 6), round(float(self.right[1]), 6)
        return {"behind": [bx, by, 0.0], "front": [-bx, -by, 0.0],
                "right": [rx, ry, 0.0], "left": [-rx, -ry, 0.0],
                "above": [0.0, 0.0, 1.0], "below": [0.0, 0.0, -1.0]}


@kernel(inline="always")
def project_point(view, tx, ty, width, height, x, y, z):
    """World point (x, y, z) -> (pixel x, pixel y, depth along the view axis) in a width x
    height image, (0, 0) its top-left corner, for the camera `view` (rows location, forward,
    right, up, as Camera.view) with tan of the half fields of view tx, ty."""
    rx, ry, rz = x - view[0, 0], y - view[0, 1], z - view[0, 2]
    depth = rx * view[1, 0] + ry * view[1, 1] + rz * view[1, 2]
    cx = rx * view[2, 0] + ry * view[2, 1] + rz * view[2, 2]
    cy = rx * view[3, 0] + ry * view[3, 1] + rz * view[3, 2]
    return (cx / depth / tx + 1.0) / 2.0 * width, (1.0 - cy / depth / ty) / 2.0 * height, depth


@kernel
def _project_points(view, tx, ty, width, height, points):
    out = np.empty_like(points)
    for m in range(points.shape[0]):
        out[m, 0], out[m, 1], out[m, 2] = project_point(view, tx, ty, width, height,
                                                        points[m, 0], points[m, 1], points[m, 2])
    return out
