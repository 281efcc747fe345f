"""Pieces shared by the reversible Swin, MViT and RoBERTa models.

* :class:`MlpSublayer` is G of every family: LayerNorm -> MLP -> drop path, no residual (the
  coupling adds it).
* :class:`StreamFusion` merges the two residual streams into one where a model leaves a reversible
  stack for a non-reversible transition (Swin patch merging, MViT stage transition): ``"concat"``
  (concatenate, Linear 2C -> C: the thesis's "simple MLP") or ``"avg"`` ((x1 + x2) / 2, no
  parameters; Rev-MViT's default). After the transition the streams restart as I1 = I2.
* :class:`TerminationFusion` is RevViT's end of the network: ``"concat"`` (concat, LayerNorm(2C),
  so ``num_features`` is 2C) or ``"avg"`` (mean of the streams, LayerNorm(C)).
* :class:`ReversibleModelMixin` gives the ``backprop`` property and ``set_backprop``.
"""
from __future__ import annotations

import torch
from torch import nn

from revtransfer.reversible import ReversibleStack, set_backprop_mode

from ._layers import DropPath, Mlp, trunc_normal_

FUSIONS = ("concat", "avg")


def check_fusion(kind: str, what: str = "fusion") -> str:
    if kind not in FUSIONS:
        raise ValueError(f"unknown {what} {kind!r}; choose one of: {', '.join(FUSIONS)}")
    return kind


class MlpSublayer(nn.Module):
    """G: LayerNorm -> MLP -> drop path. ``drop`` may be a pair (after the activation, after fc2)."""

    def __init__(self, dim, mlp_ratio=4.0, drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm, act_layer=nn.GELU):
        super().__init__()
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, *side):  # side inputs of the stack (e.g. an attention mask) do not concern an MLP
        return self.drop_path(self.mlp(self.norm(x)))


class StreamFusion(nn.Module):
    """Two streams (..., C) -> one (..., C) before a non-reversible transition."""

    def __init__(self, dim: int, kind: str = "concat"):
        super().__init__()
        self.kind = check_fusion(kind, "transition fusion")
        self.proj = nn.Linear(2 * dim, dim) if kind == "concat" else None

    def forward(self, x1, x2):
        if self.proj is None:
            return (x1 + x2) * 0.5
        return self.proj(torch.cat([x1, x2], dim=-1))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class TerminationFusion(nn.Module):
    """Two streams (..., C) -> features (..., C') at the end of the network, then LayerNorm(C')."""

    def __init__(self, dim: int, kind: str = "concat", norm_layer=nn.LayerNorm):
        super().__init__()
        self.kind = check_fusion(kind)
        self.num_features = dim * (2 if kind == "concat" else 1)
        self.norm = norm_layer(self.num_features)

    def forward(self, x1, x2):
        x = torch.cat([x1, x2], dim=-1) if self.kind == "concat" else (x1 + x2) * 0.5
        return self.norm(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def check_stage_depths(depths) -> tuple[int, ...]:
    if any(d < 1 for d in depths):
        raise ValueError(f"every stage needs at least one block, got depths {tuple(depths)}")
    return tuple(depths)


def check_global_pool(pool: str, allowed=("avg", "")) -> str:
    if pool not in allowed:
        raise ValueError(f"unknown global_pool {pool!r}; choose one of: {', '.join(map(repr, allowed))}")
    return pool


class ReversibleModelMixin:
    """What every reversible model shares: ``backprop`` (the mode of its reversible stacks),
    ``set_backprop(mode)``, and timm's classifier conventions over ``self.head`` (a linear layer on
    ``head_hidden_size`` features) with the pooling named by ``global_pool`` (one of ``global_pools``)."""

    global_pools: tuple[str, ...] = ("avg", "")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def _build_fused_head(self, dim: int, fusion: str, norm_layer, drop_rate: float, num_classes: int) -> None:
        """The termination fusion of the two streams, then timm's head_drop and classifier."""
        self.fuse = TerminationFusion(dim, fusion, norm_layer)
        self.num_features = self.head_hidden_size = self.fuse.num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool, self.global_pools)
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x, pre_logits: bool = False):
        """Tokens (B, ..., C) -> mean over every token axis ("avg") -> head."""
        if self.global_pool == "avg":
            x = x.mean(dim=tuple(range(1, x.ndim - 1)))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, *args, **kwargs):
        return self.forward_head(self.forward_features(*args, **kwargs))

    @property
    def backprop(self) -> str:
        modes = {m.mode for m in self.modules() if isinstance(m, ReversibleStack)}
        return modes.pop() if len(modes) == 1 else ",".join(sorted(modes))

    def set_backprop(self, mode: str) -> None:
        set_backprop_mode(self, mode)


def init_weights(m: nn.Module) -> None:
    """Transformer init: truncated-normal(0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        if m.weight is not None:
            nn.init.ones_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def linspace(start: float, end: float, n: int) -> list[float]:
    """``torch.linspace(start, end, n).tolist()`` in plain Python (works under a meta-device context)."""
    if n == 1:
        return [float(start)]
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def stage_drop_path_rates(drop_path_rate: float, depths) -> list[list[float]]:
    """Stochastic depth rising linearly over all blocks of the network, split per stage."""
    dpr = linspace(0.0, drop_path_rate, sum(depths))
    out, start = [], 0
    for d in depths:
        out.append(dpr[start:start + d])
        start += d
    return out
