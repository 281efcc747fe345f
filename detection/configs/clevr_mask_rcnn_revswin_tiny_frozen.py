"""Frozen revswin_tiny (built at 96) under an FPN on clevr_gen's COCO output (CPU-sized)."""
from .common.clevr_fpn import dataloader, datasets, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.model_name = "revswin_tiny"
