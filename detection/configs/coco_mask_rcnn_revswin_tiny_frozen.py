"""Frozen revswin_tiny (built at 1024) under an FPN + Mask R-CNN on COCO."""
from .common.fpn_frozen import dataloader, datasets, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.model_name = "revswin_tiny"
