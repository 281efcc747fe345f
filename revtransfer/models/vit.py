"""ViT-Micro, the non-reversible baseline of the CLEVR transfer study, as a timm VisionTransformer.

Its head matches RevViT's: LayerNorm on the tokens, mean-pool, linear (no class token), so the two
differ only in the residual wiring. For ViT-S/B/L use timm's ``vit_{small,base,large}_patch16_224``.
"""
from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

default_cfgs = generate_default_cfgs({
    "vit_micro.untrained": {
        "url": "", "num_classes": 2, "input_size": (3, 80, 80), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj", "classifier": "head",
    },
})


@register_model
def vit_micro(pretrained=False, **kwargs) -> VisionTransformer:
    """ViT-Micro: 80x80 input, patch 5, depth 4, 8 heads, dim 256, mlp ratio 4, mean-pooled."""
    args = dict(img_size=80, patch_size=5, embed_dim=256, depth=4, num_heads=8, mlp_ratio=4.0,
                class_token=False, global_pool="avg", fc_norm=False)
    kwargs = dict(args, **kwargs)
    out_indices = kwargs.pop("out_indices", 3)  # features_only: the last 3 blocks, as timm's own ViTs
    return build_model_with_cfg(VisionTransformer, "vit_micro", pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)
