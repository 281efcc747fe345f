"""Atomic, resumable writing of a dataset directory (layout in FORMAT.md).

Work happens in DIR/.partial/: scenes are generated in fixed shards (scene ranges), each saved as
it finishes (its images written in place into .partial/images.npy, its other files under temp
names, then renamed; its .json is written last and marks it done). Re-running the same command
redoes only the missing shards. When all are done the final files are assembled
under temp names, renamed into DIR, and manifest.json is written last: a directory is complete
exactly when manifest.json exists. A crash or Ctrl-C at any point leaves no manifest.json.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from revtransfer import provenance
from revtransfer.atomic import TMP_PREFIX, atomic_path, atomic_write_json, atomic_write_text, clean_stale_temps
from revtransfer.errors import UserError

from . import coco, labels, preview, vocab
from .pipeline import cell_assignment, label_columns, load_kernels, make_scene, scene_record
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


class DatasetDirError(UserError, RuntimeError):
    """The output directory holds something else (another spec, foreign files, a running job)."""


def write_json_atomic(path: Path, obj, indent: int | None = 1) -> None:
    atomic_write_json(path, obj, indent=indent, sort_keys=False)


def create_npy(path: Path, shape: tuple[int, ...]) -> None:
    """An .npy file of uint8 zeros of this shape (sparse: only its header is written), whose
    rows write_npy_rows fills in place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                "fortran_order": False, "shape": shape})
        f.truncate(f.tell() + math.prod(shape))


def write_npy_rows(path: Path, start: int, rows: np.ndarray) -> None:
    """Write rows[i] into row start + i of the uint8 .npy file at `path` (from create_npy).
    Processes may write disjoint rows of one file at the same time."""
    with open(path, "r+b") as f:
        np.lib.format.read_magic(f)
        shape = np.lib.format.read_array_header_1_0(f)[0]
        f.seek(f.tell() + start * math.prod(shape[1:]))
        np.ascontiguousarray(rows, dtype=np.uint8).tofile(f)


# --- shards --------------------------------------------------------------------------------------
def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def _shard_stem(partial: Path, shard: int) -> Path:
    return partial / f"shard-{shard:05d}"


def build_shard(partial: str, spec_dict: dict, shard: int, start: int, stop: int,
                cells: np.ndarray) -> tuple[int, int]:
    """Generate scenes [start, stop) and save them as one shard (in a worker or this process).

    A shard is its images, its scenes and COCO annotations as the JSON lines the final files
    hold (so assembling them is concatenation) and, written last to mark it done, a JSON file
    of its labels rows and each scene's smallest visible pixel count."""
    spec = DatasetSpec.from_dict(spec_dict)
    partial_dir = Path(partial)
    stem = _shard_stem(partial_dir, shard)
    images = np.empty((stop - start, spec.height, spec.width, 3), dtype=np.uint8)
    scene_lines, annotation_lines, rows, min_visible = [], [], [], []
    for i, (has_x, has_y) in zip(range(start, stop), cells):
        result = make_scene(spec, i, int(has_x), int(has_y))
        images[i - start] = result.image
        record = scene_record(result, spec)
        scene_lines.append(json.dumps(record["scene"]) + "\n")
        annotation_lines += [json.dumps(a) + "\n" for a in record.get("annotations", ())]
        rows.append(record["labels"])
        min_visible.append(min(o["visible_pixels"] for o in record["scene"]["objects"]))
    if spec.image_format == "npy":
        write_npy_rows(partial_dir / "images.npy", start, images)
    else:
        from PIL import Image
        png_dir = partial_dir / "images"
        png_dir.mkdir(exist_ok=True)
        for i, img in zip(range(start, stop), images):
            path = png_dir / f"{i:06d}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
    atomic_write_text(stem.with_suffix(".scenes.jsonl"), "".join(scene_lines))
    if spec.coco:
        atomic_write_text(stem.with_suffix(".coco.jsonl"), "".join(annotation_lines))
    write_json_atomic(stem.with_suffix(".json"), {"labels": rows, "min_visible": min_visible},
                      indent=None)  # last: marks the shard done
    return shard, stop - start


def _build_shard_star(args):
    return build_shard(*args)


def _build_in_parallel(jobs: list, workers: int, bar) -> None:
    """Build the shards in `workers` processes: this one and workers - 1 spawned ones.

    Shards are handed out one at a time, to each worker as it finishes one and to this process
    between its own, so this process works while the workers start (a spawned worker needs
    about a second to import numpy and numba and load the kernels) and the shards end together.
    """
    # Compile the kernels here first (or load them), so that workers find them in numba's
    # cache instead of each compiling them.
    load_kernels()
    pending = collections.deque(jobs)
    lock = threading.Lock()
    submitted, finished, errors = [], [], []

    def hand_out(pool) -> None:  # also the callback: runs in the pool's result thread
        with lock:
            if errors or not pending:
                return
            job = pending.popleft()
        submitted.append(pool.apply_async(
            _build_shard_star, (job,), error_callback=errors.append,
            callback=lambda result: (finished.append(result[1]), hand_out(pool))))

    def take_progress() -> None:
        while finished:
            bar.update(finished.pop())

    # spawn: workers start clean (no inherited threads or torch state); each shard is seeded
    # from its scene indices, so the bytes are the same whoever builds it.
    ctx = multiprocessing.get_context("spawn")
    n_processes = min(workers - 1, len(jobs) - 1)
    with ctx.Pool(n_processes) as pool:
        for _ in range(n_processes):
            hand_out(pool)
        while True:
            with lock:
                job = pending.popleft() if pending and not errors else None
            if job is None:
                break
            bar.update(build_shard(*job)[1])
            take_progress()
        # A result is ready only after its callback ran, so once all submitted ones are ready
        # no more will be submitted.
        while (running := next((r for r in submitted if not r.ready()), None)) is not None:
            running.wait(0.1)
            take_progress()
        take_progress()
    if errors:
        raise errors[0]


# --- provenance ----------------------------------------------------------------------------------
def library_versions() -> dict[str, str | None]:
    return {**provenance.library_versions(), "renderer": RENDERER_VERSION}


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
                     and not p.name.startswith(TMP_PREFIX)) if out.exists() else []
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
    if spec.image_format == "npy":  # each shard writes its rows into it
        create_npy(partial / "images.npy", (spec.n, spec.height, spec.width, 3))
    write_json_atomic(state_path, {"spec": spec.to_dict(), "shard_size": shard_size})
    return partial, shard_size


def _clean_stale_temps(directory: Path) -> None:
    clean_stale_temps(directory)
    if (directory / "images").is_dir():
        clean_stale_temps(directory / "images")


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
        raise DatasetDirError(f"another gen is writing into {out} (lock {out / LOCK} is held)") from None
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
                _build_in_parallel(jobs, workers, bar)
        manifest = _finalize(out, partial, spec, cells, ranges, preset,
                             {"workers": workers, "shard_size": shard_size,
                              "generate_seconds": round(time.perf_counter() - t0, 3)})
        shutil.rmtree(partial, ignore_errors=True)
        return manifest
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            os.unlink(out / LOCK)


def _finalize(out: Path, partial: Path, spec: DatasetSpec, cells: np.ndarray,
              ranges: list[tuple[int, int]], preset: str | None, run: dict) -> dict:
    """Assemble shards into the final files (each renamed into place), then the manifest."""
    t0 = time.perf_counter()
    n_shards = len(ranges)
    # Images: one memory-mappable array, or the PNG folder moved into place.
    if spec.image_format == "npy":
        # The shards wrote their rows in place; a finalize that stopped after this rename
        # finds it done.
        if (partial / "images.npy").exists() or not (out / "images.npy").exists():
            os.replace(partial / "images.npy", out / "images.npy")
    else:
        with atomic_path(out / "images") as tmp:
            shutil.copytree(partial / "images", tmp)

    stats = _Stats(spec)
    header = {"info": {"generator": "clevr_gen", "split": spec.split, "x": spec.x, "y": spec.y,
                       "seed": spec.seed, "width": spec.width, "height": spec.height}}
    first_rows = []
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
        for shard in range(n_shards):
            stem = _shard_stem(partial, shard)
            meta = json.loads(stem.with_suffix(".json").read_text())
            for row in meta["labels"]:  # index, has_x, has_y, ... (label_columns)
                if (row[1], row[2]) != tuple(int(c) for c in cells[row[0]]):
                    raise AssertionError(f"scene {row[0]}: labels differ from its planned cell")
            stats.add(meta["labels"], meta["min_visible"])
            labels_f.write("".join(",".join(map(str, row)) + "\n" for row in meta["labels"]))
            first_rows += meta["labels"][:preview.MAX_TILES - len(first_rows)]
            # One scene (annotation) per line there; ",\n" between items here.
            lines = stem.with_suffix(".scenes.jsonl").read_text()
            scenes_f.write(("" if shard == 0 else ",\n") + lines[:-1].replace("\n", ",\n"))
            if coco_f is not None:
                parts = []
                for line in stem.with_suffix(".coco.jsonl").read_text().splitlines():
                    ann_id += 1  # the id goes first, as in {"id": ann_id, **annotation}
                    parts.append(("" if ann_id == 1 else ",\n") + f'{{"id": {ann_id}, '
                                 + line[1:])
                coco_f.write("".join(parts))
        scenes_f.write("\n]}\n")
        if coco_f is not None:
            coco_f.write("\n]}\n")
        # Files are closed (ExitStack unwinds in reverse) before their renames.

    _write_preview(out, spec, first_rows)
    manifest = {
        "integrity": file_integrity(out),
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
        "git_commit": provenance.git_commit(),
        "run": {**run, "finalize_seconds": round(time.perf_counter() - t0, 3),
                "finished_utc": provenance.utc_now()},
    }
    write_json_atomic(out / MANIFEST, manifest)  # last: the directory is now complete
    return manifest


# Files whose every byte is hashed into the manifest (the images are checked by size only: hashing
# gigabytes would make opening a dataset slow, and a torn write changes their size).
HASHED = ("labels.csv", "scenes.json", "coco.json", "preview.png")


def file_integrity(out: Path) -> dict[str, dict]:
    """Size (and, for the small files, SHA-256) of every file of the dataset, recorded in the
    manifest so that readers catch a truncated or edited file when they open the dataset."""
    info = {}
    for name in sorted(OWN_NAMES - {MANIFEST, PARTIAL, LOCK, "images"}):
        path = out / name
        if path.is_file():
            info[name] = {"bytes": path.stat().st_size}
            if name in HASHED:
                info[name]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return info


def _start_coco(f: io.TextIOBase, spec: DatasetSpec) -> None:
    f.write('{"info": ' + json.dumps({"description": "clevr_gen " + spec.split,
                                      "version": str(FORMAT_VERSION)}))
    f.write(', "licenses": [], "categories": ' + json.dumps(coco.categories(spec.coco_categories)))
    f.write(', "images": [\n')
    f.write(",\n".join(json.dumps(coco.image_entry(i, spec.width, spec.height,
                                                   f"images/{i:06d}.png"))
                       for i in range(spec.n)))
    f.write('\n], "annotations": [\n')


def _write_preview(out: Path, spec: DatasetSpec, rows: list[list[int]]) -> None:
    """preview.png from the first images and their labels rows."""
    k = min(spec.n, preview.MAX_TILES)
    if spec.image_format == "npy":
        images = list(np.load(out / "images.npy", mmap_mode="r")[:k])
    else:
        from PIL import Image
        images = [np.asarray(Image.open(out / "images" / f"{i:06d}.png")) for i in range(k)]
    captions = [preview.caption(row[0], row[1], row[2], row[3]) for row in rows[:k]]
    with atomic_path(out / "preview.png") as tmp:
        preview.contact_sheet(images, captions).save(tmp, format="PNG", compress_level=1)


class _Stats:
    """Measured label statistics, object-count histogram and attribute frequencies, from the
    labels rows (label_columns) and each scene's smallest visible pixel count."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.rows: list[list[int]] = []
        self.min_visible: list[int] = []

    def add(self, rows: list[list[int]], min_visible: list[int]) -> None:
        self.rows += rows
        self.min_visible += min_visible

    def summary(self) -> dict:
        rows = np.array(self.rows, dtype=np.int64).reshape(-1, len(label_columns()))
        m = labels.measure(rows[:, 1], rows[:, 2])
        sizes, counts = np.unique(rows[:, 3], return_counts=True)
        m["object_count_histogram"] = {str(k): int(c) for k, c in zip(sizes, counts)}
        totals = iter(rows[:, 6:].sum(axis=0).tolist())  # per value, in vocab.ATTRIBUTES order
        m["attribute_counts"] = {a: {v: next(totals) for v in values}
                                 for a, values in vocab.ATTRIBUTES.items()}
        m["min_visible_pixels"] = min(self.min_visible) if self.min_visible else None
        return m
