"""Backward schedules for a reversible stack: reprop and pareprop.

For block i with outputs (Y1, Y2) the backward does two things:

* ``recover(i)``: with grad on detached leaves, recompute ``g = G(Y1)``, ``X2 = Y2 - g``,
  ``f = F(X2)``, ``X1 = Y1 - f`` under block i's RNG and autocast state and the stack's side
  inputs, keeping the small graphs of g and f. (X1, X2) are block i-1's outputs.
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

With ``keep_last`` the stack's last block is not recomputed at all: its forward already ran with
its F and G graphs kept (:func:`forward_keeping_graphs`), which stores one block's activations
(constant in depth) and saves 1/depth of the recompute (a quarter for the 4-block study models). A
second backward through the same graph (``retain_graph``) recomputes it like the others.

Parameters are differentiated through aliases made on the lane itself (:func:`lane_parameters`).
A parameter's gradient accumulator node belongs to the stream it was created on, and the stack's
forward created it on the main stream; differentiating the real parameter on the side lane makes
autograd (torch >= 2.10) sync that lane with main's whole queue after every such call, which would
serialise the half of the schedule that runs there.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

from .coupling import couple, uncouple
from .lanes import Lane
from .state import AutocastState, RNGState


@dataclass
class BlockRNG:
    """RNG snapshots taken in forward just before F and just before G ran."""
    f: RNGState | None
    g: RNGState | None


@dataclass
class _Graph:
    """One sublayer's recomputed graph: its input leaf, its output, and the parameter leaves
    (aliases) its gradients are taken against."""
    leaf: torch.Tensor
    out: torch.Tensor
    params: list[torch.Tensor]


@dataclass
class _Recovered:
    x1: torch.Tensor  # block inputs, detached: block i-1's outputs
    x2: torch.Tensor
    g: _Graph
    f: _Graph
    lane: Lane
    done: object      # event: recover finished on its lane


def lane_parameters(module: nn.Module, wanted: set[int]) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Aliases (same storage) of ``module``'s parameters, made on the current lane so that their
    gradient accumulators are too. Those in ``wanted`` (ids) require grad and are returned as a list
    in ``module.parameters()`` order; the rest are constants here."""
    aliases, leaves = {}, []
    for name, p in module.named_parameters():
        alias = p.detach()
        if id(p) in wanted:
            leaves.append(alias.requires_grad_())
        aliases[name] = alias
    return aliases, leaves


def _record(module: nn.Module, rng: RNGState | None, side: tuple, wanted: set[int], snapshots: list | None = None,
            devices: list[int] | None = None):
    """``module`` as a sublayer for :func:`couple` / :func:`uncouple` that records its graph against
    fresh leaves, under ``rng`` if given; with ``snapshots``, first appends the RNG state it draws
    from (``devices`` None: no snapshot)."""
    graph = []

    def run(x):
        if snapshots is not None:
            snapshots.append(RNGState.capture(devices) if devices is not None else None)
        with torch.enable_grad():
            aliases, leaves = lane_parameters(module, wanted)
            leaf = x.detach().requires_grad_()
            with rng.restored() if rng is not None else contextlib.nullcontext():
                out = functional_call(module, aliases, (leaf, *side))
        graph.append(_Graph(leaf, out, leaves))
        return out

    return run, graph


def recover(block, rng: BlockRNG, y1, y2, side: tuple, autocast: AutocastState, lane: Lane,
            wanted: set[int]) -> _Recovered:
    with lane.active(), autocast.restored(), torch.no_grad():
        f, f_graph = _record(block.f, rng.f, side, wanted)
        g, g_graph = _record(block.g, rng.g, side, wanted)
        x1, x2 = uncouple(f, g, y1, y2)  # the subtractions stay out of the graphs (no_grad)
        return _Recovered(x1, x2, g_graph[0], f_graph[0], lane, lane.record())


def forward_keeping_graphs(block, x1, x2, side: tuple, lane: Lane, wanted: set[int], devices: list[int] | None):
    """The block's forward that keeps its F and G graphs, as :func:`recover` would rebuild them.
    Returns its outputs, the graphs (for :func:`grads`) and its RNG snapshots."""
    snapshots = []
    with lane.active(), torch.no_grad():
        f, f_graph = _record(block.f, None, side, wanted, snapshots, devices)
        g, g_graph = _record(block.g, None, side, wanted, snapshots, devices)
        y1, y2 = couple(f, g, x1, x2)
        return y1, y2, _Recovered(x1, x2, g_graph[0], f_graph[0], lane, lane.record()), BlockRNG(*snapshots)


def _grad(graph: _Graph, grad_output):
    grads = torch.autograd.grad(graph.out, (graph.leaf, *graph.params), grad_output, allow_unused=True)
    return grads[0], list(grads[1:])


def grads(rec: _Recovered, dy1, dy2):
    """Returns dX1, dX2 and the grads of the block's wanted (F, G) parameters; frees its graphs."""
    with rec.lane.active():
        d_y1_via_g, g_grads = _grad(rec.g, dy2)
        dy1_total = dy1 if d_y1_via_g is None else dy1 + d_y1_via_g
        d_x2_via_f, f_grads = _grad(rec.f, dy1_total)
        dx2 = dy2 if d_x2_via_f is None else dy2 + d_x2_via_f
    return dy1_total, dx2, f_grads, g_grads


def run_backward(
    blocks: Sequence,
    rngs: Sequence[BlockRNG],
    y1: torch.Tensor,
    y2: torch.Tensor,
    dy1: torch.Tensor,
    dy2: torch.Tensor,
    side: tuple,
    autocast: AutocastState,
    lanes: Sequence[Lane],
    wanted: set[int],
    last: _Recovered | None = None,
):
    """Backward through the stack. ``lanes[0]`` is the caller's lane (current stream); with one lane
    this is reprop, with two it is pareprop. ``wanted``: ids of the parameters whose grads are
    needed; ``last``: the last block's graphs kept by its forward (made on the caller's stream).
    Returns dX1, dX2 and per block the grads of its wanted F and G parameters, in
    ``parameters()`` order."""
    n = len(blocks)
    main = lanes[0]
    lookahead = len(lanes) > 1

    def lane_of(i):
        return lanes[(n - 1 - i) % len(lanes)]

    def recover_after(rec: _Recovered, i: int) -> _Recovered:
        lane = lane_of(i)
        lane.wait(rec.done)
        lane.adopt(rec.x1, rec.x2)
        return recover(blocks[i], rngs[i], rec.x1, rec.x2, side, autocast, lane, wanted)

    for lane in lanes[1:]:  # side lanes start after the forward's outputs and the incoming grads
        lane.wait(main.record())

    per_block = [None] * n
    if last is not None:  # lane_of(n - 1) is main, the stream its forward ran on
        rec = dataclasses.replace(last, lane=main, done=None)
    else:
        rec = recover(blocks[n - 1], rngs[n - 1], y1, y2, side, autocast, lane_of(n - 1), wanted)
    grads_done = None
    for i in range(n - 1, -1, -1):
        nxt = None
        if lookahead and i > 0:  # queue block i-1's recompute before block i's grads
            nxt = recover_after(rec, i - 1)
        lane = rec.lane
        lane.wait(grads_done)
        lane.adopt(dy1, dy2)
        dy1, dy2, f_grads, g_grads = grads(rec, dy1, dy2)
        grads_done = lane.record()
        per_block[i] = (lane, f_grads, g_grads)
        if not lookahead and i > 0:
            nxt = recover_after(rec, i - 1)
        rec = nxt

    # Join: the caller's lane waits for every side lane, and adopts what they produced.
    for lane in lanes[1:]:
        main.wait(lane.record())
    main.adopt(dy1, dy2)
    for lane, f_grads, g_grads in per_block:
        if lane != main:
            main.adopt(*f_grads, *g_grads)
    return dy1, dy2, [(f, g) for _, f, g in per_block]
