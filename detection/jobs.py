"""Detection as a launch job: ``revtransfer detect train ... --launcher slurm`` submits
``detection.jobs:detect_task``, one task per machine, each running detectron2's ``launch`` for its
GPUs with its machine rank (through the generic launcher, which knows no job)."""
from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path

from revtransfer.launch import LaunchError
from revtransfer.launch.runs import check_counts, submit_job
from revtransfer.launch.slurm import JobRecord, SlurmOptions, check_slurm


def _master_port(job_id: str) -> int:
    # The same on every machine of the job (and across its requeues), as submitit's own choice.
    port = os.environ.get("MASTER_PORT")
    return int(port) if port else random.Random(f"detect-{job_id}").randint(20000, 60000)


def detection_args_for_task(args, processes_per_machine: int, env=None):
    """The ``RunArgs`` of this machine: its rank, the machine count and ``dist_url`` from SLURM."""
    import submitit

    env = env or submitit.JobEnvironment()
    nodes = env.num_nodes
    dist_url = "auto" if nodes == 1 else f"tcp://{env.hostnames[0]}:{_master_port(env.job_id)}"
    return replace(args, num_gpus=processes_per_machine, num_machines=nodes, machine_rank=env.node,
                   dist_url=dist_url)


def detect_task(args, processes_per_machine: int) -> dict:
    """``revtransfer detect train`` on this machine of a SLURM job. It always resumes (a fresh output
    dir starts at iteration 0), so a requeued job continues from detectron2's last checkpoint; the
    submitter refuses an output dir that holds one unless ``--resume`` was given."""
    from .train_net import main

    args = detection_args_for_task(replace(args, resume=True), processes_per_machine)
    return main(args) or {}


def submit_detect(args, options: SlurmOptions, *, nodes: int = 1, gpus_per_node: int = 1) -> JobRecord:
    """Submit ``detection.train_net.main(args)`` on ``nodes`` machines of ``gpus_per_node`` GPUs each
    (with ``--device cpu``: that many processes, no GPU asked for)."""
    check_slurm()
    if not args.output_dir:
        raise LaunchError("--launcher slurm needs --output-dir: the job's checkpoints, metrics and logs go there")
    check_counts(nodes=nodes, gpus_per_node=gpus_per_node)
    out = Path(args.output_dir).resolve()
    if (out / "last_checkpoint").exists() and not args.resume:
        raise LaunchError(f"{out} already holds a detectron2 checkpoint (last_checkpoint); pass --resume to "
                          f"continue it or choose another --output-dir")
    cpu = str(args.device or "").startswith("cpu")
    args = replace(args, output_dir=str(out),
                   results_dir=str(Path(args.results_dir).resolve()) if args.results_dir else None)
    return submit_job("detection.jobs:detect_task", args, gpus_per_node, options=options, out=out,
                      job_name="detect", record_name="detect", nodes=nodes, tasks_per_node=1,
                      gpus_per_node=0 if cpu else gpus_per_node, torch_threads_from_slurm=False)
