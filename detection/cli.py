"""``revtransfer detect``: train and evaluate frozen-backbone detectors, and measure their speed."""
from __future__ import annotations

import click

from revtransfer.launch.options import launcher_options, pop_launcher_options

_COMMON = [
    click.option("--config", "config", required=True,
                 help="A config file, or one of ours by name (e.g. clevr_mask_rcnn_vit_micro_frozen)."),
    click.option("--backbone-checkpoint", type=click.Path(dir_okay=False),
                 help="Backbone weights: our pretrain checkpoint, timm ViT or SlowFast RevViT weights."),
    click.option("--train-json", type=click.Path(dir_okay=False), help="COCO json of the training set."),
    click.option("--train-images", type=click.Path(),
                 help="Folder of training images, or clevr_gen's images.npy (or its folder)."),
    click.option("--val-json", type=click.Path(dir_okay=False), help="COCO json of the evaluation set."),
    click.option("--val-images", type=click.Path(), help="Folder of evaluation images, or images.npy."),
    click.option("--dataset", "dataset_dir", type=click.Path(file_okay=False),
                 help="A clevr_gen dataset dir (coco.json + images) to train on (and to evaluate on, unless "
                      "--val-dataset names another); --train-*/--val-* take precedence."),
    click.option("--val-dataset", "val_dataset_dir", type=click.Path(file_okay=False),
                 help="A clevr_gen dataset dir to evaluate on: held-out images (e.g. made with another --seed)."),
    click.option("--allow-train-eval", is_flag=True,
                 help="Allow evaluating on the training set (refused otherwise: AP on training images says "
                      "little about the features)."),
    click.option("--output-dir", type=click.Path(file_okay=False), help="Run directory (train.output_dir)."),
    click.option("--device", help="cpu or cuda (train.device)."),
    click.option("--seed", type=int, help="train.seed (default: the config's)."),
    click.option("--results-dir", type=click.Path(file_okay=False), default="results", show_default=True,
                 help="Where the shared results table (results.parquet/.csv) gets this run's row; '' for none."),
    click.option("--image-size", type=int, help="Detect at this square size (default: the config's)."),
    click.option("--tag", default="", help="A label of this run's part in a study (run.json and the results row)."),
    click.option("--num-gpus", type=int, default=1, show_default=True, help="Processes per machine."),
    click.option("--num-machines", type=int, default=1, show_default=True),
    click.option("--machine-rank", type=int, default=0, show_default=True),
    click.option("--dist-url", default="auto", show_default=True),
    click.argument("overrides", nargs=-1),
]


def _common(f):
    for option in reversed(_COMMON):
        f = option(f)
    return f


def _run_args(kw: dict, **extra):
    from pathlib import Path

    from .train_net import RunArgs

    d, v = kw.pop("dataset_dir", None), kw.pop("val_dataset_dir", None)
    for split, folder in (("train", d), ("val", v or d)):
        if folder:
            kw[f"{split}_json"] = kw.get(f"{split}_json") or str(Path(folder) / "coco.json")
            kw[f"{split}_images"] = kw.get(f"{split}_images") or str(folder)
    kw["overrides"] = list(kw.pop("overrides"))
    if kw.pop("allow_train_eval", False):
        kw["overrides"].append("datasets.allow_train_eval=True")
    kw["results_dir"] = kw.get("results_dir") or None
    return RunArgs(**kw, **extra)


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             short_help="Frozen-backbone ViTDet (Mask R-CNN) with detectron2.")
def detect():
    """Frozen-backbone detection (detectron2): ViT and RevViT under ViTDet's simple pyramid,
    hierarchical models (RevSwin, RevMViT) under an FPN.

    OVERRIDES are detectron2 LazyConfig overrides, e.g. optimizer.lr=1e-4 train.eval_period=500;
    train.max_iter=N rescales the LR schedule to N iterations, as --max-iter does.
    """


@detect.command()
@_common
@click.option("--max-iter", type=int, help="Iterations (the LR schedule is rescaled to it).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --output-dir.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Training forward in fp32, or under bf16 / fp16 (CUDA) autocast (train.precision; "
                   "default: the config's).")
@click.option("--demo", is_flag=True, help="A CPU-sized run (few iterations, one evaluation at the end).")
@launcher_options(gpus_per_task=False, extra=[
    click.option("--nodes", type=int, help="With --launcher slurm: machines.  [default: 1]"),
    click.option("--gpus-per-node", type=int,
                 help="With --launcher slurm: GPUs (processes) per machine; with --device cpu, processes "
                      "only.  [default: 1]")])
def train(**kw):
    """Train the detector (the backbone stays frozen) and evaluate it.

    \b
    revtransfer detect train ... --launcher slurm --nodes 2 --gpus-per-node 8 --partition gpu --wait
    """
    precision = kw.pop("precision")
    if precision:
        kw["overrides"] = (*kw["overrides"], f"train.precision={precision}")
    nodes, gpus_per_node = kw.pop("nodes"), kw.pop("gpus_per_node")
    launcher, slurm, wait = pop_launcher_options(kw, slurm_only={"--nodes": nodes, "--gpus-per-node": gpus_per_node})
    if launcher == "slurm":
        local = [f"--{k.replace('_', '-')}" for k, v in (("num_gpus", 1), ("num_machines", 1), ("machine_rank", 0),
                                                          ("dist_url", "auto")) if kw[k] != v]
        if local:
            raise click.UsageError(f"{', '.join(local)} apply to --launcher local; with --launcher slurm give "
                                   f"--nodes and --gpus-per-node (SLURM decides ranks and addresses)")
        return _train_on_slurm(_run_args(kw), slurm, nodes or 1, 1 if gpus_per_node is None else gpus_per_node, wait)
    from .train_net import main

    _print(main(_run_args(kw)))


@detect.command("eval")
@_common
@click.option("--weights", type=click.Path(dir_okay=False),
              help="A detector checkpoint from a training run (e.g. OUTPUT/model_final.pth).")
def eval_(weights, **kw):
    """Evaluate a trained detector (box and mask AP) on the evaluation set."""
    from .train_net import main

    _print(main(_run_args(kw, eval_only=True, weights=weights)))


@detect.command()
@click.option("--config", "configs", required=True, multiple=True,
              help="A config file or one of ours by name (repeatable: e.g. both archs, timed interleaved).")
@click.option("--variant", "variants", multiple=True, metavar="LABEL=OVERRIDES",
              help="Also time each config with these space-separated overrides under LABEL (repeatable), e.g. "
                   "'fp32=train.precision=fp32'. Without it each config is timed as it is.")
@click.option("--iters", type=int, default=5, show_default=True, help="Timed iterations per round (after warmup).")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--rounds", type=int, default=1, show_default=True,
              help="Every variant runs once per round, interleaved; min / median / max over rounds.")
@click.option("--batch-size", type=int, default=2, show_default=True)
@click.option("--device", help="cpu or cuda (default: the config's).")
@click.option("--compare-unfrozen/--no-compare-unfrozen", default=True, show_default=True,
              help="Also time each config with a trainable backbone, for reference.")
@click.option("--reference", default=None, metavar="LABEL",
              help="Ratios over this --variant (of the same arch); default: the config as it is.")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Take each iteration's batch from the config's training loader on this COCO dataset (a "
                   "clevr_gen folder or a coco.json), the wait for it included, as training does; default: one "
                   "synthetic batch, the model's step alone.")
@click.option("--image-size", type=int, help="Detect at this square size (default: the config's).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="JSON file to write.")
@click.argument("overrides", nargs=-1)
def bench(configs, variants, iters, warmup, rounds, batch_size, device, compare_unfrozen, reference, data, image_size,
          out, overrides):
    """Seconds per training iteration split into backbone forward, rest of forward, backward and
    step, plus peak memory and the number of backward ops that ran inside the backbone (0 when
    frozen); several configs and variants are timed interleaved, over rounds.

    \b
    revtransfer detect bench --config clevr_mask_rcnn_vit_micro_frozen --config clevr_mask_rcnn_revvit_micro_frozen \\
        --variant "fp32=train.precision=fp32" --batch-size 8 --rounds 3 --out bench.json
    """
    from .bench import Variant, run_bench

    common = list(overrides)
    parsed = []
    for text in variants:
        label, sep, rest = text.partition("=")
        if not sep or not label.strip():
            raise click.BadParameter(f"{text!r}: give LABEL=OVERRIDES, e.g. 'fp32=train.precision=fp32'",
                                     param_hint="--variant")
        parsed.append((label.strip(), rest.split()))
    todo = []
    for config in configs:
        name = config.rsplit("/", 1)[-1].removesuffix(".py")
        todo.append(Variant(name, config, common))
        todo += [Variant(f"{name}:{label}", config, common + extra) for label, extra in parsed]
        if compare_unfrozen:
            todo.append(Variant(f"{name}:unfrozen", config, common, frozen=False))
    _print(run_bench(todo, out, iters=iters, warmup=warmup, batch_size=batch_size, device=device, rounds=rounds,
                     progress=lambda line: click.echo(line, err=True), reference=reference, data=data,
                     image_size=image_size))


def _train_on_slurm(args, options, nodes, gpus_per_node, wait):
    """detectron2's ``launch`` inside a SLURM job: one task per machine, machine rank and dist_url
    from SLURM."""
    import json
    from pathlib import Path

    from revtransfer.launch import LaunchError
    from revtransfer.launch.runs import how_to_follow, wait_run

    from .jobs import submit_detect

    try:
        record = submit_detect(args, options, nodes=nodes, gpus_per_node=gpus_per_node)
        click.echo(f"detect train: SLURM job {record.job_id}, {nodes} node(s) x {gpus_per_node} process(es) "
                   f"({options.describe(gpus_per_node=0 if str(args.device).startswith('cpu') else gpus_per_node)})")
        if not wait:
            click.echo(how_to_follow(record))
            return
        result = wait_run(record, echo=click.echo)
        if not result and (Path(args.output_dir) / "eval_results.json").exists():  # several processes
            result = json.loads((Path(args.output_dir) / "eval_results.json").read_text())
        _print(result)
    except LaunchError as e:
        raise click.ClickException(str(e)) from None


def _print(obj):
    import json

    click.echo(json.dumps(obj, indent=2, default=float))
