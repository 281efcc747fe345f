"""What a sweep will cost, from measured throughput: ``revtransfer sweep FILE --estimate JSON``.

Each cell trains ``epochs`` passes over its part of the pretrain set (the held-out split and the
fraction taken exactly as pretraining takes them), so a sweep's training samples are known before
it runs. Divided by the samples/s measured for each arch at the sweep's precision (a ``revtransfer
pretrain --benchmark-steps`` JSON, a ``revtransfer bench`` JSON, or the GPU plan's file), that is
its training time. Validation passes, feature extraction and probes come on top (a few percent at
the presets' sizes); cells run one at a time unless several processes or GPUs share the sweep.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from revtransfer.data import holdout_split, subset_fraction

from .sweep import SweepError, SweepSpec

# Model kwargs that do not change the cost of a training step.
_COST_NEUTRAL = {"num_classes", "keep_last_activations", "drop_rate", "drop_path_rate", "attn_drop_rate"}


@dataclass
class Throughput:
    samples_per_s: float
    batch_size: int
    source: str
    same_shape: bool  # measured at the sweep's model kwargs and image size (as far as the JSON tells)


def _shape_kwargs(kwargs: dict | None) -> dict | None:
    return None if kwargs is None else {k: v for k, v in kwargs.items() if k not in _COST_NEUTRAL}


def _dataset_size(spec: SweepSpec, corr: float) -> int:
    entry = spec.pretrain[corr]
    if entry.spec is not None and "n" in entry.spec:
        return int(entry.spec["n"])
    from revtransfer.data import open_dataset

    try:
        return len(open_dataset(entry.path))
    except (OSError, ValueError) as e:
        raise SweepError(f"cannot size the pretrain set of corr {corr:g} ({entry.path}): {e}") from None


def _image_size(spec: SweepSpec, corr: float) -> tuple[int, int] | None:
    """(H, W) of a pretrain set: its clevr_gen spec (defaults included), else the dataset on disk."""
    entry = spec.pretrain[corr]
    if entry.spec is not None:
        from clevr_gen.spec import DatasetSpec

        return (int(entry.spec.get("height", DatasetSpec.height)), int(entry.spec.get("width", DatasetSpec.width)))
    from revtransfer.data import open_dataset

    try:
        return tuple(open_dataset(entry.path).image_size)
    except (OSError, ValueError):
        return None


def cell_samples(spec: SweepSpec) -> dict[str, tuple[str, int]]:
    """cell_id -> (arch, training samples over all its epochs)."""
    out, sizes = {}, {}
    for cell in spec.cells():
        cfg = spec.pretrain_config(cell)
        n = sizes.setdefault(cell.corr, _dataset_size(spec, cell.corr))
        train, _ = holdout_split(n, cfg.val_frac, cfg.split_seed)
        out[cell.cell_id] = (cell.arch, len(subset_fraction(train, cfg.fraction, cfg.seed)) * cfg.epochs)
    return out


def _records(path: Path) -> list[dict]:
    from revtransfer.bench.record import read_bench_file

    try:
        _, records, _ = read_bench_file(path)
    except (OSError, ValueError, TypeError) as e:
        raise SweepError(f"--estimate {path}: not a readable throughput JSON ({e})") from None
    rows = []
    for r in records:
        rate = (r.samples_per_s_rounds or {}).get("median") or r.samples_per_s
        if r.status != "ok" or not rate or r.measure not in ("train_step", "pretrain_step") or not r.batch_size:
            continue
        image = r.extra.get("image_size") or (r.input_shape or [None, None])[-2:]
        rows.append(dict(model=r.model, mode=r.mode, precision=r.precision, batch_size=int(r.batch_size),
                         samples_per_s=float(rate), device=r.device or "?",
                         kwargs=_shape_kwargs(r.extra.get("model_kwargs")),
                         image=tuple(image) if all(image) else None))
    if not rows:
        raise SweepError(f"--estimate {path}: no measured throughput records in it")
    return rows


def pick_throughput(rows: list[dict], arch: str, mode: str, precision: str, batch_size: int, source: str,
                    kwargs: dict | None = None, image: tuple | None = None) -> Throughput | None:
    """The record of ``arch`` in ``mode`` at ``precision``, preferring one measured at the sweep's
    model kwargs and image size (records that do not say count as matching), then the sweep's batch
    size or the nearest one measured."""
    mine = [r for r in rows if r["model"] == arch and r["mode"] == mode and r["precision"] == precision]
    if not mine:
        return None

    def same(r):
        return ((r["kwargs"] is None or r["kwargs"] == _shape_kwargs(kwargs or {}))
                and (r["image"] is None or image is None or tuple(r["image"]) == tuple(image)))

    matching = [r for r in mine if same(r)]
    best = min(matching or mine, key=lambda r: (abs(r["batch_size"] - batch_size), -r["batch_size"]))
    return Throughput(best["samples_per_s"], best["batch_size"], f"{source} ({best['device']})", bool(matching))


def estimate(spec: SweepSpec, throughput_json: list[str | Path]) -> list[dict]:
    """One row per arch: cells, training samples, the throughput used and the projected hours."""
    rows = [r | {"source": Path(p).name} for p in throughput_json for r in _records(Path(p))]
    samples = cell_samples(spec)
    probe_cell = {c.arch: c for c in spec.cells()}
    out = []
    for arch in spec.archs:
        cfg = spec.pretrain_config(probe_cell[arch])
        mode = probe_cell[arch].backprop
        per_arch = [s for a, s in samples.values() if a == arch]
        image = _image_size(spec, probe_cell[arch].corr)
        candidates = [pick_throughput([r for r in rows if r["source"] == source], arch, mode, cfg.precision,
                                      cfg.batch_size, source, spec.kwargs_for(arch), image)
                      for source in dict.fromkeys(r["source"] for r in rows)]
        candidates = [c for c in candidates if c]
        found = next((c for c in candidates if c.same_shape), candidates[0] if candidates else None)
        if found is None:
            have = sorted({f"{r['model']}/{r['mode']}/{r['precision']}" for r in rows})
            raise SweepError(f"--estimate: no throughput for {arch}/{mode} at {cfg.precision} in "
                             f"{', '.join(map(str, throughput_json))} (it has: {', '.join(have)})")
        total = sum(per_arch)
        out.append({"arch": arch, "mode": mode, "precision": cfg.precision, "cells": len(per_arch),
                    "samples_millions": total / 1e6, "samples_per_s": found.samples_per_s,
                    "measured_batch_size": found.batch_size, "sweep_batch_size": cfg.batch_size,
                    "hours": total / found.samples_per_s / 3600, "source": found.source,
                    "same_shape": found.same_shape})
    return out


def format_estimate(spec: SweepSpec, rows: list[dict]) -> str:
    lines = [f"sweep {spec.name}: training time projected from measured throughput "
             f"(training steps only; one cell at a time)",
             f"{'arch':14s} {'mode':9s} {'prec':5s} {'cells':>5s} {'samples (M)':>11s} {'samples/s':>10s} "
             f"{'at bs':>6s} {'hours':>8s}  source"]
    for r in rows:
        lines.append(f"{r['arch']:14s} {r['mode']:9s} {r['precision']:5s} {r['cells']:5d} {r['samples_millions']:11.2f} "
                     f"{r['samples_per_s']:10.1f} {r['measured_batch_size']:6d} {r['hours']:8.1f}  {r['source']}")
    total = sum(r["hours"] for r in rows)
    lines.append(f"total: {total:.1f} h of training ({total / 24:.1f} days) for {sum(r['cells'] for r in rows)} cells")
    shapes = [r["arch"] for r in rows if not r["same_shape"]]
    if shapes:
        lines.append(f"warning: {', '.join(shapes)}: no record at the sweep's model kwargs and image size; the "
                     f"figure above is for another shape (measure this one: revtransfer pretrain --benchmark-steps)")
    mismatched = [r["arch"] for r in rows if r["measured_batch_size"] != r["sweep_batch_size"]]
    if mismatched:
        lines.append(f"note: {', '.join(mismatched)} measured at another batch size than the sweep's "
                     f"({rows[0]['sweep_batch_size']}); throughput grows with batch size until the device is full")
    return "\n".join(lines)
