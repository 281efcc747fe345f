"""A reversible stack (one autograd Function over a sequence of couplings) and a sequence of
stacks with non-reversible transitions between them. Nothing here knows about any model."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .coupling import ReversibleCoupling, couple
from .lanes import current_lane, lanes_for
from .refusals import FULLGRAPH_REFUSAL, capturing_cuda_graph, compile_disabled, refuse_unsupported
from .schedule import BlockRNG, forward_keeping_graphs, run_backward
from .state import AutocastState, RNGState, _cuda_devices

BACKPROP_MODES = ("backprop", "reprop", "pareprop")


def check_mode(mode: str) -> str:
    if mode not in BACKPROP_MODES:
        raise ValueError(f"unknown backprop mode {mode!r}; choose one of: {', '.join(BACKPROP_MODES)}")
    return mode


def _snapshotting(module: nn.Module, side: tuple, snapshots: list, devices: list[int] | None):
    """``module`` as a sublayer for :func:`couple` that first snapshots the RNG state it will draw
    from (``devices`` None: no snapshots, the stack does not preserve RNG state)."""
    def run(x):
        snapshots.append(RNGState.capture(devices) if devices is not None else None)
        return module(x, *side)
    return run


class _ReversibleStackFunction(torch.autograd.Function):
    """Forward without a graph, keeping only the last outputs, the side inputs and per-block RNG
    snapshots; backward reconstructs each block's inputs from its outputs."""

    @staticmethod
    def forward(ctx, stack: "ReversibleStack", blocks: nn.ModuleList, num_side: int, x1, x2, *side_and_params):
        side = side_and_params[:num_side]
        devices = _cuda_devices((x1, x2)) if stack.preserve_rng_state else None
        rngs = []
        kept = blocks[-1] if stack.keep_last else None
        with torch.no_grad():
            for block in blocks:
                if block is kept:
                    break
                snapshots = []
                x1, x2 = couple(_snapshotting(block.f, side, snapshots, devices),
                                _snapshotting(block.g, side, snapshots, devices), x1, x2)
                rngs.append(BlockRNG(*snapshots))
        ctx.last = None
        if kept is not None:  # its backward needs no recompute (see schedule.py)
            params = list(blocks.parameters())
            wanted = {id(p) for p, need in zip(params, ctx.needs_input_grad[5 + num_side:]) if need}
            x1, x2, ctx.last, rng = forward_keeping_graphs(kept, x1, x2, side, current_lane(x1.device), wanted,
                                                           devices)
            rngs.append(rng)
        ctx.blocks = blocks
        ctx.mode = stack.mode
        ctx.rngs = rngs
        ctx.num_side = num_side
        ctx.autocast = AutocastState.capture()
        ctx.save_for_backward(x1, x2, *side)
        return x1, x2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy1, dy2):
        if capturing_cuda_graph():  # a backward captured on its own (the forward refuses capture)
            refuse_unsupported(ctx.blocks, ())
        y1, y2, *side = ctx.saved_tensors
        blocks = ctx.blocks
        flat_params = list(blocks.parameters())
        first_param = 5 + ctx.num_side  # after stack, blocks, num_side, x1, x2 and the side inputs
        wanted = {id(p) for p, need in zip(flat_params, ctx.needs_input_grad[first_param:]) if need}
        last, ctx.last = ctx.last, None  # its graphs are freed by this backward; another one recomputes
        dx1, dx2, per_block = run_backward(blocks, ctx.rngs, y1, y2, dy1, dy2, tuple(side), ctx.autocast,
                                           lanes_for(ctx.mode, y1.device), wanted, last)
        # Parameter grads are returned rather than accumulated into .grad inside this backward: that
        # keeps autograd.grad / backward(inputs=...) exact and DDP's per-iteration hooks valid. With
        # .grad None at the step's start (zero_grad(set_to_none=True)) autograd adopts these tensors
        # as .grad, so they cost no memory beyond the grads every training step holds.
        # Sum per-block grads into one slot per parameter (a parameter may be shared by blocks).
        total: dict[int, torch.Tensor] = {}
        for block, (f_grads, g_grads) in zip(blocks, per_block):
            f_params = [p for p in block.f.parameters() if id(p) in wanted]
            g_params = [p for p in block.g.parameters() if id(p) in wanted]
            for p, g in zip(f_params + g_params, f_grads + g_grads):
                if g is not None:
                    total[id(p)] = g if id(p) not in total else total[id(p)] + g
        return (None, None, None, dx1, dx2, *[None] * ctx.num_side, *[total.get(id(p)) for p in flat_params])


def _reversible(stack: "ReversibleStack", blocks: nn.ModuleList, side: tuple, x1, x2, params: list):
    refuse_unsupported(blocks, params)  # FSDP, CUDA graph capture: one clear line instead of lost grads
    return _ReversibleStackFunction.apply(stack, blocks, len(side), x1, x2, *side, *params)


_UNCOMPILED = None


def _reversible_uncompiled():
    """What torch.compile calls: :func:`_reversible` behind ``torch.compiler.disable``, a graph break
    (fullgraph=False: the stack runs eagerly between the compiled graphs, exact, as
    tests/test_engine_refusals.py checks) or, with fullgraph=True, dynamo's refusal carrying
    FULLGRAPH_REFUSAL as its reason. Made eagerly, when a stack is built (``disable`` cannot be called
    inside a compiled region), not at import (it imports dynamo, over a second)."""
    global _UNCOMPILED
    if _UNCOMPILED is None:
        _UNCOMPILED = compile_disabled(_reversible, FULLGRAPH_REFUSAL)
    return _UNCOMPILED


class ReversibleStack(nn.Module):
    """A sequence of :class:`ReversibleCoupling` blocks run as one reversible unit.

    ``mode``: ``"backprop"`` (plain autograd, stores activations: the reference), ``"reprop"``
    (stores only the stack's outputs; inputs reconstructed block by block in backward) or
    ``"pareprop"`` (as reprop, with block i-1's reconstruction overlapped with block i's gradient
    computation on a second CUDA stream). Eval mode and ``torch.no_grad()`` run the plain blocks.

    ``stack(x1, x2, *side)``: side inputs (masks, tables) are handed to every F and G after the
    stream and saved for backward with the stack's outputs. They are constants of the stack: one
    that needs a gradient belongs inside F or G as a parameter or module.

    ``keep_last``: reprop/pareprop keep the last block's activations from the forward instead of
    recomputing them (1/depth less recompute for one block's activations: still flat in depth,
    but at depth 4 about a quarter of what backprop stores). Off by default: the paper's method.

    Where reprop/pareprop cannot work they refuse with :class:`ReversibleUnsupportedError` (one line
    naming what is supported): under FSDP, inside a CUDA graph capture, and (dynamo's error, with
    that line as its reason) in ``torch.compile(fullgraph=True)``; with ``fullgraph=False`` the
    stack is a graph break and runs eagerly (see :mod:`revtransfer.reversible.refusals`).
    """

    def __init__(self, blocks: Iterable[ReversibleCoupling], mode: str = "pareprop", preserve_rng_state: bool = True,
                 keep_last: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if len(self.blocks) == 0:
            raise ValueError("a ReversibleStack needs at least one block")
        self.mode = check_mode(mode)
        self.preserve_rng_state = preserve_rng_state
        self.keep_last = keep_last
        _reversible_uncompiled()

    def __setstate__(self, state):  # an unpickled stack may be compiled before it ever runs
        super().__setstate__(state)
        _reversible_uncompiled()

    def set_mode(self, mode: str) -> None:
        self.mode = check_mode(mode)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run(x1, x2, *side)

    def run(self, x1: torch.Tensor, x2: torch.Tensor, *side: torch.Tensor, start: int = 0,
            stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``start`` to ``stop`` (exclusive) as one reversible segment: how a model takes the
        output of an intermediate block without storing the activations of any."""
        for i, s in enumerate(side):
            if not isinstance(s, torch.Tensor):
                raise TypeError(f"side input {i} of a reversible stack is a {type(s).__name__}, not a tensor")
            if s.requires_grad:
                raise ValueError(f"side input {i} of a reversible stack requires grad; side inputs are constants "
                                 "(masks, tables): compute one that needs a gradient inside F or G")
        blocks = self.blocks if start == 0 and stop is None else self.blocks[start:stop]
        if self.mode != "backprop" and self.training and torch.is_grad_enabled() and len(blocks):
            params = list(blocks.parameters())  # deduplicated; walked once per call, on every training step
            if x1.requires_grad or x2.requires_grad or any(p.requires_grad for p in params):
                run = _reversible_uncompiled() if torch.compiler.is_compiling() else _reversible
                return run(self, blocks, side, x1, x2, params)
        for block in blocks:
            x1, x2 = block(x1, x2, *side)
        return x1, x2

    @torch.no_grad()
    def inverse(self, y1: torch.Tensor, y2: torch.Tensor, *side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct the stack's inputs from its outputs (as backward does)."""
        for block in reversed(self.blocks):
            y1, y2 = block.inverse(y1, y2, *side)
        return y1, y2

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, depth={len(self.blocks)}" + (", keep_last=True" if self.keep_last else "")


class ReversibleSequence(nn.Module):
    """Reversible stacks with optional non-reversible transitions between them.

    Every stage maps a pair of streams (x1, x2) to a pair. Transitions (e.g. patch merging in a
    hierarchical model) run under ordinary autograd, so their activations are cached; only the
    stacks reconstruct theirs.
    """

    def __init__(self, stages: Iterable[nn.Module]):
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x1, x2):
        for stage in self.stages:
            x1, x2 = stage(x1, x2)
        return x1, x2


def set_backprop_mode(module: nn.Module, mode: str, keep_last: bool | None = None) -> None:
    """Set the backward mode of every reversible stack inside ``module`` (and, if given, whether
    each keeps its last block's activations)."""
    check_mode(mode)
    for m in module.modules():
        if isinstance(m, ReversibleStack):
            m.set_mode(mode)
            if keep_last is not None:
                m.keep_last = keep_last
