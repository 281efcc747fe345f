"""Where a ViTDet training iteration spends its time, and proof that a frozen backbone has no
backward: seconds per iteration split into backbone forward / rest of forward / backward /
optimizer step, peak memory, and the number of autograd backward ops that ran inside the backbone
(profiled; attention and native LayerNorm backward only occur there, detectron2's heads use their
own LayerNorm). With ``compare_unfrozen`` the same detector is also timed with a trainable
backbone, so the backward time the frozen one saves is visible. Inputs are synthetic (random
images with a few box+mask instances at the config's padded size), so no dataset is needed; with
``data`` (a COCO dataset: clevr_gen's folder, or ``coco.json`` beside its images) each iteration
instead takes its batch from the config's own training loader (mapper, augmentation, workers), as
detectron2's trainer does, and the wait for it (``data_s``) counts in the iteration's time.
"""
from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from revtransfer.atomic import atomic_write_json
from revtransfer.bench.record import detect_step_record, ratio_summary, records_to_dicts, summarize
from revtransfer.provenance import provenance

from .config import backbone_net, build_config

# Iterations run untimed at the start of each turn with ``data``: a loader prefetches 2 batches.
PREFETCHED = 2
# Backward ops that only the backbone produces (timm attention, native LayerNorm).
_BACKBONE_BACKWARD = ("ScaledDotProductAttention", "scaled_dot_product", "NativeLayerNormBackward",
                      "native_layer_norm_backward")


def synthetic_batch(batch_size: int, size: int, num_classes: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(batch_size):
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        n = 3
        xy = torch.randint(0, size // 2, (n, 2), generator=g).float()
        wh = torch.randint(size // 8, size // 2, (n, 2), generator=g).float()
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        masks = torch.zeros(n, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst = Instances((size, size), gt_boxes=Boxes(boxes), gt_masks=BitMasks(masks),
                         gt_classes=torch.randint(0, num_classes, (n,), generator=g))
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Variant:
    """One detector to time: a config, overrides on it, frozen or trainable backbone."""

    label: str
    config: str
    overrides: list[str] = field(default_factory=list)
    frozen: bool = True


def dataset_paths(data: str | Path) -> tuple[str, str]:
    """(json, images) of a COCO dataset given as clevr_gen's folder (``coco.json`` + ``images.npy``)
    or as its json file (images beside it)."""
    p = Path(data)
    json_file = p / "coco.json" if p.is_dir() else p
    if not json_file.is_file():
        raise FileNotFoundError(f"--data {str(data)!r}: no COCO json there (expected a clevr_gen dataset folder "
                                "with coco.json, or a .json file)")
    return str(json_file), str(json_file.parent)


class _Runner:
    """A built detector with its optimizer, timed one training iteration at a time: the batch (from
    the training loader with ``data``), forward (split at the backbone by hooks), backward,
    optimizer step, under the trainer's autocast."""

    def __init__(self, variant: Variant, batch_size: int, device: str | None, data: str | None = None,
                 image_size: int | None = None):
        from .config import prepare
        from .train_net import build_model, training_precision

        self.variant = variant
        overrides = list(variant.overrides)
        paths = dataset_paths(data) if data else (None, None)
        if data:
            overrides.append(f"dataloader.train.total_batch_size={batch_size}")
        cfg = build_config(variant.config, device=device, train_json=paths[0], train_images=paths[1],
                           image_size=image_size, overrides=overrides)
        if data:
            prepare(cfg)
        backbone_net(cfg.model.backbone).freeze = variant.frozen
        self.cfg, self.device = cfg, str(cfg.train.device)
        self.precision = training_precision(cfg)
        self.amp_dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        self.size = int(cfg.model.backbone.get("square_pad") or 1024)
        self.batch = synthetic_batch(batch_size, self.size, int(cfg.model.roi_heads.num_classes))
        self.loader = iter(instantiate(cfg.dataloader.train)) if data else None
        torch.manual_seed(0)
        self.model = build_model(cfg).train()
        cfg.optimizer.params.model = self.model
        self.optim = instantiate(cfg.optimizer)
        del cfg.optimizer.params.model
        self.net = backbone_net(self.model.backbone)
        self.spans: list[float] = []
        self.net.register_forward_pre_hook(self._stamp)
        self.net.register_forward_hook(self._stamp)
        self.before = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.rows: list[dict] = []

    def _stamp(self, *_):  # a hook returning None leaves inputs and outputs alone
        _sync(self.device)
        self.spans.append(time.perf_counter())

    def step(self) -> dict:
        self.spans.clear()
        _sync(self.device)
        t_data = time.perf_counter()
        batch = next(self.loader) if self.loader is not None else self.batch
        t0 = time.perf_counter()
        # The trainer's autocast (fp16's loss scaler is left out: it costs nothing to time).
        with torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype, enabled=self.precision != "fp32"):
            losses = self.model(batch)
        loss = sum(v.float() for v in losses.values())
        _sync(self.device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(self.device)
        t2 = time.perf_counter()
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        _sync(self.device)
        t3 = time.perf_counter()
        bb = self.spans[1] - self.spans[0]
        parts = {"backbone_forward": bb, "rest_forward": t1 - t0 - bb, "backward": t2 - t1, "optimizer": t3 - t2}
        if self.loader is not None:
            parts["data"] = t0 - t_data
        return {**parts, "total": t3 - t_data}

    def run(self, iters: int, keep: bool = True) -> list[dict]:
        with EventStorage(0):
            rows = [self.step() for _ in range(iters)]
        if keep:
            self.rows += rows
        return rows

    def finish(self) -> dict:
        """Medians over every timed iteration, and (one more iteration, profiled) how many backward
        ops ran inside the backbone: 0 when it is frozen."""
        from torch.profiler import ProfilerActivity, profile

        with EventStorage(0), profile(activities=[ProfilerActivity.CPU]) as prof:
            sum(v.float() for v in self.model(self.batch).values()).backward()
        self.optim.zero_grad(set_to_none=True)
        backbone_bwd = sum(e.count for e in prof.key_averages()
                           if "Backward" in e.key or "backward" in e.key
                           if any(s in e.key for s in _BACKBONE_BACKWARD))
        unchanged = all(torch.equal(self.before[k], v) for k, v in self.net.state_dict().items())
        out = {f"{k}_s": round(statistics.median(r[k] for r in self.rows), 4) for k in self.rows[0]}
        cuda = self.device.startswith("cuda")
        out.update({
            "backbone_backward_ops": int(backbone_bwd),
            "backbone_params_trainable": sum(p.numel() for p in self.net.parameters() if p.requires_grad),
            "backbone_weights_unchanged": bool(unchanged),
            "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda
            else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_memory_kind": "cuda max_memory_allocated" if cuda
            else "process peak RSS so far (cumulative over variants)",
        })
        cache = getattr(self.net, "feature_cache", None)
        if cache is not None:  # hits over every iteration run, warm-up included
            out["feature_cache"] = cache.stats
        return out


def run_bench(variants: list[Variant], out: str, iters: int = 5, warmup: int = 2, batch_size: int = 2,
              device: str | None = None, rounds: int = 1, progress=None, reference: str | None = None,
              data: str | None = None, image_size: int | None = None) -> dict:
    """Time every variant's training iteration, interleaved: each is built and warmed up, then in
    each of ``rounds`` rounds every variant runs ``iters`` iterations, in an order rotated by one per
    round, so a drift of the machine's speed falls on all alike. Records give samples/s min /
    median / max over rounds; ratios (each variant over the reference of the same arch: the variant
    labelled ``...:<reference>``, else the first) are taken within rounds. Written atomically to
    ``out`` as a bench JSON (measure ``detect_step``). With ``data`` batches come from each config's
    training loader on that dataset (module docstring)."""
    if iters < 1 or rounds < 1:
        raise ValueError(f"iters={iters} and rounds={rounds} must be at least 1")
    runners = []
    for v in variants:
        runners.append(_Runner(v, batch_size, device, data, image_size))
        runners[-1].run(warmup, keep=False)
    per_round = [[0.0] * len(runners) for _ in range(rounds)]
    for k in range(rounds):
        for j in range(len(runners)):
            i = (j + k) % len(runners)
            if data:  # what its loader prefetched while the others ran is not this turn's data wait
                runners[i].run(PREFETCHED, keep=False)
            rows = runners[i].run(iters)
            per_round[k][i] = batch_size / statistics.median(r["total"] for r in rows)
            if progress:
                progress(f"round {k + 1}/{rounds} {runners[i].variant.label}: {per_round[k][i]:.2f} images/s")
    records, ratios = [], []
    for i, r in enumerate(runners):
        timing = r.finish()
        arch = backbone_net(r.cfg.model.backbone).model_name
        rates = [per_round[k][i] for k in range(rounds)]
        rec = detect_step_record(arch, "frozen" if r.variant.frozen else "unfrozen", timing, batch_size=batch_size,
                                 device=r.device, precision=r.precision, image_size=r.size, config=r.variant.config,
                                 variant=r.variant.label, overrides=list(r.variant.overrides))
        rec.samples_per_s, rec.samples_per_s_all, rec.samples_per_s_rounds = (
            statistics.median(rates), rates, summarize(rates))
        rec.step_ms_median, rec.rounds = 1e3 * batch_size / rec.samples_per_s, rounds
        records.append(rec)
        same = [j for j, q in enumerate(runners) if backbone_net(q.cfg.model.backbone).model_name == arch]
        first = next((j for j in same if reference and runners[j].variant.label.endswith(f":{reference}")), same[0])
        if first != i:
            ratios.append(ratio_summary(rates, [per_round[k][first] for k in range(rounds)], model=arch,
                                        numerator=r.variant.label, denominator=runners[first].variant.label))
    meta = {
        "measure": "detect_step", "iters": iters, "warmup": warmup, "rounds": rounds, "batch_size": batch_size,
        "inputs": f"training loader on {data}" if data else "synthetic batch (no data loading)",
        "device_name": torch.cuda.get_device_name() if str(runners[0].device).startswith("cuda") else "cpu",
        "torch_threads": torch.get_num_threads(), **provenance(),
    }
    doc = {"meta": meta, "records": records_to_dicts(records), "ratios": ratios}
    atomic_write_json(out, doc)
    return doc
