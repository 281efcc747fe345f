"""Training checkpoints: everything needed to continue a run bit for bit.

A checkpoint holds the model, optimizer and scheduler states, the epoch and step counters, the RNG
states of every process (torch CPU and CUDA, numpy, python) and the resolved config. RNG states are
stored as tensors and plain Python values so the file loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revtransfer.atomic import atomic_write
from revtransfer.models.weights import CheckpointError, read_checkpoint_file

FORMAT_VERSION = 1
LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"


# --- RNG state -----------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _plain(v):
    return v.item() if hasattr(v, "item") else v


# --- save / load ---------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (plus a format version) to ``path``."""
    state = {"format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with errors that name the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the .pt file (e.g. {path / LAST})")
    state = read_checkpoint_file(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def load_training_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """As :func:`load_checkpoint`, also checking that it is one of our training checkpoints."""
    state = load_checkpoint(path, map_location)
    missing = [k for k in ("model", "optimizer", "scheduler", "epoch", "config") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a revtransfer training checkpoint "
                              f"(missing {', '.join(missing)})")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {state['format_version']}; this "
                              f"revtransfer reads up to {FORMAT_VERSION}: upgrade revtransfer")
    return state
