"""CLEVR's camera and lights: a pinhole camera looking at the origin, and its jitter.

Numbers are those of CLEVR's base scene (camera at (7.48, -6.51, 5.34), 35 mm lens on a 32 mm
sensor, key/fill/back lamps). Blender's sensor fit is AUTO: the 32 mm span the longer image side.
Z is up; the ground is the plane z = 0.
"""
from __future__ import annotations

import math
import numpy as np

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


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float(v @ v))


class Camera:
    """Pinhole camera at `location` looking at the origin, rendering width x height pixels."""

    def __init__(self, location, width: int, height: int):
        self.location = np.asarray(location, dtype=np.float64)
        self.width, self.height = int(width), int(height)
        f = -self.location / math.sqrt(float(self.location @ self.location))
        r = np.array([f[1], -f[0], 0.0])  # forward x up(z), horizontal
        r /= math.sqrt(float(r @ r))
        u = np.array([r[1] * f[2] - r[2] * f[1], r[2] * f[0] - r[0] * f[2],
                      r[0] * f[1] - r[1] * f[0]])  # right x forward
        self.forward, self.right, self.up = f, r, u
        # Rows of a world -> camera (right, up, forward) rotation, for project().
        self._basis = np.stack([r, u, f], axis=1)

    @property
    def tan_half_fov(self) -> tuple[float, float]:
        """tan of half the horizontal and vertical field of view (sensor fit AUTO)."""
        t = SENSOR_WIDTH_MM / 2 / FOCAL_LENGTH_MM
        if self.width >= self.height:
            return t, t * self.height / self.width
        return t * self.width / self.height, t

    def ray_grid(self, supersample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unnormalised ray directions through every sub-pixel centre: three (H*s, W*s) float32
        arrays (x, y, z components). Row 0 is the top of the image."""
        w, h = self.width * supersample, self.height * supersample
        tx, ty = self.tan_half_fov
        ax = ((np.arange(w, dtype=np.float64) + 0.5) / w * 2 - 1) * tx
        ay = (1 - (np.arange(h, dtype=np.float64) + 0.5) / h * 2) * ty
        f, r, u = self.forward, self.right, self.up
        comps = []
        for c in range(3):
            comps.append((f[c] + ax[None, :] * r[c] + ay[:, None] * u[c]).astype(np.float32))
        return comps[0], comps[1], comps[2]

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> (..., 3) of (pixel x, pixel y, depth along the view axis),
        in output pixels with (0, 0) the top-left corner of the image."""
        cam = (np.asarray(points, dtype=np.float64) - self.location) @ self._basis
        depth = cam[..., 2]
        tx, ty = self.tan_half_fov
        with np.errstate(divide="ignore", invalid="ignore"):
            px = (cam[..., 0] / depth / tx + 1) / 2 * self.width
            py = (1 - cam[..., 1] / depth / ty) / 2 * self.height
        return np.stack([px, py, depth], axis=-1)

    def ground_directions(self) -> dict[str, list[float]]:
        """CLEVR's 'directions': unit vectors on the ground plane as seen from this camera."""
        behind = self.forward.copy()
        behind[2] = 0
        behind = _normalize(behind)
        right = self.right  # already horizontal
        out = {"behind": behind, "front": -behind, "right": right, "left": -right,
               "above": np.array([0.0, 0.0, 1.0]), "below": np.array([0.0, 0.0, -1.0])}
        return {k: [round(float(c), 6) for c in v] for k, v in out.items()}
