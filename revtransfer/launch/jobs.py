"""A job is an importable entry point, ``"package.module:function"``, plus its arguments: what runs
inside a SLURM task (or in this process). Launch knows no job: its callers name their own
(``revtransfer.train.jobs:pretrain_task``; the apps' jobs live in the apps).

:class:`EntryPointJob` is what submitit pickles. It is ``Checkpointable``: on a time-out or
preemption (SIGUSR2 before the limit) submitit calls ``checkpoint()``, which hands back the same job;
SLURM requeues it and the function runs again, so a job function must resume from its own last
checkpoint (each of ours does). The function is imported only when the job runs, in the job's
process: a submitter imports none of it.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable

from submitit.helpers import Checkpointable

from . import LaunchError


def resolve_entry_point(target: str) -> Callable:
    """``"package.module:function"`` (or ``"package.module:Class.method"``) -> the callable."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise LaunchError(f"job {target!r}: give an entry point as 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise LaunchError(f"job {target!r}: cannot import {module_name!r} ({e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LaunchError(f"job {target!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise LaunchError(f"job {target!r}: {attr!r} is not callable")
    return obj


def setup_job_process(torch_threads_from_slurm: bool = True) -> None:
    """What every job process does first: log to its log file, and use only the CPUs SLURM gave it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if torch_threads_from_slurm and cpus and cpus.isdigit():  # torch would use every core of the node
        import torch

        torch.set_num_threads(int(cpus))


class EntryPointJob(Checkpointable):
    """``target(*args, **kwargs)`` as a (requeueable) submitit job; ``target`` is
    ``"package.module:function"``. ``torch_threads_from_slurm=False`` leaves torch's thread count
    alone (a job that starts its own processes per GPU)."""

    def __init__(self, target: str, *args, torch_threads_from_slurm: bool = True, **kwargs):
        self.target, self.args, self.kwargs = target, args, kwargs
        self.torch_threads_from_slurm = torch_threads_from_slurm

    def __call__(self):
        setup_job_process(self.torch_threads_from_slurm)
        return resolve_entry_point(self.target)(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"EntryPointJob({self.target!r})"


def run_in_process(target: str, *args, **kwargs):
    """The local launcher: the same entry point, called here."""
    return resolve_entry_point(target)(*args, **kwargs)
