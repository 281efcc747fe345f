"""Frozen hierarchical backbone (RevSwin, RevMViT) + FPN + Mask R-CNN on COCO: the recipe of
``vitdet_frozen`` (LSJ at 1024, ViTDet's schedule, AdamW, LN conv heads, 2-conv RPN) with
detectron2's FPN (LN on its convs) over the model's stage outputs in place of the
SimpleFeaturePyramid, as detectron2 runs Swin and MViTv2 (``projects/ViTDet/configs/COCO/
mask_rcnn_swin_*``, ``*_mvitv2_*``; those train the backbone, ours stays frozen).

The model is built at the LSJ size and FPN pads every batch to that square (``square_pad``): these
models take one input size (see :class:`detection.backbone.TimmHierarchical`).
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from detection.backbone import TimmHierarchical

from .vitdet_frozen import dataloader, datasets, lr_multiplier, model, optimizer, train

image_size = 1024  # vitdet_frozen's LSJ crop size

model.backbone = L(FPN)(
    bottom_up=L(TimmHierarchical)(
        model_name="revswin_tiny",
        img_size=image_size,
        checkpoint="",  # the backbone's pretrained weights (revtransfer detect train --backbone-checkpoint)
        freeze=True,
        out_features=("res2", "res3", "res4", "res5"),  # strides 4-32: p2-p5, and p6 by max pooling
    ),
    in_features="${.bottom_up.out_features}",
    out_channels=256,
    norm="LN",
    top_block=L(LastLevelMaxPool)(),
    square_pad="${.bottom_up.img_size}",
)
