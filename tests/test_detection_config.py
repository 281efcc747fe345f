"""Configs: every shipped config loads, round-trips through LazyConfig.save/load, and builds."""
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

from detection import TimmViT, build_config, config_names, resolve_config
from detection.config import set_max_iter

EXPECTED = {
    "coco_mask_rcnn_vit_small_frozen": "vit_small_patch16_224",
    "coco_mask_rcnn_vit_base_frozen": "vit_base_patch16_224",
    "coco_mask_rcnn_revvit_small_frozen": "revvit_small",
    "coco_mask_rcnn_revvit_base_frozen": "revvit_base",
    "clevr_mask_rcnn_vit_micro_frozen": "vit_micro",
    "clevr_mask_rcnn_revvit_micro_frozen": "revvit_micro",
}


def test_all_configs_shipped():
    assert set(EXPECTED) <= set(config_names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_round_trip_and_build(tmp_path, name):
    cfg = LazyConfig.load(str(resolve_config(name)))
    assert cfg.model.backbone.net.model_name == EXPECTED[name]
    assert cfg.model.backbone.net.freeze is True
    path = tmp_path / "config.yaml"
    LazyConfig.save(cfg, str(path))
    again = LazyConfig.load(str(path))
    LazyConfig.save(again, str(tmp_path / "again.yaml"))  # saved form is a fixed point (classes -> names)
    assert (tmp_path / "again.yaml").read_text() == path.read_text()
    assert "pkl" not in path.read_text() and not list(tmp_path.glob("*.pkl"))  # no pickle fallback
    assert OmegaConf.to_container(again.train) == OmegaConf.to_container(cfg.train)
    with torch.device("meta"):  # the full detector builds (on the meta device: no memory, no init cost)
        model = instantiate(again.model)
    assert isinstance(model.backbone.net, TimmViT)
    assert not any(p.requires_grad for p in model.backbone.net.parameters())
    # no window attention / relative positions / propagation blocks: the backbone is the plain model
    assert type(model.backbone.net.encoder).__name__ in ("VisionTransformer", "RevViT")


def test_paper_setting_follows_vitdet():
    cfg = LazyConfig.load(str(resolve_config("coco_mask_rcnn_revvit_base_frozen")))
    assert cfg.model.backbone.square_pad == 1024 and list(cfg.model.backbone.scale_factors) == [4.0, 2.0, 1.0, 0.5]
    assert cfg.dataloader.train.total_batch_size == 64 and cfg.train.max_iter == 184375
    assert cfg.dataloader.evaluator.backend == "faster_coco_eval"


def test_set_max_iter_keeps_the_schedule_shape():
    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen", max_iter=300)
    assert cfg.train.max_iter == 300
    assert list(cfg.lr_multiplier.scheduler.milestones) == [267, 288]
    assert cfg.lr_multiplier.warmup_length == pytest.approx(50 / 300)
    with pytest.raises(ValueError, match="max_iter must be positive, got 0"):
        set_max_iter(cfg, 0)


def test_overrides_and_unknown_names():
    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen", overrides=["optimizer.lr=0.001"], seed=7)
    assert cfg.optimizer.lr == 0.001 and cfg.train.seed == 7
    with pytest.raises(FileNotFoundError, match="clevr_mask_rcnn_vit_micro_frozen"):
        resolve_config("no_such_config")
