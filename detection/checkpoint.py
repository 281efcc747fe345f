"""Loading backbone weights into a headless timm-registry model, strictly.

The reading, layout detection and key conversion are pretraining's (``revtransfer.models.weights``):
our pretraining checkpoints, timm ViT weights and SlowFast RevViT weights all load. The classifier
is dropped (a detector has none); any other missing, unexpected or wrongly shaped key is an error
that names the key and the file.
"""
from __future__ import annotations

import logging
import os

from torch import nn

from revtransfer.models.convert import IncompatibleCheckpointError
from revtransfer.models.weights import CheckpointError, load_weights

logger = logging.getLogger(__name__)


class BackboneCheckpointError(CheckpointError):
    """A backbone checkpoint that is missing, unreadable, or does not fit the model; names the file."""


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load ``path`` into ``model``; what was loaded (keys matched, missing, unexpected), also logged,
    so that a silently random backbone cannot pass unnoticed (``run.json`` records it)."""
    try:
        report = load_weights(model, path, drop_mismatched_head=True)
    except (CheckpointError, IncompatibleCheckpointError) as e:
        raise BackboneCheckpointError(f"backbone {e}") from e
    keys = set(model.state_dict())
    loaded = {"path": str(path), "format": report.format, "keys_matched": len(keys - set(report.missing)),
              "keys_in_model": len(keys), "missing": list(report.missing), "unexpected": list(report.dropped)}
    logger.info("backbone checkpoint %s (%s layout): %d of %d keys matched; missing: %s; unexpected (skipped): %s",
                path, report.format, loaded["keys_matched"], len(keys), ", ".join(report.missing) or "none",
                ", ".join(report.dropped) or "none")
    return loaded


NO_CHECKPOINT = {"path": "", "format": None, "keys_matched": 0, "missing": [], "unexpected": [],
                 "note": "no backbone checkpoint: the backbone keeps its random initialisation"}
