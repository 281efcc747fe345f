"""One run as one SLURM job: DDP pretraining (one task per GPU) and detectron2 training (one task
per machine). The run dir is the local run's; the job's submitit files and logs go to
``RUN/slurm/<submission>/`` and its id to ``RUN/slurm_job.json``."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from . import LaunchError
from .slurm import JobRecord, SlurmOptions, check_slurm, make_executor, new_submission_folder, submit, wait_for


def _check_pretrain_resume(cfg, resume: bool) -> None:
    """What a local ``pretrain`` checks first, checked before queueing (the job itself always resumes,
    so that a requeued job continues)."""
    from revtransfer.train.checkpoint import LAST, load_training_checkpoint

    last = Path(cfg.out) / LAST
    if not last.exists():
        return
    if not resume:
        raise FileExistsError(f"run dir {cfg.out} already holds {LAST}; pass --resume to continue it or "
                              f"choose another --out")
    diffs = cfg.differences(load_training_checkpoint(last)["config"])
    if diffs:
        raise ValueError(f"cannot resume {cfg.out}: the config differs from the run's: " + "; ".join(diffs))


def submit_pretrain(cfg, options: SlurmOptions, *, nodes: int = 1, tasks_per_node: int = 1,
                    resume: bool = False) -> JobRecord:
    """Submit ``pretrain(cfg)`` as one job of ``nodes`` x ``tasks_per_node`` DDP tasks."""
    from .jobs import PretrainJob

    check_slurm()
    for name, v in (("--nodes", nodes), ("--tasks-per-node", tasks_per_node)):
        if v < 1:
            raise LaunchError(f"{name}={v}: must be >= 1")
    if str(cfg.device).startswith("cuda") and options.gpus_per_task < 1:
        raise LaunchError(f"device={cfg.device!r} needs GPUs: give --gpus-per-task 1 (one task per GPU)")
    _check_pretrain_resume(cfg, resume)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = new_submission_folder(out)
    executor = make_executor(folder, options, job_name=f"pretrain-{cfg.arch}", nodes=nodes,
                             tasks_per_node=tasks_per_node)
    [job] = submit(executor, PretrainJob(cfg))
    record = JobRecord.of(job, "pretrain")
    record.save(out)
    return record


def submit_detect(args, options: SlurmOptions, *, nodes: int = 1, gpus_per_node: int = 1) -> JobRecord:
    """Submit ``detection.launcher.main(args)`` on ``nodes`` machines of ``gpus_per_node`` GPUs each
    (with ``--device cpu``: that many processes, no GPU asked for)."""
    from .jobs import DetectJob

    check_slurm()
    if not args.output_dir:
        raise LaunchError("--launcher slurm needs --output-dir: the job's checkpoints, metrics and logs go there")
    for name, v in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if v < 1:
            raise LaunchError(f"{name}={v}: must be >= 1")
    out = Path(args.output_dir).resolve()
    if (out / "last_checkpoint").exists() and not args.resume:
        raise LaunchError(f"{out} already holds a detectron2 checkpoint (last_checkpoint); pass --resume to "
                          f"continue it or choose another --output-dir")
    cpu = str(args.device or "").startswith("cpu")
    args = replace(args, output_dir=str(out),
                   results_dir=str(Path(args.results_dir).resolve()) if args.results_dir else None)
    out.mkdir(parents=True, exist_ok=True)
    folder = new_submission_folder(out)
    executor = make_executor(folder, options, job_name="detect", nodes=nodes, tasks_per_node=1,
                             gpus_per_node=0 if cpu else gpus_per_node)
    [job] = submit(executor, DetectJob(args, gpus_per_node))
    record = JobRecord.of(job, "detect")
    record.save(out)
    return record


def wait_run(record: JobRecord, echo: Callable[[str], None] = print) -> Any:
    """Block until the job is over; its first task's result, or one clear error with the log's tail."""
    states = wait_for([record.job_id], on_change=lambda j, s: echo(f"  {j} {s}"))
    state = states[record.job_id]
    result = None
    for task in range(record.tasks):
        outcome = record.outcome(task)
        log = record.paths(task).stderr
        if outcome is None:
            if task == 0:
                raise LaunchError(f"SLURM job {record.job_id} ended {state} without a result; last lines of {log}:\n"
                                  + record.log_tail(10))
            continue
        if outcome[0] == "error":
            trace = str(outcome[1]).strip().splitlines()
            raise LaunchError(f"SLURM job {record.job_id} (task {task}) failed: {trace[-1] if trace else '?'} "
                              f"(log: {log})")
        if task == 0:
            result = outcome[1]
    return result


def how_to_follow(record: JobRecord, extra: str = "") -> str:
    return (f"  follow: squeue -j {record.job_id.split('_')[0]}; tail -f {record.stderr}\n"
            f"  submitit files and logs: {record.folder}" + (f"\n{extra}" if extra else ""))
