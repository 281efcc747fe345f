"""The detection claim, judged by rules fixed before the runs: "(c) frozen RevViT >= ViT in box and
mask AP (thesis Table 4.2)".

Rows are detection runs of the results table: one per (arch, seed) with the backbone frozen at its
pretrained weights (``backbone_role == "frozen"``), optionally split by ``tag`` (the main rows and a
width control; a control without baseline rows of its own, as the width control, which changes only
RevViT's side, is compared with the baseline's main rows). The backbones of the two archs at one
seed share only their pretraining data and order, not their initial weights, so the comparison is
unpaired: the RevViT − ViT difference of mean AP with a Welch interval (statsmodels), and beside it
an exact permutation test of the arch labels (scipy). Rules:

- **reproduced**: RevViT − ViT is credibly positive in both box and mask AP (each one-sided test at
  ``alpha``; both must pass, an intersection-union test, so no multiplicity correction is due);
- **refuted**: RevViT − ViT is credibly negative in box or in mask AP (Holm over the two, at
  ``alpha``): RevViT is worse in at least one, so "RevViT >= ViT in both" is false;
- **inconclusive** otherwise, with the smallest difference the seeds could have detected (80%
  power) beside it.

The permutation test needs at least 5 runs per arch to reach p < 0.025 at all (3 against 3 has 20
relabellings, so its smallest p is 0.05): that is why a detection study runs >= 5 seeds.

A verdict also needs detectors that learned: every row converged (held-out box AP moved by less than
``CONVERGED_AP`` over the last fifth of training, when the run recorded it) and the frozen pretrained
rows are shown beside their floor (random-init frozen) and ceiling (fine-tuned) rows.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

METRICS = ("box_AP", "mask_AP")
# Each reversible backbone and the non-reversible one of the same size it is compared with
# (Table 4.2's "parameter matched" pairs; the micro pair is the CPU study's).
PAIRS = {"revvit_micro": "vit_micro", "revvit_small": "vit_small_patch16_224", "revvit_base": "vit_base_patch16_224",
         "revvit_large": "vit_large_patch16_224"}
CONVERGED_AP = 1.0  # held-out box AP change over the last fifth of training below which a run converged


def _welch(rev: np.ndarray, vit: np.ndarray, alpha: float) -> dict:
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    cm = CompareMeans(DescrStatsW(rev), DescrStatsW(vit))
    diff = float(rev.mean() - vit.mean())
    low, high = cm.tconfint_diff(alpha=2 * alpha, alternative="two-sided", usevar="unequal")
    _, p_greater, df = cm.ttest_ind(alternative="larger", usevar="unequal")
    _, p_less, _ = cm.ttest_ind(alternative="smaller", usevar="unequal")
    se = math.sqrt(rev.var(ddof=1) / len(rev) + vit.var(ddof=1) / len(vit))
    pooled = math.sqrt((rev.var(ddof=1) + vit.var(ddof=1)) / 2)
    return {"diff": diff, "ci_low": float(low), "ci_high": float(high), "p_greater": float(p_greater),
            "p_less": float(p_less), "df": float(df), "se": se, "d": diff / pooled if pooled > 0 else math.nan}


def _permutation_p(rev: np.ndarray, vit: np.ndarray) -> float:
    """One-sided (RevViT > ViT) p of the difference of means over every relabelling of the runs."""
    from scipy.stats import permutation_test

    res = permutation_test((rev, vit), lambda a, b: np.mean(a) - np.mean(b), permutation_type="independent",
                           alternative="greater", n_resamples=20000, random_state=0)
    return float(res.pvalue)


def judge_detection(rows: pd.DataFrame, reversible: str = "revvit_micro", baseline: str = "vit_micro",
                    alpha: float = 0.025, tag: str | None = None) -> dict:
    """The verdict on (c) from detection rows (see the module docstring); ``tag`` picks the rows
    of one part of a study (e.g. ``width-control``), None takes those without a tag."""
    from revtransfer.report.stats import holm, min_detectable_effect

    frozen = rows[(rows.get("backbone_role") == "frozen") & rows["box_AP"].notna()] if len(rows) else rows
    tags = _tags(frozen)
    rev = frozen[(frozen["arch"] == reversible) & tags.eq(tag or "")]
    vit = frozen[(frozen["arch"] == baseline) & tags.eq(tag or "")]
    baseline_rows = tag or "main"
    if tag and vit.empty:
        # a control that changes only the reversible side (the width control: RevViT's pyramid gets
        # C channels, which ViT's already has) is compared with the baseline's main runs
        vit, baseline_rows = frozen[(frozen["arch"] == baseline) & tags.eq("")], "main"
    frozen = pd.concat([rev, vit])
    out = {"claim": "(c) frozen RevViT >= ViT in box and mask AP (Table 4.2)", "tag": tag or "",
           "reversible": reversible, "baseline": baseline,
           "n_reversible": len(rev), "n_baseline": len(vit), "baseline_rows": baseline_rows, "alpha": alpha}
    if len(rev) < 2 or len(vit) < 2:
        return {**out, "verdict": "inconclusive", "evidence": "fewer than 2 runs per arch: no interval"}
    tests = {}
    for m in METRICS:
        a, b = rev[m].to_numpy(float), vit[m].to_numpy(float)
        tests[m] = {**_welch(a, b, alpha), "p_permutation": _permutation_p(a, b),
                    "mean_reversible": float(a.mean()), "mean_baseline": float(b.mean())}
        # the one-sided test at alpha has the power of the two-sided one at 2 alpha (noncentral t)
        tests[m]["mde"] = min_detectable_effect(tests[m]["se"], tests[m]["df"], alpha=2 * alpha)
    support = all(tests[m]["p_greater"] < alpha and tests[m]["p_permutation"] < alpha for m in METRICS)
    refute_any, _ = holm([tests[m]["p_less"] for m in METRICS], alpha)
    verdict = "reproduced" if support else "refuted" if refute_any.any() else "inconclusive"
    converged = _converged(frozen)
    evidence = "; ".join(
        f"{m.replace('_', ' ')}: {t['diff']:+.1f} [{t['ci_low']:+.1f}, {t['ci_high']:+.1f}] "
        f"(p>0 {t['p_greater']:.3f}, permutation {t['p_permutation']:.3f}, d {t['d']:+.2f}; "
        f"smallest detectable {t['mde']:.1f})" for m, t in tests.items())
    return {**out, "verdict": verdict, "evidence": evidence, "tests": tests, "converged": converged}


def _tags(rows: pd.DataFrame) -> pd.Series:
    """Each row's part of a study ("" for the main rows)."""
    return rows["tag"].fillna("") if "tag" in rows else pd.Series("", index=rows.index)


def _converged(rows: pd.DataFrame) -> str:
    if "box_AP_change_last_fifth" not in rows or rows["box_AP_change_last_fifth"].isna().all():
        return "not recorded"
    change = rows["box_AP_change_last_fifth"].abs()
    bad = int((change >= CONVERGED_AP).sum())
    return "all" if not bad else f"{bad} of {len(rows)} runs moved >= {CONVERGED_AP} box AP over the last fifth"


def reference_gaps(rows: pd.DataFrame, alpha: float = 0.025) -> pd.DataFrame:
    """Per arch (main rows), what pretraining gives the heads beyond random features (frozen −
    floor) and what fine-tuning adds to it (ceiling − frozen), in box and mask AP: the difference
    of means with a Welch 95% interval where both sides have >= 2 runs. Descriptive, not a claim:
    it says whether the frozen detectors learned more than the heads alone, per arch."""
    if rows.empty or "backbone_role" not in rows:
        return pd.DataFrame()
    main = rows[rows["box_AP"].notna() & _tags(rows).eq("")]
    out = []
    for arch in sorted(set(main["arch"])):
        mine = main[main["arch"] == arch]
        for name, hi, lo in (("frozen − floor", "frozen", "floor"), ("ceiling − frozen", "ceiling", "frozen")):
            a, b = mine[mine["backbone_role"] == hi], mine[mine["backbone_role"] == lo]
            if a.empty or b.empty:
                continue
            row = {"arch": arch, "comparison": name, "runs": f"{len(a)}/{len(b)}"}
            for m in METRICS:
                x, y = a[m].to_numpy(float), b[m].to_numpy(float)
                row[m] = float(x.mean() - y.mean())
                if len(x) >= 2 and len(y) >= 2:
                    w = _welch(x, y, alpha)
                    row[f"{m}_ci"] = f"[{w['ci_low']:+.1f}, {w['ci_high']:+.1f}]"
                else:
                    row[f"{m}_ci"] = "– (1 run on a side)"
            out.append(row)
    return pd.DataFrame(out)
