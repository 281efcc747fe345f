"""TimmViT: shapes, position-embedding resampling, and what "frozen" means."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from detection import TimmViT, add_timm_vit_config

TINY_TIMM_VIT = dict(depth=1, embed_dim=48, num_heads=2)  # timm's own ViT (class token), kept tiny


@pytest.mark.parametrize("name,kwargs,channels,stride", [
    ("vit_micro", {}, 256, 4),               # patch 5 -> resampled to stride 4
    ("revvit_micro", {}, 512, 4),            # fused concat streams: 2C
    ("revvit_micro", {"fusion": "avg"}, 256, 4),
    ("vit_tiny_patch16_224", TINY_TIMM_VIT, 48, 16),  # class token dropped
])
def test_feature_map_shape_and_stride(name, kwargs, channels, stride):
    bb = TimmViT(name, model_kwargs=kwargs)
    assert bb.output_shape()["last_feat"].channels == channels
    assert bb.output_shape()["last_feat"].stride == stride
    for size in (80, 160):  # position embeddings follow the input's token grid
        out = bb(torch.randn(2, 3, size, size))["last_feat"]
        assert out.shape == (2, channels, size // stride, size // stride)


def test_patch_tokens_are_the_feature_map():
    # With the native stride (no resampling), pixel (i, j) of the map is token i*W+j.
    bb = TimmViT("vit_tiny_patch16_224", model_kwargs=TINY_TIMM_VIT)
    x = torch.randn(1, 3, 64, 96)
    tokens = bb.encoder.forward_features(x)[:, bb.num_prefix_tokens:]
    fmap = bb(x)["last_feat"]
    assert torch.equal(fmap[0, :, 1, 2], tokens[0, 1 * 6 + 2])


def test_frozen_means_no_grad_eval_mode_and_no_graph():
    bb = TimmViT("revvit_micro", model_kwargs={"drop_path_rate": 0.5, "proj_drop_rate": 0.5})
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert bb.training and not bb.encoder.training
    assert not any(m.training for m in bb.encoder.modules())
    x = torch.randn(1, 3, 40, 40, requires_grad=True)
    a, b = bb(x)["last_feat"], bb(x)["last_feat"]
    assert torch.equal(a, b)  # dropout and drop-path are off even though train() was called
    assert a.grad_fn is None and not a.requires_grad  # no activations kept for backward


def test_unfrozen_backbone_trains():
    bb = TimmViT("vit_micro", freeze=False)
    bb.train()
    assert bb.encoder.training
    out = bb(torch.randn(1, 3, 40, 40))["last_feat"]
    out.sum().backward()
    assert all(p.grad is not None for p in bb.parameters())


def test_wrong_input_size_is_named():
    bb = TimmViT("vit_micro")
    with pytest.raises(ValueError, match=r"input size 84x80 is not a multiple of 20"):
        bb(torch.randn(1, 3, 84, 80))


def test_feature_stride_must_be_power_of_two():
    with pytest.raises(ValueError, match="feature_stride=6"):
        TimmViT("vit_micro", feature_stride=6)


def test_registered_for_yacs_configs():
    assert "TimmViT" in BACKBONE_REGISTRY
    cfg = get_cfg()
    add_timm_vit_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "TimmViT"
    cfg.MODEL.TIMM_VIT.NAME = "revvit_micro"
    bb = build_backbone(cfg)
    assert isinstance(bb, TimmViT) and bb.frozen and bb.output_shape()["last_feat"].channels == 512
