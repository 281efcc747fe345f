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


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    try:
        report = load_weights(model, path, drop_mismatched_head=True)
    except (CheckpointError, IncompatibleCheckpointError) as e:
        raise BackboneCheckpointError(f"backbone {e}") from e
    logger.info("loaded backbone weights from %s (%s layout; skipped %s)", path, report.format,
                ", ".join(report.dropped) or "nothing")
