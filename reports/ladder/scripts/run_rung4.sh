#!/bin/bash
# Rung 4: lr 8e-4 at 9,000 iterations (3x rung 3's), the frozen ViT alone (rung 3's slowest learner):
# where, if anywhere, its last fifth moves < 1 box AP.
cd "$(git rev-parse --show-toplevel)"
FLIPS="dataloader.train.mapper.augmentations.scale_range=null model.backbone.net.feature_cache_mb=3072"
exec .venv/bin/revtransfer detect-ladder \
  --backbone vit_micro=runs/cpu/runs/vit_micro-backprop-corr0.3-frac1.0000-seed3 \
  --rung "lr8e-4-9k=optimizer.lr=8e-4 $FLIPS" \
  --roles frozen --iters 9000 --eval-period 900 --no-progress \
  --out reports/ladder/study_backbones_9k --workdir runs/detect_ladder_study
