"""The detection learnability ladder: held-out box and mask AP against iterations and wall time for
each arch's frozen pretrained backbone, beside two references trained with the same heads and
schedule: the same arch frozen at random initialisation (the floor: what the heads learn alone) and
the pretrained backbone fine-tuned (the ceiling; fewer iterations). A detection protocol (image
size, iterations, lr, pyramid and head widths, augmentation, category set) is chosen from the
frozen-pretrained curves' convergence and their gap to the floor, for both archs: never from the
RevViT − ViT difference.

Each rung is a named set of detectron2 overrides on the clevr micro configs (``NAME=OVERRIDES``;
``default`` is the config as shipped). Datasets are clevr_gen COCO sets made here: one to train on,
one held out (another seed). Runs are ordinary ``revtransfer detect train`` output dirs
(resumable: a finished run is skipped, an interrupted one continues from its checkpoint); the
table and plot are read from their ``eval_history.json``.

    revtransfer detect-ladder --backbone vit_micro=runs/demo/runs/vit_micro-... \\
        --backbone revvit_micro=runs/demo/runs/revvit_micro-... --iters 1200 --eval-period 200 \\
        --rung default --rung "shape_color_material=" --categories shape_color_material
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import click

from revtransfer.atomic import atomic_write_json, atomic_write_text
from revtransfer.provenance import provenance

ROLES = ("frozen", "floor", "ceiling")


@dataclass
class DetectLadderSpec:
    backbones: dict[str, Path]               # arch -> pretraining run dir
    rungs: dict[str, list[str]]              # name -> detectron2 overrides
    iters: int = 1200
    eval_period: int = 200
    ceiling_iters: int = 400
    train_n: int = 3000
    val_n: int = 500
    size: int = 80
    categories: str = "shape"
    train_seed: int = 21
    val_seed: int = 22
    batch_size: int = 8
    seed: int = 0
    workers: int = 2
    extra: list[str] = field(default_factory=list)  # overrides for every run
    roles: tuple[str, ...] = ROLES           # which of frozen / floor / ceiling to train


def parse_rung(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    if not name.strip() or any(c in name for c in "/ "):
        raise click.BadParameter(f"{text!r}: give NAME=OVERRIDES (NAME without spaces or '/'), e.g. "
                                 "'lr1e-4=optimizer.lr=1e-4'", param_hint="--rung")
    return name.strip(), rest.split()


def parse_roles(text: str) -> tuple[str, ...]:
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise click.BadParameter(f"{text!r}: give one or more of {', '.join(ROLES)}, comma-separated",
                                 param_hint="--roles")
    return tuple(r for r in ROLES if r in roles)


def parse_backbone(text: str) -> tuple[str, Path]:
    arch, sep, run = text.partition("=")
    if not sep or not (Path(run) / "checkpoint_best.pt").is_file():
        raise click.BadParameter(f"{text!r}: give ARCH=RUN_DIR of a finished pretraining run "
                                 "(it must hold checkpoint_best.pt)", param_hint="--backbone")
    return arch.strip(), Path(run)


def backbone_model_kwargs(run_dir: Path) -> dict:
    """The pretraining run's model kwargs and image size, from its checkpoint: what the detector
    must build for the checkpoint to load."""
    from revtransfer.train import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoint_best.pt")
    kwargs = dict(state["config"].get("model_kwargs") or {})
    if "img_size" not in kwargs and state.get("image_size"):
        kwargs["img_size"] = int(state["image_size"][0])
    return kwargs


def override_value(kwargs: dict) -> str:
    """A dict as a detectron2 / hydra override value: ``{a:1,b:2}``."""
    return "{" + ",".join(f"{k}:{v}" for k, v in kwargs.items()) + "}"


def backbone_kwargs(run_dir: Path) -> str:
    return override_value(backbone_model_kwargs(run_dir))


def ensure_sets(spec: DetectLadderSpec, workdir: Path, progress: bool = True) -> dict[str, Path]:
    from clevr_gen import DatasetSpec, generate

    sets = {}
    for split, n, seed in (("train", spec.train_n, spec.train_seed), ("val", spec.val_n, spec.val_seed)):
        path = workdir / "data" / f"coco-{spec.categories}-{spec.size}px-n{n}-seed{seed}"
        generate(DatasetSpec(n=n, p_x=0.5, p_y=0.5, corr=0.0, width=spec.size, height=spec.size, coco=True,
                             coco_categories=spec.categories, seed=seed), path, workers=spec.workers,
                 progress=progress)
        sets[split] = path
    return sets


def run_dir(workdir: Path, rung: str, arch: str, role: str) -> Path:
    return workdir / "runs" / rung / f"{arch}-{role}"


def run_detect_ladder(spec: DetectLadderSpec, workdir: Path, out: Path, progress: bool = True, echo=print) -> Path:
    from detection.train_net import RunArgs
    from detection.train_net import main as detect_main

    sets = ensure_sets(spec, workdir, progress)
    for rung, overrides in spec.rungs.items():
        for arch, pretrained in spec.backbones.items():
            kwargs = backbone_kwargs(pretrained)
            for role in spec.roles:
                out_dir = run_dir(workdir, rung, arch, role)
                if (out_dir / "run.json").exists():
                    echo(f"{rung} {arch} {role}: done before")
                    continue
                iters = spec.ceiling_iters if role == "ceiling" else spec.iters
                period = min(spec.eval_period, iters)
                common = [f"model.backbone.net.model_kwargs={kwargs}", f"train.eval_period={period}",
                          f"train.checkpointer.period={period}", "train.log_period=50",
                          f"dataloader.train.total_batch_size={spec.batch_size}"]
                if role == "ceiling":
                    common.append("model.backbone.net.freeze=False")
                echo(f"{rung} {arch} {role}: {iters} iterations, evaluated every {period}")
                detect_main(RunArgs(
                    config=f"clevr_mask_rcnn_{arch}_frozen",
                    backbone_checkpoint="" if role == "floor" else str(pretrained / "checkpoint_best.pt"),
                    train_json=str(sets["train"] / "coco.json"), train_images=str(sets["train"]),
                    val_json=str(sets["val"] / "coco.json"), val_images=str(sets["val"]), output_dir=str(out_dir),
                    max_iter=iters, seed=spec.seed, image_size=spec.size, resume=(out_dir / "last_checkpoint").exists(),
                    tag=f"ladder:{rung}", overrides=[*common, *spec.extra, *overrides]))
    return write_detect_ladder_report(spec, workdir, out)


def ladder_curves(spec: DetectLadderSpec, workdir: Path):
    import pandas as pd

    frames = []
    for rung in spec.rungs:
        for arch in spec.backbones:
            for role in ROLES:
                d = run_dir(workdir, rung, arch, role)
                if (d / "eval_history.json").exists():
                    h = pd.DataFrame(json.loads((d / "eval_history.json").read_text()))
                    frames.append(h.assign(rung=rung, arch=arch, backbone_role=role, run_dir=str(d)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summarize(curves):
    """Per (rung, arch, role): final AP, its change over the last fifth (convergence), minutes, and
    the frozen run's gap to its floor."""
    import pandas as pd

    rows = []
    for (rung, arch, role), g in curves.groupby(["rung", "arch", "backbone_role"], sort=False):
        g = g.sort_values("iteration")
        last = g.iloc[-1]
        early = g[g["iteration"] <= 0.8 * last["iteration"]]
        rows.append({"rung": rung, "arch": arch, "role": role, "iterations": int(last["iteration"]),
                     "minutes": round(float(last.get("wall_s", float("nan"))) / 60, 1),
                     "box_AP": last["bbox_AP"], "mask_AP": last["segm_AP"],
                     "box_AP_change_last_fifth": (last["bbox_AP"] - early.iloc[-1]["bbox_AP"]) if len(early) else None})
    table = pd.DataFrame(rows)
    floors = {(r.rung, r.arch): (r.box_AP, r.mask_AP) for r in table.itertuples() if r.role == "floor"}
    table["box_AP_over_floor"] = [r.box_AP - floors[(r.rung, r.arch)][0] if (r.rung, r.arch) in floors else None
                                  for r in table.itertuples()]
    table["mask_AP_over_floor"] = [r.mask_AP - floors[(r.rung, r.arch)][1] if (r.rung, r.arch) in floors else None
                                   for r in table.itertuples()]
    return table


def write_detect_ladder_report(spec: DetectLadderSpec, workdir: Path, out: Path) -> Path:
    from revtransfer.report.plots import detection_curves

    curves = ladder_curves(spec, workdir)
    if curves.empty:
        raise ValueError(f"no detection ladder runs under {workdir / 'runs'}: run `revtransfer detect-ladder` first")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ladder_detection_curves.csv", curves.to_csv(index=False, float_format="%.3f"))
    table = summarize(curves)
    atomic_write_text(out / "ladder_detection.csv", table.to_csv(index=False, float_format="%.3f"))
    for rung in spec.rungs:
        mine = curves[curves["rung"] == rung]
        if len(mine):
            detection_curves(mine, out / f"ladder_detection_{rung}.png")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(spec).items() if k != "backbones"}
    settings["backbones"] = {a: str(p) for a, p in spec.backbones.items()}
    md = ["# Detection learnability ladder: held-out AP against iterations and time\n",
          "Frozen pretrained backbone (`frozen`), the same arch frozen at random initialisation (`floor`) "
          "and fine-tuned (`ceiling`), same heads and schedule; held-out evaluation on another clevr_gen "
          f"seed. Settings: `{json.dumps(settings)}`.\n",
          table.to_markdown(index=False, floatfmt=".1f"), ""]
    md += [f"![{rung}](ladder_detection_{rung}.png)\n" for rung in spec.rungs
           if (out / f"ladder_detection_{rung}.png").exists()]
    md += ["Every evaluation: [ladder_detection_curves.csv](ladder_detection_curves.csv).", ""]
    atomic_write_text(out / "ladder_detection.md", "\n".join(md) + "\n")
    atomic_write_json(out / "provenance_detection.json", provenance() | {"detect_ladder": settings})
    return out / "ladder_detection.md"


@click.command("detect-ladder", context_settings={"show_default": True},
               short_help="Held-out detection AP vs iterations: frozen, floor and ceiling (protocol choice).")
@click.option("--backbone", "backbones", multiple=True, required=True, metavar="ARCH=RUN_DIR",
              help="A pretraining run dir per arch (repeatable).")
@click.option("--rung", "rungs", multiple=True, default=("default=",), metavar="NAME=OVERRIDES",
              help="A protocol variant: detectron2 overrides (space-separated) under NAME (repeatable).")
@click.option("--iters", type=int, default=1200, help="Iterations of the frozen and floor runs.")
@click.option("--eval-period", type=int, default=200, help="Held-out evaluation every this many iterations.")
@click.option("--ceiling-iters", type=int, default=400, help="Iterations of the fine-tuned ceiling.")
@click.option("--roles", default=",".join(ROLES),
              help="Which runs to train, comma-separated (a cheap first look at a rung trains `frozen` alone; "
                   "the report shows every run there is).")
@click.option("--train-n", type=int, default=3000)
@click.option("--val-n", type=int, default=500)
@click.option("--size", type=int, default=80, help="Scene side in pixels (train and held-out sets).")
@click.option("--categories", type=click.Choice(["shape", "shape_color_material"]), default="shape",
              help="COCO categories: shapes only (3), or shape x colour x material (what X's pretraining may "
                   "or may not have kept).")
@click.option("--batch-size", type=int, default=8)
@click.option("--out", default="reports/ladder", help="Where the table, plots and notes go.")
@click.option("--workdir", default="runs/detect_ladder", help="Datasets and run dirs (resumable).")
@click.option("--report-only", is_flag=True, help="Rewrite the report from the runs there are; train nothing.")
@click.option("--progress/--no-progress", default=True)
@click.argument("overrides", nargs=-1)
def detect_ladder(backbones, rungs, iters, eval_period, ceiling_iters, roles, train_n, val_n, size, categories,
                  batch_size, out, workdir, report_only, progress, overrides):
    """Held-out box and mask AP against iterations and wall time, per protocol rung and arch: the
    frozen pretrained backbone beside its floor (random init, frozen) and ceiling (fine-tuned).
    OVERRIDES apply to every run."""
    for name, value in (("--iters", iters), ("--eval-period", eval_period), ("--ceiling-iters", ceiling_iters),
                        ("--train-n", train_n), ("--val-n", val_n), ("--batch-size", batch_size)):
        if value < 1:
            raise click.BadParameter(f"{value}: must be >= 1", param_hint=name)
    spec = DetectLadderSpec(dict(parse_backbone(b) for b in backbones), dict(parse_rung(r) for r in rungs),
                            iters=iters, eval_period=eval_period, ceiling_iters=ceiling_iters, train_n=train_n,
                            val_n=val_n, size=size, categories=categories, batch_size=batch_size,
                            extra=list(overrides), roles=parse_roles(roles))
    if report_only:
        index = write_detect_ladder_report(spec, Path(workdir), Path(out))
    else:
        index = run_detect_ladder(spec, Path(workdir), Path(out), progress=progress,
                                  echo=lambda m: click.echo(m, err=True))
    click.echo(f"detect-ladder: {index}")
