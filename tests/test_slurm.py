"""The SLURM launcher against a real one-node cluster that this module brings up
(tests/slurm_cluster.py: munge, MariaDB, slurmdbd, slurmctld, slurmd, all under a temp dir) and tears
down at the end, also on failure. Where it cannot come up (not root, no apt, ...) every test here is
skipped with the reason (shown by ``-ra``); ``REVTRANSFER_SLURM_TESTS=0`` skips them on purpose.

- a sweep of 4 tiny cells as a SLURM job array ends with 4 rows; ``--status`` shows their jobs;
- a 2-task DDP pretrain through SLURM has world size 2 and the weights of a local 2-process run;
- a cell whose job is cancelled mid-run is recorded as failed with its log's last lines, and the
  next ``sweep`` resumes it from its checkpoint; ``--status`` while it runs shows its job;
- a preempted job (SIGUSR2, as SLURM sends it) checkpoints, requeues itself and resumes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import slurm_cluster
import torch
import yaml
from click.testing import CliRunner
from study_fixtures import write_dataset

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(240, method="signal")]
PARENT = Path("/tmp/revtransfer-slurm-tests")
TINY = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def cluster():
    if os.environ.get("REVTRANSFER_SLURM_TESTS", "1") == "0":
        pytest.skip("SLURM tests disabled by REVTRANSFER_SLURM_TESTS=0")
    try:
        root = slurm_cluster.claim(PARENT)
    except OSError as e:
        pytest.skip(f"SLURM unavailable: cannot make its directory under {PARENT}: {e}")
    t0 = time.monotonic()
    try:
        c = slurm_cluster.start(root, timeout=90, install_timeout=300)
    except slurm_cluster.ClusterUnavailable as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"SLURM unavailable: {e}")
    print(f"\nSLURM test cluster up in {time.monotonic() - t0:.1f}s at {root}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = c.conf
    try:
        yield c
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        slurm_cluster.stop(root)
        shutil.rmtree(root, ignore_errors=True)


def _cli(*args):
    from revtransfer.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output + (repr(res.exception) if res.exception else "")
    return res.output


def _sweep_file(tmp_path, name, grid, recipe, model_kwargs=TINY, n=96, size=16) -> Path:
    write_dataset(tmp_path / "pt8", n=n, size=size, seed=0)
    write_dataset(tmp_path / "tf", n=120, size=16 if size == 16 else size, seed=2, transfer=True)
    spec = {"name": name, "out": "out", "datasets": {"pretrain": {0.8: "pt8"}, "transfer": "tf"},
            "grid": {"corr": [0.8], "seed": [0], **grid}, "model_kwargs": dict(model_kwargs),
            "recipe": {"batch_size": 16, "val_frac": 0.25, "device": "cpu", **recipe}, "probe": {"n_boot": 20},
            "launcher": {"time": 10, "cpus_per_task": 1}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _job_id(run_dir: Path) -> str:
    return json.loads((run_dir / "slurm_job.json").read_text())["job_id"]


def _wait_until(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(step)


def _job_over(job_id: str) -> bool:
    """Over, and its end recorded by accounting (which lags the queue by a moment)."""
    from revtransfer.launch.slurm import GONE, is_active, job_states

    state = job_states([job_id])[job_id]
    return not is_active(state) and state != GONE


def test_sweep_of_four_cells_as_a_job_array(cluster, tmp_path):
    path = _sweep_file(tmp_path, "four", {"arch": ["vit_micro", "revvit_micro"], "fraction": ["1/2", 1]},
                       {"epochs": 1})
    from revtransfer.cli import main

    refused = CliRunner().invoke(main, ["sweep", str(path), "--workdir", str(tmp_path), "--launcher", "slurm",
                                        "--partition", "nope"])
    last = refused.output.strip().splitlines()[-1]
    assert refused.exit_code == 1 and last.startswith("Error: sbatch refused the job (") and "partition=nope" in last
    assert last.endswith("Invalid partition name specified; partitions here: debug"), last
    out = _cli("sweep", path, "--workdir", tmp_path, "--launcher", "slurm", "--wait")
    assert "4 cells submitted" in out and "4 ran (0 failed), 0 already finished" in out, out
    table = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert len(table) == 4 and (table["status"] == "ok").all()
    assert set(table["arch"]) == {"vit_micro", "revvit_micro"} and (table["probe_acc"].between(0, 1)).all()
    runs = sorted((tmp_path / "out" / "runs").iterdir())
    ids = [_job_id(r) for r in runs]
    assert len({i.split("_")[0] for i in ids}) == 1 and len(set(ids)) == 4  # one array, four tasks
    # Logs of every job under the sweep dir.
    logs = list((tmp_path / "out" / "slurm").glob("*/*_log.err"))
    assert len(logs) == 4 and all("Job completed successfully" in p.read_text() for p in logs)
    status = _cli("sweep", path, "--workdir", tmp_path, "--status")
    *cells, summary = status.splitlines()
    assert status.count("COMPLETED") == 4 and all(line.startswith("ok ") for line in cells)
    assert summary.startswith("4/4 cells done, 0 running, 0 left")
    again = _cli("sweep", path, "--workdir", tmp_path, "--launcher", "slurm")
    assert "0 cells submitted, 4 already finished" in again


def _local_ddp_worker(rank, world, init_file, cfg):
    import torch.distributed as dist

    from revtransfer.train import pretrain

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        pretrain(cfg, progress=False)
    finally:
        dist.destroy_process_group()


def test_ddp_pretrain_with_two_tasks_equals_a_local_two_process_run(cluster, tmp_path):
    import torch.multiprocessing as mp

    from revtransfer.train import PretrainConfig, load_checkpoint

    data = write_dataset(tmp_path / "data", n=100, size=16)
    out = tmp_path / "slurm_run"
    res = _cli("pretrain", data, "--out", out, "--arch", "revvit_micro", "--backprop", "pareprop",
               *[a for k, v in TINY.items() for a in ("--model-kw", f"{k}={v}")], "--epochs", 2,
               "--batch-size", 16, "--lr", "2e-3", "--val-frac", "0.2", "--precision", "fp64", "--device", "cpu",
               "--no-progress", "--launcher", "slurm", "--nodes", 1, "--tasks-per-node", 2, "--cpus-per-task", 1,
               "--time", 10, "--wait")
    result = json.loads(res[res.index("{\n"):])
    assert result["world_size"] == 2 and result["epochs"] == 2 and result["n_train"] == 80
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in records] == [2, 2]
    assert yaml.safe_load((out / "config.yaml").read_text())["resolved"]["world_size"] == 2
    assert list(out.glob("slurm/*/*_0_log.err")) and list(out.glob("slurm/*/*_1_log.err"))

    cfg = PretrainConfig.from_yaml(out / "config.yaml").replace(out=str(tmp_path / "local_run"))
    mp.spawn(_local_ddp_worker, args=(2, str(tmp_path / "rendezvous"), cfg), nprocs=2)
    a = load_checkpoint(out / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "local_run" / "checkpoint_last.pt")
    assert a["epoch"] == b["epoch"] == 2 and len(a["rng"]) == 2
    for k, v in b["model"].items():
        assert (a["model"][k] - v).abs().max().item() < 1e-10, k


# A run of ~0.15-0.2 s per epoch on 2 cores. Whatever the machine's speed, the cancel test freezes it
# (scontrol suspend) as soon as its first checkpoint appears; after scancel it runs at most the
# cluster's KillWait (1 s, ~7 epochs) more, so it is stopped mid-run.
SLOW = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
EPOCHS = 30


def test_a_cancelled_cell_is_recorded_and_resumed_by_the_next_sweep(cluster, tmp_path):
    path = _sweep_file(tmp_path, "cancel", {"arch": ["vit_micro"], "fraction": [1]}, {"epochs": EPOCHS},
                       model_kwargs=SLOW, n=600, size=32)
    out = _cli("sweep", path, "--workdir", tmp_path, "--launcher", "slurm")
    assert "1 cells submitted" in out and "follow: squeue -j" in out and "--status" in out
    run = next((tmp_path / "out" / "runs").iterdir())
    job = _job_id(run)
    _wait_until(lambda: (run / "checkpoint_last.pt").exists(), 120, "the first checkpoint", step=0.02)
    # Freeze it (SIGSTOP through slurmd): a fast machine would otherwise finish all epochs before the
    # status call and the cancel below are through.
    subprocess.run(["scontrol", "suspend", job], check=True, timeout=30)
    status = _cli("sweep", path, "--workdir", tmp_path, "--status")
    assert f"running  {run.name}  slurm {job} SUSPENDED  log: " in status, status
    subprocess.run(["scancel", job], check=True, timeout=30)
    _wait_until(lambda: _job_over(job), 60, "the cancelled job to end", step=0.3)
    # SLURM reports CANCELLED at once; the process goes a few seconds later (KillWait) and, while
    # it holds the cell's lock, the failure is not written yet.
    from probes.sweep import cell_lock_held

    _wait_until(lambda: not cell_lock_held(run), 60, "the cancelled job's process to exit", step=0.3)
    before = (run / "metrics.jsonl").read_text().splitlines()
    print(f"cancelled after {len(before)} of {EPOCHS} epochs")
    assert 1 <= len(before) < EPOCHS, f"the cell was not cancelled mid-run ({len(before)} of {EPOCHS} epochs done)"

    status = _cli("sweep", path, "--workdir", tmp_path, "--status")
    assert f"failed   {run.name}  slurm {job} CANCELLED" in status, status
    row = pd.read_parquet(tmp_path / "out" / "results.parquet").iloc[0]
    assert row["status"] == "failed" and f"SLURM job {job} ended CANCELLED" in row["error"]
    assert "CANCELLED AT" in row["error"] or "epoch" in row["error"]  # the log's last lines
    assert "ended CANCELLED" in (run / "error.txt").read_text()

    done = _cli("sweep", path, "--workdir", tmp_path, "--launcher", "slurm", "--wait")
    assert "1 ran (0 failed)" in done, done
    row = pd.read_parquet(tmp_path / "out" / "results.parquet").iloc[0]
    assert row["status"] == "ok" and row["epochs"] == EPOCHS
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in after] == list(range(1, EPOCHS + 1))
    checkpointed = torch.load(run / "checkpoint_last.pt", weights_only=False)["epoch"]
    assert checkpointed == EPOCHS and after[:len(before) - 1] == before[:len(before) - 1]  # resumed, not redone
    assert not (run / "error.txt").exists()


def test_a_preempted_job_requeues_itself_and_resumes(cluster, tmp_path):
    data = write_dataset(tmp_path / "data", n=600, size=32)
    out = tmp_path / "run"
    res = _cli("pretrain", data, "--out", out, "--arch", "vit_micro",
               *[a for k, v in SLOW.items() for a in ("--model-kw", f"{k}={v}")], "--epochs", EPOCHS,
               "--batch-size", 16, "--val-frac", "0.25", "--device", "cpu", "--no-progress",
               "--launcher", "slurm", "--cpus-per-task", 1, "--time", 30)  # 30: submitit calls < 10 min a time-out
    assert "follow: squeue -j" in res
    job = _job_id(out)
    _wait_until(lambda: (out / "checkpoint_last.pt").exists(), 120, "the first checkpoint", step=0.02)
    # What SLURM does on preemption or near the time limit (submitit's own test helper does the same).
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    from revtransfer.launch.slurm import job_states

    def queue_state():
        return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True,
                              timeout=30).stdout.strip()

    _wait_until(lambda: queue_state() == "PENDING BeginTime", 60, "the requeue", step=0.2)
    # A requeued job waits ~2 min before it is eligible again; let it start now.
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
    _wait_until(lambda: _job_over(job), 120, "the requeued job to end", step=0.5)
    assert job_states([job])[job] == "COMPLETED"
    log = next(out.glob("slurm/*/*_0_log.err")).read_text()
    assert "this job is preempted" in log and f"Requeued job {job}" in log and "resumed" in log
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))
    assert json.loads((out / "summary.json").read_text())["epochs"] == EPOCHS


def test_detectron2_training_launches_its_processes_inside_a_job(cluster, tmp_path):
    from detection import TimmViT
    from detection.synthetic import make_shapes_coco

    train, val = make_shapes_coco(tmp_path / "train", n=16, seed=0), make_shapes_coco(tmp_path / "val", n=8, seed=1)
    ckpt = tmp_path / "backbone.pt"
    torch.save({"model": TimmViT("vit_micro").encoder.state_dict()}, ckpt)
    out = tmp_path / "det"
    res = _cli("detect", "train", "--config", "clevr_mask_rcnn_vit_micro_frozen", "--backbone-checkpoint", ckpt,
               "--dataset", train, "--val-json", val / "coco.json", "--val-images", val, "--output-dir", out,
               "--max-iter", 2, "--results-dir", tmp_path / "results", "--device", "cpu",
               "--launcher", "slurm", "--gpus-per-node", 2, "--cpus-per-task", 2, "--time", 10, "--wait",
               "dataloader.train.num_workers=0", "dataloader.test.num_workers=0", "train.eval_period=0",
               "dataloader.train.total_batch_size=2", "datasets.test.max_images=4")
    metrics = json.loads(res[res.index("{\n"):])
    assert {"AP", "AP50"} <= set(metrics["bbox"])
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["iterations"] == 2  # two processes from detectron2's launch
    assert (out / "model_final.pth").exists() and len(pd.read_parquet(tmp_path / "results" / "results.parquet")) == 1
    assert list(out.glob("slurm/*/*_0_log.err"))
