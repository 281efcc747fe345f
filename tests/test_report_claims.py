"""The verdicts on the thesis's claims follow their stated rules on constructed gains."""
from __future__ import annotations

import pandas as pd

from revtransfer.report.claims import claim_verdicts, learned_only, paired_gains, t_interval

CORRS, FRACS, SEEDS = (0.8, 0.3, -0.02), (0.5, 1.0), (0, 1, 2)


def _results(gain) -> pd.DataFrame:
    """Rows of both archs per cell; RevViT's accuracy is ViT's plus gain(corr, fraction, seed)."""
    rows = []
    for c in CORRS:
        for f in FRACS:
            for s in SEEDS:
                base = 0.70 + 0.01 * s
                for arch, acc in (("vit_micro", base), ("revvit_micro", base + gain(c, f, s))):
                    rows.append(dict(arch=arch, corr=c, fraction=f, seed=s, probe_acc=acc, status="ok"))
    return pd.DataFrame(rows)


def _verdicts(gain) -> dict:
    return {v["claim"][:4]: v["verdict"] for v in claim_verdicts(_results(gain))}


def test_a_clear_pattern_like_the_thesis_is_reproduced():
    # gains everywhere, largest at corr 0.3 and at the smaller fraction, a little seed noise
    v = _verdicts(lambda c, f, s: 0.02 + (0.03 if c == 0.3 else 0) + (0.02 if f == 0.5 else 0) + 0.002 * s)
    assert v == {"(a) ": "reproduced", "(b1)": "reproduced", "(b2)": "reproduced"}


def test_the_opposite_pattern_is_refuted():
    v = _verdicts(lambda c, f, s: -0.02 - (0.03 if c == 0.3 else 0) - (0.02 if f == 0.5 else 0) - 0.002 * s)
    assert v == {"(a) ": "refuted", "(b1)": "refuted", "(b2)": "refuted"}


def test_noise_around_zero_is_inconclusive():
    noise = {0: 0.03, 1: -0.025, 2: -0.004}
    v = _verdicts(lambda c, f, s: noise[s] * (1 if (c, f) != (0.3, 0.5) else -1))
    assert set(v.values()) == {"inconclusive"}


def test_one_seed_is_not_testable_and_intervals_are_t():
    one = _results(lambda c, f, s: 0.05)
    one = one[one["seed"] == 0]
    assert {v["verdict"] for v in claim_verdicts(one)} == {"not testable"}
    mean, lo, hi, n = t_interval([0.0, 0.1, 0.2])
    assert n == 3 and abs(mean - 0.1) < 1e-12 and abs((hi - mean) - 4.303 * 0.1 / 3 ** 0.5) < 1e-9
    g = paired_gains(_results(lambda c, f, s: 0.01 * s))
    assert len(g) == len(CORRS) * len(FRACS) * len(SEEDS) and abs(g["gain"].max() - 0.02) < 1e-12


def test_learned_only_drops_the_pair_of_a_backbone_below_the_bar():
    # seed 2's RevViT at corr 0.3, fraction 0.5 never learned X and probes far worse: with it, the
    # pooled gain is dragged down; without it, that pair and seed 2 leave the pooled claims.
    res = _results(lambda c, f, s: -0.30 if (c, f, s) == (0.3, 0.5, 2) else 0.02 + 0.002 * s)
    bad = (res["arch"] == "revvit_micro") & (res["corr"] == 0.3) & (res["fraction"] == 0.5) & (res["seed"] == 2)
    res["pretrain_val_acc"] = 0.93
    res.loc[bad, "pretrain_val_acc"] = 0.71
    kept = learned_only(res, 0.90)
    assert len(kept) == len(res) - 1 and not bad[kept.index].any()
    assert len(paired_gains(kept)) == len(paired_gains(res)) - 1
    a = claim_verdicts(kept)[0]
    assert a["verdict"] == "reproduced" and "(n=2 seeds)" in a["evidence"]
    assert claim_verdicts(res)[0]["verdict"] != "reproduced"
    # rows without the column, or with it missing, are kept
    assert len(learned_only(res.drop(columns="pretrain_val_acc"), 0.90)) == len(res)
