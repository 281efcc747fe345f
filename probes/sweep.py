"""Sweeps: every cell (arch x pretrain correlation x fraction x seed) is pretrain -> probe -> one
row in the results table.

A sweep is resumable at two levels: finished cells (a row with status "ok") are skipped, and an
unfinished cell's pretraining resumes from its last checkpoint. A failing cell is recorded with its
error and the sweep goes on. Cells take a lock while they run, so several sweep processes (e.g. one
per GPU) can work through the same sweep file together.

Sweep file (YAML)::

    name: demo
    out: runs/demo                      # results table + one run dir per cell
    datasets:
      root: data/demo                   # where generated datasets go
      workers: 2                        # clevr_gen workers
      pretrain:                         # correlation -> dataset: a path, or clevr_gen spec fields
        0.8: {preset: pretrain-corr0.80, n: 600, width: 32, height: 32}
        0.3: data/elsewhere/pt-0.3
      transfer: {preset: transfer, n: 400, width: 32, height: 32}
    grid: {arch: [vit_micro, revvit_micro], corr: [0.8, 0.3], fraction: [1/3, 1], seed: [0]}
    backprop: pareprop                  # for reversible archs
    recipe: {epochs: 3, batch_size: 32}  # PretrainConfig fields
    equal_samples: false                # true: a fraction-f cell trains epochs/f epochs (see below)
    model_kwargs: {depth: 2}             # for every arch; per arch: model_kwargs_by_arch
    probe: {n_boot: 200}                 # ProbeSettings fields
    launcher: {partition: gpu, time: "4:00:00", gpus_per_task: 1}  # SLURM resources (--launcher slurm)
    claims:                              # declared before any cell runs (revtransfer.report.claims)
      primary: a_matched                 # a | b1 | b2, on probe_acc; _matched: on probe_acc_matched
      secondary: [a, b1, b2]             # Holm over these
      exploratory: [b1_matched]          # unadjusted, never confirmatory
      alpha: 0.025                       # one-sided
      sesoi: 0                           # points
      max_seeds: 8                       # per (cell, arch): --until-decided's group-sequential design
      spending: obf                      # O'Brien-Fleming-type alpha spending (or pocock)
      allocation: neyman                 # seeds per block: equal, or where the variance is

Relative paths are resolved against the working directory (``--workdir``).

The ``claims:`` section (``revtransfer.report.claims.Declaration``; defaults: primary ``a``,
secondary ``b1``, ``b2``) and the probe settings are the study's declaration. The first
``run_sweep`` writes them to ``OUT/declaration.json`` (``probes.declaration``) before any cell runs,
with the time, the commit and how many rows the table held then; every row it writes carries the
declaration's digest (``declaration``) and the probe settings' (``probe_settings``). A changed
declaration after rows exist is refused unless ``redeclare`` (``--redeclare``), and the change is
kept in the record's history for the report.

By default a fraction-f cell trains ``recipe.epochs`` epochs on f of the pretrain set, so less data
also means fewer optimiser steps (the thesis's protocol). ``equal_samples: true`` gives it
round(epochs / f) epochs instead: every cell sees the same number of samples, and the fraction
varies only how many distinct images they come from (what a CPU study needs for every cell to learn X).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import yaml
from filelock import FileLock, Timeout

from revtransfer.atomic import atomic_write_text
from revtransfer.data import open_dataset
from revtransfer.errors import yaml_problem
from revtransfer.report.claims import Declaration, study_digest
from revtransfer.results import ResultsTable
from revtransfer.train.config import PretrainConfig

from .presets import resolve_sweep_file
from .probe import ProbeSettings, run_probes

log = logging.getLogger(__name__)
_RECIPE_FORBIDDEN = {"dataset", "out", "arch", "fraction", "seed", "backprop", "model_kwargs"}
_TOP_KEYS = {"name", "out", "datasets", "grid", "backprop", "recipe", "model_kwargs", "model_kwargs_by_arch",
             "probe", "description", "launcher", "equal_samples", "claims"}


class SweepError(ValueError):
    pass


def _flag(v, what: str) -> bool:
    if not isinstance(v, bool):
        raise SweepError(f"{what}: {v!r} is not true or false")
    return v


def parse_number(v, what: str) -> float:
    """Numbers as YAML gives them, or fractions written "1/3"."""
    try:
        return float(Fraction(str(v).strip())) if isinstance(v, str) else float(v)
    except (ValueError, ZeroDivisionError, TypeError):
        raise SweepError(f"{what}: {v!r} is not a number (fractions like 1/3 are fine)") from None


@dataclass(frozen=True)
class DatasetEntry:
    path: Path
    spec: dict | None  # clevr_gen spec fields (preset resolved) to generate it when missing


@dataclass(frozen=True)
class Cell:
    arch: str
    backprop: str
    corr: float
    fraction: float
    seed: int

    @property
    def cell_id(self) -> str:
        return f"{self.arch}-{self.backprop}-corr{self.corr:g}-frac{self.fraction:.4f}-seed{self.seed}"


@dataclass
class SweepSpec:
    name: str
    out: Path
    pretrain: dict[float, DatasetEntry]
    transfer: DatasetEntry
    archs: list[str]
    corrs: list[float]
    fractions: list[float]
    seeds: list[int]
    backprop: str = "pareprop"
    recipe: dict = field(default_factory=dict)
    model_kwargs: dict = field(default_factory=dict)
    model_kwargs_by_arch: dict = field(default_factory=dict)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    gen_workers: int = 1
    launcher: dict = field(default_factory=dict)  # SLURM resources (revtransfer.launch.slurm.SlurmOptions)
    equal_samples: bool = False  # a fraction-f cell trains round(epochs / f) epochs
    claims: Declaration = field(default_factory=Declaration)  # the declared claims (module docstring)
    source: Path | None = None  # the sweep file it was read from

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def load(cls, name_or_path: str | os.PathLike, workdir: str | os.PathLike = ".") -> "SweepSpec":
        path = resolve_sweep_file(name_or_path)
        try:
            data = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as e:  # safe_load: a python tag is refused here, nothing runs
            raise SweepError(f"sweep file {path} is not valid YAML: {yaml_problem(e)}") from e
        if not isinstance(data, dict):
            raise SweepError(f"sweep file {path} must hold a mapping")
        try:
            spec = cls.from_dict(data, workdir)
        except SweepError as e:
            raise SweepError(f"sweep file {path}: {e}") from e
        spec.source = Path(path)
        return spec

    @classmethod
    def from_dict(cls, d: dict, workdir: str | os.PathLike = ".") -> "SweepSpec":
        import timm

        from revtransfer.models import create_model  # noqa: F401  (registers our archs)

        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise SweepError(f"unknown keys {unknown}; known: {sorted(_TOP_KEYS)}")
        for key in ("name", "out", "datasets", "grid"):
            if key not in d:
                raise SweepError(f"missing required key {key!r}")
        workdir = Path(workdir).resolve()  # run dirs record absolute paths: probe them from anywhere
        ds = d["datasets"]
        root = workdir / ds.get("root", "data")

        def entry(name: str, v) -> DatasetEntry:
            if isinstance(v, (str, os.PathLike)):
                return DatasetEntry(workdir / v, None)
            if not isinstance(v, dict):
                raise SweepError(f"datasets.{name}: give a path or a mapping of clevr_gen spec fields")
            v = dict(v)
            path = workdir / v.pop("path") if "path" in v else root / name
            spec = {}
            if "preset" in v:
                from clevr_gen.presets import preset

                spec.update(preset(v.pop("preset")))
            spec.update(v)
            return DatasetEntry(path, spec)

        pretrain = {}
        for k, v in (ds.get("pretrain") or {}).items():
            corr = parse_number(k, f"datasets.pretrain key {k!r}")
            pretrain[corr] = entry(f"pretrain-corr{corr:g}", v)
        if "transfer" not in ds:
            raise SweepError("datasets.transfer is missing")
        transfer = entry("transfer", ds["transfer"])

        grid = d["grid"]
        missing = [k for k in ("arch", "corr", "fraction", "seed") if k not in grid]
        if missing:
            raise SweepError(f"grid lacks {missing}")
        archs = list(grid["arch"])
        for a in archs:
            if not timm.is_model(a):
                raise SweepError(f"grid.arch: unknown model {a!r}")
        corrs = [parse_number(c, "grid.corr") for c in grid["corr"]]
        for c in corrs:
            if c not in pretrain:
                raise SweepError(f"grid.corr {c:g} has no dataset in datasets.pretrain "
                                 f"(have {sorted(pretrain)})")
        fractions = [parse_number(f, "grid.fraction") for f in grid["fraction"]]
        for f in fractions:
            if not 0 < f <= 1:
                raise SweepError(f"grid.fraction {f} must lie in (0, 1]")
        seeds = [int(s) for s in grid["seed"]]
        recipe = dict(d.get("recipe") or {})
        bad = sorted(set(recipe) & _RECIPE_FORBIDDEN)
        if bad:
            raise SweepError(f"recipe may not set {bad}: the grid and the sweep decide those")
        try:
            claims = Declaration.from_dict(d.get("claims"))
            probe = ProbeSettings.from_dict(d.get("probe"))
        except ValueError as e:
            raise SweepError(str(e)) from None
        spec = cls(
            name=str(d["name"]), out=workdir / d["out"], pretrain=pretrain, transfer=transfer, archs=archs,
            corrs=corrs, fractions=fractions, seeds=seeds, backprop=d.get("backprop", "pareprop"), recipe=recipe,
            model_kwargs=dict(d.get("model_kwargs") or {}), model_kwargs_by_arch=dict(d.get("model_kwargs_by_arch") or {}),
            probe=probe, gen_workers=int(ds.get("workers", 1)), claims=claims,
            launcher=_launcher_section(d.get("launcher")), equal_samples=_flag(d.get("equal_samples", False),
                                                                               "equal_samples"))
        spec.pretrain_config(spec.cells()[0])  # validates the recipe now, not in the first cell
        return spec

    # --- cells ----------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        reversible = {a: _is_reversible_arch(a, self.kwargs_for(a)) for a in self.archs}
        return [Cell(a, self.backprop if reversible[a] else "backprop", c, f, s)
                for c in self.corrs for f in self.fractions for a in self.archs for s in self.seeds]

    def declaration_digest(self) -> str:
        """The digest of this sweep's declaration: its claims and probe settings (rows' ``declaration``)."""
        return study_digest(self.claims.hashed(), self.probe.record())

    def kwargs_for(self, arch: str) -> dict:
        return {**self.model_kwargs, **self.model_kwargs_by_arch.get(arch, {})}

    def run_dir(self, cell: Cell) -> Path:
        return self.out / "runs" / cell.cell_id

    def pretrain_config(self, cell: Cell) -> PretrainConfig:
        recipe = dict(self.recipe)
        if self.equal_samples:
            epochs = recipe.get("epochs", PretrainConfig.epochs)
            if isinstance(epochs, int) and not isinstance(epochs, bool):  # else PretrainConfig says what is wrong
                recipe["epochs"] = max(1, round(epochs / cell.fraction))
        try:
            return PretrainConfig(
                dataset=str(self.pretrain[cell.corr].path), out=str(self.run_dir(cell)), arch=cell.arch,
                model_kwargs=self.kwargs_for(cell.arch), backprop=self.backprop, fraction=cell.fraction,
                seed=cell.seed, **recipe)
        except TypeError as e:
            raise SweepError(f"recipe: {e}") from e


def _launcher_section(section) -> dict:
    """The ``launcher:`` section (SLURM resources), checked now rather than at submission."""
    from revtransfer.launch import LaunchError
    from revtransfer.launch.slurm import SlurmOptions

    if section is not None and not isinstance(section, dict):
        raise SweepError("launcher: give a mapping of SLURM resources (partition, time, gpus_per_task, ...)")
    try:
        SlurmOptions.from_dict(section)
    except LaunchError as e:
        raise SweepError(f"launcher: {e}") from None
    return dict(section or {})


_REVERSIBLE: dict[str, bool] = {}  # (arch, kwargs) -> reversible: spec.cells() asks for every progress line


def _is_reversible_arch(arch: str, kwargs: dict) -> bool:
    import json

    import torch

    from revtransfer.models import create_model, is_reversible

    key = json.dumps([arch, kwargs], sort_keys=True, default=str)
    if key not in _REVERSIBLE:
        with torch.device("meta"):  # no memory, no init cost: only the class matters
            _REVERSIBLE[key] = is_reversible(create_model(arch, num_classes=2, **kwargs))
    return _REVERSIBLE[key]


# --- datasets ------------------------------------------------------------------------------------
def ensure_dataset(entry: DatasetEntry, workers: int = 1, progress: bool = True, wait_s: float = 3600) -> Path:
    """The dataset dir, generated with clevr_gen if it is missing and the sweep says how."""
    if (entry.path / "manifest.json").exists():
        return entry.path
    if entry.spec is None:
        raise SweepError(f"dataset {entry.path} does not exist (or is incomplete) and the sweep file gives "
                         f"no clevr_gen spec to generate it")
    from clevr_gen import DatasetSpec, generate
    from clevr_gen.writer import DatasetDirError

    log.info("generating dataset %s", entry.path)
    try:
        generate(DatasetSpec.from_dict(entry.spec), entry.path, workers=workers, progress=progress,
                 log=log.info)
    except DatasetDirError as e:
        if "another gen is writing" not in str(e):
            raise
        log.info("%s is being generated by another process; waiting for it", entry.path)
        deadline = time.monotonic() + wait_s
        while not (entry.path / "manifest.json").exists():
            if time.monotonic() > deadline:
                raise SweepError(f"gave up waiting {wait_s:.0f}s for {entry.path} to be generated") from e
            time.sleep(5)
    return entry.path


# --- running -------------------------------------------------------------------------------------
CellRunner = Callable[["SweepSpec", Cell, bool], dict]


def _earlier_epochs_seconds(run_dir: Path) -> float:
    """Training time a resumed cell spent in earlier sittings (its metrics log's epochs): a row's
    ``wall_time_s`` is the cell's cost, which cell-time estimates and budgets are made of."""
    from revtransfer.train.metrics import MetricsLog

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0.0
    return float(sum(r.get("epoch_time_s") or 0.0 for r in MetricsLog(path).read()))


def run_cell(spec: SweepSpec, cell: Cell, progress: bool = True) -> dict:
    """Pretrain (resuming if a checkpoint exists) and probe one cell; the row's measurements."""
    from revtransfer.train import pretrain

    t0 = time.perf_counter()
    cfg = spec.pretrain_config(cell)
    earlier_s = _earlier_epochs_seconds(Path(cfg.out))
    result = pretrain(cfg, resume=True, progress=progress)
    probes = run_probes(cfg.out, spec.transfer.path, spec.probe, progress=progress)
    measured = open_dataset(cfg.dataset).manifest.get("measured", {})
    y = probes["has_y@transfer"]
    x = probes.get(f"{cfg.label}@pretrain_heldout")
    return {
        "corr_measured": measured.get("corr"), "n_pretrain": result.n_train, "pretrain_val_acc": result.val_acc,
        "pretrain_best_val_acc": result.best_val_acc, "epochs": result.epochs,
        "probe_acc": y.acc, "probe_acc_ci_low": y.acc_ci_low, "probe_acc_ci_high": y.acc_ci_high,
        "probe_auroc": y.auroc, "probe_auroc_ci_low": y.auroc_ci_low, "probe_auroc_ci_high": y.auroc_ci_high,
        "probe_C": y.C, "probe_majority_acc": y.majority_acc, "probe_n_train": y.n_train, "probe_n_test": y.n_test,
        "probe_C_grid_low": y.C_grid_low, "probe_C_grid_high": y.C_grid_high, "probe_C_at_edge": y.C_at_edge,
        **matched_columns(probes, spec.probe),
        "sanity_x_acc": x.acc if x else None, "sanity_x_auroc": x.auroc if x else None,
        "feature_dim": result.feature_dim, "wall_time_s": earlier_s + time.perf_counter() - t0,
        "pretrain_time_s": result.train_time_s, "samples_per_s": result.samples_per_s,
        "peak_mem_mb": result.peak_mem_mb, "peak_mem_kind": result.peak_mem_kind,
    }


def matched_columns(probes: dict, settings: ProbeSettings) -> dict:
    """The width-matched control's columns (all None when ``settings.match_dim`` is off): at the
    (largest) k, probe_acc_matched and its CI, matched_dim (the k used), matched_k_requested and
    matched_rank (the features' numerical rank, when the rank cap computed it); with a list of k,
    also probe_acc_k<k>, its CI and dim_k<k> (the k used) for every k."""
    m = probes.get(settings.matched_task) if settings.match_dim is not None else None
    out = {"probe_acc_matched": m.acc if m else None, "probe_acc_matched_ci_low": m.acc_ci_low if m else None,
           "probe_acc_matched_ci_high": m.acc_ci_high if m else None,
           "matched_dim": m.feature_dim if m else None,
           "matched_k_requested": getattr(m, "pca_requested", None) if m else None,
           "matched_rank": getattr(m, "feature_rank", None) if m else None}
    if settings.multi_k:
        for k in settings.match_dims:
            r = probes.get(f"has_y@transfer_pca{k}")
            out.update({f"probe_acc_k{k}": r.acc if r else None, f"probe_acc_k{k}_ci_low": r.acc_ci_low if r else None,
                        f"probe_acc_k{k}_ci_high": r.acc_ci_high if r else None,
                        f"dim_k{k}": r.feature_dim if r else None})
    return out


@dataclass
class SweepReport:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)      # finished before
    busy: list[str] = field(default_factory=list)         # another process holds the cell
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> error

    def summary(self) -> str:
        return (f"{len(self.ran)} ran ({len(self.failed)} failed), {len(self.skipped)} already finished, "
                f"{len(self.busy)} running elsewhere")


def run_sweep(spec: SweepSpec, *, cell_runner: CellRunner = run_cell, progress: bool = True,
              retry_failed: bool = True, only: Callable[[Cell], bool] | None = None,
              max_cells: int | None = None, redeclare: bool = False) -> SweepReport:
    """Run every unfinished cell of ``spec`` (see the module docstring). The declaration is recorded
    (or checked: ``probes.declaration.DeclarationChanged``) before any cell runs."""
    import torch

    from revtransfer.provenance import git_commit, library_versions, utc_now

    from .declaration import ensure_declaration

    spec.out.mkdir(parents=True, exist_ok=True)
    ensure_declaration(spec, redeclare=redeclare)
    table = ResultsTable(spec.out)
    versions = library_versions()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = SweepReport()
    cells = [c for c in spec.cells() if only is None or only(c)]
    done = table.finished_cells(spec.name)
    failed_before = _failed_cells(table, spec.name)
    todo = [c for c in cells if c.cell_id not in done and (retry_failed or c.cell_id not in failed_before)]
    report.skipped = [c.cell_id for c in cells if c not in todo]
    commit = git_commit()  # the code this process runs: read once
    if todo and cell_runner is run_cell:
        for corr in sorted({c.corr for c in todo}):
            ensure_dataset(spec.pretrain[corr], spec.gen_workers, progress)
        ensure_dataset(spec.transfer, spec.gen_workers, progress)
    log.info("sweep %s: %d cells, %d to run", spec.name, len(cells), len(todo))
    for i, cell in enumerate(todo):
        if max_cells is not None and len(report.ran) >= max_cells:
            break
        run_dir = spec.run_dir(cell)
        with cell_lock(run_dir) as mine:
            if not mine:  # another process runs it
                report.busy.append(cell.cell_id)
                continue
            if cell.cell_id in ResultsTable(spec.out).finished_cells(spec.name):  # finished meanwhile
                report.skipped.append(cell.cell_id)
                continue
            log.info("[%d/%d] %s (%s)", i + 1, len(todo), cell.cell_id, sweep_progress(spec, here=cell, cells=cells))
            t0 = time.perf_counter()
            row = cell_row(spec, cell, device, versions, commit)
            try:
                row.update(cell_runner(spec, cell, progress), status="ok", error=None)
                (run_dir / "error.txt").unlink(missing_ok=True)
            except Exception as e:  # noqa: BLE001 — a failed cell is recorded; KeyboardInterrupt is not caught
                msg = f"{type(e).__name__}: {e}"
                log.error("cell %s failed: %s", cell.cell_id, msg)
                atomic_write_text(run_dir / "error.txt", traceback.format_exc())
                row.update(status="failed", error=msg[:2000], wall_time_s=time.perf_counter() - t0)
                report.failed[cell.cell_id] = msg
            row["finished_at"] = utc_now()
            table.upsert([row])
            report.ran.append(cell.cell_id)
    return report


def cell_row(spec: SweepSpec, cell: Cell, device: str | None, versions: dict, commit: str | None) -> dict:
    """The columns that identify a cell's row and its provenance (the runner adds the measurements);
    ``threads``: torch's intra-op threads, since cells may run side by side, one core each."""
    import torch

    return {"sweep": spec.name, "cell_id": cell.cell_id, **dataclasses.asdict(cell),
            "dataset": str(spec.pretrain[cell.corr].path), "transfer_dataset": str(spec.transfer.path),
            "run_dir": str(spec.run_dir(cell)), "device": device, "world_size": 1,
            "threads": torch.get_num_threads(), "git_commit": commit,
            "torch_version": versions.get("torch"), "timm_version": versions.get("timm"),
            "declaration": spec.declaration_digest(), "probe_settings": spec.probe.digest()}


def record_failure(spec: SweepSpec, cell: Cell, error: str, detail: str | None = None) -> bool:
    """Write a failed row for a cell whose runner could not write one itself (a SLURM job that was
    killed), with ``detail`` (e.g. its log's last lines) in the run dir's error.txt. Nothing is
    written once the cell has an ok row, or while it runs somewhere (its lock is held: then it
    returns False, to be tried again later)."""
    from revtransfer.provenance import git_commit, library_versions, utc_now

    run_dir = spec.run_dir(cell)
    with cell_lock(run_dir) as mine:
        if not mine:
            return False
        table = ResultsTable(spec.out)
        if cell.cell_id in table.finished_cells(spec.name):
            return True
        atomic_write_text(run_dir / "error.txt", (detail or error) + "\n")
        row = cell_row(spec, cell, None, library_versions(), git_commit())
        row.update(status="failed", error=error[:2000], finished_at=utc_now())
        table.upsert([row])
        return True


def _failed_cells(table: ResultsTable, sweep: str) -> set[str]:
    t = table.read()
    if not len(t):
        return set()
    return set(t[(t["sweep"] == sweep) & (t["status"] == "failed")]["cell_id"])


@contextlib.contextmanager
def cell_lock(run_dir: Path, wait: bool = False):
    """Hold a cell's lock for the block: yields True, or False (holding nothing) while another
    process (another sweep, a SLURM job) holds it. One process runs a cell at a time. ``wait``:
    block until the other process lets go (to use what it made), then yield True."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / ".cell.lock"))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def cell_lock_held(run_dir: Path) -> bool:
    """Whether some process holds the cell's lock right now (it is running the cell)."""
    if not (run_dir / ".cell.lock").exists():
        return False
    with cell_lock(run_dir) as mine:
        return not mine


def sweep_progress(spec: SweepSpec, here: Cell | None = None, cells: list[Cell] | None = None) -> str:
    """Cells done / running / left and an ETA from the measured cell times: left (plus half of
    those running) times the median wall time of the finished cells, over the cells running at
    once (at least one). ``here``: the cell this process is about to run (counted as running);
    ``cells``: the cells in scope (a block of --until-decided, an --only filter; default all)."""
    t = ResultsTable(spec.out).read()
    ok = t[(t["sweep"] == spec.name) & (t["status"] == "ok")] if len(t) else t
    finished = set(ok["cell_id"]) if len(ok) else set()
    cells = spec.cells() if cells is None else cells
    done = sum(c.cell_id in finished for c in cells)
    running = sum(c.cell_id not in finished and (c == here or cell_lock_held(spec.run_dir(c)))
                  for c in cells)
    left = len(cells) - done - running
    line = f"{done}/{len(cells)} cells done, {running} running, {left} left"
    times = ok["wall_time_s"].dropna() if len(ok) and "wall_time_s" in ok else []
    if len(times):
        median = float(times.median())
        eta = (left + running / 2) * median / max(running, 1)
        line += (f"; median cell {median / 60:.1f} min ({len(times)} measured); "
                 f"ETA {format_duration(eta)} at {max(running, 1)} cell(s) at a time")
    return line


def format_duration(seconds: float) -> str:
    hours, minutes = divmod(int(round(seconds / 60)), 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def cell_status(spec: SweepSpec) -> list[tuple[Cell, str]]:
    """Each cell with "ok", "failed", "partial" (a checkpoint, no row yet) or "todo"."""
    t = ResultsTable(spec.out).read()
    status = {}
    if len(t):
        mine = t[t["sweep"] == spec.name]
        status = dict(zip(mine["cell_id"], mine["status"]))
    out = []
    for c in spec.cells():
        s = status.get(c.cell_id)
        if s is None:
            s = "partial" if (spec.run_dir(c) / "checkpoint_last.pt").exists() else "todo"
        out.append((c, s))
    return out
