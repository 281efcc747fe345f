"""Pretraining as a launch job: ``revtransfer pretrain ... --launcher slurm`` submits
``revtransfer.train.jobs:pretrain_task`` (one task per GPU, DDP) through the generic launcher."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from revtransfer.launch import LaunchError
from revtransfer.launch.runs import check_counts, submit_job
from revtransfer.launch.slurm import JobRecord, SlurmOptions, check_slurm

from .checkpoint import LAST, load_training_checkpoint


def _cuda_device_for_task(device: str, local_rank: int) -> str:
    """The device string for this task: SLURM may bind one GPU per task (then it is cuda:0)."""
    if device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return "cuda:0" if torch.cuda.device_count() <= local_rank else device


def pretrain_task(cfg) -> dict:
    """``pretrain(cfg)`` as one task of a (multi-node) DDP job: submitit's
    ``TorchDistributedEnvironment`` exports what torchrun would (MASTER_ADDR/PORT, RANK,
    WORLD_SIZE, LOCAL_RANK), then the same ``pretrain`` as a local run joins the group. It always
    resumes, so a requeued job continues from the run's last checkpoint."""
    import submitit
    import torch.distributed as dist

    from .pretrain import pretrain

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        cfg = replace(cfg, device=_cuda_device_for_task(cfg.device, env.local_rank))
    try:
        result = pretrain(cfg, resume=True, progress=False)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return {**vars(result), "rank": env.global_rank, "world_size": env.num_tasks}


def check_resume(cfg, resume: bool) -> None:
    """What a local ``pretrain`` checks first, checked before queueing (the job itself always resumes,
    so that a requeued job continues)."""
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
    check_slurm()
    check_counts(nodes=nodes, tasks_per_node=tasks_per_node)
    if str(cfg.device).startswith("cuda") and options.gpus_per_task < 1:
        raise LaunchError(f"device={cfg.device!r} needs GPUs: give --gpus-per-task 1 (one task per GPU)")
    check_resume(cfg, resume)
    return submit_job("revtransfer.train.jobs:pretrain_task", cfg, options=options, out=cfg.out,
                      job_name=f"pretrain-{cfg.arch}", record_name="pretrain", nodes=nodes,
                      tasks_per_node=tasks_per_node)
