"""Pyramid pieces the ViTDet configs need beyond detectron2's own."""
from __future__ import annotations

from detectron2.modeling.backbone.fpn import LastLevelMaxPool


class MaxPoolTopBlock(LastLevelMaxPool):
    """detectron2's ``LastLevelMaxPool`` (one extra level by stride-2 max pooling) on a chosen input
    level; the original is fixed to ``p5``, which pyramids over small images (ours start at p1)
    do not have."""

    def __init__(self, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature
