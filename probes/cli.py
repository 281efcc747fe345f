"""``revtransfer probe`` and ``revtransfer sweep``."""
from __future__ import annotations

import json
import logging
import sys

import click

from revtransfer.launch.options import launcher_options, pop_launcher_options


def _setup_logging():
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


@click.command(context_settings={"show_default": True},
               short_help="Linear probe on frozen features of a pretrained backbone.")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("transfer_dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--checkpoint", type=click.Choice(["last", "best"]), default="last")
@click.option("--n-boot", type=int, default=1000, help="Bootstrap resamples for the 95% CIs.")
@click.option("--seed", type=int, default=0, help="Probe split and bootstrap seed.")
@click.option("--no-sanity", is_flag=True, help="Skip the has_x probe on the pretrain held-out part.")
@click.option("--device", default="auto")
@click.option("--progress/--no-progress", default=True)
def probe(run_dir, transfer_dataset, checkpoint, n_boot, seed, no_sanity, device, progress):
    """Linear-probe the frozen backbone of RUN_DIR for has_y on TRANSFER_DATASET.

    \b
    revtransfer probe runs/rev data/transfer
    Writes RUN_DIR/probe.json; prints test accuracy and AUROC with bootstrap 95% CIs.
    """
    from .probe import ProbeSettings, run_probes

    _setup_logging()
    settings = ProbeSettings(seed=seed, n_boot=n_boot, checkpoint=checkpoint, sanity=not no_sanity)
    results = run_probes(run_dir, transfer_dataset, settings, device=device, progress=progress)
    for name, r in results.items():
        click.echo(f"{name:28s} acc {r.acc:.4f} [{r.acc_ci_low:.4f}, {r.acc_ci_high:.4f}]  "
                   f"AUROC {r.auroc:.4f} [{r.auroc_ci_low:.4f}, {r.auroc_ci_high:.4f}]  "
                   f"C={r.C:g}  dim={r.feature_dim}  n_test={r.n_test}  (majority {r.majority_acc:.3f})")


def _only_filter(items: tuple[str, ...]):
    """--only arch=vit_micro --only seed=0 -> predicate over cells."""
    from .sweep import parse_number

    conds = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in ("arch", "backprop", "corr", "fraction", "seed"):
            raise click.BadParameter(f"{item!r}: use arch=, backprop=, corr=, fraction= or seed=",
                                     param_hint="--only")
        conds.append((key, value if key in ("arch", "backprop") else parse_number(value, f"--only {key}")))
    if not conds:
        return None
    return lambda cell: all(getattr(cell, k) == v if isinstance(v, str) else
                            abs(getattr(cell, k) - v) < 1e-6 for k, v in conds)


@click.command(context_settings={"show_default": True},
               short_help="Run a resumable pretrain -> probe sweep from a YAML file.")
@click.argument("sweep_file")
@click.option("--workdir", type=click.Path(file_okay=False), default=".",
              help="Relative paths in the sweep file are resolved against this directory.")
@click.option("--only", multiple=True, metavar="KEY=VALUE", help="Run only matching cells (repeatable).")
@click.option("--max-cells", type=int, default=None, help="Stop after running this many cells.")
@click.option("--retry-failed/--no-retry-failed", default=True, help="Re-run cells recorded as failed.")
@click.option("--status", "show_status", is_flag=True, help="List the cells and their state; run nothing.")
@click.option("--estimate", "estimate_from", multiple=True, metavar="THROUGHPUT_JSON",
              help="Project the sweep's training time from measured throughput (a `pretrain --benchmark-steps`, "
                   "`bench` or GPU-plan JSON; repeatable); run nothing.")
@click.option("--plan", "show_plan", is_flag=True,
              help="Print the declared claims' power, the seeds they need, where the variance is and the "
                   "group-sequential design, from the sweep's rows (or --pilot's); run nothing.")
@click.option("--pilot", metavar="RESULTS", type=click.Path(exists=True),
              help="With --plan: plan from another study's results (a results dir, .parquet or .csv).")
@click.option("--until-decided", is_flag=True,
              help="Add blocks of seeds until the declared primary claim is decided under its group-sequential "
                   "rule, its max_seeds are reached or --budget-hours is spent (state: OUT/sequential.json).")
@click.option("--budget-hours", type=float, default=None,
              help="With --until-decided: do not start a block that would take the extension past this many "
                   "hours (the seeds added by every call so far and the next block, each cell at its arch's median "
                   "measured cell time).")
@click.option("--redeclare", is_flag=True,
              help="Accept a changed claims:/probe: declaration although result rows exist (recorded; the report "
                   "says so).")
@click.option("--progress/--no-progress", default=True)
@launcher_options(array=True)
def sweep(sweep_file, workdir, only, max_cells, retry_failed, show_status, estimate_from, show_plan, pilot,
          until_decided, budget_hours, redeclare, progress, **launch):
    """Run every unfinished cell of SWEEP_FILE (a YAML path, or a preset: demo, cpu, paper).

    \b
    revtransfer sweep demo                       # CPU, minutes: small data, same grid shape
    revtransfer sweep paper --workdir /scratch   # the study's scale, for a GPU
    revtransfer sweep my_sweep.yaml --only arch=revvit_micro --status
    revtransfer sweep paper --estimate reports/bench/gpu/h200_gpu_plan_figures.json   # projected hours
    revtransfer sweep paper --launcher slurm --partition gpu --gpus-per-task 1 --time 4:00:00
    revtransfer sweep cpu --plan                                  # power and seeds needed, from its rows
    revtransfer sweep paper --plan --pilot reports/study_cpu/results   # ... from another study's rows
    revtransfer sweep cpu --until-decided --budget-hours 12       # seeds until the primary claim is decided

    The sweep file's claims: section (primary, secondary, exploratory claims, alpha, max_seeds,
    spending) and its probe settings are recorded in OUT/declaration.json before any cell runs; a
    changed declaration after rows exist is refused unless --redeclare.
    Finished cells are skipped, so re-running a killed sweep resumes it; results go to
    OUT/results.parquet and OUT/results.csv (OUT from the sweep file). With --launcher slurm every
    pending cell is a task of one SLURM job array (resources: these options, then the sweep file's
    launcher: section); --status shows each cell's job.
    """
    from .declaration import DeclarationChanged, ensure_declaration
    from .slurm import status_lines
    from .sweep import SweepError, SweepSpec, run_sweep

    _setup_logging()
    spec = SweepSpec.load(sweep_file, workdir)
    launcher, options, wait = pop_launcher_options(launch, spec.launcher)
    if pilot and not show_plan:
        raise click.UsageError("--pilot goes with --plan")
    if budget_hours is not None and not until_decided:
        raise click.UsageError("--budget-hours goes with --until-decided")
    if show_status:
        for line in status_lines(spec):
            click.echo(line)
        return
    if estimate_from:
        from .estimate import estimate, format_estimate

        click.echo(format_estimate(spec, estimate(spec, list(estimate_from))))
        return
    if show_plan:
        from .plan import plan_text

        try:
            click.echo(plan_text(spec, pilot))
        except SweepError as e:
            raise click.ClickException(str(e)) from None
        return
    try:
        if until_decided:
            if launcher == "slurm":
                raise click.UsageError("--until-decided runs its blocks locally (one process decides); "
                                       "drop --launcher slurm")
            from .sequential import until_decided as run_until_decided

            result = run_until_decided(spec, budget_hours, progress=progress, redeclare=redeclare, echo=click.echo)
            click.echo(f"sweep {spec.name}: {result.stop}: {result.message}; {result.ran} cell(s) run by this call; "
                       f"state: {spec.out / 'sequential.json'}")
            return
        if launcher == "slurm":
            spec.out.mkdir(parents=True, exist_ok=True)
            ensure_declaration(spec, redeclare=redeclare)  # before any job is submitted
            return _sweep_on_slurm(spec, sweep_file, workdir, options, wait, only, retry_failed, max_cells)
        report = run_sweep(spec, progress=progress, retry_failed=retry_failed, only=_only_filter(only),
                           max_cells=max_cells, redeclare=redeclare)
    except (DeclarationChanged, SweepError) as e:
        raise click.ClickException(str(e)) from None
    _report(spec, report)


def _report(spec, report):
    click.echo(f"sweep {spec.name}: {report.summary()}; table: {spec.out / 'results.csv'}")
    if report.failed:
        click.echo("failed cells:\n" + json.dumps(report.failed, indent=2), err=True)
        sys.exit(1)


def _sweep_on_slurm(spec, sweep_file, workdir, options, wait, only, retry_failed, max_cells):
    from revtransfer.launch import LaunchError

    from .slurm import submit_sweep, wait_sweep

    try:
        sub = submit_sweep(spec, options, only=_only_filter(only), retry_failed=retry_failed, max_cells=max_cells)
    except LaunchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"sweep {spec.name}: {len(sub.cells)} cells submitted, {len(sub.skipped)} already finished, "
               f"{len(sub.busy)} queued or running already")
    if not sub.cells:
        return
    click.echo(f"SLURM job array {sub.array_id} ({options.describe()}):")
    for cell, record in zip(sub.cells, sub.records):
        click.echo(f"  {record.job_id:>14s} {cell.cell_id}")
    click.echo(f"logs: {sub.folder}")
    if not wait:
        workdir_arg = f" --workdir {workdir}" if workdir != "." else ""
        click.echo(f"follow: squeue -j {sub.array_id}; revtransfer sweep {sweep_file}{workdir_arg} --status")
        return
    click.echo("waiting for the jobs to end (Ctrl-C stops waiting, not the jobs):")
    _report(spec, wait_sweep(spec, sub, echo=click.echo))
