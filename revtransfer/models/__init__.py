"""Our model families, registered in timm's registry on import, and building a model for a task."""
from __future__ import annotations

from . import revmvit, revroberta, revswin, revvit, vit  # noqa: F401  (registers the models)
from .build import build_model, norm_stats
from .registry import OUR_MODELS, create_model, is_reversible, list_models
from .revvit import RevViT

__all__ = ["OUR_MODELS", "RevViT", "build_model", "create_model", "is_reversible", "list_models", "norm_stats"]
