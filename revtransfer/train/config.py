"""The pretraining recipe as one flat, validated dataclass: what ``config.yaml`` of a run holds.

Defaults are the CLEVR transfer study's recipe (Zhu 2023, ch. 4): AdamW, lr 3e-4, one-cycle cosine
schedule, 40 epochs, no augmentation, 2-class has_x target.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRECISIONS = ("fp32", "bf16", "fp64")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class PretrainConfig:
    dataset: str                       # clevr_gen dataset dir of the pretrain split
    out: str                           # run dir
    arch: str = "vit_micro"
    model_kwargs: dict = field(default_factory=dict)  # e.g. {"img_size": 32, "depth": 2}
    backprop: str = "pareprop"         # reversible models only; ignored (recorded as "backprop") otherwise
    label: str = "has_x"               # labels.csv column to train on (binary)
    epochs: int = 40
    batch_size: int = 256              # global batch (split across DDP ranks)
    lr: float = 3e-4
    weight_decay: float = 0.05
    pct_start: float = 0.3             # one-cycle warm-up fraction
    grad_clip: float | None = None
    fraction: float = 1.0              # seeded subset of the pretrain part
    val_frac: float = 0.1              # held-out part of the dataset (same for every seed/fraction)
    split_seed: int = 0                # seed of the train/held-out split
    seed: int = 0                      # model init, data order and fraction subset
    precision: str = "fp32"            # fp32 | bf16 (autocast, CUDA) | fp64 (exactness tests)
    device: str = "auto"
    init_checkpoint: str | None = None  # foreign or own checkpoint to start from
    init_format: str = "auto"           # see revtransfer.models.weights.FORMATS
    prefetch: int = 2                   # batches read ahead by a background thread
    eval_batch_size: int | None = None  # default: 2 x batch_size

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name, why):
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

        for name in ("epochs", "batch_size", "prefetch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "prefetch" else 1):
                bad(name, "must be a positive integer" if name != "prefetch" else "must be >= 0")
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
                bad(name, "must be a finite number > 0" if name == "lr" else "must be a finite number >= 0")
        if not 0 < self.fraction <= 1:
            bad("fraction", "must lie in (0, 1]")
        if not 0 < self.val_frac < 1:
            bad("val_frac", "must lie in (0, 1)")
        if not 0 < self.pct_start < 1:
            bad("pct_start", "must lie in (0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            bad("grad_clip", "must be > 0 or None")
        if self.precision not in PRECISIONS:
            bad("precision", f"choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            bad("device", f"choose one of {', '.join(DEVICES)} or cuda:N")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            bad("eval_batch_size", "must be a positive integer")
        if not isinstance(self.model_kwargs, dict):
            bad("model_kwargs", "must be a mapping of model constructor arguments")
        from revtransfer.reversible import BACKPROP_MODES

        if self.backprop not in BACKPROP_MODES:
            bad("backprop", f"choose one of {', '.join(BACKPROP_MODES)}")

    # --- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown pretrain config keys {unknown}; known: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PretrainConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(data.get("config", data))

    def replace(self, **changes) -> "PretrainConfig":
        return dataclasses.replace(self, **changes)

    def differences(self, other: dict[str, Any], ignore=("out", "dataset", "prefetch", "device")) -> list[str]:
        """Fields (other than ``ignore``) where ``other`` (a config dict) differs from this config."""
        mine = self.to_dict()
        return [f"{k}: {other.get(k)!r} in the run dir vs {mine.get(k)!r} now"
                for k in sorted(set(mine) | set(other)) if k not in ignore and mine.get(k) != other.get(k)]
