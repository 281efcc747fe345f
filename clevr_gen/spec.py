"""DatasetSpec: everything that determines a dataset's bytes (and nothing that does not, e.g. workers).

Validation happens here, before any work: bad sizes, unknown attribute words, infeasible
correlations and cells the X/Y conjunctions make impossible are all reported up front.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from . import labels, vocab
from .render import RENDERER_VERSION

SPLITS = ("pretrain", "transfer")
COCO_CATEGORY_MODES = ("shape", "shape_color_material")
IMAGE_FORMATS = ("npy", "png")
DEFAULT_X = "rubber green sphere"
DEFAULT_Y = "metal yellow cube"
# CLEVR asks 200 visible pixels per object at 320x240; the default scales that with image area.
CLEVR_MIN_PIXELS, CLEVR_AREA = 200, 320 * 240
MAX_SIDE = 4096


def parse_size(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """"80" -> (80, 80); "320x240" -> (320, 240) as (width, height)."""
    if isinstance(text, tuple):
        w, h = text
    elif isinstance(text, int):
        w = h = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", str(text))
        if not m:
            raise ValueError(f"size {text!r} is not understood; give N (square) or WIDTHxHEIGHT, "
                             f"e.g. 80 or 320x240")
        w = int(m.group(1))
        h = int(m.group(2)) if m.group(2) else w
    for name, v in (("width", w), ("height", h)):
        if not 8 <= v <= MAX_SIDE:
            raise ValueError(f"image {name}={v} is out of range; allowed 8..{MAX_SIDE} pixels")
    return int(w), int(h)


def default_min_pixels(width: int, height: int) -> int:
    return max(1, round(CLEVR_MIN_PIXELS * width * height / CLEVR_AREA))


@dataclass(frozen=True)
class DatasetSpec:
    split: str = "pretrain"
    n: int = 1000
    p_x: float = 0.5
    p_y: float = 0.5
    corr: float | None = 0.0
    x: dict = field(default_factory=lambda: vocab.parse_conjunction(DEFAULT_X))
    y: dict = field(default_factory=lambda: vocab.parse_conjunction(DEFAULT_Y))
    width: int = 80
    height: int = 80
    min_pixels: int | None = None  # None: default_min_pixels(width, height)
    min_objects: int = 3
    max_objects: int = 10
    seed: int = 0
    supersample: int = 2
    coco: bool = False
    coco_categories: str = "shape"
    image_format: str = "npy"
    renderer: str = RENDERER_VERSION

    def __post_init__(self):
        # Normalise what users may pass loosely, then validate; frozen, so go through object.__setattr__.
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("x", vocab.parse_conjunction(self.x, "X"))
        set_("y", vocab.parse_conjunction(self.y, "Y"))
        if self.min_pixels is None:
            set_("min_pixels", default_min_pixels(self.width, self.height))
        if self.split == "transfer":
            # Transfer: X never present, so P(X)=0 and Corr(X,Y) is undefined.
            if self.p_x not in (0, None) or self.corr is not None:
                raise ValueError(f"split 'transfer' has no X: p_x must be 0 (got {self.p_x}) and "
                                 f"corr unset (got {self.corr})")
            set_("p_x", 0.0)
        self.validate()

    def validate(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is unknown; allowed: {', '.join(SPLITS)}")
        parse_size((self.width, self.height))
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be a non-negative integer")
        if not 1 <= self.min_objects <= self.max_objects <= 20:
            raise ValueError(f"object counts min={self.min_objects}, max={self.max_objects} must "
                             f"satisfy 1 <= min <= max <= 20")
        if not 1 <= self.supersample <= 8:
            raise ValueError(f"supersample={self.supersample} must lie in 1..8")
        if not isinstance(self.min_pixels, int) or self.min_pixels < 1:
            raise ValueError(f"min_pixels={self.min_pixels!r} must be a positive integer")
        if self.min_pixels > self.width * self.height // 4:
            raise ValueError(f"min_pixels={self.min_pixels} is more than a quarter of a "
                             f"{self.width}x{self.height} image; no scene of several objects fits")
        if self.coco_categories not in COCO_CATEGORY_MODES:
            raise ValueError(f"coco_categories={self.coco_categories!r} is unknown; allowed: "
                             f"{', '.join(COCO_CATEGORY_MODES)}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format={self.image_format!r} is unknown; allowed: "
                             f"{', '.join(IMAGE_FORMATS)}")
        if self.split == "pretrain":
            if self.corr is None or not math.isfinite(self.corr):
                raise ValueError("split 'pretrain' needs corr (Corr(X,Y), a number in [-1, 1])")
        counts = self.cell_counts()  # raises InfeasibleTargetError with the feasible range
        self._check_cells_buildable(counts)

    def cell_counts(self) -> labels.CellCounts:
        return labels.joint_counts(self.n, self.p_x, self.p_y,
                                   None if self.split == "transfer" else self.corr)

    def _check_cells_buildable(self, counts: labels.CellCounts) -> None:
        """Every non-empty cell needs an object type that realises it (e.g. X=sphere, Y=green
        makes 'X and not Y' need a non-green sphere, which exists; X=green sphere, Y=sphere does
        not allow 'X and not Y' at all)."""
        combos = vocab.all_combinations()

        def exists(want_x: bool, want_y: bool) -> bool:
            return any(vocab.matches(o, self.x) == want_x and vocab.matches(o, self.y) == want_y
                       for o in combos)

        x_txt, y_txt = vocab.describe(self.x), vocab.describe(self.y)
        if counts.n10 and not exists(True, False):
            raise labels.InfeasibleTargetError(
                f"every '{x_txt}' object is also a '{y_txt}' object, so a scene with X but "
                f"without Y is impossible, yet the targets ask for {counts.n10} of them")
        if counts.n01 and not exists(False, True):
            raise labels.InfeasibleTargetError(
                f"every '{y_txt}' object is also a '{x_txt}' object, so a scene with Y but "
                f"without X is impossible, yet the targets ask for {counts.n01} of them")
        if counts.n11 and self.min_objects < 2:
            raise ValueError(f"min_objects={self.min_objects}: scenes with both X and Y hold "
                             f"two target objects, so min_objects must be at least 2")

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown spec fields {sorted(unknown)}")
        return cls(**d)

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Human-readable list of fields where `other` (a spec dict) differs from this spec."""
        mine = self.to_dict()
        keys = sorted(set(mine) | set(other))
        return [f"{k}: {other.get(k)!r} there vs {mine.get(k)!r} now"
                for k in keys if mine.get(k) != other.get(k)]
