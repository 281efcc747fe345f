#!/bin/bash
# The detection ladder on the detection study's own backbones (the cpu sweep's corr 0.3, full-data,
# seed-3 cells), flips + feature cache; the rung's own arguments follow, e.g.
#   reports/ladder/scripts/study_backbones.sh --rung "lr8e-4=optimizer.lr=8e-4" --roles frozen --iters 3000 ...
# BACKBONES="vit_micro" runs one arch. Each rung's call is in NOTES.md.
cd "$(git rev-parse --show-toplevel)"
FLIPS="dataloader.train.mapper.augmentations.scale_range=null model.backbone.net.feature_cache_mb=3072"
declare -A RUN=([vit_micro]=vit_micro-backprop [revvit_micro]=revvit_micro-pareprop)
args=()
for arch in ${BACKBONES:-vit_micro revvit_micro}; do
  args+=(--backbone "$arch=runs/cpu/runs/${RUN[$arch]}-corr0.3-frac1.0000-seed3")
done
exec .venv/bin/revtransfer detect-ladder "${args[@]}" --workdir runs/detect_ladder_study --no-progress "$@" $FLIPS
