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
    """The thesis's claims in the roles the study declared (``declaration.json`` next to the results
    table; the defaults when there is none), each judged by ``revtransfer.report.claims`` on
    ``revtransfer.report.stats`` (model over all pairs, sign-flip test, bootstrap over seeds and test
    images, Holm over the secondary claims) with its power and the seeds a decisive answer needs;
    the declaration's history; the group-sequential looks (``sequential.json``) where there are any;
    the RevViT - ViT gap against k for a multi-k width control. Needs >= 2 seeds. ``rows``: the
    finished probe rows of ``res``."""
    from .claims import declaration_lines, declaration_of, judge_declared, power_rows, verdict_table

    if rows.empty or "seed" not in rows or rows["seed"].nunique() < 2:
        return []
    record, record_dir, others = _find_declaration(res)
    decl = declaration_of(record)
    table = judge_declared(res, decl)
    if table.empty or (table["verdict"] == "not testable").all():
        return []
    acc = pd.to_numeric(rows.get("pretrain_val_acc", pd.Series(dtype=float)), errors="coerce")
    bar = decl.min_x_acc
    short = int((acc < bar).sum()) if bar is not None else 0
    if short:  # the declared claims again without the cells that fell short of the sanity bar
        robust = judge_declared(res, decl, min_x_acc=bar, only_declared=True)
        robust = robust.assign(role="robustness: " + robust["role"],
                               probe=robust["probe"] + f", cells >= {bar:.2f} on X only")
        table = pd.concat([table, robust], ignore_index=True)
    atomic_write_text(out / "claims_full.csv", table.drop(columns=["kind"], errors="ignore").to_csv(index=False))
    primary = table[table["role"] == "primary"].iloc[0]
    sections = ["### The thesis's claims\n",
                f"Primary claim, declared in advance: **{primary['claim_id']}: {primary['claim']}** on the "
                f"{primary['probe']}: **{primary['verdict']}**. Secondary: "
                f"{', '.join(decl.secondary) or 'none'} (Holm over these); exploratory: "
                f"{', '.join(decl.exploratory) or 'none'} and every claim not declared (unadjusted, never "
                "confirmatory).\n",
                "Rules (`revtransfer/report/claims.py`, `revtransfer/report/stats.py`): gains in accuracy points "
                "(RevViT − ViT), each claim a contrast with equal weight per (corr, fraction) cell in a model over "
                "all pairs (cell × arch means, a residual variance per correlation, Satterthwaite df): its 95% "
                "interval; a bootstrap over seeds and test images (95%); for (a) the exact sign-flip permutation "
                f"test over the pairs; one-sided alpha {decl.alpha:g}, smallest effect of interest "
                f"{decl.sesoi:g} points. The primary (a) is reproduced only when the model, the sign-flip test "
                "and the bootstrap agree, refuted when all three exclude the sesoi; the secondary claims go "
                "through Holm's step-down, for \"reproduced\" and for \"refuted\" alike. d: Cohen's d "
                "(the estimate over the pooled within-cell SD)."
                + (f" {short} cell(s) stayed below {bar:.2f} on X, so the declared claims are judged again "
                   "without them (robustness rows; a pair with such a backbone drops out)." if short else "")
                + " All figures: [claims_full.csv](claims_full.csv).\n",
                write_table(verdict_table(table), out, "claims")]
    decl_text = declaration_lines(record, res)
    if record_dir is not None:
        decl_text.append(f"Record: `{_shown_path(record_dir / 'declaration.json')}`.")
    if others:
        decl_text.append(f"Other declarations among the results (not used here): {', '.join(others)}.")
    sections += ["#### Declaration\n", " ".join(decl_text) + "\n"]
    power = power_rows(table[~table["role"].str.startswith("robustness")], decl.effects)
    if not power.empty:
        sections += ["#### Power and seeds needed\n",
                     f"Per claim at the present seeds: the smallest true gain detected with {decl.power:.0%} power "
                     "(two-sided 2 × alpha; a secondary claim at that over the family size, Holm's first step), "
                     "the power at " + ", ".join(f"{e:g}" for e in decl.effects) + " point(s), and the seeds per "
                     "cell and arch a fixed-sample study would need for them (variance: seeds plus the test set's "
                     "binomial error). `revtransfer sweep FILE --plan` prints the same before compute is spent.\n",
                     write_table(power, out, "claims_power")]
    sections += _sequential_section(record_dir, out)
    sections += _gap_vs_k_section(res, rows, decl, out)
    return sections


def _find_declaration(res) -> tuple[dict | None, Path | None, list[str]]:
    """The first declaration.json next to a results table of ``res`` (and the other ones' digests)."""
    from .claims import read_declaration

    found = []
    files = sorted(set(res["results_file"].dropna())) if "results_file" in res else []
    for f in files:
        d = Path(f).parent
        rec = read_declaration(d)
        if rec:
            found.append((rec, d))
    if not found:
        return None, None, []
    rec, d = found[0]
    return rec, d, [f"{r.get('sweep')} `{r.get('digest')}`" for r, _ in found[1:]]


def _sequential_section(record_dir: Path | None, out: Path) -> list[str]:
    from .claims import read_sequential, sequential_table

    state = read_sequential(record_dir) if record_dir is not None else None
    if not state or not state.get("looks"):
        return []
    t = sequential_table(state)
    return ["#### Seeds until decided: the group-sequential looks\n",
            f"Primary claim {state.get('primary')}, {state.get('spending')} alpha spending, one-sided alpha "
            f"{state.get('alpha')}, at most {state.get('max_seeds')} seeds per cell and arch "
            f"({state.get('allocation')} allocation); information fraction = the primary contrast's variance at the "
            f"design's end over its variance at the look. Status: **{state.get('status')}**: "
            f"{state.get('message', '')} ([sequential.csv](sequential.csv)).\n", write_table(t, out, "sequential")]


def _gap_vs_k_section(res, rows, decl, out: Path) -> list[str]:
    """The RevViT - ViT gap (the declared primary claim's kind) on the top-k PCA components against k,
    one point per width-matched column (probe_acc_k<k>, probe_acc_matched at matched_dim), with the
    full-width probe as a reference line."""
    from .claims import fit_column

    cols = {}
    for c in res.columns:
        if c.startswith("probe_acc_k") and c[11:].isdigit() and pd.to_numeric(res[c], errors="coerce").notna().any():
            cols[int(c[11:])] = c
    if "probe_acc_matched" in res and "matched_dim" in rows and pd.to_numeric(rows["matched_dim"],
                                                                             errors="coerce").notna().any():
        k = int(pd.to_numeric(rows["matched_dim"], errors="coerce").max())
        cols.setdefault(k, "probe_acc_matched")
    if not cols:
        return []
    pts = []
    for k, c in sorted(cols.items()) + [(None, "probe_acc")]:
        fit = fit_column(res, c, decl.alpha, decl.sesoi, n_boot=200)
        if fit is None:
            continue
        m = fit.model.main
        pts.append({"k": "full width" if k is None else k, "column": c, "gain (points)": m.estimate,
                    "ci_low": m.ci_low, "ci_high": m.ci_high, "se": m.se, "d": m.d})
    if len(pts) < 2:
        return []
    t = pd.DataFrame(pts)
    md = write_table(t, out, "gap_vs_k", "RevViT minus ViT probe gain (mean over cells, points) against the number "
                                         "of PCA components k, with the model's 95% interval")
    sections = ["#### The gap against the width k\n",
                "The mean RevViT − ViT gain (claim (a)'s contrast) on each backbone's top-k PCA components, for "
                "every k the width control probed, and on the full features (RevViT 2C, ViT C wide): where it "
                "stays as k grows, the gain is not the width's ([csv](gap_vs_k.csv)).\n"]
    ks = t[t["k"] != "full width"]
    if len(ks) >= 2:
        _plot_gap_vs_k(ks, t[t["k"] == "full width"], out / "gap_vs_k.png")
        sections.append("![gap against k](gap_vs_k.png)\n")
    return sections + [md]


def _plot_gap_vs_k(ks: pd.DataFrame, full: pd.DataFrame, path: Path) -> None:
    from .plots import _save, plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    k = ks["k"].astype(float)
    ax.errorbar(k, ks["gain (points)"], yerr=[ks["gain (points)"] - ks["ci_low"], ks["ci_high"] - ks["gain (points)"]],
                marker="o", capsize=3, label="top-k PCA components")
    if len(full):
        g = float(full["gain (points)"].iloc[0])
        ax.axhline(g, ls="--", color="gray", label=f"full features ({g:+.1f})")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (PCA components per backbone)")
    ax.set_ylabel("RevViT − ViT probe accuracy (points)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


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
    """Frozen-backbone detection: AP per arch beside its floor (random-init frozen) and ceiling
    (fine-tuned), the verdict on claim (c) per part of the study (main, width control), AP against
    iterations, and every run."""
    det = tables.detection_table(res)
    if det.empty:
        return []
    for col in ("dataset", "val_dataset"):
        if col in det:
            det = det.assign(**{col: det[col].map(_shown_path)})
    sections = ["## Detection: frozen-backbone ViTDet\n"]
    summary = tables.detection_summary(res)
    if not summary.empty:
        sections += ["Held-out box and mask AP (mean and SD over runs) of each arch's frozen pretrained backbone "
                     "(`frozen`), beside the same arch frozen at random initialisation (`floor`: what the heads "
                     "learn alone) and fine-tuned (`ceiling`); `tag` names a part of a study (e.g. the width "
                     "control); `last_fifth_max`: the largest change of held-out box AP over the last fifth of "
                     "training among the runs, in absolute value (a run converged when it is < 1) "
                     "([csv](detection_summary.csv)).\n", write_table(summary, out, "detection_summary")]
    from .detection_claim import reference_gaps

    gaps = reference_gaps(res[res["box_AP"].notna()] if "box_AP" in res else pd.DataFrame())
    sections += _detection_claim(res, out, gaps)
    sections += _reference_gaps(gaps, out)
    curves = tables.detection_curves(res)
    if not curves.empty:
        plots.detection_curves(curves, out / "detection_ap.png")
        sections.append("![held-out AP against iterations](detection_ap.png)\n")
    md = write_table(det, out, "detection", "Frozen-backbone ViTDet: box and mask AP")
    sections += ["### Every detection run\n", "([csv](detection.csv), [tex](detection.tex))\n", md,
                 _provenance_lines(res[res.get("box_AP").notna()] if "box_AP" in res else res)]
    return sections


def _detection_claim(res: pd.DataFrame, out: Path, gaps: pd.DataFrame) -> list[str]:
    """Claim (c) by the rules of ``revtransfer.report.detection_claim``, for each tag that has frozen
    pretrained runs of both archs (none with fewer than 2 runs per arch), beside each arch's frozen −
    floor gap from ``gaps`` (``reference_gaps``)."""
    from .detection_claim import PAIRS, judge_detection

    rows = res[res["box_AP"].notna()] if "box_AP" in res else pd.DataFrame()
    if rows.empty or "backbone_role" not in rows:
        return []
    tags = sorted(set(rows.loc[rows["backbone_role"] == "frozen", "tag"].fillna(""))) if "tag" in rows else [""]
    archs = set(rows["arch"])
    verdicts = [dict(judge_detection(rows, rev, base, tag=t or None), pair=f"{rev} vs {base}")
                for rev, base in PAIRS.items() if rev in archs and base in archs for t in tags]
    verdicts = [v for v in verdicts if min(v["n_reversible"], v["n_baseline"]) >= 2]
    if not verdicts:
        return []
    def rows_of(v):  # a control judged against the baseline's main runs says so
        shown = v["tag"] or "main"
        return shown if v.get("baseline_rows", shown) == shown else f"{shown} (baseline: {v['baseline_rows']})"

    floor = {} if gaps.empty else gaps[gaps["comparison"] == "frozen − floor"].set_index("arch")["box_AP"].to_dict()

    def against_floor(v):  # a verdict is read beside what each arch's pretraining gave over random features
        return ", ".join(f"{a} {floor[a]:+.1f}" for a in (v["reversible"], v["baseline"]) if a in floor) \
            or "no floor runs"

    table = pd.DataFrame([{"claim": v["claim"], "pair": v["pair"], "rows": rows_of(v),
                           "runs per arch": f"{v['n_reversible']}/{v['n_baseline']}", "verdict": v["verdict"],
                           "converged": v.get("converged"), "frozen − floor, box AP (main)": against_floor(v),
                           "evidence": v["evidence"]} for v in verdicts])
    return ["### Claim (c): frozen RevViT >= ViT in box and mask AP\n",
            "Judged by the rules in `revtransfer/report/detection_claim.py`, fixed before the runs: Welch "
            "intervals of RevViT − ViT mean AP and a permutation test of the arch labels; reproduced when both "
            "box and mask AP are credibly higher, refuted when either is credibly lower (Holm), else "
            "inconclusive, with the smallest difference the runs could detect (80% power). Beside it, each "
            "arch's frozen pretrained minus its random-init floor: negative means the pretraining gave the "
            "heads less than random features, and the verdict then compares what each arch's pretraining "
            "lost.\n",
            write_table(table, out, "detection_claim")]


def _reference_gaps(gaps: pd.DataFrame, out: Path) -> list[str]:
    if gaps.empty:
        return []
    return ["### Against the floor and the ceiling\n",
            "Per arch (main runs): frozen pretrained minus the random-init floor (what pretraining gives the "
            "heads beyond random features; negative: the pretrained features help the heads less than random "
            "ones) and the fine-tuned ceiling minus frozen, in AP points, with a Welch 95% interval where both "
            "sides have >= 2 runs (`runs`: the first side's / the second's). Descriptive, not a claim.\n",
            write_table(gaps, out, "detection_references")]


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
        lines = [f"- `{m.get('command')}` ({m.get('date')}, commit {m.get('git_commit')}, "
                 f"{m.get('machine', {}).get('gpu') or 'CPU'}, torch {m.get('versions', {}).get('torch')})\n"
                 for m in bench_meta]
        sections += ["### Benchmark commands\n", "".join(lines)]
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
