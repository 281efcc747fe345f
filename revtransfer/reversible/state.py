"""What a block's recomputation must reproduce: the RNG state and the autocast state of its forward.

Recomputation in backward must draw the same dropout / drop-path masks and run at the same
precision as the forward did, without disturbing the caller's global RNG stream.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda")


def _cuda_devices(tensors) -> list[int]:
    return sorted({t.device.index for t in tensors if isinstance(t, torch.Tensor) and t.is_cuda})


class RNGState:
    """A snapshot of the CPU generator and the generators of the CUDA devices in use."""

    __slots__ = ("cpu", "cuda")

    def __init__(self, cpu: torch.Tensor, cuda: dict[int, torch.Tensor]):
        self.cpu = cpu
        self.cuda = cuda

    @classmethod
    def capture(cls, cuda_devices: list[int]) -> "RNGState":
        return cls(torch.get_rng_state(), {d: torch.cuda.get_rng_state(d) for d in cuda_devices})

    @contextlib.contextmanager
    def restored(self):
        """Run the body with this snapshot's RNG state, then give the caller its own state back."""
        outer = RNGState.capture(list(self.cuda))
        torch.set_rng_state(self.cpu)
        for d, s in self.cuda.items():
            torch.cuda.set_rng_state(s, d)
        try:
            yield
        finally:
            torch.set_rng_state(outer.cpu)
            for d, s in outer.cuda.items():
                torch.cuda.set_rng_state(s, d)


def autocast_query(device_type: str) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of autocast for ``device_type`` in this thread, on every torch we support."""
    try:  # torch >= 2.4: device-generic API
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except TypeError:  # older torch
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


@dataclass(frozen=True)
class AutocastState:
    """The autocast settings active when a stack ran forward (autograd runs backward without them)."""

    settings: tuple[tuple[str, bool, torch.dtype], ...]
    cache_enabled: bool

    @classmethod
    def capture(cls) -> "AutocastState":
        settings = tuple((dev, *autocast_query(dev)) for dev in _AUTOCAST_DEVICES
                         if dev == "cpu" or torch.cuda.is_available())
        return cls(settings, torch.is_autocast_cache_enabled())

    @contextlib.contextmanager
    def restored(self):
        with contextlib.ExitStack() as stack:
            for dev, enabled, dtype in self.settings:
                stack.enter_context(torch.autocast(device_type=dev, dtype=dtype, enabled=enabled,
                                                   cache_enabled=self.cache_enabled))
            yield


__all__ = ["RNGState", "AutocastState", "_cuda_devices"]
