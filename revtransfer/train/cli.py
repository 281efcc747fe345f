"""``revtransfer pretrain``: thin click wrapper over :func:`revtransfer.train.pretrain`."""
from __future__ import annotations

import json
import logging
import os
import sys

import click
import yaml

from revtransfer.errors import yaml_problem
from revtransfer.launch.options import launcher_options, pop_launcher_options
from revtransfer.options import parse_model_kwargs
from revtransfer.reversible import BACKPROP_MODES

from .config import PRECISIONS, PretrainConfig


@click.command(context_settings={"show_default": True})
@click.argument("dataset", required=False)
@click.option("--out", "-o", help="Run dir (config, checkpoints, metrics).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="Start from a config YAML (e.g. a run's config.yaml); options given here override it.")
@click.option("--arch", default=None, help="Model name, e.g. vit_micro, revvit_micro.  [default: vit_micro]")
@click.option("--model-kw", multiple=True, metavar="KEY=VALUE",
              help="Model constructor argument, e.g. --model-kw depth=2 --model-kw embed_dim=64.")
@click.option("--backprop", type=click.Choice(BACKPROP_MODES), default=None,
              help="Backward of reversible models.  [default: pareprop]")
@click.option("--epochs", type=int, default=None, help="[default: 40]")
@click.option("--batch-size", type=int, default=None, help="Global batch size.  [default: 256]")
@click.option("--lr", type=float, default=None, help="Peak learning rate of the one-cycle schedule.  [default: 3e-4]")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay.  [default: 0.05]")
@click.option("--fraction", type=float, default=None, help="Seeded fraction of the pretrain part to train on.  [default: 1]")
@click.option("--val-frac", type=float, default=None, help="Held-out part of the dataset.  [default: 0.1]")
@click.option("--seed", type=int, default=None, help="[default: 0]")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="[default: fp32]")
@click.option("--amp", is_flag=True, hidden=True, help="The older spelling of --precision bf16.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.  [default: auto]")
@click.option("--init", "init_checkpoint", default=None,
              help="Initialise from a checkpoint: ours, a timm ViT state dict or a PySlowFast RevViT.")
@click.option("--init-format", type=click.Choice(["auto", "revtransfer", "timm_vit", "slowfast_revvit"]), default=None)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--benchmark-steps", type=int, default=0,
              help="Instead of training, time N training steps of this config on this data and write "
                   "throughput.json into --out.")
@click.option("--benchmark-rounds", type=int, default=3,
              help="With --benchmark-steps: rounds of N steps per config, interleaved; min / median / max.")
@click.option("--benchmark-archs", default=None, metavar="A,B",
              help="With --benchmark-steps: time these archs in the same run (ratios within each round).")
@click.option("--benchmark-precisions", default=None, metavar="P,Q",
              help="With --benchmark-steps: time these precisions in the same run, e.g. fp32,bf16.")
@click.option("--progress/--no-progress", default=True)
@launcher_options(extra=[
    click.option("--nodes", type=int, help="With --launcher slurm: machines.  [default: 1]"),
    click.option("--tasks-per-node", type=int,
                 help="With --launcher slurm: DDP processes per machine, one per GPU.  [default: 1]")])
def pretrain(dataset, out, config_file, arch, model_kw, backprop, epochs, batch_size, lr, weight_decay, fraction,
             val_frac, seed, precision, amp, device, init_checkpoint, init_format, resume, benchmark_steps,
             benchmark_rounds, benchmark_archs, benchmark_precisions, progress, **launch):
    """Pretrain a model on has_x of a clevr_gen DATASET (the study's recipe by default).

    \b
    revtransfer pretrain data/pt-corr0.8 --out runs/vit --arch vit_micro --epochs 40
    revtransfer pretrain data/pt-corr0.8 --out runs/rev --arch revvit_micro --backprop pareprop --precision bf16
    torchrun --nproc-per-node 4 -m revtransfer.cli pretrain data/pt --out runs/ddp   # DDP
    revtransfer pretrain data/pt --out runs/ddp --launcher slurm --nodes 2 --tasks-per-node 4 --gpus-per-task 1
    revtransfer pretrain data/pt --out bench/ --batch-size 64 --benchmark-steps 5 \\
        --benchmark-archs vit_micro,revvit_micro --benchmark-precisions fp32,bf16     # speed, not training
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    nodes, tasks_per_node = launch.pop("nodes"), launch.pop("tasks_per_node")
    launcher, slurm, wait = pop_launcher_options(launch, slurm_only={"--nodes": nodes, "--tasks-per-node": tasks_per_node})
    base = {}
    if config_file:
        try:
            data = yaml.safe_load(open(config_file)) or {}
        except yaml.YAMLError as e:
            raise click.BadParameter(f"{config_file} is not valid YAML: {yaml_problem(e)}",
                                     param_hint="--config") from None
        if not isinstance(data, dict):
            raise click.BadParameter(f"{config_file} holds no mapping of settings", param_hint="--config")
        base = dict(data.get("config", data))
    given = dict(dataset=dataset, out=out, arch=arch, backprop=backprop, epochs=epochs, batch_size=batch_size,
                 lr=lr, weight_decay=weight_decay, fraction=fraction, val_frac=val_frac, seed=seed,
                 precision="bf16" if amp else precision, device=device, init_checkpoint=init_checkpoint,
                 init_format=init_format)
    base.update({k: v for k, v in given.items() if v is not None})
    if model_kw:
        base["model_kwargs"] = {**base.get("model_kwargs", {}), **parse_model_kwargs(model_kw)}
    for required in ("dataset", "out"):
        if not base.get(required):
            raise click.UsageError(f"give {'DATASET' if required == 'dataset' else '--out'} (or a --config that has it)")
    base["dataset"] = os.path.abspath(base["dataset"])  # the run dir must find it from anywhere
    try:
        cfg = PretrainConfig.from_dict(base)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None

    if launcher == "slurm":
        if benchmark_steps:
            raise click.UsageError("--benchmark-steps runs in this process; drop --launcher slurm")
        return _pretrain_on_slurm(cfg.replace(out=os.path.abspath(cfg.out)), slurm, nodes or 1, tasks_per_node or 1,
                                  resume, wait)
    if benchmark_steps:
        from .throughput import benchmark_configs, format_throughput

        archs = [a.strip() for a in (benchmark_archs or cfg.arch).split(",") if a.strip()]
        precisions = [p.strip() for p in (benchmark_precisions or cfg.precision).split(",") if p.strip()]
        for p in precisions:
            if p not in PRECISIONS:
                raise click.BadParameter(f"{p!r}: choose from {', '.join(PRECISIONS)}", param_hint="--benchmark-precisions")
        cfgs = [cfg.replace(arch=a, precision=p) for a in archs for p in precisions]
        result = benchmark_configs(cfgs, steps=benchmark_steps, rounds=benchmark_rounds, progress=progress)
        click.echo(format_throughput(result))
        click.echo(f"wrote {os.path.join(cfg.out, 'throughput.json')}")
        return
    import torch.distributed as dist

    from .pretrain import pretrain as run

    result = run(cfg, resume=resume, progress=progress)
    if dist.is_initialized():  # under torchrun: one report, and a clean shutdown of the group
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return
    click.echo(json.dumps(vars(result), indent=2))


def _pretrain_on_slurm(cfg, options, nodes, tasks_per_node, resume, wait):
    """DDP through submitit: one task per GPU; the run dir is a local run's."""
    from revtransfer.launch import LaunchError
    from revtransfer.launch.runs import how_to_follow, wait_run

    from .jobs import submit_pretrain

    try:
        record = submit_pretrain(cfg, options, nodes=nodes, tasks_per_node=tasks_per_node, resume=resume)
    except LaunchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"pretrain: SLURM job {record.job_id}, {nodes} node(s) x {tasks_per_node} task(s) "
               f"({options.describe(tasks_per_node=tasks_per_node)}); run dir {cfg.out}")
    if not wait:
        click.echo(how_to_follow(record))
        return
    try:
        result = wait_run(record, echo=click.echo)
    except LaunchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(result, indent=2))
