"""Evidence that PaReprop overlaps: kernel concurrency from the profiler, and pareprop/reprop throughput.

PaReprop queues block i-1's recompute on a second CUDA stream while block i's gradients run on the
main one (revtransfer/reversible/schedule.py). Whether that pays shows in two figures, recorded per
model by ``revtransfer.bench.gpu_plan``'s ``overlap`` group:

- the overlap fraction: over a few profiled backward passes, the time during which kernels of two
  or more CUDA streams run at once, as a fraction of the time any kernel runs (the backward's busy
  time). It is computed by :func:`overlap_stats`, a pure function over ``(stream, start, end)``
  intervals (tested on CPU with synthetic ones) from the kernel events of
  :func:`profile_backward_overlap` (CUDA activity; on CPU the same code runs and finds no kernels).
  Reprop runs on one stream, so its fraction is a control that should read 0;
- the pareprop/reprop samples/s ratio at a batch where overlap should pay (the paper's shape:
  hierarchical models, a batch of 33-50% of the largest that fits), measured in interleaved rounds.
  A pareprop slower than reprop is reported (a field and a printed line), never hidden.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import tempfile
from collections import defaultdict
from typing import Iterable

# The overlap group's shape: batch = this fraction of the estimated largest batch that fits...
FRACTION_OF_MAX = 0.4
# ... unless its steps (throughput rounds + profiled passes) would take longer than this:
ALLOWANCE_S = 45.0
ROUNDS, STEPS, WARMUP = 3, 10, 3            # throughput: interleaved rounds of reprop and pareprop
PROFILE_PASSES, PROFILE_WARMUP = 3, 2       # profiled backward passes per mode, after warm-up steps
OVERLAP_MODES = ("reprop", "pareprop")


def steps_at_target() -> int:
    """Training steps the overlap job runs at its chosen batch size (both modes)."""
    return len(OVERLAP_MODES) * (ROUNDS * (STEPS + WARMUP) + PROFILE_PASSES + PROFILE_WARMUP)


# ---------------------------------------------------------------- pure parts (tested on CPU)

def overlap_stats(intervals: Iterable[tuple]) -> dict:
    """Kernel concurrency of ``(stream, start, end)`` intervals (any time unit; a stream is any
    hashable id). ``busy``: time during which at least one kernel runs (the union of all
    intervals); ``concurrent``: time during which kernels of at least two different streams run;
    ``overlap_fraction``: concurrent / busy (None when nothing ran). Kernels overlapping on one
    stream count once. Also the span (first start to last end) and each stream's busy time."""
    per_stream: dict = defaultdict(list)
    for stream, start, end in intervals:
        start, end = float(start), float(end)
        if end > start:
            per_stream[stream].append((start, end))
    stream_busy = {}
    boundaries = []  # (time, +1 / -1, stream) of each stream's merged busy periods
    for stream, spans in per_stream.items():
        spans.sort()
        merged = [list(spans[0])]
        for s, e in spans[1:]:
            if s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        stream_busy[stream] = sum(e - s for s, e in merged)
        for s, e in merged:
            boundaries += [(s, 1, stream), (e, -1, stream)]
    boundaries.sort(key=lambda b: (b[0], b[1]))  # at a tie, ends before starts
    busy = concurrent = 0.0
    active = 0
    previous = None
    for t, delta, _ in boundaries:
        if previous is not None and t > previous:
            if active >= 1:
                busy += t - previous
            if active >= 2:
                concurrent += t - previous
        active += delta
        previous = t
    span = (boundaries[-1][0] - boundaries[0][0]) if boundaries else 0.0
    return {"busy": busy, "concurrent": concurrent, "overlap_fraction": concurrent / busy if busy > 0 else None,
            "span": span, "streams": len(stream_busy), "kernels": sum(len(v) for v in per_stream.values()),
            "stream_busy": {str(k): v for k, v in stream_busy.items()}}


def combine_stats(passes: list[dict]) -> dict:
    """Several profiled passes as one figure: summed concurrent time over summed busy time."""
    busy = sum(p["busy"] for p in passes)
    concurrent = sum(p["concurrent"] for p in passes)
    return {"passes": len(passes), "busy_us": busy, "concurrent_us": concurrent,
            "overlap_fraction": concurrent / busy if busy > 0 else None,
            "overlap_fraction_per_pass": [p["overlap_fraction"] for p in passes],
            "span_us": sum(p["span"] for p in passes),
            "streams": max((p["streams"] for p in passes), default=0),
            "kernels_per_pass": [p["kernels"] for p in passes],
            "stream_busy_us_first_pass": passes[0]["stream_busy"] if passes else {}}


def intervals_from_trace(trace) -> list[tuple]:
    """GPU kernel intervals ``((device, stream), start_us, end_us)`` from a Chrome trace as
    ``torch.profiler``'s ``export_chrome_trace`` writes it (Kineto's format: complete events,
    ``"cat": "kernel"``, the stream in ``args.stream`` or else ``tid``, the device in ``args.device``
    or else ``pid``). Memcpy, memset and annotation events are not kernels and are left out."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    out = []
    for e in events or []:
        if not isinstance(e, dict) or e.get("ph") != "X" or "kernel" not in str(e.get("cat", "")).lower():
            continue
        args = e.get("args") or {}
        try:
            start = float(e["ts"])
            end = start + float(e.get("dur", 0.0))
        except (KeyError, TypeError, ValueError):
            continue
        out.append(((args.get("device", e.get("pid")), args.get("stream", e.get("tid"))), start, end))
    return out


_NOT_KERNELS = ("memcpy", "memset")


def intervals_from_events(events) -> list[tuple]:
    """GPU kernel intervals ``((device, stream), start_us, end_us)`` from ``prof.events()``
    (``FunctionEvent``s): those on a CUDA device, the stream in ``device_resource_id``, times in
    ``time_range`` (microseconds from the trace's start). Read defensively (torch 2.4 to 2.14):
    where the event says its activity type (Kineto's name: ``kernel``, ``gpu_memcpy``, ...), only a
    kernel counts; user annotations, memcpy and memset are left out."""
    out = []
    for e in events or []:
        device_type = getattr(e, "device_type", None)
        if device_type is None or "CUDA" not in str(device_type).upper():
            continue
        if getattr(e, "is_user_annotation", False):
            continue
        activity = getattr(e, "activity_type", None)
        if activity is not None and "kernel" not in str(activity).lower():
            continue
        name = str(getattr(e, "name", "")).lower()
        if activity is None and any(name.startswith(w) for w in _NOT_KERNELS):
            continue
        stream = getattr(e, "device_resource_id", None)
        time_range = getattr(e, "time_range", None)
        if stream is None or time_range is None:
            continue
        out.append(((getattr(e, "device_index", None), stream), float(time_range.start), float(time_range.end)))
    return out


def estimate_max_batch(points: list[tuple[int, float]], available_bytes: float) -> int | None:
    """The largest batch whose activation memory fits in ``available_bytes``, extrapolated linearly
    from two measured ``(batch, activation bytes)`` points; None when they do not grow."""
    (b0, a0), (b1, a1) = sorted(points)[:1] + sorted(points)[-1:]
    if b1 <= b0 or a1 <= a0:
        return None
    per_sample = (a1 - a0) / (b1 - b0)
    return max(int(b1 + (available_bytes - a1) / per_sample), 0)


def choose_batch(max_batch: int | None, seconds_per_sample: float | None, *, fraction: float = FRACTION_OF_MAX,
                 allowance_s: float = ALLOWANCE_S, n_steps: int | None = None, multiple: int = 8,
                 fallback: int = 64, avoid: Iterable[int] = ()) -> dict:
    """The overlap measurement's batch: ``fraction`` of ``max_batch``, lowered where ``n_steps``
    steps at ``seconds_per_sample`` would take longer than ``allowance_s``; a multiple of
    ``multiple``, never one of ``avoid`` (the batch sizes another job of the plan records for the
    same model, so that two records never share a configuration). Says why it is what it is."""
    n_steps = steps_at_target() if n_steps is None else n_steps
    if max_batch is None:
        batch, why = fallback, "no estimate of the largest batch: fallback"
    else:
        batch, why = int(max_batch * fraction), f"{fraction:g} x the estimated largest batch {max_batch}"
    if seconds_per_sample and seconds_per_sample > 0:
        by_time = int(allowance_s / (n_steps * seconds_per_sample))
        if by_time < batch:
            batch, why = by_time, f"capped so that {n_steps} steps take about {allowance_s:g} s (wanted: {why})"
    batch = batch // multiple * multiple if batch >= multiple else max(batch, 1)
    avoid = set(avoid)
    while batch in avoid:
        batch += multiple
    return {"batch_size": batch, "why": why,
            "fraction_of_max": batch / max_batch if max_batch else None}


def throughput_verdict(records: list[dict], model: str, batch_size: int) -> dict | None:
    """pareprop over reprop at ``batch_size`` from bench records (dicts): per round (records hold
    one samples/s per round, ``samples_per_s_all``, the rounds interleaved), then min / median /
    max. ``pareprop_slower_than_reprop`` is set when the median ratio is below 1, with a line that
    says so. None while either mode has no ok record."""
    by_mode = {r["mode"]: r for r in records if r.get("model") == model and r.get("batch_size") == batch_size
               and r.get("status") == "ok" and r.get("mode") in OVERLAP_MODES}
    if set(by_mode) != set(OVERLAP_MODES):
        return None
    rep, pare = by_mode["reprop"], by_mode["pareprop"]
    rounds = [p / r for p, r in zip(pare.get("samples_per_s_all") or [pare["samples_per_s"]],
                                    rep.get("samples_per_s_all") or [rep["samples_per_s"]]) if r]
    ratio = statistics.median(rounds)
    slower = ratio < 1.0
    line = (f"{model} bs={batch_size}: pareprop {pare['samples_per_s']:.1f} vs reprop {rep['samples_per_s']:.1f} "
            f"samples/s, ratio {ratio:.3f} (rounds {min(rounds):.3f}..{max(rounds):.3f})")
    if slower:
        line = "PAREPROP SLOWER THAN REPROP: " + line
    return {"batch_size": batch_size, "reprop_samples_per_s": rep["samples_per_s"],
            "pareprop_samples_per_s": pare["samples_per_s"],
            "pareprop_over_reprop": {"median": ratio, "min": min(rounds), "max": max(rounds), "rounds": rounds},
            "pareprop_slower_than_reprop": slower, "line": line}


# ---------------------------------------------------------------- CUDA parts

def _train_step(model, x, y, amp_dtype, device_type: str, backward: bool = True):
    import torch

    ctx = torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with ctx:
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    if backward:
        loss.backward()
    return loss


def _inputs(model, batch_size: int, device, seq_len):
    import torch

    from revtransfer.bench.throughput import make_inputs

    x = make_inputs(model, batch_size, device, seq_len)
    y = torch.randint(0, max(getattr(model, "num_classes", 2), 1), (batch_size,), device=device)
    return x, y


def _streams(intervals) -> int:
    return len({stream for stream, _, _ in intervals})


def kernel_intervals(prof) -> tuple[list[tuple], str]:
    """Kernel intervals of a finished ``torch.profiler.profile``: from its events, or from its
    exported Chrome trace where the events give none or only one stream (should a torch version
    not put the stream in ``device_resource_id``, a pareprop pass would otherwise read as one
    stream, no overlap); whichever shows more streams wins. Returns the intervals and their source."""
    found, source = [], "function_events"
    try:
        found = intervals_from_events(prof.events())
    except Exception:  # noqa: BLE001 - fall back to the trace file, whatever the event API did
        found = []
    if _streams(found) >= 2:
        return found, source
    fd, path = tempfile.mkstemp(suffix=".json", prefix="revtransfer-trace-")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            traced = intervals_from_trace(json.load(f))
    except Exception:  # noqa: BLE001 - the events' reading stands
        if found:
            return found, source
        raise
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
    if _streams(traced) > _streams(found) or (traced and not found):
        return traced, "chrome_trace"
    return found, source


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_backward_overlap(model, x, y, amp_dtype, passes: int | None = None, warmup: int | None = None) -> dict:
    """Profile ``passes`` backward passes of ``model`` (its backward mode already set): each
    forward runs outside the profiler and is synchronised first, so the recorded kernels are the
    backward's. Returns :func:`combine_stats` of them (times in us). On CUDA it records CUDA
    activity only; elsewhere (to test the mechanics) CPU activity, which has no kernels."""
    from torch.profiler import ProfilerActivity, profile

    passes = PROFILE_PASSES if passes is None else passes
    warmup = PROFILE_WARMUP if warmup is None else warmup
    device = x.device
    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    for _ in range(warmup):
        _train_step(model, x, y, amp_dtype, device.type)
        model.zero_grad(set_to_none=True)
    per_pass, sources = [], set()
    for _ in range(passes):
        loss = _train_step(model, x, y, amp_dtype, device.type, backward=False)
        _synchronize(device)
        with profile(activities=[activity]) as prof:
            loss.backward()
            _synchronize(device)
        del loss
        model.zero_grad(set_to_none=True)
        intervals, source = kernel_intervals(prof)
        sources.add(source)
        per_pass.append(overlap_stats(intervals))
    return dict(combine_stats(per_pass), source=sorted(sources))


def available_activation_bytes(model, device) -> tuple[float | None, int | None]:
    """CUDA: the bytes a training step's activations may take (free memory plus the allocator's
    unused cache, less the grads and a 5% margin) and the device's total; elsewhere (None, None)."""
    import torch

    if device.type != "cuda":
        return None, None
    free, total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return free + cached - grad_bytes - 0.05 * total, total


def probe_and_profile(model_name: str, probe_batches: list[int], device: str, amp: str, *,
                      model_kwargs: dict | None = None, seq_len: int | None = None, avoid=(),
                      have_probe: dict | None = None, have_profile: dict | None = None,
                      on_probe=None) -> tuple[dict, dict]:
    """Probe: pareprop's activation memory at the smallest and largest of ``probe_batches`` gives
    the largest batch that fits (linear extrapolation over the free CUDA memory), the step time at
    the larger one the seconds per sample; :func:`choose_batch` picks the measured batch. Profile:
    reprop and pareprop backward passes at that batch, their kernel overlap. An earlier call's
    probe or profile (``have_*``) is reused; ``on_probe(probe)`` is called as soon as the probe is
    known (to write it to disk). Meant for CUDA; elsewhere it runs the same steps (no memory
    estimate: the largest probe batch; no kernels: no overlap figure), to test the mechanics."""
    import torch

    from revtransfer.bench.throughput import AMP_DTYPES, bench_one
    from revtransfer.models import create_model

    dev = torch.device(device)
    torch.manual_seed(0)
    model = create_model(model_name, **(model_kwargs or {})).to(dev)
    try:
        probe = have_probe
        if not probe:
            points, seconds_per_sample = [], None
            for b in sorted(probe_batches)[:1] + sorted(probe_batches)[-1:]:
                rec = bench_one(model, model_name, "pareprop", b, 2, 1, dev, amp, seq_len)
                if rec.status != "ok":
                    break
                points.append((b, float(rec.activation_bytes)))
                # at the larger probe batch the device is busier: a truer (still high) time per sample
                seconds_per_sample = rec.step_ms_median / 1e3 / b
            model.zero_grad(set_to_none=True)
            available, total = available_activation_bytes(model, dev)
            max_batch = estimate_max_batch(points, available) if len(points) == 2 and available else None
            probe = dict(choose_batch(max_batch, seconds_per_sample, avoid=avoid,
                                      fallback=max([b for b, _ in points] or [min(probe_batches)])),
                         points=points, seconds_per_sample=seconds_per_sample, max_batch_estimate=max_batch,
                         available_bytes=available, total_bytes=total, mode="pareprop")
            if available is None:
                probe["why"] = f"off CUDA: no memory estimate, the largest probe batch that ran ({probe['why']})"
            if on_probe:
                on_probe(probe)
        profile = have_profile
        if not profile:
            x, y = _inputs(model, probe["batch_size"], dev, seq_len)
            profile = {"batch_size": probe["batch_size"]}
            for mode in OVERLAP_MODES:
                model.set_backprop(mode)
                model.train()
                profile[mode] = profile_backward_overlap(model, x, y, AMP_DTYPES[amp])
            if dev.type != "cuda":
                profile["note"] = "off CUDA: no kernels, so no overlap figure"
            del x, y
        return probe, profile
    finally:
        model.zero_grad(set_to_none=True)
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def fraction_line(model: str, profile: dict) -> str:
    parts = []
    for mode in OVERLAP_MODES:
        f = (profile.get(mode) or {}).get("overlap_fraction")
        parts.append(f"{mode} {'n/a' if f is None or (isinstance(f, float) and math.isnan(f)) else f'{f:.3f}'}")
    return (f"{model} bs={profile.get('batch_size')}: kernels of two streams at once, as a fraction of the "
            f"backward's busy time: {', '.join(parts)}")
