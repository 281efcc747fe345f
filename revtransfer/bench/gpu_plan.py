"""The paper's GPU comparison, for a machine with a CUDA device, in two calls that each fit a
10-minute command with room to spare:

    PYTHONPATH=. python3 -m revtransfer.bench.gpu_plan --call check   --out $OUT --done reports/bench/gpu --time-budget-s 180
    PYTHONPATH=. python3 -m revtransfer.bench.gpu_plan --call figures --out $OUT --done reports/bench/gpu --time-budget-s 300

``--call check``: the CUDA correctness checks, each written to disk the moment it finishes:
pareprop and reprop gradients vs backprop's for every family (revvit, revswin, revmvit, revroberta
at tiny sizes, dropout and drop path on, odd and even depths) in float64 and under bf16 autocast;
activation memory flat in depth; the reconstruction error; and the tests marked ``cuda``, run by
pytest in a subprocess (junit XML next to the plan file, its summary in it). PyTorch's
"AccumulateGrad node's stream does not match" warning fails a check: every check counts them
(``stream_mismatch_warnings``, with ``torch.set_warn_always`` on so that none is swallowed as a
repeat), direct evidence that the per-lane parameter aliases keep autograd off the other stream.

``--call figures``: throughput and peak memory vs batch size, backprop / reprop / pareprop, through
the same code as ``revtransfer bench``: first the study's micro models, then the ``overlap`` group
(the evidence that PaReprop overlaps, :mod:`revtransfer.bench.overlap`: pareprop/reprop samples/s at
a batch of ~40% of the largest that fits for revswin/revmvit (and revvit_base), and the fraction of
the backward's busy time in which kernels of both streams run, from the profiler), then ViT, Swin,
RoBERTa and MViT, each family at two sizes plus the non-reversible reference.

Needs only torch and timm (no click); pytest for the ``cuda`` tests (recorded as skipped where it
is missing). Device time is scarce, a call has a hard timeout and only a few files come back, so:
- each call writes one file, ``{device}_gpu_plan_{call}.json`` (``{device}_gpu_plan.json`` for
  ``--call all``), rewritten atomically after every check and every measurement, so a call killed
  at any point keeps everything that finished; its ``records`` read as a bench JSON;
- a check or measurement that raises is recorded (error type, message, short traceback) and the
  next one runs; a crashed check is run again by the next call, one that finished is not;
- the budget is explicit and counts from the process's start (imports and CUDA start-up
  included); no job, check or measurement starts that would likely overrun it;
- what an earlier call measured (the plan files in ``--done`` and ``--out``) is not measured again:
  re-running the same command continues the plan where it stopped.
A batch size that does not fit (the allocator's OOM, or a cuBLAS/cuDNN workspace failure) is
recorded as ``oom`` and ends that mode; the plan goes on.
"""
from __future__ import annotations

import time

now = time.monotonic
_STARTED = now()  # the budget counts from here: imports and CUDA start-up are part of it

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

MODES = ["backprop", "reprop", "pareprop"]

# (job name, model, batch sizes, extra kwargs), in the order they run
PLAN = {
    "check": [("checks", None, [], {})],
    # The CLEVR study's backbones at the paper preset's shape (80x80, patch 5, dim 256, depth 4) and
    # batch: the measured throughput that `revtransfer sweep paper --estimate` projects GPU time from.
    "study": [("revvit_micro_paper", "revvit_micro", [64, 256], {"model_kwargs": {"num_classes": 2}})],
    # Does pareprop overlap? The batch sizes are the memory probe's (the measured batch is chosen
    # from them, revtransfer.bench.overlap); hierarchical models first, as in the paper.
    "overlap": [("overlap_revswin_tiny", "revswin_tiny", [16, 128], {"overlap": True}),
                ("overlap_revmvit_tiny", "revmvit_tiny", [16, 128], {"overlap": True}),
                ("overlap_revvit_base", "revvit_base", [16, 128], {"overlap": True})],
    "vit": [("revvit_base", "revvit_base", [8, 16, 32, 64, 128, 256], {}),
            ("revvit_large", "revvit_large", [8, 16, 32, 64, 128], {})],
    "swin": [("revswin_tiny", "revswin_tiny", [16, 32, 64, 128, 256], {}),
             ("revswin_base", "revswin_base", [8, 16, 32, 64, 128], {})],
    "roberta": [("revroberta_base_seq512", "revroberta_base", [4, 8, 16, 32, 64], {"seq_len": 512}),
                ("revroberta_large_seq512", "revroberta_large", [4, 8, 16, 32], {"seq_len": 512})],
    "mvit": [("revmvit_tiny", "revmvit_tiny", [16, 32, 64, 128], {}),
             ("revmvit_base", "revmvit_base", [8, 16, 32, 64], {})],
}
CALLS = ("check", "figures", "all")

CHECK_DEPTHS = (1, 2, 3, 6)
BF16_RTOL = 5e-2  # bf16 rounds the reconstructed inputs: pass mark for its gradient check
FLOAT64_RTOL = 1e-10
# The hierarchical models' bf16 pass mark: their reconstruction runs through pooled attention and
# stage transitions in bf16, and a LayerNorm weight's grad sums the rounding over every token (on
# CPU, bf16 autocast: revmvit's worst tensor 0.052, revswin's 0.016). The value is recorded either way.
BF16_RTOLS = {"revswin": 0.1, "revmvit": 0.1}

# The gradient checks' tiny models: dropout and drop path on, odd and even depths (per stage for
# the hierarchical ones). ``zero_by_symmetry``: parameters whose exact gradient is 0 (a LayerNorm
# bias on MViT's keys shifts every score of a query alike), compared against the model's largest
# gradient instead of their own (rounding noise).
GRAD_FAMILIES = {
    "revvit": {"model": "revvit_micro", "input": "image",
               "kwargs": dict(img_size=32, patch_size=4, embed_dim=64, num_heads=4, num_classes=5,
                              proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2),
               "configs": [{"depth": d} for d in CHECK_DEPTHS]},
    "revswin": {"model": "revswin_tiny", "input": "image",
                "kwargs": dict(img_size=32, patch_size=4, embed_dim=16, num_classes=5, drop_rate=0.1,
                               proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2),
                # odd then even stage with shifted, masked windows; one odd stage
                "configs": [{"depths": (1, 2), "num_heads": (2, 4), "window_size": 2},
                            {"depths": (3,), "num_heads": (2,), "window_size": 4}]},
    "revmvit": {"model": "revmvit_tiny", "input": "image",
                "kwargs": dict(img_size=32, embed_dim=16, num_heads=1, num_classes=5, drop_rate=0.1, drop_path_rate=0.3),
                "configs": [{"depths": (1, 2)}, {"depths": (2, 3)}],
                "zero_by_symmetry": ("attn.norm_k.bias",)},
    "revroberta": {"model": "revroberta_base", "input": "tokens",
                   "kwargs": dict(vocab_size=97, max_position_embeddings=40, embed_dim=32, num_heads=4, num_classes=3,
                                  hidden_dropout=0.1, attn_dropout=0.1, drop_path_rate=0.2),
                   "configs": [{"depth": 1}, {"depth": 2}, {"depth": 3}]},
}
RECONSTRUCTION = ("revvit_base", (4, 8, 16, 32, 64), {})  # model, depths, model kwargs
STREAM_MISMATCH = "stream does not match"  # in PyTorch's "The AccumulateGrad node's stream does not match ..."
PYTEST_GUESS_S = 45.0  # what the cuda tests' subprocess is expected to take (its start-up included)
OVERLAP_GUESS_S = 60.0  # an overlap job: probe, profile and throughput rounds (overlap.ALLOWANCE_S of steps)


def plan_file(out: Path, tag: str, call: str = "all") -> Path:
    return out / (f"{tag}_gpu_plan.json" if call == "all" else f"{tag}_gpu_plan_{call}.json")


def call_groups(call: str) -> list[str]:
    """The plan's groups a call runs: ``check`` the checks, ``figures`` every measurement group."""
    if call == "check":
        return [g for g in PLAN if g == "check"]
    if call == "figures":
        return [g for g in PLAN if g != "check"]
    return list(PLAN)


def load_done(tag: str, dirs: list[Path]) -> dict[str, dict]:
    """What earlier calls measured on this kind of device, by job: ``{"complete", "records"}`` (and
    ``"checks"`` for the check job, other keys of a job as written), merged over the plan files of
    every call (``{tag}_gpu_plan*.json``) in ``dirs``. A check that finished beats one that raised."""
    jobs: dict[str, dict] = {}

    def merge(name: str, loaded: dict):
        job = jobs.setdefault(name, {"complete": False, "records": []})
        seen = {_config(r) for r in job["records"]}
        job["records"] += [r for r in loaded.get("records", []) if _config(r) not in seen]
        job["complete"] = job["complete"] or bool(loaded.get("complete", False))
        checks = job.setdefault("checks", {}) if loaded.get("checks") else None
        for k, v in (loaded.get("checks") or {}).items():
            if k not in checks or _is_error(checks[k]):
                checks[k] = v
        for k, v in loaded.items():
            if k not in ("complete", "records", "checks", "error"):
                job.setdefault(k, v)

    for d in dirs:
        for f in sorted(Path(d).glob(f"{tag}_gpu_plan*.json")) if Path(d).is_dir() else []:
            for name, job in json.loads(f.read_text()).get("jobs", {}).items():
                merge(name, job)
    return jobs


def _is_error(entry) -> bool:
    return isinstance(entry, dict) and entry.get("status") == "error"


def _config(record: dict) -> tuple:
    return record.get("model"), record.get("mode"), record.get("batch_size"), record.get("depth")


def jobs_to_run(groups: list[str], done: dict[str, dict]) -> list[tuple]:
    """The plan's jobs for ``groups`` that no earlier call completed."""
    return [job for group in groups for job in PLAN[group] if not done.get(job[0], {}).get("complete")]


def should_start(elapsed_s: float, longest_s: float, budget_s: float) -> bool:
    """Start another job only if a step as long as the longest so far still fits in the budget."""
    return elapsed_s + longest_s <= budget_s


def failure(err: BaseException, frames: int = 6) -> dict:
    """An exception as it is recorded: type, message, the last ``frames`` frames of its traceback."""
    tb = traceback.format_exception(type(err), err, err.__traceback__)
    short = "".join(tb[:1] + tb[1:-1][-frames:] + tb[-1:])
    return {"type": type(err).__name__, "message": str(err)[:2000], "traceback": short[-4000:]}


@contextlib.contextmanager
def count_warnings():
    """Record every warning raised inside (``torch.set_warn_always`` on, so a C++ warning-once
    fires each time; autograd replays its engine threads' warnings on the calling thread when a
    backward ends). Yields a dict filled on exit: ``stream_mismatch`` (PyTorch's AccumulateGrad
    stream-mismatch warnings) and up to 5 ``other`` distinct messages."""
    import torch

    seen = {"stream_mismatch": 0, "other": []}
    was = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    enable = getattr(getattr(torch.autograd, "graph", None), "set_warn_on_accumulate_grad_stream_mismatch", None)
    if callable(enable):  # torch >= 2.10: make sure the warning is on
        enable(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield seen
            finally:
                for w in caught:
                    text = str(w.message)
                    if STREAM_MISMATCH in text:
                        seen["stream_mismatch"] += 1
                    elif len(seen["other"]) < 5 and text[:300] not in seen["other"]:
                        seen["other"].append(text[:300])
    finally:
        torch.set_warn_always(was)


# ---------------------------------------------------------------- the checks

def _grad_error(got: dict, ref: dict, zero_by_symmetry=()) -> tuple[float, str | None]:
    """max over tensors of max|a - b| / max|b| (``zero_by_symmetry`` ones over the largest grad of
    all), and the worst tensor's name; a grad present in one run and not the other, or a NaN,
    counts as an infinite error."""
    present = [b for b in ref.values() if b is not None]
    scale = max((b.abs().max().item() for b in present), default=0.0)
    worst, worst_name = 0.0, None
    for name in ref.keys() | got.keys():
        a, b = got.get(name), ref.get(name)
        if a is None and b is None:
            continue
        if a is None or b is None:
            return float("inf"), name
        diff = (a.double() - b.double()).abs().max().item()
        denom = scale if name.endswith(tuple(zero_by_symmetry)) else b.abs().max().item()
        err = diff / max(denom, 1e-30)
        if err != err:  # NaN in a grad: never a pass
            return float("inf"), name
        if err > worst or worst_name is None:
            worst, worst_name = err, name
    return worst, worst_name


def _label(config: dict) -> str:
    if "depth" in config:
        return str(config["depth"])
    return "-".join(map(str, config["depths"]))


def _check_inputs(spec: dict, model, device, dtype):
    import torch

    n_classes = spec["kwargs"]["num_classes"]
    batch = 4 if spec["input"] == "image" else 3
    y = torch.arange(batch, device=device) % n_classes
    if spec["input"] == "tokens":
        g = torch.Generator().manual_seed(7)
        ids = torch.randint(3, model.vocab_size, (batch, 12), generator=g)
        ids[:, 0] = 0
        mask = torch.ones(batch, 12, dtype=torch.long)
        ids[0, 8:], mask[0, 8:] = 1, 0  # a padded row: the mask is a side input of the stacks
        return (ids.to(device), mask.to(device)), y
    size = spec["kwargs"].get("img_size", 32)
    return (torch.randn(batch, 3, size, size, dtype=dtype, device=device),), y


def gradient_check(device: str = "cuda", amp: str = "none", family: str = "revvit", detail: dict | None = None) -> dict:
    """pareprop and reprop gradients (every parameter and the input) vs backprop's on the device,
    dropout and drop path on, the RNG reseeded before each run: in float64 (math attention) with
    ``amp="none"``, or in float32 under bf16 autocast (fused attention and its dropout) with
    ``amp="bf16"``. Returns ``{"depth<d>_<mode>_max_rel_error": error}`` per configuration (``<d>``
    the depth, or the stage depths joined by '-'); ``detail`` gets the worst tensor of each."""
    import torch

    from revtransfer.models import create_model

    spec = GRAD_FAMILIES[family]
    dtype = torch.float64 if amp == "none" else torch.float32
    device_type = torch.device(device).type
    out = {}
    for config in spec["configs"]:
        torch.manual_seed(0)
        m = create_model(spec["model"], **dict(spec["kwargs"], **config)).to(device, dtype).train()
        inputs, y = _check_inputs(spec, m, device, dtype)
        grads = {}
        for mode in MODES:
            m.set_backprop(mode)
            m.zero_grad(set_to_none=True)
            leaves = tuple(t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs)
            torch.manual_seed(1)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                logits = m(*leaves)
            torch.nn.functional.cross_entropy(logits.float(), y).backward()
            got = {n: p.grad for n, p in m.named_parameters()}
            got.update({f"input{i}": t.grad for i, t in enumerate(leaves) if t.is_floating_point()})
            grads[mode] = got
        for mode in ("reprop", "pareprop"):
            err, worst = _grad_error(grads[mode], grads["backprop"], spec.get("zero_by_symmetry", ()))
            key = f"depth{_label(config)}_{mode}_max_rel_error"
            out[key] = err
            if detail is not None:
                detail[key] = worst
        del m, grads
    return out


def family_check(device: str, amp: str, family: str) -> dict:
    detail = {}
    errors = gradient_check(device, amp, family, detail)
    rtol = FLOAT64_RTOL if amp == "none" else BF16_RTOLS.get(family, BF16_RTOL)
    worst = max(errors.values())
    return {"family": family, "model": GRAD_FAMILIES[family]["model"],
            "precision": "float64" if amp == "none" else "bf16_autocast",
            "max_rel_errors": errors, "worst_tensor": detail, "max_rel_error": worst, "rtol": rtol,
            "passed": worst <= rtol}


def cuda_activation_bytes(depth: int, mode: str, device="cuda") -> int:
    """Peak CUDA memory of a training step beyond the parameters and their grads (revvit_micro at
    32x32, batch 16): the check here and tests/test_reversible_cuda.py measure with it."""
    import torch

    from revtransfer.models import create_model

    torch.manual_seed(0)
    m = create_model("revvit_micro", img_size=32, patch_size=4, embed_dim=64, num_heads=4, num_classes=5,
                     depth=depth, backprop=mode).to(device).train()
    x = torch.randn(16, 3, 32, 32, device=device)
    m(x).sum().backward()  # warm up kernels and the allocator
    m.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    m(x).sum().backward()
    torch.cuda.synchronize()
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in m.parameters())
    return torch.cuda.max_memory_allocated() - before - grad_bytes


def activation_memory_check(device: str) -> dict:
    """Reprop's and pareprop's peak activation memory flat in depth (4 -> 24 blocks), backprop's not."""
    import torch

    if torch.device(device).type != "cuda":
        return {"skipped": "peak CUDA memory needs CUDA (on CPU the tests count the bytes saved for backward)"}
    by = {mode: {str(d): cuda_activation_bytes(d, mode, device) for d in (4, 24)} for mode in MODES}
    flat = all(by[m]["24"] <= 1.2 * by[m]["4"] for m in ("reprop", "pareprop"))
    grows = by["backprop"]["24"] > 3 * max(by["reprop"]["24"], by["pareprop"]["24"])
    return {"activation_bytes": by, "flat_in_depth": flat, "backprop_grows": grows, "passed": flat and grows}


def reconstruction_check(device: str) -> dict:
    from revtransfer.bench.reconstruction import reconstruction_errors

    name, depths, kwargs = RECONSTRUCTION
    records = reconstruction_errors(name, list(depths), device=device, model_kwargs=kwargs)
    return {"model": name, "dtype": "float32", "passed": None, "records": records,
            "max_rel_error_by_depth": {str(r["depth"]): r["max_rel_error"] for r in records}}


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def cuda_test_files(tests: Path) -> list[str]:
    """The test files that hold tests marked ``cuda``, relative to the repository root."""
    return sorted(f"{tests.name}/{p.name}" for p in tests.glob("test_*.py") if "mark.cuda" in p.read_text())


def junit_summary(path: Path) -> dict:
    """Counts, failing tests and skip reasons of a pytest junit XML file."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {f"n_{k}": sum(int(s.get(k, 0) or 0) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    problems, skips = [], []
    for case in root.iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        for kind in ("failure", "error"):
            el = case.find(kind)
            if el is not None:
                problems.append({"test": test, "kind": kind, "message": (el.get("message") or el.text or "")[:500]})
        el = case.find("skipped")
        if el is not None and len(skips) < 3:
            skips.append((el.get("message") or "")[:200])
    text = ET.tostring(root, encoding="unicode")
    return dict(counts, problems=problems, skip_reasons=sorted(set(skips)),
                stream_mismatch_mentions=text.count(STREAM_MISMATCH))


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def cuda_tests_check(junit: Path, timeout_s: float) -> dict:
    """The tests marked ``cuda`` in a pytest subprocess, ``torch.set_warn_always`` on and the
    stream-mismatch warning an error; its junit XML goes to ``junit``, its summary is returned."""
    import importlib.util

    root = _repo_root()
    files = cuda_test_files(root / "tests")
    if not files:
        return {"skipped": "no test is marked cuda"}
    if importlib.util.find_spec("pytest") is None:
        return {"skipped": "pytest is not installed for this python"}
    junit.parent.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # hand this process's cached blocks back for the subprocess
    code = "import sys, torch; torch.set_warn_always(True); import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
            "-o", f"filterwarnings=error:.*{STREAM_MISMATCH}.*", *files]
    try:
        proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired as e:
        tail = (_text(e.stdout) + _text(e.stderr))[-2000:]
        raise TimeoutError(f"the cuda tests did not finish in {timeout_s:.0f} s; output tail:\n{tail}") from None
    output = proc.stdout + proc.stderr
    summary = junit_summary(junit) if junit.exists() else {"problems": [], "junit": "not written"}
    result = dict(summary, files=files, returncode=proc.returncode, output_tail=output[-3000:], junit_file=junit.name,
                  passed=proc.returncode == 0 and not summary["problems"])
    result["stream_mismatch_mentions"] = max(summary.get("stream_mismatch_mentions", 0), output.count(STREAM_MISMATCH))
    if proc.returncode == 0 and summary.get("n_tests") and summary.get("n_skipped") == summary.get("n_tests"):
        result["skipped"] = f"all {summary['n_tests']} tests skipped: {'; '.join(summary['skip_reasons'])}"
    return result


@dataclass
class _Run:
    """One call of the plan: where it writes, its clock and deadline, what it has."""
    device: str
    amp: str
    out: Path
    tag: str
    deadline: float
    clock: Callable[[], float]
    meta: dict
    state: dict
    save: Callable[[], None]
    steps: int = 20
    warmup: int = 5
    longest: float = 0.0
    extra: dict = field(default_factory=dict)


def check_steps(run: _Run) -> list[tuple[str, Callable[[], dict], float]]:
    """The checks in order: (name, function returning the result, seconds it is expected to take
    at most, 0 = as long as the longest check so far)."""
    steps = []
    for amp, precision in (("none", "float64"), ("bf16", "bf16_autocast")):
        for family in GRAD_FAMILIES:
            steps.append((f"gradients_{precision}_{family}", lambda a=amp, f=family: family_check(run.device, a, f), 0.0))
    steps.append(("activation_memory_flat", lambda: activation_memory_check(run.device), 0.0))
    steps.append(("reconstruction_fp32", lambda: reconstruction_check(run.device), 0.0))
    steps.append(("cuda_tests", lambda: cuda_tests_check(run.out / f"{run.tag}_cuda_tests.xml",
                                                          run.deadline - run.clock()), PYTEST_GUESS_S))
    return steps


def _entry(result: dict | None, error: dict | None, seen: dict, seconds: float) -> dict:
    if error is not None:
        status = "error"
    elif result.get("skipped"):
        status = "skipped"
    elif seen["stream_mismatch"] or not (result.get("passed") is None or result.get("passed")):
        status = "failed"
    else:
        status = "measured" if result.get("passed") is None else "passed"
    entry = {"status": status, "seconds": round(seconds, 2), "stream_mismatch_warnings": seen["stream_mismatch"],
             "other_warnings": seen["other"]}
    if result is not None:
        entry["result"] = result
    if error is not None:
        entry["error"] = error
    return entry


def _describe(entry: dict) -> str:
    r = entry.get("result") or {}
    if entry["status"] == "error":
        message = entry["error"]["message"]
        return f"{entry['error']['type']}: {message.splitlines()[0][:200] if message else ''}"
    if "max_rel_error" in r:
        return f"max rel error {r['max_rel_error']:.3g} (pass mark {r['rtol']:g})"
    if "max_rel_error_by_depth" in r:
        return "max rel error by depth " + ", ".join(f"{d}: {e:.2g}" for d, e in r["max_rel_error_by_depth"].items())
    if r.get("skipped"):
        return r["skipped"]
    if "n_tests" in r:
        return (f"{r['n_tests']} tests, {r['n_failures']} failed, {r['n_errors']} errors, {r['n_skipped']} skipped "
                f"(exit code {r['returncode']})")
    if "returncode" in r:
        last = [line for line in r.get("output_tail", "").splitlines() if line.strip()][-1:]
        return f"exit code {r['returncode']}, no junit: {last[0][:200] if last else ''}"
    return ""


def run_check_job(run: _Run, job_name: str) -> bool:
    """Run the checks not yet on record (or that raised before), writing each as it finishes.
    Returns whether the time budget stopped it."""
    import torch

    job = run.state.setdefault(job_name, {"complete": False, "records": []})
    job.pop("error", None)
    entries = job.setdefault("checks", {})
    steps = check_steps(run)
    stopped = False
    for name, fn, guess in steps:
        if name in entries and not _is_error(entries[name]):
            continue
        if run.clock() + (guess or run.longest) > run.deadline:
            print(f"time budget: stopping before check {name}; re-run the same command to continue", flush=True)
            stopped = True
            break
        started = run.clock()
        result = error = None
        with count_warnings() as seen:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - recorded; the next check runs
                error = failure(err)
        seconds = run.clock() - started
        run.longest = max(run.longest, seconds) if not guess else run.longest
        if result is not None and "records" in result:
            job["records"] = [r for r in job["records"] if r.get("check") != name] + [
                dict(r, check=name, torch=torch.__version__, git_commit=run.meta["git_commit"])
                for r in result.pop("records")]
        entries[name] = _entry(result, error, seen, seconds)
        _summarise_checks(job, [s[0] for s in steps])
        run.save()  # a call killed later keeps this check
        e = entries[name]
        print(f"check {name}: {e['status'].upper()} {_describe(e)}; {e['stream_mismatch_warnings']} stream-mismatch "
              f"warning(s); {seconds:.1f} s", flush=True)
        if error is not None:
            print(error["traceback"], flush=True)
    _summarise_checks(job, [s[0] for s in steps])
    run.save()
    return stopped


def _summarise_checks(job: dict, names: list[str]) -> None:
    entries = job["checks"]
    job["complete"] = all(n in entries and not _is_error(entries[n]) for n in names)
    job["passed"] = job["complete"] and all(entries[n]["status"] in ("passed", "measured", "skipped") for n in names)
    job["stream_mismatch_warnings"] = sum(e.get("stream_mismatch_warnings", 0) for e in entries.values()
                                          if isinstance(e, dict))
    job["status_by_check"] = {n: entries[n]["status"] if isinstance(entries.get(n), dict) else "not run" for n in names}


# ---------------------------------------------------------------- the measurements

def run_bench_job(run: _Run, job_name: str, model: str, batch_sizes: list[int], extra: dict) -> bool:
    """Throughput and memory of ``model`` in every mode at ``batch_sizes`` (plus its reference),
    each measurement written as it finishes. Returns whether the time budget stopped it."""
    import torch

    from revtransfer.bench.throughput import format_table, run_benchmark

    earlier = run.state.get(job_name, {"records": []})["records"]
    job = run.state[job_name] = {"complete": False, "model": model, "records": list(earlier)}
    step_start = [run.clock()]

    def progress(r):
        job["records"].append(dict(r.to_dict(), torch=torch.__version__, git_commit=run.meta["git_commit"]))
        run.save()  # a call killed later keeps this measurement
        run.longest = max(run.longest, run.clock() - step_start[0])
        step_start[0] = run.clock()
        print(f"  {r.model} {r.mode} bs={r.batch_size}: {r.status} {r.samples_per_s}", flush=True)

    records, job["complete"] = run_benchmark(
        model, MODES, batch_sizes, run.steps, run.warmup, run.device, run.amp, "auto",
        extra.get("model_kwargs", {}), extra.get("seq_len"), progress=progress, deadline=run.deadline,
        done=earlier, clock=run.clock)
    run.save()
    print(format_table(records), flush=True)
    if not job["complete"]:
        print(f"time budget: {job_name} stopped between batch sizes with {len(job['records'])} record(s) kept; "
              "re-run the same command to continue", flush=True)
    return not job["complete"]


def _other_batches(model: str) -> set[int]:
    return {b for jobs in PLAN.values() for _, m, bs, extra in jobs if m == model and not extra.get("overlap") for b in bs}


def run_overlap_job(run: _Run, job_name: str, model: str, batch_sizes: list[int], extra: dict) -> bool:
    """Does pareprop overlap on ``model``? On CUDA: a memory probe picks the batch (~40% of the
    largest that fits), the profiler gives the kernel overlap fraction of reprop's and pareprop's
    backward; everywhere: pareprop/reprop samples/s in interleaved rounds. Each part is written as
    it finishes; a probe or profile that raises is recorded and the throughput still runs. Returns
    whether the time budget stopped it."""
    job = run.state.setdefault(job_name, {"complete": False, "records": []})
    job.pop("error", None)
    job["model"] = model
    complete = _overlap_parts(run, job, job_name, model, batch_sizes, extra)
    run.save()
    if not complete:
        print(f"time budget: {job_name} stopped with {len(job['records'])} record(s) kept; "
              "re-run the same command to continue", flush=True)
    return not complete


def _overlap_parts(run: _Run, job: dict, job_name: str, model: str, batch_sizes: list[int], extra: dict) -> bool:
    import torch

    from revtransfer.bench import overlap
    from revtransfer.bench.throughput import run_benchmark

    kwargs, seq_len = extra.get("model_kwargs", {}), extra.get("seq_len")
    probe = job.get("probe") if job.get("probe") and "error" not in job["probe"] else None
    profile = job.get("profile") if job.get("profile") and "error" not in job["profile"] else None
    if probe is None or profile is None:
        def keep_probe(p):
            job["probe"] = p
            run.save()  # a call killed during the profile keeps the probe (and so the batch)
            print(f"  {model}: measuring at bs={p['batch_size']} ({p['why']})", flush=True)

        try:
            with count_warnings() as seen:  # the timed rounds below run without (set_warn_always costs)
                job["probe"], job["profile"] = overlap.probe_and_profile(
                    model, batch_sizes, run.device, run.amp, model_kwargs=kwargs, seq_len=seq_len,
                    avoid=_other_batches(model), have_probe=probe, have_profile=profile, on_probe=keep_probe)
            if profile is None:
                job["profile"]["stream_mismatch_warnings"] = seen["stream_mismatch"]
        except Exception as err:  # noqa: BLE001 - recorded; the throughput still runs
            if not job.get("probe") or "error" in job["probe"]:
                job["probe"] = {"batch_size": max(batch_sizes), "why": "the probe failed: fallback",
                                "error": failure(err)}
            job["profile"] = {"batch_size": job["probe"]["batch_size"], "error": failure(err)}
            print(f"  {model}: probe/profile FAILED, recorded:\n{job['profile']['error']['traceback']}", flush=True)
    run.save()
    if "error" not in job["profile"]:
        print("  " + overlap.fraction_line(model, job["profile"]), flush=True)
    batch = job["probe"]["batch_size"]
    step_start = [run.clock()]

    def progress(r):
        job["records"].append(dict(r.to_dict(), torch=torch.__version__, git_commit=run.meta["git_commit"],
                                   plan_job=job_name))
        run.save()  # a call killed later keeps this measurement
        run.longest = max(run.longest, run.clock() - step_start[0])
        step_start[0] = run.clock()
        print(f"  {r.model} {r.mode} bs={r.batch_size}: {r.status} {r.samples_per_s}", flush=True)

    _, complete = run_benchmark(
        model, list(overlap.OVERLAP_MODES), [batch], overlap.STEPS, overlap.WARMUP, run.device, run.amp, None,
        kwargs, seq_len, progress=progress, deadline=run.deadline, done=job["records"], clock=run.clock,
        rounds=overlap.ROUNDS)
    verdict = overlap.throughput_verdict(job["records"], model, batch)
    if verdict is not None:
        job["throughput"] = verdict
        print("  " + verdict["line"], flush=True)
    job["complete"] = bool(complete and verdict is not None and "error" not in job["profile"])
    return complete


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time-budget-s", type=float, required=True,
                    help="seconds from this process's start after which no check or measurement may end; leave "
                         "the call's hard timeout a margin (180 for --call check, 300 for --call figures)")
    ap.add_argument("--call", choices=CALLS, default="all",
                    help="check: the CUDA correctness checks; figures: throughput, memory and overlap; all: both")
    ap.add_argument("--group", choices=[*PLAN, "all"], default="all", help="one group of the call's plan")
    ap.add_argument("--out", default="reports/bench/gpu")
    ap.add_argument("--done", action="append", default=[],
                    help="a directory of JSON from earlier runs of the plan: what they measured is skipped (repeatable)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16",
                    help="the figures' training step: fp32, or autocast to bf16 / fp16")
    ap.add_argument("--amp", dest="amp_alias", choices=["none", "bf16", "fp16"], default=None,
                    help=argparse.SUPPRESS)  # the older spelling of --precision (none = fp32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: to test the plan's mechanics
    args = ap.parse_args(argv)
    if args.amp_alias is not None:
        from revtransfer.bench.record import precision_name

        args.precision = precision_name(args.amp_alias)
    if args.time_budget_s <= 0:
        ap.error(f"--time-budget-s {args.time_budget_s:g}: give a positive number of seconds")
    groups = call_groups(args.call)
    if args.group != "all" and args.group not in groups:
        ap.error(f"--group {args.group} is not part of --call {args.call} (its groups: {', '.join(groups)})")

    import torch

    from revtransfer.atomic import atomic_write_json
    from revtransfer.provenance import provenance

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_plan needs a CUDA device", file=sys.stderr)
        return 2
    clock = now
    out = Path(args.out)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    tag = (re.search(r"\b([A-Z]\d{2,3}[A-Z]?)\b", name) or re.search(r"(\w+)$", name)).group(1).lower()  # h200
    state = load_done(tag, [*map(Path, args.done), out])
    jobs = jobs_to_run(groups if args.group == "all" else [args.group], state)
    own = {job[0] for g in groups for job in PLAN[g]}
    meta = dict(provenance(), measure="train_step", steps=args.steps, warmup=args.warmup, precision=args.precision,
                plan="revtransfer.bench.gpu_plan",
                call=args.call, time_budget_s=args.time_budget_s)

    def save():
        kept = state if args.call == "all" else {k: v for k, v in state.items() if k in own}
        records = [r for job in kept.values() for r in job.get("records", [])]
        atomic_write_json(plan_file(out, tag, args.call), {"meta": meta, "jobs": kept, "records": records})

    run = _Run(args.device, args.precision, out, tag, _STARTED + args.time_budget_s, clock, meta, state, save,
               args.steps, args.warmup)
    print(f"gpu_plan --call {args.call} on {name}: {len(jobs)} job(s) to run: {', '.join(j[0] for j in jobs)} "
          f"(start-up took {clock() - _STARTED:.0f} s of the {args.time_budget_s:g} s budget)", flush=True)
    for job_name, model, batch_sizes, extra in jobs:
        predicted = 0.0 if model is None else max(run.longest, run.extra.get("overlap_s", OVERLAP_GUESS_S)) \
            if extra.get("overlap") else run.longest
        if not should_start(clock() - _STARTED, predicted, args.time_budget_s):
            print(f"time budget: stopping before {job_name}; re-run the same command to continue", flush=True)
            break
        job_start = clock()
        try:
            if model is None:  # the gradient, memory and reconstruction checks and the cuda tests
                stopped = run_check_job(run, job_name)
            elif extra.get("overlap"):
                stopped = run_overlap_job(run, job_name, model, batch_sizes, extra)
                run.extra["overlap_s"] = clock() - job_start
            else:
                stopped = run_bench_job(run, job_name, model, batch_sizes, extra)
        except Exception as err:  # noqa: BLE001 - recorded; the next job runs
            job = state.setdefault(job_name, {"complete": False, "records": []})
            job["complete"], job["error"] = False, failure(err)
            save()
            print(f"{job_name}: FAILED after {clock() - job_start:.0f} s, recorded; going on\n"
                  f"{job['error']['traceback']}", flush=True)
            continue
        print(f"{job_name}: {clock() - job_start:.0f} s (elapsed {clock() - _STARTED:.0f} s)", flush=True)
        if stopped:
            break
    _print_summary(state, own)
    return 0


def _print_summary(state: dict, own: set[str]) -> None:
    checks = state.get("checks") if "checks" in own else None
    if checks and isinstance(checks.get("status_by_check"), dict):
        print(f"checks: {'PASSED' if checks.get('passed') else 'NOT ALL PASSED'}; "
              f"{checks.get('stream_mismatch_warnings', 0)} stream-mismatch warning(s); "
              + ", ".join(f"{k}={v}" for k, v in checks["status_by_check"].items()), flush=True)
    for name, job in state.items():
        if name in own and "throughput" in job:
            profile = job.get("profile") or {}
            pare = (profile.get("pareprop") or {}).get("overlap_fraction")
            print(f"overlap {job.get('model')}: pareprop/reprop {job['throughput']['pareprop_over_reprop']['median']:.3f}"
                  f"{' (PAREPROP SLOWER THAN REPROP)' if job['throughput']['pareprop_slower_than_reprop'] else ''}, "
                  f"pareprop overlap fraction {'n/a' if pare is None else f'{pare:.3f}'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
