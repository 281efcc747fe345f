"""Verdicts on the thesis's transfer claims (Zhu 2023, Fig 4.2 / 4.3), computed from a sweep's
results, never typed by hand.

Every comparison is paired by seed: for seed s, the RevViT - ViT probe accuracy difference d(c, f, s)
at correlation c and fraction f (same pretrain data, same probe split). Intervals are 95% t
intervals over seeds (so they need >= 2 seeds and are wide with few). The rules:

(a) "RevViT >= ViT across correlations and data fractions" (Fig 4.2): the gain averaged over every
    cell, per seed. Reproduced when its interval lies above 0 and no single cell's interval lies
    below 0; refuted when its interval lies below 0 or a cell's does; else inconclusive.
(b1) "the largest gains near corr 0.3": per seed, the gain at corr 0.3 minus the gain at each other
    correlation (averaged over fractions). Reproduced when every such interval lies above 0;
    refuted when one lies below 0; else inconclusive.
(b2) "larger gains with less data": per seed, the gain at the smallest fraction minus the gain at
    the largest (averaged over correlations). Reproduced above 0, refuted below 0, else inconclusive.
"""
from __future__ import annotations

import math

import pandas as pd

from .tables import paired_by_seed, t_interval

CLAIM_CORR = 0.3


def paired_gains(results: pd.DataFrame, column: str = "probe_acc", reversible: str = "revvit_micro",
                 baseline: str = "vit_micro") -> pd.DataFrame:
    """corr, fraction, seed, gain (RevViT - ViT in ``column``) for every cell both archs finished."""
    paired = paired_by_seed(results, column, reversible, baseline)
    if paired.empty:
        return pd.DataFrame(columns=["corr", "fraction", "seed", "gain"])
    return paired.assign(gain=paired[f"{column}_rev"] - paired[f"{column}_base"])[["corr", "fraction", "seed", "gain"]]


def learned_only(results: pd.DataFrame, min_x_acc: float) -> pd.DataFrame:
    """``results`` without the rows whose pretraining stayed below ``min_x_acc`` on X, so a pair with
    one such backbone drops out of the pairing (and its seed out of the pooled claims). A robustness
    check for a sweep where a cell fell short of the sanity bar, not a replacement for the main rows."""
    if "pretrain_val_acc" not in results:
        return results
    acc = pd.to_numeric(results["pretrain_val_acc"], errors="coerce")
    return results[~(acc < min_x_acc)]


def _side(low: float, high: float) -> int:
    """+1: the interval lies above 0, -1: below, 0: it contains 0 (or is undefined)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0
    return 1 if low > 0 else -1 if high < 0 else 0


def _fmt(mean, low, high, n) -> str:
    return f"{100 * mean:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}] (n={n} seeds)"


def claim_verdicts(results: pd.DataFrame, column: str = "probe_acc") -> list[dict]:
    """One dict per claim: claim, verdict (reproduced / refuted / inconclusive / not testable), evidence."""
    g = paired_gains(results, column)
    out = []
    if g.empty or g["seed"].nunique() < 2:
        return [{"claim": c, "verdict": "not testable", "evidence": "needs >= 2 seeds with both archs finished"}
                for c in ("(a) RevViT >= ViT (Fig 4.2)", "(b1) largest gain near corr 0.3 (Fig 4.3)",
                          "(b2) larger gain with less data (Fig 4.3)")]
    # complete seeds only: every (corr, fraction) present, so the per-seed averages compare alike
    cells = g.groupby(["corr", "fraction"]).ngroups
    complete = g.groupby("seed").filter(lambda s: len(s) == cells)

    # (a)
    pooled = t_interval(complete.groupby("seed")["gain"].mean())
    per_cell = {k: t_interval(v["gain"]) for k, v in g.groupby(["corr", "fraction"])}
    below = [k for k, (_, lo, hi, _) in per_cell.items() if _side(lo, hi) < 0]
    above = [k for k, (_, lo, hi, _) in per_cell.items() if _side(lo, hi) > 0]
    side = _side(pooled[1], pooled[2])
    verdict = "refuted" if side < 0 or below else "reproduced" if side > 0 else "inconclusive"
    cell_text = "; ".join(f"corr {c:g} frac {f:.2f}: {100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                          for (c, f), (m, lo, hi, _) in sorted(per_cell.items()))
    out.append({"claim": "(a) RevViT >= ViT (Fig 4.2)", "verdict": verdict,
                "evidence": f"mean gain over all cells {_fmt(*pooled)}; {len(above)} of {len(per_cell)} cells "
                            f"above 0, {len(below)} below; per cell: {cell_text}"})

    # (b1)
    by_corr = complete.groupby(["seed", "corr"])["gain"].mean().unstack("corr")
    if CLAIM_CORR in by_corr and len(by_corr.columns) >= 2:
        diffs = {c: t_interval(by_corr[CLAIM_CORR] - by_corr[c]) for c in by_corr.columns if c != CLAIM_CORR}
        sides = [_side(lo, hi) for _, lo, hi, _ in diffs.values()]
        verdict = "refuted" if min(sides) < 0 else "reproduced" if min(sides) > 0 else "inconclusive"
        means = ", ".join(f"corr {c:g}: {100 * by_corr[c].mean():+.1f}" for c in by_corr.columns)
        text = "; ".join(f"gain(0.3) - gain({c:g}) = {_fmt(*d)}" for c, d in diffs.items())
        out.append({"claim": "(b1) largest gain near corr 0.3 (Fig 4.3)", "verdict": verdict,
                    "evidence": f"mean gain by corr: {means}; {text}"})
    else:
        out.append({"claim": "(b1) largest gain near corr 0.3 (Fig 4.3)", "verdict": "not testable",
                    "evidence": "needs corr 0.3 and another correlation"})

    # (b2)
    by_frac = complete.groupby(["seed", "fraction"])["gain"].mean().unstack("fraction")
    if len(by_frac.columns) >= 2:
        lo_f, hi_f = min(by_frac.columns), max(by_frac.columns)
        d = t_interval(by_frac[lo_f] - by_frac[hi_f])
        s = _side(d[1], d[2])
        verdict = "reproduced" if s > 0 else "refuted" if s < 0 else "inconclusive"
        means = ", ".join(f"fraction {f:.2f}: {100 * by_frac[f].mean():+.1f}" for f in by_frac.columns)
        out.append({"claim": "(b2) larger gain with less data (Fig 4.3)", "verdict": verdict,
                    "evidence": f"mean gain by fraction: {means}; gain({lo_f:.2f}) - gain({hi_f:.2f}) = {_fmt(*d)}"})
    else:
        out.append({"claim": "(b2) larger gain with less data (Fig 4.3)", "verdict": "not testable",
                    "evidence": "needs two or more fractions"})
    return out
