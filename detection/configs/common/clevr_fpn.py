"""Frozen hierarchical backbone (RevSwin) under an FPN + Mask R-CNN on clevr_gen's COCO output
(CPU-sized).

Data, schedule and narrow heads are ``clevr_micro``'s; the pyramid is detectron2's FPN over the
stage outputs (strides 4-32, p2-p5; no p6: 80x80 scenes have no objects for it). The model is built
at 96, the smallest multiple of its largest stride (32) that holds the 80x80 scenes, and every batch
is padded to it. A RevSwin pretrained on clevr_gen at 80 loads at 96 (its relative positions are per
window). Pixel statistics are ImageNet's (``fpn_frozen``'s), what ``revtransfer pretrain``
normalises RevSwin with.
"""
from detectron2.layers import ShapeSpec

from .clevr_micro import dataloader, datasets, lr_multiplier, optimizer, train, width
from .fpn_frozen import model

model.backbone.bottom_up.model_name = "revswin_tiny"
model.backbone.bottom_up.img_size = 96
model.backbone.out_channels = width
model.backbone.top_block = None

rpn = model.proposal_generator
rpn.in_features = ["p2", "p3", "p4", "p5"]
rpn.head.in_channels = width
rpn.anchor_generator.sizes = [[8], [16], [32], [64]]
rpn.anchor_generator.strides = [4, 8, 16, 32]
rpn.batch_size_per_image = 64
rpn.pre_nms_topk = (600, 300)
rpn.post_nms_topk = (150, 100)

roi = model.roi_heads
roi.num_classes = 3  # clevr_gen's default categories (shapes); the launcher sets it from the json
roi.batch_size_per_image = 32
for pooler in (roi.box_pooler, roi.mask_pooler):
    pooler.scales = (1.0 / 4, 1.0 / 8, 1.0 / 16)
    pooler.canonical_box_size = 32
    pooler.canonical_level = 2  # a 32-pixel box pools from p2, 64 from p3
roi.box_in_features = roi.mask_in_features = ["p2", "p3", "p4"]
roi.box_head.input_shape = ShapeSpec(channels=width, height=7, width=7)
roi.box_head.conv_dims = [width] * 4
roi.box_head.fc_dims = [256]
roi.box_predictor.input_shape = ShapeSpec(channels=256)
roi.box_predictor.test_topk_per_image = 50
roi.mask_head.input_shape = ShapeSpec(channels=width, height=14, width=14)
roi.mask_head.conv_dims = [width] * 5
