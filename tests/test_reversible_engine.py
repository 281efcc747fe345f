"""The reversible engine on generic couplings: exact gradients, RNG, autocast, memory."""
from __future__ import annotations

import pytest
import torch
from helpers import assert_same_grads, compare_modes, count_saved_bytes
from torch import nn

from revtransfer.reversible import (
    BACKPROP_MODES,
    ReversibleCoupling,
    ReversibleSequence,
    ReversibleStack,
    RNGState,
    set_backprop_mode,
)
from revtransfer.reversible.stack import _ReversibleStackFunction

REV_MODES = ("reprop", "pareprop")


class Sublayer(nn.Module):
    """LayerNorm -> MLP -> dropout: stochastic and non-linear, like a transformer sublayer."""

    def __init__(self, dim, p=0.0):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim), nn.Dropout(p))

    def forward(self, x):
        return self.net(x)


def make_stack(depth, dim=8, p=0.0, mode="backprop", dtype=torch.float64):
    torch.manual_seed(1234)
    blocks = [ReversibleCoupling(Sublayer(dim, p), Sublayer(dim, p)) for _ in range(depth)]
    return ReversibleStack(blocks, mode=mode).to(dtype)


class TwoStreamModel(nn.Module):
    """x -> (x, x) -> stack -> concat: how models use a stack."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        y1, y2 = self.body(x, x)
        return torch.cat([y1, y2], -1)


def loss_fn(out):
    return (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).square().sum()


def compare(model, x, rtol, modes=REV_MODES):
    return compare_modes(model, lambda m: set_backprop_mode(model, m), (x,), loss_fn, modes=modes, rtol=rtol)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 8])
def test_float64_grads_equal_backprop_any_depth(depth):
    model = TwoStreamModel(make_stack(depth)).train()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    ref = compare(model, x, rtol=1e-10)
    assert "input0" in ref and len(ref) == 1 + 2 * depth * 6  # input + every parameter of every block


@pytest.mark.parametrize("keep_last", [False, True])
@pytest.mark.parametrize("depth", [1, 3, 6])
def test_float64_grads_equal_with_dropout_in_train_mode(depth, keep_last):
    model = TwoStreamModel(make_stack(depth, p=0.3)).train()
    model.body.keep_last = keep_last
    x = torch.randn(4, 6, 8, dtype=torch.float64)
    compare(model, x, rtol=1e-10)


class ScaledSublayer(Sublayer):
    """A sublayer that reads a side input of the stack (a per-position scale, as a mask would be)."""

    def forward(self, x, scale):
        return super().forward(x) * scale


class TwoSideInputForwards(nn.Module):
    """Two forwards of one stack with different side inputs, then one backward."""

    def __init__(self, depth):
        super().__init__()
        torch.manual_seed(0)
        self.body = ReversibleStack([ReversibleCoupling(ScaledSublayer(8, 0.2), ScaledSublayer(8, 0.2))
                                     for _ in range(depth)]).double()

    def forward(self, x, scale_a, scale_b):
        a = torch.cat(self.body(x, x, scale_a.detach()), -1)  # constants, as masks are
        b = torch.cat(self.body(x, x, scale_b.detach()), -1)
        return torch.cat([a, 2 * b], -1)


@pytest.mark.parametrize("depth", [1, 3])
def test_side_inputs_are_saved_with_each_forward(depth):
    model = TwoSideInputForwards(depth).train()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    scales = (torch.rand(2, 5, 1, dtype=torch.float64), torch.rand(2, 5, 1, dtype=torch.float64))
    ref = compare_modes(model, lambda m: set_backprop_mode(model, m), (x, *scales), loss_fn, rtol=1e-10)
    assert set(ref) == {"input0"} | {n for n, _ in model.named_parameters()}  # side inputs get no grad


def test_side_input_that_needs_a_gradient_is_refused():
    stack = TwoSideInputForwards(1).body.train()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="side input 0 .* requires grad"):
        stack(x, x, torch.rand(2, 5, 1, dtype=torch.float64, requires_grad=True))


def test_dropout_masks_differ_between_blocks_and_calls():
    # Guard against a test that passes only because dropout draws nothing random.
    model = TwoStreamModel(make_stack(3, p=0.5)).train()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    torch.manual_seed(0)
    a = model(x)
    b = model(x)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("depth", [1, 4, 7])
def test_float32_grads_within_1e_4(depth):
    model = TwoStreamModel(make_stack(depth, p=0.1, dtype=torch.float32)).train()
    x = torch.randn(4, 6, 8)
    compare(model, x, rtol=1e-4)


@pytest.mark.parametrize("mode", REV_MODES)
def test_global_rng_stream_is_the_same_as_with_backprop(mode):
    """Recomputation restores each block's RNG state without reseeding the caller's generator."""
    model = TwoStreamModel(make_stack(3, p=0.5)).train()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    after = {}
    for m in ("backprop", mode):
        set_backprop_mode(model, m)
        torch.manual_seed(7)
        loss_fn(model(x)).backward()
        after[m] = torch.rand(4)
    assert torch.equal(after["backprop"], after[mode])


class AutocastProbe(nn.Module):
    """Records the autocast state in which it runs."""

    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.seen = []

    def forward(self, x):
        self.seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return self.lin(x)


@pytest.mark.parametrize("keep_last", [False, True])
@pytest.mark.parametrize("mode", REV_MODES)
def test_recomputation_runs_under_forward_autocast_state(mode, keep_last):
    torch.manual_seed(0)
    probes = [AutocastProbe(8) for _ in range(4)]
    blocks = [ReversibleCoupling(probes[0], probes[1]), ReversibleCoupling(probes[2], probes[3])]
    model = TwoStreamModel(ReversibleStack(blocks, mode=mode, keep_last=keep_last)).train()
    x = torch.randn(2, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.float32  # residual streams stay in float32, F/G run in bf16
    for p in probes:
        p.seen.clear()
    out.sum().backward()  # autograd runs backward with autocast off; recompute must turn it on
    assert probes[0].seen == probes[1].seen == [(True, True, torch.bfloat16)]
    assert probes[2].seen == probes[3].seen == ([] if keep_last else [(True, True, torch.bfloat16)])


@pytest.mark.parametrize("mode", REV_MODES)
def test_keep_last_recomputes_every_block_but_the_last(mode):
    """With keep_last, backward recomputes every block but the last, whose forward kept its graphs;
    a second backward of the same graph (retain_graph) recomputes that one too."""
    calls = []

    class Counting(Sublayer):
        def forward(self, x):
            calls.append(self)
            return super().forward(x)

    torch.manual_seed(0)
    blocks = [ReversibleCoupling(Counting(8), Counting(8)) for _ in range(3)]
    model = TwoStreamModel(ReversibleStack(blocks, mode=mode, keep_last=True).double()).train()
    out = model(torch.randn(2, 3, 8, dtype=torch.float64))
    assert len(calls) == 6
    loss_fn(out).backward(retain_graph=True)
    assert len(calls) == 6 + 4  # blocks 0 and 1, F and G
    loss_fn(out).backward()
    assert len(calls) == 10 + 6


def test_autocast_bf16_grads_close_to_backprop():
    model = TwoStreamModel(make_stack(4, dtype=torch.float32)).train()
    x = torch.randn(4, 6, 8)

    def run(mode):
        set_backprop_mode(model, mode)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss_fn(out.float()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ref = run("backprop")
    for mode in REV_MODES:
        # bf16 rounding of the reconstructed inputs may differ in the last bit: bf16-level tolerance.
        assert_same_grads(run(mode), ref, rtol=3e-2, what=mode)


@pytest.mark.parametrize("mode", REV_MODES)
def test_no_grad_and_eval_run_no_reversible_machinery(mode, monkeypatch):
    captures = []
    real_capture = RNGState.capture
    monkeypatch.setattr(RNGState, "capture", classmethod(lambda cls, d: captures.append(1) or real_capture(d)))
    model = TwoStreamModel(make_stack(3, mode=mode)).train()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        out = model(x)
    assert out.grad_fn is None and not captures
    model.eval()
    out = model(x)  # eval with grad: plain autograd graph, no custom Function
    assert type(out.grad_fn).__name__ == "CatBackward0"
    assert _ReversibleStackFunction.__name__ not in _graph_node_names(out.grad_fn)
    assert not captures
    model.train()
    out = model(x)
    assert "_ReversibleStackFunctionBackward" in _graph_node_names(out.grad_fn) and captures


def _graph_node_names(fn, seen=None):
    seen = set() if seen is None else seen
    if fn is not None and fn not in seen:
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            _graph_node_names(nxt, seen)
    return {type(f).__name__ for f in seen}


@pytest.mark.parametrize("mode", REV_MODES)
def test_gradient_accumulation_over_several_backward_calls(mode):
    model = TwoStreamModel(make_stack(3, p=0.2)).train()
    xs = [torch.randn(2, 4, 8, dtype=torch.float64) for _ in range(3)]

    def accumulate(m):
        set_backprop_mode(model, m)
        model.zero_grad()
        torch.manual_seed(3)
        for x in xs:
            loss_fn(model(x)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    assert_same_grads(accumulate(mode), accumulate("backprop"), rtol=1e-10, what=mode)


@pytest.mark.parametrize("mode", REV_MODES)
def test_autograd_grad_and_frozen_parameters(mode):
    """torch.autograd.grad returns parameter grads without touching .grad; frozen params get none."""
    model = TwoStreamModel(make_stack(3)).train()
    frozen = list(model.body.blocks[1].parameters())
    for p in frozen:
        p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    result = {}
    for m in ("backprop", mode):
        set_backprop_mode(model, m)
        result[m] = torch.autograd.grad(loss_fn(model(x)), [x, *trainable])
    assert all(p.grad is None for p in model.parameters())
    for a, b in zip(result[mode], result["backprop"]):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-10


@pytest.mark.parametrize("mode", REV_MODES)
def test_retain_graph_allows_a_second_backward(mode):
    model = TwoStreamModel(make_stack(2)).train()
    set_backprop_mode(model, mode)
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    loss = loss_fn(model(x))
    loss.backward(retain_graph=True)
    once = [p.grad.clone() for p in model.parameters()]
    loss.backward()
    assert all(torch.allclose(p.grad, 2 * g) for p, g in zip(model.parameters(), once))


class StageTransition(nn.Module):
    """A non-reversible transition between stacks: fuse the streams, change them, restart I1 = I2."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, dim))

    def forward(self, x1, x2):
        x = self.proj(torch.cat([x1, x2], -1))
        return x, x


@pytest.mark.parametrize("depths", [(1, 2), (3, 1, 2)])
def test_sequence_of_stacks_with_cached_transitions(depths):
    torch.manual_seed(0)
    stages = []
    for i, d in enumerate(depths):
        if i:
            stages.append(StageTransition(8))
        stages.append(ReversibleStack([ReversibleCoupling(Sublayer(8, 0.2), Sublayer(8, 0.2)) for _ in range(d)]))
    model = TwoStreamModel(ReversibleSequence(stages).double()).train()
    compare(model, torch.randn(3, 4, 8, dtype=torch.float64), rtol=1e-10)


def test_unknown_mode_error_lists_the_modes():
    with pytest.raises(ValueError, match="'fastprop'.*backprop, reprop, pareprop"):
        make_stack(1, mode="fastprop")
    stack = make_stack(1)
    with pytest.raises(ValueError, match="backprop, reprop, pareprop"):
        stack.set_mode("Reprop")
    assert BACKPROP_MODES == ("backprop", "reprop", "pareprop")


def test_inverse_reconstructs_inputs():
    stack = make_stack(6).eval()
    x1, x2 = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    y1, y2 = stack(x1, x2)
    r1, r2 = stack.inverse(y1, y2)
    assert torch.allclose(r1, x1, atol=1e-12) and torch.allclose(r2, x2, atol=1e-12)


def _saved_bytes(depth, mode):
    model = TwoStreamModel(make_stack(depth, dim=16, mode=mode, dtype=torch.float32)).train()
    x = torch.randn(4, 16, 16)
    with count_saved_bytes(list(model.parameters())) as total:
        out = model(x)
    loss_fn(out).backward()
    return total[0]


@pytest.mark.parametrize("mode", REV_MODES)
def test_saved_bytes_do_not_grow_with_depth(mode):
    assert _saved_bytes(32, mode) <= 1.1 * _saved_bytes(4, mode)


def test_backprop_saved_bytes_grow_linearly_with_depth():
    b4, b8, b16, b32 = (_saved_bytes(d, "backprop") for d in (4, 8, 16, 32))
    per_block = (b8 - b4) / 4
    assert per_block > 0
    assert b16 == pytest.approx(b8 + 8 * per_block, rel=0.01)
    assert b32 == pytest.approx(b8 + 24 * per_block, rel=0.01)
    assert b32 > 6 * _saved_bytes(32, "reprop")


@pytest.mark.parametrize("mode", REV_MODES)
def test_backward_with_inputs_only_fills_those_inputs(mode):
    model = TwoStreamModel(make_stack(3)).train()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    grads = {}
    for m in ("backprop", mode):
        set_backprop_mode(model, m)
        x.grad = None
        loss_fn(model(x)).backward(inputs=[x])
        grads[m] = x.grad.clone()
    assert all(p.grad is None for p in model.parameters())
    assert ((grads[mode] - grads["backprop"]).abs().max() / grads["backprop"].abs().max()).item() <= 1e-10
