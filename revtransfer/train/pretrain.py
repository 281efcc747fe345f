"""The pretraining loop: a model learns ``has_x`` on a clevr_gen pretrain set; the run dir holds
``config.yaml``, ``checkpoint_last.pt`` / ``checkpoint_best.pt``, ``metrics.jsonl`` and, once
finished, ``summary.json``.

Resuming (``resume=True``) restores model, optimizer, scheduler and every RNG state from
``checkpoint_last.pt``; since the data order is a function of (seed, epoch) alone, a resumed run
ends with the weights of an uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from revtransfer.atomic import atomic_write_json, atomic_write_yaml
from revtransfer.data import BatchLoader, ClevrArrays, Normalize, holdout_split, open_dataset, subset_fraction
from revtransfer.device import resolve_device as _resolve_device
from revtransfer.models import build_model as _build_model
from revtransfer.models import is_reversible, norm_stats
from revtransfer.models.weights import load_weights
from revtransfer.provenance import provenance

from . import distributed as D
from .checkpoint import (
    BEST,
    LAST,
    CheckpointError,
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import PretrainConfig
from .metrics import MetricsLog, peak_memory_mb, reset_peak_memory
from .step import TrainStep, autocast_for, make_optimizer, make_scheduler

log = logging.getLogger(__name__)
SUMMARY = "summary.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.float32, "fp64": torch.float64}  # param dtypes


@dataclass
class PretrainResult:
    run_dir: str
    arch: str
    backprop: str
    epochs: int
    n_train: int
    n_val: int
    feature_dim: int
    val_acc: float            # after the last epoch
    best_val_acc: float
    samples_per_s: float      # mean over epochs, training steps only (global samples)
    peak_mem_mb: float
    peak_mem_kind: str
    train_time_s: float       # summed over (resumed) sessions


def resolve_device(name: str, info: D.DistInfo | None = None) -> torch.device:
    """The device of this process (with DDP: its local rank's GPU)."""
    return _resolve_device(name, info.local_rank if info else None)


def build_model(cfg: PretrainConfig, image_size: tuple[int, int] | None = None, num_classes: int = 2) -> nn.Module:
    """The configured architecture with a ``num_classes`` head (:func:`revtransfer.models.build_model`)."""
    return _build_model(cfg.arch, cfg.model_kwargs, backprop=cfg.backprop, image_size=image_size,
                        num_classes=num_classes)


def effective_backprop(cfg: PretrainConfig, model: nn.Module) -> str:
    """The backward actually run: plain autograd for non-reversible models."""
    return cfg.backprop if is_reversible(model) else "backprop"


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@torch.inference_mode()
def evaluate(model: nn.Module, loader: BatchLoader, normalize: Normalize, precision: str,
             info: D.DistInfo) -> tuple[float, float]:
    """(loss, accuracy) over the loader's samples, summed across ranks."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=normalize.device)
    correct = torch.zeros((), dtype=torch.float64, device=normalize.device)
    n = 0
    for x, y in loader:
        x = normalize(x)
        y = y.to(normalize.device)
        with autocast_for(precision, x.device):
            logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    loss_sum, correct, n = D.all_reduce_sum([loss_sum.item(), correct.item(), float(n)], info, normalize.device)
    return (loss_sum / n, correct / n) if n else (math.nan, math.nan)


class Pretrainer:
    """Holds one run's state; :meth:`run` trains from the current epoch to the last."""

    def __init__(self, cfg: PretrainConfig, *, resume: bool = False, progress: bool = True,
                 callbacks: Sequence[Callable[[dict], None]] = ()):
        self.cfg, self.progress, self.callbacks = cfg, progress, list(callbacks)
        self.run_dir = Path(cfg.out)
        self.info = D.init_distributed("cuda" if cfg.device.startswith("cuda") or
                                       (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(cfg.device, self.info)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self._check_run_dir(resume)

        self.data: ClevrArrays = open_dataset(cfg.dataset)
        labels = self.data.binary_labels(cfg.label)
        train_all, val_idx = holdout_split(len(self.data), cfg.val_frac, cfg.split_seed)
        train_idx = subset_fraction(train_all, cfg.fraction, cfg.seed)
        self.n_train, self.n_val = len(train_idx), len(val_idx)

        torch.manual_seed(cfg.seed)  # model init: identical on every rank
        model = build_model(cfg, self.data.image_size)
        if cfg.init_checkpoint:
            report = load_weights(model, cfg.init_checkpoint, cfg.init_format)
            log.info("initialised from %s (%s); new: %s", report.path, report.format, report.missing)
        self.model = model.to(device=self.device, dtype=DTYPES[cfg.precision])
        self.backprop = effective_backprop(cfg, model)
        self.feature_dim = int(model.num_features)
        mean, std = norm_stats(model)
        self.normalize = Normalize(mean, std, self.device, DTYPES[cfg.precision])

        pin = self.device.type == "cuda"
        self.train_loader = BatchLoader(self.data.images, labels, train_idx, cfg.batch_size, shuffle=True,
                                        seed=cfg.seed, rank=self.info.rank, world=self.info.world,
                                        prefetch=cfg.prefetch, pin_memory=pin)
        self.val_loader = BatchLoader(self.data.images, labels, val_idx, cfg.eval_batch_size or 2 * cfg.batch_size,
                                      shuffle=False, rank=self.info.rank, world=self.info.world,
                                      prefetch=cfg.prefetch, pin_memory=pin)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"no training batches: {self.n_train} training images, batch_size={cfg.batch_size}")
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg.lr, cfg.epochs * self.steps_per_epoch, cfg.pct_start)

        self.epoch, self.step_count, self.best_val_acc, self.train_time_s = 0, 0, -1.0, 0.0
        self.epoch_rates: list[float] = []
        if resume and (self.run_dir / LAST).exists():
            self._restore(self.run_dir / LAST)
        else:
            torch.manual_seed(_seed_for(cfg.seed, self.info.rank, 1))  # dropout etc. differ per rank
        self.ddp_model = self.model
        if self.info.enabled:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step = TrainStep(self.ddp_model, self.optimizer, self.scheduler, self.normalize,
                              cfg.precision, cfg.grad_clip)
        if self.info.is_main:
            self._write_config()

    # --- run dir -------------------------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> None:
        last = self.run_dir / LAST
        if last.exists() and not resume:
            raise FileExistsError(f"run dir {self.run_dir} already holds {LAST}; pass --resume to "
                                  f"continue it or choose another --out")
        if resume and last.exists():
            saved = load_training_checkpoint(last)["config"]  # fails early, naming the file
            diffs = self.cfg.differences(saved)
            if diffs:
                raise ValueError(f"cannot resume {self.run_dir}: the config differs from the run's: "
                                 + "; ".join(diffs))

    def _write_config(self) -> None:
        path = self.run_dir / "config.yaml"
        if path.exists():
            return  # keep the original provenance of a resumed run
        atomic_write_yaml(path, {
            "config": self.cfg.to_dict(),
            "resolved": {
                "backprop": self.backprop, "feature_dim": self.feature_dim, "n_train": self.n_train,
                "n_val": self.n_val, "image_size": list(self.data.image_size),
                "dataset_fingerprint": self.data.fingerprint, "world_size": self.info.world,
                "device": str(self.device), "steps_per_epoch": self.steps_per_epoch,
                "model_params": sum(p.numel() for p in self.model.parameters()),
            },
            "provenance": provenance(),
        })

    def _restore(self, path: Path) -> None:
        state = load_training_checkpoint(path, map_location="cpu")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path} does not match this model/optimizer: {e}") from e
        self.epoch, self.step_count = int(state["epoch"]), int(state["step"])
        self.best_val_acc = float(state.get("best_val_acc", -1.0))
        self.train_time_s = float(state.get("train_time_s", 0.0))
        self.epoch_rates = list(state.get("epoch_rates", []))
        rngs = state["rng"]
        restore_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world else rngs[0])
        if self.info.is_main:
            self.metrics.truncate_after(self.epoch)
        log.info("resumed %s at epoch %d", self.run_dir, self.epoch)

    def _save(self, val_acc: float) -> None:
        rngs = D.gather_objects(capture_rng_state(), self.info)
        if self.info.is_main:
            state = {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step": self.step_count,
                "best_val_acc": self.best_val_acc, "train_time_s": self.train_time_s,
                "epoch_rates": self.epoch_rates, "rng": rngs, "config": self.cfg.to_dict(),
                "arch": self.cfg.arch, "backprop": self.backprop, "image_size": list(self.data.image_size),
            }
            save_checkpoint(self.run_dir / LAST, state)
            if val_acc >= self.best_val_acc:
                self.best_val_acc = val_acc
                save_checkpoint(self.run_dir / BEST, {k: state[k] for k in ("model", "epoch", "config", "arch", "image_size")}
                                | {"val_acc": val_acc})
        self.best_val_acc = D.broadcast_object(max(self.best_val_acc, val_acc), self.info)
        D.barrier(self.info)

    # --- training ------------------------------------------------------------------------------
    def _train_epoch(self) -> dict:
        cfg, info = self.cfg, self.info
        self.train_loader.set_epoch(self.epoch)
        self.ddp_model.train()
        reset_peak_memory(self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        n_local, data_wait = 0, 0.0
        bar = tqdm(total=self.steps_per_epoch, desc=f"{cfg.arch} epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not (self.progress and info.is_main), leave=False, dynamic_ncols=True)
        t0 = time.perf_counter()
        batches = iter(self.train_loader)
        while True:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            data_wait += time.perf_counter() - t_wait
            if batch is None:
                break
            x, y = batch
            loss, n_correct = self.step(x, y)
            loss_sum += loss.double() * len(y)
            correct += n_correct
            n_local += len(y)
            self.step_count += 1
            bar.update(1)
            if bar.n % 10 == 0 or bar.n == self.steps_per_epoch:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{n_local * info.world / elapsed:.0f}")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        bar.close()
        loss_sum, correct, n = D.all_reduce_sum([loss_sum.item(), correct.item(), float(n_local)], info, self.device)
        elapsed = D.all_reduce_max(elapsed, info, self.device)
        return {"train_loss": loss_sum / n, "train_acc": correct / n, "train_samples": int(n),
                "epoch_time_s": elapsed, "samples_per_s": n / elapsed, "data_wait_s": data_wait}

    def run(self) -> PretrainResult:
        cfg = self.cfg
        val_acc = math.nan
        while self.epoch < cfg.epochs:
            rec = self._train_epoch()
            self.epoch += 1
            val_loss, val_acc = evaluate(self.model, self.val_loader, self.normalize, cfg.precision, self.info)
            self.train_time_s += rec["epoch_time_s"]
            self.epoch_rates.append(rec["samples_per_s"])
            peak, kind = peak_memory_mb(self.device)
            rec = {"epoch": self.epoch, "step": self.step_count, **rec, "val_loss": val_loss, "val_acc": val_acc,
                   "lr": self.scheduler.get_last_lr()[0], "peak_mem_mb": peak, "peak_mem_kind": kind,
                   "world_size": self.info.world}
            if self.info.is_main:
                self.metrics.write(rec)
                log.info("epoch %d/%d: loss %.4f, acc %.3f, val acc %.3f, %.0f samples/s", self.epoch,
                         cfg.epochs, rec["train_loss"], rec["train_acc"], val_acc, rec["samples_per_s"])
            self._save(val_acc)
            for cb in self.callbacks:
                cb(rec)
        return self._finish()

    def _finish(self) -> PretrainResult:
        records = self.metrics.read() if self.info.is_main else []
        last = records[-1] if records else {}
        peak = max((r.get("peak_mem_mb", 0.0) for r in records), default=peak_memory_mb(self.device)[0])
        result = PretrainResult(
            run_dir=str(self.run_dir), arch=self.cfg.arch, backprop=self.backprop, epochs=self.epoch,
            n_train=self.n_train, n_val=self.n_val, feature_dim=self.feature_dim,
            val_acc=float(last.get("val_acc", math.nan)), best_val_acc=float(self.best_val_acc),
            samples_per_s=float(np.mean(self.epoch_rates)) if self.epoch_rates else math.nan,
            peak_mem_mb=float(peak), peak_mem_kind=peak_memory_mb(self.device)[1],
            train_time_s=self.train_time_s)
        if self.info.is_main:
            atomic_write_json(self.run_dir / SUMMARY, asdict(result))
        D.barrier(self.info)
        return result


def pretrain(cfg: PretrainConfig, *, resume: bool = False, progress: bool = True,
             callbacks: Sequence[Callable[[dict], None]] = ()) -> PretrainResult:
    """Train ``cfg.arch`` on ``cfg.dataset`` into ``cfg.out`` (see the module docstring)."""
    return Pretrainer(cfg, resume=resume, progress=progress, callbacks=callbacks).run()


def read_summary(run_dir: str | Path) -> PretrainResult | None:
    """The result of a finished run, or None if it has not finished."""
    import json

    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    return PretrainResult(**json.loads(path.read_text()))
