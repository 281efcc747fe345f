"""Initialise a model from a checkpoint file: ours, a timm ViT state dict, or a PySlowFast RevViT.

``load_pretrained(model, path)`` detects the format, maps keys with the filter functions of
:mod:`revtransfer.models.convert`, checks every shape (errors name the key), drops a classifier
of another size and loads strictly otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from revtransfer.models import convert
from revtransfer.models.revvit import RevViT

from .checkpoint import CheckpointError, load_checkpoint

FORMATS = ("auto", "revtransfer", "timm_vit", "slowfast_revvit")


@dataclass
class LoadReport:
    path: str
    format: str
    missing: list[str] = field(default_factory=list)   # left at their initial values (a new head)
    dropped: list[str] = field(default_factory=list)   # in the file but not loaded (head of another size)


def read_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            from safetensors.torch import load_file
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e})") from e
    return load_checkpoint(path)


def detect_format(state: dict, model: nn.Module) -> str:
    if "config" in state and "model" in state and "optimizer" in state:
        return "revtransfer"
    keys = convert.unwrap_state_dict(state).keys()
    if any(k.startswith("rev_backbone.") for k in keys):
        return "slowfast_revvit"
    if isinstance(model, RevViT):
        return "revtransfer"  # a plain RevViT state dict
    return "timm_vit"


def load_pretrained(model: nn.Module, path: str | os.PathLike, fmt: str = "auto",
                    drop_mismatched_head: bool = True) -> LoadReport:
    if fmt not in FORMATS:
        raise ValueError(f"init format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    state = read_state_dict(path)
    fmt = detect_format(state, model) if fmt == "auto" else fmt
    filters = {"revtransfer": lambda sd, m: convert.unwrap_state_dict(sd),
               "timm_vit": convert.timm_vit_to_vit,
               "slowfast_revvit": convert.slowfast_revvit_to_revvit}
    try:
        sd = filters[fmt](state, model)
    except convert.IncompatibleCheckpointError as e:
        raise convert.IncompatibleCheckpointError(f"checkpoint {path} ({fmt}): {e}") from e
    sd, missing, dropped = convert.check_compatible(sd, model, drop_mismatched_head=drop_mismatched_head,
                                                    source=f"checkpoint {path} ({fmt})")
    model.load_state_dict(sd, strict=False)
    return LoadReport(str(path), fmt, missing, dropped)
