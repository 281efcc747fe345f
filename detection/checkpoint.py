"""Loading backbone weights into a timm-registry model, strictly.

Reads our pretraining checkpoints (``{"model": state_dict, ...}``), timm ViT weights (``.pth``,
``.bin``, ``.safetensors``) and SlowFast RevViT weights (``{"model_state": ...}``), converts them
with the filter functions pretraining uses (``revtransfer.models.convert``), drops the classifier, and refuses anything that does
not match the model exactly: missing, unexpected and wrongly shaped keys are named in the error.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

_CONTAINER_KEYS = ("model", "state_dict", "model_state", "model_ema", "module")
_MAX_NAMED = 12  # keys listed per kind of mismatch before "... and N more"


class BackboneCheckpointError(RuntimeError):
    """A backbone checkpoint that is missing, unreadable, or does not fit the model; names the file."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from trainer/DDP containers."""
    path = Path(path)
    if not path.exists():
        raise BackboneCheckpointError(f"backbone checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise BackboneCheckpointError(f"backbone checkpoint {str(path)!r} is a directory; give the file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            # weights_only: a checkpoint is data, never code (our checkpoints are saved that way).
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneCheckpointError(f"backbone checkpoint {str(path)!r} cannot be read "
                                      f"({type(e).__name__}: {e})") from e
    while isinstance(state, dict):
        inner = next((state[k] for k in _CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneCheckpointError(f"backbone checkpoint {str(path)!r} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def filter_fn_for(state: dict, model: nn.Module) -> Callable[[dict, nn.Module], dict]:
    """The state-dict conversion pretraining uses for this checkpoint layout and model
    (``revtransfer.models.convert``), or timm's own for timm ViTs that keep their class token."""
    from revtransfer.models import convert, is_reversible

    if any(k.startswith("rev_backbone.") for k in state):
        return convert.slowfast_revvit_to_revvit  # PySlowFast RevViT
    if is_reversible(model):
        from revtransfer.models.revvit import checkpoint_filter_fn

        return checkpoint_filter_fn  # ours (pretraining checkpoints)
    if getattr(model, "cls_token", None) is not None:
        from timm.models.vision_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn  # timm's ViT-S/B/L, class token kept
    return convert.timm_vit_to_vit  # ours (vit_micro) or timm ViT weights into a class-token-free ViT


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load ``path`` into ``model`` (a headless timm model), failing on any key or shape mismatch."""
    from revtransfer.models.convert import IncompatibleCheckpointError

    state = read_state_dict(path)
    try:
        state = filter_fn_for(state, model)(state, model)
    except IncompatibleCheckpointError as e:
        raise BackboneCheckpointError(f"backbone checkpoint {str(path)!r}: {e}") from e
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    own = model.state_dict()
    # The detector needs no classifier: drop it unless the model still has one of that name.
    state = {k: v for k, v in state.items()
             if k in own or not any(k == c or k.startswith(c + ".") for c in classifiers)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(keys)}): {_named(keys)}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                 if keys]
        raise BackboneCheckpointError(
            f"backbone checkpoint {str(path)!r} does not fit {type(model).__name__} "
            f"{getattr(model, 'default_cfg', {}).get('architecture', '')}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    logger.info("loaded backbone weights from %s (%d tensors)", path, len(state))


def _named(keys: list[str]) -> str:
    head = ", ".join(keys[:_MAX_NAMED])
    return head + (f", ... and {len(keys) - _MAX_NAMED} more" if len(keys) > _MAX_NAMED else "")
