"""Shared test utilities: gradient comparison across backward modes, saved-activation bytes."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def max_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: relative to the tensor's scale (elementwise ratios blow up near 0)."""
    scale = b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)
    return ((a - b).abs().max() / scale).item()


def grads_of(model: nn.Module, inputs: tuple, loss_fn, seed: int = 0) -> dict[str, torch.Tensor]:
    """Run forward/backward from a fixed RNG seed; return the grads of every parameter and input."""
    model.zero_grad(set_to_none=True)
    inputs = tuple(x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs)
    torch.manual_seed(seed)
    loss_fn(model(*inputs)).backward()
    out = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    for i, x in enumerate(inputs):
        if x.grad is not None:
            out[f"input{i}"] = x.grad.detach().clone()
    return out


def assert_same_grads(got: dict, ref: dict, rtol: float, what: str = "", zero_by_symmetry: tuple[str, ...] = ()) -> None:
    """Each grad within ``rtol`` of the reference, relative to its own scale. Grads named with a
    suffix in ``zero_by_symmetry`` are zero in exact arithmetic (e.g. a key bias under softmax), so
    they are checked to be rounding noise, against the largest grad of all."""
    assert got.keys() == ref.keys(), f"{what}: grads for {sorted(set(got) ^ set(ref))} differ in presence"
    scale = max(g.abs().max().item() for g in ref.values())
    zero = {k for k in ref if k.endswith(zero_by_symmetry)}
    for k in zero:
        assert ref[k].abs().max().item() <= 1e-12 * scale, f"{k} was expected to have a zero gradient"
        assert (got[k] - ref[k]).abs().max().item() <= rtol * scale, f"{what}: {k} is not rounding noise"
    worst = max(((max_rel_error(got[k], ref[k]), k) for k in ref if k not in zero), default=(0.0, None))
    assert worst[0] <= rtol, f"{what}: relative error {worst[0]:.3g} > {rtol:g} for {worst[1]}"


def compare_modes(model, set_mode, inputs, loss_fn, modes=("reprop", "pareprop"), rtol=1e-10, seed=0):
    """Assert that each of ``modes`` gives the grads of plain autograd (``backprop``)."""
    set_mode("backprop")
    ref = grads_of(model, inputs, loss_fn, seed)
    assert ref, "no gradients were produced"
    for mode in modes:
        set_mode(mode)
        assert_same_grads(grads_of(model, inputs, loss_fn, seed), ref, rtol, mode)
    return ref


def assert_train_forward_is_stochastic(model: nn.Module, *inputs) -> None:
    """Dropout / drop path draw fresh masks per RNG seed and the same masks for the same seed: the
    gradient tests mean something only if the stochastic layers are live."""
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(*inputs)
        torch.manual_seed(2)
        b = model(*inputs)
        torch.manual_seed(1)
        c = model(*inputs)
    assert not torch.equal(a, b), "different seeds gave the same train-mode output"
    assert torch.equal(a, c), "the same seed gave different train-mode outputs"


def assert_modes_agree_in_forward(model: nn.Module, *inputs) -> None:
    """Every backward mode gives the same outputs: in train mode (same RNG seed: dropout and drop
    path draw the same masks) and in eval mode under no_grad."""
    from revtransfer.reversible import BACKPROP_MODES

    outs = {}
    for mode in BACKPROP_MODES:
        model.set_backprop(mode)
        assert model.backprop == mode
        model.train()
        torch.manual_seed(3)
        train_out = model(*inputs).detach()
        model.eval()
        with torch.no_grad():
            outs[mode] = (train_out, model(*inputs))
    for mode in BACKPROP_MODES:
        assert torch.equal(outs[mode][0], outs["backprop"][0]), f"{mode}: train-mode forward differs"
        assert torch.equal(outs[mode][1], outs["backprop"][1]), f"{mode}: eval forward differs"


@contextlib.contextmanager
def count_saved_bytes(params=()):
    """Count bytes of tensors autograd saves for backward: each storage once, parameters excluded.

    Yields a one-element list that holds the total once the block exits."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}
    total = [0]

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total
    total[0] = sum(seen.values())


def saved_bytes_of_step(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes saved for backward by one forward pass (the activation memory a training step holds)."""
    with count_saved_bytes(list(model.parameters())) as total:
        out = model(x.requires_grad_(False))
    out.float().sum().backward()
    return total[0]


def assert_saved_bytes_flat_in_stage_depth(build, x: torch.Tensor, stage: int, n_stages: int = 2) -> None:
    """Deepening one stage (2 -> 6 blocks) leaves reprop/pareprop's saved bytes flat (<= 1.1x) and
    below backprop's, while backprop's grow. ``build(depths, mode)`` returns the model in train mode."""
    def saved(depth, mode):
        depths = tuple(depth if s == stage else 2 for s in range(n_stages))
        return saved_bytes_of_step(build(depths, mode), x)

    modes = ("backprop", "reprop", "pareprop")
    b = {(d, mode): saved(d, mode) for d in (2, 6) for mode in modes}
    for mode in ("reprop", "pareprop"):
        assert b[6, mode] <= 1.1 * b[2, mode], (mode, b)
        assert b[2, mode] < b[2, "backprop"], (mode, b)
    assert b[6, "backprop"] > 1.5 * b[2, "backprop"], b
