#!/bin/bash
# Rung 5 (next sitting): lr 8e-4, 6,000 iterations, decay at detectron2's 1x proportions (2/3, 8/9),
# so the last fifth (4,800 -> 6,000) is at lr/10 then lr/100: frozen and floor, both archs.
cd "$(git rev-parse --show-toplevel)"
FLIPS="dataloader.train.mapper.augmentations.scale_range=null model.backbone.net.feature_cache_mb=3072"
exec .venv/bin/revtransfer detect-ladder \
  --backbone vit_micro=runs/cpu/runs/vit_micro-backprop-corr0.3-frac1.0000-seed3 \
  --backbone revvit_micro=runs/cpu/runs/revvit_micro-pareprop-corr0.3-frac1.0000-seed3 \
  --rung "1x-6k=optimizer.lr=8e-4 lr_multiplier.scheduler.milestones=[4000,5333] $FLIPS" \
  --roles frozen,floor --iters 6000 --eval-period 600 --no-progress \
  --out reports/ladder/study_backbones_1x --workdir runs/detect_ladder_study
