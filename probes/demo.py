"""`revtransfer demo` (what `make demo` runs): the whole study in miniature on a CPU.

Generate the demo datasets (two correlations + transfer), pretrain vit_micro and revvit_micro
(pareprop) and probe them (the `demo` sweep preset), train and evaluate a tiny frozen ViTDet on
clevr_gen's COCO output, benchmark the backward modes briefly, and write the report. Every step
uses the code paths of a full run at a smaller size, and every step resumes: re-running skips
what is already done.
"""
from __future__ import annotations

import time
from pathlib import Path

import click

# The bench step: the demo sweep's model at the demo's image size.
BENCH_KWARGS = {"img_size": 48, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}
BENCH_BATCH_SIZES = [16, 32, 64]
BENCH_STEPS, BENCH_WARMUP = 10, 3
# The detection step: train on one clevr_gen COCO set, evaluate on another (another seed); each
# arch's pretrained backbone frozen, and beside it the same arch frozen at random initialisation
# (the floor: what the heads learn alone). Sized from the detection pilot (issue 25) to fit the
# demo's 15 minutes: 300 iterations at batch 8 with twice the config's lr took the demo's frozen
# pretrained ViT to 25 box AP on held-out scenes (400 at the config's lr: 27).
DETECT_TRAIN = {"n": 3000, "seed": 21}
DETECT_VAL = {"n": 300, "seed": 22}
DETECT_ITERS = 300
DETECT_OVERRIDES = ("train.eval_period=0", "train.checkpointer.period=1000000", "train.log_period=50",
                    "dataloader.train.total_batch_size=8", "optimizer.lr=4e-4")


DEMO_INTRO = """**What these numbers can and cannot tell.** The demo runs every step of the study (datasets,
pretraining, probes, detection, benchmark, report) at a size a 2-core CPU finishes in minutes:
48x48 scenes of 2-4 objects (the paper's are 80x80 with 3-10), 2-block width-64 models, one data
fraction and one seed per cell. Its backbones do learn their pretraining task (the sanity table:
every cell's validation accuracy on X), so the probes compare features of backbones that learned.
But each RevViT − ViT difference is one seed with a bootstrap interval over test images, not over
training runs: it cannot say whether RevViT transfers better. The CPU study (`revtransfer sweep
cpu`, reports/study_cpu) and the `paper` preset on GPUs are built to answer that. The detection
step trains a frozen ViTDet 300 iterations on 3,000 scenes and evaluates it on 300 others (another
seed); beside each pretrained backbone stands the same arch frozen at random initialisation (the
floor: what the heads learn alone). One seed each: the AP shows that the detectors learn, and how
far pretraining moves a frozen backbone from the floor; it cannot rank the two archs (that is the
detection study). The benchmark runs on a CPU, where PaReprop's second stream does not exist: PaReprop
and Reprop do the same work there."""


def _step(title: str):
    click.secho(f"\n==> {title}", fg="cyan", bold=True, err=True)
    return time.perf_counter()


def run_demo(workdir: Path, reports: Path, progress: bool = True, detection: bool = True) -> Path:
    from .sweep import SweepSpec, run_sweep

    workdir.mkdir(parents=True, exist_ok=True)
    timings = {}
    spec = SweepSpec.load("demo", workdir)

    t = _step("1/4 datasets, pretraining and linear probes (revtransfer sweep demo)")
    sweep = run_sweep(spec, progress=progress)
    click.echo(f"sweep: {sweep.summary()}", err=True)
    timings["sweep"] = time.perf_counter() - t

    if detection:
        t = _step("2/4 frozen-backbone ViTDet on clevr_gen's COCO output (revtransfer detect train --demo)")
        _detection(spec, progress)
        timings["detection"] = time.perf_counter() - t

    t = _step("3/4 backprop / reprop / pareprop throughput and memory (revtransfer bench)")
    bench_json = spec.out / "bench.json"
    if not bench_json.exists():
        _bench(bench_json)
    timings["bench"] = time.perf_counter() - t

    t = _step("4/4 report (revtransfer report)")
    from revtransfer.report.build import build_report

    index = build_report(reports, results=[spec.out], bench=[bench_json], datasets=[spec.transfer.path.parent],
                         title="revtransfer demo report", intro=DEMO_INTRO,
                         command=["revtransfer", "demo", "--workdir", str(workdir), "--out", str(reports)])
    timings["report"] = time.perf_counter() - t
    _record_timing(reports, timings, detection)
    _summary(spec, index, timings, sweep)
    return index


def _record_timing(reports: Path, timings: dict, detection: bool) -> None:
    """The demo's wall time per step beside its report (``demo_timing.json``): the 15-minute budget
    is a property of a machine, so the machine goes with it."""
    from revtransfer.atomic import atomic_write_json
    from revtransfer.provenance import machine, utc_now

    atomic_write_json(reports / "demo_timing.json", {
        "seconds": {k: round(v, 1) for k, v in timings.items()}, "total_s": round(sum(timings.values()), 1),
        "detection": detection, "machine": machine(), "finished_at": utc_now()})


def _detection(spec, progress: bool) -> None:
    """Each arch's demo backbone (pretrained at corr 0.8 on the full pretrain set) frozen under a
    small ViTDet trained on one clevr_gen COCO set and evaluated on another, and the same arch
    frozen at random initialisation (the floor); one results row each."""
    from clevr_gen import DatasetSpec, generate
    from detection.train_net import RunArgs
    from detection.train_net import main as detect_main
    from revtransfer.results import ResultsTable

    root = spec.transfer.path.parent
    sets = {}
    for split, opts in (("train", DETECT_TRAIN), ("val", DETECT_VAL)):
        sets[split] = root / f"detect-{split}-seed{opts['seed']}"
        generate(DatasetSpec(n=opts["n"], p_x=0.5, p_y=0.5, corr=0.0, width=80, height=80, coco=True,
                             seed=opts["seed"]), sets[split], workers=spec.gen_workers, progress=progress)
    kwargs = "{" + ",".join(f"{k}:{v}" for k, v in spec.model_kwargs.items()) + ",img_size:48}"
    for arch in spec.archs:
        cell = next(c for c in spec.cells()
                    if c.arch == arch and c.corr == max(spec.corrs) and c.fraction == 1.0 and c.seed == spec.seeds[0])
        for role, checkpoint in (("frozen", str(spec.run_dir(cell) / "checkpoint_best.pt")), ("floor", "")):
            out = spec.out / "detect" / f"{arch}-{role}"
            done = ResultsTable(spec.out).read()
            if "run_dir" in done and (done["run_dir"] == str(out)).any():
                click.echo(f"detection {arch} {role}: done before ({out})", err=True)
                continue
            metrics = detect_main(RunArgs(
                config=f"clevr_mask_rcnn_{arch}_frozen", backbone_checkpoint=checkpoint,
                train_json=str(sets["train"] / "coco.json"), train_images=str(sets["train"]),
                val_json=str(sets["val"] / "coco.json"), val_images=str(sets["val"]), output_dir=str(out),
                max_iter=DETECT_ITERS, results_dir=str(spec.out), seed=0, tag="demo",
                overrides=[*DETECT_OVERRIDES, f"model.backbone.net.model_kwargs={kwargs}"]))
            box, mask = metrics.get("bbox", {}).get("AP"), metrics.get("segm", {}).get("AP")
            click.echo(f"detection {arch} {role}: held-out box AP {box:.1f}, mask AP {mask:.1f}", err=True)


def _bench(out: Path) -> None:
    import torch

    from revtransfer.atomic import atomic_write_json
    from revtransfer.bench.throughput import format_table, run_benchmark
    from revtransfer.provenance import provenance

    records, _ = run_benchmark("revvit_micro", ["backprop", "reprop", "pareprop"], BENCH_BATCH_SIZES, steps=BENCH_STEPS,
                               warmup=BENCH_WARMUP, device="cpu", model_kwargs=BENCH_KWARGS)
    click.echo(format_table(records), err=True)
    cmd = ["revtransfer", "bench", "--model", "revvit_micro", "--batch-sizes", ",".join(map(str, BENCH_BATCH_SIZES)),
           "--steps", str(BENCH_STEPS), "--warmup", str(BENCH_WARMUP), "--device", "cpu"]
    cmd += [arg for k, v in BENCH_KWARGS.items() for arg in ("--model-kw", f"{k}={v}")]
    meta = dict(provenance(cmd), torch_threads=torch.get_num_threads(), steps=BENCH_STEPS, warmup=BENCH_WARMUP)
    atomic_write_json(out, {"meta": meta, "records": [dict(r.to_dict(), torch=torch.__version__,
                                                           git_commit=meta["git_commit"]) for r in records]})


def _summary(spec, index: Path, timings: dict, sweep) -> None:
    from revtransfer.report.build import LEARNED_X
    from revtransfer.report.tables import improvement_table, probe_table
    from revtransfer.results import ResultsTable

    res = ResultsTable(spec.out).read()
    click.secho("\n==> done", fg="green", bold=True, err=True)
    probe = probe_table(res[res["sweep"] == spec.name]) if len(res) else None
    if probe is not None and len(probe):
        click.echo("probe accuracy for Y (frozen features), by pretrain Corr(X,Y) and fraction:", err=True)
        for r in probe.itertuples():
            click.echo(f"  corr {r.corr:>5g}  fraction {r.fraction:.2f}  {r.arch:<13} {100 * r.acc_mean:5.1f}%", err=True)
        imp = improvement_table(res[res["sweep"] == spec.name])
        if len(imp):
            click.echo(f"  mean RevViT - ViT: {100 * imp['improvement'].mean():+.1f} points (one seed per cell: "
                       "not the study's answer; that is `revtransfer sweep cpu`)", err=True)
        mine = res[(res["sweep"] == spec.name) & (res["status"] == "ok")]
        if len(mine) and "pretrain_val_acc" in mine:
            worst = mine.loc[mine["pretrain_val_acc"].idxmin()]
            learned = worst["pretrain_val_acc"] >= LEARNED_X
            click.secho(f"  pretraining on X: every cell >= {worst['pretrain_val_acc']:.3f} validation accuracy "
                        f"(lowest: {worst['arch']} corr {worst['corr']:g}); "
                        + ("all learned X" if learned else f"below {LEARNED_X}: the probes compare backbones "
                           "that did not learn X"), fg=None if learned else "yellow", err=True)
    if sweep.failed:
        click.secho(f"{len(sweep.failed)} cell(s) failed: see {spec.out}/results.csv", fg="red", err=True)
    click.echo("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()), err=True)
    click.echo(f"\nreport: {index}")


@click.command(short_help="The whole study in miniature on a CPU (what `make demo` runs).")
@click.option("--workdir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where data/demo and runs/demo go.")
@click.option("--out", default="reports/demo", show_default=True, type=click.Path(file_okay=False),
              help="Report directory.")
@click.option("--detection/--no-detection", default=True, show_default=True, help="Include the ViTDet step.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def demo(workdir, out, detection, progress):
    """The study in miniature on a CPU: datasets, pretraining, probes, ViTDet, bench, report."""
    run_demo(Path(workdir), Path(out), progress=progress, detection=detection)
