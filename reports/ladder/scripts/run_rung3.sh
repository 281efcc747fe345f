#!/bin/bash
# Rung 3 of the detection ladder: the study's own backbones (cpu sweep, corr 0.3, full data, seed 3),
# flips + feature cache, lr 8e-4, frozen runs first (the lr 4e-4 rung planned beside it was not run).
cd "$(git rev-parse --show-toplevel)"
FLIPS="dataloader.train.mapper.augmentations.scale_range=null model.backbone.net.feature_cache_mb=3072"
exec .venv/bin/revtransfer detect-ladder \
  --backbone vit_micro=runs/cpu/runs/vit_micro-backprop-corr0.3-frac1.0000-seed3 \
  --backbone revvit_micro=runs/cpu/runs/revvit_micro-pareprop-corr0.3-frac1.0000-seed3 \
  --rung "lr8e-4=optimizer.lr=8e-4 $FLIPS" \
  --roles frozen --iters 3000 --eval-period 300 --no-progress \
  --out reports/ladder/study_backbones --workdir runs/detect_ladder_study
