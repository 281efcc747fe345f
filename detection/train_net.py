"""Train and evaluate frozen-backbone ViTDet: a thin layer over detectron2's LazyConfig train loop
(``tools/lazyconfig_train_net.py``: SimpleTrainer/AMPTrainer, LR scheduler, periodic checkpointer
and COCO evaluation, metric writers, ``launch`` for several GPUs or machines), that also records how
each run was made and appends its box and mask AP to the results table.

Files of a run (``train.output_dir``): ``config.yaml`` (the full config, reloadable with
``LazyConfig.load``), ``run.json`` (seed, git commit, versions, command, datasets), ``metrics.json``
(training curves), ``model_*.pth`` / ``last_checkpoint`` (detectron2's checkpointer),
``eval_results.json`` (the last AP dict, per-class APs included).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter

from revtransfer.atomic import atomic_write_json
from revtransfer.provenance import git_commit, library_versions, utc_now

from . import results as results_table
from .config import backbone_net, build_config, prepare

logger = logging.getLogger("detectron2")


@dataclass
class RunArgs:
    """What ``revtransfer detect train|eval`` passes to every launched process."""

    config: str
    eval_only: bool = False
    weights: str | None = None  # eval: a detector checkpoint (model_final.pth)
    backbone_checkpoint: str | None = None
    train_json: str | None = None
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None
    output_dir: str | None = None
    max_iter: int | None = None
    device: str | None = None
    seed: int | None = None
    demo: bool = False
    resume: bool = False
    results_dir: str | None = None  # where results.parquet/.csv live; None: no row
    overrides: list[str] = field(default_factory=list)
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"


def load_run_config(args: RunArgs):
    cfg = build_config(
        args.config, backbone_checkpoint=args.backbone_checkpoint, train_json=args.train_json,
        train_images=args.train_images, val_json=args.val_json, val_images=args.val_images,
        output_dir=args.output_dir, max_iter=args.max_iter, device=args.device, seed=args.seed,
        demo=args.demo, overrides=args.overrides)
    prepare(cfg)
    return cfg


def build_model(cfg) -> torch.nn.Module:
    model = instantiate(cfg.model)
    return model.to(cfg.train.device)


def do_test(cfg, model) -> dict:
    """Inference on ``dataloader.test`` and COCO evaluation: ``{"bbox": {...}, "segm": {...}}``."""
    evaluator = instantiate(cfg.dataloader.evaluator)
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process():
        print_csv_format(ret)
    return ret


def _writers(cfg):
    writers = [CommonMetricPrinter(cfg.train.max_iter), JSONWriter(os.path.join(cfg.train.output_dir, "metrics.json"))]
    try:  # tensorboard is optional (detectron2's default_writers insists on it)
        import tensorboard  # noqa: F401
        from detectron2.utils.events import TensorboardXWriter

        writers.append(TensorboardXWriter(cfg.train.output_dir))
    except ImportError:
        pass
    return writers


def _ddp(model, **kwargs):
    """detectron2's ``create_ddp_model``, which also works for CPU processes (gloo; it would give
    them a GPU index as ``device_ids``)."""
    if not any(p.is_cuda for p in model.parameters()):
        kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **kwargs)


def do_train(cfg, resume: bool = False) -> dict:
    """detectron2's LazyConfig training loop; returns the last evaluation's results."""
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    del cfg.optimizer.params.model  # keep the config serialisable
    train_loader = instantiate(cfg.dataloader.train)
    model = _ddp(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last: dict = {}

    def evaluate():
        last.clear()
        last.update(do_test(cfg, model))
        return last

    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        hooks.PeriodicWriter(_writers(cfg), period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # The checkpoint stores the iteration that just finished: continue with the next one.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)  # PeriodicCheckpointer writes model_final.pth last
    return dict(last)


def run(args: RunArgs) -> dict:
    """One process's work (what ``launch`` calls): train or evaluate, then record the run."""
    start = time.time()
    cfg = load_run_config(args)
    if str(cfg.train.device).startswith("cpu"):
        # Denormal floats (tiny AdamW moments, near-zero activations) slow CPU math by 5-10x as
        # training goes on; flushing them to zero costs no accuracy that matters here.
        torch.set_flush_denormal(True)
    default_setup(cfg, argparse.Namespace(**asdict(args), config_file=""))
    if args.eval_only:
        model = build_model(cfg)
        weights = args.weights or cfg.train.init_checkpoint
        if weights:
            DetectionCheckpointer(model).load(weights)
        model = _ddp(model)
        metrics = do_test(cfg, model)
    else:
        metrics = do_train(cfg, resume=args.resume)
    wall = time.time() - start
    if comm.is_main_process():
        record_run(cfg, args, metrics, wall)
    return metrics


def run_info(cfg, args: RunArgs, wall_time_s: float | None = None) -> dict:
    """What ``run.json`` records: the run's identity, seed, data, and provenance."""
    net = backbone_net(cfg.model.backbone)
    train, test = cfg.datasets.train, cfg.datasets.test
    return {
        "mode": "eval" if args.eval_only else "train",
        "config": str(args.config),
        "arch": net.model_name,
        "backbone_checkpoint": net.checkpoint or "",
        "frozen": bool(net.get("freeze", True)),
        "dataset": train.get("json") or train.name,
        "val_dataset": test.get("json") or test.name,
        "iterations": 0 if args.eval_only else int(cfg.train.max_iter),
        "batch_size": int(cfg.dataloader.train.total_batch_size),
        "seed": int(cfg.train.seed),
        "device": str(cfg.train.device),
        "world_size": comm.get_world_size(),
        "weights": args.weights or "",
        "output_dir": str(cfg.train.output_dir),
        "wall_time_s": None if wall_time_s is None else round(wall_time_s, 2),
        "git_commit": git_commit(),
        "versions": library_versions(),
        "command": " ".join(sys.argv),
        "overrides": list(args.overrides),
        "finished_at": utc_now(),
    }


def record_run(cfg, args: RunArgs, metrics: dict, wall_time_s: float) -> dict:
    """Write run.json and eval_results.json; append the run's row to the results table."""
    out = Path(cfg.train.output_dir)
    info = run_info(cfg, args, wall_time_s)
    atomic_write_json(out / "run.json", info)
    atomic_write_json(out / "eval_results.json", metrics)
    if args.results_dir:
        results_table.append_detection_row(args.results_dir, info, metrics)
        logger.info("results row written to %s", Path(args.results_dir) / "results.parquet")
    return info


def main(args: RunArgs) -> dict:
    """Run on ``num_gpus`` processes per machine (one process, in this one, when it is 1)."""
    if args.num_gpus * args.num_machines > 1:
        launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
        return {}
    return run(args)
