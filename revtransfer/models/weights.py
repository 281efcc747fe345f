"""Weight files into a model: one path for pretraining's ``--init`` and the detection backbone.

Reads our checkpoints (``{"model": ..., "optimizer": ..., "config": ...}``), plain state dicts,
timm ViT weights (``.pth``, ``.bin``, ``.safetensors``) and PySlowFast RevViT checkpoints
(``{"epoch", "model_state", "optimizer_state", "cfg"}``, as its ``save_checkpoint`` writes them);
picks the filter function of :mod:`.convert` for the layout; checks
the result against the model key by key (errors name the key and both shapes) and loads it.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from revtransfer.errors import UserError

from . import convert

FORMATS = ("auto", "revtransfer", "timm_vit", "slowfast_revvit")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or not what was expected; the message names the path."""


def read_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The object stored in a checkpoint file, with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        # weights_only: a checkpoint is data, never code (ours are saved that way); a pickle that
        # names a function or class to call is refused before anything is called.
        with warnings.catch_warnings():  # "Detected pickle protocol N": the refusal below says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on torn files
        raise _unreadable(path, e) from e


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    """One line for a file torch cannot read. torch's weights-only refusal is a page of advice
    (including to load with ``weights_only=False``, which would run the file's code): keep its reason."""
    text = str(e)
    code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if code:
        return CheckpointError(f"checkpoint {path} is refused: it references {code.group(1)}, which loading "
                               "would call; only tensors and plain data are read (nothing was run)")
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = reason.group(1) if reason else next((line for line in text.splitlines() if line.strip()), "")
    return CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read, or is no PyTorch "
                           f"checkpoint at all ({type(e).__name__}: {reason.strip()})")


def read_state_dict(path: str | os.PathLike) -> dict:
    """A weight file's dict, checked to hold tensors (possibly inside trainer containers, which
    are kept: the layout tells :func:`detect_format` what wrote the file)."""
    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or not convert.unwrap_state_dict(state):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    return state


def detect_format(state: dict, model: nn.Module) -> str:
    from . import is_reversible

    if all(k in state for k in ("config", "model", "optimizer")):
        return "revtransfer"  # a pretraining checkpoint of ours
    if any(k.startswith("rev_backbone.") for k in convert.unwrap_state_dict(state)):
        return "slowfast_revvit"
    return "revtransfer" if is_reversible(model) else "timm_vit"


def filter_fn_for(fmt: str, model: nn.Module) -> Callable[[dict, nn.Module], dict]:
    if fmt == "slowfast_revvit":
        return convert.slowfast_revvit_to_revvit
    if fmt == "revtransfer":
        return convert.own_to_model
    if getattr(model, "cls_token", None) is not None:  # timm's ViT-S/B/L keep their class token
        from timm.models.vision_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn
    return convert.timm_vit_to_vit


@dataclass
class LoadReport:
    path: str
    format: str
    missing: list[str] = field(default_factory=list)   # left at their initial values (a new head)
    dropped: list[str] = field(default_factory=list)   # in the file but not loaded (another head)


def load_weights(model: nn.Module, path: str | os.PathLike, fmt: str = "auto",
                 drop_mismatched_head: bool = True) -> LoadReport:
    """Load ``path`` into ``model``. With ``drop_mismatched_head`` a classifier the model lacks or
    has at another size is skipped (the transfer case, and headless backbones); every other key
    must match exactly."""
    if fmt not in FORMATS:
        raise ValueError(f"checkpoint format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    state = read_state_dict(path)
    fmt = detect_format(state, model) if fmt == "auto" else fmt
    source = f"checkpoint {path} ({fmt})"
    try:
        state = filter_fn_for(fmt, model)(state, model)
    except convert.IncompatibleCheckpointError as e:
        raise convert.IncompatibleCheckpointError(f"{source}: {e}") from e
    state, missing, dropped = convert.check_compatible(state, model, drop_mismatched_head=drop_mismatched_head,
                                                       source=source)
    model.load_state_dict(state, strict=False)  # check_compatible allowed only a missing head
    return LoadReport(str(path), fmt, missing, dropped)
