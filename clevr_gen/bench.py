"""Speed of clevr_gen: per-stage ms per image on one core, and end-to-end images/s.

    python -m clevr_gen.bench --size 80 --n 2000 --workers 2 --coco --json bench.json

Writes a JSON record (figures with the command that produced them); nothing here is asserted.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

import click
import numpy as np


def stage_times(spec, n: int) -> dict[str, float]:
    """Median-free simple means over n scenes, in ms per image, one process."""
    from . import coco
    from .pipeline import cell_assignment, scene_rng
    from .render import object_map, shade, trace, visible_pixels
    from .scene import sample_scene

    cells = cell_assignment(spec)[:n]
    totals = dict.fromkeys(["sample", "trace", "object_map", "shade", "coco_rle"], 0.0)
    attempts = 0
    for i, (hx, hy) in enumerate(cells):
        rng = scene_rng(spec, i)
        while True:
            attempts += 1
            t0 = time.perf_counter()
            scene = sample_scene(rng, int(hx), int(hy), spec, i)
            t1 = time.perf_counter()
            hits = trace(scene, spec.width, spec.height, spec.supersample)
            t2 = time.perf_counter()
            ids = object_map(hits)
            t3 = time.perf_counter()
            totals["sample"] += t1 - t0
            totals["trace"] += t2 - t1
            totals["object_map"] += t3 - t2
            if visible_pixels(ids, len(scene["objects"])).min() >= spec.min_pixels:
                break
        t0 = time.perf_counter()
        shade(hits)
        t1 = time.perf_counter()
        coco.annotations(ids, scene, i, spec.coco_categories)
        t2 = time.perf_counter()
        totals["shade"] += t1 - t0
        totals["coco_rle"] += t2 - t1
    out = {k: round(1e3 * v / n, 3) for k, v in totals.items()}
    out["total"] = round(sum(out.values()), 3)
    out["scene_attempts_per_image"] = round(attempts / n, 3)
    return out


@click.command()
@click.option("--size", default="80", show_default=True)
@click.option("--n", type=int, default=2000, show_default=True, help="Images end to end.")
@click.option("--stage-n", type=int, default=200, show_default=True,
              help="Images for the per-stage timing.")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--coco/--no-coco", default=True, show_default=True)
@click.option("--json", "json_path", default=None, help="Write the record here too.")
def main(size, n, stage_n, workers, coco, json_path):
    from .spec import DatasetSpec, parse_size
    from .writer import generate

    w, h = parse_size(size)
    spec = DatasetSpec(n=n, p_x=0.51, p_y=0.51, corr=0.8, width=w, height=h, coco=coco)
    stages = stage_times(spec, min(stage_n, n))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = generate(spec, os.path.join(tmp, "ds"), workers=workers, progress=False,
                            log=lambda *a: None)
        wall = time.perf_counter() - t0
    record = {
        "command": "python -m clevr_gen.bench " + " ".join(sys.argv[1:]),
        "size": [w, h], "n": n, "workers": workers, "coco": coco,
        "stage_ms_per_image_one_core": stages,
        "end_to_end_seconds": round(wall, 2),
        "end_to_end_images_per_second": round(n / wall, 1),
        "generate_seconds": manifest["run"]["generate_seconds"],
        "finalize_seconds": manifest["run"]["finalize_seconds"],
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "numpy": np.__version__, "python": platform.python_version(),
    }
    text = json.dumps(record, indent=1)
    click.echo(text)
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
