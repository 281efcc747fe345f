"""The detection study: frozen-backbone ViTDet per arch x seed on held-out images, with the
random-init floor, the fine-tuned ceiling and a width control, into the results table that
``revtransfer report`` judges claim (c) from (``revtransfer.report.detection_claim``).

A study file (YAML; presets in ``probes/presets/detect/``) names where the backbones come
from, the detector, the datasets and the references:

    name: detect_cpu
    out: runs/detect_cpu
    backbones: {sweep: cpu, corr: 0.3, fraction: 1.0}   # pretraining cells of a sweep, shared with it
    # or: backbones: {checkpoints: {vit_base: /w/vit_b16.pth, revvit_base: /w/revvit_b.pyth}}
    archs: [vit_micro, revvit_micro]
    seeds: [0, 1, 2, 3, 4]
    datasets:                                            # clevr_gen specs (generated if missing) ...
      root: data/detect_cpu
      train: {n: 3000, width: 80, height: 80, seed: 21}
      val: {n: 500, width: 80, height: 80, seed: 22}
    # ... or COCO by path: train: {json: ..., images: ...}, val: {json: ..., images: ...}
    detector: {config: "clevr_mask_rcnn_{arch}_frozen", iters: 1200, eval_period: 240, overrides: [],
               decay_at: [0.667, 0.889]}                 # lr x0.1 at these fractions of each cell's length
    references: {floor: {seeds: [0, 1]}, ceiling: {seeds: [0], iters: 400}}
    width_control: {archs: [revvit_micro], seeds: [0, 1, 2]}  # the pyramid gets C channels, not 2C
    launcher: {partition: gpu, time: "24:00:00"}         # SLURM resources for --launcher slurm

With a sweep as the source, a cell whose backbone exists trains only the detector; a missing
backbone is pretrained (and probed) as that sweep's cell, seeds beyond the sweep's own included, so
the probe study reuses it. Every cell resumes: a finished one (its row exists) is skipped, an
interrupted one continues from detectron2's last checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from revtransfer.errors import UserError, yaml_problem
from revtransfer.results import ResultsTable

PRESET_DIR = Path(__file__).resolve().parent / "presets" / "detect"
log = logging.getLogger(__name__)


class StudyError(UserError, ValueError):
    """A detection study file that cannot be run as written; the message names the key."""


@dataclass(frozen=True)
class DetectCell:
    arch: str
    seed: int
    role: str = "frozen"  # frozen | floor | ceiling
    tag: str = ""         # "" (main) | width-control

    @property
    def cell_id(self) -> str:
        return f"{self.arch}-{self.role}{'-' + self.tag if self.tag else ''}-seed{self.seed}"


@dataclass
class DetectStudySpec:
    name: str
    out: Path
    archs: list[str]
    seeds: list[int]
    backbones: dict
    datasets: dict
    detector: dict
    references: dict = field(default_factory=dict)
    width_control: dict = field(default_factory=dict)
    launcher: dict = field(default_factory=dict)
    workdir: Path = Path(".")
    source: Path | None = None

    @classmethod
    def load(cls, name_or_path: str, workdir: str | os.PathLike = ".") -> "DetectStudySpec":
        path = Path(name_or_path)
        if not path.is_file():
            preset = PRESET_DIR / f"{name_or_path}.yaml"
            if not preset.is_file():
                names = sorted(p.stem for p in PRESET_DIR.glob("detect_*.yaml"))
                raise StudyError(f"detection study {name_or_path!r} is neither a file nor a preset ({', '.join(names)})")
            path = preset
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise StudyError(f"{path} is not valid YAML: {yaml_problem(e)}") from e
        spec = cls.from_dict(data or {}, workdir)
        spec.source = path
        return spec

    @classmethod
    def from_dict(cls, d: dict, workdir: str | os.PathLike = ".") -> "DetectStudySpec":
        workdir = Path(workdir)
        missing = [k for k in ("name", "out", "archs", "seeds", "backbones", "datasets", "detector") if k not in d]
        if missing:
            raise StudyError(f"the study file lacks {', '.join(missing)}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise StudyError(f"unknown keys {', '.join(sorted(unknown))}")
        bb = d["backbones"]
        if not isinstance(bb, dict) or ("sweep" in bb) == ("checkpoints" in bb):
            raise StudyError("backbones: give either {sweep: NAME, corr: C, fraction: F} or {checkpoints: {arch: path}}")
        if "checkpoints" in bb and set(d["archs"]) - set(bb["checkpoints"]):
            raise StudyError(f"backbones.checkpoints has no path for {sorted(set(d['archs']) - set(bb['checkpoints']))}")
        for split in ("train", "val"):
            if split not in d["datasets"]:
                raise StudyError(f"datasets.{split} is missing (detection trains on one set and evaluates on another)")
        if "{arch}" not in str(d["detector"].get("config", "")):
            raise StudyError("detector.config must name the arch as {arch}, e.g. clevr_mask_rcnn_{arch}_frozen")
        seeds = [int(s) for s in d["seeds"]]
        if len(set(seeds)) < len(seeds):
            raise StudyError(f"seeds {seeds} repeat")
        _check_decay_at(d["detector"].get("decay_at"))
        wc = d.get("width_control") or {}
        if set(wc.get("seeds", seeds)) - set(seeds):
            raise StudyError(f"width_control.seeds {wc['seeds']} must be among the study's seeds {seeds}")
        return cls(name=str(d["name"]), out=workdir / d["out"], archs=list(d["archs"]), seeds=seeds,
                   backbones=dict(bb), datasets=dict(d["datasets"]), detector=dict(d["detector"]),
                   references=dict(d.get("references") or {}), width_control=dict(d.get("width_control") or {}),
                   launcher=dict(d.get("launcher") or {}), workdir=workdir)

    # --- cells ------------------------------------------------------------------------------------
    def cells(self) -> list[DetectCell]:
        out = [DetectCell(a, s) for s in self.seeds for a in self.archs]
        wc = self.width_control
        out += [DetectCell(a, s, tag="width-control") for s in wc.get("seeds", self.seeds) for a in wc.get("archs", [])]
        floor = self.references.get("floor") or {}
        out += [DetectCell(a, s, role="floor") for s in floor.get("seeds", []) for a in self.archs]
        ceiling = self.references.get("ceiling") or {}
        out += [DetectCell(a, s, role="ceiling") for s in ceiling.get("seeds", []) for a in self.archs]
        return out

    def run_dir(self, cell: DetectCell) -> Path:
        return self.out / "runs" / cell.cell_id

    def iters(self, cell: DetectCell) -> int:
        if cell.role == "ceiling":
            return int((self.references.get("ceiling") or {}).get("iters", self.detector["iters"]))
        return int(self.detector["iters"])

    def schedule_overrides(self, cell: DetectCell) -> list[str]:
        """``detector.decay_at``: the lr's x0.1 steps at these fractions of the cell's own length, so a
        shorter ceiling decays at the same points of its schedule as the frozen runs."""
        fractions = self.detector.get("decay_at")
        if not fractions:
            return []
        n = self.iters(cell)
        milestones = ",".join(str(round(f * n)) for f in fractions)
        values = ",".join(f"{0.1 ** i:g}" for i in range(len(fractions) + 1))
        return [f"lr_multiplier.scheduler.milestones=[{milestones}]", f"lr_multiplier.scheduler.values=[{values}]"]


def _check_decay_at(fractions) -> None:
    if fractions is None:
        return
    ok = isinstance(fractions, list) and fractions and all(isinstance(f, (int, float)) for f in fractions)
    if not ok or not all(a < b for a, b in zip([0, *fractions], [*fractions, 1])):
        raise StudyError(f"detector.decay_at {fractions!r}: give increasing fractions of the run in (0, 1), "
                         "e.g. [0.667, 0.889]")


# --- backbones and data ----------------------------------------------------------------------------
def _sweep(spec: DetectStudySpec, seeds):
    from .sweep import SweepSpec

    sweep = SweepSpec.load(spec.backbones["sweep"], spec.workdir)
    return dataclasses.replace(sweep, seeds=sorted(set(sweep.seeds) | set(seeds)))


def _sweep_cell(sweep, arch: str, corr: float, fraction: float, seed: int):
    for c in sweep.cells():
        if c.arch == arch and abs(c.corr - corr) < 1e-9 and abs(c.fraction - fraction) < 1e-9 and c.seed == seed:
            return c
    raise StudyError(f"sweep {sweep.name} has no cell {arch} corr {corr:g} fraction {fraction:g} "
                     f"(its corrs: {sweep.corrs}, fractions: {sweep.fractions})")


def _backbone_cell(spec: DetectStudySpec, arch: str, seed: int):
    sweep = _sweep(spec, spec.seeds)
    return sweep, _sweep_cell(sweep, arch, float(spec.backbones["corr"]), float(spec.backbones.get("fraction", 1.0)),
                              seed)


def backbone_state(spec: DetectStudySpec, arch: str, seed: int) -> str:
    """``given`` (a checkpoint path in the study file), ``ready`` (the sweep cell's checkpoint is
    there), ``rebuild`` (its row exists, its checkpoint does not: pretrained again) or ``pretrain``
    (the sweep cell has not run: it runs, probes and all, as that sweep's cell)."""
    if "checkpoints" in spec.backbones:
        return "given"
    return _cell_state(*_backbone_cell(spec, arch, seed))


def _cell_state(sweep, cell) -> str:
    run = sweep.run_dir(cell)
    if (run / "summary.json").exists() and (run / "checkpoint_best.pt").exists():
        return "ready"
    return "rebuild" if cell.cell_id in ResultsTable(sweep.out).finished_cells(sweep.name) else "pretrain"


def ensure_backbone(spec: DetectStudySpec, arch: str, seed: int, progress: bool = True) -> tuple[str, dict | None]:
    """(checkpoint path, model kwargs) of the backbone of (arch, seed); a sweep cell that has not
    run yet is pretrained (and probed) as that sweep's cell first."""
    if "checkpoints" in spec.backbones:
        return str(spec.backbones["checkpoints"][arch]), None
    from .detect_ladder import backbone_model_kwargs
    from .sweep import run_sweep

    sweep, cell = _backbone_cell(spec, arch, seed)
    run = sweep.run_dir(cell)
    state = _cell_state(sweep, cell)
    if state != "ready":
        if state == "rebuild":
            rebuild_backbone(sweep, cell, progress)
        else:
            report = run_sweep(sweep, progress=progress, only=lambda c: c.cell_id == cell.cell_id)
            if cell.cell_id in report.busy:  # another process (the probe sweep itself) pretrains it now
                log.info("backbone %s is being pretrained by another process: waiting for it", cell.cell_id)
                from .sweep import cell_lock

                with cell_lock(run, wait=True):
                    pass
                if _cell_state(sweep, cell) != "ready":
                    raise StudyError(f"backbone cell {cell.cell_id}: the process pretraining it ended without "
                                     f"a checkpoint (see {run / 'error.txt'}); run the study again")
            if cell.cell_id in report.failed:
                raise StudyError(f"pretraining backbone cell {cell.cell_id} failed: {report.failed[cell.cell_id]}")
    return str(run / "checkpoint_best.pt"), backbone_model_kwargs(run)


REBUILT = "rebuilt.json"


def rebuild_backbone(sweep, cell, progress: bool = True) -> dict:
    """Pretrain again a sweep cell whose row exists but whose checkpoint is gone (run dirs are not
    in git): the same config and seed, so the same backbone up to the machine's float arithmetic.
    The sweep's row is left as it is (its probe numbers were measured on the original); the
    rebuilt run's validation accuracy on X is set beside the row's in the run dir's ``rebuilt.json``
    and a difference is said."""
    from revtransfer.atomic import atomic_write_json
    from revtransfer.provenance import machine, utc_now
    from revtransfer.train import pretrain

    from .sweep import ensure_dataset

    ensure_dataset(sweep.pretrain[cell.corr], sweep.gen_workers, progress)
    result = pretrain(sweep.pretrain_config(cell), resume=True, progress=progress)
    if not (sweep.run_dir(cell) / "checkpoint_best.pt").exists():
        raise StudyError(f"rebuilding backbone {cell.cell_id}: pretraining wrote no checkpoint_best.pt (its "
                         f"checkpoint_last.pt was already at the last epoch?); move {sweep.run_dir(cell)} away "
                         "and run the study again to pretrain it from the start")
    rows = ResultsTable(sweep.out).read()
    row = rows[(rows["sweep"] == sweep.name) & (rows["cell_id"] == cell.cell_id)].iloc[-1]
    note = {"cell_id": cell.cell_id, "row_pretrain_val_acc": float(row["pretrain_val_acc"]),
            "rebuilt_pretrain_val_acc": float(result.val_acc),
            "same_val_acc": abs(float(row["pretrain_val_acc"]) - float(result.val_acc)) < 1e-9,
            "row_git_commit": row.get("git_commit") if isinstance(row.get("git_commit"), str) else None,
            "machine": machine(), "rebuilt_at": utc_now()}
    atomic_write_json(sweep.run_dir(cell) / REBUILT, note)
    if not note["same_val_acc"]:
        log.warning("rebuilt backbone %s: validation accuracy on X %.4f, the sweep's row says %.4f (another "
                    "machine's float arithmetic); detection uses the rebuilt one", cell.cell_id,
                    note["rebuilt_pretrain_val_acc"], note["row_pretrain_val_acc"])
    return note


def ensure_datasets(spec: DetectStudySpec, progress: bool = True) -> dict[str, tuple[str, str]]:
    """split -> (coco json, images): clevr_gen specs are generated under ``datasets.root`` if missing."""
    out = {}
    root = spec.workdir / spec.datasets.get("root", "data/detect")
    for split in ("train", "val"):
        entry = dict(spec.datasets[split])
        if "json" in entry:
            out[split] = (str(spec.workdir / entry["json"]), str(spec.workdir / entry["images"]))
            continue
        from clevr_gen import DatasetSpec, generate

        entry = {"p_x": 0.5, "p_y": 0.5, "corr": 0.0, "coco": True, **entry}
        ds = DatasetSpec.from_dict(entry)
        path = root / f"{split}-{ds.coco_categories}-{ds.width}x{ds.height}-n{ds.n}-seed{ds.seed}"
        if not (path / "manifest.json").exists():
            generate(ds, path, workers=int(spec.datasets.get("workers", 1)), progress=progress)
        out[split] = (str(path / "coco.json"), str(path))
    return out


def run_args(spec: DetectStudySpec, cell: DetectCell, data: dict, checkpoint: str, kwargs: dict | None):
    """The ``RunArgs`` of one cell (what ``revtransfer detect train`` would be given)."""
    from detection.train_net import RunArgs

    period = int(spec.detector.get("eval_period", spec.iters(cell)))
    if spec.iters(cell) != int(spec.detector["iters"]):  # a shorter ceiling evaluates at the same fractions
        period = max(1, round(period * spec.iters(cell) / int(spec.detector["iters"])))
    period = min(period, spec.iters(cell))
    overrides = [f"train.eval_period={period}", f"train.checkpointer.period={period}",
                 *spec.schedule_overrides(cell), *spec.detector.get("overrides", [])]
    if kwargs:
        from .detect_ladder import override_value

        overrides.append(f"model.backbone.net.model_kwargs={override_value(kwargs)}")
    if cell.role == "ceiling":
        overrides.append("model.backbone.net.freeze=False")
    if cell.tag == "width-control":
        overrides.append(f"model.backbone.net.out_channels={_half_width(cell.arch, kwargs)}")
    return RunArgs(config=spec.detector["config"].format(arch=cell.arch),
                   backbone_checkpoint="" if cell.role == "floor" else checkpoint,
                   train_json=data["train"][0], train_images=data["train"][1], val_json=data["val"][0],
                   val_images=data["val"][1], output_dir=str(spec.run_dir(cell)), max_iter=spec.iters(cell),
                   seed=cell.seed, image_size=spec.detector.get("image_size"), results_dir=str(spec.out),
                   resume=(spec.run_dir(cell) / "last_checkpoint").exists(), tag=cell.tag,
                   overrides=overrides)


def _half_width(arch: str, kwargs: dict | None) -> int:
    import torch

    from revtransfer.models import create_model

    with torch.device("meta"):  # only the width matters
        return int(create_model(arch, num_classes=0, **dict(kwargs or {})).num_features) // 2


# --- running -----------------------------------------------------------------------------------
def finished(spec: DetectStudySpec) -> set[str]:
    table = ResultsTable(spec.out).read()
    if not len(table) or "run_dir" not in table:
        return set()
    done = set(table.loc[table["box_AP"].notna(), "run_dir"].astype(str)) if "box_AP" in table else set()
    return {c.cell_id for c in spec.cells() if str(spec.run_dir(c)) in done}


def cell_backbone(spec: DetectStudySpec, cell: DetectCell, progress: bool = True,
                  pretrain: bool = True) -> tuple[str, dict | None]:
    """(checkpoint, model kwargs) of a cell's backbone. A floor loads no weights: it needs only the
    arch's model kwargs, which every seed's backbone of the sweep shares, so it takes them from one
    that is there rather than pretrain its own. ``pretrain=False`` (submitting to SLURM, where this
    process is not the place to train) refuses a backbone that is not there yet."""
    if cell.role == "floor" and "checkpoints" in spec.backbones:
        return "", None
    seed = cell.seed
    if cell.role == "floor":
        ready = [s for s in dict.fromkeys([cell.seed, *spec.seeds]) if backbone_state(spec, cell.arch, s) == "ready"]
        seed = ready[0] if ready else cell.seed
    if not pretrain and (state := backbone_state(spec, cell.arch, seed)) not in ("ready", "given"):
        sweep, bcell = _backbone_cell(spec, cell.arch, seed)
        raise StudyError(f"{cell.cell_id}: its backbone, cell {bcell.cell_id} of sweep {sweep.name}, is not there "
                         f"({state}); pretrain it first (`revtransfer sweep {sweep.name} --launcher slurm`, or "
                         f"this study without --launcher)")
    return ensure_backbone(spec, cell.arch, seed, progress)


def run_cell(spec: DetectStudySpec, cell: DetectCell, progress: bool = True) -> dict:
    from detection.train_net import main as detect_main

    data = ensure_datasets(spec, progress)
    checkpoint, kwargs = cell_backbone(spec, cell, progress)
    return detect_main(run_args(spec, cell, data, checkpoint, kwargs))


def run_study(spec: DetectStudySpec, progress: bool = True, echo=print, only=None) -> dict[str, str]:
    """Every unfinished cell, in order; a failed cell is reported and the others go on. A cell
    another process is running (its lock is held: a second ``detect-study`` of the same study, e.g.
    one per core) is left to it, so several processes can share one study."""
    from .sweep import cell_lock

    done, failed = finished(spec), {}
    todo = [c for c in spec.cells() if c.cell_id not in done and (only is None or only(c))]
    echo(f"detection study {spec.name}: {len(done)} cells done, {len(todo)} to run")
    for i, cell in enumerate(todo, 1):
        with cell_lock(spec.run_dir(cell)) as mine:
            if not mine:
                echo(f"[{i}/{len(todo)}] {cell.cell_id}: another process is running it, left to it")
                continue
            if cell.cell_id in finished(spec):  # finished by another process meanwhile
                continue
            eta = study_eta(spec, todo[i - 1:])
            echo(f"[{i}/{len(todo)}] {cell.cell_id}" + (f" ({eta}, this cell included)" if eta else ""))
            try:
                if cell.role != "floor" and (state := backbone_state(spec, cell.arch, cell.seed)) in ("pretrain",
                                                                                                      "rebuild"):
                    sweep, bcell = _backbone_cell(spec, cell.arch, cell.seed)
                    echo(f"  its backbone first: {'pretraining' if state == 'pretrain' else 'rebuilding'} cell "
                         f"{bcell.cell_id} of sweep {sweep.name} (its row joins that sweep's table)")
                metrics = run_cell(spec, cell, progress)
                echo(f"  box AP {metrics.get('bbox', {}).get('AP', float('nan')):.1f}, "
                     f"mask AP {metrics.get('segm', {}).get('AP', float('nan')):.1f}")
            except Exception as e:  # noqa: BLE001 — recorded, the study goes on
                failed[cell.cell_id] = f"{type(e).__name__}: {e}"
                echo(f"  failed: {failed[cell.cell_id]}")
    return failed


def study_eta(spec: DetectStudySpec, todo: list[DetectCell], pretrain: int = 0) -> str:
    """An estimate of what ``todo`` costs from this study's measured runs: each cell's iterations at
    the median seconds per iteration of the finished runs of its role (a ceiling trains its backbone
    too; without runs of its role, the frozen runs' rate), plus ``pretrain`` backbones at the
    median cell time of the sweep they come from. Empty when nothing is measured yet."""
    import pandas as pd

    table = ResultsTable(spec.out).read()
    if not todo or not len(table) or "wall_time_s" not in table or "box_AP" not in table:
        return ""
    rows = table[table["box_AP"].notna() & table["wall_time_s"].notna() & (table["iterations"] > 0)]
    rows = rows[rows["run_dir"].astype(str).isin({str(spec.run_dir(c)) for c in spec.cells()})]
    if rows.empty:
        return ""
    per_iter = (rows["wall_time_s"] / rows["iterations"]).groupby(rows["backbone_role"]).median()
    fallback = float(per_iter.get("frozen", per_iter.median()))
    seconds = sum(spec.iters(c) * float(per_iter.get(c.role, fallback)) for c in todo)
    if pretrain and "sweep" in spec.backbones:
        sweep = _sweep(spec, spec.seeds)
        cells = ResultsTable(sweep.out).read()
        ok = cells[(cells["sweep"] == sweep.name) & (cells["status"] == "ok")] if len(cells) else cells
        if len(ok) and "wall_time_s" in ok:
            seconds += pretrain * float(pd.to_numeric(ok["wall_time_s"]).median())
    from .sweep import format_duration

    sources = f"{len(rows)} runs" + (", the sweep's median cell" if pretrain else "")
    return f"ETA {format_duration(seconds)} at the measured rates ({sources})"


def status_lines(spec: DetectStudySpec) -> list[str]:
    """One line per cell: its state and, for a cell still to train, its backbone's (``backbone_state``)."""
    from .sweep import cell_lock_held

    done, states = finished(spec), {}
    lines = []
    for c in spec.cells():
        state = "ok" if c.cell_id in done else "running" if cell_lock_held(spec.run_dir(c)) else \
            "partial" if (spec.run_dir(c) / "last_checkpoint").exists() else "todo"
        line = f"{state:8s} {c.cell_id}"
        if state not in ("ok", "running") and c.role != "floor":
            key = (c.arch, c.seed)
            if key not in states:
                try:
                    states[key] = backbone_state(spec, *key)
                except StudyError as e:  # said here; running the cell raises it
                    states[key] = f"none ({e})"
            line += f"  (backbone: {states[key]})"
        lines.append(line)
    todo = {k: v for k, v in states.items() if v in ("rebuild", "pretrain")}
    tail = f"{len(done)} of {len(spec.cells())} cells done"
    if todo:
        tail += f"; {len(todo)} backbone(s) to pretrain first"
    eta = study_eta(spec, [c for c in spec.cells() if c.cell_id not in done], pretrain=len(todo))
    return lines + [tail + (f"; {eta}" if eta else "")]


def estimate_hours(spec: DetectStudySpec, bench_json: str) -> list[dict]:
    """Projected training hours per arch from a ``detect bench`` JSON (its measured samples/s of
    the same config, frozen), for the cells not yet done."""
    from revtransfer.bench.record import read_bench_file

    _, records, _ = read_bench_file(bench_json)
    rates = {}
    for r in records:
        if r.measure == "detect_step" and r.status == "ok" and r.samples_per_s and r.extra.get("backbone") == "frozen":
            rates.setdefault(r.model, (r.samples_per_s, r.batch_size, r.device))
    done = finished(spec)
    batch = int(spec.detector.get("batch_size", 0)) or None
    rows = []
    for arch in spec.archs:
        cells = [c for c in spec.cells() if c.arch == arch and c.cell_id not in done]
        images = sum(spec.iters(c) for c in cells) * (batch or (rates.get(arch, (0, 1))[1]))
        rate = rates.get(arch)
        rows.append({"arch": arch, "cells": len(cells), "images": images,
                     "samples_per_s": rate[0] if rate else None, "device": rate[2] if rate else None,
                     "hours": images / rate[0] / 3600 if rate else None})
    return rows


# --- the command ----------------------------------------------------------------------------------
import click  # noqa: E402

from revtransfer.launch.options import launcher_options, pop_launcher_options  # noqa: E402


@click.command("detect-study", context_settings={"show_default": True},
               short_help="The detection study: frozen ViTDet per arch x seed, floor, ceiling, width control.")
@click.argument("study_file")
@click.option("--workdir", type=click.Path(file_okay=False), default=".",
              help="Relative paths in the study file are resolved against this directory.")
@click.option("--only", multiple=True, metavar="KEY=VALUE", help="Run only matching cells: arch=, seed=, role=, tag=.")
@click.option("--status", "show_status", is_flag=True, help="List the cells and their state; run nothing.")
@click.option("--estimate", "estimate_from", metavar="BENCH_JSON",
              help="Project the remaining training hours from a `detect bench` JSON; run nothing.")
@click.option("--progress/--no-progress", default=True)
@launcher_options(gpus_per_task=False, extra=[
    click.option("--gpus-per-node", type=int, help="With --launcher slurm: GPUs (processes) per detection run.")])
def detect_study(study_file, workdir, only, show_status, estimate_from, progress, **launch):
    """Run every unfinished cell of STUDY_FILE (a YAML path, or a preset: detect_cpu, detect_paper).

    \b
    revtransfer detect-study detect_cpu                  # CPU: backbones from the cpu sweep, 5 seeds
    revtransfer detect-study detect_cpu --status
    revtransfer detect-study detect_paper --estimate reports/bench/gpu/detect_h100.json
    revtransfer detect-study detect_paper --launcher slurm --partition gpu --gpus-per-node 8

    Rows go to OUT/results.{parquet,csv}; `revtransfer report --results OUT` judges claim (c).
    """
    spec = DetectStudySpec.load(study_file, workdir)
    gpus = launch.pop("gpus_per_node")
    launcher, options, wait = pop_launcher_options(launch, spec.launcher, slurm_only={"--gpus-per-node": gpus})
    predicate = _only_filter(only)
    if show_status:
        for line in status_lines(spec):
            click.echo(line)
        return
    if estimate_from:
        for r in estimate_hours(spec, estimate_from):
            hours = "no measured throughput for it" if r["hours"] is None else \
                f"{r['hours']:.1f} h at {r['samples_per_s']:.1f} images/s ({r['device']})"
            click.echo(f"{r['arch']:<16s} {r['cells']:>3d} cells, {r['images']:>10,d} training images: {hours}")
        return
    if launcher == "slurm":
        _submit(spec, options, gpus or int(spec.detector.get("gpus_per_node", 1)), predicate, progress)
        return
    failed = run_study(spec, progress=progress, echo=lambda m: click.echo(m, err=True), only=predicate)
    click.echo(f"detection study {spec.name}: {len(finished(spec))} of {len(spec.cells())} cells done; "
               f"table: {spec.out / 'results.csv'}")
    if failed:
        raise click.ClickException(f"{len(failed)} cell(s) failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))


def _only_filter(items):
    conds = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in ("arch", "seed", "role", "tag"):
            raise click.BadParameter(f"{item!r}: use arch=, seed=, role= or tag=", param_hint="--only")
        conds.append((key, int(value) if key == "seed" else value))
    return (lambda c: all(getattr(c, k) == v for k, v in conds)) if conds else None


def _submit(spec, options, gpus_per_node, predicate, progress):
    """One SLURM job per unfinished cell (detectron2's launch over the node's GPUs). Backbones must
    exist first (from disk, or the sweep's cells: run that sweep before): a missing one is refused
    before anything is submitted. A cell whose job is queued or running (its run dir's
    ``slurm_job.json``), or that a local process runs, is not submitted again."""
    from detection.jobs import submit_detect
    from revtransfer.launch.slurm import JobRecord, check_slurm, is_active, job_states

    from .sweep import cell_lock_held

    check_slurm()
    done = finished(spec)
    todo = [c for c in spec.cells() if c.cell_id not in done and (predicate is None or predicate(c))]
    backbones = {c.cell_id: cell_backbone(spec, c, progress, pretrain=False) for c in todo}
    data = ensure_datasets(spec, progress)
    records = {c.cell_id: r for c in todo if (r := JobRecord.load(spec.run_dir(c))) is not None}
    states = job_states(r.job_id for r in records.values()) if records else {}
    for cell in todo:
        r = records.get(cell.cell_id)
        if r is not None and is_active(state := states.get(r.job_id, "UNKNOWN")):
            click.echo(f"{cell.cell_id}: SLURM job {r.job_id} is {state}; not submitted again")
            continue
        if cell_lock_held(spec.run_dir(cell)):
            click.echo(f"{cell.cell_id}: a process on this machine runs it; not submitted")
            continue
        record = submit_detect(run_args(spec, cell, data, *backbones[cell.cell_id]), options, nodes=1,
                               gpus_per_node=gpus_per_node)
        click.echo(f"{cell.cell_id}: SLURM job {record.job_id}")
