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
from .errors import ConfigError
from .results import EVAL_HISTORY, read_eval_history

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
    image_size: int | None = None  # detect at this square size (padding and resizing follow it)
    tag: str = ""  # a label of the run's part in a study (e.g. width-control), recorded in run.json and the row
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
        demo=args.demo, image_size=args.image_size, overrides=args.overrides)
    prepare(cfg)
    return cfg


def build_model(cfg) -> torch.nn.Module:
    """The detector on its device; with ``train.channels_last`` its trainable convolutions (pyramid,
    RPN and ROI heads; not the frozen backbone) keep their weights channels-last, the layout
    oneDNN's CPU convolutions are fastest in (~5% of the CPU micro detector's step)."""
    model = instantiate(cfg.model).to(cfg.train.device)
    if cfg.train.get("channels_last", False):
        net = backbone_net(model.backbone)
        frozen = {id(m) for m in net.modules()}
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and id(m) not in frozen:
                m.to(memory_format=torch.channels_last)
    return model


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


PRECISIONS = ("fp32", "bf16", "fp16")


def change_over_last_fifth(history: list[dict], max_iter: int, key: str = "bbox_AP") -> float | None:
    """AP at the end minus AP at the last evaluation at or before 80% of training (None without one):
    a run converged when this is small."""
    if not history or history[-1]["iteration"] < max_iter:
        return None
    earlier = [h for h in history if h["iteration"] <= 0.8 * max_iter]
    return round(history[-1][key] - earlier[-1][key], 3) if earlier else None


def training_precision(cfg) -> str:
    """``train.precision`` (fp32, bf16, fp16); configs without it follow detectron2's
    ``train.amp.enabled`` (fp16 AMP, on CUDA only)."""
    precision = cfg.train.get("precision")
    cuda = str(cfg.train.device).startswith("cuda")
    if precision is None:
        return "fp16" if cfg.train.amp.enabled and cuda else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and not cuda:
        raise ConfigError("train.precision=fp16 needs CUDA (its loss scaling); on a CPU use bf16")
    return precision


class AutocastTrainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` with the forward under ``torch.autocast(device, bf16)``: on a
    CPU with bf16 units (AMX, AVX512-BF16) the heads' convolutions run in bf16. bf16 keeps float32's
    range, so no loss scaling; backward and the optimizer step run outside autocast, as torch
    recommends. The step is ``SimpleTrainer.run_step`` with that one change."""

    def __init__(self, model, data_loader, optimizer, device_type: str, dtype=torch.bfloat16):
        super().__init__(model, data_loader, optimizer)
        self.device_type, self.dtype = device_type, dtype

    def run_step(self):
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            losses = loss_dict
            loss_dict = {"total_loss": loss_dict}
        else:
            losses = sum(v.float() for v in loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def make_trainer(cfg, model, train_loader, optim):
    precision = training_precision(cfg)
    if precision == "fp16":
        return AMPTrainer(model, train_loader, optim)
    if precision == "bf16":
        return AutocastTrainer(model, train_loader, optim, str(cfg.train.device).split(":")[0])
    return SimpleTrainer(model, train_loader, optim)


def do_train(cfg, resume: bool = False) -> dict:
    """detectron2's LazyConfig training loop; returns the last evaluation's results."""
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    del cfg.optimizer.params.model  # keep the config serialisable
    train_loader = instantiate(cfg.dataloader.train)
    model = _ddp(model, **cfg.train.ddp)
    trainer = make_trainer(cfg, model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last: dict = {}
    history = read_eval_history(cfg.train.output_dir) if resume else []
    started = time.perf_counter() - (history[-1].get("wall_s", 0.0) if history else 0.0)

    def evaluate():
        last.clear()
        last.update(do_test(cfg, model))
        if comm.is_main_process():  # held-out AP against iterations and time: the convergence evidence
            # iterations done: trainer.iter + 1 after a step, trainer.iter (== max_iter) after training
            done_iters = min(trainer.iter + 1, int(cfg.train.max_iter))
            history.append({"iteration": done_iters, "wall_s": round(time.perf_counter() - started, 1),
                            **{f"{t}_AP": float(last.get(t, {}).get("AP", float("nan"))) for t in ("bbox", "segm")}})
            atomic_write_json(Path(cfg.train.output_dir) / EVAL_HISTORY, history)
        return last

    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        hooks.PeriodicWriter(_writers(cfg), period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    match_optimizer_state_layout(optim)
    # The checkpoint stores the iteration that just finished: continue with the next one.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)  # PeriodicCheckpointer writes model_final.pth last
    return dict(last), model


def match_optimizer_state_layout(optim: torch.optim.Optimizer) -> None:
    """Give every optimizer state tensor its parameter's memory layout. A run resumed from a
    checkpoint written with another layout (NCHW weights, now channels-last: ``train.channels_last``)
    loads its moments with the old strides, and fused AdamW assumes that parameter, gradient and
    moments share one layout (it does not check): its update would be wrong."""
    for group in optim.param_groups:
        for p in group["params"]:
            for key, value in optim.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optim.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _reset_loggers() -> None:
    """detectron2's ``setup_logger`` adds handlers per output dir to the same loggers: a second run in
    one process would print every line twice (and write it to the first run's log)."""
    from detectron2.utils.logger import setup_logger

    for name in ("detectron2", "fvcore", "d2"):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
    setup_logger.cache_clear()


def run(args: RunArgs) -> dict:
    """One process's work (what ``launch`` calls): train or evaluate, then record the run."""
    start = time.time()
    commit = git_commit()  # the code this run trains with, not what the checkout holds when it ends
    cfg = load_run_config(args)
    if str(cfg.train.device).startswith("cpu"):
        # Denormal floats (tiny AdamW moments, near-zero activations) slow CPU math by 5-10x as
        # training goes on; flushing them to zero costs no accuracy that matters here.
        torch.set_flush_denormal(True)
    _reset_loggers()  # one process may train several detectors (the demo, the ladder): one log each
    default_setup(cfg, argparse.Namespace(**asdict(args), config_file=""))
    if args.eval_only:
        model = build_model(cfg)
        weights = args.weights or cfg.train.init_checkpoint
        if weights:
            DetectionCheckpointer(model).load(weights)
        model = _ddp(model)
        metrics = do_test(cfg, model)
    else:
        metrics, model = do_train(cfg, resume=args.resume)
    wall = time.time() - start
    if comm.is_main_process():
        net = backbone_net(getattr(model, "module", model).backbone)
        cache = getattr(net, "feature_cache", None)
        if cache is not None:
            logger.info("frozen backbone feature cache: %s", cache.stats)
        record_run(cfg, args, metrics, wall, getattr(net, "checkpoint_load", None),
                   feature_cache=cache.stats if cache is not None else None, commit=commit)
    return metrics


def run_info(cfg, args: RunArgs, wall_time_s: float | None = None, backbone_load: dict | None = None,
             feature_cache: dict | None = None, commit: str | None = None) -> dict:
    """What ``run.json`` records: the run's identity, seed, data, and provenance (``commit``: the git
    commit at the run's start; now, if not given)."""
    net = backbone_net(cfg.model.backbone)
    train, test = cfg.datasets.train, cfg.datasets.test
    return {
        "mode": "eval" if args.eval_only else "train",
        "config": str(args.config),
        "arch": net.model_name,
        "backbone_checkpoint": net.checkpoint or "",
        "backbone_load": backbone_load,  # keys matched / missing / unexpected (detection.checkpoint)
        "feature_cache": feature_cache,  # entries, hits, misses of a frozen backbone's cache (or None: off)
        "frozen": bool(net.get("freeze", True)),
        "dataset": train.get("json") or train.name,
        "val_dataset": test.get("json") or test.name,
        "iterations": 0 if args.eval_only else int(cfg.train.max_iter),
        "batch_size": int(cfg.dataloader.train.total_batch_size),
        "seed": int(cfg.train.seed),
        "device": str(cfg.train.device),
        "world_size": comm.get_world_size(),
        "threads": torch.get_num_threads(),  # intra-op threads per process: two runs may share a machine's cores
        "weights": args.weights or "",
        "output_dir": str(cfg.train.output_dir),
        "wall_time_s": None if wall_time_s is None else round(wall_time_s, 2),
        "git_commit": commit or git_commit(),
        "versions": library_versions(),
        "command": " ".join(sys.argv),
        "overrides": list(args.overrides),
        "tag": args.tag,
        "box_AP_change_last_fifth": change_over_last_fifth(read_eval_history(cfg.train.output_dir),
                                                           int(cfg.train.max_iter)),
        "precision": training_precision(cfg),
        "finished_at": utc_now(),
    }


def record_run(cfg, args: RunArgs, metrics: dict, wall_time_s: float, backbone_load: dict | None = None,
               feature_cache: dict | None = None, commit: str | None = None) -> dict:
    """Write run.json and eval_results.json; append the run's row to the results table."""
    out = Path(cfg.train.output_dir)
    info = run_info(cfg, args, wall_time_s, backbone_load, feature_cache, commit)
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
