"""Atomic, resumable writing of a dataset directory (layout in FORMAT.md).

Work happens in DIR/.partial/: scenes are generated in fixed shards (scene ranges), each saved as
it finishes (temp name, then rename; its .json is written last and marks it done). Re-running the
same command redoes only the missing shards. When all are done the final files are assembled
under temp names, renamed into DIR, and manifest.json is written last: a directory is complete
exactly when manifest.json exists. A crash or Ctrl-C at any point leaves no manifest.json.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import math
import multiprocessing
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from . import coco, labels, preview, vocab
from .pipeline import cell_assignment, label_columns, make_scene, scene_record
from .render import RENDERER_VERSION
from .spec import DatasetSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARTIAL = ".partial"
LOCK = ".gen.lock"
DEFAULT_SHARD_SIZE = 250
# Names generate() may find or leave in an output directory; anything else means the directory
# is not ours and we refuse to write into it.
OWN_NAMES = {"images.npy", "images", "labels.csv", "scenes.json", "coco.json", "preview.png",
             MANIFEST, PARTIAL, LOCK}


class DatasetDirError(RuntimeError):
    """The output directory holds something else (another spec, foreign files, a running job)."""


# --- small atomic-file helpers -----------------------------------------------------------------
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    tmp = _tmp_name(path)
    try:
        yield tmp
        if tmp.is_dir():
            if path.exists():
                shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


# --- shards --------------------------------------------------------------------------------------
def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def _shard_stem(partial: Path, shard: int) -> Path:
    return partial / f"shard-{shard:05d}"


def build_shard(partial: str, spec_dict: dict, shard: int, start: int, stop: int,
                cells: np.ndarray) -> tuple[int, int]:
    """Generate scenes [start, stop) and save them as one shard. Runs in a worker process."""
    spec = DatasetSpec.from_dict(spec_dict)
    partial_dir = Path(partial)
    stem = _shard_stem(partial_dir, shard)
    images = np.empty((stop - start, spec.height, spec.width, 3), dtype=np.uint8)
    records = []
    for i, (has_x, has_y) in zip(range(start, stop), cells):
        result = make_scene(spec, i, int(has_x), int(has_y))
        images[i - start] = result.image
        records.append(scene_record(result, spec))
    if spec.image_format == "npy":
        save_npy_atomic(stem.with_suffix(".npy"), images)
    else:
        from PIL import Image
        png_dir = partial_dir / "images"
        png_dir.mkdir(exist_ok=True)
        for i, img in zip(range(start, stop), images):
            path = png_dir / f"{i:06d}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
    write_json_atomic(stem.with_suffix(".json"), records)  # last: marks the shard done
    return shard, stop - start


def _build_shard_star(args):
    return build_shard(*args)


# --- provenance ----------------------------------------------------------------------------------
def git_commit() -> str | None:
    """HEAD of the repository this package lives in, or None (not a checkout, no git, no commit)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    import PIL

    from . import __version__
    try:
        package = metadata.version("revtransfer")
    except metadata.PackageNotFoundError:
        package = None
    return {"python": platform.python_version(), "numpy": np.__version__,
            "pillow": PIL.__version__, "clevr_gen": __version__, "revtransfer": package,
            "renderer": RENDERER_VERSION}


# --- the run ------------------------------------------------------------------------------------
def read_manifest(out: Path) -> dict | None:
    path = Path(out) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def _check_directory(out: Path, spec: DatasetSpec) -> dict | None:
    """Return the manifest if `out` already holds this dataset; raise if it holds another."""
    manifest = read_manifest(out)
    if manifest is not None:
        diffs = spec.differences(manifest["spec"])
        if diffs:
            raise DatasetDirError(
                f"{out} already holds a complete dataset made with a different spec ("
                + "; ".join(diffs) + "). Choose another --out or delete that directory.")
        return manifest
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OWN_NAMES
                     and not p.name.startswith(".tmp-")) if out.exists() else []
    if foreign:
        raise DatasetDirError(f"{out} is not empty and holds files gen did not write "
                              f"({', '.join(foreign[:5])}); choose an empty or new directory")
    return None


def _open_partial(out: Path, spec: DatasetSpec, shard_size: int) -> tuple[Path, int]:
    """Create or resume DIR/.partial; returns it and the shard size fixed at its creation."""
    partial = out / PARTIAL
    state_path = partial / "state.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        diffs = spec.differences(state["spec"])
        if diffs:
            raise DatasetDirError(
                f"{out} holds an unfinished run with a different spec (" + "; ".join(diffs)
                + f"). Re-run that command to finish it, or delete {partial} to start over.")
        return partial, int(state["shard_size"])
    partial.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state_path, {"spec": spec.to_dict(), "shard_size": shard_size})
    return partial, shard_size


def _clean_stale_temps(directory: Path) -> None:
    for p in list(directory.glob(".tmp-*")) + list(directory.glob("images/.tmp-*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def generate(spec: DatasetSpec, out, workers: int = 1, shard_size: int = DEFAULT_SHARD_SIZE,
             progress: bool = True, preset: str | None = None, log=print) -> dict:
    """Write (or finish, or confirm) the dataset for `spec` in `out`; returns its manifest."""
    from filelock import FileLock, Timeout
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size} must be at least 1")
    out = Path(out)
    if _check_directory(out, spec) is not None:
        log(f"{out}: already complete with this spec; nothing to do")
        return read_manifest(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DatasetDirError(f"another gen is writing into {out} (lock {out / LOCK} is held)")
    try:
        if read_manifest(out) is not None:  # finished by a run that held the lock before us
            return read_manifest(out)
        t0 = time.perf_counter()
        partial, shard_size = _open_partial(out, spec, shard_size)
        _clean_stale_temps(partial)
        cells = cell_assignment(spec)
        ranges = shard_ranges(spec.n, shard_size)
        todo = [i for i in range(len(ranges))
                if not _shard_stem(partial, i).with_suffix(".json").exists()]
        done = spec.n - sum(ranges[i][1] - ranges[i][0] for i in todo)
        if done:
            log(f"{out}: resuming, {done}/{spec.n} scenes already generated")
        jobs = [(str(partial), spec.to_dict(), i, *ranges[i], cells[slice(*ranges[i])])
                for i in todo]
        with tqdm(total=spec.n, initial=done, unit="img", desc="gen", disable=not progress,
                  dynamic_ncols=True) as bar:
            if workers == 1 or len(jobs) <= 1:
                for job in jobs:
                    bar.update(build_shard(*job)[1])
            else:
                # spawn: workers start clean (no inherited threads or torch state); each shard
                # is seeded from its scene indices, so results are the same whatever the pool.
                ctx = multiprocessing.get_context("spawn")
                with ctx.Pool(min(workers, len(jobs))) as pool:
                    for _, count in pool.imap_unordered(_build_shard_star, jobs):
                        bar.update(count)
        manifest = _finalize(out, partial, spec, cells, ranges, preset,
                             {"workers": workers, "shard_size": shard_size,
                              "generate_seconds": round(time.perf_counter() - t0, 3)})
        shutil.rmtree(partial, ignore_errors=True)
        return manifest
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            os.unlink(out / LOCK)


def _iter_shard_records(partial: Path, n_shards: int) -> Iterator[dict]:
    for i in range(n_shards):
        yield from json.loads(_shard_stem(partial, i).with_suffix(".json").read_text())


def _finalize(out: Path, partial: Path, spec: DatasetSpec, cells: np.ndarray,
              ranges: list[tuple[int, int]], preset: str | None, run: dict) -> dict:
    """Assemble shards into the final files (each renamed into place), then the manifest."""
    t0 = time.perf_counter()
    n_shards = len(ranges)
    # Images: one memory-mappable array, or the PNG folder moved into place.
    if spec.image_format == "npy":
        with atomic_path(out / "images.npy") as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                           shape=(spec.n, spec.height, spec.width, 3))
            for i, (start, stop) in enumerate(ranges):
                mm[start:stop] = np.load(_shard_stem(partial, i).with_suffix(".npy"))
            mm.flush()
            del mm
    else:
        with atomic_path(out / "images") as tmp:
            shutil.copytree(partial / "images", tmp)

    stats = _Stats(spec)
    header = {"info": {"generator": "clevr_gen", "split": spec.split, "x": spec.x, "y": spec.y,
                       "seed": spec.seed, "width": spec.width, "height": spec.height}}
    with contextlib.ExitStack() as stack:
        labels_tmp = stack.enter_context(atomic_path(out / "labels.csv"))
        scenes_tmp = stack.enter_context(atomic_path(out / "scenes.json"))
        labels_f = stack.enter_context(open(labels_tmp, "w", newline="\n"))
        scenes_f = stack.enter_context(open(scenes_tmp, "w"))
        coco_f = None
        if spec.coco:
            coco_tmp = stack.enter_context(atomic_path(out / "coco.json"))
            coco_f = stack.enter_context(open(coco_tmp, "w"))
            _start_coco(coco_f, spec)
        labels_f.write(",".join(label_columns()) + "\n")
        scenes_f.write(json.dumps(header)[:-1] + ', "scenes": [\n')
        ann_id = 0
        for rec in _iter_shard_records(partial, n_shards):
            scene = rec["scene"]
            i = scene["image_index"]
            if (scene["has_x"], scene["has_y"]) != tuple(int(c) for c in cells[i]):
                raise AssertionError(f"scene {i}: labels differ from its planned cell")
            stats.add(rec)
            labels_f.write(",".join(str(v) for v in rec["labels"]) + "\n")
            scenes_f.write(("" if i == 0 else ",\n") + json.dumps(scene))
            if coco_f is not None:
                for ann in rec["annotations"]:
                    ann_id += 1
                    coco_f.write(("" if ann_id == 1 else ",\n")
                                 + json.dumps({"id": ann_id, **ann}))
        scenes_f.write("\n]}\n")
        if coco_f is not None:
            coco_f.write("\n]}\n")
        # Files are closed (ExitStack unwinds in reverse) before their renames.

    _write_preview(out, partial, spec, ranges)
    manifest = {
        "format_version": FORMAT_VERSION,
        "complete": True,
        "spec": spec.to_dict(),
        "preset": preset,
        "seed": spec.seed,
        "n": spec.n,
        "image_shape": [spec.height, spec.width, 3],
        "x": vocab.describe(spec.x),
        "y": vocab.describe(spec.y),
        "files": {"images": "images.npy" if spec.image_format == "npy" else "images/",
                  "labels": "labels.csv", "scenes": "scenes.json",
                  "coco": "coco.json" if spec.coco else None, "preview": "preview.png"},
        "targets": {"p_x": spec.p_x, "p_y": spec.p_y,
                    "corr": spec.corr if spec.split == "pretrain" else None,
                    "cells": spec.cell_counts().as_dict()},
        "measured": stats.summary(),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "run": {**run, "finalize_seconds": round(time.perf_counter() - t0, 3),
                "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
    }
    write_json_atomic(out / MANIFEST, manifest)  # last: the directory is now complete
    return manifest


def _start_coco(f: io.TextIOBase, spec: DatasetSpec) -> None:
    f.write('{"info": ' + json.dumps({"description": "clevr_gen " + spec.split,
                                      "version": str(FORMAT_VERSION)}))
    f.write(', "licenses": [], "categories": ' + json.dumps(coco.categories(spec.coco_categories)))
    f.write(', "images": [\n')
    f.write(",\n".join(json.dumps(coco.image_entry(i, spec.width, spec.height,
                                                   f"images/{i:06d}.png"))
                       for i in range(spec.n)))
    f.write('\n], "annotations": [\n')


def _write_preview(out: Path, partial: Path, spec: DatasetSpec, ranges) -> None:
    k = min(spec.n, preview.MAX_TILES)
    if spec.image_format == "npy":
        images = list(np.load(out / "images.npy", mmap_mode="r")[:k])
    else:
        from PIL import Image
        images = [np.asarray(Image.open(out / "images" / f"{i:06d}.png")) for i in range(k)]
    recs = []
    for rec in _iter_shard_records(partial, len(ranges)):
        recs.append(rec["scene"])
        if len(recs) == k:
            break
    captions = [preview.caption(s["image_index"], s["has_x"], s["has_y"], len(s["objects"]))
                for s in recs]
    with atomic_path(out / "preview.png") as tmp:
        preview.contact_sheet(images, captions).save(tmp, format="PNG")


class _Stats:
    """Measured label statistics, object-count histogram and attribute frequencies."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.has_x: list[int] = []
        self.has_y: list[int] = []
        self.n_objects: dict[int, int] = {}
        self.attributes = {a: {v: 0 for v in vals} for a, vals in vocab.ATTRIBUTES.items()}
        self.min_visible = math.inf

    def add(self, rec: dict) -> None:
        scene = rec["scene"]
        self.has_x.append(scene["has_x"])
        self.has_y.append(scene["has_y"])
        k = len(scene["objects"])
        self.n_objects[k] = self.n_objects.get(k, 0) + 1
        for obj in scene["objects"]:
            for a in self.attributes:
                self.attributes[a][obj[a]] += 1
            self.min_visible = min(self.min_visible, obj["visible_pixels"])

    def summary(self) -> dict:
        m = labels.measure(np.array(self.has_x), np.array(self.has_y))
        m["object_count_histogram"] = {str(k): self.n_objects[k] for k in sorted(self.n_objects)}
        m["attribute_counts"] = self.attributes
        m["min_visible_pixels"] = int(self.min_visible) if self.n_objects else None
        return m
