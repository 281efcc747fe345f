#!/usr/bin/env bash
# The frozen detector's training iteration at the detection study's shape (backbones of the cpu
# sweep: width 128, depth 4, patch 4, pretrained at 48 px; detector at 80 px, batch 8), both archs,
# three settings interleaved over 5 rounds: `today` (the step before issue 25's speed work: fp32,
# detectron2's elementwise LN, RPN, ROIPooler, per-tensor AdamW, aspect-ratio grouping, NCHW heads),
# the configs as they are (bf16 heads, fused LN, separable ROIAlign backward, image-parallel RPN
# proposals, fused AdamW, batch-level loading, channels-last heads), and those with flips-only
# augmentation and the frozen backbone's feature cache.
#   OUT=reports/bench/detect_cpu/detect_step_study_shape.json bash reports/bench/detect_cpu/bench_study_shape.sh
#   WARMUP=130 DATA="--data <clevr_gen COCO set>" OUT=reports/bench/detect_cpu/detect_iteration_study_shape_loader.json \
#       bash reports/bench/detect_cpu/bench_study_shape.sh
set -euo pipefail
TODAY="today=train.precision=fp32 model.backbone.norm=LN model.roi_heads.box_head.conv_norm=LN model.roi_heads.mask_head.conv_norm=LN model.proposal_generator._target_=detectron2.modeling.proposal_generator.rpn.RPN model.roi_heads.box_pooler._target_=detectron2.modeling.poolers.ROIPooler model.roi_heads.mask_pooler._target_=detectron2.modeling.poolers.ROIPooler optimizer.fused=False dataloader.train.aspect_ratio_grouping=True train.channels_last=False"
${REVTRANSFER:-.venv/bin/revtransfer} detect bench --config clevr_mask_rcnn_vit_micro_frozen --config clevr_mask_rcnn_revvit_micro_frozen \
    --variant "$TODAY" --variant "flips+cache=dataloader.train.mapper.augmentations.scale_range=null model.backbone.net.feature_cache_mb=2048" \
    --reference today --no-compare-unfrozen --batch-size 8 --iters 5 --warmup ${WARMUP:-2} --rounds 5 --device cpu $DATA \
    --out $OUT "model.backbone.net.model_kwargs={patch_size:4,embed_dim:128,depth:4,num_heads:4,img_size:48}"
