"""timm's model API on the reversible families: forward_intermediates, features_only with
feature_info, group_matcher (layer-wise lr decay) and set_grad_checkpointing."""
from __future__ import annotations

import pytest
import timm
import torch
from helpers import compare_modes
from torch import nn

import revtransfer  # noqa: F401  (registers the models)
from revtransfer.models._revparts import merge_streams

VIT = dict(img_size=16, patch_size=4, embed_dim=16, depth=4, num_heads=2, num_classes=3)
SWIN = dict(img_size=32, window_size=2, embed_dim=16, depths=(2, 1, 2), num_heads=(2, 2, 4), num_classes=3)
MVIT = dict(img_size=32, embed_dim=16, depths=(1, 2, 2), num_heads=(1, 2, 2), num_classes=3)


def vit(**kw):
    torch.manual_seed(0)
    return timm.create_model("revvit_micro", **dict(VIT, **kw))


@pytest.mark.parametrize("fusion", ["concat", "avg"])
def test_revvit_intermediates_are_each_blocks_merged_streams(fusion):
    model = vit(fusion=fusion).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        tokens, _ = model._pos_embed(model.patch_embed(x))
        x1 = x2 = tokens
        for i, block in enumerate(model.blocks.blocks):  # by hand, block by block
            x1, x2 = block(x1, x2)
            want = merge_streams(x1, x2, fusion).reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
            assert torch.allclose(feats[i], want, atol=1e-6)
        final, last = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC")
        assert torch.allclose(final, model.forward_features(x)) and torch.allclose(last[0], final)
    width = 32 if fusion == "concat" else 16
    assert [f.shape for f in feats] == [torch.Size([2, width, 4, 4])] * 4
    assert model.feature_info[0] == dict(num_chs=width, reduction=4, module="blocks.blocks.0")


class IntermediatesLoss(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        final, feats = self.model.forward_intermediates(x, indices=[0, 2])
        return torch.cat([final.flatten(1)] + [f.flatten(1) for f in feats], 1)


def test_training_through_intermediates_is_exact_in_every_mode():
    """The blocks between taken indices run as reversible segments: gradients still equal backprop's."""
    model = IntermediatesLoss(vit(proj_drop_rate=0.1, drop_path_rate=0.1).double()).train()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    compare_modes(model, model.model.set_backprop, (x,), lambda out: (out * out.mean()).sum(), rtol=1e-10)


@pytest.mark.parametrize("name, kw, grids", [
    ("revswin_tiny", SWIN, [(8, 8), (4, 4), (2, 2)]),
    ("revmvit_tiny", MVIT, [(8, 8), (4, 4), (2, 2)]),
])
def test_hierarchical_features_only(name, kw, grids):
    torch.manual_seed(0)
    net = timm.create_model(name, features_only=True, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = net(x)
    channels = net.feature_info.channels()
    assert [tuple(f.shape) for f in feats] == [(2, c, *g) for c, g in zip(channels, grids)]
    assert net.feature_info.reduction() == [32 // g[0] for g in grids]
    torch.manual_seed(0)
    model = timm.create_model(name, **kw).eval()
    with torch.no_grad():  # norm=True: the last stage's map is the head's features
        final, maps = model.forward_intermediates(x, indices=[-1], norm=True)
        assert torch.allclose(maps[0], model.forward_features(x).reshape(final.shape).reshape(2, *grids[-1], -1)
                              .permute(0, 3, 1, 2), atol=1e-6)
        assert torch.allclose(final, model.forward_features(x))


def test_revvit_features_only():
    net = vit(features_only=True, out_indices=(1, 3)).eval()
    feats = net(torch.randn(1, 3, 16, 16))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 4, 4)] * 2 and net.feature_info.channels() == [32, 32]


def test_vit_micro_features_only_matches_revvit_micro():
    """The baseline answers features_only as the RevViT family and timm's own ViTs do."""
    kw = {k: v for k, v in VIT.items() if k != "num_classes"}
    feats = {}
    for name in ("vit_micro", "revvit_micro"):
        net = timm.create_model(name, features_only=True, out_indices=(1, 3), **kw).eval()
        feats[name] = [tuple(f.shape) for f in net(torch.randn(1, 3, 16, 16))]
        assert net.feature_info.reduction() == [4, 4]
    assert feats["vit_micro"] == [(1, 16, 4, 4)] * 2 and feats["revvit_micro"] == [(1, 32, 4, 4)] * 2


@pytest.mark.parametrize("name, kw, n_groups", [
    ("revvit_micro", VIT, 1 + 4),                # stem, 4 blocks (the final norm joins the last, as in timm)
    ("revswin_tiny", SWIN, 1 + (2 + 1 + 1 + 1 + 2)),  # stem, then blocks and transitions in order
    ("revmvit_tiny", MVIT, 1 + (1 + 1 + 1 + 1 + 1)),
    ("revroberta_base", dict(embed_dim=16, depth=3, num_heads=2, vocab_size=50), 1 + 3),
])
def test_group_matcher_covers_every_parameter_in_order(name, kw, n_groups):
    from timm.models import group_parameters

    model = timm.create_model(name, **kw)
    groups = group_parameters(model, model.group_matcher())
    assert sorted(n for g in groups.values() for n in g) == sorted(n for n, _ in model.named_parameters())
    assert len(groups) == n_groups + 1  # + the classifier, which timm puts last
    first = next(iter(groups.values()))
    assert all(n.startswith(("patch_embed", "pos_embed", "embeddings")) for n in first)
    from timm.optim import param_groups_layer_decay

    decayed = param_groups_layer_decay(model, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in decayed})
    assert len(scales) == n_groups + 1 and scales[-1] == 1.0


def test_set_grad_checkpointing_maps_onto_the_backward_modes():
    model = vit(backprop="backprop")
    model.set_grad_checkpointing()
    assert model.backprop == "pareprop" and model.grad_checkpointing
    model.set_backprop("reprop")
    model.set_grad_checkpointing(True)
    assert model.backprop == "reprop"
    model.set_grad_checkpointing(False)
    assert model.backprop == "backprop" and not model.grad_checkpointing


def test_revmvit_stage_sizes_follow_the_convolutions_at_any_input_size():
    """72 px is no multiple of the 32 px stride: each stage rounds up, as its strided convolutions do."""
    torch.manual_seed(0)
    model = timm.create_model("revmvit_tiny", **dict(MVIT, img_size=72)).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, 72, 72), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in feats] == [(18, 18), (9, 9), (5, 5)]
