"""Lanes: where a step of the backward schedule runs.

On CUDA a lane is a stream; on CPU every lane is plain program order, so the same schedule code
runs (and is tested) on both. Cross-lane ordering goes through events, never a host synchronize.
"""
from __future__ import annotations

import contextlib

import torch


class Lane:
    def __init__(self, stream: "torch.cuda.Stream | None" = None):
        self.stream = stream

    def active(self):
        """Context in which queued work runs on this lane."""
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def record(self):
        """An event marking all work queued on this lane so far (None on CPU)."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def wait(self, event) -> None:
        if self.stream is not None and event is not None:
            self.stream.wait_event(event)

    def adopt(self, *tensors) -> None:
        """Tell the caching allocator these tensors (made on another lane) are used on this one,
        so their memory is not handed out again before this lane's queued work is done."""
        if self.stream is None:
            return
        for t in tensors:
            if t is not None and t.is_cuda:
                t.record_stream(self.stream)

    def __eq__(self, other):
        return isinstance(other, Lane) and self.stream == other.stream

    def __hash__(self):
        return hash(self.stream)


_SIDE_STREAMS: dict[int, "torch.cuda.Stream"] = {}


def side_stream(device: torch.device) -> "torch.cuda.Stream":
    """One cached side stream per device (creating streams per backward call is wasteful)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


def current_lane(device: torch.device) -> Lane:
    """The caller's lane: the current stream on CUDA, program order elsewhere."""
    return Lane(torch.cuda.current_stream(device)) if device.type == "cuda" else Lane()


def lanes_for(mode: str, device: torch.device) -> list[Lane]:
    """reprop: one lane. pareprop: the current stream plus a side stream on CUDA; on CPU both
    lanes are program order (same schedule, no concurrency)."""
    if device.type != "cuda":
        return [Lane()] if mode == "reprop" else [Lane(), Lane()]
    main = Lane(torch.cuda.current_stream(device))
    return [main] if mode == "reprop" else [main, Lane(side_stream(device))]
