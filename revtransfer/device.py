"""Which torch device a command runs on."""
from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; plain ``cuda`` -> the GPU of ``local_rank`` (DDP) or
    the current one; anything else as torch spells it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={name!r} was asked for but CUDA is not available")
        if name == "cuda":
            return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    return torch.device(name)
