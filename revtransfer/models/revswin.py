"""Reversible Swin Transformer (PaReprop, Zhu et al. 2023, figure 3.2), built from timm's Swin pieces.

Layout (tokens stay NHWC, as in timm's Swin):

    image -> PatchEmbed(+LN) -> I1 = I2 = tokens
      stage 0: reversible stack of Swin couplings
      stage s > 0: [fuse the streams -> PatchMerging -> I1 = I2]  (non-reversible transition,
                   ordinary autograd, activations cached) -> reversible stack
    -> termination fusion (concat + LN(2C) or avg + LN(C)) -> mean over tokens -> linear head

Each reversible block is a coupling ``Y1 = X1 + F(X2), Y2 = X2 + G(Y1)`` with F = LayerNorm ->
(shifted-)window attention -> drop path and G = LayerNorm -> MLP -> drop path; within a stage the
blocks alternate regular / shifted windows as in Swin (block j shifts when j is odd). The fusion
before each patch merging is ``transition_fusion``: ``"concat"`` (concat, Linear 2C -> C) or
``"avg"``. timm's ``swin_{tiny,small,base}_patch4_window7_224`` are the non-reversible references.
"""
from __future__ import annotations

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.swin_transformer import PatchMerging, WindowAttention, window_partition, window_reverse
from torch import nn

from revtransfer.reversible import ReversibleCoupling, ReversibleSequence, ReversibleStack, check_mode

from ._layers import DropPath, PatchEmbed, trunc_normal_
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


def _window_and_shift(resolution, window_size, shift_size):
    """As timm's Swin: a window no larger than the feature map, and no shift when one window covers it."""
    window = tuple(r if r <= w else w for r, w in zip(resolution, window_size))
    shift = tuple(0 if r <= w else s for r, w, s in zip(resolution, window, shift_size))
    return window, shift


def _shifted_window_mask(resolution, window, shift) -> torch.Tensor | None:
    """(num_windows, area, area) additive mask (0 / -100) keeping shifted windows from mixing
    regions that are not adjacent in the image (Swin's SW-MSA mask, on the padded map)."""
    if not any(shift):
        return None
    H = -(-resolution[0] // window[0]) * window[0]
    W = -(-resolution[1] // window[1]) * window[1]
    img_mask = torch.zeros((1, H, W, 1))
    cnt = 0
    for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            img_mask[:, hs, ws, :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, window).view(-1, window[0] * window[1])
    diff = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttentionSublayer(nn.Module):
    """F: LayerNorm -> (shifted-)window multi-head attention with relative position bias -> drop
    path, on NHWC tokens. No residual (the coupling adds it)."""

    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift=False, qkv_bias=True,
                 attn_drop=0.0, proj_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        window_size = to_2tuple(window_size)
        shift_size = tuple(w // 2 for w in window_size) if shift else (0, 0)
        self.window_size, self.shift_size = _window_and_shift(self.input_resolution, window_size, shift_size)
        self.norm = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads=num_heads, window_size=self.window_size, qkv_bias=qkv_bias,
                                    attn_drop=attn_drop, proj_drop=proj_drop)
        self.register_buffer("attn_mask", _shifted_window_mask(self.input_resolution, self.window_size,
                                                               self.shift_size), persistent=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        B, H, W, C = x.shape
        wh, ww = self.window_size
        x = self.norm(x)
        shifted = any(self.shift_size)
        if shifted:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        pad_h, pad_w = (wh - H % wh) % wh, (ww - W % ww) % ww
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        windows = window_partition(x, self.window_size).view(-1, wh * ww, C)
        windows = self.attn(windows, mask=self.attn_mask)
        x = window_reverse(windows.view(-1, wh, ww, C), self.window_size, Hp, Wp)
        if pad_h or pad_w:
            x = x[:, :H, :W, :].contiguous()
        if shifted:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return self.drop_path(x)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift_size={self.shift_size}"


class RevSwinBlock(ReversibleCoupling):
    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift=False, mlp_ratio=4.0, qkv_bias=True,
                 attn_drop=0.0, proj_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm, act_layer=nn.GELU):
        super().__init__(
            f=WindowAttentionSublayer(dim, input_resolution, num_heads, window_size, shift, qkv_bias, attn_drop,
                                      proj_drop, drop_path, norm_layer),
            g=MlpSublayer(dim, mlp_ratio, proj_drop, drop_path, norm_layer, act_layer),
        )


class SwinTransition(nn.Module):
    """Non-reversible stage transition: fuse the two streams, merge 2x2 patches (C -> 2C, H, W
    halved), restart the streams as I1 = I2. Runs under ordinary autograd (activations cached)."""

    def __init__(self, dim, out_dim, fusion="concat", norm_layer=nn.LayerNorm):
        super().__init__()
        self.fuse = StreamFusion(dim, fusion)
        self.downsample = PatchMerging(dim, out_dim, norm_layer=norm_layer)

    def forward(self, x1, x2):
        x = self.downsample(self.fuse(x1, x2))
        return x, x


class RevSwin(ReversibleModelMixin, nn.Module):
    def __init__(
        self,
        img_size=224,
        patch_size=4,
        in_chans=3,
        num_classes=1000,
        global_pool="avg",
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        fusion="concat",
        transition_fusion="concat",
        drop_rate=0.0,
        proj_drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        backprop="pareprop",
        keep_last_activations=False,
        norm_layer=None,
        act_layer=None,
    ):
        super().__init__()
        check_fusion(fusion)
        check_fusion(transition_fusion, "transition fusion")
        check_global_pool(global_pool)
        if len(num_heads) != len(depths):
            raise ValueError(f"num_heads {num_heads} and depths {depths} need one entry per stage")
        check_stage_depths(depths)
        check_mode(backprop)
        norm_layer = norm_layer or nn.LayerNorm
        act_layer = act_layer or nn.GELU
        num_stages = len(depths)
        dims = [int(embed_dim * 2 ** i) for i in range(num_stages)]
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.fusion = fusion
        self.transition_fusion = transition_fusion
        self.output_fmt = "NHWC"

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=dims[0], norm_layer=norm_layer, output_fmt="NHWC")
        resolution = tuple(self.patch_embed.grid_size)
        dpr = stage_drop_path_rates(drop_path_rate, depths)
        stages, self.feature_info = [], []
        for s in range(num_stages):
            if s > 0:
                stages.append(SwinTransition(dims[s - 1], dims[s], transition_fusion, norm_layer))
                resolution = tuple((r + 1) // 2 for r in resolution)
            stages.append(ReversibleStack(
                [RevSwinBlock(dims[s], resolution, num_heads[s], window_size, shift=j % 2 == 1,
                              mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                              proj_drop=proj_drop_rate, drop_path=dpr[s][j], norm_layer=norm_layer,
                              act_layer=act_layer)
                 for j in range(depths[s])],
                mode=backprop,
            ))
            self.feature_info.append(dict(num_chs=fused_width(dims[s], fusion), reduction=patch_size * 2 ** s,
                                          module=f"layers.stages.{len(stages) - 1}"))
        self.layers = ReversibleSequence(stages)
        self._build_fused_head(dims[-1], fusion, norm_layer, drop_rate, num_classes)
        self.apply(init_weights)
        self.set_backprop(backprop, keep_last_activations)
        for m in self.modules():  # init_weights leaves these alone; WindowAttention initialises them
            if isinstance(m, WindowAttention):
                trunc_normal_(m.relative_position_bias_table, std=0.02)

    # --- timm conventions --------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self):
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return self._stage_group_matcher(r"^patch_embed", r"^fuse", coarse)

    def forward_features(self, x):
        """Image (B, 3, H, W) -> fused, normalised tokens (B, H', W', num_features)."""
        x = self.patch_embed(x)
        x1, x2 = self.layers(x, x)
        return self.fuse(x1, x2)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's intermediate features: one NCHW map per stage (``feature_info``), the stage's two
        output streams merged as the head merges them; ``norm`` applies the final norm to the last."""
        return self._stage_intermediates(self.patch_embed(x), lambda f, i: f.permute(0, 3, 1, 2).contiguous(),
                                         indices, norm, output_fmt, intermediates_only)


def _cfg(**kwargs):
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
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
    "revswin_tiny.untrained": _cfg(),
    "revswin_small.untrained": _cfg(),
    "revswin_base.untrained": _cfg(),
})


def _create_revswin(variant: str, pretrained: bool = False, **kwargs) -> RevSwin:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 6, 2))))))
    return build_model_with_cfg(RevSwin, variant, pretrained,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


@register_model
def revswin_tiny(pretrained=False, **kwargs) -> RevSwin:
    """Reversible Swin-T @ 224: patch 4, window 7, dim 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24)."""
    args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
    return _create_revswin("revswin_tiny", pretrained, **dict(args, **kwargs))


@register_model
def revswin_small(pretrained=False, **kwargs) -> RevSwin:
    """Reversible Swin-S @ 224: patch 4, window 7, dim 96, depths (2, 2, 18, 2), heads (3, 6, 12, 24)."""
    args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
    return _create_revswin("revswin_small", pretrained, **dict(args, **kwargs))


@register_model
def revswin_base(pretrained=False, **kwargs) -> RevSwin:
    """Reversible Swin-B @ 224: patch 4, window 7, dim 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32)."""
    args = dict(patch_size=4, window_size=7, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    return _create_revswin("revswin_base", pretrained, **dict(args, **kwargs))
