"""Configs: every shipped config loads, round-trips through LazyConfig.save/load, and builds; the
models a backbone cannot take are refused before anything is built; iteration overrides rescale
the LR schedule."""
import pytest
import torch
from click.testing import CliRunner
from detectron2.config import LazyConfig, instantiate
from detectron2.solver import LRMultiplier
from detectron2.utils.events import EventStorage
from omegaconf import OmegaConf

from detection import ConfigError, TimmHierarchical, TimmViT, build_config, config_names, prepare, resolve_config
from detection.bench import synthetic_batch
from detection.cli import detect
from detection.config import set_max_iter
from revtransfer.cli import main

EXPECTED = {
    "coco_mask_rcnn_vit_small_frozen": "vit_small_patch16_224",
    "coco_mask_rcnn_vit_base_frozen": "vit_base_patch16_224",
    "coco_mask_rcnn_revvit_small_frozen": "revvit_small",
    "coco_mask_rcnn_revvit_base_frozen": "revvit_base",
    "clevr_mask_rcnn_vit_micro_frozen": "vit_micro",
    "clevr_mask_rcnn_revvit_micro_frozen": "revvit_micro",
}
EXPECTED_FPN = {  # hierarchical models under an FPN: config -> (model, input size)
    "coco_mask_rcnn_revswin_tiny_frozen": ("revswin_tiny", 1024),
    "clevr_mask_rcnn_revswin_tiny_frozen": ("revswin_tiny", 96),
}
TINY_SWIN = dict(window_size=2, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])


def test_all_configs_shipped():
    assert set(EXPECTED) | set(EXPECTED_FPN) <= set(config_names())


def _round_trip(tmp_path, name):
    cfg = LazyConfig.load(str(resolve_config(name)))
    path = tmp_path / "config.yaml"
    LazyConfig.save(cfg, str(path))
    again = LazyConfig.load(str(path))
    LazyConfig.save(again, str(tmp_path / "again.yaml"))  # saved form is a fixed point (classes -> names)
    assert (tmp_path / "again.yaml").read_text() == path.read_text()
    assert "pkl" not in path.read_text() and not list(tmp_path.glob("*.pkl"))  # no pickle fallback
    assert OmegaConf.to_container(again.train) == OmegaConf.to_container(cfg.train)
    return cfg, again


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_round_trip_and_build(tmp_path, name):
    cfg, again = _round_trip(tmp_path, name)
    assert cfg.model.backbone.net.model_name == EXPECTED[name]
    assert cfg.model.backbone.net.freeze is True
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


@pytest.mark.parametrize("name", sorted(EXPECTED_FPN))
def test_fpn_configs_round_trip_and_build(tmp_path, name):
    cfg, again = _round_trip(tmp_path, name)
    model_name, size = EXPECTED_FPN[name]
    net = cfg.model.backbone.bottom_up
    assert (net.model_name, net.img_size, net.freeze) == (model_name, size, True)
    again.train.device = "cpu"
    prepare(again)  # the config-time checks pass
    with torch.device("meta"):
        model = instantiate(again.model)
    assert isinstance(model.backbone.bottom_up, TimmHierarchical)
    assert type(model.backbone.bottom_up.encoder).__name__ == "RevSwin"
    assert model.backbone.padding_constraints == {"square_size": size}  # every batch padded to the model's size
    assert not any(p.requires_grad for p in model.backbone.bottom_up.parameters())
    strides = {k: s.stride for k, s in model.backbone.output_shape().items()}
    assert strides == {f"p{i}": 2 ** i for i in range(2, 7 if name.startswith("coco") else 6)}


def test_fpn_detector_training_step_leaves_the_backbone_bit_identical():
    cfg = build_config("clevr_mask_rcnn_revswin_tiny_frozen", device="cpu")
    cfg.model.backbone.bottom_up.model_kwargs = TINY_SWIN
    prepare(cfg)
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    net, fpn_conv = model.backbone.bottom_up, model.backbone.fpn_lateral2.weight
    before, lateral = {k: v.clone() for k, v in net.state_dict().items()}, fpn_conv.detach().clone()
    with EventStorage(0):
        sum(model(synthetic_batch(2, 96, 3)).values()).backward()
    optim.step()
    assert all(p.grad is None for p in net.parameters()) and fpn_conv.grad is not None
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert not torch.equal(fpn_conv, lateral)  # the FPN and heads did train


@pytest.mark.parametrize("config,override,match", [
    ("clevr_mask_rcnn_vit_micro_frozen", "model.backbone.net.model_name=revroberta_base",
     r"^revroberta_base is not an image model \(it takes tokens\); detection backbones take single-scale image "
     r"models \(ViT, RevViT: vit_\*, revvit_\*\) with TimmViT, or hierarchical image models "
     r"\(RevSwin, RevMViT: revswin_\*, revmvit_\*\) with TimmHierarchical$"),
    ("clevr_mask_rcnn_revswin_tiny_frozen", "model.backbone.bottom_up.model_name=revroberta_base",
     r"^revroberta_base is not an image model"),
    ("clevr_mask_rcnn_vit_micro_frozen", "model.backbone.net.model_name=revswin_tiny",
     r"^revswin_tiny is hierarchical \(feature strides 4, 8, 16, 32\): TimmViT takes single-scale image models "
     r".*; use TimmHierarchical under an FPN \(e.g. the config coco_mask_rcnn_revswin_tiny_frozen\)$"),
    ("clevr_mask_rcnn_revswin_tiny_frozen", "model.backbone.bottom_up.model_name=revvit_micro",
     r"^revvit_micro has a single feature stride \(5\): TimmHierarchical takes hierarchical image models"),
    ("clevr_mask_rcnn_revswin_tiny_frozen", "model.backbone.bottom_up.img_size=80",
     r"^img_size=80 is not a multiple of 32, the largest feature stride of revswin_tiny .*; use e.g. 96$"),
    ("clevr_mask_rcnn_revswin_tiny_frozen", "model.backbone.square_pad=128",
     r"^model.backbone.square_pad=128 must equal model.backbone.bottom_up.img_size=96: revswin_tiny takes inputs "
     r"of exactly that size$"),
])
def test_wrong_backbone_model_is_refused_at_config_time(config, override, match):
    cfg = build_config(config, device="cpu", overrides=[override])
    with pytest.raises(ConfigError, match=match):
        prepare(cfg)


def test_cli_names_a_refused_model_in_one_line():
    # `revtransfer` prints an expected error (ConfigError is a ValueError) as one `Error:` line.
    res = CliRunner().invoke(main, ["detect", "train", "--config", "clevr_mask_rcnn_vit_micro_frozen",
                                    "--device", "cpu", "--results-dir", "",
                                    "model.backbone.net.model_name=revroberta_base"])
    assert res.exit_code == 1
    assert res.output.startswith("Error: revroberta_base is not an image model (it takes tokens)")
    assert len(res.output.strip().splitlines()) == 1


def _lr_by_iteration(cfg) -> list[float]:
    """The LR of every iteration, as detectron2's LazyConfig training schedules it (hooks.LRScheduler
    wraps ``instantiate(cfg.lr_multiplier)`` in an LRMultiplier over ``train.max_iter`` and steps it
    after each iteration)."""
    optim = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = LRMultiplier(optim, multiplier=instantiate(cfg.lr_multiplier), max_iter=cfg.train.max_iter)
    lrs = []
    for _ in range(cfg.train.max_iter):
        lrs.append(optim.param_groups[0]["lr"])
        optim.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("name,warmup", [("clevr_mask_rcnn_vit_micro_frozen", 50),
                                         ("coco_mask_rcnn_revswin_tiny_frozen", 50)])  # 250 capped at 200/4
def test_max_iter_override_rescales_the_schedule(name, warmup):
    base = LazyConfig.load(str(resolve_config(name)))
    fractions = [m / base.train.max_iter for m in base.lr_multiplier.scheduler.milestones]
    cfg = build_config(name, overrides=["train.max_iter=200"])  # what `detect --help` suggests
    assert cfg.train.max_iter == 200
    milestones = list(cfg.lr_multiplier.scheduler.milestones)
    assert milestones == [round(f * 200) for f in fractions]
    assert cfg.lr_multiplier.warmup_length * 200 == pytest.approx(warmup)
    lrs = _lr_by_iteration(cfg)
    assert lrs[0] == pytest.approx(0.001)  # warmup_factor
    assert lrs[warmup - 1] < 1.0 and lrs[warmup] == pytest.approx(1.0)  # warmup ends where it should
    assert lrs[milestones[0] - 1] == pytest.approx(1.0)
    assert lrs[milestones[0]] == pytest.approx(0.1) and lrs[milestones[1]] == pytest.approx(0.01)
    assert lrs[-1] == pytest.approx(0.01)  # the decay happens before the run ends


def test_max_iter_override_composes_with_the_other_ways():
    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen", max_iter=300, overrides=["train.max_iter=150"])
    assert cfg.train.max_iter == 150 and list(cfg.lr_multiplier.scheduler.milestones) == [134, 144]
    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen", demo=True, overrides=["train.max_iter=300"])
    assert cfg.train.max_iter == 300 and list(cfg.lr_multiplier.scheduler.milestones) == [267, 288]
    # an explicit schedule override wins over the rescaled one
    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen",
                       overrides=["train.max_iter=200", "lr_multiplier.scheduler.milestones=[100,150]"])
    assert list(cfg.lr_multiplier.scheduler.milestones) == [100, 150]
    with pytest.raises(ConfigError, match=r"^train.max_iter='2e2' is not an integer$"):
        build_config("clevr_mask_rcnn_vit_micro_frozen", overrides=["train.max_iter=2e2"])
    with pytest.raises(ConfigError, match=r"^max_iter must be positive, got 0$"):
        build_config("clevr_mask_rcnn_vit_micro_frozen", overrides=["train.max_iter=0"])


def test_cli_help_says_what_an_iteration_override_does():
    out = " ".join(CliRunner().invoke(detect, ["--help"]).output.split())
    assert "train.max_iter=N rescales the LR schedule to N iterations, as --max-iter does" in out
