"""The additive coupling that makes a block reversible (RevNet / Reversible ViT).

    forward:  Y1 = X1 + F(X2),   Y2 = X2 + G(Y1)
    inverse:  X2 = Y2 - G(Y1),   X1 = Y1 - F(X2)

F and G are arbitrary modules mapping a stream to a tensor of the same shape; they need not be
invertible themselves. No skip connection lives inside F or G: the coupling is the residual.
"""
from __future__ import annotations

import torch
from torch import nn


class ReversibleCoupling(nn.Module):
    def __init__(self, f: nn.Module, g: nn.Module):
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return y1, y2

    @torch.no_grad()
    def inverse(self, y1: torch.Tensor, y2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return x1, x2
