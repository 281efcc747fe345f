"""Reversible MViTv2: exact gradients in every backward mode, flat activation memory per stage, and
the registered sizes are MViTv2-T/B plus only the reversible parts."""
from __future__ import annotations

import pytest
import timm
import torch
from helpers import (
    assert_modes_agree_in_forward,
    assert_same_grads,
    assert_saved_bytes_flat_in_stage_depth,
    assert_train_forward_is_stochastic,
    grads_of,
)

import revtransfer  # noqa: F401  (registers the models)
from revtransfer.models.revmvit import MViTTransition, RevMViT
from revtransfer.reversible import ReversibleStack

# A LayerNorm bias on the keys shifts every score of a query by the same amount, which softmax
# ignores: its exact gradient is 0 and what autograd returns is rounding noise (~1e-19), so a
# relative error means nothing there. Those are checked against the model's gradient scale instead.
ZERO_BY_SYMMETRY = ("attn.norm_k.bias",)


def loss_fn(out):
    return (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).square().sum()


def tiny_mvit(depths, embed_dim=16, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    model = RevMViT(img_size=32, embed_dim=embed_dim, depths=depths, num_heads=1, num_classes=5, **kwargs)
    return model.to(dtype)


def stacks(model):
    return [m for m in model.layers.stages if isinstance(m, ReversibleStack)]


@pytest.mark.parametrize("depths, fusions", [
    ((1, 2), ("concat", "avg")),      # stage 1 = transition + 1 reversible block
    ((3,), ("concat", "avg")),        # one stage, odd depth, no transition
    ((2, 3), ("avg", "concat")),      # even then odd; concat fusion before the transition
    ((1, 1, 3), ("concat", "avg")),   # a stage that is only its transition block
])
def test_float64_grads_equal_backprop_with_drop_path(depths, fusions):
    model = tiny_mvit(depths, fusion=fusions[0], transition_fusion=fusions[1], drop_path_rate=0.3,
                      drop_rate=0.1).train()
    expected_rev = [depths[0]] + [d - 1 for d in depths[1:] if d > 1]
    assert [len(s.blocks) for s in stacks(model)] == expected_rev
    assert sum(isinstance(s, MViTTransition) for s in model.layers.stages) == len(depths) - 1
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model.set_backprop("backprop")
    ref = grads_of(model, (x,), loss_fn)
    assert set(ref) == {"input0"} | {n for n, _ in model.named_parameters()}
    for mode in ("reprop", "pareprop"):
        model.set_backprop(mode)
        assert_same_grads(grads_of(model, (x,), loss_fn), ref, 1e-10, mode, ZERO_BY_SYMMETRY)


def test_drop_path_is_live_in_train_mode():
    assert_train_forward_is_stochastic(tiny_mvit((2, 2), drop_path_rate=0.5), torch.randn(4, 3, 32, 32, dtype=torch.float64))


def test_modes_agree_in_forward_eval_and_no_grad():
    model = tiny_mvit((2, 2), drop_path_rate=0.3)
    assert_modes_agree_in_forward(model, torch.randn(2, 3, 32, 32, dtype=torch.float64))


@pytest.mark.parametrize("stage", [0, 1])
def test_saved_bytes_flat_in_stage_depth(stage):
    def build(depths, mode):
        return tiny_mvit(depths, dtype=torch.float32, backprop=mode, drop_path_rate=0.1).train()

    assert_saved_bytes_flat_in_stage_depth(build, torch.randn(2, 3, 32, 32), stage)


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_registered_sizes_are_mvitv2_plus_reversible_parts(size):
    with torch.device("meta"):
        rev = timm.create_model(f"revmvit_{size}")
        ref = timm.create_model(f"mvitv2_{size}")
    assert rev.pretrained_cfg["input_size"] == (3, 224, 224)
    ref_depths = [len(stage.blocks) for stage in ref.stages]
    # stage 0 keeps its width and resolution, so all its blocks are reversible; every later stage
    # starts with its (non-reversible) transition block
    assert [len(s.blocks) for s in stacks(rev)] == [ref_depths[0]] + [d - 1 for d in ref_depths[1:]]
    transitions = [s for s in rev.layers.stages if isinstance(s, MViTTransition)]
    assert [t.block.dim_out for t in transitions] == [stage.blocks[0].dim_out for stage in ref.stages[1:]]
    # Extra parameters with the default fusions (avg before transitions, concat at the end):
    # the final LayerNorm and head over 2C instead of C.
    c = ref.num_features
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(rev) - count(ref) == c * rev.num_classes + 2 * c
    assert rev.num_features == 2 * c


def test_timm_conventions():
    model = tiny_mvit((1, 2), dtype=torch.float32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 16, model.num_features)  # 8x8 tokens pooled to 4x4 by the transition
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() and model.no_weight_decay() <= names
    assert model.patch_embed.img_size == (32, 32)  # what the benchmark reads for its input size
