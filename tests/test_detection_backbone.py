"""TimmViT and TimmHierarchical: shapes, position-embedding resampling, what "frozen" means, and
which models each refuses."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from detection import (
    BackboneCheckpointError,
    ConfigError,
    TimmHierarchical,
    TimmViT,
    add_timm_hierarchical_config,
    add_timm_vit_config,
)

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


# --- hierarchical models: TimmHierarchical under detectron2's FPN -----------------------------------

TINY_SWIN = dict(window_size=2, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
TINY_MVIT = dict(embed_dim=16, depths=(1, 1, 1, 1))


@pytest.mark.parametrize("name,kwargs", [("revswin_tiny", TINY_SWIN), ("revmvit_tiny", TINY_MVIT)])
def test_hierarchical_maps_through_fpn(name, kwargs):
    bb = TimmHierarchical(name, img_size=64, model_kwargs=kwargs)
    shapes = bb.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert [s.channels for s in shapes.values()] == [32, 64, 128, 256]  # fused concat streams: 2C per stage
    out = bb(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: (2, s.channels, 64 // s.stride, 64 // s.stride) for k, s in shapes.items()}
    fpn = FPN(bottom_up=bb, in_features=list(shapes), out_channels=16, norm="LN", top_block=LastLevelMaxPool(),
              square_pad=bb.img_size)
    assert fpn.padding_constraints == {"square_size": 64}
    maps = fpn(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        f"p{i}": (2, 16, 64 >> i, 64 >> i) for i in (2, 3, 4, 5, 6)}
    assert {k: s.stride for k, s in fpn.output_shape().items()} == {f"p{i}": 2 ** i for i in (2, 3, 4, 5, 6)}


def test_hierarchical_frozen_means_no_grad_eval_mode_and_no_graph():
    bb = TimmHierarchical("revswin_tiny", img_size=64, out_features=["res3", "res5"],
                          model_kwargs={**TINY_SWIN, "drop_path_rate": 0.5, "proj_drop_rate": 0.5})
    assert list(bb.output_shape()) == ["res3", "res5"] and bb.size_divisibility == 32
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert bb.training and not any(m.training for m in bb.encoder.modules())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    a, b = bb(x), bb(x)
    assert all(torch.equal(a[k], b[k]) for k in a)  # dropout and drop-path are off
    assert all(v.grad_fn is None and not v.requires_grad for v in a.values())


def test_hierarchical_input_size_is_fixed_and_checked():
    bb = TimmHierarchical("revswin_tiny", img_size=64, model_kwargs=TINY_SWIN)
    with pytest.raises(ValueError, match=r"built for 64x64 inputs, got 96x64; .*square_pad=64"):
        bb(torch.randn(1, 3, 96, 64))
    with pytest.raises(ConfigError, match=r"img_size=80 is not a multiple of 32, .*revswin_tiny.*use e\.g\. 96"):
        TimmHierarchical("revswin_tiny", img_size=80, model_kwargs=TINY_SWIN)
    with pytest.raises(ConfigError, match=r"out_features \['res6'\] are not features of revswin_tiny; "
                                          r"it has res2, res3, res4, res5"):
        TimmHierarchical("revswin_tiny", img_size=64, out_features=["res6"], model_kwargs=TINY_SWIN)


def test_hierarchical_checkpoint_from_another_input_size(tmp_path):
    # RevSwin's relative positions are per window: weights from pretraining at 64 load at 128.
    src = TimmHierarchical("revswin_tiny", img_size=64, model_kwargs=TINY_SWIN)
    torch.save({"model": src.encoder.state_dict()}, tmp_path / "swin.pt")
    bb = TimmHierarchical("revswin_tiny", img_size=128, checkpoint=str(tmp_path / "swin.pt"), model_kwargs=TINY_SWIN)
    assert all(torch.equal(v, bb.encoder.state_dict()[k]) for k, v in src.encoder.state_dict().items())
    # RevMViT's tables are sized for the token grid: refused, saying why.
    src = TimmHierarchical("revmvit_tiny", img_size=64, model_kwargs=TINY_MVIT)
    torch.save({"model": src.encoder.state_dict()}, tmp_path / "mvit.pt")
    with pytest.raises(BackboneCheckpointError, match=r"revmvit_tiny at img_size=128: its relative-position "
                                                      r"tables .* same input size; .*rel_pos_h"):
        TimmHierarchical("revmvit_tiny", img_size=128, checkpoint=str(tmp_path / "mvit.pt"), model_kwargs=TINY_MVIT)


@pytest.mark.parametrize("backbone", ["TimmViT", "TimmHierarchical"])
def test_text_model_is_refused(backbone):
    build = {"TimmViT": lambda: TimmViT("revroberta_base"),
             "TimmHierarchical": lambda: TimmHierarchical("revroberta_base", img_size=64)}[backbone]
    with pytest.raises(ConfigError, match=r"^revroberta_base is not an image model \(it takes tokens\); detection "
                                          r"backbones take single-scale .* with TimmViT, or hierarchical .* "
                                          r"with TimmHierarchical$"):
        build()


def test_each_backbone_refuses_the_other_kind():
    with pytest.raises(ConfigError, match=r"^revswin_tiny is hierarchical \(feature strides 4, 8, 16, 32\): TimmViT "
                                          r"takes single-scale image models .*; use TimmHierarchical under an FPN"):
        TimmViT("revswin_tiny")
    with pytest.raises(ConfigError, match=r"^vit_micro has a single feature stride \(5\): TimmHierarchical takes "
                                          r"hierarchical image models .*; use TimmViT"):
        TimmHierarchical("vit_micro", img_size=80)


def test_hierarchical_fpn_registered_for_yacs_configs():
    cfg = get_cfg()
    add_timm_hierarchical_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_timm_hierarchical_fpn_backbone"
    cfg.MODEL.TIMM_HIERARCHICAL.IMG_SIZE = 64
    cfg.MODEL.TIMM_HIERARCHICAL.MODEL_KWARGS.update(TINY_SWIN)
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    bb = build_backbone(cfg)
    assert isinstance(bb.bottom_up, TimmHierarchical) and bb.bottom_up.frozen
    assert bb.padding_constraints == {"square_size": 64}
    assert [s.stride for s in bb.output_shape().values()] == [4, 8, 16, 32, 64]
