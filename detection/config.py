"""Finding, loading and completing the plugin's LazyConfigs.

A config (``detection/configs/*.py``) holds everything of a run but the data paths and the backbone
checkpoint; :func:`build_config` fills those in from arguments, applies ``key=value`` overrides
(detectron2/hydra syntax; ``train.max_iter=N`` rescales the schedule as ``max_iter`` does), then
:func:`prepare` registers the datasets and checks what can be checked before any model is built.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

from detectron2.config import LazyConfig

from .data import DatasetError, category_names, register_coco_by_path
from .errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# ``--demo``: the clevr micro configs at ``make demo`` size (2 CPU cores, about two minutes).
DEMO_OVERRIDES = (
    "train.eval_period=0",  # one evaluation, after the last iteration
    "train.checkpointer.period=1000000",
    "train.log_period=10",
    "dataloader.train.total_batch_size=4",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "datasets.test.max_images=100",
)
DEMO_MAX_ITER = 100


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file path, or the name of one of ours (``clevr_mask_rcnn_vit_micro_frozen``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    ours = CONFIG_DIR / (p.name if p.suffix == ".py" else f"{p.name}.py")
    if ours.is_file() and p.parent == Path("."):
        return ours
    raise FileNotFoundError(f"config {str(name_or_path)!r} is neither a file nor one of ours: "
                            f"{', '.join(config_names())}")


def set_max_iter(cfg, max_iter: int) -> None:
    """Change the schedule length keeping its shape: decay milestones at the same fractions, the
    same number of warmup iterations (at most a quarter of the run)."""
    old = int(cfg.train.max_iter)
    max_iter = int(max_iter)
    if max_iter <= 0:
        raise ConfigError(f"max_iter must be positive, got {max_iter}")
    cfg.train.max_iter = max_iter
    lr = cfg.get("lr_multiplier")
    if lr is None:
        return
    sched = lr.get("scheduler", {})
    if "milestones" in sched:
        ms = [max(1, round(m * max_iter / old)) for m in sched.milestones]
        if all(a < b for a, b in zip([0, *ms], [*ms, max_iter])):
            sched.milestones = ms
        else:  # too short a run for the decay steps: keep the initial lr throughout
            sched.values, sched.milestones = [sched["values"][0]], []
    if "num_updates" in sched and not isinstance(sched.num_updates, str):
        sched.num_updates = max_iter
    if "warmup_length" in lr:
        warmup_iters = float(lr.warmup_length) * old
        lr.warmup_length = min(warmup_iters, max_iter / 4) / max_iter


def set_image_size(cfg, size: int) -> None:
    """Detect at ``size`` x ``size``: the padded square and the train / test resizing and cropping
    (LSJ-style ResizeScale + FixedSizeCrop, ResizeShortestEdge) follow it."""
    size = int(size)
    if size < 8:
        raise ConfigError(f"image size {size}: must be at least 8 pixels")
    cfg.model.backbone.square_pad = size
    train_augs = cfg.dataloader.train.mapper.augmentations
    if "size" in train_augs:  # one call that makes the list (detection.data.clevr_train_augmentations)
        train_augs.size = size
        train_augs = []
    for aug in train_augs:
        if "target_height" in aug:
            aug.target_height = aug.target_width = size
        if "crop_size" in aug:
            aug.crop_size = (size, size)
    for aug in cfg.dataloader.test.mapper.augmentations:
        if "short_edge_length" in aug:
            aug.short_edge_length = aug.max_size = size


def build_config(
    name_or_path: str | Path,
    *,
    backbone_checkpoint: str | None = None,
    train_json: str | None = None,
    train_images: str | None = None,
    val_json: str | None = None,
    val_images: str | None = None,
    output_dir: str | None = None,
    max_iter: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    demo: bool = False,
    image_size: int | None = None,
    overrides: Sequence[str] = (),
):
    """Load a config and fill in a run's specifics; explicit ``overrides`` are applied last, a
    ``train.max_iter=N`` among them through :func:`set_max_iter` (a bare assignment would leave the
    schedule's milestones and warmup at the config's length, past the end of a shorter run)."""
    cfg = LazyConfig.load(str(resolve_config(name_or_path)))
    if backbone_checkpoint is not None:
        if backbone_checkpoint and not Path(backbone_checkpoint).is_file():
            raise FileNotFoundError(f"backbone checkpoint {backbone_checkpoint!r} does not exist")
        backbone_net(cfg.model.backbone).checkpoint = str(backbone_checkpoint)
    for split, json_file, images in (("train", train_json, train_images), ("test", val_json, val_images)):
        if (json_file is None) != (images is None):
            raise ValueError(f"give both the json and the images of the {split} set, or neither "
                             f"(got json={json_file!r}, images={images!r})")
        if json_file is not None:
            cfg.datasets[split].json, cfg.datasets[split].images = str(json_file), str(images)
    if demo:
        cfg = LazyConfig.apply_overrides(cfg, list(DEMO_OVERRIDES))
        set_max_iter(cfg, DEMO_MAX_ITER)
    if max_iter is not None:
        set_max_iter(cfg, max_iter)
    if output_dir is not None:
        cfg.train.output_dir = str(output_dir)
    if device is not None:
        cfg.train.device = device
    if image_size is not None:
        set_image_size(cfg, image_size)
    if seed is not None:
        cfg.train.seed = int(seed)
    rest = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "train.max_iter":
            set_max_iter(cfg, _int_override(key, value))
        else:
            rest.append(o)
    cfg = LazyConfig.apply_overrides(cfg, rest)
    if str(cfg.train.device).startswith("cpu") and cfg.train.amp.enabled:
        logger.info("AMP is for CUDA: disabled on %s", cfg.train.device)
        cfg.train.amp.enabled = False
    return cfg


def _int_override(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not an integer") from None


def backbone_net(backbone):
    """The timm wrapper (TimmViT, TimmHierarchical) inside a detector's backbone, as config node or
    module: ``net`` of ViTDet's SimpleFeaturePyramid, ``bottom_up`` of an FPN."""
    for key in ("net", "bottom_up"):
        net = getattr(backbone, key, None)
        if net is not None:
            return net
    raise ConfigError(f"backbone {type(backbone).__name__} has neither 'net' (SimpleFeaturePyramid) nor "
                      "'bottom_up' (FPN)")


def _same_data(a_json: str, a_images: str, b_json: str, b_images: str) -> str | None:
    """Why two datasets given by path are the same data (the same json file, or the same clevr_gen
    dataset: equal manifests, i.e. spec and seed), else None."""
    if Path(a_json).resolve() == Path(b_json).resolve():
        return f"both use {b_json}"
    dirs = []
    for images in (a_images, b_images):
        p = Path(images)
        p = p.parent if p.suffix == ".npy" else p
        dirs.append(p if (p / "manifest.json").is_file() else None)
    if all(dirs):
        from revtransfer.data import read_manifest

        keys = [{k: read_manifest(d).get(k) for k in ("spec", "seed", "n")} for d in dirs]
        if keys[0] == keys[1]:
            return f"{dirs[0]} and {dirs[1]} are the same clevr_gen dataset (same spec and seed)"
    return None


def check_held_out(cfg) -> None:
    """Detection is evaluated on held-out images: a test set that is the training set is refused
    unless ``datasets.allow_train_eval`` is set (``--allow-train-eval``)."""
    train, test = cfg.datasets.train, cfg.datasets.test
    if not (train.get("json") and test.get("json")):
        same = train.name == test.name and not train.get("json") and not test.get("json")
        why = f"both are the registered dataset {train.name!r}" if same else None
    else:
        why = _same_data(train.json, train.images, test.json, test.images)
    if why and not cfg.datasets.get("allow_train_eval", False):
        raise ConfigError(f"the evaluation set is the training set ({why}): evaluate on held-out images "
                          "(e.g. a clevr_gen set made with another --seed), or pass --allow-train-eval to "
                          "measure training-set AP on purpose")


def prepare(cfg) -> None:
    """Register the config's datasets by path, size the class head from the training json and check
    the backbone's model and padding (:func:`check_backbone`). Runs in every process (catalogs are
    per-process). A test set that is the training set is refused (:func:`check_held_out`)."""
    check_held_out(cfg)
    for split in ("train", "test"):
        ds = cfg.datasets[split]
        if ds.get("json"):
            register_coco_by_path(ds.name, ds.json, ds.images, max_images=ds.get("max_images"))
    train_json = cfg.datasets.train.get("json")
    if train_json:
        n = len(category_names(train_json))
        if cfg.model.roi_heads.num_classes != n:
            logger.info("num_classes %d -> %d (categories of %s)", cfg.model.roi_heads.num_classes, n, train_json)
            cfg.model.roi_heads.num_classes = n
    check_backbone(cfg)
    import torch

    if str(cfg.train.device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={cfg.train.device!r} but CUDA is not available; "
                           "pass --device cpu (or train.device=cpu)")


def check_backbone(cfg) -> None:
    """Before any model is built: the backbone's model is one it can run (an image model, of the
    right kind, :func:`detection.backbone.check_model`) and images are padded to a size it takes."""
    from .backbone import check_model, hierarchical_features, probe_model

    bb = cfg.model.backbone
    net = backbone_net(bb)
    kind = _target_name(net)
    if kind == "TimmViT":
        model = probe_model(net.model_name, net.get("model_kwargs"))
        check_model(model, net.model_name, kind)
        _check_vit_padding(bb, _patch_size(model))
    elif kind == "TimmHierarchical":
        hierarchical_features(net.model_name, {**dict(net.get("model_kwargs") or {}), "img_size": net.img_size})
        square = int(bb.get("square_pad", 0) or 0)
        if square != int(net.img_size):
            raise ConfigError(f"model.backbone.square_pad={square} must equal model.backbone.bottom_up.img_size="
                              f"{net.img_size}: {net.model_name} takes inputs of exactly that size")


def _target_name(node) -> str:
    target = node.get("_target_", "")
    return (target if isinstance(target, str) else target.__qualname__).rsplit(".", 1)[-1]


def _check_vit_padding(bb, patch: int) -> None:
    """Images are padded to ``square_pad``; it must be a multiple of every stride involved."""
    square = int(bb.get("square_pad", 0) or 0)
    if not square:
        return
    from .backbone import _default_feature_stride

    stride = int(bb.net.get("feature_stride") or _default_feature_stride(patch))
    top = stride / min(bb.scale_factors) * 2 ** (1 if bb.get("top_block") is not None else 0)
    need = math.lcm(patch, stride, int(top))
    if square % need:
        raise DatasetError(f"model.backbone.square_pad={square} is not a multiple of {need} (patch size "
                           f"{patch}, pyramid strides up to {int(top)}); use e.g. {math.ceil(square / need) * need}")


def _patch_size(model) -> int:
    ps = getattr(model, "patch_size", None) or model.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)
