"""Simulated CUDA streams for checking the PaReprop schedule on a CPU.

``SimLanes`` stands in for ``lanes_for``: its lanes have the Lane interface (active, record, wait,
adopt) and keep vector clocks instead of queuing work on streams. A dispatch mode sees every aten
op, notes the lane it was issued on, and checks the two rules that make two-stream code correct:

* ordering: an op may read or overwrite memory last written on another lane only if that write
  happens-before it (the reading lane waited on an event recorded after the write); a write must
  also come after every other lane's earlier reads of that memory;
* lifetime: memory made on one lane and used on another must be adopted by the user lane
  (``record_stream``), or the caching allocator may hand it out again while the user still runs.

and it applies the rule autograd (torch >= 2.10) follows for gradient accumulators: an
AccumulateGrad node belongs to the stream it was created on, and ``torch.autograd.grad`` on one
lane against a leaf whose accumulator lives on another makes that other lane wait for the gradient
and, at the call's end, the calling lane wait for the other lane's whole queue. A leaf made during
the simulated backward has its accumulator on the lane that made it; any older leaf (a parameter
the forward used) has it on main. Each such call is counted in ``pinned_grads``.

It also times the schedule in op counts (each op that is not a view costs 1, a lane runs its ops in order, a wait
delays a lane to the event's time), which gives the ideal overlap two streams allow.

On CUDA a backward op runs on its forward op's stream; the schedule builds and differentiates each
block's graph on one lane, so issuing backward ops on the current lane, as here, is the same thing.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class StreamRace(AssertionError):
    pass


@dataclass
class _Event:
    clock: dict
    time: int


@dataclass
class _Memory:
    lane: "SimLane"            # lane of the last write
    tick: int                  # that lane's clock at the write
    made_on: "SimLane"         # lane the memory was allocated on
    adopted: set = field(default_factory=set)
    reads: dict = field(default_factory=dict)  # lane -> its clock at its last read


class SimLane:
    def __init__(self, sim: "SimLanes", name: str):
        self.sim, self.name = sim, name
        self.clock: dict[SimLane, int] = {self: 0}
        self.time = 0  # op-count time at which this lane's queued work ends
        self.ops = 0

    def active(self):
        return self.sim._on(self)

    def record(self):
        return _Event(dict(self.clock), self.time)

    def wait(self, event) -> None:
        if event is None:
            return
        for lane, tick in event.clock.items():
            self.clock[lane] = max(self.clock.get(lane, 0), tick)
        self.time = max(self.time, event.time)

    def adopt(self, *tensors) -> None:
        for t in tensors:
            if t is not None:
                mem = self.sim._memory.get(_key(t))
                if mem is not None:
                    mem.adopted.add(self)

    def __repr__(self):
        return f"lane {self.name}"


def _key(t: torch.Tensor):
    return t.untyped_storage().data_ptr()


class SimLanes(TorchDispatchMode):
    """Use as ``with SimLanes() as sim: monkeypatch lanes_for with sim.lanes_for; run backward``."""

    def __init__(self):
        super().__init__()
        self.main = SimLane(self, "main")
        self.side = SimLane(self, "side")
        self._current = self.main
        self._memory: dict[int, _Memory] = {}
        self.cross_lane_reads = 0
        self.pinned_grads = 0
        self.tracking = False
        self._born: dict[int, tuple[weakref.ref, SimLane]] = {}  # tensors made while tracking -> lane
        self._real_grad = torch.autograd.grad

    def __enter__(self):
        torch.autograd.grad = self._grad
        return super().__enter__()

    def __exit__(self, *exc):
        torch.autograd.grad = self._real_grad
        return super().__exit__(*exc)

    def lanes_for(self, mode: str, device) -> list[SimLane]:
        """Tracking starts here, at the reversible backward: what came before ran on main, long ago."""
        self.tracking = True
        return [self.main] if mode == "reprop" else [self.main, self.side]

    @contextlib.contextmanager
    def _on(self, lane: SimLane):
        previous, self._current = self._current, lane
        try:
            yield
        finally:
            self._current = previous

    @property
    def makespan(self) -> int:
        return max(self.main.time, self.side.time)

    @property
    def total_ops(self) -> int:
        return self.main.ops + self.side.ops

    def _accumulator_lane(self, leaf: torch.Tensor) -> SimLane:
        born = self._born.get(id(leaf))
        return born[1] if born is not None and born[0]() is leaf else self.main

    def _grad(self, outputs, inputs, *args, **kwargs):
        lane = self._current
        result = self._real_grad(outputs, inputs, *args, **kwargs)
        if self.tracking:
            leaves = [t for t in ([inputs] if isinstance(inputs, torch.Tensor) else inputs) if t.is_leaf]
            for owner in {self._accumulator_lane(t) for t in leaves} - {lane}:
                self.pinned_grads += 1
                owner.wait(lane.record())  # the accumulator's stream waits for the gradient ...
                lane.wait(owner.record())  # ... and the call ends with this lane waiting for all of it
        return result

    # -- the checks -------------------------------------------------------------------------------
    def _check_read(self, lane: SimLane, t: torch.Tensor, what: str) -> None:
        mem = self._memory.get(_key(t))
        if mem is None:  # made before tracking started (weights, forward outputs)
            return
        if mem.lane is not lane and lane.clock.get(mem.lane, 0) < mem.tick:
            raise StreamRace(f"{what} on {lane} reads memory written on {mem.lane} without waiting for it")
        if mem.made_on is not lane:
            self.cross_lane_reads += 1
            if lane not in mem.adopted:
                raise StreamRace(f"{what} on {lane} uses memory made on {mem.made_on} that it never adopted")
        mem.reads[lane] = lane.clock[lane]

    def _check_write(self, lane: SimLane, t: torch.Tensor, what: str) -> None:
        mem = self._memory.get(_key(t))
        if mem is None:
            return
        self._check_read(lane, t, what)
        for reader, tick in mem.reads.items():
            if reader is not lane and lane.clock.get(reader, 0) < tick:
                raise StreamRace(f"{what} on {lane} overwrites memory {reader} may still be reading")
        mem.lane, mem.tick, mem.reads = lane, lane.clock[lane], {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.tracking:
            return func(*args, **kwargs)
        lane = self._current
        lane.clock[lane] += 1
        if not func.is_view:  # a view (detach, reshape, ...) launches no kernel: it costs no time
            lane.time += 1
            lane.ops += 1
        what = str(func)
        schema_args = func._schema.arguments
        flat_args = list(args) + [kwargs[a.name] for a in schema_args[len(args):] if a.name in kwargs]
        written = set()
        for a, value in zip(schema_args, flat_args):
            tensors = [v for v in tree_flatten(value)[0] if isinstance(v, torch.Tensor)]
            is_write = a.alias_info is not None and a.alias_info.is_write
            for t in tensors:
                if t.numel() == 0:
                    continue
                if is_write:
                    written.add(_key(t))
                    self._check_write(lane, t, what)
                else:
                    self._check_read(lane, t, what)
        out = func(*args, **kwargs)
        input_keys = {_key(v) for v in tree_flatten((args, kwargs))[0] if isinstance(v, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._born[id(t)] = (weakref.ref(t), lane)
            if isinstance(t, torch.Tensor) and t.numel() > 0:
                k = _key(t)
                if k not in input_keys:  # fresh memory (views and in-place results alias an input)
                    self._memory[k] = _Memory(lane, lane.clock[lane], made_on=lane)
        return out
