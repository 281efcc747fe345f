"""Pretraining-loop throughput: samples/s of the real training step (uint8 batches from the
memory map, normalised on device, forward, backward, AdamW, scheduler) per model and backward mode.

``revtransfer bench`` measures a model's bare training step; this measures the pretraining loop
(data path included), which is what a sweep's wall time depends on:

    revtransfer pretrain DATA --out runs/x --arch revvit_micro --benchmark-steps 50
"""
from __future__ import annotations

import itertools
import math
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from revtransfer.atomic import atomic_write_json
from revtransfer.bench.record import BenchRecord, ratio_summary, summarize
from revtransfer.data import BatchLoader, Normalize, holdout_split, open_dataset, subset_fraction
from revtransfer.models import is_reversible, norm_stats
from revtransfer.provenance import provenance

from .config import PretrainConfig
from .metrics import peak_memory_mb, reset_peak_memory
from .pretrain import DTYPES, build_model, resolve_device
from .step import TrainStep, make_optimizer, make_scheduler


def _cycle(loader: BatchLoader):
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


class _Runner:
    """One config's model, optimizer and batch stream, built once, timed as often as asked."""

    def __init__(self, cfg: PretrainConfig, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 total_steps: int):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, images.shape[1:3]).to(device=self.device, dtype=DTYPES[cfg.precision]).train()
        optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay)
        scheduler = make_scheduler(optimizer, cfg.lr, total_steps, cfg.pct_start)
        normalize = Normalize(*norm_stats(self.model), self.device, DTYPES[cfg.precision])
        self.step = TrainStep(self.model, optimizer, scheduler, normalize, cfg.precision, cfg.grad_clip)
        loader = BatchLoader(images, labels, indices, cfg.batch_size, shuffle=True, seed=cfg.seed,
                             even=False, prefetch=cfg.prefetch, pin_memory=self.device.type == "cuda")
        self.batches = _cycle(loader)
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

    def run(self, steps: int) -> tuple[list[float], float, int, float]:
        """Step times (s), data wait (s), samples and wall time (s) of ``steps`` steps."""
        times, wait, n = [], 0.0, 0
        start = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            x, y = next(self.batches)
            t1 = time.perf_counter()
            loss, _ = self.step(x, y)
            self.sync()
            times.append(time.perf_counter() - t1)
            wait += t1 - t0
            n += len(y)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{self.cfg.arch}: loss became {loss.item()} during the benchmark")
        return times, wait, n, time.perf_counter() - start

    @property
    def mode(self) -> str:
        return self.cfg.backprop if is_reversible(self.model) else "backprop"


def time_interleaved(cfgs: Sequence[PretrainConfig], images: np.ndarray, labels: np.ndarray, indices: np.ndarray, *,
                     steps: int, warmup: int = 3, rounds: int = 3, progress: bool = False) -> dict:
    """Time the training step of several configs on a shared machine, fairly.

    Every config is built once and warmed up; then in each of ``rounds`` rounds every config runs
    ``steps`` steps, in an order rotated by one per round, so that a drift of the machine's speed
    (another job, frequency scaling) falls on all of them alike. A config's throughput in a round is
    its batch size over its median step time; records give min / median / max over the rounds.
    Ratios between configs that differ in one setting (precision, arch or mode) are taken within
    each round, then summarised the same way: a ratio is only as noisy as one round."""
    if steps < 1 or rounds < 1:
        raise ValueError(f"steps={steps} and rounds={rounds} must be at least 1")
    runners = [_Runner(cfg, images, labels, indices, warmup + rounds * steps) for cfg in cfgs]
    for r in runners:
        r.run(warmup)
        reset_peak_memory(r.device)
    per_round = [[None] * len(runners) for _ in range(rounds)]
    loops = [[] for _ in runners]
    waits = [[] for _ in runners]
    bar = tqdm(total=rounds * len(runners), desc="benchmark", disable=not progress, leave=False)
    for k in range(rounds):
        for j in range(len(runners)):
            i = (j + k) % len(runners)
            times, wait, n, wall = runners[i].run(steps)
            per_round[k][i] = runners[i].cfg.batch_size / statistics.median(times)
            loops[i].append(n / wall)
            waits[i].append(wait / wall)
            bar.update()
    bar.close()
    records = []
    for i, r in enumerate(runners):
        rates = [per_round[k][i] for k in range(rounds)]
        peak, kind = peak_memory_mb(r.device)
        records.append(BenchRecord(
            "pretrain_step", r.cfg.arch, r.mode, r.cfg.precision, r.cfg.batch_size, str(r.device),
            samples_per_s=statistics.median(rates),  # median over rounds of the median step
            samples_per_s_rounds=summarize(rates), samples_per_s_all=rates, rounds=rounds,
            step_ms_median=1e3 * r.cfg.batch_size / statistics.median(rates),
            peak_mem_bytes=int(peak * 2**20), peak_mem_kind=kind,
            extra={"image_size": list(images.shape[1:3]), "model_kwargs": r.cfg.model_kwargs, "steps": steps,
                   "warmup": warmup, "torch_threads": torch.get_num_threads(),
                   "samples_per_s_loop": statistics.median(loops[i]),  # with the data path, as a run sees it
                   "data_wait_frac": statistics.median(waits[i])}).to_dict())
    return {"records": records, "ratios": _ratios(runners, per_round)}


def _ratios(runners, per_round) -> list[dict]:
    """For each pair of configs that differ in one thing, precision or model (arch and backward
    mode): the ratio of their throughputs within each round. bf16 over fp32; a later model over an
    earlier one (e.g. revvit_micro/pareprop over vit_micro/backprop)."""
    keys = [(r.cfg.precision, f"{r.cfg.arch}/{r.mode}") for r in runners]
    out = []
    for a in range(len(runners)):
        for b in range(len(runners)):
            if a == b:
                continue
            same_model, same_precision = keys[a][1] == keys[b][1], keys[a][0] == keys[b][0]
            if same_model and not same_precision and PRECISIONS_ORDER.index(keys[b][0]) > PRECISIONS_ORDER.index(keys[a][0]):
                varies, fixed = "precision", {"model": keys[a][1]}
            elif same_precision and not same_model and b > a:
                varies, fixed = "model", {"precision": keys[a][0]}
            else:
                continue
            index = 0 if varies == "precision" else 1
            out.append(ratio_summary([rnd[b] for rnd in per_round], [rnd[a] for rnd in per_round], varies=varies,
                                     numerator=keys[b][index], denominator=keys[a][index], **fixed))
    return out


PRECISIONS_ORDER = ("fp64", "fp32", "bf16")  # ratios read "faster precision over slower"


def benchmark_configs(cfgs: Sequence[PretrainConfig], steps: int, warmup: int = 3, rounds: int = 3,
                      progress: bool = True) -> dict:
    """Time ``cfgs`` (same dataset, e.g. two archs x two precisions) interleaved on the dataset's
    train part (:func:`time_interleaved`); writes ``<out>/throughput.json`` of the first config."""
    cfg = cfgs[0]
    data = open_dataset(cfg.dataset)
    train_all, _ = holdout_split(len(data), cfg.val_frac, cfg.split_seed)
    idx = subset_fraction(train_all, cfg.fraction, cfg.seed)
    result = time_interleaved(cfgs, data.images, data.binary_labels(cfg.label), idx, steps=steps, warmup=warmup,
                              rounds=rounds, progress=progress)
    doc = {**result, "dataset": str(cfg.dataset), "meta": dict(provenance(), measure="pretrain_step")}
    atomic_write_json(Path(cfg.out) / "throughput.json", doc)
    return doc


def format_throughput(result: dict) -> str:
    lines = [f"{'model':14s} {'mode':9s} {'prec':5s} {'bs':>4s} {'samples/s (min/median/max over rounds)':>40s}"]
    for r in result["records"]:
        s = r["samples_per_s_rounds"]
        lines.append(f"{r['model']:14s} {r['mode']:9s} {r['precision']:5s} {r['batch_size']:>4d} "
                     f"{s['min']:12.1f} {s['median']:12.1f} {s['max']:12.1f}")
    for q in result["ratios"]:
        fixed = ", ".join(f"{k}={q[k]}" for k in ("precision", "model") if k in q)
        lines.append(f"ratio {q['numerator']}/{q['denominator']} ({fixed}): min {q['min']:.3f} median "
                     f"{q['median']:.3f} max {q['max']:.3f}")
    return "\n".join(lines)
