"""Frozen ViTDet at CPU scale for clevr_gen's COCO output (80x80 scenes, ViT-Micro/RevViT-Micro).

The ViTDet structure is kept (single-scale frozen backbone, SimpleFeaturePyramid, Mask R-CNN with
LN conv heads, LSJ-style augmentation, AdamW with warmup and step decay) and scaled down: scenes
stay at their 80x80 pretraining size, the pyramid is 64 channels wide, RPN/ROI sample
few boxes, heads are narrow and anchors fit objects of 4-60 pixels.

Micro models have patch size 5: their stride-5 tokens are resampled to stride 4 (see TimmViT), the
pyramid takes scales (2, 1, 1/2) of that (p1-p3) plus a max-pooled p4.
"""
import detectron2.data.transforms as T
import torch
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detection.data import clevr_train_augmentations
from detection.layers import LayerNorm2d
from detection.pyramid import MaxPoolTopBlock
from detection.roi_align import SeparableBackwardROIPooler
from detection.rpn import ImageParallelRPN

from .vitdet_frozen import dataloader, datasets, model, optimizer, train

# clevr_gen's scenes are 80x80, the micro models' pretraining size: detect at that scale (a
# resolution the frozen backbone knows; 2x would cost 4-10x the CPU time).
image_size = 80
width = 64  # pyramid and head channels

# --- model -------------------------------------------------------------------------------------
model.backbone.net.model_name = "vit_micro"
model.backbone.out_channels = width
model.backbone.scale_factors = (2.0, 1.0, 0.5)
model.backbone.top_block = L(MaxPoolTopBlock)(in_feature="p3")
model.backbone.square_pad = image_size
# ViTDet's channels-first LayerNorm ("LN"), as one fused op: the same function, a faster CPU step.
model.backbone.norm = LayerNorm2d
# ViT-Micro/RevViT-Micro were pretrained on images normalised with mean 0.5, std 0.5.
model.pixel_mean = [127.5, 127.5, 127.5]
model.pixel_std = [127.5, 127.5, 127.5]


def small_object_heads(model, levels, strides):
    """RPN and ROI heads for clevr_gen's objects (4-60 pixels), narrow and sampling few boxes:
    anchors of 8-64 pixels on the four pyramid ``levels`` (``strides`` apart), ROI pooling from the
    first three. Shared by the single-scale (ViTDet) and the FPN configs."""
    rpn = model.proposal_generator
    # detectron2's RPN and ROIPooler with the CPU step's single-threaded parts (proposal NMS, ROIAlign
    # backward) spread over the cores: the same functions (detection/rpn.py, detection/roi_align.py)
    rpn._target_ = ImageParallelRPN
    rpn.in_features = list(levels)
    rpn.head.in_channels = width
    rpn.anchor_generator.sizes = [[8], [16], [32], [64]]
    rpn.anchor_generator.strides = list(strides)
    rpn.batch_size_per_image = 64
    rpn.pre_nms_topk = (600, 300)
    rpn.post_nms_topk = (150, 100)

    roi = model.roi_heads
    roi.num_classes = 3  # clevr_gen's default categories (shapes); the launcher sets it from the json
    roi.batch_size_per_image = 32
    for pooler in (roi.box_pooler, roi.mask_pooler):
        pooler._target_ = SeparableBackwardROIPooler
        pooler.scales = tuple(1.0 / s for s in strides[:3])
        pooler.canonical_box_size = 32  # a 32-pixel box pools from the level of stride 4
        pooler.canonical_level = 2
    roi.box_in_features = roi.mask_in_features = list(levels[:3])
    roi.box_head.input_shape = ShapeSpec(channels=width, height=7, width=7)
    roi.box_head.conv_dims = [width] * 4
    roi.box_head.fc_dims = [256]
    roi.box_predictor.input_shape = ShapeSpec(channels=256)
    roi.box_predictor.test_topk_per_image = 50
    roi.mask_head.input_shape = ShapeSpec(channels=width, height=14, width=14)
    roi.mask_head.conv_dims = [width] * 5
    roi.box_head.conv_norm = roi.mask_head.conv_norm = LayerNorm2d


small_object_heads(model, levels=("p1", "p2", "p3", "p4"), strides=(2, 4, 8, 16))

# --- data ----------------------------------------------------------------------------------------
datasets.train.name, datasets.test.name = "clevr_train", "clevr_val"
# Flip, then rescale by 0.8-1.25 and crop back (ViTDet's large-scale jitter, at small scale);
# `dataloader.train.mapper.augmentations.scale_range=null` keeps flips only.
dataloader.train.mapper.augmentations = L(clevr_train_augmentations)(size=image_size, scale_range=(0.8, 1.25))
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
dataloader.train.mapper.instance_mask_format = "bitmask"  # clevr_gen writes RLE masks, not polygons
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
# Every scene has the same size, so grouping by aspect ratio groups nothing; without it the worker
# hands over whole batches (one transfer per batch, two batches ahead) instead of single images.
dataloader.train.aspect_ratio_grouping = False
dataloader.test.num_workers = 1
dataloader.test.batch_size = 8  # batched inference: the same detections, a quarter less evaluation time

# --- schedule ------------------------------------------------------------------------------------
train.device = "cuda" if torch.cuda.is_available() else "cpu"
# The training forward under bf16 autocast, on a CPU (AMX / AVX512-BF16) or a GPU; evaluation in fp32.
train.precision = "bf16"
train.amp.enabled = False
train.channels_last = True  # the heads' convolutions channels-last (detection.train_net.build_model)
train.ddp.fp16_compression = False
train.max_iter = 3000
train.eval_period = 1000
train.checkpointer.period = 1000
train.log_period = 20
warmup_iters = 50
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[int(train.max_iter * 0.89), int(train.max_iter * 0.96)],  # ViTDet's proportions
        num_updates="${train.max_iter}",
    ),
    warmup_length=warmup_iters / train.max_iter,
    warmup_factor=0.001,
)
optimizer.lr = 2e-4  # heads from scratch on a small set, batch 8
optimizer.fused = True  # AdamW's one-kernel update (CPU and CUDA, torch >= 2.4): the same update, less overhead
