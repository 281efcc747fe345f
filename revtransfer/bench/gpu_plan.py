"""The paper's GPU comparison in one command, for a machine with a CUDA device:

    PYTHONPATH=. python3 -m revtransfer.bench.gpu_plan --out $OUT/gpu --done reports/bench/gpu

Runs a fixed plan (throughput and peak memory vs batch size, backprop / reprop / pareprop, each
family at two sizes, plus the non-reversible reference and a float64 pareprop-vs-backprop gradient
check on the device) through the same code as ``revtransfer bench``, and writes one bench JSON per
job as it finishes. Needs only torch and timm (no click), so it runs on a bare GPU image.

Device time is scarce and calls are capped, so: jobs run in order of what they decide (the CUDA
gradient check first, then ViT, Swin, RoBERTa, MViT); a job whose JSON is already in ``--done``
(or ``--out``) is skipped; and no job is started that would likely overrun ``--time-budget-s``
(judged by the longest job so far). Re-running the same command continues the plan.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

# (file stem, model, batch sizes, extra kwargs), in the order they run
PLAN = {
    "check": [("checks", None, [], {})],
    "vit": [("revvit_base", "revvit_base", [8, 16, 32, 64, 128, 256], {}),
            ("revvit_large", "revvit_large", [8, 16, 32, 64, 128], {})],
    "swin": [("revswin_tiny", "revswin_tiny", [16, 32, 64, 128, 256], {}),
             ("revswin_base", "revswin_base", [8, 16, 32, 64, 128], {})],
    "roberta": [("revroberta_base_seq512", "revroberta_base", [4, 8, 16, 32, 64], {"seq_len": 512}),
                ("revroberta_large_seq512", "revroberta_large", [4, 8, 16, 32], {"seq_len": 512})],
    "mvit": [("revmvit_tiny", "revmvit_tiny", [16, 32, 64, 128], {}),
             ("revmvit_base", "revmvit_base", [8, 16, 32, 64], {})],
}


def jobs_to_run(groups: list[str], tag: str, done_dirs: list[Path]) -> list[tuple]:
    """The plan's jobs for ``groups`` whose JSON (``{tag}_{stem}.json``) is in none of ``done_dirs``."""
    jobs = [job for group in groups for job in PLAN[group]]
    return [job for job in jobs if not any((d / f"{tag}_{job[0]}.json").exists() for d in done_dirs)]


def should_start(elapsed_s: float, longest_job_s: float, budget_s: float) -> bool:
    """Start another job only if one as long as the longest so far still fits in the budget."""
    return elapsed_s + longest_job_s <= budget_s


def gradient_check(device: str = "cuda") -> dict:
    """float64 grads of pareprop and reprop vs backprop on the device (dropout and drop path on)."""
    import torch

    from revtransfer.models import create_model

    out = {}
    for depth in (1, 2, 3, 6):
        torch.manual_seed(0)
        m = create_model("revvit_micro", img_size=32, patch_size=4, embed_dim=64, num_heads=4, num_classes=5,
                         depth=depth, proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2).to(device).double()
        x = torch.randn(4, 3, 32, 32, dtype=torch.float64, device=device)
        y = torch.arange(4, device=device) % 5
        grads = {}
        for mode in ("backprop", "reprop", "pareprop"):
            m.set_backprop(mode)
            m.zero_grad(set_to_none=True)
            xx = x.clone().requires_grad_()
            torch.manual_seed(1)
            torch.nn.functional.cross_entropy(m(xx), y).backward()
            grads[mode] = [p.grad for p in m.parameters()] + [xx.grad]
        for mode in ("reprop", "pareprop"):
            err = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
                      for a, b in zip(grads[mode], grads["backprop"]))
            out[f"depth{depth}_{mode}_max_rel_error"] = err
    return out


def main(argv=None) -> int:
    import torch

    from revtransfer.atomic import atomic_write_json
    from revtransfer.bench.reconstruction import reconstruction_errors
    from revtransfer.bench.throughput import format_table, run_benchmark
    from revtransfer.provenance import provenance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", choices=[*PLAN, "all"], default="all")
    ap.add_argument("--out", default="reports/bench/gpu")
    ap.add_argument("--done", action="append", default=[],
                    help="a directory of JSON from earlier runs of the plan: those jobs are skipped (repeatable)")
    ap.add_argument("--time-budget-s", type=float, default=float("inf"),
                    help="start no job that would likely end after this many seconds")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="bf16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: to test the plan's mechanics
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_plan needs a CUDA device", file=sys.stderr)
        return 2
    start = time.monotonic()
    out = Path(args.out)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    tag = (re.search(r"\b([A-Z]\d{2,3}[A-Z]?)\b", name) or re.search(r"(\w+)$", name)).group(1).lower()  # h100
    groups = list(PLAN) if args.group == "all" else [args.group]
    jobs = jobs_to_run(groups, tag, [out, *map(Path, args.done)])
    print(f"gpu_plan on {name}: {len(jobs)} job(s) to run: {', '.join(j[0] for j in jobs)}", flush=True)
    longest = 0.0
    for stem, model, batch_sizes, extra in jobs:
        if not should_start(time.monotonic() - start, longest, args.time_budget_s):
            print(f"time budget: stopping before {stem}; re-run the same command to continue", flush=True)
            break
        job_start = time.monotonic()
        if model is None:  # the gradient and reconstruction checks
            record = {"gradient_check_float64": gradient_check(args.device),
                      "reconstruction_fp32": reconstruction_errors("revvit_base", [4, 8, 16, 32, 64], device=args.device)}
            atomic_write_json(out / f"{tag}_{stem}.json", {"meta": provenance(), **record})
            print(record["gradient_check_float64"], flush=True)
        else:
            seq_len = extra.get("seq_len")
            records = run_benchmark(model, ["backprop", "reprop", "pareprop"], batch_sizes, args.steps, args.warmup,
                                    args.device, args.amp, "auto", extra.get("model_kwargs", {}), seq_len,
                                    progress=lambda r: print(f"  {r.model} {r.mode} bs={r.batch_size}: "
                                                             f"{r.status} {r.samples_per_s}", flush=True))
            print(format_table(records), flush=True)
            cmd = ["revtransfer", "bench", "--model", model, "--batch-sizes", ",".join(map(str, batch_sizes)),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--amp", args.amp, "--device", args.device]
            if seq_len:
                cmd += ["--seq-len", str(seq_len)]
            meta = dict(provenance(cmd), steps=args.steps, warmup=args.warmup, plan="revtransfer.bench.gpu_plan")
            atomic_write_json(out / f"{tag}_{stem}.json", {"meta": meta, "records": [
                dict(r.to_dict(), torch=torch.__version__, git_commit=meta["git_commit"]) for r in records]})
        longest = max(longest, time.monotonic() - job_start)
        print(f"{stem}: {time.monotonic() - job_start:.0f} s (elapsed {time.monotonic() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
