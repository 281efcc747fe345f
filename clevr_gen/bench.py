"""Speed of clevr_gen: per-stage ms per image on one core, end-to-end images/s, JIT start-up.

    python -m clevr_gen.bench --size 80 --n 2000 --workers 2 --coco --json bench.json

Writes a JSON record (figures with the command that produced them); nothing here is asserted.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import click
import numpy as np


def stage_times(spec, n: int) -> dict[str, float]:
    """Mean ms per image of each pipeline stage over n scenes, one process, kernels loaded.
    Failed visibility attempts are charged to sample/trace/object_map of the image."""
    from .pipeline import STAGES, cell_assignment, load_kernels, make_scene, scene_record

    load_kernels()
    cells = cell_assignment(spec)[:n]
    totals = dict.fromkeys(STAGES, 0.0)
    totals["shard_json"] = 0.0
    attempts = 0
    for i, (hx, hy) in enumerate(cells):
        result = make_scene(spec, i, int(hx), int(hy), timings=totals)
        attempts += result.attempts
        record = scene_record(result, spec, timings=totals)
        t0 = time.perf_counter()
        json.dumps(record)  # what writing the shard costs per scene
        totals["shard_json"] += time.perf_counter() - t0
    out = {k: round(1e3 * v / n, 3) for k, v in totals.items()}
    out["total"] = round(sum(out.values()), 3)
    out["scene_attempts_per_image"] = round(attempts / n, 3)
    return out


_START_UP = """
import time
t0 = time.perf_counter()
from clevr_gen.pipeline import load_kernels
t1 = time.perf_counter()
load_kernels()
t2 = time.perf_counter()
print(round(t1 - t0, 3), round(t2 - t1, 3))
"""


def jit_start_up() -> dict[str, float]:
    """Seconds for a fresh process to import clevr_gen and get its kernels ready: with an empty
    numba cache (cold: compiles, then writes the cache) and again from that cache (warm)."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for name in ("cold", "warm"):
            res = subprocess.run([sys.executable, "-c", _START_UP], env=env, capture_output=True,
                                 text=True, check=True)
            imp, load = map(float, res.stdout.split())
            out[f"{name}_import_seconds"] = imp
            out[f"{name}_kernels_seconds"] = load
    return out


@click.command()
@click.option("--size", default="80", show_default=True)
@click.option("--n", type=int, default=2000, show_default=True, help="Images end to end.")
@click.option("--stage-n", type=int, default=200, show_default=True,
              help="Images for the per-stage timing.")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--coco/--no-coco", default=True, show_default=True)
@click.option("--repeat", type=int, default=1, show_default=True,
              help="End-to-end runs; the best is reported, all are listed.")
@click.option("--jit/--no-jit", "jit", default=True, show_default=True,
              help="Also time kernel compilation (empty cache) and loading (warm cache).")
@click.option("--json", "json_path", default=None, help="Write the record here too.")
def main(size, n, stage_n, workers, coco, repeat, jit, json_path):
    from .pipeline import load_kernels
    from .spec import DatasetSpec, parse_size
    from .writer import generate

    w, h = parse_size(size)
    spec = DatasetSpec(n=n, p_x=0.51, p_y=0.51, corr=0.8, width=w, height=h, coco=coco)
    start_up = jit_start_up() if jit else None
    stages = stage_times(spec, min(stage_n, n))
    load_kernels()  # compiled once; end to end measures a warm cache, as every run after the first
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            manifest = generate(spec, os.path.join(tmp, "ds"), workers=workers, progress=False,
                                log=lambda *a: None)
            wall = time.perf_counter() - t0
        runs.append({"seconds": round(wall, 2), "images_per_second": round(n / wall, 1),
                     "generate_seconds": manifest["run"]["generate_seconds"],
                     "finalize_seconds": manifest["run"]["finalize_seconds"]})
    best = max(runs, key=lambda r: r["images_per_second"])
    record = {
        "command": "python -m clevr_gen.bench " + " ".join(sys.argv[1:]),
        "size": [w, h], "n": n, "workers": workers, "coco": coco,
        "stage_ms_per_image_one_core": stages,
        "end_to_end_seconds": best["seconds"],
        "end_to_end_images_per_second": best["images_per_second"],
        "generate_seconds": best["generate_seconds"],
        "finalize_seconds": best["finalize_seconds"],
        "end_to_end_runs": runs,
        "jit_start_up": start_up,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "numpy": np.__version__, "numba": _numba_version(), "python": platform.python_version(),
    }
    text = json.dumps(record, indent=1)
    click.echo(text)
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")


def _numba_version() -> str:
    import numba
    return numba.__version__


if __name__ == "__main__":
    main()
