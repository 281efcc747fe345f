"""Frozen vit_base_patch16_224 as the single-scale ViTDet backbone on COCO (thesis table 4.2)."""
from .common.vitdet_frozen import dataloader, datasets, lr_multiplier, model, optimizer, train

model.backbone.net.model_name = "vit_base_patch16_224"
