"""RevViT and ViT-Micro: timm registration, conventions, exact backward modes, memory."""
from __future__ import annotations

import pytest
import timm
import torch
from helpers import compare_modes, saved_bytes_of_step

import revtransfer
from revtransfer.models import RevViT

TINY = dict(img_size=20, patch_size=5, embed_dim=16, num_heads=2, num_classes=3)


def tiny(depth=2, **kw):
    torch.manual_seed(0)
    return revtransfer.create_model("revvit_micro", **dict(TINY, depth=depth, **kw))


def test_registered_in_timm_after_import():
    for name in ("vit_micro", "revvit_micro", "revvit_small", "revvit_base", "revvit_large"):
        assert timm.is_model(name) and name in revtransfer.list_models()
    assert isinstance(timm.create_model("revvit_micro"), RevViT)


def test_micro_variants_match_the_study():
    rev = timm.create_model("revvit_micro")
    vit = timm.create_model("vit_micro")
    for m in (rev, vit):
        assert m.patch_embed.img_size == (80, 80) and m.patch_embed.patch_size == (5, 5)
        assert len(m.blocks.blocks if isinstance(m, RevViT) else m.blocks) == 4
    assert rev.blocks.blocks[0].f.attn.num_heads == 8 and vit.blocks[0].attn.num_heads == 8
    assert rev.embed_dim == vit.embed_dim == 256
    assert rev.num_features == 512 and vit.num_features == 256
    assert rev.blocks.blocks[0].g.mlp.fc1.out_features == 1024
    # same parameter budget apart from the wider final norm and head of the concat fusion
    n_rev, n_vit = (sum(p.numel() for p in m.parameters()) for m in (rev, vit))
    assert rev.num_classes == vit.num_classes == 2  # the study's has-X task is the micro default
    extra = 2 * 256 + 2 * 256  # LayerNorm(2C) and head(2C -> 2) vs LayerNorm(C) and head(C -> 2)
    assert n_rev - n_vit == extra


@pytest.mark.parametrize("size,dim,depth,heads", [("small", 384, 12, 6), ("base", 768, 12, 12), ("large", 1024, 24, 16)])
def test_sizes_match_timm_vit_counterparts(size, dim, depth, heads):
    with torch.device("meta"):
        rev = timm.create_model(f"revvit_{size}")
        vit = timm.create_model(f"vit_{size}_patch16_224")
    assert (rev.embed_dim, len(rev.blocks.blocks), rev.blocks.blocks[0].f.attn.num_heads) == (dim, depth, heads)
    assert (vit.embed_dim, len(vit.blocks)) == (dim, depth)
    block_params = lambda blocks: sum(p.numel() for p in blocks.parameters())  # noqa: E731
    assert block_params(rev.blocks) == block_params(vit.blocks)


def test_timm_conventions():
    model = tiny(depth=3).eval()
    x = torch.randn(2, 3, 20, 20)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 16, 32)
    pooled = model.forward_head(tokens, pre_logits=True)
    assert pooled.shape == (2, model.num_features) == (2, 32)
    assert torch.allclose(pooled, tokens.mean(1))
    assert model(x).shape == (2, 3)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)
    assert model.no_weight_decay() == {"pos_embed"}
    assert tiny(fusion="avg").num_features == 16


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="'sideways'.*backprop, reprop, pareprop"):
        tiny(backprop="sideways")
    with pytest.raises(ValueError, match="'max'.*concat, avg"):
        tiny(fusion="max")
    with pytest.raises(ValueError, match="unknown model 'revvit_tiny'.*revvit_micro"):
        revtransfer.create_model("revvit_tiny")
    with pytest.raises(AssertionError, match="Input height \\(24\\) doesn't match model \\(20\\)"):
        tiny()(torch.randn(1, 3, 24, 24))


def test_dynamic_img_size_resamples_position_embedding():
    model = tiny(dynamic_img_size=True).eval()
    assert model.forward_features(torch.randn(1, 3, 30, 40)).shape == (1, 6 * 8, 32)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("fusion", ["concat", "avg"])
def test_float64_grads_equal_backprop_with_dropout_and_drop_path(depth, fusion):
    model = tiny(depth, fusion=fusion, proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2).double().train()
    x = torch.randn(3, 3, 20, 20, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    ref = compare_modes(model, model.set_backprop, (x,), lambda out: torch.nn.functional.cross_entropy(out, y), rtol=1e-10)
    assert len(ref) == 1 + len(list(model.parameters()))


def test_float32_grads_within_1e_4():
    model = tiny(4, proj_drop_rate=0.1, drop_path_rate=0.1).train()
    x = torch.randn(4, 3, 20, 20)
    compare_modes(model, model.set_backprop, (x,), lambda out: out.square().mean(), rtol=1e-4)


def test_set_backprop_and_constructor_kwarg():
    model = tiny(backprop="reprop")
    assert model.backprop == "reprop"
    model.set_backprop("pareprop")
    assert model.blocks.mode == "pareprop"


def _saved(depth, mode):
    model = tiny(depth, backprop=mode).train()
    return saved_bytes_of_step(model, torch.randn(2, 3, 20, 20))


@pytest.mark.parametrize("mode", ["reprop", "pareprop"])
def test_activation_bytes_independent_of_depth(mode):
    assert _saved(32, mode) <= 1.1 * _saved(4, mode)


def test_backprop_activation_bytes_grow_with_depth():
    assert _saved(32, "backprop") > 5 * _saved(4, "backprop")
