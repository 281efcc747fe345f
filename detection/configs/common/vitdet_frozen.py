"""Frozen-backbone ViTDet (Mask R-CNN + SimpleFeaturePyramid) on COCO: detectron2's ViTDet recipe
(``projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py`` with its LSJ loader) with our
frozen single-scale backbone in place of ViTDet's ViT. As in the thesis (section 4.3): no window
attention, no relative positions, no global/conv propagation blocks, backbone frozen.
"""
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detection.backbone import TimmViT
from detection.data import NpyDatasetMapper
from detection.evaluation import FastCOCOEvaluator

# --- model -------------------------------------------------------------------------------------
model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone.net = L(TimmViT)(
    model_name="vit_base_patch16_224",
    checkpoint="",  # the backbone's pretrained weights (revtransfer detect train --backbone-checkpoint)
    freeze=True,
    out_feature="last_feat",
)
# Pixel statistics of ImageNet (0-255, RGB): match them to the backbone checkpoint's preprocessing.

# --- data: large-scale jitter at 1024, as ViTDet --------------------------------------------------
image_size = 1024
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper._target_ = NpyDatasetMapper  # reads files as DatasetMapper, or images.npy rows
dataloader.test.mapper._target_ = NpyDatasetMapper
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True  # boxes from the cropped masks
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
dataloader.evaluator = L(FastCOCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    backend="faster_coco_eval",
)

# Datasets: empty paths use names registered elsewhere (detectron2's builtin coco_2017_* under
# $DETECTRON2_DATASETS); with paths, the launcher registers them under these names.
datasets = dict(
    train=dict(name="coco_2017_train", json="", images=""),
    test=dict(name="coco_2017_val", json="", images=""),
    # Evaluating on the training set is refused (detection.config.check_held_out) unless this is set.
    allow_train_eval=False,
)
dataloader.train.dataset.names = "${datasets.train.name}"
dataloader.test.dataset.names = "${datasets.test.name}"

# --- schedule: ViTDet's 100 epochs ---------------------------------------------------------------
train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.precision = None  # fp32 / bf16 / fp16 (detection.train_net.training_precision); None: as amp.enabled
train.ddp.fp16_compression = True
train.init_checkpoint = ""  # a whole-detector checkpoint; backbone weights go in model.backbone.net
train.max_iter = 184375  # 100 ep = 184375 iters * 64 images/iter / 118000 images/ep
train.eval_period = 5000
train.seed = 0

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates="${train.max_iter}",
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# AdamW as ViTDet. Its layer-wise lr decay and pos_embed weight-decay override only touch backbone
# parameters, which are frozen here (and skipped by the optimizer), so they are left out.
optimizer = model_zoo.get_config("common/optim.py").AdamW
