"""The learnability ladder: how fast each backbone learns X (pretraining validation accuracy on
has_x) against samples seen and wall time, for a few image sizes and model widths / depths.

A study's protocol (image size, model, data, epochs) must make both archs learn X before their
features mean anything; on a CPU what is affordable is the question. Each rung is
``SIZE:WIDTH:DEPTH`` (image side, embedding dim, blocks; patch 4, one head per 32 channels),
trained on one clevr_gen pretrain set per size with the same recipe for both archs. The runs are
ordinary pretraining run dirs (resumable: re-running continues or skips them); the table and plots
are read from their ``metrics.jsonl``.

    revtransfer ladder --out reports/ladder --workdir runs/ladder --rung 32:64:4 --rung 48:128:4
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revtransfer.atomic import atomic_write_json, atomic_write_text
from revtransfer.provenance import provenance

TARGET = 0.90  # the accuracy on X a study cell must reach (issue 11; thesis ch. 4 reports > 0.95 on GPU)


@dataclass(frozen=True)
class Rung:
    size: int
    width: int
    depth: int

    @classmethod
    def parse(cls, text: str) -> "Rung":
        try:
            size, width, depth = (int(v) for v in text.split(":"))
        except ValueError:
            raise ValueError(f"rung {text!r}: give SIZE:WIDTH:DEPTH, e.g. 48:128:4") from None
        if size % 4 or size < 8 or width % 32 or width < 32 or depth < 1:
            raise ValueError(f"rung {text!r}: size a multiple of 4 (>= 8), width a multiple of 32, depth >= 1")
        return cls(size, width, depth)

    @property
    def name(self) -> str:
        return f"{self.size}px_w{self.width}_d{self.depth}"

    def model_kwargs(self) -> dict:
        return {"img_size": self.size, "patch_size": 4, "embed_dim": self.width, "depth": self.depth,
                "num_heads": self.width // 32}


@dataclass
class LadderSpec:
    rungs: list[Rung]
    archs: tuple[str, ...] = ("vit_micro", "revvit_micro")
    preset: str = "pretrain-corr0.30"
    n: int = 12_000
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    precision: str = "bf16"
    seed: int = 0
    workers: int = 2
    objects: tuple[int, int] | None = None  # (min, max) objects per scene; None: clevr_gen's 3..10

    def data_name(self, size: int) -> str:
        objects = f"-obj{self.objects[0]}-{self.objects[1]}" if self.objects else ""
        return f"{self.preset}{objects}-{size}px-n{self.n}"


def parse_objects(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"objects {text!r}: give MIN:MAX, e.g. 2:4") from None
    return lo, hi


def run_ladder(spec: LadderSpec, workdir: Path, out: Path, progress: bool = True, echo=print) -> Path:
    """Train every rung x arch (skipping finished runs, resuming interrupted ones), then write
    ``ladder.csv``, ``ladder.md``, ``ladder.png`` and ``provenance.json`` into ``out``."""
    from clevr_gen import DatasetSpec, generate
    from clevr_gen.presets import preset
    from revtransfer.train import LAST, PretrainConfig, pretrain, read_summary

    for rung in spec.rungs:
        data = workdir / "data" / spec.data_name(rung.size)
        fields = preset(spec.preset) | {"n": spec.n, "width": rung.size, "height": rung.size}
        if spec.objects:
            fields |= {"min_objects": spec.objects[0], "max_objects": spec.objects[1]}
        generate(DatasetSpec(**fields), data, workers=spec.workers, progress=progress)
        for arch in spec.archs:
            run = workdir / "runs" / rung.name / arch
            if read_summary(run) is not None:
                echo(f"ladder {rung.name} {arch}: done before")
                continue
            cfg = PretrainConfig(dataset=str(data), out=str(run), arch=arch, model_kwargs=rung.model_kwargs(),
                                 epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
                                 precision=spec.precision, device="cpu", val_frac=0.1)
            echo(f"ladder {rung.name} {arch}: training")
            result = pretrain(cfg, resume=(run / LAST).exists(), progress=progress)
            echo(f"ladder {rung.name} {arch}: val acc on X {result.val_acc:.3f}")
    return write_ladder_report(spec, workdir, out)


def ladder_rows(spec: LadderSpec, workdir: Path) -> list[dict]:
    """One row per (rung, arch, epoch) from the runs' metrics."""
    rows = []
    for rung in spec.rungs:
        for arch in spec.archs:
            path = workdir / "runs" / rung.name / arch / "metrics.jsonl"
            if not path.exists():
                continue
            seen = wall = 0.0
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                seen += rec["train_samples"]
                wall += rec["epoch_time_s"]
                rows.append({"rung": rung.name, "size": rung.size, "width": rung.width, "depth": rung.depth,
                             "arch": arch, "epoch": rec["epoch"], "samples_seen": int(round(seen)),
                             "wall_min": wall / 60, "samples_per_s": rec["samples_per_s"],
                             "train_acc": rec.get("train_acc"), "val_acc": rec["val_acc"]})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per rung x arch: final accuracy, and when (epoch, samples, minutes) it first reached TARGET."""
    out = []
    keys = sorted({(r["size"], r["width"], r["depth"], r["rung"], r["arch"]) for r in rows})
    for *_, rung, arch in keys:
        mine = [r for r in rows if r["rung"] == rung and r["arch"] == arch]
        hit = next((r for r in mine if r["val_acc"] >= TARGET), None)
        out.append({"rung": rung, "arch": arch, "epochs": mine[-1]["epoch"], "final_val_acc": mine[-1]["val_acc"],
                    "best_val_acc": max(r["val_acc"] for r in mine),
                    f"epoch_to_{TARGET}": hit["epoch"] if hit else None,
                    f"samples_to_{TARGET}": hit["samples_seen"] if hit else None,
                    f"minutes_to_{TARGET}": round(hit["wall_min"], 2) if hit else None,
                    "samples_per_s": float(np.median([r["samples_per_s"] for r in mine])),
                    "minutes_total": round(mine[-1]["wall_min"], 2)})
    return out


def write_ladder_report(spec: LadderSpec, workdir: Path, out: Path) -> Path:
    import pandas as pd

    rows = ladder_rows(spec, workdir)
    if not rows:
        raise ValueError(f"no ladder runs under {workdir / 'runs'}: run `revtransfer ladder` first")
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    atomic_write_text(out / "ladder_epochs.csv", table.to_csv(index=False, float_format="%.4f"))
    summary = pd.DataFrame(summarize(rows))
    atomic_write_text(out / "ladder.csv", summary.to_csv(index=False, float_format="%.4f"))
    _plot(table, out / "ladder.png")
    settings = {k: v for k, v in vars(spec).items() if k != "rungs"} | {"rungs": [r.name for r in spec.rungs]}
    md = ["# Learnability ladder: validation accuracy on X vs samples seen and wall time\n",
          f"Recipe for every rung and arch: {json.dumps(settings)}; patch 4, one head per 32 channels, "
          f"2 CPU threads. Target: {TARGET} on X.\n", summary.to_markdown(index=False, floatfmt=".3f"), "",
          "![ladder](ladder.png)", "", "Per epoch: [ladder_epochs.csv](ladder_epochs.csv).", ""]
    atomic_write_text(out / "ladder.md", "\n".join(md) + "\n")
    atomic_write_json(out / "provenance.json", provenance() | {"ladder": settings})
    return out / "ladder.md"


def _plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from revtransfer.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (rung, arch), g in table.groupby(["rung", "arch"]):
        style = "-" if arch.startswith("rev") else "--"
        for ax, x in zip(axes, ("samples_seen", "wall_min")):
            ax.plot(g[x], g["val_acc"], style, marker="o", ms=3, label=f"{rung} {arch}")
    for ax, label in zip(axes, ("samples seen", "wall time (min, 2 CPU cores)")):
        ax.axhline(TARGET, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy on X")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# --- the command ----------------------------------------------------------------------------------
import click  # noqa: E402


@click.command(context_settings={"show_default": True},
               short_help="Pretraining accuracy on X vs samples and time per model size (protocol choice).")
@click.option("--out", default="reports/ladder", help="Where the table and plots go.")
@click.option("--workdir", default="runs/ladder", help="Datasets and run dirs (resumable).")
@click.option("--rung", "rungs", multiple=True, default=("32:64:4", "32:128:4", "48:128:4"),
              help="SIZE:WIDTH:DEPTH (repeatable).")
@click.option("--arch", "archs", multiple=True, default=("vit_micro", "revvit_micro"))
@click.option("--preset", default="pretrain-corr0.30", help="clevr_gen preset of the pretrain data.")
@click.option("--n", type=int, default=12_000, help="Images per pretrain set (one per image size).")
@click.option("--objects", default=None, help="MIN:MAX objects per scene (default: clevr_gen's 3:10).")
@click.option("--epochs", type=int, default=8)
@click.option("--batch-size", type=int, default=128)
@click.option("--lr", type=float, default=1e-3)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="bf16")
@click.option("--report-only", is_flag=True, help="Rewrite the report from the runs there are; train nothing.")
@click.option("--progress/--no-progress", default=True)
def ladder(out, workdir, rungs, archs, preset, n, objects, epochs, batch_size, lr, precision, report_only, progress):
    """Pretraining accuracy on X vs samples seen and wall time, per image size and model size,
    for both archs: the evidence a CPU protocol is chosen from.

    \b
    revtransfer ladder --rung 32:64:4 --rung 48:128:4 --epochs 8 --out reports/ladder
    """
    spec = LadderSpec([Rung.parse(r) for r in rungs], tuple(archs), preset, n, epochs, batch_size, lr, precision,
                      objects=parse_objects(objects))
    if report_only:
        index = write_ladder_report(spec, Path(workdir), Path(out))
    else:
        index = run_ladder(spec, Path(workdir), Path(out), progress=progress, echo=lambda m: click.echo(m, err=True))
    click.echo(f"ladder: {index}")
