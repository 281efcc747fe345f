"""Where a ViTDet training iteration spends its time, and proof that a frozen backbone has no
backward: seconds per iteration split into backbone forward / rest of forward / backward /
optimizer step, peak memory, and the number of autograd backward ops that ran inside the backbone
(profiled; attention and native LayerNorm backward only occur there, detectron2's heads use their
own LayerNorm). With ``compare_unfrozen`` the same detector is also timed with a trainable
backbone, so the backward time the frozen one saves is visible. Inputs are synthetic (random
images with a few box+mask instances at the config's padded size), so no dataset is needed.
"""
from __future__ import annotations

import resource
import statistics
import time
import torch
from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from revtransfer.atomic import atomic_write_json
from revtransfer.bench.record import detect_step_record, records_to_dicts
from revtransfer.provenance import git_commit, library_versions, utc_now

from .config import backbone_net, build_config

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


def _time_variant(cfg, batch, iters: int, warmup: int, device: str, amp: bool) -> dict:
    model = instantiate(cfg.model).to(device).train()
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    del cfg.optimizer.params.model
    net = backbone_net(model.backbone)
    spans: list[float] = []

    def stamp(*_):  # a hook returning None leaves inputs and outputs alone
        _sync(device)
        spans.append(time.perf_counter())

    net.register_forward_pre_hook(stamp)
    net.register_forward_hook(stamp)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    rows = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with EventStorage(0):
        for i in range(warmup + iters):
            spans.clear()
            _sync(device)
            t0 = time.perf_counter()
            # bf16 autocast stands in for the trainer's fp16 AMP (no loss scaler needed for timing).
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
                losses = model(batch)
            loss = sum(losses.values())
            _sync(device)
            t1 = time.perf_counter()
            loss.backward()
            _sync(device)
            t2 = time.perf_counter()
            optim.step()
            optim.zero_grad(set_to_none=True)
            _sync(device)
            t3 = time.perf_counter()
            if i >= warmup:
                bb = spans[1] - spans[0]
                rows.append({"backbone_forward": bb, "rest_forward": t1 - t0 - bb, "backward": t2 - t1,
                             "optimizer": t3 - t2, "total": t3 - t0})
        # One more iteration under the profiler: which backward ops ran inside the backbone?
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sum(model(batch).values()).backward()
        optim.zero_grad(set_to_none=True)
    backbone_bwd = sum(e.count for e in prof.key_averages()
                       if "Backward" in e.key or "backward" in e.key
                       if any(s in e.key for s in _BACKBONE_BACKWARD))
    unchanged = all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    out = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    out = {f"{k}_s": round(v, 4) for k, v in out.items()}
    out.update({
        "backbone_backward_ops": int(backbone_bwd),
        "backbone_params_trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "backbone_weights_unchanged": bool(unchanged),
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda")
        else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_memory_kind": "cuda max_memory_allocated" if device.startswith("cuda")
        else "process peak RSS so far (cumulative over variants)",
    })
    return out


def run_bench(config: str, out: str, iters: int = 5, warmup: int = 2, batch_size: int = 2,
              device: str | None = None, compare_unfrozen: bool = True, overrides=()) -> dict:
    cfg = build_config(config, device=device, overrides=list(overrides))
    device = str(cfg.train.device)
    amp = bool(cfg.train.amp.enabled) and device.startswith("cuda")
    size = int(cfg.model.backbone.get("square_pad") or 1024)
    batch = synthetic_batch(batch_size, size, int(cfg.model.roi_heads.num_classes))
    arch = backbone_net(cfg.model.backbone).model_name
    meta = {
        "measure": "detect_step", "config": config, "image_size": size, "iters": iters, "warmup": warmup,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch_threads": torch.get_num_threads(), "overrides": list(overrides),
        "git_commit": git_commit(), "versions": library_versions(), "date": utc_now(),
    }
    variants = ["frozen"] + (["unfrozen"] if compare_unfrozen else [])
    records = []
    for variant in variants:
        backbone_net(cfg.model.backbone).freeze = variant == "frozen"
        torch.manual_seed(0)
        timing = _time_variant(cfg, batch, iters, warmup, device, amp)
        records.append(detect_step_record(arch, variant, timing, batch_size=batch_size, device=device,
                                          precision="bf16" if amp else "fp32", image_size=size, config=config))
    doc = {"meta": meta, "records": records_to_dicts(records)}
    atomic_write_json(out, doc)
    return doc
