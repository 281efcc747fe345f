"""Reversible MViTv2 (Rev-MViT, Mangalam et al., CVPR 2022), built from timm's MViTv2 pieces.

Layout (tokens (B, N, C), no class token, MViTv2-T/B settings: conv pooling of q/k/v with kernel 3,
adaptive k/v stride, decomposed relative position bias, residual pooling, attention-side channel
expansion):

    image -> conv patch embed (7x7, stride 4) -> I1 = I2 = tokens
      stage 0: reversible stack (its blocks keep resolution and width)
      stage s > 0: [fuse the streams -> stage-transition block (MViTv2 block with q-pooling stride 2
                   and the channel change C -> 2C, its own pooled/projected shortcut) -> I1 = I2]
                   (non-reversible, ordinary autograd, activations cached) -> reversible stack of the
                   remaining depth_s - 1 stage-preserving blocks
    -> termination fusion (concat + LN(2C) or avg + LN(C)) -> mean over tokens -> linear head

A stage-preserving block is a coupling with F = LayerNorm -> multiscale attention (k/v pooled,
stride-1 q pooling) -> drop path and G = LayerNorm -> MLP -> drop path. The fusion before each
transition is ``transition_fusion``: ``"avg"`` (Rev-MViT's default PRE_Q_FUSION) or ``"concat"``
(concat, Linear 2C -> C). A stage's first block counts in its depth, as in MViTv2, so
``depths=(1, 2, 5, 2)`` gives stacks of 1, 1, 4 and 1 reversible blocks and 3 transitions.
timm's ``mvitv2_{tiny,base}`` are the non-reversible counterparts.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.mvitv2 import MultiScaleAttention, MultiScaleBlock
from timm.models.mvitv2 import PatchEmbed as ConvPatchEmbed
from torch import nn

from revtransfer.reversible import ReversibleCoupling, ReversibleSequence, ReversibleStack, check_mode

from ._layers import DropPath
from ._revparts import (
    MlpSublayer,
    ReversibleModelMixin,
    StreamFusion,
    check_fusion,
    check_global_pool,
    check_stage_depths,
    fused_width,
    init_weights,
    stage_drop_path_rates,
)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def kv_strides(stride_q, stride_kv_adaptive):
    """MViTv2's adaptive k/v stride: starts at ``stride_kv_adaptive`` and is divided by every q stride."""
    out, s = [], list(stride_kv_adaptive)
    for sq in stride_q:
        if min(sq) > 1:
            s = [max(s[d] // sq[d], 1) for d in range(len(s))]
        out.append(tuple(s))
    return out


class MultiScaleAttentionSublayer(nn.Module):
    """F: LayerNorm -> MViTv2 multiscale attention at a fixed token grid -> drop path."""

    def __init__(self, dim, num_heads, feat_size, kernel_qkv=(3, 3), stride_kv=(1, 1), qkv_bias=True,
                 drop_path=0.0, norm_layer=nn.LayerNorm, mode="conv", rel_pos_type="spatial", residual_pooling=True):
        super().__init__()
        self.feat_size = list(feat_size)
        self.norm = norm_layer(dim)
        self.attn = MultiScaleAttention(
            dim, dim, feat_size=tuple(feat_size), num_heads=num_heads, qkv_bias=qkv_bias, mode=mode,
            kernel_q=kernel_qkv, kernel_kv=kernel_qkv, stride_q=(1, 1), stride_kv=stride_kv,
            has_cls_token=False, rel_pos_type=rel_pos_type, residual_pooling=residual_pooling, norm_layer=norm_layer,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x, _ = self.attn(self.norm(x), self.feat_size)
        return self.drop_path(x)


class RevMViTBlock(ReversibleCoupling):
    def __init__(self, dim, num_heads, feat_size, mlp_ratio=4.0, kernel_qkv=(3, 3), stride_kv=(1, 1), qkv_bias=True,
                 drop_path=0.0, norm_layer=nn.LayerNorm, **attn_kwargs):
        super().__init__(
            f=MultiScaleAttentionSublayer(dim, num_heads, feat_size, kernel_qkv, stride_kv, qkv_bias, drop_path,
                                          norm_layer, **attn_kwargs),
            g=MlpSublayer(dim, mlp_ratio, 0.0, drop_path, norm_layer),
        )


class MViTTransition(nn.Module):
    """Non-reversible stage transition: fuse the streams, run MViTv2's stage-first block (q pooled
    with stride > 1, channels C -> C'), restart the streams as I1 = I2."""

    def __init__(self, dim, dim_out, num_heads, feat_size, stride_q, fusion="avg", fuse=True, mlp_ratio=4.0,
                 kernel_qkv=(3, 3), stride_kv=(1, 1), qkv_bias=True, drop_path=0.0, norm_layer=nn.LayerNorm,
                 mode="conv", rel_pos_type="spatial", residual_pooling=True, expand_attn=True):
        super().__init__()
        self.feat_size = list(feat_size)
        self.fuse = StreamFusion(dim, fusion) if fuse else None
        self.block = MultiScaleBlock(
            dim=dim, dim_out=dim_out, num_heads=num_heads, feat_size=tuple(feat_size), mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, drop_path=drop_path, norm_layer=norm_layer, kernel_q=kernel_qkv, kernel_kv=kernel_qkv,
            stride_q=stride_q, stride_kv=stride_kv, mode=mode, has_cls_token=False, expand_attn=expand_attn,
            rel_pos_type=rel_pos_type, residual_pooling=residual_pooling,
        )
        # q pooling: kernel_qkv with padding kernel // 2, as in MViTv2; sizes need not divide the stride
        self.out_size = [_conv_out(s, k, st, k // 2) for s, k, st in zip(feat_size, kernel_qkv, stride_q)]

    def forward(self, x1, x2):
        x = self.fuse(x1, x2) if self.fuse is not None else x1
        x, _ = self.block(x, self.feat_size)
        return x, x


class RevMViT(ReversibleModelMixin, nn.Module):
    def __init__(
        self,
        img_size=224,
        in_chans=3,
        num_classes=1000,
        global_pool="avg",
        embed_dim=96,
        depths=(1, 2, 5, 2),
        num_heads=1,
        mlp_ratio=4.0,
        qkv_bias=True,
        kernel_qkv=(3, 3),
        stride_q=((1, 1), (2, 2), (2, 2), (2, 2)),
        stride_kv_adaptive=(4, 4),
        patch_kernel=(7, 7),
        patch_stride=(4, 4),
        patch_padding=(3, 3),
        mode="conv",
        rel_pos_type="spatial",
        residual_pooling=True,
        fusion="concat",
        transition_fusion="avg",
        drop_rate=0.0,
        drop_path_rate=0.0,
        backprop="pareprop",
        keep_last_activations=False,
        norm_layer=None,
    ):
        super().__init__()
        check_fusion(fusion)
        check_fusion(transition_fusion, "transition fusion")
        check_global_pool(global_pool)
        check_mode(backprop)
        num_stages = len(depths)
        check_stage_depths(depths)

        def per_stage(v):  # a scalar doubles per stage, as in MViTv2
            return tuple(v) if isinstance(v, (list, tuple)) else tuple(v * 2 ** i for i in range(num_stages))

        dims, heads = per_stage(embed_dim), per_stage(num_heads)
        stride_q = [_pair(s) for s in stride_q][:num_stages]
        if len(dims) != num_stages or len(heads) != num_stages or len(stride_q) != num_stages:
            raise ValueError("embed_dim, num_heads and stride_q need one entry per stage (or a scalar)")
        stride_kv = kv_strides(stride_q, stride_kv_adaptive)
        kernel_qkv = _pair(kernel_qkv)
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        img_size = _pair(img_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.depths = tuple(depths)
        self.fusion = fusion
        self.transition_fusion = transition_fusion
        self.num_prefix_tokens = 0

        self.patch_embed = ConvPatchEmbed(in_chans, dims[0], kernel=_pair(patch_kernel), stride=_pair(patch_stride),
                                          padding=_pair(patch_padding))
        self.patch_embed.img_size = img_size  # the input size this (fixed-size) model was built for
        feat_size = [_conv_out(s, k, st, p) for s, k, st, p in
                     zip(img_size, _pair(patch_kernel), _pair(patch_stride), _pair(patch_padding))]
        self.patch_grid = tuple(feat_size)
        dpr = stage_drop_path_rates(drop_path_rate, depths)
        attn_kwargs = dict(mode=mode, rel_pos_type=rel_pos_type, residual_pooling=residual_pooling)
        stages, self.feature_info, self._feature_grids = [], [], []
        dim, reduction = dims[0], _pair(patch_stride)[0]
        for s in range(num_stages):
            first_is_transition = dims[s] != dim or max(stride_q[s]) > 1
            if first_is_transition:
                t = MViTTransition(dim, dims[s], heads[s], feat_size, stride_q[s], transition_fusion,
                                   fuse=bool(stages), mlp_ratio=mlp_ratio, kernel_qkv=kernel_qkv,
                                   stride_kv=stride_kv[s], qkv_bias=qkv_bias, drop_path=dpr[s][0],
                                   norm_layer=norm_layer, **attn_kwargs)
                stages.append(t)
                feat_size, reduction = t.out_size, reduction * max(stride_q[s])
            dim = dims[s]
            n_rev = depths[s] - int(first_is_transition)
            if n_rev > 0:
                stages.append(ReversibleStack(
                    [RevMViTBlock(dim, heads[s], feat_size, mlp_ratio, kernel_qkv, stride_kv[s], qkv_bias,
                                  dpr[s][j], norm_layer, **attn_kwargs)
                     for j in range(int(first_is_transition), depths[s])],
                    mode=backprop,
                ))
            self.feature_info.append(dict(num_chs=fused_width(dim, fusion), reduction=reduction,
                                          module=f"layers.stages.{len(stages) - 1}"))
            self._feature_grids.append(tuple(feat_size))
        self.feat_size = tuple(feat_size)
        self.layers = ReversibleSequence(stages)
        self._build_fused_head(dim, fusion, norm_layer, drop_rate, num_classes)
        self.apply(init_weights)
        self.set_backprop(backprop, keep_last_activations)

    # --- timm conventions --------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self):
        return {n for n, _ in self.named_parameters() if "rel_pos_h" in n or "rel_pos_w" in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return self._stage_group_matcher(r"^patch_embed", r"^fuse", coarse)

    def forward_features(self, x):
        """Image (B, 3, H, W) -> fused, normalised tokens (B, N, num_features)."""
        x, _ = self.patch_embed(x)
        x1, x2 = self.layers(x, x)
        return self.fuse(x1, x2)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's intermediate features: one NCHW map per stage (``feature_info``), the stage's two
        output streams merged as the head merges them; ``norm`` applies the final norm to the last."""
        def to_nchw(feat, i):
            h, w = self._feature_grids[i]
            return feat.reshape(feat.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()

        return self._stage_intermediates(self.patch_embed(x)[0], to_nchw, indices, norm, output_fmt,
                                         intermediates_only)


def _cfg(**kwargs):
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "revmvit_tiny.untrained": _cfg(),
    "revmvit_base.untrained": _cfg(),
})


def _create_revmvit(variant: str, pretrained: bool = False, **kwargs) -> RevMViT:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (1, 2, 5, 2))))))
    return build_model_with_cfg(RevMViT, variant, pretrained,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


@register_model
def revmvit_tiny(pretrained=False, **kwargs) -> RevMViT:
    """Reversible MViTv2-T @ 224: dims 96..768, heads 1..8, depths (1, 2, 5, 2)."""
    args = dict(embed_dim=96, num_heads=1, depths=(1, 2, 5, 2))
    return _create_revmvit("revmvit_tiny", pretrained, **dict(args, **kwargs))


@register_model
def revmvit_base(pretrained=False, **kwargs) -> RevMViT:
    """Reversible MViTv2-B @ 224: dims 96..768, heads 1..8, depths (2, 3, 16, 3)."""
    args = dict(embed_dim=96, num_heads=1, depths=(2, 3, 16, 3))
    return _create_revmvit("revmvit_base", pretrained, **dict(args, **kwargs))
