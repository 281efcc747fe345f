"""Our model names in timm's registry, and building one by name (the families register themselves
when ``revtransfer.models`` is imported)."""
from __future__ import annotations

import timm
from torch import nn

OUR_MODELS = ("vit_micro", "revvit_micro", "revvit_small", "revvit_base", "revvit_large",
              "revswin_tiny", "revswin_small", "revswin_base", "revmvit_tiny", "revmvit_base",
              "revroberta_base", "revroberta_large")


def create_model(name: str, **kwargs) -> nn.Module:
    """Same as ``timm.create_model`` (our models are registered there), with a clearer error."""
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}; ours are: {', '.join(list_models())} "
                         "(any timm model name works too)")
    return timm.create_model(name, **kwargs)


def list_models() -> list[str]:
    return [m for m in OUR_MODELS if timm.is_model(m)]


def is_reversible(model: nn.Module) -> bool:
    return hasattr(model, "set_backprop")
