"""The study's figures (matplotlib, Agg backend): labelled axes with units, legends, error bars."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

_ARCH_STYLE = {"vit_micro": dict(color="#4C72B0", marker="o", label="ViT-Micro"),
               "revvit_micro": dict(color="#DD8452", marker="s", label="RevViT-Micro")}
_MODE_STYLE = {"backprop": dict(color="#4C72B0", marker="o"), "reprop": dict(color="#C44E52", marker="s"),
               "pareprop": dict(color="#55A868", marker="^"), "reference": dict(color="#8172B2", marker="x", ls="--")}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
    return path


def probe_accuracy(table: pd.DataFrame, path: Path) -> Path:
    """Probe accuracy vs pretrain fraction, one panel per correlation, ViT vs RevViT."""
    corrs = sorted(table["corr"].unique(), reverse=True)
    fig, axes = plt.subplots(1, len(corrs), figsize=(4 * len(corrs), 3.4), sharey=True, squeeze=False)
    for ax, corr in zip(axes[0], corrs):
        for arch, g in table[table["corr"] == corr].groupby("arch"):
            g = g.sort_values("fraction")
            style = _ARCH_STYLE.get(arch, dict(label=arch, marker="o"))
            ax.errorbar(g["fraction"], 100 * g["acc_mean"], yerr=100 * g["acc_std"], capsize=3, **style)
        ax.set_title(f"pretrain Corr(X, Y) = {corr:g}")
        ax.set_xlabel("fraction of pretrain set used")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("linear probe accuracy on Y (%)")
    axes[0][-1].legend(title="backbone (frozen)")
    fig.suptitle("Transfer: linear probe for Y on frozen features (mean ± std over seeds)", fontsize=10)
    return _save(fig, path)


def improvement(table: pd.DataFrame, path: Path) -> Path:
    """RevViT - ViT probe accuracy per correlation, one bar per pretrain fraction, 95% CIs."""
    corrs = sorted(table["corr"].unique(), reverse=True)
    fracs = sorted(table["fraction"].unique())
    width = 0.8 / len(fracs)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(corrs), 3.4))
    for j, frac in enumerate(fracs):
        g = table[table["fraction"] == frac].set_index("corr").reindex(corrs)
        xs = [i + (j - (len(fracs) - 1) / 2) * width for i in range(len(corrs))]
        err = [100 * (g["improvement"] - g["ci_low"]), 100 * (g["ci_high"] - g["improvement"])]
        ax.bar(xs, 100 * g["improvement"], width, yerr=err, capsize=3, label=f"{frac:.2g}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(corrs)), [f"{c:g}" for c in corrs])
    ax.set_xlabel("pretrain Corr(X, Y)")
    ax.set_ylabel("RevViT − ViT probe accuracy (points)")
    ax.legend(title="pretrain fraction", fontsize=8)
    ax.set_title("RevViT improvement over ViT (95% CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def bench_curves(bench: pd.DataFrame, path: Path, metric: str) -> Path:
    """Throughput (or activation memory) vs batch size per backward mode, one panel per model."""
    ok = bench[bench["status"] == "ok"]
    groups = list(ok.groupby(["source", "device_name"]))
    total = ok["activation_bytes_per_sample"] * ok["batch_size"]
    unit, scale = ("GiB", 2 ** 30) if total.max() >= 2 ** 30 else ("MiB", 2 ** 20)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    for ax, ((source, device), g) in zip(axes[0], groups):
        for (model, mode), gm in g.groupby(["model", "mode"]):
            gm = gm.sort_values("batch_size")
            y = gm["samples_per_s"] if metric == "throughput" else gm["activation_bytes_per_sample"] * gm["batch_size"] / scale
            reference = "reference_for" in gm and gm["reference_for"].notna().any()
            ax.plot(gm["batch_size"], y, label=model if reference else f"{model} {mode}",
                    **_MODE_STYLE.get("reference" if reference else mode, {}))
        ax.set_xscale("log", base=2)
        sizes = sorted(g["batch_size"].unique())
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylabel("training throughput (samples/s)" if metric == "throughput" else f"activation memory ({unit})")
        ax.set_title(f"{source} ({device})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


_ROLE_STYLE = {"frozen": dict(ls="-"), "floor": dict(ls=":"), "ceiling": dict(ls="--")}


def detection_curves(curves: pd.DataFrame, path: Path) -> Path:
    """Held-out box and mask AP against training iterations, one line per run: frozen pretrained
    (solid), random-init floor (dotted), fine-tuned ceiling (dashed), a tagged part of a study such
    as the width control (dash-dot, named), colour by arch."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    if "tag" not in curves:
        curves = curves.assign(tag="")
    for (_run, arch, role, tag), g in curves.groupby(["run_dir", "arch", "backbone_role", "tag"], sort=True):
        g = g.sort_values("iteration")
        style = dict(_ARCH_STYLE.get(arch, dict(label=arch, marker="o")))
        style.update(_ROLE_STYLE.get(role, {}), label=f"{style.get('label', arch)} {role}", markersize=3)
        if tag:
            style.update(ls="-.", label=f"{style['label']} ({tag})")
        for ax, col in zip(axes, ("bbox_AP", "segm_AP")):
            ax.plot(g["iteration"], g[col], **style)
    for ax, what in zip(axes, ("box AP", "mask AP")):
        ax.set_xlabel("training iteration")
        ax.set_ylabel(f"held-out {what}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes[1].legend(unique.values(), unique.keys(), fontsize=7)
    return _save(fig, path)
