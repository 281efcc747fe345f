"""Pretraining-loop throughput: samples/s of the real training step (uint8 batches from the
memory map, normalised on device, forward, backward, AdamW, scheduler) per model and backward mode.

``revtransfer bench`` measures a model's bare training step; this measures the pretraining loop
(data path included), which is what a sweep's wall time depends on.

    python -m revtransfer.train.throughput --out bench/pretrain_throughput.json \\
        --arch vit_micro --arch revvit_micro --batch-size 64 --steps 20
    revtransfer pretrain DATA --out runs/x --arch revvit_micro --benchmark-steps 50   # on real data
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from revtransfer.models import is_reversible
from revtransfer.options import parse_model_kwargs
from revtransfer.provenance import provenance
from revtransfer.reversible import BACKPROP_MODES

from revtransfer.atomic import atomic_write_json
from .config import PretrainConfig
from .data import BatchLoader, Normalize, subset_fraction, holdout_split, open_dataset
from .metrics import peak_memory_mb, reset_peak_memory
from .pretrain import DTYPES, build_model, norm_stats, resolve_device
from .step import TrainStep, make_optimizer, make_scheduler


def _cycle(loader: BatchLoader):
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def time_training_steps(cfg: PretrainConfig, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, *,
                        steps: int, warmup: int = 3, progress: bool = False) -> dict:
    """Build the model/optimizer of ``cfg`` and time ``steps`` training steps after ``warmup``."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, images.shape[1:3]).to(device=device, dtype=DTYPES[cfg.precision]).train()
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.lr, warmup + steps, cfg.pct_start)
    normalize = Normalize(*norm_stats(model), device, DTYPES[cfg.precision])
    step = TrainStep(model, optimizer, scheduler, normalize, cfg.precision, cfg.grad_clip)
    loader = BatchLoader(images, labels, indices, cfg.batch_size, shuffle=True, seed=cfg.seed,
                         even=False, prefetch=cfg.prefetch, pin_memory=device.type == "cuda")
    batches = _cycle(loader)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step(*next(batches))
    sync()
    reset_peak_memory(device)
    step_times, wait, n = [], 0.0, 0
    t_start = time.perf_counter()
    for _ in tqdm(range(steps), desc=f"{cfg.arch}/{cfg.backprop}", disable=not progress, leave=False):
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        loss, _ = step(x, y)
        sync()
        step_times.append(time.perf_counter() - t1)
        wait += t1 - t0
        n += len(y)
    total = time.perf_counter() - t_start
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"{cfg.arch}: loss became {loss.item()} during the benchmark")
    peak, kind = peak_memory_mb(device)
    median = statistics.median(step_times)
    return {
        "model": cfg.arch, "mode": cfg.backprop if is_reversible(model) else "backprop",
        "batch_size": cfg.batch_size, "image_size": list(images.shape[1:3]), "model_kwargs": cfg.model_kwargs,
        "precision": cfg.precision, "steps": steps, "warmup": warmup,
        "samples_per_s": cfg.batch_size / median,          # median step, the bench convention
        "samples_per_s_loop": n / total,                    # with the data path, as a run sees it
        "step_time_ms_median": 1e3 * median, "data_wait_frac": wait / total,
        "peak_mem_mb": peak, "peak_mem_kind": kind, "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }


def benchmark_config(cfg: PretrainConfig, steps: int, warmup: int = 3, progress: bool = True) -> dict:
    """Time ``cfg`` on its own dataset (train part); writes ``<cfg.out>/throughput.json``."""
    data = open_dataset(cfg.dataset)
    train_all, _ = holdout_split(len(data), cfg.val_frac, cfg.split_seed)
    idx = subset_fraction(train_all, cfg.fraction, cfg.seed)
    record = {**time_training_steps(cfg, data.images, data.binary_labels(cfg.label), idx, steps=steps,
                                    warmup=warmup, progress=progress),
              "dataset": str(cfg.dataset), **provenance()}
    atomic_write_json(Path(cfg.out) / "throughput.json", record)
    return record


def benchmark_models(archs: Sequence[str], modes: Sequence[str] = BACKPROP_MODES, *, batch_size: int = 64,
                     steps: int = 20, warmup: int = 3, img_size: int = 80, model_kwargs: dict | None = None,
                     device: str = "auto", precision: str = "fp32", progress: bool = True) -> list[dict]:
    """One record per (arch, mode) on synthetic uint8 images of the study's shape (80x80 default).
    Non-reversible archs are measured once (mode "backprop")."""
    rng = np.random.default_rng(0)
    n = batch_size * 4
    images = rng.integers(0, 256, (n, img_size, img_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n).astype(np.int64)
    records = []
    for arch in archs:
        base = PretrainConfig(dataset="<synthetic>", out="<none>", arch=arch, model_kwargs=dict(model_kwargs or {}),
                              batch_size=batch_size, device=device, precision=precision)
        for mode in modes if _reversible(base) else ["backprop"]:
            rec = time_training_steps(base.replace(backprop=mode), images, labels, np.arange(n), steps=steps,
                                      warmup=warmup, progress=progress)
            records.append({**rec, **provenance()})
            print(f"{arch:14s} {rec['mode']:9s} bs {batch_size}: {rec['samples_per_s']:8.1f} samples/s "
                  f"(loop {rec['samples_per_s_loop']:.1f}), peak {rec['peak_mem_mb']:.0f} MB", file=sys.stderr)
    return records


def _reversible(cfg: PretrainConfig) -> bool:
    with torch.device("meta"):  # only the class matters
        return is_reversible(build_model(cfg, None))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Pretraining-loop throughput per model and backward mode (JSON).")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--arch", action="append", help="repeatable; default vit_micro and revvit_micro")
    p.add_argument("--mode", action="append", choices=BACKPROP_MODES, help="repeatable; default all")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--img-size", type=int, default=80)
    p.add_argument("--model-kw", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp64"))
    a = p.parse_args(argv)
    kwargs = parse_model_kwargs(tuple(a.model_kw))
    kwargs.setdefault("img_size", a.img_size)
    records = benchmark_models(a.arch or ["vit_micro", "revvit_micro"], a.mode or list(BACKPROP_MODES),
                               batch_size=a.batch_size, steps=a.steps, warmup=a.warmup, img_size=a.img_size,
                               model_kwargs=kwargs, device=a.device, precision=a.precision)
    atomic_write_json(a.out, records)
    print(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
