"""Reversible Vision Transformer (Mangalam et al., CVPR 2022), built from timm's layers.

Two residual streams start as copies of the patch tokens (+ position embedding); each block is a
reversible coupling with F = LayerNorm -> attention and G = LayerNorm -> MLP and no skip inside F
or G. At the end the streams are fused (default: concat, LayerNorm(2C)), tokens are mean-pooled and
a linear head classifies. The backward mode (backprop / reprop / pareprop) is a runtime setting.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from revtransfer.reversible import ReversibleCoupling, ReversibleStack, check_mode

from ._layers import Attention, DropPath, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from ._revparts import (
    MlpSublayer,
    ReversibleModelMixin,
    check_fusion,
    check_global_pool,
    fused_width,
    init_weights,
    linspace,
    merge_streams,
    merge_then,
    take_indices,
)
from .convert import own_to_model


class AttentionSublayer(nn.Module):
    """F: LayerNorm -> multi-head self-attention -> drop path (no residual: the coupling adds it)."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        return self.drop_path(self.attn(self.norm(x)))


class RevViTBlock(ReversibleCoupling):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, drop_path=0.0,
                 norm_layer=nn.LayerNorm, act_layer=nn.GELU):
        super().__init__(
            f=AttentionSublayer(dim, num_heads, qkv_bias, attn_drop, proj_drop, drop_path, norm_layer),
            g=MlpSublayer(dim, mlp_ratio, proj_drop, drop_path, norm_layer, act_layer),
        )


class RevViT(ReversibleModelMixin, nn.Module):
    def __init__(
        self,
        img_size=224,
        patch_size=16,
        in_chans=3,
        num_classes=1000,
        global_pool="avg",
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=True,
        fusion="concat",
        drop_rate=0.0,
        pos_drop_rate=0.0,
        proj_drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        backprop="pareprop",
        keep_last_activations=False,
        dynamic_img_size=False,
        norm_layer=None,
        act_layer=None,
    ):
        super().__init__()
        check_fusion(fusion)
        check_global_pool(global_pool)
        check_mode(backprop)
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.fusion = fusion
        self.num_features = self.head_hidden_size = fused_width(embed_dim, fusion)
        self.num_prefix_tokens = 0
        self.dynamic_img_size = dynamic_img_size

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            strict_img_size=not dynamic_img_size, output_fmt="NHWC" if dynamic_img_size else "NLC",
        )
        self.patch_size = patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = linspace(0.0, drop_path_rate, depth)  # stochastic depth rising over the blocks
        self.blocks = ReversibleStack(
            [RevViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, attn_drop_rate, proj_drop_rate, dpr[i], norm_layer, act_layer)
             for i in range(depth)],
            mode=backprop,
        )
        self.feature_info = [dict(num_chs=self.num_features, reduction=patch_size, module=f"blocks.blocks.{i}")
                             for i in range(depth)]
        self.norm = norm_layer(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_weights)
        self.set_backprop(backprop, keep_last_activations)

    # --- timm conventions --------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return self._block_group_matcher(r"^pos_embed|^patch_embed", r"^blocks\.blocks", r"^norm")

    def _pos_embed(self, x):
        """Patch tokens (NLC, or NHWC with a dynamic size) -> tokens (B, N, C) + position, and the grid."""
        if self.dynamic_img_size:  # NHWC from the patch embed: resample the position grid if needed
            B, H, W, C = x.shape
            pos = resample_abs_pos_embed(self.pos_embed, new_size=(H, W), num_prefix_tokens=0)
            x = x.reshape(B, H * W, C)
        else:
            (H, W), pos = self.patch_embed.grid_size, self.pos_embed
        return self.pos_drop(x + pos), (H, W)

    def fuse(self, x1, x2):
        """Termination fusion of the two streams (keeping no merged copy for backward: :func:`merge_then`)."""
        return merge_then(self.norm, x1, x2, self.fusion)

    def forward_features(self, x):
        x, _ = self._pos_embed(self.patch_embed(x))
        x1, x2 = self.blocks(x, x)
        return self.fuse(x1, x2)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's intermediate features: one per block (``indices``: the last n, or which), each the
        block's two output streams merged as the head merges them (concat: 2C channels; avg: C),
        with the final LayerNorm if ``norm``, as NCHW maps (or NLC tokens). Blocks run as
        reversible segments between the taken indices, so training through this stores no block's
        activations either. Returns the intermediates, or (final features, intermediates)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt {output_fmt!r} is not supported; use 'NCHW' or 'NLC'")
        take, _ = take_indices(len(self.blocks.blocks), indices)
        x, (H, W) = self._pos_embed(self.patch_embed(x))
        x1 = x2 = x
        start, intermediates = 0, []
        for i in take:
            x1, x2 = self.blocks.run(x1, x2, start=start, stop=i + 1)
            start = i + 1
            feat = self.fuse(x1, x2) if norm else merge_streams(x1, x2, self.fusion)
            if output_fmt == "NCHW":
                feat = feat.reshape(feat.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous()
            intermediates.append(feat)
        if intermediates_only:  # stop_early is implied: nothing after the last taken block runs
            return intermediates
        x1, x2 = self.blocks.run(x1, x2, start=start)
        return self.fuse(x1, x2), intermediates


def checkpoint_filter_fn(state_dict: dict, model: RevViT) -> dict:
    """Adapt a RevViT state dict to ``model``: unwrap trainer/DDP containers and resample the
    position embedding to the model's patch grid."""
    return own_to_model(state_dict, model)


def _cfg(**kwargs):
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "revvit_micro.untrained": _cfg(input_size=(3, 80, 80), num_classes=2, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "revvit_small.untrained": _cfg(),
    "revvit_base.untrained": _cfg(),
    "revvit_large.untrained": _cfg(),
})


def _create_revvit(variant: str, pretrained: bool = False, **kwargs) -> RevViT:
    out_indices = kwargs.pop("out_indices", 3)  # features_only: the last 3 blocks, as timm's ViT
    return build_model_with_cfg(RevViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


@register_model
def revvit_micro(pretrained=False, **kwargs) -> RevViT:
    """RevViT-Micro of the CLEVR transfer study: 80x80 input, patch 5, depth 4, 8 heads, dim 256."""
    args = dict(img_size=80, patch_size=5, embed_dim=256, depth=4, num_heads=8, mlp_ratio=4.0)
    return _create_revvit("revvit_micro", pretrained, **dict(args, **kwargs))


@register_model
def revvit_small(pretrained=False, **kwargs) -> RevViT:
    args = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_revvit("revvit_small", pretrained, **dict(args, **kwargs))


@register_model
def revvit_base(pretrained=False, **kwargs) -> RevViT:
    args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_revvit("revvit_base", pretrained, **dict(args, **kwargs))


@register_model
def revvit_large(pretrained=False, **kwargs) -> RevViT:
    args = dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16)
    return _create_revvit("revvit_large", pretrained, **dict(args, **kwargs))
