"""The termination (merge the streams + norm) keeps no copy of what the reversible stack saves:
exact gradients in every mode, the activation bytes at the floor (streams + image), flat in depth,
and the measurement command."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
from click.testing import CliRunner
from helpers import assert_same_grads, grads_of
from torch import nn

import revtransfer
from revtransfer.bench import saved_bytes
from revtransfer.bench.saved_bytes import activation_bytes, main
from revtransfer.models import _revparts, revvit
from revtransfer.models._revparts import merge_streams, merge_then
from revtransfer.models.revmvit import RevMViT
from revtransfer.models.revswin import RevSwin

DROPS = dict(proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2)
TINY = dict(img_size=20, patch_size=5, embed_dim=16, num_heads=2)
RUNS = [("backprop", False), ("reprop", False), ("pareprop", False), ("reprop", True), ("pareprop", True)]


def plain_merge_then(fn, x1, x2, kind):
    return fn(merge_streams(x1, x2, kind))


@contextlib.contextmanager
def plain_termination(monkeypatch):
    """The models as they were: the norm / projection saves the merged tensor (the reference)."""
    with monkeypatch.context() as m:
        m.setattr(_revparts, "merge_then", plain_merge_then)
        m.setattr(revvit, "merge_then", plain_merge_then)
        yield


def loss_fn(out):
    return (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).square().sum()


def saved_ptrs(fn):
    """Storages (data pointers) autograd saves while ``fn()`` runs, and its result."""
    ptrs = set()

    def pack(t):
        ptrs.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return ptrs, out


# --- merge_then on its own ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["concat", "avg"])
@pytest.mark.parametrize("module", ["layernorm", "linear"])
@pytest.mark.parametrize("needs", ["all", "streams_only", "params_only", "same_tensor"])
def test_merge_then_float64_grads_equal_plain_autograd(kind, module, needs):
    torch.manual_seed(0)
    width = 8 if kind == "concat" else 4
    fn = (nn.LayerNorm(width) if module == "layernorm" else nn.Linear(width, 3)).double()
    with torch.no_grad():
        for p in fn.parameters():
            p.add_(torch.randn_like(p))
    for p in fn.parameters():
        p.requires_grad_(needs != "streams_only")
    x1, x2 = (torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=needs != "params_only") for _ in range(2))
    x2 = x1 if needs == "same_tensor" else x2
    weights = torch.randn(2, 5, fn(merge_streams(x1, x2, kind)).shape[-1], dtype=torch.float64)
    streams = [x1] if x2 is x1 else [x1, x2]
    inputs = [t for t in [*streams, *fn.parameters()] if t.requires_grad]

    def grads(f):
        y = f(fn, x1, x2, kind)
        return y, torch.autograd.grad((y * weights).sum(), inputs)

    y, got = grads(merge_then)
    y_ref, ref = grads(plain_merge_then)
    assert torch.equal(y, y_ref)
    assert_same_grads({str(i): g for i, g in enumerate(got)}, {str(i): g for i, g in enumerate(ref)}, 1e-10,
                      f"{kind} {module} {needs}")


@pytest.mark.parametrize("module", ["layernorm", "linear"])
def test_merge_then_under_autocast_equals_plain_autograd(module):
    torch.manual_seed(0)
    fn = nn.LayerNorm(8) if module == "layernorm" else nn.Linear(8, 3)
    x1, x2 = (torch.randn(2, 5, 4, requires_grad=True) for _ in range(2))
    results = []
    for f in (merge_then, plain_merge_then):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = f(fn, x1, x2, "concat")
        results.append((y, torch.autograd.grad(y.float().square().sum(), [x1, x2, *fn.parameters()])))
    (y, got), (y_ref, ref) = results
    assert y.dtype == y_ref.dtype and torch.equal(y, y_ref)
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype and torch.equal(g, r)


def test_merge_then_saves_only_the_two_streams():
    norm = nn.LayerNorm(8)
    x1, x2 = (torch.randn(2, 5, 4, requires_grad=True) for _ in range(2))
    ptrs, y = saved_ptrs(lambda: merge_then(norm, x1, x2, "concat"))
    assert ptrs == {x1.untyped_storage().data_ptr(), x2.untyped_storage().data_ptr()}
    ptrs, _ = saved_ptrs(lambda: plain_merge_then(norm, x1, x2, "concat"))
    assert len(ptrs) >= 3  # the plain form saves the concatenation (and the norm's statistics)
    y.sum().backward()  # and the backward after retain-less use works
    assert x1.grad is not None and norm.weight.grad is not None


# --- the models: exact gradients in every mode ------------------------------------------------------
def assert_every_mode_equals_plain_backprop(model, x, monkeypatch, zero_by_symmetry=()):
    with plain_termination(monkeypatch):
        model.set_backprop("backprop", False)
        ref = grads_of(model, (x,), loss_fn)
    assert ref
    for mode, keep_last in RUNS:
        model.set_backprop(mode, keep_last)
        assert_same_grads(grads_of(model, (x,), loss_fn), ref, 1e-10, f"{mode} keep_last={keep_last}",
                          zero_by_symmetry)


@pytest.mark.parametrize("fusion", ["concat", "avg"])
@pytest.mark.parametrize("depth", [1, 3])
def test_revvit_grads_equal_plain_backprop_in_every_mode(fusion, depth, monkeypatch):
    torch.manual_seed(0)
    model = revtransfer.create_model("revvit_micro", **TINY, num_classes=3, depth=depth, fusion=fusion,
                                     **DROPS).double().train()
    assert_every_mode_equals_plain_backprop(model, torch.randn(2, 3, 20, 20, dtype=torch.float64), monkeypatch)


@pytest.mark.parametrize("fusion, transition_fusion", [("concat", "concat"), ("avg", "avg")])
def test_revswin_grads_equal_plain_backprop_in_every_mode(fusion, transition_fusion, monkeypatch):
    torch.manual_seed(0)
    model = RevSwin(img_size=32, patch_size=4, embed_dim=16, depths=(1, 2), num_heads=(2, 4), window_size=2,
                    num_classes=5, fusion=fusion, transition_fusion=transition_fusion, drop_rate=0.1,
                    **DROPS).double().train()
    assert_every_mode_equals_plain_backprop(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), monkeypatch)


@pytest.mark.parametrize("fusion, transition_fusion", [("concat", "avg"), ("avg", "concat")])
def test_revmvit_grads_equal_plain_backprop_in_every_mode(fusion, transition_fusion, monkeypatch):
    torch.manual_seed(0)
    model = RevMViT(img_size=32, embed_dim=16, depths=(2, 2), num_heads=1, num_classes=5, fusion=fusion,
                    transition_fusion=transition_fusion, drop_path_rate=0.2).double().train()
    # a LayerNorm bias on the keys has an exact gradient of 0 (tests/test_revmvit.py: ZERO_BY_SYMMETRY)
    assert_every_mode_equals_plain_backprop(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), monkeypatch,
                                            ("attn.norm_k.bias",))


# --- the bytes -------------------------------------------------------------------------------------
def _nbytes(*shape, itemsize=4):
    n = itemsize
    for s in shape:
        n *= s
    return n


@pytest.mark.parametrize("mode", ["reprop", "pareprop"])
def test_revvit_micro_keeps_only_streams_and_image(mode):
    """revvit_micro's shape (80x80, patch 5, dim 256, depth 4) at batch 1: every term scales with
    the batch, so <= floor * 1.02 here is the <= 19.5 MB of batch 32 (floor 19.3 MB)."""
    batch = 1
    torch.manual_seed(0)
    model = revtransfer.create_model("revvit_micro").train()
    model.set_backprop(mode)
    x = torch.randn(batch, 3, 80, 80)
    got = activation_bytes(model, x)
    floor = 2 * _nbytes(batch, 256, 256) + x.numel() * 4  # the stack's two output streams + the image
    assert floor <= got.total <= 1.02 * floor, (got, floor)
    assert got.total * 32 / batch <= 19.5e6
    assert got.held == 0


def test_termination_adds_no_copy_of_the_streams(monkeypatch):
    """At a reduced shape: what reprop keeps is the streams, the image and the pooled features (the
    classifier's input); the plain termination kept the concatenation on top."""
    batch, tokens, dim = 2, 64, 32
    torch.manual_seed(0)
    model = revtransfer.create_model("revvit_micro", img_size=40, patch_size=5, embed_dim=dim, num_heads=2,
                                     depth=4, num_classes=3).train()
    model.set_backprop("reprop")
    x = torch.randn(batch, 3, 40, 40)
    got = activation_bytes(model, x).total
    floor = 2 * _nbytes(batch, tokens, dim) + x.numel() * 4
    assert floor <= got <= 1.02 * floor
    with plain_termination(monkeypatch):
        before = activation_bytes(model, x).total
    assert before - got >= _nbytes(batch, tokens, 2 * dim)


@pytest.mark.parametrize("build", ["swin", "mvit"])
def test_hierarchical_terminations_keep_no_merged_copy(build, monkeypatch):
    torch.manual_seed(0)
    if build == "swin":
        model = RevSwin(img_size=32, patch_size=4, embed_dim=16, depths=(1, 2), num_heads=(2, 4), window_size=2,
                        num_classes=5, transition_fusion="concat")
        merged = _nbytes(2, 4 * 4, 2 * 32) + _nbytes(2, 8 * 8, 2 * 16)  # termination (2C) + transition concat
    else:
        model = RevMViT(img_size=32, embed_dim=16, depths=(2, 2), num_heads=1, num_classes=5,
                        transition_fusion="concat")
        merged = _nbytes(2, 4 * 4, 2 * 32) + _nbytes(2, 8 * 8, 2 * 16)
    model.train().set_backprop("reprop")
    x = torch.randn(2, 3, 32, 32)
    got = activation_bytes(model, x).total
    with plain_termination(monkeypatch):
        before = activation_bytes(model, x).total
    assert before - got >= merged, (before, got, merged)


@pytest.mark.parametrize("mode", ["reprop", "pareprop"])
@pytest.mark.parametrize("keep_last", [False, True])
def test_bytes_equal_at_every_depth(mode, keep_last):
    def total(depth):
        torch.manual_seed(0)
        model = revtransfer.create_model("revvit_micro", **TINY, depth=depth, num_classes=3).train()
        model.set_backprop(mode, keep_last)
        return activation_bytes(model, torch.randn(2, 3, 20, 20)).total

    assert total(2) == total(4) == total(8)


def test_keep_last_is_counted_with_what_its_ctx_holds():
    """keep_last's graphs hold block inputs and sublayer outputs from Python: counted as ``held``."""
    torch.manual_seed(0)
    model = revtransfer.create_model("revvit_micro", **TINY, depth=2, num_classes=3).train()
    model.set_backprop("reprop", True)
    got = activation_bytes(model, torch.randn(2, 3, 20, 20))
    assert got.held > 0 and got.rng > 0


def test_command_writes_the_records(tmp_path, monkeypatch):
    build = saved_bytes.build  # the command's models and shapes, shrunk to keep the test fast
    monkeypatch.setattr(saved_bytes, "build", lambda name, **kw: build(name, **dict(TINY, **kw)))
    monkeypatch.setitem(saved_bytes.DEFAULT_CONFIGS, "revvit_micro", ("vit_micro", 4, 20))
    out = tmp_path / "saved.json"
    result = CliRunner().invoke(main, ["--models", "revvit_micro", "--batch-size", "2", "--depth-sweep", "2,3",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = {(r["model"], r["mode"], r["keep_last_activations"]): r for r in data["records"]}
    assert set(rows) == {("revvit_micro", m, k) for m, k in RUNS} | {("vit_micro", "backprop", None)}
    for r in data["records"]:
        assert r["precision"] == "fp32" and r["batch_size"] == 2 and r["image_size"] == [20, 20]
        assert r["device"] == "cpu" and r["torch"] == torch.__version__ and "git_commit" in r
        assert r["command"].startswith("python -m revtransfer.bench.saved_bytes")
    assert rows["revvit_micro", "reprop", False]["saved_mb"] < rows["vit_micro", "backprop", None]["saved_mb"] / 10
    sweep = {(r["mode"], r["depth"]): r["saved_mb"] for r in data["depth_sweep"]}
    assert sweep["reprop", 2] == sweep["reprop", 3] and sweep["backprop", 2] < sweep["backprop", 3]
    assert data["meta"]["git_commit"] == data["records"][0]["git_commit"]
