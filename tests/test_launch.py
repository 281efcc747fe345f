"""The SLURM launcher without a cluster: resources and the sbatch script they make, the errors a
user sees, job-state parsing, the record of a job that died, and the jobs' own code run in process.
(tests/test_slurm.py runs the same against a real cluster.)"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner
from study_fixtures import write_dataset

from probes import slurm as LS
from probes.sweep import SweepError, SweepSpec, record_failure
from revtransfer.launch import LaunchError
from revtransfer.launch import slurm as S
from revtransfer.launch.slurm import JobRecord, SlurmOptions, parse_mem, parse_time
from revtransfer.results import ResultsTable

TINY = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}


def _spec_dict(**over):
    d = {"name": "t", "out": "out", "datasets": {"pretrain": {0.8: "pt8"}, "transfer": "tf"},
         "grid": {"arch": ["vit_micro"], "corr": [0.8], "fraction": [1], "seed": [0, 1]},
         "model_kwargs": TINY, "recipe": {"epochs": 1, "batch_size": 16, "val_frac": 0.25, "device": "cpu"},
         "probe": {"n_boot": 20}}
    d.update(over)
    return d


@pytest.mark.parametrize("given,minutes", [(90, 90), ("90", 90), ("1:30:00", 90), ("2-00:00:00", 2880),
                                           ("30:30", 31), ("1-12", 2160)])
def test_time_limits(given, minutes):
    assert parse_time(given) == minutes


@pytest.mark.parametrize("given,expected", [(32, "32G"), ("32G", "32G"), ("500M", "500M"), ("32gb", "32G"),
                                            (1.5, "1536M"), (None, None)])
def test_memory(given, expected):
    assert parse_mem(given) == expected


@pytest.mark.parametrize("section,match", [
    ({"time": "soon"}, "time='soon': give minutes"),
    ({"gpus": 1}, "unknown keys \\['gpus'\\]"),
    ({"mem": "lots"}, "mem='lots'"),
    ({"cpus_per_task": 0}, "cpus_per_task=0: must be >= 1"),
    ({"sbatch": {"output": "x.log"}}, "'output' is set by the launcher"),
])
def test_bad_resources_are_explained(section, match):
    with pytest.raises(LaunchError, match=match):
        SlurmOptions.from_dict(section)


def test_options_override_the_sweep_files_section_and_make_the_sbatch_script(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    section = {"partition": "gpu", "time": "4:00:00", "gpus_per_task": 1, "cpus_per_task": 8, "mem": 32,
               "account": "acc", "qos": "normal", "array_parallelism": 3, "sbatch": {"constraint": "volta32gb"},
               "setup": ["module load cuda"]}
    opts = SlurmOptions.from_dict(section).updated(time=90, qos="high", sbatch=["exclusive", "comment=hi"])
    params = opts.executor_parameters(job_name="pretrain", nodes=2, tasks_per_node=4)
    text = _make_sbatch_string(command="python -m job", folder=tmp_path / "%j", map_count=10, **params)
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=4", "--cpus-per-task=8", "--mem=32G",
                 "--account=acc", "--qos=high", "--constraint=volta32gb", "--exclusive", "--comment=hi",
                 "--nodes=2", "--ntasks-per-node=4", "--array=0-9%3", "--job-name=pretrain", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in text, line
    assert "module load cuda" in text and "srun" in text
    assert "GPU/node" in opts.describe(tasks_per_node=4)


def test_the_sweep_files_launcher_section_is_checked_on_load(tmp_path):
    spec = SweepSpec.from_dict(_spec_dict(launcher={"partition": "gpu", "gpus_per_task": 1}), tmp_path)
    assert spec.launcher == {"partition": "gpu", "gpus_per_task": 1}
    with pytest.raises(SweepError, match="launcher: time='x'"):
        SweepSpec.from_dict(_spec_dict(launcher={"time": "x"}), tmp_path)
    with pytest.raises(SweepError, match="launcher: give a mapping"):
        SweepSpec.from_dict(_spec_dict(launcher="slurm"), tmp_path)


def _run(*args):
    from revtransfer.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_command_line_errors_are_one_clear_line(tmp_path, monkeypatch):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_spec_dict()))
    sweep = ["sweep", tmp_path / "s.yaml", "--workdir", tmp_path]
    res = _run(*sweep, "--partition", "gpu")
    assert res.exit_code == 2 and "--partition only apply with --launcher slurm" in res.output
    res = _run("pretrain", tmp_path, "--out", tmp_path / "r", "--nodes", 2)
    assert res.exit_code == 2 and "--nodes only apply with --launcher slurm" in res.output
    res = _run(*sweep, "--launcher", "slurm", "--time", "soon")
    assert res.exit_code == 2 and "time='soon'" in res.output
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no sbatch here
    res = _run(*sweep, "--launcher", "slurm")
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == ("Error: --launcher slurm: sbatch, srun, squeue not on PATH; run "
                                                   "this on a SLURM login node (or load its module), or use "
                                                   "--launcher local")


def test_job_states_from_squeue_then_sacct(monkeypatch):
    calls = []

    def fake_run(cmd, timeout):
        calls.append(cmd[0])
        if cmd[0] == "sacct":  # accounting lags: 13 runs already, 14 has left the queue
            return ("12_0|COMPLETED\n12_[2-3%2]|PENDING\n12_1|CANCELLED by 0\n12_1.batch|CANCELLED\n"
                    "13|PENDING\n14|RUNNING\n")
        return "13|RUNNING\n12_2|RUNNING\n12_3|PENDING\n"

    monkeypatch.setattr(S, "_run", fake_run)
    states = S.job_states(["12_0", "12_1", "12_2", "12_3", "13", "14", "15"])
    assert states == {"12_0": "COMPLETED", "12_1": "CANCELLED", "12_2": "RUNNING", "12_3": "PENDING",
                      "13": "RUNNING", "14": S.GONE, "15": S.GONE}
    assert calls == ["squeue", "sacct"]
    calls.clear()
    assert S.job_states(["13"]) == {"13": "RUNNING"} and calls == ["squeue"]  # all live: no sacct call
    monkeypatch.setattr(S, "_run", lambda cmd, timeout: None)  # neither command answers
    assert S.job_states(["15"]) == {"15": "UNKNOWN"} and S.is_active("UNKNOWN")
    monkeypatch.setattr(S, "_run", lambda cmd, timeout: "16|COMPLETED\n" if cmd[0] == "sacct" else None)
    assert S.job_states(["16"]) == {"16": "COMPLETED"}  # squeue down, accounting has the end


def _dead_job(spec, cell, tmp_path, state="CANCELLED"):
    folder = tmp_path / "slurm" / "sub"
    folder.mkdir(parents=True)
    (folder / "77_3_0_log.err").write_text("epoch 1/9: loss 0.69\n" + "".join(f"line {i}\n" for i in range(30))
                                           + "slurmstepd: *** JOB 77 ON vm CANCELLED AT 2026 ***\n")
    JobRecord(job_id="77_3", folder=str(folder), name=cell.cell_id).save(spec.run_dir(cell))
    return folder


def test_a_job_that_died_is_recorded_once_as_a_failed_cell(tmp_path, monkeypatch):
    spec = SweepSpec.from_dict(_spec_dict(), tmp_path)
    cell, other = spec.cells()
    _dead_job(spec, cell, tmp_path)
    monkeypatch.setattr(LS, "job_states", lambda ids: {i: "CANCELLED" for i in ids})
    lines = LS.status_lines(spec)
    assert lines[0].startswith(f"failed   {cell.cell_id}  slurm 77_3 CANCELLED  log: ")
    assert lines[1] == f"todo     {other.cell_id}"  # no record: no SLURM column
    row = ResultsTable(spec.out).read().iloc[0]
    assert row["status"] == "failed" and row["error"].startswith("SLURM job 77_3 ended CANCELLED without a result")
    assert "line 29" in row["error"] and "CANCELLED AT" in row["error"] and "line 5" not in row["error"]
    assert "CANCELLED AT" in (spec.run_dir(cell) / "error.txt").read_text()
    assert JobRecord.load(spec.run_dir(cell)).recorded_failure
    # Recorded once: an ok row written later (the next sweep ran it) is never overwritten.
    ResultsTable(spec.out).upsert([{**row.to_dict(), "status": "ok", "error": None}])
    LS.reconcile(spec)
    assert ResultsTable(spec.out).read().iloc[0]["status"] == "ok"
    assert record_failure(spec, cell, "late") is True and ResultsTable(spec.out).read().iloc[0]["status"] == "ok"


def test_a_queued_cell_is_not_submitted_twice_and_a_running_one_shows_its_log(tmp_path, monkeypatch):
    spec = SweepSpec.from_dict(_spec_dict(), tmp_path)
    cell, _ = spec.cells()
    folder = _dead_job(spec, cell, tmp_path)
    monkeypatch.setattr(LS, "job_states", lambda ids: {i: "RUNNING" for i in ids})
    assert LS.status_lines(spec)[0] == (f"running  {cell.cell_id}  slurm 77_3 RUNNING  log: "
                                        f"{folder / '77_3_0_log.err'}")
    monkeypatch.setattr(LS, "job_states", lambda ids: {i: "PENDING" for i in ids})
    assert LS.status_lines(spec)[0].startswith("queued ")
    submitted = []
    monkeypatch.setattr(LS, "check_slurm", lambda: None)
    monkeypatch.setattr(LS, "make_executor", lambda *a, **k: None)
    monkeypatch.setattr(LS, "submit", lambda ex, fns: submitted.extend(fns) or
                        [SimpleNamespace(job_id="90", paths=SimpleNamespace(folder=tmp_path), num_tasks=1)])
    sub = LS.submit_sweep(spec, SlurmOptions())
    assert sub.busy == [cell.cell_id] and [f.args[1] for f in submitted] == [spec.cells()[1].cell_id]
    assert ResultsTable(spec.out).read().empty  # a queued job is no failure


def test_the_cell_job_runs_one_cell_with_the_local_code(tmp_path):
    import cloudpickle

    from revtransfer.launch.jobs import EntryPointJob

    write_dataset(tmp_path / "pt8", n=96, size=16, seed=0)
    write_dataset(tmp_path / "tf", n=120, size=16, seed=2, transfer=True)
    spec = SweepSpec.from_dict(_spec_dict(), tmp_path)
    cell = spec.cells()[1]
    job = EntryPointJob("probes.jobs:sweep_cell_task", spec, cell.cell_id)
    job = cloudpickle.loads(cloudpickle.dumps(job))  # as submitit ships it
    assert job() == {"cell_id": cell.cell_id, "ran": True, "busy": False, "skipped": False, "error": None}
    table = ResultsTable(spec.out).read()
    assert list(table["cell_id"]) == [cell.cell_id] and table.iloc[0]["status"] == "ok"
    assert job()["skipped"]  # a requeued job whose cell finished meanwhile does nothing
    assert job.checkpoint().function is job  # a time-out or preemption requeues the same cell


def test_detection_ranks_and_address_come_from_slurm():
    from detection.jobs import detection_args_for_task
    from detection.train_net import RunArgs

    args = RunArgs(config="c", output_dir="/o", num_gpus=1)
    env = SimpleNamespace(num_nodes=2, node=1, hostnames=["n7", "n8"], job_id="4242")
    got = detection_args_for_task(args, 8, env)
    assert (got.num_gpus, got.num_machines, got.machine_rank) == (8, 2, 1)
    host, port = got.dist_url.removeprefix("tcp://").split(":")
    assert host == "n7" and 20000 <= int(port) <= 60000
    again = detection_args_for_task(args, 8, SimpleNamespace(**{**vars(env), "node": 0}))
    assert again.dist_url == got.dist_url  # every machine agrees on the address
    single = detection_args_for_task(args, 2, SimpleNamespace(num_nodes=1, node=0, hostnames=["n7"], job_id="5"))
    assert single.dist_url == "auto" and single.num_machines == 1


def test_pretrain_refuses_to_queue_over_a_finished_run_without_resume(tmp_path, monkeypatch):
    from revtransfer.train import PretrainConfig, pretrain
    from revtransfer.train.jobs import check_resume as _check_pretrain_resume

    data = write_dataset(tmp_path / "d", n=60, size=16)
    cfg = PretrainConfig(dataset=str(data), out=str(tmp_path / "r"), model_kwargs=dict(TINY), epochs=1,
                         batch_size=16, val_frac=0.25, device="cpu")
    _check_pretrain_resume(cfg, False)  # nothing there yet
    pretrain(cfg, progress=False)
    with pytest.raises(FileExistsError, match="pass --resume"):
        _check_pretrain_resume(cfg, False)
    _check_pretrain_resume(cfg, True)
    with pytest.raises(ValueError, match="config differs"):
        _check_pretrain_resume(cfg.replace(lr=1e-3), True)


def test_a_submission_from_inside_a_job_hides_that_jobs_variables(monkeypatch):
    import os

    for k, v in {"SLURM_JOB_ID": "5", "SLURM_CPUS_PER_TASK": "3", "RANK": "1", "WORLD_SIZE": "4",
                 "SLURM_CONF": "/c/slurm.conf", "SBATCH_ACCOUNT": "mine"}.items():
        monkeypatch.setenv(k, v)
    with S._job_context_hidden():
        assert not {"SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "RANK", "WORLD_SIZE"} & set(os.environ)
        assert os.environ["SLURM_CONF"] == "/c/slurm.conf" and os.environ["SBATCH_ACCOUNT"] == "mine"
    assert os.environ["SLURM_JOB_ID"] == "5" and os.environ["WORLD_SIZE"] == "4"
