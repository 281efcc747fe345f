"""Layers the plugin's configs use beyond detectron2's own."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """detectron2's channels-first ``LayerNorm`` (ViTDet's "LN" in the pyramid and the conv heads),
    computed by one fused ``layer_norm`` over channels-last views instead of six elementwise ops and
    their backward: the same function, the same parameter names (``weight``, ``bias``), so
    checkpoints of either load into the other. Under autocast it runs in float32, as torch's
    layer_norm does."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
