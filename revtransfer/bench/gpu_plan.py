"""The paper's GPU comparison in one command, for a machine with a CUDA device:

    PYTHONPATH=. python3 -m revtransfer.bench.gpu_plan --out $OUT/gpu --done reports/bench/gpu --time-budget-s 540

Runs a fixed plan (throughput and peak memory vs batch size, backprop / reprop / pareprop, each
family at two sizes, plus the non-reversible reference, and first the CUDA gradient checks:
pareprop and reprop vs backprop in float64 and under bf16 autocast, dropout and drop path on)
through the same code as ``revtransfer bench``. Needs only torch and timm (no click), so it runs on
a bare GPU image.

Device time is scarce, a call has a hard timeout and only a few files come back from it, so:
- everything goes to one file, ``{device}_gpu_plan.json`` (rewritten atomically after every
  measurement, so a killed call keeps what it measured); its ``records`` read as a bench JSON;
- jobs run in order of what they decide (the checks first, then the study's micro models, ViT, Swin, RoBERTa, MViT);
- the budget is explicit and counts from the process's start (imports and CUDA start-up
  included); no job starts that would likely overrun it, and within a job no measurement starts
  that would likely end after it (predicted from the measurements already made);
- what an earlier call measured (the plan files in ``--done`` and ``--out``) is not measured again: re-running the same command continues the plan where it stopped.
A batch size that does not fit (the allocator's OOM, or a cuBLAS/cuDNN workspace failure) is
recorded as ``oom`` and ends that mode; the plan goes on.
"""
from __future__ import annotations

import time

now = time.monotonic
_STARTED = now()  # the budget counts from here: imports and CUDA start-up are part of it

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

MODES = ["backprop", "reprop", "pareprop"]

# (job name, model, batch sizes, extra kwargs), in the order they run
PLAN = {
    "check": [("checks", None, [], {})],
    # The CLEVR study's backbones at the paper preset's shape (80x80, patch 5, dim 256, depth 4) and
    # batch: the measured throughput that `revtransfer sweep paper --estimate` projects GPU time from.
    "study": [("revvit_micro_paper", "revvit_micro", [64, 256], {"model_kwargs": {"num_classes": 2}})],
    "vit": [("revvit_base", "revvit_base", [8, 16, 32, 64, 128, 256], {}),
            ("revvit_large", "revvit_large", [8, 16, 32, 64, 128], {})],
    "swin": [("revswin_tiny", "revswin_tiny", [16, 32, 64, 128, 256], {}),
             ("revswin_base", "revswin_base", [8, 16, 32, 64, 128], {})],
    "roberta": [("revroberta_base_seq512", "revroberta_base", [4, 8, 16, 32, 64], {"seq_len": 512}),
                ("revroberta_large_seq512", "revroberta_large", [4, 8, 16, 32], {"seq_len": 512})],
    "mvit": [("revmvit_tiny", "revmvit_tiny", [16, 32, 64, 128], {}),
             ("revmvit_base", "revmvit_base", [8, 16, 32, 64], {})],
}

CHECK_DEPTHS = (1, 2, 3, 6)
BF16_RTOL = 5e-2  # bf16 rounds the reconstructed inputs: pass mark for its gradient check


def plan_file(out: Path, tag: str) -> Path:
    return out / f"{tag}_gpu_plan.json"


def load_done(tag: str, dirs: list[Path]) -> dict[str, dict]:
    """What earlier calls measured on this kind of device, by job: ``{"complete", "records"}`` (and
    ``"checks"`` for the check job), merged over the plan files in ``dirs``."""
    jobs: dict[str, dict] = {}

    def merge(name: str, complete: bool, records: list, checks=None):
        job = jobs.setdefault(name, {"complete": False, "records": []})
        seen = {_config(r) for r in job["records"]}
        job["records"] += [r for r in records if _config(r) not in seen]
        job["complete"] = job["complete"] or complete
        if checks:
            job["checks"] = checks

    for d in dirs:
        f = plan_file(d, tag)
        if f.exists():
            for name, job in json.loads(f.read_text()).get("jobs", {}).items():
                merge(name, job.get("complete", False), job.get("records", []), job.get("checks"))
    return jobs


def _config(record: dict) -> tuple:
    return record.get("model"), record.get("mode"), record.get("batch_size"), record.get("depth")


def jobs_to_run(groups: list[str], done: dict[str, dict]) -> list[tuple]:
    """The plan's jobs for ``groups`` that no earlier call completed."""
    return [job for group in groups for job in PLAN[group] if not done.get(job[0], {}).get("complete")]


def should_start(elapsed_s: float, longest_s: float, budget_s: float) -> bool:
    """Start another job only if a step as long as the longest so far still fits in the budget."""
    return elapsed_s + longest_s <= budget_s


def _max_rel_errors(got: list, ref: list) -> float:
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(got, ref))


def gradient_check(device: str = "cuda", amp: str = "none") -> dict:
    """pareprop and reprop gradients vs backprop's on the device, dropout and drop path on, the RNG
    reseeded before each run: in float64 (math attention) with ``amp="none"``, or in float32 under
    bf16 autocast (fused attention and its dropout) with ``amp="bf16"``."""
    import torch

    from revtransfer.models import create_model

    dtype = torch.float64 if amp == "none" else torch.float32
    out = {}
    for depth in CHECK_DEPTHS:
        torch.manual_seed(0)
        m = create_model("revvit_micro", img_size=32, patch_size=4, embed_dim=64, num_heads=4, num_classes=5,
                         depth=depth, proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2).to(device, dtype)
        x = torch.randn(4, 3, 32, 32, dtype=dtype, device=device)
        y = torch.arange(4, device=device) % 5
        grads = {}
        for mode in MODES:
            m.set_backprop(mode)
            m.zero_grad(set_to_none=True)
            xx = x.clone().requires_grad_()
            torch.manual_seed(1)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                logits = m(xx)
            torch.nn.functional.cross_entropy(logits.float(), y).backward()
            grads[mode] = [p.grad for p in m.parameters()] + [xx.grad]
        for mode in ("reprop", "pareprop"):
            out[f"depth{depth}_{mode}_max_rel_error"] = _max_rel_errors(grads[mode], grads["backprop"])
    return out


def run_checks(device: str) -> dict:
    from revtransfer.bench.reconstruction import reconstruction_errors

    float64 = gradient_check(device)
    bf16 = gradient_check(device, amp="bf16")
    return {
        "gradient_check_float64": float64,
        "gradient_check_bf16_autocast": bf16,
        "passed": max(float64.values()) <= 1e-10 and max(bf16.values()) <= BF16_RTOL,
        "reconstruction_fp32": reconstruction_errors("revvit_base", [4, 8, 16, 32, 64], device=device),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time-budget-s", type=float, required=True,
                    help="seconds from this process's start after which no measurement may end; leave "
                         "the call's hard timeout a margin (540 under a 600 s limit)")
    ap.add_argument("--group", choices=[*PLAN, "all"], default="all")
    ap.add_argument("--out", default="reports/bench/gpu")
    ap.add_argument("--done", action="append", default=[],
                    help="a directory of JSON from earlier runs of the plan: what they measured is skipped (repeatable)")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="bf16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: to test the plan's mechanics
    args = ap.parse_args(argv)
    if args.time_budget_s <= 0:
        ap.error(f"--time-budget-s {args.time_budget_s:g}: give a positive number of seconds")

    import torch

    from revtransfer.atomic import atomic_write_json
    from revtransfer.bench.throughput import format_table, run_benchmark
    from revtransfer.provenance import provenance

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_plan needs a CUDA device", file=sys.stderr)
        return 2
    clock = now
    deadline = _STARTED + args.time_budget_s
    out = Path(args.out)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    tag = (re.search(r"\b([A-Z]\d{2,3}[A-Z]?)\b", name) or re.search(r"(\w+)$", name)).group(1).lower()  # h200
    state = load_done(tag, [*map(Path, args.done), out])
    groups = list(PLAN) if args.group == "all" else [args.group]
    jobs = jobs_to_run(groups, state)
    meta = dict(provenance(), steps=args.steps, warmup=args.warmup, amp=args.amp, plan="revtransfer.bench.gpu_plan",
                time_budget_s=args.time_budget_s)

    def save():
        records = [r for job in state.values() for r in job["records"]]
        atomic_write_json(plan_file(out, tag), {"meta": meta, "jobs": state, "records": records})

    print(f"gpu_plan on {name}: {len(jobs)} job(s) to run: {', '.join(j[0] for j in jobs)} "
          f"(start-up took {clock() - _STARTED:.0f} s of the {args.time_budget_s:g} s budget)", flush=True)
    longest = 0.0
    for job_name, model, batch_sizes, extra in jobs:
        if not should_start(clock() - _STARTED, longest, args.time_budget_s):
            print(f"time budget: stopping before {job_name}; re-run the same command to continue", flush=True)
            break
        job_start = clock()
        if model is None:  # the gradient and reconstruction checks
            checks = run_checks(args.device)
            recon = [dict(r, torch=torch.__version__, git_commit=meta["git_commit"]) for r in checks.pop("reconstruction_fp32")]
            state[job_name] = {"complete": True, "records": recon, "checks": checks}
            save()
            print(json.dumps(checks), flush=True)
            longest = max(longest, clock() - job_start)
        else:
            earlier = state.get(job_name, {"records": []})["records"]
            job = state[job_name] = {"complete": False, "model": model, "records": list(earlier)}
            step_start = [clock()]

            def progress(r):
                nonlocal longest
                job["records"].append(dict(r.to_dict(), torch=torch.__version__, git_commit=meta["git_commit"]))
                save()  # a call killed later keeps this measurement
                longest = max(longest, clock() - step_start[0])
                step_start[0] = clock()
                print(f"  {r.model} {r.mode} bs={r.batch_size}: {r.status} {r.samples_per_s}", flush=True)

            records, job["complete"] = run_benchmark(
                model, MODES, batch_sizes, args.steps, args.warmup, args.device, args.amp, "auto",
                extra.get("model_kwargs", {}), extra.get("seq_len"), progress=progress, deadline=deadline,
                done=earlier, clock=clock)
            save()
            print(format_table(records), flush=True)
            if not job["complete"]:
                print(f"time budget: {job_name} stopped between batch sizes with {len(job['records'])} record(s) kept; "
                      "re-run the same command to continue", flush=True)
                break
        print(f"{job_name}: {clock() - job_start:.0f} s (elapsed {clock() - _STARTED:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
