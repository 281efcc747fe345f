"""Probe a pretrained run: has_y on the transfer set (the study's measure) and has_x on the
pretrain set's held-out part (a sanity row: the backbone must solve its own task)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from revtransfer.atomic import atomic_write_json
from revtransfer.data import Normalize, holdout_split, open_dataset
from revtransfer.device import resolve_device
from revtransfer.models import build_model, norm_stats
from revtransfer.train import BEST, LAST, CheckpointError, PretrainConfig, load_checkpoint

from .features import cached_features, file_digest
from .linear import DEFAULT_C_LIMIT, DEFAULT_CS, DEFAULT_SPLIT, ProbeResult, fit_linear_probe

log = logging.getLogger(__name__)
PROBE_JSON = "probe.json"


@dataclass
class ProbeSettings:
    split: Sequence[float] = DEFAULT_SPLIT
    Cs: Sequence[float] = DEFAULT_CS
    seed: int = 0            # probe split and bootstrap; fixed across cells so all see the same split
    n_boot: int = 1000
    batch_size: int = 256
    max_iter: int = 2000
    checkpoint: str = "last"  # "last" (end of training) or "best" (best pretrain val acc)
    sanity: bool = True       # also probe has_x on the pretrain held-out part
    # Probe Y also on the top-`match_dim` PCA components of the features (fitted on the probe's
    # train split), the same number for every arch, to separate architecture from feature width
    # (RevViT's concat fusion gives 2C features, ViT's C): e.g. the ViT width. None: off. A list
    # (e.g. [32, 64, 128]) probes at every k: columns probe_acc_k<k> per k, and probe_acc_matched
    # at the largest k.
    match_dim: int | list[int] | None = None
    # Hygiene (probes/linear.py; the defaults are the hygienic behaviour, a study that began without
    # it sets them false so its new seeds stay comparable with its old ones):
    c_grid_widen: bool = True            # extend the C grid by factors of 10 past an edge the best C sits on
    c_grid_limit: Sequence[float] = DEFAULT_C_LIMIT  # ... but not past these
    standardize_before_pca: bool = True  # standardise with the train split's mean / SD before the PCA
    rank_cap: bool = True                # k never above the train features' numerical rank (k used recorded)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ProbeSettings":
        d = dict(d or {})
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown probe settings {unknown}; known: {sorted(names)}")
        if d.get("checkpoint", "last") not in ("last", "best"):
            raise ValueError(f"probe checkpoint={d['checkpoint']!r}: choose 'last' or 'best'")
        m = d.get("match_dim")
        ks = m if isinstance(m, (list, tuple)) else [m]
        if m is not None and (not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks)
                              or len(set(ks)) != len(ks)):
            raise ValueError(f"probe match_dim={m!r}: give a positive integer (e.g. the ViT feature width), a list "
                             "of distinct ones, or omit it")
        if isinstance(m, (list, tuple)):
            d["match_dim"] = sorted(int(k) for k in m)
        for flag in ("c_grid_widen", "standardize_before_pca", "rank_cap", "sanity"):
            if flag in d and not isinstance(d[flag], bool):
                raise ValueError(f"probe {flag}={d[flag]!r}: give true or false")
        if "c_grid_limit" in d:
            lim = d["c_grid_limit"]
            try:
                lo, hi = (float(v) for v in lim)
            except (TypeError, ValueError):
                raise ValueError(f"probe c_grid_limit={lim!r}: give [lowest C, highest C]") from None
            if not 0 < lo < hi:
                raise ValueError(f"probe c_grid_limit={lim!r}: need 0 < lowest < highest")
            d["c_grid_limit"] = (lo, hi)
        if "Cs" in d:
            d["Cs"] = tuple(float(c) for c in d["Cs"])
        return cls(**d)

    @property
    def match_dims(self) -> list[int]:
        """Every k of the width-matched control ([] when off)."""
        if self.match_dim is None:
            return []
        return sorted(self.match_dim) if isinstance(self.match_dim, (list, tuple)) else [int(self.match_dim)]

    @property
    def multi_k(self) -> bool:
        return isinstance(self.match_dim, (list, tuple))

    @property
    def matched_task(self) -> str | None:
        """The result key of the width-matched probe (None when match_dim is off; the largest k of a list)."""
        return None if self.match_dim is None else f"has_y@transfer_pca{self.match_dims[-1]}"

    def fit_kwargs(self) -> dict:
        """The keyword arguments of ``fit_linear_probe`` these settings set."""
        return dict(split=self.split, Cs=self.Cs, seed=self.seed, n_boot=self.n_boot, max_iter=self.max_iter,
                    widen_grid=self.c_grid_widen, c_limit=tuple(self.c_grid_limit),
                    standardize_before_pca=self.standardize_before_pca, rank_cap=self.rank_cap)

    def record(self) -> dict:
        """The settings that decide a probe's numbers, as plain JSON values (batch_size does not)."""
        out = {}
        for k, v in vars(self).items():
            if k == "batch_size":
                continue
            out[k] = [float(x) if k in ("Cs", "c_grid_limit") else x for x in v] if isinstance(v, (list, tuple)) \
                else v
        return out

    def digest(self) -> str:
        """A short hash of ``record()``: the results' ``probe_settings`` column."""
        import hashlib

        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Backbone:
    model: torch.nn.Module
    config: PretrainConfig
    checkpoint: Path
    digest: str
    image_size: tuple[int, int]  # (H, W) the backbone was pretrained at
    normalize: Normalize = field(repr=False)


def load_backbone(run_dir: str | Path, which: str = "last", device: str = "auto") -> Backbone:
    """The frozen (eval mode, no grad) model of a pretraining run dir."""
    run_dir = Path(run_dir)
    path = run_dir / (LAST if which == "last" else BEST)
    state = load_checkpoint(path)
    if "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path} lacks the model weights or the config")
    cfg = PretrainConfig.from_dict(state["config"])
    dev = resolve_device(device)
    image_size = tuple(state["image_size"]) if "image_size" in state else _dataset_image_size(cfg)
    model = build_model(cfg.arch, cfg.model_kwargs, backprop=cfg.backprop, image_size=image_size)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit {cfg.arch}: {e}") from e
    model = model.to(dev).eval().requires_grad_(False)
    mean, std = norm_stats(model)
    size = tuple(getattr(model.patch_embed, "img_size", None) or image_size)
    return Backbone(model, cfg, path, file_digest(path), size, Normalize(mean, std, dev, torch.float32))


def _dataset_image_size(cfg: PretrainConfig):
    """For checkpoints that do not record their image size: the pretrain dataset's."""
    if "img_size" in cfg.model_kwargs:
        return None
    try:
        return open_dataset(cfg.dataset).image_size
    except (ValueError, OSError) as e:
        raise CheckpointError(f"cannot rebuild the model of {cfg.out}: its pretrain dataset "
                              f"{cfg.dataset} is not readable ({e})") from e


def check_image_size(data, backbone: Backbone, run_dir) -> None:
    """The study compares features at the pretraining resolution: a transfer set of another size is
    refused (resampling the position embedding would probe a different backbone)."""
    if tuple(data.image_size) != tuple(backbone.image_size):
        (h, w), (bh, bw) = data.image_size, backbone.image_size
        raise ValueError(f"transfer dataset {data.path} has {w}x{h} images but the backbone of {run_dir} was "
                         f"pretrained on {bw}x{bh}: generate the transfer set with --size {bw}x{bh}")


def run_probes(run_dir: str | Path, transfer_dataset: str | Path, settings: ProbeSettings | None = None, *,
               device: str = "auto", progress: bool = True) -> dict[str, ProbeResult]:
    """Probe ``run_dir``'s backbone; results also go to ``run_dir/probe.json``."""
    settings = settings or ProbeSettings()
    backbone = load_backbone(run_dir, settings.checkpoint, device)
    model = backbone.model.float()
    cache = Path(run_dir) / "features"
    key = [backbone.digest]
    results = {}

    transfer = open_dataset(transfer_dataset)
    check_image_size(transfer, backbone, run_dir)
    idx = torch.arange(len(transfer)).numpy()
    feats = cached_features(cache, key, model, transfer, idx, backbone.normalize,
                            batch_size=settings.batch_size, progress=progress, desc="features transfer")
    labels = transfer.binary_labels("has_y")
    kw = settings.fit_kwargs()
    results["has_y@transfer"] = fit_linear_probe(feats, labels, task="has_y@transfer", **kw)
    for k in settings.match_dims:  # the width-matched control: same features, same split
        task = f"has_y@transfer_pca{k}"
        results[task] = fit_linear_probe(feats, labels, task=task, pca_dim=k, **kw)

    if settings.sanity:
        cfg = backbone.config
        pre = open_dataset(cfg.dataset)
        _, held_out = holdout_split(len(pre), cfg.val_frac, cfg.split_seed)
        feats = cached_features(cache, key, model, pre, held_out, backbone.normalize,
                                batch_size=settings.batch_size, progress=progress, desc="features held-out")
        results[f"{cfg.label}@pretrain_heldout"] = fit_linear_probe(
            feats, pre.binary_labels(cfg.label)[held_out], task=f"{cfg.label}@pretrain_heldout", **kw)

    atomic_write_json(Path(run_dir) / PROBE_JSON, {
        "checkpoint": str(backbone.checkpoint), "checkpoint_digest": backbone.digest,
        "transfer_dataset": str(transfer_dataset), "transfer_fingerprint": transfer.fingerprint,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
        "settings_digest": settings.digest(),
        "results": {k: r.as_dict() for k, r in results.items()},
    })
    return results
