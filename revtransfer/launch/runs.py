"""One run as one SLURM job (e.g. DDP pretraining: one task per GPU; detectron2 training: one task
per machine), given as an entry point. The run dir is the local run's; the job's submitit files and
logs go to ``RUN/slurm/<submission>/`` and its id to ``RUN/slurm_job.json``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from . import LaunchError
from .jobs import EntryPointJob
from .slurm import JobRecord, SlurmOptions, check_slurm, make_executor, new_submission_folder, submit, wait_for


def submit_job(target: str, *args, options: SlurmOptions, out: str | Path, job_name: str, record_name: str,
               nodes: int = 1, tasks_per_node: int = 1, gpus_per_node: int | None = None,
               torch_threads_from_slurm: bool = True, **kwargs) -> JobRecord:
    """Submit the entry point ``target(*args, **kwargs)`` as one SLURM job of ``nodes`` x
    ``tasks_per_node`` tasks; its submitit files go to ``OUT/slurm/<submission>/`` and its record to
    ``OUT/slurm_job.json`` (``record_name`` names what it runs)."""
    check_slurm()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folder = new_submission_folder(out)
    params = dict(job_name=job_name, nodes=nodes, tasks_per_node=tasks_per_node)
    if gpus_per_node is not None:
        params["gpus_per_node"] = gpus_per_node
    executor = make_executor(folder, options, **params)
    [job] = submit(executor, EntryPointJob(target, *args, torch_threads_from_slurm=torch_threads_from_slurm,
                                           **kwargs))
    record = JobRecord.of(job, record_name)
    record.save(out)
    return record


def check_counts(**counts: int) -> None:
    """``--nodes`` and friends: each at least 1."""
    for name, v in counts.items():
        if v < 1:
            raise LaunchError(f"--{name.replace('_', '-')}={v}: must be >= 1")


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
