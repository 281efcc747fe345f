"""Training-step throughput and memory of a model under each backward mode.

A step is forward + cross-entropy on random labels + backward (the optimizer update is the same
for every mode and is left out so the modes' difference is not diluted). Throughput is the median
over timed steps after warm-up. CUDA: timed with events; memory from ``max_memory_allocated``,
activation memory = peak during the step minus the weights and their grads. CPU: wall clock;
memory as the bytes autograd saves for backward (one step, saved_tensors_hooks) and the process's
peak RSS growth during the timed steps (sampled).
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import threading
import time

import torch
from torch import nn

from revtransfer.models import create_model, is_reversible

from .record import BenchRecord, precision_name, ratio_summary, summarize

# The non-reversible model of the same size, benchmarked as a reference row.
REFERENCE_MODELS = {
    "revvit_micro": "vit_micro",
    "revvit_small": "vit_small_patch16_224",
    "revvit_base": "vit_base_patch16_224",
    "revvit_large": "vit_large_patch16_224",
    "revswin_tiny": "swin_tiny_patch4_window7_224",
    "revswin_small": "swin_small_patch4_window7_224",
    "revswin_base": "swin_base_patch4_window7_224",
    "revmvit_tiny": "mvitv2_tiny",
    "revmvit_base": "mvitv2_base",
}

# Model kwargs that only reversible models take; the reference row gets the others.
_REVERSIBLE_ONLY_KWARGS = {"backprop", "fusion", "transition_fusion", "keep_last_activations"}


def _reference_kwargs(model_kwargs: dict) -> dict:
    kwargs = {k: v for k, v in model_kwargs.items() if k not in _REVERSIBLE_ONLY_KWARGS}
    kwargs.setdefault("drop_path_rate", 0.0)  # as ours (timm's Swin defaults to 0.1)
    return kwargs


# Autocast dtype of each precision of a bench record (fp32: none). "none" is the older spelling.
AMP_DTYPES = {"fp32": None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_inputs(model: nn.Module, batch_size: int, device, seq_len: int | None = None):
    """Random inputs of the model's expected shape: images, or token ids for language models."""
    if getattr(model, "input_kind", "image") == "tokens":
        if seq_len is None:
            raise ValueError(f"{type(model).__name__} takes token ids: give --seq-len")
        return torch.randint(0, model.vocab_size, (batch_size, seq_len), device=device)
    return torch.randn(batch_size, *image_input_size(model), device=device)


def image_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model was built for (its kwargs may differ from its pretrained cfg)."""
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "img_size", None) is not None:
        return (embed.proj.in_channels, *embed.img_size)
    return tuple(model.pretrained_cfg["input_size"])


class _PeakRSS:
    """Samples the process's resident set size on a thread; peak growth over the baseline."""

    def __init__(self, interval=0.002):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.baseline = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def _saved_bytes(model, step) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen.setdefault(s.data_ptr(), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step(backward=False)
    loss.backward()
    return sum(seen.values())


# Failures that mean "this batch size does not fit", raised as plain RuntimeErrors by cuBLAS/cuDNN
# when their workspace cannot be allocated, besides the caching allocator's OutOfMemoryError.
_OUT_OF_MEMORY_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                           "CUBLAS_STATUS_NOT_INITIALIZED", "CUDNN_STATUS_NOT_INITIALIZED", "workspace")


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and any(m in str(err) for m in _OUT_OF_MEMORY_MESSAGES))


def bench_one(model: nn.Module, name: str, mode: str, batch_size: int, steps: int, warmup: int, device: torch.device,
              precision: str = "fp32", seq_len: int | None = None) -> BenchRecord:
    if is_reversible(model):
        model.set_backprop(mode)
    model.train()
    x = make_inputs(model, batch_size, device, seq_len)
    num_classes = max(getattr(model, "num_classes", 2), 1)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    precision = precision_name(precision)
    if precision not in AMP_DTYPES:
        raise ValueError(f"precision {precision!r}: the training-step benchmark runs fp32 or autocast "
                         f"({', '.join(p for p in AMP_DTYPES if p != 'none')})")
    dtype = AMP_DTYPES[precision]
    rec = BenchRecord("train_step", name, mode, precision, batch_size, str(device), input_shape=list(x.shape),
                      num_params=sum(p.numel() for p in model.parameters()),
                      peak_mem_kind="cuda max_memory_allocated" if device.type == "cuda" else None)

    def step(backward=True):
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        if backward:
            loss.backward()
        return loss

    cuda = device.type == "cuda"
    try:
        for _ in range(warmup):
            step()
        # Grads start as None each step, as in a training loop with zero_grad(set_to_none=True):
        # autograd then adopts the reversible stack's returned grads as .grad without a copy.
        model.zero_grad(set_to_none=True)
        times = []
        if cuda:
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
            for start, end in events:
                start.record()
                step()
                end.record()
                model.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            times = [s.elapsed_time(e) for s, e in events]
            rec.peak_mem_bytes = torch.cuda.max_memory_allocated(device)
            grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
            rec.activation_bytes = rec.peak_mem_bytes - before - grad_bytes
        else:
            with _PeakRSS() as rss:
                for _ in range(steps):
                    t0 = time.perf_counter()
                    step()
                    times.append((time.perf_counter() - t0) * 1e3)
                    model.zero_grad(set_to_none=True)
            rec.peak_rss_growth_bytes = rss.growth
            rec.activation_bytes = _saved_bytes(model, step)
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        rec.status = "oom"
        rec.error = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.empty_cache()
        return rec
    rec.step_ms_all = [round(t, 4) for t in times]
    rec.step_ms_median = statistics.median(times)
    rec.samples_per_s = batch_size / (rec.step_ms_median / 1e3)
    rec.activation_bytes_per_sample = rec.activation_bytes / batch_size
    return rec


class _Predictor:
    """Guesses how long a (mode, batch size) measurement will take from those already made: the
    longest one at that batch size in another mode, or the mode's last one scaled by batch size."""

    def __init__(self):
        self.by_batch: dict[int, float] = {}
        self.last: tuple[int, float] | None = None

    def add(self, batch_size: int, seconds: float) -> None:
        self.by_batch[batch_size] = max(self.by_batch.get(batch_size, 0.0), seconds)
        self.last = (batch_size, seconds)

    def __call__(self, batch_size: int) -> float:
        guess = self.by_batch.get(batch_size, 0.0)
        if self.last is not None:
            guess = max(guess, self.last[1] * batch_size / self.last[0])
        return guess


def run_benchmark(model_name: str, modes, batch_sizes, steps: int = 10, warmup: int = 3, device="cpu",
                  precision: str = "fp32", reference: str | None = "auto", model_kwargs: dict | None = None,
                  seq_len: int | None = None, progress=None, deadline: float | None = None, done=(),
                  clock=time.monotonic, rounds: int = 1):
    """Benchmark ``model_name`` in each mode at each batch size (a mode stops at its first OOM),
    plus the non-reversible reference model in its only mode (backprop; ``reference_for`` set).

    ``rounds``: every configuration (model, mode, batch size) is measured once per round, the rounds
    rotating the order, so that the drift of a shared machine falls on all configurations alike;
    a record's ``samples_per_s`` is the median over rounds (``samples_per_s_all`` per round, for
    ratios within a round: :func:`round_ratios`). ``done``: records (dicts) of an earlier,
    interrupted run, not measured again. ``deadline`` (on ``clock``): no measurement is started
    that would likely end after it. Returns ``(records, complete)``: the new records, and whether
    every configuration was covered."""
    device = torch.device(device)
    model_kwargs = model_kwargs or {}
    precision = precision_name(precision)
    if precision not in AMP_DTYPES:
        raise ValueError(f"precision {precision!r}: choose one of fp32, bf16, fp16")
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be at least 1")
    if reference == "auto":
        reference = REFERENCE_MODELS.get(model_name)
    jobs = [(model_name, m, False) for m in modes]
    if reference:
        jobs.append((reference, "backprop", True))
    earlier = {(r["model"], r["mode"], r["batch_size"]): r["status"] for r in done}
    configs = []  # (name, mode, is_reference, batch size) still to measure, mode-major
    for name, mode, is_reference in jobs:
        for bs in batch_sizes:
            status = earlier.get((name, mode, bs))
            if status == "oom":
                break
            if status is None:
                configs.append((name, mode, is_reference, bs))
    models: dict[str, nn.Module] = {}
    measured: dict[tuple, list[BenchRecord]] = {}
    too_big: dict[tuple, int] = {}  # (name, mode) -> smallest batch size that did not fit
    predict = _Predictor()
    for k in range(rounds):
        for name, mode, is_reference, bs in configs[k % len(configs):] + configs[:k % len(configs)] if configs else []:
            if bs >= too_big.get((name, mode), bs + 1):
                continue
            if deadline is not None and clock() + predict(bs) > deadline:
                return _merge(measured, rounds), False
            started = clock()
            if name not in models:
                torch.manual_seed(0)
                kwargs = _reference_kwargs(model_kwargs) if is_reference else model_kwargs
                models[name] = create_model(name, **kwargs).to(device)
                if not is_reversible(models[name]) and not is_reference and mode != "backprop":
                    raise ValueError(f"{name} is not reversible: it has no backward mode {mode!r}")
            rec = bench_one(models[name], name, mode, bs, steps, warmup, device, precision, seq_len)
            if is_reference:
                rec.reference_for = model_name
            predict.add(bs, clock() - started)  # the first one of a model includes building it
            measured.setdefault((name, mode, bs), []).append(rec)
            if rec.status == "oom":
                too_big[(name, mode)] = bs
            if progress and (k == rounds - 1 or rec.status == "oom"):
                progress(_merge({(name, mode, bs): measured[(name, mode, bs)]}, rounds)[0])
    return _merge(measured, rounds), True


def _merge(measured: dict, rounds: int) -> list[BenchRecord]:
    """One record per configuration: the first round's (memory), with the step times of all
    rounds and the throughput's median over rounds."""
    out = []
    for recs in measured.values():
        first = dataclasses.replace(recs[0])
        ok = [r for r in recs if r.status == "ok"]
        if first.status == "ok" and ok:
            first.rounds = len(ok)
            first.step_ms_all = [t for r in ok for t in r.step_ms_all]
            first.samples_per_s_all = [r.samples_per_s for r in ok]
            rates = first.samples_per_s_all
            first.samples_per_s = statistics.median(rates)
            first.step_ms_median = first.batch_size / first.samples_per_s * 1e3
            first.samples_per_s_rounds = summarize(rates)
        out.append(first)
    return out


def round_ratios(records) -> list[dict]:
    """Throughput ratios taken within each round, then min / median / max over rounds: each mode
    over each other mode of the same model, and each mode over the reference, per batch size."""
    ok = [r for r in records if r.status == "ok" and r.samples_per_s_all]
    out = []
    for a in ok:
        for b in ok:
            same_model = a.model == b.model and a.mode != b.mode and BACKPROP_ORDER.index(a.mode) > BACKPROP_ORDER.index(b.mode)
            over_reference = b.reference_for == a.model
            if a.batch_size != b.batch_size or not (same_model or over_reference):
                continue
            out.append(ratio_summary(a.samples_per_s_all, b.samples_per_s_all, numerator=f"{a.model} {a.mode}",
                                     denominator=f"{b.model} {b.mode}", batch_size=a.batch_size))
    return out


BACKPROP_ORDER = ("backprop", "reprop", "pareprop")


def format_table(records) -> str:
    head = f"{'model':<28} {'mode':<9} {'batch':>5} {'samples/s':>10} {'ms/step':>9} {'act MB/sample':>13} {'peak MB':>9}"
    lines = [head, "-" * len(head)]
    for r in records:
        if r.status != "ok":
            lines.append(f"{r.model:<28} {r.mode:<9} {r.batch_size:>5} {'OOM':>10}")
            continue
        peak = r.peak_mem_bytes if r.peak_mem_bytes is not None else r.peak_rss_growth_bytes
        lines.append(f"{r.model:<28} {r.mode:<9} {r.batch_size:>5} {r.samples_per_s:>10.1f} {r.step_ms_median:>9.2f} "
                     f"{r.activation_bytes_per_sample / 2**20:>13.3f} {peak / 2**20:>9.1f}")
    return "\n".join(lines)
