"""Assemble the report: every table (Markdown, CSV, LaTeX) and plot, and a README.md index that
embeds them with their provenance."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from revtransfer.atomic import atomic_write_text
from revtransfer.provenance import provenance

from . import plots, tables
from .render import write_table


def _shown_path(p) -> str:
    """Paths as a reader of the report can follow them: relative to the working directory when inside it."""
    p = Path(str(p))
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _read_results(dirs) -> pd.DataFrame:
    frames = []
    for d in map(Path, dirs):
        parquet = d if d.suffix == ".parquet" else d / "results.parquet"
        if parquet.exists():
            frames.append(pd.read_parquet(parquet).assign(results_file=_shown_path(parquet)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _provenance_lines(df: pd.DataFrame, extra: list[str] = ()) -> str:
    lines = list(extra)
    if not df.empty:
        for col, what in (("git_commit", "git commit"), ("device", "device"), ("torch_version", "torch")):
            if col in df:
                vals = sorted({str(v) for v in df[col].dropna()})
                if vals:
                    lines.append(f"{what}: {', '.join(vals)}")
        if "finished_at" in df and df["finished_at"].notna().any():
            lines.append(f"finished: {df['finished_at'].dropna().min()} .. {df['finished_at'].dropna().max()}")
        if "results_file" in df:
            lines.append(f"source: {', '.join(sorted(set(df['results_file'])))}")
    return "".join(f"- {line}\n" for line in lines)


LEARNED_X = 0.90  # pretraining validation accuracy on X below which a backbone has not learned its task


def _claims_section(res, rows, out: Path) -> list[str]:
    """The thesis's claims, each reproduced / refuted / inconclusive (revtransfer.report.claims), for
    the main probe and, where present, the width-matched control. Needs >= 2 seeds. ``rows``: the
    finished probe rows of ``res``."""
    from .claims import claim_verdicts, learned_only

    variants = [("probe_acc", "main probe", res), ("probe_acc_matched", "width-matched control", res)]
    acc = pd.to_numeric(rows.get("pretrain_val_acc", pd.Series(dtype=float)), errors="coerce")
    short = int((acc < LEARNED_X).sum())
    if short:  # the same rules without the cells that fell short of the sanity bar
        variants.append(("probe_acc", f"main probe, cells >= {LEARNED_X:.2f} on X only", learned_only(res, LEARNED_X)))
    parts = []
    for column, label, data in variants:
        if column not in rows or rows[column].isna().all() or rows["seed"].nunique() < 2:
            continue
        verdicts = pd.DataFrame(claim_verdicts(data, column)).assign(probe=label)
        parts.append(verdicts[["claim", "probe", "verdict", "evidence"]])
    if not parts:
        return []
    table = pd.concat(parts, ignore_index=True)
    note = (f" {short} cell(s) stayed below {LEARNED_X:.2f} on X, so the claims are also judged without them (a pair "
            "with such a backbone drops out, and its seed from the pooled claims)." if short else "")
    return ["### The thesis's claims\n",
            "Each claim judged by the rules in `revtransfer/report/claims.py` (paired by seed, 95% t intervals "
            "over seeds): reproduced, refuted or inconclusive." + note + "\n", write_table(table, out, "claims")]


def _header(meta: dict, title: str, intro: str | None) -> list[str]:
    sections = [f"# {title}\n",
                f"Written by `{meta['command']}` at commit `{meta['git_commit']}` on {meta['date']} "
                f"({meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs"
                f"{', ' + meta['machine']['gpu'] if meta['machine'].get('gpu') else ''}). "
                "Every number below is read from the files listed under each table; none is typed by hand.\n"]
    if intro:
        sections.append(intro.strip() + "\n")
    return sections


def _datasets_section(datasets, out: Path) -> list[str]:
    manifests = tables.load_manifests(datasets)
    if not manifests:
        return []
    t = tables.dataset_table(manifests)
    md = write_table(t, out, "datasets", "Generated datasets: target vs measured P(X), P(Y), Corr(X, Y)")
    seeds = ", ".join(f"{n}: seed {m.get('seed')}, commit {m.get('git_commit')}" for n, m in manifests)
    return ["## Datasets\n", "Target vs measured statistics of each generated dataset "
            "([csv](datasets.csv), [tex](datasets.tex)).\n", md, f"- manifests: {seeds}\n"]


def _probe_section(res: pd.DataFrame, out: Path) -> list[str]:
    """Probe accuracy per cell, RevViT − ViT (main and width-matched), the claims, the sanity rows."""
    probe = tables.probe_table(res)
    if probe.empty:
        return []
    shown = probe.assign(**{"probe acc (%)": [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in zip(probe.acc_mean, probe.acc_std)]})
    shown = shown[["corr", "fraction", "arch", "probe acc (%)", "auroc_mean", "n", "feature_dim"]]
    md = write_table(shown, out, "probe_accuracy", "Linear probe accuracy for Y on frozen features (mean ± std over seeds)")
    plots.probe_accuracy(probe, out / "probe_accuracy.png")
    sections = ["## Transfer: linear probes\n",
                "Frozen backbones pretrained on X, linear probe for Y on the transfer set "
                "([csv](probe_accuracy.csv), [tex](probe_accuracy.tex)).\n",
                "![probe accuracy](probe_accuracy.png)\n", md]
    imp = tables.improvement_table(res)
    if not imp.empty:
        md = write_table(imp, out, "improvement", "RevViT minus ViT probe accuracy with 95% CI")
        plots.improvement(imp, out / "improvement.png")
        sections += ["### RevViT − ViT\n", "![improvement](improvement.png)\n", md]
    rows = tables.probe_rows(res)  # finished probe cells, for the sections below
    sections += _matched_section(res, rows, out)
    sections += _claims_section(res, rows, out)
    sections += _sanity_section(rows, out)
    sections.append(_provenance_lines(rows))
    return sections


def _matched_section(res: pd.DataFrame, rows: pd.DataFrame, out: Path) -> list[str]:
    if "probe_acc_matched" not in rows or not rows["probe_acc_matched"].notna().any():
        return []
    matched = tables.improvement_table(res, column="probe_acc_matched")
    if matched.empty:
        return []
    dims = pd.to_numeric(rows["matched_dim"], errors="coerce").dropna() if "matched_dim" in rows else []
    ks = sorted({int(k) for k in dims})
    k = f" (k = {', '.join(map(str, ks))})" if ks else ""
    md = write_table(matched, out, "improvement_matched",
                     "RevViT minus ViT probe accuracy on the top-k PCA components of each backbone's "
                     "features, with 95% CI")
    return ["### Width-matched control (top-k PCA components of each backbone's features)\n",
            (f"Both probes see the same number of dimensions{k}: the top PCA components of each "
             "backbone's frozen features, fitted on the probe's training split, so RevViT's 2C-wide "
             "concat features no longer give its probe twice ViT's width; a gap that remains is the "
             "architecture's, not the width's ([csv](improvement_matched.csv), "
             "[tex](improvement_matched.tex)).\n"), md]


def _sanity_section(rows: pd.DataFrame, out: Path) -> list[str]:
    if "sanity_x_acc" not in rows or not rows["sanity_x_acc"].notna().any():
        return []
    s = rows.groupby(["arch", "corr"]).agg(
        cells=("pretrain_val_acc", "size"), pretrain_val_acc=("pretrain_val_acc", "mean"),
        pretrain_val_acc_min=("pretrain_val_acc", "min"), sanity_x_acc=("sanity_x_acc", "mean")).reset_index()
    worst = rows.loc[pd.to_numeric(rows["pretrain_val_acc"]).idxmin()]
    learned = (f"Every cell's pretraining reached {LEARNED_X:.2f} on X (lowest "
               f"{worst['pretrain_val_acc']:.3f}: {worst['arch']}, corr {worst['corr']:g})."
               if worst["pretrain_val_acc"] >= LEARNED_X else
               f"Not every backbone learned X: {int((pd.to_numeric(rows['pretrain_val_acc']) < LEARNED_X).sum())} "
               f"of {len(rows)} cells stayed below the {LEARNED_X:.2f} a comparison needs, the lowest at "
               f"{worst['pretrain_val_acc']:.3f} ({worst['arch']}, corr {worst['corr']:g}); "
               "read the transfer numbers above with that in mind.")
    return ["### Sanity: pretraining task\n", "Pretrain validation accuracy on X (mean and lowest over "
            "cells) and a probe for X on held-out pretrain images (mean over cells). " + learned + "\n",
            write_table(s, out, "sanity_x")]


def _detection_section(res: pd.DataFrame, out: Path) -> list[str]:
    det = tables.detection_table(res)
    if det.empty:
        return []
    if "dataset" in det:
        det = det.assign(dataset=det["dataset"].map(_shown_path))
    md = write_table(det, out, "detection", "Frozen-backbone ViTDet: box and mask AP")
    return ["## Detection: frozen-backbone ViTDet\n", "([csv](detection.csv), [tex](detection.tex))\n", md,
            _provenance_lines(res[res.get("box_AP").notna()] if "box_AP" in res else res)]


def _bench_sections(bench, out: Path) -> list[str]:
    bench_df, recon_df, bench_meta = tables.load_bench(bench) if bench else (pd.DataFrame(), pd.DataFrame(), [])
    sections = []
    if not bench_df.empty:
        bt = tables.bench_table(bench_df)
        md = write_table(bt, out, "bench", "Training throughput and activation memory per backward mode")
        plots.bench_curves(bench_df, out / "bench_throughput.png", "throughput")
        plots.bench_curves(bench_df, out / "bench_memory.png", "memory")
        summary = tables.bench_summary(bench_df)
        sections += ["## Reversible backprop: throughput and memory\n",
                     "![throughput](bench_throughput.png)\n", "![memory](bench_memory.png)\n"]
        if not summary.empty:
            sections += ["Ratios (PaReprop over Reprop at equal batch size; best over the non-reversible "
                         "reference's best; reference activation memory per sample over each mode's):\n",
                         write_table(summary, out, "bench_summary")]
        sections.append(md)
    if not recon_df.empty:
        cols = [c for c in ("model", "depth", "dtype", "max_rel_error", "device_name") if c in recon_df]
        md = write_table(recon_df[cols], out, "reconstruction",
                         "Input-reconstruction error of a reversible stack vs depth (random init)")
        sections += ["## Reconstruction error vs depth\n", "max |x - inverse(forward(x))| / max |x| over the "
                     "stack's inputs: what reprop/pareprop recompute from (`revtransfer bench-reconstruction`).\n", md]
    if bench_meta:
        sections += ["### Benchmark commands\n", "".join(f"- `{m.get('command')}` ({m.get('date')}, commit {m.get('git_commit')}, "
                                               f"{m.get('machine', {}).get('gpu') or 'CPU'}, torch "
                                               f"{m.get('versions', {}).get('torch')})\n" for m in bench_meta)]
    return sections


def build_report(out: str | Path, results=(), bench=(), datasets=(), title: str = "revtransfer report",
                 command: list[str] | None = None, intro: str | None = None) -> Path:
    """The report's README.md (and its tables and plots) in ``out``, section by section: datasets,
    probes (with claims and sanity), detection, benchmarks. ``intro``: a paragraph under the title
    (what the report's numbers can and cannot tell)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = provenance(command)
    sections = _header(meta, title, intro)
    res = _read_results(results)
    body = (_datasets_section(datasets, out) + _probe_section(res, out) + _detection_section(res, out)
            + _bench_sections(bench, out))
    sections += body or ["No inputs found: pass --results, --bench and/or --datasets.\n"]
    atomic_write_text(out / "README.md", "\n".join(sections))
    atomic_write_text(out / "provenance.json", json.dumps(meta, indent=2) + "\n")
    return out / "README.md"
