"""One optimisation step, shared by the pretraining loop and the throughput benchmark."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from revtransfer.data import Normalize


def autocast_for(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainStep:
    """``step(x_uint8, y) -> (loss, n_correct)`` as device tensors (no host sync)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, normalize: Normalize,
                 precision: str = "fp32", grad_clip: float | None = None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.normalize, self.precision, self.grad_clip = normalize, precision, grad_clip

    def __call__(self, x_uint8: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(x_uint8)
        y = y.to(self.normalize.device, non_blocking=True)
        with autocast_for(self.precision, x.device):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and position embeddings (timm's grouping)."""
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, lr: float, total_steps: int, pct_start: float):
    """One-cycle cosine: warm up to ``lr`` over ``pct_start`` of the steps, cosine-anneal to ~0."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 2),
                                               pct_start=pct_start, anneal_strategy="cos")
