"""Launchers: where a job runs. ``local`` runs it in this process (or under ``torchrun``); ``slurm``
submits it to a SLURM cluster through submitit: one job (``runs.submit_job``) or a job array.

A job is an importable entry point, ``"package.module:function"``, plus its arguments
(:class:`jobs.EntryPointJob`, pickled by submitit): launch knows no job. Its callers name theirs
(pretraining: ``revtransfer.train.jobs:pretrain_task``; the apps: a sweep cell, a detectron2
training run, each in its own package). Each job is ``Checkpointable``: one that times out or is preempted
requeues itself and resumes from its last checkpoint. Every job's submitit folder (sbatch script,
pickles, ``*_log.out`` and ``*_log.err``) lies under the run or sweep dir, in
``slurm/<submission>/``, and the job's id is recorded next to the run (``slurm_job.json``) so that a
later command can tell what it is doing.

Importing this package is cheap; submitit is imported when a job is made or submitted.
"""
from __future__ import annotations

LAUNCHERS = ("local", "slurm")


class LaunchError(ValueError):
    """A launch that cannot be done as asked (the message says what to change)."""
