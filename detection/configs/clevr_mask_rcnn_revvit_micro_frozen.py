"""Frozen revvit_micro as the single-scale ViTDet backbone on clevr_gen's COCO output (CPU-sized)."""
from .common.clevr_micro import dataloader, datasets, lr_multiplier, model, optimizer, train

model.backbone.net.model_name = "revvit_micro"
