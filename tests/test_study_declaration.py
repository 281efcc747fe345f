"""A study's declaration: recorded before any cell runs, carried by every row, a change after rows
exist refused in one line unless --redeclare (then recorded and reported); --plan prints the power
and seeds needed from the sweep's own rows or a pilot's, running nothing."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from probes.declaration import DeclarationChanged
from probes.sweep import SweepSpec, run_sweep
from revtransfer.cli import main
from revtransfer.results import ResultsTable

CLAIMS = {"primary": "a_matched", "secondary": ["a", "b1", "b2"], "alpha": 0.025, "max_seeds": 4,
          "spending": "obf", "seen_before": "nothing"}


def _sweep(tmp_path, claims=CLAIMS, probe=None) -> dict:
    d = {"name": "t", "out": "out", "datasets": {"pretrain": {0.8: "pt8", 0.3: "pt3"}, "transfer": "tf"},
         "grid": {"arch": ["vit_micro", "revvit_micro"], "corr": [0.8, 0.3], "fraction": ["1/2", 1], "seed": [0, 1]},
         "model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2},
         "recipe": {"epochs": 1, "batch_size": 16}, "probe": probe or {"match_dim": 8}, "claims": claims}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(d))
    return d


class Runner:
    """Synthetic rows: RevViT gains ``effect`` points (noise SD ``sd`` points, seeded by cell)."""

    def __init__(self, effect=2.0, sd=1.0, wall=60.0, check=None):
        self.effect, self.sd, self.wall, self.check, self.calls = effect, sd, wall, check, []

    def __call__(self, spec, cell, progress):
        if self.check:
            self.check(spec)
        self.calls.append(cell.cell_id)
        rng = np.random.default_rng(zlib.crc32(cell.cell_id.encode()))
        acc = 70 + 5 * cell.corr + (self.effect if cell.arch == "revvit_micro" else 0) + rng.normal(0, self.sd)
        return {"probe_acc": acc / 100, "probe_acc_matched": (acc - 0.3) / 100, "probe_n_test": 2000,
                "wall_time_s": self.wall, "pretrain_val_acc": 0.93, "probe_auroc": acc / 100 + 0.05,
                "feature_dim": 32 if cell.arch == "revvit_micro" else 16}


def _load(tmp_path) -> SweepSpec:
    return SweepSpec.load(tmp_path / "sweep.yaml", tmp_path)


def test_declared_before_any_cell_runs_and_carried_by_every_row(tmp_path):
    _sweep(tmp_path)
    spec = _load(tmp_path)
    seen = []
    run_sweep(spec, cell_runner=Runner(check=lambda s: seen.append((s.out / "declaration.json").exists())),
              progress=False, max_cells=3)
    assert seen and all(seen)
    rec = json.loads((spec.out / "declaration.json").read_text())
    assert rec["claims"]["primary"] == "a_matched" and rec["rows_at_declaration"] == 0 and rec["history"] == []
    assert rec["probe"]["match_dim"] == 8 and rec["probe"]["rank_cap"] is True and rec["git_commit"]
    assert rec["digest"] == spec.declaration_digest() and rec["sweep_file"].endswith("sweep.yaml")
    t = ResultsTable(spec.out).read()
    assert (t["declaration"] == rec["digest"]).all() and (t["probe_settings"] == spec.probe.digest()).all()
    # the same declaration again: nothing rewritten
    run_sweep(spec, cell_runner=Runner(), progress=False, max_cells=1)
    assert json.loads((spec.out / "declaration.json").read_text())["declared_at"] == rec["declared_at"]


def test_a_changed_declaration_after_rows_is_refused_in_one_line_unless_forced(tmp_path):
    _sweep(tmp_path)
    spec = _load(tmp_path)
    run_sweep(spec, cell_runner=Runner(), progress=False)  # all 16 cells
    _sweep(tmp_path, claims={**CLAIMS, "primary": "a", "secondary": ["a_matched", "b1", "b2"]})
    changed = _load(tmp_path)
    with pytest.raises(DeclarationChanged, match=r"16 finished row\(s\) exist"):
        run_sweep(changed, cell_runner=Runner(), progress=False)
    r = CliRunner().invoke(main, ["sweep", str(tmp_path / "sweep.yaml"), "--workdir", str(tmp_path)])
    assert r.exit_code != 0
    err = r.output.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: sweep t: the declaration")
    assert 'claims.primary: "a_matched" -> "a"' in err[0] and "--redeclare" in err[0]
    # a changed probe setting is a changed declaration too
    _sweep(tmp_path, probe={"match_dim": 8, "rank_cap": False})
    with pytest.raises(DeclarationChanged, match=r"probe.rank_cap: true -> false"):
        run_sweep(_load(tmp_path), cell_runner=Runner(), progress=False)
    # forced: recorded with what changed and how many rows existed, and the report says so
    _sweep(tmp_path, claims={**CLAIMS, "primary": "a", "secondary": ["a_matched", "b1", "b2"]})
    r = CliRunner().invoke(main, ["sweep", str(tmp_path / "sweep.yaml"), "--workdir", str(tmp_path), "--redeclare",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((spec.out / "declaration.json").read_text())
    assert rec["claims"]["primary"] == "a" and rec["rows_at_declaration"] == 16
    (h,) = rec["history"]
    assert h["rows_then"] == 16 and h["forced"] and h["claims"]["primary"] == "a_matched"
    out = tmp_path / "report"
    r = CliRunner().invoke(main, ["report", "--results", str(spec.out), "--out", str(out)])
    assert r.exit_code == 0, r.output
    index = (out / "README.md").read_text()
    assert "Changed (--redeclare)" in index and "after 16 row(s)" in index
    assert 'claims.primary: "a_matched" -> "a"' in index
    assert "Primary claim, declared in advance: **a:" in index


def test_a_change_before_any_row_is_simply_recorded(tmp_path):
    _sweep(tmp_path)
    spec = _load(tmp_path)
    run_sweep(spec, cell_runner=Runner(), progress=False, only=lambda c: False)  # declares, runs nothing
    _sweep(tmp_path, claims={**CLAIMS, "sesoi": 1.0})
    run_sweep(_load(tmp_path), cell_runner=Runner(), progress=False, max_cells=1)
    rec = json.loads((spec.out / "declaration.json").read_text())
    assert rec["claims"]["sesoi"] == 1.0 and rec["history"][0]["rows_then"] == 0 and not rec["history"][0]["forced"]


def test_plan_prints_power_seeds_and_design_from_own_rows_or_a_pilot(tmp_path):
    _sweep(tmp_path)
    spec = _load(tmp_path)
    r = CliRunner().invoke(main, ["sweep", str(tmp_path / "sweep.yaml"), "--workdir", str(tmp_path), "--plan"])
    assert r.exit_code == 0 and "no claim is testable yet" in r.output  # no rows yet: says how to get a plan
    run_sweep(spec, cell_runner=Runner(effect=2.0, sd=1.5, wall=600), progress=False)
    n_rows = len(ResultsTable(spec.out).read())
    r = CliRunner().invoke(main, ["sweep", str(tmp_path / "sweep.yaml"), "--workdir", str(tmp_path), "--plan"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    claims = [ln for ln in lines if ln.split()[:1] in (["primary"], ["secondary"])]
    assert [ln.split()[:2] for ln in claims] == [["primary", "a_matched"], ["secondary", "a"], ["secondary", "b1"],
                                                  ["secondary", "b2"]]
    assert all("detects >=" in ln and "seeds per cell and arch for 1 pt:" in ln for ln in claims)
    assert any(ln.startswith("where the variance of the primary claim") for ln in lines)
    assert sum(ln.startswith("  corr ") for ln in lines) == 4  # one line per (corr, fraction) cell
    assert any(ln.startswith("sequential design (equal allocation, obf spending") for ln in lines)
    assert any(ln.startswith("cost: a cell of both archs takes ~20 min") for ln in lines)
    assert len(ResultsTable(spec.out).read()) == n_rows and not (spec.out / "sequential.json").exists()  # ran nothing
    # the same plan from a pilot: another study's rows (here: the csv of this one, copied elsewhere)
    pilot = tmp_path / "pilot.csv"
    pd.read_csv(spec.out / "results.csv").to_csv(pilot, index=False)
    other = tmp_path / "other"
    other.mkdir()
    _sweep(other)
    r2 = CliRunner().invoke(main, ["sweep", str(other / "sweep.yaml"), "--workdir", str(other), "--plan",
                                   "--pilot", str(pilot)])
    assert r2.exit_code == 0, r2.output
    assert "plan from the pilot" in r2.output and [ln for ln in r2.output.splitlines() if ln.startswith("primary")] \
        == [ln for ln in lines if ln.startswith("primary")]
    r3 = CliRunner().invoke(main, ["sweep", str(other / "sweep.yaml"), "--workdir", str(other), "--pilot", str(pilot)])
    assert r3.exit_code != 0 and "--pilot goes with --plan" in r3.output


def test_status_on_a_fresh_checkout_with_rows_but_no_run_dirs(tmp_path):
    import shutil

    _sweep(tmp_path)
    spec = _load(tmp_path)
    run_sweep(spec, cell_runner=Runner(), progress=False)
    shutil.rmtree(spec.out / "runs")  # the committed rows come back without the cells' run dirs
    r = CliRunner().invoke(main, ["sweep", str(tmp_path / "sweep.yaml"), "--workdir", str(tmp_path), "--status"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert sum(ln.startswith("ok ") for ln in lines) == 16 and lines[-1].startswith("16/16 cells done, 0 running")
    assert not (spec.out / "runs").exists()  # --status created nothing
