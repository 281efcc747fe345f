"""The additive coupling that makes a block reversible (RevNet / Reversible ViT).

    forward:  Y1 = X1 + F(X2),   Y2 = X2 + G(Y1)
    inverse:  X2 = Y2 - G(Y1),   X1 = Y1 - F(X2)

This module is the one place the formula lives: the plain forward, the reversible stack's
graph-free forward and the backward schedules' reconstruction all call :func:`couple` and
:func:`uncouple`, with F and G wrapped as each needs (RNG snapshots, grad-recording leaves).

F and G are arbitrary modules mapping a stream to a tensor of the same shape; they need not be
invertible themselves. No skip connection lives inside F or G: the coupling is the residual.
Both are called as ``F(x, *side)`` and ``G(x, *side)``, where ``side`` are the stack's side inputs
(an attention mask, ...): everything F and G read besides the streams, passed explicitly so that
recomputation in backward sees what the forward saw (never state a later forward can overwrite).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Sublayer = Callable[[torch.Tensor], torch.Tensor]


def couple(f: Sublayer, g: Sublayer, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y1 = x1 + f(x2)
    y2 = x2 + g(y1)
    return y1, y2


def uncouple(f: Sublayer, g: Sublayer, y1: torch.Tensor, y2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = y2 - g(y1)
    x1 = y1 - f(x2)
    return x1, x2


class ReversibleCoupling(nn.Module):
    def __init__(self, f: nn.Module, g: nn.Module):
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return couple(lambda x: self.f(x, *side), lambda x: self.g(x, *side), x1, x2)

    @torch.no_grad()
    def inverse(self, y1: torch.Tensor, y2: torch.Tensor, *side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return uncouple(lambda x: self.f(x, *side), lambda x: self.g(x, *side), y1, y2)
