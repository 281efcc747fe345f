"""Sweeps: a killed sweep re-runs only the missing cells, a failing cell is recorded and the rest
still run, the results table survives concurrent writers and crashed writes."""
from __future__ import annotations

import multiprocessing

import pandas as pd
import pytest
from study_fixtures import write_dataset

from probes.sweep import SweepError, SweepSpec, run_sweep
from revtransfer.atomic import atomic_write_text
from revtransfer.results import ResultsTable


def _spec(tmp_path, **over) -> SweepSpec:
    d = {
        "name": "t", "out": "out",
        "datasets": {"pretrain": {0.8: "pt8", 0.0: "pt0"}, "transfer": "tf"},
        "grid": {"arch": ["vit_micro", "revvit_micro"], "corr": [0.8, 0.0], "fraction": ["1/2", 1], "seed": [0]},
        "model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2},
        "recipe": {"epochs": 1, "batch_size": 16},
    }
    d.update(over)
    return SweepSpec.from_dict(d, workdir=tmp_path)


class FakeRunner:
    """Records the cells it is asked to run; ``fail``/``kill`` make chosen cells raise."""

    def __init__(self, fail=(), kill_at=None):
        self.calls, self.fail, self.kill_at = [], set(fail), kill_at

    def __call__(self, spec, cell, progress):
        self.calls.append(cell.cell_id)
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt  # a kill: not a cell failure, it stops the sweep
        if cell.cell_id in self.fail:
            raise RuntimeError(f"boom in {cell.cell_id}")
        return {"probe_acc": 0.5 + 0.01 * len(self.calls), "feature_dim": 32}


def test_grid_expands_with_backprop_per_arch(tmp_path):
    spec = _spec(tmp_path)
    cells = spec.cells()
    assert len(cells) == 8 and len({c.cell_id for c in cells}) == 8
    assert {(c.arch, c.backprop) for c in cells} == {("vit_micro", "backprop"), ("revvit_micro", "pareprop")}
    assert {c.fraction for c in cells} == {0.5, 1.0}


def test_killed_sweep_resumes_running_only_missing_cells(tmp_path):
    spec = _spec(tmp_path)
    first = FakeRunner(kill_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, cell_runner=first, progress=False)
    table = ResultsTable(spec.out).read()
    assert len(table) == 3 and set(table["status"]) == {"ok"}
    second = FakeRunner()
    report = run_sweep(spec, cell_runner=second, progress=False)
    all_ids = [c.cell_id for c in spec.cells()]
    assert second.calls == all_ids[3:], "finished cells were re-run or missing ones skipped"
    assert sorted(report.skipped) == sorted(all_ids[:3])
    table = ResultsTable(spec.out).read()
    assert sorted(table["cell_id"]) == sorted(all_ids) and (table["status"] == "ok").all()
    third = FakeRunner()
    run_sweep(spec, cell_runner=third, progress=False)
    assert third.calls == []


def test_a_failing_cell_is_recorded_and_the_others_run(tmp_path):
    spec = _spec(tmp_path)
    bad = spec.cells()[2].cell_id
    report = run_sweep(spec, cell_runner=FakeRunner(fail={bad}), progress=False)
    assert list(report.failed) == [bad] and len(report.ran) == 8
    table = ResultsTable(spec.out).read().set_index("cell_id")
    assert table.loc[bad, "status"] == "failed" and "boom" in table.loc[bad, "error"]
    assert (table.drop(index=bad)["status"] == "ok").all()
    assert "RuntimeError" in (spec.run_dir(spec.cells()[2]) / "error.txt").read_text()
    # On the next run only the failed cell is retried, and its row is replaced, not duplicated.
    retry = FakeRunner()
    run_sweep(spec, cell_runner=retry, progress=False)
    assert retry.calls == [bad]
    table = ResultsTable(spec.out).read()
    assert len(table) == 8 and (table["status"] == "ok").all()
    assert not (spec.run_dir(spec.cells()[2]) / "error.txt").exists()


def test_rows_carry_keys_and_provenance(tmp_path):
    spec = _spec(tmp_path)
    run_sweep(spec, cell_runner=FakeRunner(), progress=False)
    t = pd.read_csv(spec.out / "results.csv")
    for col in ("arch", "backprop", "corr", "fraction", "seed", "git_commit", "torch_version", "run_dir",
                "probe_acc", "feature_dim"):
        assert col in t.columns
    assert set(t["corr"]) == {0.8, 0.0} and len(t) == 8


def _write_rows(directory, tag, n):
    table = ResultsTable(directory)
    for i in range(n):
        table.upsert([{"sweep": tag, "cell_id": str(i), "status": "ok", "probe_acc": i}])


def test_two_writers_at_once_lose_no_rows(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_rows, args=(tmp_path, tag, 15)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    table = ResultsTable(tmp_path).read()
    assert len(table) == 30 and len(pd.read_csv(tmp_path / "results.csv")) == 30


def test_a_crash_mid_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "results.csv"
    atomic_write_text(path, "old\n")

    def crash(tmp):
        tmp.write_text("half a ta")
        raise OSError("disk full")

    from revtransfer.atomic import atomic_write

    with pytest.raises(OSError):
        atomic_write(path, crash)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


@pytest.mark.parametrize("over,match", [
    ({"grid": {"arch": ["vit_micro"], "corr": [0.5], "fraction": [1], "seed": [0]}}, "no dataset"),
    ({"grid": {"arch": ["nope"], "corr": [0.8], "fraction": [1], "seed": [0]}}, "unknown model"),
    ({"grid": {"arch": ["vit_micro"], "corr": [0.8], "fraction": [0], "seed": [0]}}, "fraction"),
    ({"recipe": {"epochs": 1, "seed": 3}}, "may not set"),
    ({"recipe": {"epochz": 1}}, "epochz"),
    ({"extra": 1}, "unknown keys"),
])
def test_bad_sweep_files_are_explained(tmp_path, over, match):
    with pytest.raises((SweepError, ValueError), match=match):
        _spec(tmp_path, **over)


def test_real_cells_run_end_to_end(tmp_path):
    """The real runner (pretrain -> probe) on tiny dataset dirs; rows carry real measurements."""
    for name, seed in (("pt8", 0), ("pt0", 1)):
        write_dataset(tmp_path / name, n=96, size=16, seed=seed)
    write_dataset(tmp_path / "tf", n=120, size=16, seed=2, transfer=True)
    spec = _spec(tmp_path, grid={"arch": ["vit_micro", "revvit_micro"], "corr": [0.8], "fraction": [1], "seed": [0]},
                 probe={"n_boot": 50}, recipe={"epochs": 1, "batch_size": 16, "val_frac": 0.25})
    report = run_sweep(spec, progress=False)
    assert not report.failed and len(report.ran) == 2
    t = ResultsTable(spec.out).read().set_index("arch")
    assert t.loc["vit_micro", "feature_dim"] == 16 and t.loc["revvit_micro", "feature_dim"] == 32
    assert t.loc["revvit_micro", "backprop"] == "pareprop" and (t["n_pretrain"] == 72).all()
    assert ((t["probe_acc"] >= 0) & (t["probe_acc"] <= 1)).all() and (t["samples_per_s"] > 0).all()
    assert (t["threads"] >= 1).all()  # recorded: cells may run side by side, one core each
    assert (t["probe_auroc_ci_low"] <= t["probe_auroc"]).all()


def test_progress_counts_done_running_left_and_estimates_the_rest(tmp_path):
    from filelock import FileLock

    from probes.sweep import sweep_progress

    spec = _spec(tmp_path)
    runner = FakeRunner()
    timed = lambda s, c, p: {**runner(s, c, p), "wall_time_s": 120.0}  # noqa: E731
    run_sweep(spec, cell_runner=timed, progress=False, max_cells=3)
    assert sweep_progress(spec) == ("3/8 cells done, 0 running, 5 left; median cell 2.0 min (3 measured); "
                                    "ETA 10 min at 1 cell(s) at a time")
    busy = spec.cells()[3]
    spec.run_dir(busy).mkdir(parents=True)
    with FileLock(str(spec.run_dir(busy) / ".cell.lock")):  # another process runs it
        assert sweep_progress(spec).startswith("3/8 cells done, 1 running, 4 left")
        assert sweep_progress(spec).endswith("ETA 9 min at 1 cell(s) at a time")  # (4 + 1/2) x 2 min
    # in scope only: a block or an --only filter counts its own cells, not the whole grid's
    assert sweep_progress(spec, cells=spec.cells()[2:4]).startswith("1/2 cells done, 0 running, 1 left")


def test_a_resumed_cell_counts_its_earlier_sittings_in_wall_time(tmp_path):
    """A cell killed after some epochs and resumed later costs both sittings: its row's wall_time_s
    (what block estimates and --until-decided's budget add up) includes the earlier epochs."""
    import json

    write_dataset(tmp_path / "pt8", n=96, size=16, seed=0)
    write_dataset(tmp_path / "tf", n=120, size=16, seed=2, transfer=True)
    spec = _spec(tmp_path, grid={"arch": ["vit_micro"], "corr": [0.8], "fraction": [1], "seed": [0]},
                 probe={"n_boot": 50}, recipe={"epochs": 1, "batch_size": 16, "val_frac": 0.25})
    run_sweep(spec, progress=False)
    first = ResultsTable(spec.out).read().iloc[0]
    # the earlier sitting: its epoch took 1000 s; the row is gone (killed before it was written)
    (spec.out / "results.parquet").unlink()
    (spec.out / "results.csv").unlink(missing_ok=True)
    metrics = spec.out / "runs" / first["cell_id"] / "metrics.jsonl"
    recs = [json.loads(line) for line in metrics.read_text().splitlines()]
    metrics.write_text("".join(json.dumps({**r, "epoch_time_s": 1000.0}) + "\n" for r in recs))
    run_sweep(spec, progress=False)  # resumes at the last epoch: probes only
    again = ResultsTable(spec.out).read().iloc[0]
    assert 1000.0 <= again["wall_time_s"] < 1000.0 + first["wall_time_s"] + 60
