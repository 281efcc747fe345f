"""The study's tables, computed from the files the toolkit writes (dataset manifests, results
tables, bench JSON). Pure functions: DataFrames in, DataFrames out."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

# Student-t 97.5% quantiles for small n (paired differences over seeds); normal beyond.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def load_manifests(dataset_dirs) -> list[tuple[str, dict]]:
    """(name, manifest) for every complete dataset under the given dirs (searched recursively)."""
    found = []
    for root in map(Path, dataset_dirs):
        paths = [root / "manifest.json"] if (root / "manifest.json").exists() else sorted(root.rglob("manifest.json"))
        for p in paths:
            found.append((p.parent.name, json.loads(p.read_text())))
    return found


def dataset_table(manifests) -> pd.DataFrame:
    rows = []
    for name, m in manifests:
        t, meas = m.get("targets", {}), m.get("measured", {})
        hist = {int(k): v for k, v in meas.get("object_count_histogram", {}).items()}
        total = sum(hist.values())
        rows.append({
            "dataset": name,
            "split": m.get("spec", {}).get("split"),
            "n": m.get("n"),
            "image": "x".join(str(v) for v in m.get("image_shape", [])[:2][::-1]),
            "P(X) target": t.get("p_x"), "P(X)": meas.get("p_x"),
            "P(Y) target": t.get("p_y"), "P(Y)": meas.get("p_y"),
            "Corr target": t.get("corr"), "Corr": meas.get("corr"),
            "objects mean": sum(k * v for k, v in hist.items()) / total if total else None,
            "objects min-max": f"{min(hist)}-{max(hist)}" if hist else None,
        })
    return pd.DataFrame(rows)


def probe_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Finished probe cells (rows of the sweep results with a probe accuracy)."""
    if results.empty or "probe_acc" not in results:
        return results.iloc[0:0]
    ok = results["probe_acc"].notna()
    if "status" in results:
        ok &= results["status"].eq("ok")
    return results[ok].copy()


def probe_table(results: pd.DataFrame) -> pd.DataFrame:
    """Probe accuracy (and AUROC) per arch x corr x fraction: mean +- std over seeds, with n."""
    rows = probe_rows(results)
    if rows.empty:
        return pd.DataFrame()
    agg = rows.groupby(["corr", "fraction", "arch"], sort=True).agg(
        acc_mean=("probe_acc", "mean"), acc_std=("probe_acc", "std"), auroc_mean=("probe_auroc", "mean"),
        n=("probe_acc", "size"), feature_dim=("feature_dim", "first"),
    ).reset_index()
    agg["acc_std"] = agg["acc_std"].fillna(0.0)
    return agg


def paired_by_seed(results: pd.DataFrame, column: str = "probe_acc", reversible="revvit_micro",
                   baseline="vit_micro", extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """corr, fraction, seed, ``column`` (and ``extra`` columns) of both archs side by side
    (suffixes _rev / _base), for every cell both finished with a value in ``column``."""
    keys = ["corr", "fraction", "seed"]
    rows = probe_rows(results)
    if rows.empty or column not in rows:
        return pd.DataFrame(columns=keys)
    rows = rows[rows[column].notna()]
    value_cols = (column, *extra)
    rows = rows.assign(**{c: pd.to_numeric(rows[c], errors="coerce") if c in rows else np.nan for c in value_cols})
    cols = keys + list(value_cols)
    a = rows[rows["arch"] == reversible][cols]
    b = rows[rows["arch"] == baseline][cols]
    return a.merge(b, on=keys, suffixes=("_rev", "_base"))


def t_interval(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n): a 95% t interval of the mean (nan bounds with fewer than 2 values)."""
    v = np.asarray(list(values), dtype=float)
    n = len(v)
    if n < 2:
        return (float(v.mean()) if n else math.nan), math.nan, math.nan, n
    half = _T975.get(n - 1, 1.96) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half), n


def improvement_table(results: pd.DataFrame, reversible="revvit_micro", baseline="vit_micro",
                      column: str = "probe_acc") -> pd.DataFrame:
    """RevViT - ViT probe accuracy per corr x fraction, paired by seed, with a 95% CI.

    ``column``: the accuracy compared, with its bootstrap CI in ``{column}_ci_low/high`` (e.g.
    "probe_acc_matched", the width-matched control); cells without a value in it are left out.
    With >= 2 seeds: a t interval over the paired differences. With 1 seed: the two probes'
    bootstrap CIs combined as independent (half-width sqrt(h1^2 + h2^2))."""
    lo, hi = f"{column}_ci_low", f"{column}_ci_high"
    paired = paired_by_seed(results, column, reversible, baseline, extra=(lo, hi))
    if paired.empty:
        return pd.DataFrame()
    out = []
    for (corr, frac), g in paired.groupby(["corr", "fraction"], sort=True):
        d = (g[f"{column}_rev"] - g[f"{column}_base"]).to_numpy(dtype=float)
        mean, low, high, n = t_interval(d)
        method = f"t over {n} seeds"
        if n < 2:
            h1 = (g[f"{hi}_rev"] - g[f"{lo}_rev"]).iloc[0] / 2
            h2 = (g[f"{hi}_base"] - g[f"{lo}_base"]).iloc[0] / 2
            half = math.sqrt(h1 ** 2 + h2 ** 2) if np.isfinite([h1, h2]).all() else float("nan")
            low, high, method = mean - half, mean + half, "bootstrap CIs, 1 seed"
        out.append({"corr": corr, "fraction": frac, "improvement": mean, "ci_low": low, "ci_high": high, "n": n,
                    "ci_method": method})
    return pd.DataFrame(out)


def detection_table(results: pd.DataFrame) -> pd.DataFrame:
    if results.empty or "box_AP" not in results:
        return pd.DataFrame()
    rows = results[results["box_AP"].notna()]
    keep = [c for c in ("arch", "backbone_role", "tag", "seed", "dataset", "val_dataset", "config", "iterations",
                        "box_AP", "box_AP50", "mask_AP", "mask_AP50", "box_AP_change_last_fifth", "wall_time_s",
                        "git_commit") if c in rows]
    return rows[keep].reset_index(drop=True)


def detection_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Box and mask AP per (tag, arch, backbone role): mean, SD and number of runs (seeds), and
    ``last_fifth_max``: the largest held-out box AP change over the last fifth of training among its
    runs, in absolute value (convergence: every run below 1 when it is)."""
    rows = results[results["box_AP"].notna()] if "box_AP" in results else pd.DataFrame()
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(tag=rows["tag"].fillna("") if "tag" in rows else "",
                       backbone_role=rows["backbone_role"] if "backbone_role" in rows else "frozen")
    aggs = dict(runs=("box_AP", "size"), box_AP=("box_AP", "mean"), box_AP_sd=("box_AP", "std"),
                mask_AP=("mask_AP", "mean"), mask_AP_sd=("mask_AP", "std"))
    if "iterations" in rows:
        aggs["iterations"] = ("iterations", "max")
    if "box_AP_change_last_fifth" in rows:
        rows = rows.assign(last_fifth_abs=rows["box_AP_change_last_fifth"].abs())
        aggs["last_fifth_max"] = ("last_fifth_abs", "max")
    out = rows.groupby(["tag", "arch", "backbone_role"]).agg(**aggs).reset_index()
    order = {"frozen": 0, "floor": 1, "ceiling": 2}
    return out.sort_values(["tag", "arch", "backbone_role"], key=lambda c: c.map(order) if c.name == "backbone_role"
                           else c).reset_index(drop=True)


def detection_curves(results: pd.DataFrame) -> pd.DataFrame:
    """Held-out AP against iterations of every detection run: from its row's ``ap_history``, or from
    the eval_history.json its dir still holds (rows made before the column)."""
    if "box_AP" not in results or "run_dir" not in results:
        return pd.DataFrame()
    frames = []
    for r in results[results["box_AP"].notna()].itertuples():
        path = Path(str(r.run_dir)) / "eval_history.json"
        stored = getattr(r, "ap_history", None)
        history = json.loads(stored) if isinstance(stored, str) and stored else \
            json.loads(path.read_text()) if path.exists() else None
        if history:
            role, tag = getattr(r, "backbone_role", None), getattr(r, "tag", None)
            frames.append(pd.DataFrame(history).assign(
                run_dir=str(r.run_dir), arch=r.arch, backbone_role=role if isinstance(role, str) and role else "frozen",
                tag=tag if isinstance(tag, str) else ""))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_bench(paths) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Training-step records (one row per model x mode x precision x batch size), reconstruction-error
    records (one per model x depth) and each file's provenance, from bench JSON of any vintage
    (``revtransfer.bench.record.read_bench_file``)."""
    from revtransfer.bench.record import read_bench_file

    records, recon, metas = [], [], []
    for p in map(Path, paths):
        meta, rows, _ = read_bench_file(p)
        metas.append(dict(meta, file=str(p)))
        studied = next((r.model for r in rows if r.reference_for is None and r.mode != "backprop"), None)
        for r in rows:
            row = dict(r.to_dict(), source=p.name, device_name=meta.get("machine", {}).get("gpu") or "cpu")
            if r.extra.get("legacy_reference") and studied:
                row["reference_for"] = studied
            (recon if r.measure == "reconstruction" else records).append(row)
    return pd.DataFrame(records), pd.DataFrame(recon), metas


def bench_table(bench: pd.DataFrame) -> pd.DataFrame:
    if bench.empty:
        return bench
    cols = ["model", "mode", "batch_size", "status", "samples_per_s", "step_ms_median",
            "activation_bytes_per_sample", "peak_mem_bytes", "device_name"]
    t = bench[[c for c in cols if c in bench]].copy()
    t["activation_MB_per_sample"] = t.pop("activation_bytes_per_sample") / 2 ** 20
    if "peak_mem_bytes" in t:
        t["peak_MB"] = t.pop("peak_mem_bytes") / 2 ** 20
    return t


def bench_summary(bench: pd.DataFrame) -> pd.DataFrame:
    """Per reversible model and device: pareprop/reprop throughput at each batch size, best-vs-best
    against the non-reversible reference, and activation memory per sample vs the reference."""
    if bench.empty:
        return pd.DataFrame()
    ok = bench[bench["status"] == "ok"]
    if "reference_for" not in ok:
        ok = ok.assign(reference_for=None)
    is_ref = ok["reference_for"].notna()
    out = []
    for (source, model), g in ok[~is_ref].groupby(["source", "model"]):
        ref = ok[is_ref & (ok["source"] == source) & (ok["reference_for"] == model)]
        by_mode = {m: gm.set_index("batch_size")["samples_per_s"] for m, gm in g.groupby("mode")}
        row = {"source": source, "model": model, "device": g["device_name"].iloc[0]}
        if "pareprop" in by_mode and "reprop" in by_mode:
            ratio = (by_mode["pareprop"] / by_mode["reprop"]).dropna()
            row.update(pareprop_over_reprop_min=ratio.min(), pareprop_over_reprop_max=ratio.max())
        if not ref.empty:
            row["reference"] = ref["model"].iloc[0]
            best_ref = ref["samples_per_s"].max()
            for m, s in by_mode.items():
                row[f"best_{m}_over_reference"] = s.max() / best_ref
            ref_act = ref["activation_bytes_per_sample"].median()
            for m in by_mode:
                act = g[g["mode"] == m]["activation_bytes_per_sample"].median()
                row[f"reference_act_over_{m}"] = ref_act / act if act else None
        out.append(row)
    return pd.DataFrame(out)
