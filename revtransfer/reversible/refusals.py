"""Where the reversible engine cannot go, refused with one line that says what is supported.

A reversible stack in reprop / pareprop mode is one autograd Function whose backward is a Python
schedule: it recomputes each block from the stack's outputs with the blocks' parameters as they are
at backward time, replays RNG snapshots, and on CUDA orders two streams with events. Three ways of
running a model break those assumptions and would fail obscurely or lose gradients silently:

* FSDP (``FullyShardedDataParallel``, ``fully_shard``): the blocks' parameters are flattened,
  sharded or swapped between forward and backward; with FSDP v1's flat parameters the stack sees no
  parameters at all and their gradients are silently dropped.
* CUDA graph capture: the forward takes RNG snapshots and keeps Python state, the backward makes
  events and a side stream; none of it can be replayed from a captured graph.
* ``torch.compile(fullgraph=True)``: the Function and its schedule cannot be traced into one graph.
  With ``fullgraph=False`` the stack is a graph break: it runs eagerly between compiled graphs,
  which is exact (see :func:`ReversibleStack.run`).

Plain autograd (``backprop`` mode) is not concerned: it is refused nowhere.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from revtransfer.errors import UserError

SUPPORTED = ("supported with reprop/pareprop: DDP, autocast, gradient accumulation, torch.compile with "
             "fullgraph=False (the stack runs eagerly between compiled graphs) or of F and G without dropout; "
             "or switch the model to backprop mode")


class ReversibleUnsupportedError(UserError, RuntimeError):
    """A reversible stack was run where its backward cannot work (FSDP, CUDA graph capture,
    ``torch.compile(fullgraph=True)``); the message is one line naming what is supported."""


FSDP_REFUSAL = ("a reversible stack in reprop/pareprop mode cannot run under FSDP (FullyShardedDataParallel or "
                "fully_shard) or on sharded (DTensor) parameters: its backward recomputes the blocks from "
                "parameters that FSDP flattens, shards or swaps, so their gradients would be lost; " + SUPPORTED)
CUDA_GRAPH_REFUSAL = ("a reversible stack in reprop/pareprop mode cannot be captured in a CUDA graph: its forward "
                      "keeps RNG snapshots and Python state and its backward schedules streams and events, none "
                      "of which a graph replay reproduces; " + SUPPORTED)
FULLGRAPH_REFUSAL = ("torch.compile(fullgraph=True) cannot capture a reversible stack in reprop/pareprop mode: its "
                     "backward is a Python schedule (recompute from the outputs, RNG replay, streams) that is not "
                     "traceable; " + SUPPORTED)


def _has_class(obj, name: str) -> bool:
    """``obj`` is an instance of a class called ``name`` (checked by name: no torch.distributed import)."""
    return any(cls.__name__ == name for cls in type(obj).__mro__)


def fsdp_managed(blocks: nn.Module, params: Iterable[torch.Tensor]) -> bool:
    """Whether FSDP manages ``blocks`` or their parameters are sharded: FSDP v1 and fully_shard mark
    every module they manage (``_is_fsdp_managed_module``, set for dynamo), FSDP v1 marks the
    parameters it flattens (``_fsdp_flattened``), fully_shard turns modules into ``FSDPModule``
    subclasses and parameters into DTensors."""
    for m in blocks.modules():
        if m.__dict__.get("_is_fsdp_managed_module") or _has_class(m, "FSDPModule"):
            return True
    return any(getattr(p, "_fsdp_flattened", False) or _has_class(p, "DTensor") for p in params)


def capturing_cuda_graph() -> bool:
    """Whether the current CUDA stream is capturing a graph (never initialises CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def refuse_unsupported(blocks: nn.Module, params: Iterable[torch.Tensor]) -> None:
    """Raise :class:`ReversibleUnsupportedError` if the reversible stack ``blocks`` runs under FSDP
    or inside a CUDA graph capture (called where the stack takes its reversible path)."""
    if fsdp_managed(blocks, params):
        raise ReversibleUnsupportedError(FSDP_REFUSAL)
    if capturing_cuda_graph():
        raise ReversibleUnsupportedError(CUDA_GRAPH_REFUSAL)


def compile_disabled(fn, reason: str):
    """``torch.compiler.disable(fn)`` with a reason that dynamo's error names (torch >= 2.7 takes it)."""
    try:
        return torch.compiler.disable(fn, reason=reason)
    except TypeError:  # older torch: no reason argument
        return torch.compiler.disable(fn)


__all__ = ["ReversibleUnsupportedError", "SUPPORTED", "capturing_cuda_graph", "compile_disabled", "fsdp_managed",
           "refuse_unsupported"]
