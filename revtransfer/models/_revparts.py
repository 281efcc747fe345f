"""Pieces shared by the reversible Swin, MViT and RoBERTa models.

* :class:`MlpSublayer` is G of every family: LayerNorm -> MLP -> drop path, no residual (the
  coupling adds it).
* :class:`StreamFusion` merges the two residual streams into one where a model leaves a reversible
  stack for a non-reversible transition (Swin patch merging, MViT stage transition): ``"concat"``
  (concatenate, Linear 2C -> C: the thesis's "simple MLP") or ``"avg"`` ((x1 + x2) / 2, no
  parameters; Rev-MViT's default). After the transition the streams restart as I1 = I2.
* :class:`TerminationFusion` is RevViT's end of the network: ``"concat"`` (concat, LayerNorm(2C),
  so ``num_features`` is 2C) or ``"avg"`` (mean of the streams, LayerNorm(C)).
* :func:`merge_then` applies a module to the merged streams without keeping the merged tensor for
  backward: it saves the two streams (which the reversible stack before it saves anyway: the same
  storages) and recomputes the merge and the module in backward. The termination fusion's norm and
  the concat transition fusion's projection run through it, so a reversible model keeps no copy of
  its last streams beyond the stack's own.
* :class:`ReversibleModelMixin` gives the ``backprop`` property and ``set_backprop``, timm's
  classifier conventions, ``set_grad_checkpointing`` (mapped onto the backward modes) and the
  stage-wise ``forward_intermediates`` of the hierarchical models.

What an intermediate feature of a reversible model is: a block (or stage) has two output streams,
so its feature map is the two streams merged as the network's end merges them (:func:`merge_streams`:
concat, 2C channels, or their mean, C), before the final norm; ``norm=True`` applies that norm
where it fits (every block of RevViT; the last stage of RevSwin / RevMViT, as timm's Swin does).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call

from revtransfer.reversible import AutocastState, ReversibleStack, set_backprop_mode
from revtransfer.reversible.refusals import fsdp_managed
from revtransfer.reversible.schedule import lane_parameters

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
            return (x1 + x2) * 0.5  # saves nothing for backward
        return merge_then(self.proj, x1, x2, "concat")

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def merge_streams(x1: torch.Tensor, x2: torch.Tensor, kind: str) -> torch.Tensor:
    """The two streams as one tensor, as the termination fusion merges them (before its norm)."""
    return torch.cat([x1, x2], dim=-1) if kind == "concat" else (x1 + x2) * 0.5


class _MergeThenFunction(torch.autograd.Function):
    """``fn(merge_streams(x1, x2, kind))`` that saves only ``x1`` and ``x2`` (and the autocast
    state): backward recomputes the merge and ``fn`` with grad enabled and differentiates that small
    graph, as the reversible stack does for its blocks. ``fn``'s parameters follow the streams as
    inputs so their grads are returned (accumulated by autograd, as DDP's hooks expect)."""

    @staticmethod
    def forward(ctx, fn: nn.Module, kind: str, x1, x2, *params):
        ctx.fn, ctx.kind, ctx.params = fn, kind, params
        ctx.autocast = AutocastState.capture()
        ctx.save_for_backward(x1, x2)
        return fn(merge_streams(x1, x2, kind))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x1, x2 = ctx.saved_tensors
        need_x1, need_x2, *need_params = ctx.needs_input_grad[2:]
        params = ctx.params
        if [id(p) for p in ctx.fn.parameters()] != [id(p) for p in params]:
            raise RuntimeError(f"the parameters of {type(ctx.fn).__name__} changed between its forward and its "
                               "backward; the merged streams' recomputation needs the same ones")
        wanted = {id(p) for p, need in zip(params, need_params) if need}
        with torch.enable_grad(), ctx.autocast.restored():
            l1 = x1.detach().requires_grad_(need_x1)
            l2 = x2.detach().requires_grad_(need_x2)
            aliases, leaves = lane_parameters(ctx.fn, wanted)
            y = functional_call(ctx.fn, aliases, (merge_streams(l1, l2, ctx.kind),))
        inputs = [t for t, need in ((l1, need_x1), (l2, need_x2)) if need] + leaves
        grads = iter(torch.autograd.grad(y, inputs, dy, allow_unused=True))
        dx1 = next(grads) if need_x1 else None
        dx2 = next(grads) if need_x2 else None
        return (None, None, dx1, dx2, *[next(grads) if id(p) in wanted else None for p in params])


def merge_then(fn: nn.Module, x1: torch.Tensor, x2: torch.Tensor, kind: str) -> torch.Tensor:
    """``fn(merge_streams(x1, x2, kind))``; when autograd records it, through
    :class:`_MergeThenFunction`, which keeps only the two streams for backward instead of the merged
    tensor that ``fn`` (a LayerNorm, a Linear) would save: after a reversible stack, that is no
    activation beyond what the stack keeps. The value is the same computation either way. Under
    ``torch.compile`` the plain form is traced (the compiler plans memory itself), and under FSDP it
    runs as is (FSDP swaps the module's parameters for views of its flat ones, which the
    recomputation would not see)."""
    params = list(fn.parameters())
    if (torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and (x1.requires_grad or x2.requires_grad or any(p.requires_grad for p in params))
            and not fsdp_managed(fn, params)):
        return _MergeThenFunction.apply(fn, kind, x1, x2, *params)
    return fn(merge_streams(x1, x2, kind))


def fused_width(dim: int, kind: str) -> int:
    return dim * (2 if kind == "concat" else 1)


class TerminationFusion(nn.Module):
    """Two streams (..., C) -> features (..., C') at the end of the network, then LayerNorm(C')."""

    def __init__(self, dim: int, kind: str = "concat", norm_layer=nn.LayerNorm):
        super().__init__()
        self.kind = check_fusion(kind)
        self.num_features = fused_width(dim, kind)
        self.norm = norm_layer(self.num_features)

    def forward(self, x1, x2):
        return merge_then(self.norm, x1, x2, self.kind)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def take_indices(n: int, indices=None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``: ``None`` all of ``n``, an int the last n, a sequence those
    (negative from the end). Returns the sorted indices and the largest."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"last-n indices {indices} out of range 1..{n}")
        take = list(range(n - indices, n))
    else:
        take = sorted({i % n if -n <= i < n else _out_of_range(i, n) for i in indices})
    return take, max(take)


def _out_of_range(i: int, n: int):
    raise ValueError(f"feature index {i} out of range for {n} features")


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

    def set_backprop(self, mode: str, keep_last_activations: bool | None = None) -> None:
        """The backward mode; ``keep_last_activations``: each reversible stack keeps its last block's
        activations instead of recomputing them (see ``ReversibleStack``)."""
        set_backprop_mode(self, mode, keep_last_activations)

    # --- timm's memory switch, mapped onto the backward modes ---------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing trades compute for activation memory; a reversible model does that
        by design: ``reprop``/``pareprop`` keep no activations per block and recompute them from the
        stack's outputs, which is cheaper than checkpointing (no stored segment inputs). So enabling
        it selects ``pareprop`` (unless ``reprop`` is already set) and disabling it ``backprop``."""
        if not enable:
            self.set_backprop("backprop")
        elif self.backprop == "backprop":
            self.set_backprop("pareprop")

    @property
    def grad_checkpointing(self) -> bool:
        return "backprop" not in self.backprop.split(",")

    # --- timm's layer groups (layer-wise lr decay) -----------------------------------------------------
    @staticmethod
    def _block_group_matcher(stem: str, blocks: str, head: str) -> dict:
        """One reversible stack ``blocks.(i)``: a group per block."""
        return dict(stem=stem, blocks=[(blocks + r"\.(\d+)", None), (head, (99999,))])

    @staticmethod
    def _stage_group_matcher(stem: str, head: str, coarse: bool) -> dict:
        """Stages ``layers.stages.(k)`` (stacks and transitions): a group per stage, or per block
        of a stack with the transition before it as its own group."""
        if coarse:
            return dict(stem=stem, blocks=[(r"^layers\.stages\.(\d+)", None), (head, (99999,))])
        return dict(stem=stem, blocks=[(r"^layers\.stages\.(\d+)\.blocks\.(\d+)", None),
                                       (r"^layers\.stages\.(\d+)", (0,)), (head, (99999,))])

    # --- hierarchical models: one feature per stage ---------------------------------------------------
    def _stage_intermediates(self, x, to_nchw, indices=None, norm=False, output_fmt="NCHW",
                             intermediates_only=False):
        """``forward_intermediates`` over ``self.layers.stages`` for the ``self.feature_info``
        entries (one per stage, ``module`` naming the stage whose output it is). ``to_nchw(feat, i)``
        reshapes feature ``i``'s tokens."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r} is not supported; use 'NCHW'")
        take, max_index = take_indices(len(self.feature_info), indices)
        emit = {int(self.feature_info[i]["module"].rsplit(".", 1)[1]): i for i in take}
        last_stage = int(self.feature_info[max_index]["module"].rsplit(".", 1)[1])
        final = len(self.feature_info) - 1
        intermediates = []
        x1 = x2 = x
        for k, stage in enumerate(self.layers.stages):
            if intermediates_only and k > last_stage:
                break
            x1, x2 = stage(x1, x2)
            if k in emit:
                i = emit[k]
                feat = self.fuse(x1, x2) if norm and i == final else merge_streams(x1, x2, self.fusion)
                intermediates.append(to_nchw(feat, i))
        if intermediates_only:
            return intermediates
        return self.fuse(x1, x2), intermediates


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
