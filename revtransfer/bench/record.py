"""One record type and one vocabulary for every speed and memory figure the toolkit measures:
``revtransfer bench`` (a model's bare training step), ``pretrain --benchmark-steps`` (the
pretraining loop's step, data path included), ``bench-reconstruction`` (a reversible stack's
input-reconstruction error), ``detect bench`` (a detector's training step) and the GPU plan.

- ``measure`` says what was measured: ``train_step``, ``pretrain_step``, ``detect_step``,
  ``reconstruction``, ``saved_bytes``.
- ``precision`` is spelled one way: ``fp32``, ``bf16``, ``fp16``, ``fp64`` (bf16/fp16: autocast
  over fp32 weights; fp64: float64 weights). :func:`precision_name` reads the older spellings
  (``amp: none``, ``float32``, ``bfloat16``, ...).
- One name per measure: ``samples_per_s`` (median over rounds of each round's median-step rate),
  ``samples_per_s_rounds`` (min / median / max over rounds, :func:`summarize`), ``samples_per_s_all``
  (per round), ``step_ms_median``, ``peak_mem_bytes`` with ``peak_mem_kind`` (what it counts),
  ``activation_bytes`` (and per sample), ``peak_rss_growth_bytes``. Figures that only one measure
  has go to ``extra`` and are written flat beside the rest.
- Ratios between configurations are taken within each round and summarised the same way
  (:func:`ratio_summary`).

Bench JSON files hold ``{"meta": provenance, "records": [...], "ratios": [...]}``; :func:`read_bench_file`
also reads the files written before this vocabulary (``amp``, ``step_time_ms_median``,
``peak_mem_mb``, mode ``vanilla``, detection's ``frozen``/``unfrozen`` layout). No torch here.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
MEASURES = ("train_step", "pretrain_step", "detect_step", "reconstruction", "saved_bytes")
_PRECISION_SPELLINGS = {
    None: "fp32", "none": "fp32", "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "fp64": "fp64", "float64": "fp64", "double": "fp64",
}


def precision_name(value) -> str:
    """The one spelling of a precision (``fp32``, ``bf16``, ``fp16``, ``fp64``) from any older one,
    or a torch dtype."""
    key = str(value).removeprefix("torch.") if value is not None and not isinstance(value, str) else value
    key = key.lower() if isinstance(key, str) else key
    if key not in _PRECISION_SPELLINGS:
        raise ValueError(f"precision {value!r}: choose one of {', '.join(PRECISIONS)}")
    return _PRECISION_SPELLINGS[key]


def summarize(values: Sequence[float]) -> dict:
    """min / median / max: how every figure measured over several rounds is summarised."""
    values = list(values)
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def ratio_summary(top: Sequence[float], bottom: Sequence[float], **labels) -> dict:
    """The ratio of two configurations' per-round figures (``top`` over ``bottom``), round by round,
    then :func:`summarize`d: a ratio is only as noisy as one round. ``labels`` say what is compared
    (``numerator``, ``denominator``, ...)."""
    values = [a / b for a, b in zip(top, bottom)]
    return {**labels, **summarize(values), "rounds": values}


@dataclass
class BenchRecord:
    measure: str                # what was measured (MEASURES)
    model: str
    mode: str = "backprop"      # backprop / reprop / pareprop (a non-reversible model: backprop)
    precision: str = "fp32"
    batch_size: int | None = None
    device: str = "cpu"
    status: str = "ok"          # ok | oom | failed
    samples_per_s: float | None = None
    samples_per_s_rounds: dict | None = None
    samples_per_s_all: list[float] = field(default_factory=list)
    rounds: int = 1
    step_ms_median: float | None = None
    step_ms_all: list[float] = field(default_factory=list)
    peak_mem_bytes: int | None = None
    peak_mem_kind: str | None = None       # e.g. cuda max_memory_allocated, process peak RSS
    activation_bytes: int | None = None    # CUDA: peak minus weights and grads; CPU: saved for backward
    activation_bytes_per_sample: float | None = None
    peak_rss_growth_bytes: int | None = None
    input_shape: list[int] | None = None
    num_params: int | None = None
    reference_for: str | None = None       # the non-reversible reference row of this reversible model
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.precision = precision_name(self.precision)

    def to_dict(self) -> dict:
        """Flat: the fields, then ``extra``'s keys beside them."""
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "extra"}, **d["extra"]}

    @classmethod
    def from_dict(cls, d: dict, measure: str | None = None, precision=None) -> "BenchRecord":
        """A record from its dict, also one written before this vocabulary; keys that are not fields
        land in ``extra``. ``measure`` / ``precision``: what the file says when a record does not."""
        d = dict(d)
        if "amp" in d and "precision" not in d:
            d["precision"] = d.pop("amp")
        d.pop("amp", None)
        if "step_time_ms_median" in d:
            d.setdefault("step_ms_median", d.pop("step_time_ms_median"))
        if d.get("peak_mem_mb") is not None and d.get("peak_mem_bytes") is None:
            d["peak_mem_bytes"] = int(float(d.pop("peak_mem_mb")) * 2**20)
        d.pop("peak_mem_mb", None)
        if d.get("mode") == "vanilla":  # the reference row, before the one vocabulary
            d["mode"] = "backprop"
            d["legacy_reference"] = True
        d.setdefault("precision", precision if precision is not None else "fp32")
        d.setdefault("measure", measure or _guess_measure(d))
        names = {f.name for f in fields(cls)}
        extra = dict(d.pop("extra", None) or {})
        extra.update({k: d.pop(k) for k in list(d) if k not in names})
        return cls(**d, extra=extra)


def _guess_measure(d: dict) -> str:
    if "max_rel_error" in d:
        return "reconstruction"
    if "data_wait_frac" in d or "samples_per_s_loop" in d:
        return "pretrain_step"
    return "train_step"


def records_to_dicts(records: Iterable[BenchRecord], **common) -> list[dict]:
    """Records as a bench file stores them, each with ``common`` keys (e.g. torch version, commit)."""
    return [{**r.to_dict(), **common} for r in records]


def read_bench_file(path: str | Path) -> tuple[dict, list[BenchRecord], list[dict]]:
    """(meta, records, ratios) of any bench JSON the toolkit has written, old layouts included."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a bench JSON (expected an object with records)")
    meta = dict(doc.get("meta") or {})
    if "frozen" in doc and "records" not in doc:  # `detect bench` before the one record type
        return _legacy_detect(doc)
    file_precision = meta.get("precision", meta.get("amp"))
    measure = meta.get("measure")
    records = [BenchRecord.from_dict(r, measure=measure, precision=file_precision) for r in doc.get("records", [])]
    return meta, records, list(doc.get("ratios") or [])


def _legacy_detect(doc: dict) -> tuple[dict, list[BenchRecord], list[dict]]:
    meta = {k: doc[k] for k in ("git_commit", "versions", "date", "config", "overrides") if k in doc}
    records = []
    for variant in ("frozen", "unfrozen"):
        v = doc.get(variant)
        if not v:
            continue
        records.append(detect_step_record(
            doc.get("arch", "?"), variant, v, batch_size=doc.get("batch_size"), device=doc.get("device", "cpu"),
            precision="bf16" if doc.get("amp_bf16") else "fp32", image_size=doc.get("image_size")))
    return meta, records, []


def detect_step_record(arch: str, backbone: str, timing: dict, *, batch_size: int, device: str, precision: str,
                       image_size: int | None, **extra: Any) -> BenchRecord:
    """A ``detect bench`` measurement (``backbone``: frozen or unfrozen) as a record: seconds per
    iteration split into its parts in ``extra``, samples/s from the total."""
    total = timing.get("total_s")
    peak_mb = timing.get("peak_memory_mb")
    parts = {k: v for k, v in timing.items() if k not in ("peak_memory_mb", "peak_memory_kind")}
    return BenchRecord(
        measure="detect_step", model=arch, mode="backprop", precision=precision, batch_size=batch_size,
        device=device, samples_per_s=(batch_size / total) if total and batch_size else None,
        step_ms_median=1e3 * total if total else None,
        peak_mem_bytes=int(peak_mb * 2**20) if peak_mb is not None else None,
        peak_mem_kind=timing.get("peak_memory_kind"),
        input_shape=[batch_size, 3, image_size, image_size] if image_size and batch_size else None,
        extra={"backbone": backbone, **parts, **extra})
