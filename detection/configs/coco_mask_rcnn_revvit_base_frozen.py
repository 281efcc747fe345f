"""Frozen revvit_base as the single-scale ViTDet backbone on COCO (thesis table 4.2)."""
from .common.vitdet_frozen import dataloader, datasets, lr_multiplier, model, optimizer, train

model.backbone.net.model_name = "revvit_base"
