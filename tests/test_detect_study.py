"""The detection study file: its checks, its cells (arch x seed, floor, ceiling, width control),
what each cell's detector is given, and the projected hours from a `detect bench` JSON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from probes.detect_study import DetectStudySpec, StudyError, estimate_hours, run_args, status_lines

BASE = {
    "name": "t", "out": "out", "archs": ["vit_micro", "revvit_micro"], "seeds": [0, 1, 2, 3, 4],
    "backbones": {"checkpoints": {"vit_micro": "v.pt", "revvit_micro": "r.pt"}},
    "datasets": {"train": {"json": "tr.json", "images": "tr"}, "val": {"json": "va.json", "images": "va"}},
    "detector": {"config": "clevr_mask_rcnn_{arch}_frozen", "iters": 1200, "eval_period": 240, "batch_size": 8},
    "references": {"floor": {"seeds": [0, 1]}, "ceiling": {"seeds": [0], "iters": 400}},
    "width_control": {"archs": ["revvit_micro"]},
}


def test_the_presets_load_and_name_their_cells():
    cpu = DetectStudySpec.load("detect_cpu")
    assert len([c for c in cpu.cells() if c.role == "frozen" and not c.tag]) == 10  # 2 archs x 5 seeds
    assert {c.cell_id for c in cpu.cells() if c.tag} == {f"revvit_micro-frozen-width-control-seed{s}" for s in range(3, 6)}
    paper = DetectStudySpec.load("detect_paper")
    assert len(paper.seeds) >= 3 and {"vit_base", "revvit_base", "vit_small", "revvit_small"} <= set(paper.archs)


@pytest.mark.parametrize("change, message", [
    ({"datasets": {"train": {"json": "a", "images": "b"}}}, "datasets.val is missing"),
    ({"detector": {"config": "clevr_mask_rcnn_vit_micro_frozen", "iters": 1}}, "must name the arch"),
    ({"backbones": {"checkpoints": {"vit_micro": "v.pt"}}}, "no path for"),
    ({"seeds": [0, 0]}, "repeat"),
    ({"colour": 1}, "unknown keys colour"),
])
def test_a_bad_study_file_is_named(change, message):
    with pytest.raises(StudyError, match=message):
        DetectStudySpec.from_dict({**BASE, **change})


def test_each_role_gets_its_detector(tmp_path):
    spec = DetectStudySpec.from_dict(BASE, tmp_path)
    cells = {c.cell_id: c for c in spec.cells()}
    assert len(cells) == 10 + 5 + 4 + 2
    data = {"train": ("tr.json", "tr"), "val": ("va.json", "va")}
    frozen = run_args(spec, cells["revvit_micro-frozen-seed3"], data, "r.pt", {"embed_dim": 16, "depth": 1})
    assert frozen.backbone_checkpoint == "r.pt" and frozen.max_iter == 1200 and frozen.seed == 3
    assert "train.eval_period=240" in frozen.overrides and frozen.val_json == "va.json"
    assert "model.backbone.net.model_kwargs={embed_dim:16,depth:1}" in frozen.overrides
    floor = run_args(spec, cells["vit_micro-floor-seed1"], data, "", None)
    assert floor.backbone_checkpoint == "" and floor.tag == ""
    ceiling = run_args(spec, cells["vit_micro-ceiling-seed0"], data, "v.pt", None)
    assert "model.backbone.net.freeze=False" in ceiling.overrides and ceiling.max_iter == 400
    assert "train.eval_period=80" in ceiling.overrides  # every fifth of its length, as the frozen runs' 240 of 1200
    width = run_args(spec, cells["revvit_micro-frozen-width-control-seed0"], data, "r.pt",
                     {"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 4, "img_size": 32})
    assert "model.backbone.net.out_channels=16" in width.overrides and width.tag == "width-control"
    assert status_lines(spec)[-1] == "0 of 21 cells done"


def test_the_estimate_uses_the_measured_frozen_step(tmp_path):
    spec = DetectStudySpec.from_dict(BASE, tmp_path)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"meta": {"measure": "detect_step"}, "records": [
        {"measure": "detect_step", "model": "vit_micro", "batch_size": 8, "samples_per_s": 16.0, "backbone": "frozen"},
        {"measure": "detect_step", "model": "vit_micro", "batch_size": 8, "samples_per_s": 4.0, "backbone": "unfrozen"},
    ]}))
    rows = {r["arch"]: r for r in estimate_hours(spec, str(bench))}
    vit_iters = 5 * 1200 + 2 * 1200 + 400  # frozen x 5 seeds, floor x 2, ceiling x 1
    assert rows["vit_micro"]["images"] == vit_iters * 8
    assert rows["vit_micro"]["hours"] == pytest.approx(vit_iters * 8 / 16.0 / 3600)
    assert rows["revvit_micro"]["hours"] is None  # nothing measured for it: said, not guessed


def test_a_backbone_is_reused_rebuilt_or_pretrained(tmp_path, monkeypatch):
    """A detection cell trains only its detector when the sweep's backbone checkpoint exists; a sweep
    cell with a row but no checkpoint (run dirs are not in git) is pretrained again without touching
    its row; a cell with neither runs as a sweep cell first."""
    import types

    import yaml

    import probes.detect_study as ds
    import probes.sweep as sweep_mod
    import revtransfer.train as train_mod
    from revtransfer.results import ResultsTable

    sweep_file = tmp_path / "sw.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "sw", "out": "sw", "datasets": {"pretrain": {0.3: "pt3"}, "transfer": "tf"},
        "grid": {"arch": ["vit_micro"], "corr": [0.3], "fraction": [1], "seed": [0, 1, 2]},
        "model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2},
        "recipe": {"epochs": 1, "batch_size": 16}}))
    spec = DetectStudySpec.from_dict({**BASE, "archs": ["vit_micro"], "seeds": [0, 1, 2],
                                      "backbones": {"sweep": str(sweep_file), "corr": 0.3, "fraction": 1.0}},
                                     tmp_path)
    sweep = ds._sweep(spec, spec.seeds)
    cells = {c.seed: c for c in sweep.cells()}
    for seed in (0, 1):  # rows for seeds 0 and 1; only seed 0 kept its run dir
        ResultsTable(sweep.out).upsert([{"sweep": "sw", "cell_id": cells[seed].cell_id, "status": "ok",
                                         "pretrain_val_acc": 0.93, "git_commit": "abc"}])
    run0 = sweep.run_dir(cells[0])
    run0.mkdir(parents=True)
    (run0 / "summary.json").write_text("{}")
    (run0 / "checkpoint_best.pt").write_bytes(b"")

    calls = []
    monkeypatch.setattr("probes.detect_ladder.backbone_model_kwargs", lambda run: {"embed_dim": 16})
    monkeypatch.setattr(sweep_mod, "ensure_dataset", lambda *a, **k: None)

    def fake_pretrain(cfg, resume=True, progress=True):
        calls.append(("pretrain", str(cfg.out)))
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "checkpoint_best.pt"):  # what a pretraining run leaves
            (Path(cfg.out) / name).write_text("{}")
        return types.SimpleNamespace(val_acc=0.92)

    def fake_run_sweep(sw, progress=True, only=None, **kw):
        calls.append(("sweep", [c.cell_id for c in sw.cells() if only(c)]))
        return sweep_mod.SweepReport()

    monkeypatch.setattr(train_mod, "pretrain", fake_pretrain)
    monkeypatch.setattr(sweep_mod, "run_sweep", fake_run_sweep)

    assert [ds.backbone_state(spec, "vit_micro", s) for s in (0, 1, 2)] == ["ready", "rebuild", "pretrain"]
    status = ds.status_lines(spec)
    assert "todo     vit_micro-frozen-seed1  (backbone: rebuild)" in status
    assert "todo     revvit_micro-frozen-width-control-seed0  (backbone: none (sweep sw has no cell revvit_micro" \
        in status[3]  # BASE's width control names an arch the sweep lacks: said, not raised
    assert status[-1] == "0 of 9 cells done; 2 backbone(s) to pretrain first"
    # a floor loads no weights: at a seed without a backbone it takes the arch's kwargs from one that is there
    trained = []
    monkeypatch.setattr(ds, "ensure_datasets", lambda spec, progress=True: {"train": ("t.json", "t"),
                                                                           "val": ("v.json", "v")})
    monkeypatch.setattr("detection.train_net.main", lambda args: trained.append(args) or {})
    ds.run_cell(spec, ds.DetectCell("vit_micro", 1, role="floor"), progress=False)
    assert calls == [] and trained[0].backbone_checkpoint == "" and trained[0].seed == 1
    assert "model.backbone.net.model_kwargs={embed_dim:16}" in trained[0].overrides

    path, kwargs = ds.ensure_backbone(spec, "vit_micro", 0, progress=False)
    assert path == str(run0 / "checkpoint_best.pt") and kwargs == {"embed_dim": 16} and calls == []  # reused
    ds.ensure_backbone(spec, "vit_micro", 1, progress=False)  # a row, no checkpoint: pretrained again
    assert calls == [("pretrain", str(sweep.run_dir(cells[1])))]
    note = json.loads((sweep.run_dir(cells[1]) / ds.REBUILT).read_text())
    assert note["row_pretrain_val_acc"] == 0.93 and note["rebuilt_pretrain_val_acc"] == 0.92
    assert not note["same_val_acc"]
    rows = ResultsTable(sweep.out).read()
    assert float(rows.loc[rows["cell_id"] == cells[1].cell_id, "pretrain_val_acc"].iloc[0]) == 0.93  # row kept
    ds.ensure_backbone(spec, "vit_micro", 1, progress=False)  # rebuilt once: reused from then on
    assert len(calls) == 1
    ds.ensure_backbone(spec, "vit_micro", 2, progress=False)  # neither: the sweep cell runs
    assert calls[-1] == ("sweep", [cells[2].cell_id])
    run3 = sweep.run_dir(cells[1])
    (run3 / "checkpoint_best.pt").unlink()
    monkeypatch.setattr(train_mod, "pretrain", lambda cfg, resume=True, progress=True: types.SimpleNamespace(val_acc=0.93))
    with pytest.raises(StudyError, match="wrote no checkpoint_best.pt"):  # a finished run dir without its best
        ds.ensure_backbone(spec, "vit_micro", 1, progress=False)


def test_the_schedule_decays_at_fractions_of_each_cells_length(tmp_path):
    spec = DetectStudySpec.from_dict({**BASE, "detector": {**BASE["detector"], "iters": 6000, "decay_at": [0.6667, 0.8889]},
                                      "width_control": {"archs": ["revvit_micro"], "seeds": [0, 1, 2]}}, tmp_path)
    cells = {c.cell_id: c for c in spec.cells()}
    assert {c.seed for c in cells.values() if c.tag} == {0, 1, 2}
    data = {"train": ("tr.json", "tr"), "val": ("va.json", "va")}
    frozen = run_args(spec, cells["vit_micro-frozen-seed0"], data, "v.pt", None).overrides
    ceiling = run_args(spec, cells["vit_micro-ceiling-seed0"], data, "v.pt", None).overrides
    assert "lr_multiplier.scheduler.milestones=[4000,5333]" in frozen
    assert "lr_multiplier.scheduler.milestones=[267,356]" in ceiling
    assert "lr_multiplier.scheduler.values=[1,0.1,0.01]" in frozen


@pytest.mark.parametrize("change, message", [
    ({"detector": {**BASE["detector"], "decay_at": [0.9, 0.5]}}, "decay_at"),
    ({"detector": {**BASE["detector"], "decay_at": [1.2]}}, "decay_at"),
    ({"width_control": {"archs": ["revvit_micro"], "seeds": [9]}}, "width_control.seeds"),
])
def test_a_bad_schedule_or_width_seed_is_named(change, message):
    with pytest.raises(StudyError, match=message):
        DetectStudySpec.from_dict({**BASE, **change})


def test_two_processes_share_a_study_cell_by_cell(tmp_path, monkeypatch):
    """A cell whose lock another process holds (a second `detect-study`, e.g. one per core) is left
    to it and shown as running; the others run here."""
    from filelock import FileLock

    import probes.detect_study as ds

    spec = DetectStudySpec.from_dict({**BASE, "archs": ["vit_micro"], "seeds": [0, 1], "width_control": {"archs": []},
                                      "references": {}}, tmp_path)
    ran = []
    monkeypatch.setattr(ds, "run_cell", lambda spec, cell, progress=True: ran.append(cell.cell_id) or {})
    busy = spec.run_dir(spec.cells()[0])
    busy.mkdir(parents=True)
    with FileLock(str(busy / ".cell.lock")):  # the other process
        assert status_lines(spec)[0] == "running  vit_micro-frozen-seed0"
        said = []
        assert ds.run_study(spec, progress=False, echo=said.append) == {}
    assert ran == ["vit_micro-frozen-seed1"]
    assert "[1/2] vit_micro-frozen-seed0: another process is running it, left to it" in said


def test_a_backbone_another_process_pretrains_is_waited_for(tmp_path, monkeypatch):
    """The probe sweep and the detection study run side by side: a detection cell whose backbone the
    sweep is pretraining right now waits for that cell instead of failing or pretraining it twice."""
    import threading
    import time

    import yaml
    from filelock import FileLock

    import probes.detect_study as ds
    import probes.sweep as sweep_mod

    sweep_file = tmp_path / "sw.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "sw", "out": "sw", "datasets": {"pretrain": {0.3: "pt3"}, "transfer": "tf"},
        "grid": {"arch": ["vit_micro"], "corr": [0.3], "fraction": [1], "seed": [0]},
        "model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2},
        "recipe": {"epochs": 1, "batch_size": 16}}))
    spec = DetectStudySpec.from_dict({**BASE, "archs": ["vit_micro"], "seeds": [0],
                                      "backbones": {"sweep": str(sweep_file), "corr": 0.3, "fraction": 1.0}},
                                     tmp_path)
    sweep = ds._sweep(spec, spec.seeds)
    run = sweep.run_dir(sweep.cells()[0])
    run.mkdir(parents=True)
    held = threading.Event()

    def the_sweep_pretrains_it():  # the sweep's process (a thread here: a lock is per thread and file)
        with FileLock(str(run / ".cell.lock")):
            held.set()
            time.sleep(0.5)
            for name in ("summary.json", "checkpoint_best.pt"):
                (run / name).write_text("{}")

    monkeypatch.setattr("probes.detect_ladder.backbone_model_kwargs", lambda run: {"embed_dim": 16})
    monkeypatch.setattr(sweep_mod, "run_sweep",
                        lambda sw, progress=True, only=None, **kw: sweep_mod.SweepReport(busy=[sweep.cells()[0].cell_id]))
    other = threading.Thread(target=the_sweep_pretrains_it)
    other.start()
    held.wait()
    path, _ = ds.ensure_backbone(spec, "vit_micro", 0, progress=False)
    other.join()
    assert path == str(run / "checkpoint_best.pt") and (run / "checkpoint_best.pt").exists()


def test_slurm_submission_skips_queued_cells_and_refuses_missing_backbones(tmp_path, monkeypatch):
    """Running `detect-study --launcher slurm` again submits only what is neither done nor queued; a
    backbone that is not there yet is refused before anything is submitted (a login node is not
    the place to pretrain it)."""
    import types

    import yaml

    import detection.jobs
    import probes.detect_study as ds
    import revtransfer.launch.slurm as slurm
    from revtransfer.launch.slurm import JobRecord

    spec = DetectStudySpec.from_dict({**BASE, "archs": ["vit_micro"], "seeds": [0, 1], "width_control": {"archs": []},
                                      "references": {}}, tmp_path)
    monkeypatch.setattr(ds, "ensure_datasets", lambda spec, progress=True: {"train": ("t.json", "t"),
                                                                           "val": ("v.json", "v")})
    queued = spec.run_dir(spec.cells()[0])
    queued.mkdir(parents=True)
    JobRecord(job_id="7", folder=str(tmp_path)).save(queued)
    monkeypatch.setattr(slurm, "job_states", lambda ids, timeout=30: {"7": "PENDING"})
    monkeypatch.setattr(slurm, "check_slurm", lambda: None)
    submitted = []
    monkeypatch.setattr(detection.jobs, "submit_detect",
                        lambda args, options, **kw: submitted.append(args.output_dir) or types.SimpleNamespace(job_id="8"))
    ds._submit(spec, None, 1, None, progress=False)
    assert submitted == [str(spec.run_dir(spec.cells()[1]))]  # seed 0's job is queued: not again

    sweep_file = tmp_path / "sw.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "sw", "out": "sw", "datasets": {"pretrain": {0.3: "pt3"}, "transfer": "tf"},
        "grid": {"arch": ["vit_micro"], "corr": [0.3], "fraction": [1], "seed": [0, 1]},
        "model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2},
        "recipe": {"epochs": 1, "batch_size": 16}}))
    from_sweep = DetectStudySpec.from_dict({**BASE, "out": "out2", "archs": ["vit_micro"], "seeds": [0, 1],
                                            "backbones": {"sweep": str(sweep_file), "corr": 0.3, "fraction": 1.0},
                                            "width_control": {"archs": []}, "references": {}}, tmp_path)
    submitted.clear()
    with pytest.raises(StudyError, match="vit_micro-frozen-seed0: its backbone, cell vit_micro-.*seed0 of sweep sw, "
                                         "is not there .pretrain."):
        ds._submit(from_sweep, None, 1, None, progress=False)
    assert submitted == []


def test_the_eta_comes_from_the_studys_measured_runs(tmp_path):
    from probes.detect_study import study_eta
    from revtransfer.results import ResultsTable

    spec = DetectStudySpec.from_dict(BASE, tmp_path)
    cells = {c.cell_id: c for c in spec.cells()}
    assert study_eta(spec, list(cells.values())) == ""  # nothing measured: nothing guessed
    done = [cells["vit_micro-frozen-seed0"], cells["revvit_micro-frozen-seed0"]]
    ResultsTable(spec.out).upsert([{"sweep": "detection", "cell_id": c.cell_id, "status": "ok", "box_AP": 50.0,
                                    "backbone_role": "frozen", "iterations": 1200, "wall_time_s": w,
                                    "run_dir": str(spec.run_dir(c))} for c, w in zip(done, (500.0, 700.0))])
    todo = [cells["vit_micro-frozen-seed1"], cells["revvit_micro-frozen-seed1"], cells["vit_micro-ceiling-seed0"]]
    # 0.5 s per iteration (the median): 2 x 1200 + 400 (a ceiling: no ceiling measured, the frozen rate)
    assert study_eta(spec, todo) == "ETA 23 min at the measured rates (2 runs)"


def test_rows_a_changed_protocol_supersedes_are_taken_out_and_returned(tmp_path):
    from revtransfer.results import ResultsTable

    table = ResultsTable(tmp_path)
    table.upsert([{"sweep": "detection", "cell_id": c, "status": "ok", "box_AP": ap}
                  for c, ap in (("a", 1.0), ("b", 2.0), ("c", 3.0))])
    gone = table.remove("detection", ["b", "zz"])
    assert list(gone["cell_id"]) == ["b"] and gone["box_AP"].iloc[0] == 2.0
    assert sorted(table.read()["cell_id"]) == ["a", "c"]
    assert sorted(ResultsTable(tmp_path).read()["cell_id"]) == ["a", "c"]
