"""Where the reversible engine cannot go it refuses with one line naming what is supported: FSDP (v1
and fully_shard, real wrappers on a one-process gloo group), CUDA graph capture, and
torch.compile(fullgraph=True); torch.compile with graph breaks stays exact."""
from __future__ import annotations

import contextlib
import re
import warnings

import pytest
import torch
import torch.distributed as dist
from helpers import assert_same_grads, grads_of

import revtransfer
from revtransfer.errors import is_expected, one_line
from revtransfer.reversible import ReversibleUnsupportedError
from revtransfer.reversible.refusals import FULLGRAPH_REFUSAL, SUPPORTED

TINY = dict(img_size=20, patch_size=5, embed_dim=16, num_heads=2, num_classes=3)


def tiny(mode="reprop", depth=2, **kw):
    torch.manual_seed(0)
    model = revtransfer.create_model("revvit_micro", **dict(TINY, depth=depth, **kw)).train()
    model.set_backprop(mode)
    return model


def image(dtype=torch.float32):
    return torch.randn(2, 3, 20, 20, dtype=dtype, generator=torch.Generator().manual_seed(1))


def loss_fn(out):
    return (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).square().sum()


def assert_one_clear_line(err: BaseException, what: str) -> None:
    assert isinstance(err, ReversibleUnsupportedError) and is_expected(err)
    assert "\n" not in str(err) and one_line(err) == str(err)
    assert what in str(err) and SUPPORTED in str(err)


# --- FSDP -------------------------------------------------------------------------------------------
@pytest.fixture
def one_process_group():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FSDP's warnings about CPU and world size 1
            yield
    finally:
        dist.destroy_process_group()


def _fsdp_v1(model, use_orig_params):
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(model, device_id=torch.device("cpu"), use_orig_params=use_orig_params)


def _fully_shard(model, per_block):
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    if per_block:
        for block in model.blocks.blocks:
            fully_shard(block)
    return fully_shard(model)


@pytest.mark.parametrize("wrap", ["fsdp_v1", "fsdp_v1_orig_params", "fully_shard", "fully_shard_per_block"])
@pytest.mark.parametrize("mode", ["reprop", "pareprop"])
def test_fsdp_is_refused_with_one_line(wrap, mode, one_process_group):
    model = tiny(mode)
    try:
        wrapped = {"fsdp_v1": lambda: _fsdp_v1(model, False),
                   "fsdp_v1_orig_params": lambda: _fsdp_v1(model, True),
                   "fully_shard": lambda: _fully_shard(model, False),
                   "fully_shard_per_block": lambda: _fully_shard(model, True)}[wrap]()
        with torch.no_grad():  # no reversible path: does this torch run the wrapper on CPU at all?
            wrapped(image())
    except (ImportError, RuntimeError, ValueError, AssertionError) as e:
        pytest.skip(f"{wrap} cannot run on CPU with this torch: {e}")
    with pytest.raises(ReversibleUnsupportedError) as info:
        loss_fn(wrapped(image())).backward()
    assert_one_clear_line(info.value, "cannot run under FSDP")


def test_backprop_mode_under_fsdp_is_not_refused_and_exact(one_process_group):
    """Plain autograd is what FSDP supports: only the reversible modes are refused, and the
    termination's norm (whose parameters FSDP swaps for views) keeps its gradients."""
    ref = grads_of(tiny("backprop").double(), (image(torch.float64),), loss_fn)
    wrapped = _fsdp_v1(tiny("backprop").double(), use_orig_params=True)  # grads land on the named parameters
    got = grads_of(wrapped, (image(torch.float64),), loss_fn)
    assert_same_grads({k.replace("_fsdp_wrapped_module.", ""): v for k, v in got.items()}, ref, 1e-10,
                      "FSDP backprop")


def test_fsdp_detection_on_marked_modules_and_sharded_parameters():
    from revtransfer.reversible.refusals import fsdp_managed

    model = tiny()
    params = list(model.blocks.parameters())
    assert not fsdp_managed(model.blocks.blocks, params)
    model.blocks.blocks[1].g.mlp._is_fsdp_managed_module = True  # how FSDP v1 and fully_shard mark them
    assert fsdp_managed(model.blocks.blocks, params)
    del model.blocks.blocks[1].g.mlp._is_fsdp_managed_module
    params[0]._fsdp_flattened = True  # FSDP v1's mark on the parameters it flattens
    assert fsdp_managed(model.blocks.blocks, params)


# --- CUDA graphs --------------------------------------------------------------------------------------
@contextlib.contextmanager
def capturing(monkeypatch):
    """What ``torch.cuda.is_current_stream_capturing`` says inside ``torch.cuda.graph(...)``."""
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "is_initialized", lambda: True)
        m.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        yield


@pytest.mark.parametrize("mode", ["reprop", "pareprop"])
def test_cuda_graph_capture_of_the_forward_is_refused(mode, monkeypatch):
    model = tiny(mode)
    with capturing(monkeypatch), pytest.raises(ReversibleUnsupportedError) as info:
        model(image())
    assert_one_clear_line(info.value, "cannot be captured in a CUDA graph")


def test_cuda_graph_capture_of_the_backward_is_refused(monkeypatch):
    model = tiny("reprop")
    loss = loss_fn(model(image()))
    with capturing(monkeypatch), pytest.raises(ReversibleUnsupportedError) as info:
        loss.backward()
    assert_one_clear_line(info.value, "cannot be captured in a CUDA graph")


def test_backprop_mode_and_no_grad_are_not_refused_while_capturing(monkeypatch):
    with capturing(monkeypatch):
        loss_fn(tiny("backprop")(image())).backward()
        with torch.no_grad():
            tiny("reprop")(image())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_graph_capture_is_refused():
    model = tiny("pareprop").cuda()
    x = image().cuda()
    loss_fn(model(x)).backward()  # warm up outside the capture, as CUDA graphs require
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), pytest.raises(ReversibleUnsupportedError) as info:
        with torch.cuda.graph(graph):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    assert_one_clear_line(info.value, "cannot be captured in a CUDA graph")


# --- torch.compile ------------------------------------------------------------------------------------
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["reprop", "pareprop"])
def test_compile_fullgraph_is_refused_naming_what_is_supported(mode, fresh_dynamo):
    """Dynamo raises its own error (Unsupported) at the stack's graph break; its explanation carries
    our line (torch >= 2.7 passes a reason through ``torch.compiler.disable``)."""
    compiled = torch.compile(tiny(mode), backend="eager", fullgraph=True)
    with pytest.raises(Exception) as info:
        compiled(image())
    # torch 2.4 words it "torch._dynamo.disable() wrapped function", later ones "torch.compiler.disable"
    assert re.search(r"torch\.(compiler|_dynamo)\.disable", str(info.value))
    if "reason" in torch.compiler.disable.__code__.co_varnames:
        assert FULLGRAPH_REFUSAL in str(info.value)


@pytest.mark.parametrize("mode, keep_last", [("reprop", False), ("pareprop", True)])
def test_compile_with_graph_breaks_gives_exact_grads(mode, keep_last, fresh_dynamo):
    """fullgraph=False: the stack is a graph break and runs eagerly between the compiled parts
    (aot_eager: AOTAutograd builds the compiled parts' backward)."""
    model = tiny("backprop", drop_path_rate=0.0).double()
    x = image(torch.float64)
    ref = grads_of(model, (x,), loss_fn)
    model.set_backprop(mode, keep_last)
    compiled = torch.compile(model, backend="aot_eager")
    got = grads_of(compiled, (x,), loss_fn)
    assert_same_grads({k.replace("_orig_mod.", ""): v for k, v in got.items()}, ref, 1e-10, mode)


def test_compile_fullgraph_of_backprop_mode_is_not_refused(fresh_dynamo):
    model = tiny("backprop")
    loss_fn(torch.compile(model, backend="eager", fullgraph=True)(image())).backward()
    assert all(p.grad is not None for p in model.parameters())
