"""Backward schedules for a reversible stack: reprop and pareprop.

For block i with outputs (Y1, Y2) the backward does two things:

* ``recover(i)``: with grad on detached leaves, recompute ``g = G(Y1)``, ``X2 = Y2 - g``,
  ``f = F(X2)``, ``X1 = Y1 - f`` under block i's RNG and autocast state, keeping the small graphs
  of g and f. (X1, X2) are block i-1's outputs.
* ``grads(i)``: push (dY1, dY2) through those graphs; parameter grads are collected and
  (dX1, dX2) becomes block i-1's (dY1, dY2).

Reprop runs recover(i); grads(i) for i = n-1 .. 0. PaReprop notes that recover(i-1) needs only
recover(i)'s outputs, so it queues recover(i-1) on the other lane before grads(i). Block i's
steps run on lane (n-1-i) % 2, so each block's graph is built, and (as autograd runs a backward
op on its forward op's stream) differentiated, on one stream; the two lanes alternate and each
step overlaps with the other lane's step:

    lane 0:  rec(n-1)  grads(n-1)  rec(n-3)    grads(n-3) ...
    lane 1:            rec(n-2)    grads(n-2)  rec(n-4)   ...

Any depth works: nothing pairs blocks up, the last block simply has no recover(i-1) to overlap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .lanes import Lane
from .state import AutocastState, RNGState


@dataclass
class BlockRNG:
    """RNG snapshots taken in forward just before F and just before G ran."""
    f: RNGState | None
    g: RNGState | None


@dataclass
class _Recovered:
    x1: torch.Tensor       # block inputs, detached: block i-1's outputs
    x2: torch.Tensor
    y1_leaf: torch.Tensor  # the leaves and outputs of the graphs of G and F
    g_out: torch.Tensor
    x2_leaf: torch.Tensor
    f_out: torch.Tensor
    lane: Lane
    done: object           # event: recover finished on its lane


def _run(module, x, rng: RNGState | None):
    if rng is None:
        return module(x)
    with rng.restored():
        return module(x)


def recover(block, rng: BlockRNG, y1, y2, autocast: AutocastState, lane: Lane) -> _Recovered:
    with lane.active(), torch.enable_grad(), autocast.restored():
        y1_leaf = y1.detach().requires_grad_()
        g_out = _run(block.g, y1_leaf, rng.g)
        with torch.no_grad():
            x2 = y2 - g_out
        x2_leaf = x2.detach().requires_grad_()
        f_out = _run(block.f, x2_leaf, rng.f)
        with torch.no_grad():
            x1 = y1 - f_out
        return _Recovered(x1, x2, y1_leaf, g_out, x2_leaf, f_out, lane, lane.record())


def _grad(output, leaf, params, grad_output):
    grads = torch.autograd.grad(output, (leaf, *params), grad_output, allow_unused=True)
    return grads[0], list(grads[1:])


def grads(rec: _Recovered, dy1, dy2, f_params, g_params):
    """Returns dX1, dX2 and the grads of (f_params, g_params); frees the block's graphs."""
    with rec.lane.active():
        d_y1_via_g, g_grads = _grad(rec.g_out, rec.y1_leaf, g_params, dy2)
        dy1_total = dy1 if d_y1_via_g is None else dy1 + d_y1_via_g
        d_x2_via_f, f_grads = _grad(rec.f_out, rec.x2_leaf, f_params, dy1_total)
        dx2 = dy2 if d_x2_via_f is None else dy2 + d_x2_via_f
    return dy1_total, dx2, f_grads, g_grads


def run_backward(
    blocks: Sequence,
    rngs: Sequence[BlockRNG],
    y1: torch.Tensor,
    y2: torch.Tensor,
    dy1: torch.Tensor,
    dy2: torch.Tensor,
    autocast: AutocastState,
    lanes: Sequence[Lane],
    block_params: Sequence[tuple[list, list]],
):
    """Backward through the stack. ``lanes[0]`` is the caller's lane (current stream); with one lane
    this is reprop, with two it is pareprop. Returns dX1, dX2 and per-block (f_grads, g_grads)."""
    n = len(blocks)
    main = lanes[0]
    lookahead = len(lanes) > 1

    def lane_of(i):
        return lanes[(n - 1 - i) % len(lanes)]

    for lane in lanes[1:]:  # side lanes start after the forward's outputs and the incoming grads
        lane.wait(main.record())

    per_block = [None] * n
    rec = recover(blocks[n - 1], rngs[n - 1], y1, y2, autocast, lane_of(n - 1))
    grads_done = None
    for i in range(n - 1, -1, -1):
        nxt = None
        if lookahead and i > 0:  # queue block i-1's recompute before block i's grads
            nxt = _recover_after(blocks, rngs, rec, i - 1, autocast, lane_of(i - 1))
        lane = rec.lane
        lane.wait(grads_done)
        lane.adopt(dy1, dy2)
        dy1, dy2, f_grads, g_grads = grads(rec, dy1, dy2, *block_params[i])
        grads_done = lane.record()
        per_block[i] = (lane, f_grads, g_grads)
        if not lookahead and i > 0:
            nxt = _recover_after(blocks, rngs, rec, i - 1, autocast, lane_of(i - 1))
        rec = nxt

    # Join: the caller's lane waits for every side lane, and adopts what they produced.
    for lane in lanes[1:]:
        main.wait(lane.record())
    main.adopt(dy1, dy2)
    for lane, f_grads, g_grads in per_block:
        if lane != main:
            main.adopt(*f_grads, *g_grads)
    return dy1, dy2, [(f, g) for _, f, g in per_block]


def _recover_after(blocks, rngs, rec: _Recovered, i, autocast, lane: Lane) -> _Recovered:
    lane.wait(rec.done)
    lane.adopt(rec.x1, rec.x2)
    return recover(blocks[i], rngs[i], rec.x1, rec.x2, autocast, lane)
