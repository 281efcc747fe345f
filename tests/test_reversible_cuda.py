"""The engine on CUDA: pareprop's two-stream schedule gives backprop's gradients; memory flat in depth.

These run only where a CUDA device exists (the GPU machine); the same schedule code runs on CPU in
the other test files.
"""
from __future__ import annotations

import pytest
import torch
from helpers import assert_same_grads, assert_train_forward_is_stochastic, compare_modes

import revtransfer
from revtransfer.bench.gpu_plan import cuda_activation_bytes

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = dict(img_size=32, patch_size=4, embed_dim=64, num_heads=4, num_classes=5)


def model(depth, **kw):
    torch.manual_seed(0)
    return revtransfer.create_model("revvit_micro", **dict(TINY, depth=depth, **kw)).cuda().train()


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_cuda_float64_grads_equal_backprop_with_dropout(depth):
    m = model(depth, proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, device="cuda")
    y = torch.arange(4, device="cuda") % 5
    compare_modes(m, m.set_backprop, (x,), lambda out: torch.nn.functional.cross_entropy(out, y), rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_grads_close(dtype):
    m = model(4)
    x = torch.randn(8, 3, 32, 32, device="cuda")

    def run(mode):
        m.set_backprop(mode)
        m.zero_grad()
        with torch.autocast("cuda", dtype=dtype):
            out = m(x)
        out.float().square().mean().backward()
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    ref = run("backprop")
    for mode in ("reprop", "pareprop"):
        got = run(mode)
        assert ((got - ref).abs().max() / ref.abs().max()).item() < 5e-2


def test_cuda_bf16_autocast_grads_with_dropout_close():
    """Under bf16 autocast attention runs fused, with its own dropout (Philox, seeded from the CUDA
    generator): recomputation must redraw the forward's masks there too, and the drop path ones."""
    from revtransfer.bench.gpu_plan import BF16_RTOL

    m = model(4, proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2)
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.arange(8, device="cuda") % 5
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert_train_forward_is_stochastic(m, x)

    def run(mode):
        m.set_backprop(mode)
        m.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # reseed before each run: every mode draws the same masks in forward
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    ref = run("backprop")
    for mode in ("reprop", "pareprop"):
        assert_same_grads(run(mode), ref, BF16_RTOL, f"{mode}, bf16 autocast with dropout")


@pytest.mark.parametrize("mode", ["reprop", "pareprop"])
def test_cuda_peak_activation_memory_flat_in_depth(mode):
    assert cuda_activation_bytes(24, mode) <= 1.2 * cuda_activation_bytes(4, mode)
    assert cuda_activation_bytes(24, "backprop") > 3 * cuda_activation_bytes(24, mode)
