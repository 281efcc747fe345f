"""Building a model for a task: an architecture with a class head, its input size from the data,
its backward mode, and the pixel statistics it was made for. Shared by training, probes,
benchmarks and the apps."""
from __future__ import annotations

from torch import nn

from .registry import create_model, is_reversible


def build_model(arch: str, model_kwargs: dict | None = None, *, backprop: str = "backprop",
                image_size: tuple[int, int] | None = None, num_classes: int = 2) -> nn.Module:
    """``arch`` with a ``num_classes`` head; its input size follows ``image_size`` (H, W) unless
    ``model_kwargs`` fixes ``img_size``; a reversible model runs ``backprop`` (its backward mode)."""
    kwargs = dict(model_kwargs or {})
    if image_size is not None and "img_size" not in kwargs:
        kwargs["img_size"] = tuple(image_size) if image_size[0] != image_size[1] else image_size[0]
    model = create_model(arch, num_classes=num_classes, **kwargs)
    if is_reversible(model):
        model.set_backprop(backprop)
    return model


def norm_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel of the pixels in [0, 1] the model expects (its timm pretrained_cfg)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.5, 0.5, 0.5))), tuple(cfg.get("std", (0.5, 0.5, 0.5)))
