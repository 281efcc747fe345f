"""The launcher's command-line options, shared by ``sweep``, ``pretrain`` and ``detect train``."""
from __future__ import annotations

import click

from . import LAUNCHERS, LaunchError

# click parameter name -> (option as typed, SlurmOptions key)
_SLURM_PARAMS = {
    "partition": ("--partition", "partition"),
    "time_limit": ("--time", "time"),
    "gpus_per_task": ("--gpus-per-task", "gpus_per_task"),
    "cpus_per_task": ("--cpus-per-task", "cpus_per_task"),
    "mem": ("--mem", "mem"),
    "array_parallelism": ("--array-parallelism", "array_parallelism"),
    "account": ("--account", "account"),
    "qos": ("--qos", "qos"),
    "sbatch_arg": ("--sbatch-arg", "sbatch"),
}


def launcher_options(*, array: bool = False, gpus_per_task: bool = True, extra=()):
    """Decorator adding ``--launcher``, the SLURM resources and ``--wait`` (plus ``extra`` click
    options, e.g. ``--nodes``) to a command."""
    opts = [
        click.option("--launcher", type=click.Choice(LAUNCHERS), default="local", show_default=True,
                     help="Where it runs: in this process (local), or as SLURM jobs through submitit."),
        *extra,
        click.option("--partition", help="SLURM partition."),
        click.option("--time", "time_limit", metavar="TIME",
                     help="SLURM time limit per job, minutes or [D-]HH:MM:SS; near it the job checkpoints and "
                          "requeues itself.  [default: 240]"),
    ]
    if gpus_per_task:
        opts.append(click.option("--gpus-per-task", type=int, help="GPUs per SLURM task.  [default: 0]"))
    opts += [
        click.option("--cpus-per-task", type=int, help="CPUs per SLURM task.  [default: the cluster's]"),
        click.option("--mem", help="Memory per node, e.g. 32G.  [default: the cluster's]"),
    ]
    if array:
        opts.append(click.option("--array-parallelism", type=int, help="Cells running at once.  [default: all]"))
    opts += [
        click.option("--account", help="SLURM account."),
        click.option("--qos", help="SLURM quality of service."),
        click.option("--sbatch-arg", multiple=True, metavar="NAME[=VALUE]",
                     help="Any other sbatch option, e.g. --sbatch-arg constraint=volta32gb (repeatable)."),
        click.option("--wait", is_flag=True,
                     help="With --launcher slurm: block until the jobs have ended, then report as a local run."),
    ]

    def decorate(f):
        for option in reversed(opts):
            f = option(f)
        return f

    return decorate


def pop_launcher_options(kw: dict, section: dict | None = None, slurm_only: dict | None = None):
    """Take the launcher's options out of a command's keyword arguments: (launcher, SlurmOptions or
    None, wait). ``section`` is a ``launcher:`` mapping the options override; ``slurm_only`` maps
    other options that only apply to SLURM (e.g. {"--nodes": 2}) to their values, None when not given."""
    from .slurm import SlurmOptions

    launcher, wait = kw.pop("launcher", "local"), kw.pop("wait", False)
    given = {name: kw.pop(name) for name in _SLURM_PARAMS if name in kw}
    named = [_SLURM_PARAMS[n][0] for n, v in given.items() if v not in (None, ())]
    named += [name for name, v in (slurm_only or {}).items() if v is not None]
    if launcher != "slurm":
        if named or wait:
            raise click.UsageError(f"{', '.join(named + (['--wait'] if wait else []))} only apply with "
                                   f"--launcher slurm")
        return launcher, None, False
    try:
        options = SlurmOptions.from_dict(section).updated(
            **{_SLURM_PARAMS[n][1]: (list(v) if n == "sbatch_arg" else v) for n, v in given.items()})
    except LaunchError as e:
        raise click.BadParameter(str(e)) from None
    return launcher, options, wait
