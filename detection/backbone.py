"""detectron2 ``Backbone``s over the image models of our timm registry, frozen.

* :class:`TimmViT`: single-scale models (ViT, RevViT, any size). It runs the model's
  ``forward_features`` on the padded image batch, drops prefix (class/register) tokens and returns
  the final tokens as one feature map ``{out_feature: (B, C, H/s, W/s)}``: the input of ViTDet's
  ``SimpleFeaturePyramid``. For RevViT ``C`` is the fused width (``2 * embed_dim`` for the default
  concat fusion; pass ``model_kwargs={"fusion": "avg"}`` for another fusion). The model is built
  with ``dynamic_img_size=True``, so its position embedding, kept at the pretraining grid (which is
  what a checkpoint holds), is resampled to each input's token grid.
* :class:`TimmHierarchical`: hierarchical models (RevSwin, RevMViT). It returns one map per stage
  (``forward_intermediates``), named ``res2`` .. ``res5`` by stride as detectron2's ResNet: the
  bottom-up input of detectron2's ``FPN``, as detectron2 runs Swin and MViTv2. These models are
  built for one input size (Swin's shifted-window masks, MViT's pooled token grids), so the model
  is built at the detection input size and every batch is padded to that square.

Text models (RevRoBERTa) fit neither and are refused, as is a model in the wrong one of the two:
:func:`check_model` raises one line naming the model and what the backbone takes, both when a
backbone is built and when a config is checked (:func:`detection.config.prepare`).

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
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from torch import nn

from revtransfer.reversible.state import autocast_query

from .checkpoint import NO_CHECKPOINT, BackboneCheckpointError, load_backbone_checkpoint
from .errors import ConfigError
from .feature_cache import FeatureCache, cached_forward

SINGLE_SCALE = "single-scale image models (ViT, RevViT: vit_*, revvit_*)"
HIERARCHICAL = "hierarchical image models (RevSwin, RevMViT: revswin_*, revmvit_*)"


def _default_feature_stride(patch_size: int) -> int:
    # detectron2's pyramid and ROI pooler need power-of-two strides; a patch size that is not one
    # (ViT-Micro's 5) is resampled to the next power of two below it (5 -> 4: a finer map).
    return patch_size if patch_size & (patch_size - 1) == 0 else 2 ** int(math.log2(patch_size))


def probe_model(model_name: str, model_kwargs: dict | None = None) -> nn.Module:
    """The model built on the meta device (no memory, no initialisation): what a backbone or a
    config is checked against before the real model is built."""
    from revtransfer.models import create_model  # registers our models in timm

    try:
        with torch.device("meta"):
            return create_model(model_name, num_classes=0, **dict(model_kwargs or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model {model_name!r} with model_kwargs={dict(model_kwargs or {})}: {e}") from None


def feature_strides(model: nn.Module) -> list[int]:
    """The strides of the model's feature maps (timm's ``feature_info``), shallow to deep."""
    return [int(f["reduction"]) for f in getattr(model, "feature_info", None) or []]


def check_model(model: nn.Module, model_name: str, backbone: str) -> None:
    """Refuse a model ``backbone`` ("TimmViT" or "TimmHierarchical") cannot run, in one line that
    names the model, what the backbone takes, and where the model fits instead."""
    kind = getattr(model, "input_kind", "image")
    if kind != "image":
        raise ConfigError(f"{model_name} is not an image model (it takes {kind}); detection backbones take "
                          f"{SINGLE_SCALE} with TimmViT, or {HIERARCHICAL} with TimmHierarchical")
    strides = sorted(set(feature_strides(model)))
    if backbone == "TimmViT" and len(strides) > 1:
        raise ConfigError(f"{model_name} is hierarchical (feature strides {', '.join(map(str, strides))}): TimmViT "
                          f"takes {SINGLE_SCALE}; use TimmHierarchical under an FPN "
                          "(e.g. the config coco_mask_rcnn_revswin_tiny_frozen)")
    if backbone == "TimmHierarchical" and len(strides) < 2:
        raise ConfigError(f"{model_name} has a single feature stride ({', '.join(map(str, strides)) or 'none'}): "
                          f"TimmHierarchical takes {HIERARCHICAL}; use TimmViT under ViTDet's pyramid "
                          "(e.g. the config coco_mask_rcnn_revvit_base_frozen)")


def autocast_key(device_type: str) -> str:
    """The autocast state of ``device_type`` as text ("off" or its dtype): part of a cached map's key."""
    enabled, dtype = autocast_query(device_type)
    return str(dtype) if enabled else "off"


class _FrozenTimm(Backbone):
    """What both backbones share: ``self.encoder`` frozen or not (see the module docstring)."""

    def _set_frozen(self, freeze: bool) -> None:
        self.frozen = bool(freeze)
        if self.frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        # A frozen encoder stays in eval mode even when the detector around it trains.
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def _no_grad(self):
        return torch.no_grad() if self.frozen else contextlib.nullcontext()

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
class TimmViT(_FrozenTimm):
    """Single-scale backbone from a timm-registry model (ours or timm's own ViTs); hierarchical and
    text models are refused (:func:`check_model`; the former go in :class:`TimmHierarchical`).

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
        out_channels: the width of the map handed to the pyramid; ``None``: the model's features.
            Half of a RevViT's concat width (C of its 2C) is the width control: a fixed projection,
            the mean of the two normalised streams' halves, so the pyramid gets C channels as from
            a ViT of the same width, with nothing fitted.
        feature_cache_mb: keep a frozen backbone's feature maps by input image, up to this many
            MiB, and run the model only on images it has not seen
            (:mod:`detection.feature_cache`: worth it when the augmentation repeats inputs, e.g.
            flips only); 0: off. Ignored for a trainable backbone.
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
        out_channels: int | None = None,
        feature_cache_mb: float = 0,
    ):
        super().__init__()
        from revtransfer.models import create_model  # registers our models in timm

        check_model(probe_model(model_name, model_kwargs), model_name, "TimmViT")
        if feature_cache_mb < 0:
            raise ValueError(f"feature_cache_mb={feature_cache_mb}: give a size in MiB, or 0 for no cache")
        self.feature_cache = FeatureCache(int(feature_cache_mb * 2**20)) if feature_cache_mb else None
        if self.feature_cache is not None:  # maps made with other weights are not this backbone's
            self._register_load_state_dict_pre_hook(lambda *args, **kwargs: self.feature_cache.clear())
        kwargs = {"num_classes": 0, "dynamic_img_size": True, **dict(model_kwargs or {})}
        self.encoder = create_model(model_name, **kwargs)
        self.checkpoint_load = load_backbone_checkpoint(self.encoder, checkpoint) if checkpoint else dict(NO_CHECKPOINT)
        self.model_name = model_name
        self.patch_size = _patch_size(self.encoder)
        self.num_prefix_tokens = int(getattr(self.encoder, "num_prefix_tokens", 0))
        self.feature_stride = int(feature_stride or _default_feature_stride(self.patch_size))
        if self.feature_stride & (self.feature_stride - 1):
            raise ValueError(f"feature_stride={self.feature_stride} is not a power of two; "
                             "detectron2's pyramid and ROI pooler need power-of-two strides")
        self._size_divisibility = math.lcm(self.patch_size, self.feature_stride)
        width = int(self.encoder.num_features)
        if out_channels is not None and int(out_channels) not in (width, width // 2) or (
                out_channels is not None and int(out_channels) * 2 == width and width % 2):
            raise ValueError(f"out_channels={out_channels}: {model_name} gives {width} channels; take all of them "
                             f"or half ({width // 2}, the mean of the two halves: the width control)")
        self.halve_channels = out_channels is not None and int(out_channels) * 2 == width
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: width // 2 if self.halve_channels else width}
        self._out_feature_strides = {out_feature: self.feature_stride}
        self._set_frozen(freeze)

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

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, _, H, W = x.shape
        if H % self._size_divisibility or W % self._size_divisibility:
            raise ValueError(
                f"{self.model_name}: input size {H}x{W} is not a multiple of {self._size_divisibility} "
                f"(patch size {self.patch_size}, feature stride {self.feature_stride}); pad the images "
                f"to a multiple of it (e.g. set model.backbone.square_pad to one)")
        if self.feature_cache is not None and self.frozen:
            fmap = cached_forward(self.feature_cache, x, self._feature_map,
                                  f"{x.device}|{autocast_key(x.device.type)}")
        else:
            fmap = self._feature_map(x)
        return {self._out_features[0]: fmap}

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        with self._no_grad():
            tokens = self.encoder.forward_features(x)
        gh, gw = H // self.patch_size, W // self.patch_size
        tokens = tokens[:, self.num_prefix_tokens:]
        if self.halve_channels:  # the width control: (x[:C] + x[C:]) / 2, a fixed projection 2C -> C
            half = tokens.shape[-1] // 2
            tokens = 0.5 * (tokens[..., :half] + tokens[..., half:])
        fmap = tokens.transpose(1, 2).reshape(B, tokens.shape[-1], gh, gw)
        if self.feature_stride != self.patch_size:
            fmap = F.interpolate(fmap, size=(H // self.feature_stride, W // self.feature_stride),
                                 mode="bilinear", align_corners=False)
        return fmap


@BACKBONE_REGISTRY.register()
class TimmHierarchical(_FrozenTimm):
    """Multi-scale backbone from a hierarchical timm-registry model (RevSwin, RevMViT): the bottom-up
    part of detectron2's ``FPN``.

    Each stage's output (its two streams merged as the model's head merges them, see
    ``forward_intermediates``) is a feature map named by its stride as detectron2's ResNet names
    them: ``res2`` (stride 4) .. ``res5`` (stride 32); of several stages at one stride, the last.

    The model is built at ``img_size``, the detection input size: its attention is laid out for one
    input size. Inputs must be exactly ``img_size`` square (FPN's ``square_pad`` pads every batch to
    it) and ``img_size`` a multiple of the largest stride, so that each stage is exactly half the
    size of the one before (FPN adds 2x-upsampled maps to them). Checkpoints from another input size
    load into RevSwin (its relative-position tables depend on the window only), not into RevMViT
    (its tables are sized for the token grid; they are not resampled here).

    Args:
        model_name: a hierarchical timm model name, e.g. ``"revswin_tiny"``, ``"revmvit_tiny"``.
        img_size: the (square) input size the model is built at.
        checkpoint: path of a backbone checkpoint; ``""`` keeps the random initialisation.
        freeze: freeze the model (see the module docstring).
        out_features: the maps to return (default: all, e.g. ``("res2", "res3", "res4", "res5")``).
        model_kwargs: extra keyword arguments for ``create_model`` (e.g. ``window_size``).
    """

    @configurable
    def __init__(
        self,
        model_name: str,
        *,
        img_size: int,
        checkpoint: str = "",
        freeze: bool = True,
        out_features: tuple[str, ...] | list[str] | None = None,
        model_kwargs: dict | None = None,
    ):
        super().__init__()
        from revtransfer.models import create_model  # registers our models in timm

        kwargs = {**dict(model_kwargs or {}), "img_size": int(img_size)}
        stages = hierarchical_features(model_name, kwargs)
        self.encoder = create_model(model_name, num_classes=0, **kwargs)
        self.checkpoint_load = dict(NO_CHECKPOINT)
        if checkpoint:
            try:
                self.checkpoint_load = load_backbone_checkpoint(self.encoder, checkpoint)
            except BackboneCheckpointError as e:
                if "rel_pos" not in str(e):
                    raise
                raise BackboneCheckpointError(
                    f"{model_name} at img_size={img_size}: its relative-position tables are sized for the "
                    f"token grid, so the checkpoint must come from the same input size; {e}") from e
        self.model_name = model_name
        self.img_size = int(img_size)
        names = list(out_features or stages)
        unknown = [n for n in names if n not in stages]
        if unknown:
            raise ConfigError(f"out_features {unknown} are not features of {model_name}; "
                              f"it has {', '.join(stages)}")
        self._out_features = sorted(names, key=lambda n: stages[n][0])
        self._indices = [stages[n][0] for n in self._out_features]
        self._out_feature_channels = {n: stages[n][1] for n in self._out_features}
        self._out_feature_strides = {n: stages[n][2] for n in self._out_features}
        self._set_frozen(freeze)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        """Arguments from a yacs config (``cfg.MODEL.TIMM_HIERARCHICAL``, see
        :func:`add_timm_hierarchical_config`)."""
        c = cfg.MODEL.TIMM_HIERARCHICAL
        return {
            "model_name": c.NAME,
            "img_size": c.IMG_SIZE,
            "checkpoint": c.CHECKPOINT,
            "freeze": c.FREEZE,
            "out_features": list(c.OUT_FEATURES) or None,
            "model_kwargs": dict(c.MODEL_KWARGS),
        }

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"square_size": self.img_size}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"{self.model_name} is built for {self.img_size}x{self.img_size} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}; pad every batch to it (FPN's square_pad={self.img_size})")
        with self._no_grad():
            maps = self.encoder.forward_intermediates(x, indices=self._indices, intermediates_only=True)
        return dict(zip(self._out_features, maps))


def hierarchical_features(model_name: str, model_kwargs: dict) -> dict[str, tuple[int, int, int]]:
    """``{"res<log2 stride>": (feature index, channels, stride)}`` of a hierarchical model, checked
    (on the meta device) to be an FPN's bottom-up: an image model with power-of-two strides, built at
    an ``img_size`` that every stride divides."""
    model = probe_model(model_name, model_kwargs)
    check_model(model, model_name, "TimmHierarchical")
    strides = feature_strides(model)
    if any(s & (s - 1) for s in strides):
        raise ConfigError(f"{model_name}: feature strides {strides} are not all powers of two; "
                          "detectron2's FPN and ROI pooler need power-of-two strides")
    size, top = int(model_kwargs["img_size"]), max(strides)
    if size <= 0 or size % top:
        fit = max(1, -(-size // top)) * top
        raise ConfigError(f"img_size={size} is not a multiple of {top}, the largest feature stride of {model_name} "
                          f"(FPN needs every stage exactly half the previous); use e.g. {fit}")
    return {f"res{int(math.log2(s))}": (i, int(f["num_chs"]), s)
            for i, (s, f) in enumerate(zip(strides, model.feature_info))}


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


def add_timm_hierarchical_config(cfg) -> None:
    """Add ``MODEL.TIMM_HIERARCHICAL`` (the :class:`TimmHierarchical` arguments) to a yacs config."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.TIMM_HIERARCHICAL = CN()
    cfg.MODEL.TIMM_HIERARCHICAL.NAME = "revswin_tiny"
    cfg.MODEL.TIMM_HIERARCHICAL.IMG_SIZE = 1024
    cfg.MODEL.TIMM_HIERARCHICAL.CHECKPOINT = ""
    cfg.MODEL.TIMM_HIERARCHICAL.FREEZE = True
    cfg.MODEL.TIMM_HIERARCHICAL.OUT_FEATURES = []  # []: all stages
    cfg.MODEL.TIMM_HIERARCHICAL.MODEL_KWARGS = CN(new_allowed=True)


@BACKBONE_REGISTRY.register()
def build_timm_hierarchical_fpn_backbone(cfg, input_shape=None) -> FPN:
    """``MODEL.BACKBONE.NAME: "build_timm_hierarchical_fpn_backbone"``: :class:`TimmHierarchical`
    under an FPN (``MODEL.FPN.*``), as detectron2's ``build_resnet_fpn_backbone``; batches padded to
    the model's input size."""
    bottom_up = TimmHierarchical(cfg)
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
               square_pad=bottom_up.img_size)
