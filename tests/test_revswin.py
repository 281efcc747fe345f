"""Reversible Swin: exact gradients in every backward mode, flat activation memory per stage, and
the registered sizes are Swin-T/S/B plus only the reversible parts."""
from __future__ import annotations

import pytest
import timm
import torch
from helpers import (
    assert_modes_agree_in_forward,
    assert_saved_bytes_flat_in_stage_depth,
    assert_train_forward_is_stochastic,
    compare_modes,
)

import revtransfer  # noqa: F401  (registers the models)
from revtransfer.models.revswin import RevSwin, SwinTransition, WindowAttentionSublayer
from revtransfer.reversible import ReversibleStack

DROPS = dict(drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2)


def loss_fn(out):
    return (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).square().sum()


def tiny_swin(depths, img_size=32, window_size=2, embed_dim=16, heads=None, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    heads = heads or tuple(2 * 2 ** i for i in range(len(depths)))
    model = RevSwin(img_size=img_size, patch_size=4, embed_dim=embed_dim, depths=depths, num_heads=heads,
                    window_size=window_size, num_classes=5, **kwargs)
    return model.to(dtype)


def stacks(model):
    return [m for m in model.layers.stages if isinstance(m, ReversibleStack)]


@pytest.mark.parametrize("depths, img_size, window_size, fusions", [
    ((1, 2), 32, 2, ("concat", "concat")),   # odd then even stage; shifted windows with masks in stage 1
    ((3,), 32, 4, ("concat", "concat")),     # one stage, odd depth
    ((2, 3), 32, 2, ("avg", "avg")),         # averaging fusions
    ((2, 1), 24, 4, ("concat", "avg")),      # 6x6 tokens, window 4: padded, shifted windows
])
def test_float64_grads_equal_backprop_with_dropout(depths, img_size, window_size, fusions):
    model = tiny_swin(depths, img_size, window_size, fusion=fusions[0], transition_fusion=fusions[1], **DROPS).train()
    assert [len(s.blocks) for s in stacks(model)] == list(depths)
    assert sum(isinstance(s, SwinTransition) for s in model.layers.stages) == len(depths) - 1
    attn = [m for m in model.modules() if isinstance(m, WindowAttentionSublayer)]
    if max(depths) > 1:  # the configurations do exercise shifted, masked windows
        assert any(m.attn_mask is not None for m in attn)
    x = torch.randn(2, 3, img_size, img_size, dtype=torch.float64)
    ref = compare_modes(model, model.set_backprop, (x,), loss_fn, rtol=1e-10)
    assert set(ref) == {"input0"} | {n for n, _ in model.named_parameters()}


def test_dropout_is_live_in_train_mode():
    assert_train_forward_is_stochastic(tiny_swin((1, 2), **DROPS), torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_modes_agree_in_forward_eval_and_no_grad():
    model = tiny_swin((2, 1), **DROPS)
    assert_modes_agree_in_forward(model, torch.randn(2, 3, 32, 32, dtype=torch.float64))


@pytest.mark.parametrize("stage", [0, 1])
def test_saved_bytes_flat_in_stage_depth(stage):
    def build(depths, mode):
        return tiny_swin(depths, dtype=torch.float32, backprop=mode, drop_path_rate=0.1).train()

    assert_saved_bytes_flat_in_stage_depth(build, torch.randn(2, 3, 32, 32), stage)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_registered_sizes_are_swin_plus_reversible_parts(size):
    with torch.device("meta"):
        rev = timm.create_model(f"revswin_{size}")
        ref = timm.create_model(f"swin_{size}_patch4_window7_224")
    assert rev.pretrained_cfg["input_size"] == (3, 224, 224)
    assert [len(s.blocks) for s in stacks(rev)] == [len(stage.blocks) for stage in ref.layers]
    heads = [stage.blocks[0].attn.num_heads for stage in ref.layers]
    assert [s.blocks[0].f.attn.num_heads for s in stacks(rev)] == heads
    dims = [s.blocks[0].f.norm.normalized_shape[0] for s in stacks(rev)]
    assert dims == [stage.blocks[0].norm1.normalized_shape[0] for stage in ref.layers]
    assert [s.blocks[1].f.shift_size for s in stacks(rev)] == [stage.blocks[1].shift_size for stage in ref.layers]
    # Extra parameters: one concat fusion Linear(2C -> C) per merging, and the termination's
    # concat (LayerNorm and head over 2C instead of C).
    c = dims[-1]
    extra = sum(2 * d * d + d for d in dims[:-1]) + c * rev.num_classes + 2 * c
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(rev) - count(ref) == extra
    assert rev.num_features == 2 * c


def test_timm_conventions():
    model = tiny_swin((1, 2), dtype=torch.float32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 4, 4, model.num_features)  # NHWC, like timm's Swin
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() and model.no_weight_decay() <= names
    with pytest.raises(ValueError, match="fusion"):
        RevSwin(img_size=32, embed_dim=16, depths=(1,), num_heads=(2,), transition_fusion="max")
