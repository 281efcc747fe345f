"""Frozen hierarchical backbone (RevSwin) under an FPN + Mask R-CNN on clevr_gen's COCO output
(CPU-sized).

Data, schedule and narrow heads are ``clevr_micro``'s; the pyramid is detectron2's FPN over the
stage outputs (strides 4-32, p2-p5; no p6: 80x80 scenes have no objects for it). The model is built
at 96, the smallest multiple of its largest stride (32) that holds the 80x80 scenes, and every batch
is padded to it. A RevSwin pretrained on clevr_gen at 80 loads at 96 (its relative positions are per
window). Pixel statistics are ImageNet's (``fpn_frozen``'s), what ``revtransfer pretrain``
normalises RevSwin with.
"""
from .clevr_micro import dataloader, datasets, lr_multiplier, optimizer, small_object_heads, train, width
from .fpn_frozen import model

model.backbone.bottom_up.model_name = "revswin_tiny"
model.backbone.bottom_up.img_size = 96
model.backbone.out_channels = width
model.backbone.top_block = None

small_object_heads(model, levels=("p2", "p3", "p4", "p5"), strides=(4, 8, 16, 32))
