"""What runs inside a SLURM job: the local entry points, wrapped so that submitit can checkpoint
them. On a time-out or preemption (SIGUSR2 before the limit) submitit calls ``checkpoint()``, which
hands back the same job; SLURM requeues it and it resumes from the run's last checkpoint, since each
job always resumes (``pretrain(resume=True)``, detectron2's ``resume``, a sweep cell's own resume).

Nothing here imports the entry points before the job runs: a sweep's jobs import ``probes``, a
detection job detectron2.
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import replace

from submitit.helpers import Checkpointable


def _setup_job(threads: bool = True) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # the job's log
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if threads and cpus and cpus.isdigit():  # torch would use every core of the node
        import torch

        torch.set_num_threads(int(cpus))


class SweepCellJob(Checkpointable):
    """One sweep cell: ``run_sweep`` restricted to it, with the cell's lock, resume and failure row."""

    def __init__(self, spec, cell_id: str):
        self.spec, self.cell_id = spec, cell_id

    def __call__(self) -> dict:
        from probes.sweep import run_sweep

        _setup_job()
        for attempt in range(4):  # a status or submit command may hold the cell's lock for a moment
            report = run_sweep(self.spec, progress=False, retry_failed=True,
                               only=lambda c: c.cell_id == self.cell_id)
            if self.cell_id not in report.busy:
                break
            time.sleep(2.0)
        return {"cell_id": self.cell_id, "ran": self.cell_id in report.ran, "busy": self.cell_id in report.busy,
                "skipped": self.cell_id in report.skipped, "error": report.failed.get(self.cell_id)}


def _cuda_device_for_task(device: str, local_rank: int) -> str:
    """The device string for this task: SLURM may bind one GPU per task (then it is cuda:0)."""
    if device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return "cuda:0" if torch.cuda.device_count() <= local_rank else device


class PretrainJob(Checkpointable):
    """``revtransfer pretrain`` as one task of a (multi-node) DDP job: submitit's
    ``TorchDistributedEnvironment`` exports what torchrun would (MASTER_ADDR/PORT, RANK,
    WORLD_SIZE, LOCAL_RANK), then the same ``pretrain`` as a local run joins the group."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self) -> dict:
        import submitit
        import torch.distributed as dist

        from revtransfer.train.pretrain import pretrain

        _setup_job()
        env = submitit.JobEnvironment()
        cfg = self.cfg
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            cfg = replace(cfg, device=_cuda_device_for_task(cfg.device, env.local_rank))
        try:
            result = pretrain(cfg, resume=True, progress=False)
        finally:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        return {**vars(result), "rank": env.global_rank, "world_size": env.num_tasks}


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


class DetectJob(Checkpointable):
    """``revtransfer detect train``: one task per machine, each running detectron2's ``launch`` for its
    GPUs with its machine rank. It always resumes (a fresh output dir starts at iteration 0), so a
    requeued job continues from detectron2's last checkpoint; the submitter refuses an output dir
    that holds one unless ``--resume`` was given."""

    def __init__(self, args, processes_per_machine: int):
        self.args, self.processes_per_machine = args, processes_per_machine

    def __call__(self) -> dict:
        from detection.launcher import main

        _setup_job(threads=False)
        args = detection_args_for_task(replace(self.args, resume=True), self.processes_per_machine)
        return main(args) or {}
