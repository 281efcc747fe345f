"""Launchers: where a job runs. ``local`` runs it in this process (or under ``torchrun``); ``slurm``
submits it to a SLURM cluster through submitit: sweep cells as one job array, DDP pretraining as
one task per GPU, detectron2 training as one task per machine that ``launch``es its GPUs.

The job itself is the same code as a local run (``probes.sweep.run_sweep`` for one cell,
``revtransfer.train.pretrain``, ``detection.launcher.main``), wrapped in a submitit
``Checkpointable`` so that a job that times out or is preempted requeues itself and resumes from
its last checkpoint. Every job's submitit folder (sbatch script, pickles, ``*_log.out`` and
``*_log.err``) lies under the run or sweep dir, in ``slurm/<submission>/``, and the job's id is
recorded next to the run (``slurm_job.json``) so that a later command can tell what it is doing.

Importing this package is cheap; submitit is imported when a job is submitted.
"""
from __future__ import annotations

LAUNCHERS = ("local", "slurm")


class LaunchError(ValueError):
    """A launch that cannot be done as asked (the message says what to change)."""
