"""A detectron2 ``Backbone`` over any model in our timm registry (ViT or RevViT, any size).

It runs the model's ``forward_features`` on the padded image batch, drops prefix (class/register)
tokens and returns the final tokens as one feature map ``{out_feature: (B, C, H/s, W/s)}``: the
input of ViTDet's ``SimpleFeaturePyramid``. For RevViT ``C`` is the fused width (``2 * embed_dim``
for the default concat fusion; pass ``model_kwargs={"fusion": "avg"}`` for another fusion). The
model is built with ``dynamic_img_size=True``, so its position embedding, kept at the pretraining
grid (which is what a checkpoint holds), is resampled to each input's token grid.

Frozen (the default, the study's setting) means: no parameter requires grad, the model stays in
eval mode whatever ``train()`` is called with (dropout and drop-path off), and its forward runs
under ``torch.no_grad()`` so it keeps no activations for backward.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .checkpoint import load_backbone_checkpoint


def _default_feature_stride(patch_size: int) -> int:
    # detectron2's pyramid and ROI pooler need power-of-two strides; a patch size that is not one
    # (ViT-Micro's 5) is resampled to the next power of two below it (5 -> 4: a finer map).
    return patch_size if patch_size & (patch_size - 1) == 0 else 2 ** int(math.log2(patch_size))


@BACKBONE_REGISTRY.register()
class TimmViT(Backbone):
    """Single-scale backbone from a timm-registry model (ours or timm's own ViTs).

    Args:
        model_name: a timm model name, e.g. ``"revvit_base"``, ``"vit_base_patch16_224"``,
            ``"vit_micro"``.
        checkpoint: path of a backbone checkpoint (our pretraining checkpoint, timm ViT weights,
            SlowFast RevViT weights); ``""`` keeps the random initialisation.
        freeze: freeze the model (see the module docstring).
        out_feature: name of the output feature map.
        feature_stride: stride of the output map; default: the patch size, or the power of two
            below it when the patch size is not a power of two. Other strides resample the token
            map bilinearly.
        model_kwargs: extra keyword arguments for ``create_model`` (e.g. ``img_size`` of the
            pretraining run, ``drop_path_rate`` for a non-frozen backbone, ``fusion``).
    """

    @configurable
    def __init__(
        self,
        model_name: str,
        *,
        checkpoint: str = "",
        freeze: bool = True,
        out_feature: str = "last_feat",
        feature_stride: int | None = None,
        model_kwargs: dict | None = None,
    ):
        super().__init__()
        from revtransfer.models import create_model  # registers our models in timm

        kwargs = {"num_classes": 0, "dynamic_img_size": True, **dict(model_kwargs or {})}
        self.encoder = create_model(model_name, **kwargs)
        if checkpoint:
            load_backbone_checkpoint(self.encoder, checkpoint)
        self.model_name = model_name
        self.patch_size = _patch_size(self.encoder)
        self.num_prefix_tokens = int(getattr(self.encoder, "num_prefix_tokens", 0))
        self.feature_stride = int(feature_stride or _default_feature_stride(self.patch_size))
        if self.feature_stride & (self.feature_stride - 1):
            raise ValueError(f"feature_stride={self.feature_stride} is not a power of two; "
                             "detectron2's pyramid and ROI pooler need power-of-two strides")
        self._size_divisibility = math.lcm(self.patch_size, self.feature_stride)
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: int(self.encoder.num_features)}
        self._out_feature_strides = {out_feature: self.feature_stride}
        self.frozen = bool(freeze)
        if self.frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        """Arguments from a yacs config (``cfg.MODEL.TIMM_VIT``, see :func:`add_timm_vit_config`)."""
        c = cfg.MODEL.TIMM_VIT
        return {
            "model_name": c.NAME,
            "checkpoint": c.CHECKPOINT,
            "freeze": c.FREEZE,
            "out_feature": c.OUT_FEATURE,
            "feature_stride": c.FEATURE_STRIDE or None,
            "model_kwargs": dict(c.MODEL_KWARGS),
        }

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def train(self, mode: bool = True):
        # A frozen encoder stays in eval mode even when the detector around it trains.
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        B, _, H, W = x.shape
        if H % self._size_divisibility or W % self._size_divisibility:
            raise ValueError(
                f"{self.model_name}: input size {H}x{W} is not a multiple of {self._size_divisibility} "
                f"(patch size {self.patch_size}, feature stride {self.feature_stride}); pad the images "
                f"to a multiple of it (e.g. set model.backbone.square_pad to one)")
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            tokens = self.encoder.forward_features(x)
        gh, gw = H // self.patch_size, W // self.patch_size
        tokens = tokens[:, self.num_prefix_tokens:]
        fmap = tokens.transpose(1, 2).reshape(B, tokens.shape[-1], gh, gw)
        if self.feature_stride != self.patch_size:
            fmap = F.interpolate(fmap, size=(H // self.feature_stride, W // self.feature_stride),
                                 mode="bilinear", align_corners=False)
        return {self._out_features[0]: fmap}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


def _patch_size(model) -> int:
    ps = getattr(model, "patch_size", None) or model.patch_embed.patch_size
    ps = tuple(ps) if isinstance(ps, (tuple, list)) else (ps, ps)
    if ps[0] != ps[1]:
        raise ValueError(f"non-square patch size {ps} is not supported")
    return int(ps[0])


# --- yacs configs (detectron2's classic path: ``MODEL.BACKBONE.NAME: "TimmViT"``) ---------------

def add_timm_vit_config(cfg) -> None:
    """Add ``MODEL.TIMM_VIT`` (the :class:`TimmViT` arguments) to a yacs config."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.TIMM_VIT = CN()
    cfg.MODEL.TIMM_VIT.NAME = "vit_base_patch16_224"
    cfg.MODEL.TIMM_VIT.CHECKPOINT = ""
    cfg.MODEL.TIMM_VIT.FREEZE = True
    cfg.MODEL.TIMM_VIT.OUT_FEATURE = "last_feat"
    cfg.MODEL.TIMM_VIT.FEATURE_STRIDE = 0  # 0: default (see TimmViT)
    cfg.MODEL.TIMM_VIT.MODEL_KWARGS = CN(new_allowed=True)
