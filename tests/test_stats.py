"""revtransfer.report.stats on synthetic rows whose true effects are known, and on the CPU study's
committed rows. Simulations are seeded and small (a few hundred replicates)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.integrate import quad
from statsmodels.stats.power import TTestIndPower

from revtransfer.report import stats as S

CORRS, FRACS = (-0.02, 0.3, 0.8), (0.5, 1.0)
SD = {-0.02: 3.0, 0.3: 4.0, 0.8: 0.5}      # between-seed SD per corr (points), like the CPU study
BASE = {-0.02: 70.0, 0.3: 75.0, 0.8: 87.0}
STUDY = Path(__file__).resolve().parents[1] / "reports" / "study_cpu" / "results" / "results.csv"


def _table(rng, effect, seeds=3, corrs=CORRS, fracs=FRACS, sd=SD, n_test=2000) -> pd.DataFrame:
    """A results table: ViT accuracy BASE + noise, RevViT's BASE + effect(corr, fraction) + noise."""
    rows = []
    for c in corrs:
        for f in fracs:
            for s in range(seeds):
                for arch, rev in (("vit_micro", 0), ("revvit_micro", 1)):
                    y = BASE[c] + rev * effect(c, f) + rng.normal(0, sd[c])
                    rows.append(dict(arch=arch, corr=c, fraction=f, seed=s, probe_acc=y / 100, probe_n_test=n_test,
                                     status="ok", pretrain_val_acc=0.93))
    return pd.DataFrame(rows)


def _rows(rng, effect, seeds=3, corrs=CORRS, fracs=FRACS, sd=SD, n_test=2000) -> pd.DataFrame:
    """The same, directly in ``study_rows`` form less the arch names (fast, for the simulations)."""
    c, f, s, rev = (a.ravel() for a in np.meshgrid(corrs, fracs, range(seeds), (0, 1), indexing="ij"))
    eff = np.array([effect(ci, fi) for ci, fi in zip(c, f)])
    y = np.array([BASE[ci] for ci in c]) + rev * eff + rng.normal(0, 1, len(c)) * np.array([sd[ci] for ci in c])
    return pd.DataFrame({"corr": c, "fraction": f, "seed": s, "rev": rev, "y": y, "n_test": float(n_test)})


CELL_EFFECT = {(-0.02, 0.5): 4.0, (-0.02, 1.0): 5.0, (0.3, 0.5): -1.0, (0.3, 1.0): 4.0, (0.8, 0.5): 1.5,
               (0.8, 1.0): 0.7}


# --- the model -----------------------------------------------------------------------------------------
def test_model_recovers_cell_means_and_pooled_variances():
    rng = np.random.default_rng(0)
    rows = _rows(rng, lambda c, f: CELL_EFFECT[(c, f)])
    m = S.fit_effects(None, rows=rows)
    gains = rows.pivot_table(index=["corr", "fraction"], columns="rev", values="y")
    assert math.isclose(m.main.estimate, float((gains[1] - gains[0]).mean()), abs_tol=1e-9)
    # per-corr variance pooled within (cell, arch) groups, 8 df each
    for c in CORRS:
        sub = rows[rows["corr"] == c]
        ss = sub.groupby(["fraction", "rev"])["y"].apply(lambda v: ((v - v.mean()) ** 2).sum()).sum()
        assert math.isclose(m.strata.loc[f"{c:g}", "var"], ss / 8, rel_tol=1e-9) and m.strata.loc[f"{c:g}", "df"] == 8
    # equal weight per cell (+-1/6 per group): Var = sum over the 4 groups of each corr of var_k / 3, / 36
    se = math.sqrt(sum(4 * m.strata.loc[f"{c:g}", "var"] / 3 for c in CORRS)) / 6
    assert math.isclose(m.main.se, se, rel_tol=1e-9)
    assert 8 <= m.main.df <= 24  # Satterthwaite: between one stratum's df and all of them
    assert math.isclose(m.main.d, m.main.estimate / m.sd_pooled)


def test_model_ci_covers_the_true_effect_about_95_percent():
    rng = np.random.default_rng(1)
    true = float(np.mean(list(CELL_EFFECT.values())))
    true_b2 = np.mean([CELL_EFFECT[(c, 0.5)] - CELL_EFFECT[(c, 1.0)] for c in CORRS])
    hits = hits_b2 = 0
    reps = 300
    for _ in range(reps):
        m = S.fit_effects(None, rows=_rows(rng, lambda c, f: CELL_EFFECT[(c, f)]))
        hits += m.main.ci_low <= true <= m.main.ci_high
        b2 = m.b2()
        hits_b2 += b2.ci_low <= true_b2 <= b2.ci_high
    assert 0.90 <= hits / reps <= 0.99
    assert 0.90 <= hits_b2 / reps <= 0.99


def test_bootstrap_ci_covers_and_test_noise_widens_it():
    rng = np.random.default_rng(2)
    true = float(np.mean(list(CELL_EFFECT.values())))
    hits, reps = 0, 150
    for i in range(reps):
        rows = _rows(rng, lambda c, f: CELL_EFFECT[(c, f)])
        m = S.fit_effects(None, rows=rows)
        lo, hi = S.bootstrap_contrasts(m, rows, n_boot=400, test_noise="none", seed=i).ci["a"]
        hits += lo <= true <= hi
    assert 0.88 <= hits / reps <= 0.99
    rows = _rows(np.random.default_rng(3), lambda c, f: 1.0, sd={c: 0.3 for c in CORRS}, n_test=500)
    m = S.fit_effects(None, rows=rows)
    width = {k: np.diff(S.bootstrap_contrasts(m, rows, n_boot=2000, test_noise=k, seed=0).ci["a"])[0]
             for k in S.TEST_NOISE}
    assert width["none"] < width["row"] < width["cell"]


# --- the sign-flip test --------------------------------------------------------------------------------
def test_sign_flip_is_exact_on_a_tiny_example():
    assert S.sign_flip_test([1, 2, 3]).p == 1 / 8
    r = S.sign_flip_test([1, -2, 3])
    assert r.exact and r.n_resamples == 8 and r.p == 3 / 8  # sums >= 2 of +-1 +-2 +-3: 6, 4, 2
    assert S.sign_flip_test([1, -2, 3], alternative="two-sided").p == 6 / 8
    assert S.sign_flip_test([1, -2, 3], alternative="less").p == 6 / 8
    assert S.sign_flip_test([1, 2, 3], null=2.0, alternative="less").p == 6 / 8  # d - 2 = -1, 0, 1: sums 2, 0, 0, -2
    # Monte Carlo agrees with exact enumeration
    d = np.random.default_rng(4).normal(0.5, 1, 12)
    exact = S.sign_flip_test(d).p
    mc = S.sign_flip_test(d, max_exact_pairs=0, n_resamples=20000, seed=1)
    assert not mc.exact and abs(mc.p - exact) < 0.015


# --- verdicts ------------------------------------------------------------------------------------------
def _primary(rows, alpha=0.025, sesoi=0.0, seed=0, n_boot=300):
    m = S.fit_effects(None, rows=rows)
    pg = S.pair_gains(rows)
    up = S.sign_flip_test(pg["gain"], pg["weight"], "greater")
    down = S.sign_flip_test(pg["gain"], pg["weight"], "less", null=sesoi)
    boot = S.bootstrap_contrasts(m, rows, n_boot=n_boot, level=1 - 2 * alpha, seed=seed)
    return S.primary_verdict(m.main, alpha, sesoi, up.p, down.p, boot.ci["a"]), m


def test_a_null_effect_is_rarely_reproduced():
    rng = np.random.default_rng(5)
    reps, reproduced, model_only = 200, 0, 0
    for i in range(reps):  # 2 corrs x 2 fractions x 3 seeds: 12 pairs, 4096 sign vectors
        v, m = _primary(_rows(rng, lambda c, f: 0.0, corrs=(0.3, 0.8)), seed=i)
        reproduced += v["verdict"] == "reproduced"
        model_only += m.main.p_greater < 0.025
    assert reproduced / reps <= 0.08 and model_only / reps <= 0.08


def test_a_large_effect_is_detected_and_a_negative_one_refuted():
    rng = np.random.default_rng(6)
    sd = {c: 1.0 for c in CORRS}
    assert _primary(_rows(rng, lambda c, f: 5.0, sd=sd))[0]["verdict"] == "reproduced"
    assert _primary(_rows(rng, lambda c, f: -5.0, sd=sd))[0]["verdict"] == "refuted"
    # a gain credibly between 0 and the smallest effect of interest: reproduced, flagged below it
    v = _primary(_rows(rng, lambda c, f: 1.0, sd={c: 0.2 for c in CORRS}), sesoi=3.0)[0]
    assert v["verdict"] == "reproduced" and v["below_sesoi"]
    # noise around 0 with a wide sesoi: the data exclude gains of 3 points, so refuted
    v = _primary(_rows(rng, lambda c, f: 0.0, sd={c: 0.5 for c in CORRS}), sesoi=3.0)[0]
    assert v["verdict"] == "refuted"


def test_judge_reads_a_table_and_judges_the_thesis_pattern():
    rng = np.random.default_rng(7)
    sd = {c: 0.5 for c in CORRS}
    thesis = _table(rng, lambda c, f: 2.0 + (4.0 if c == 0.3 else 0) + (3.0 if f == 0.5 else 0), sd=sd)
    v = {x["claim"][:4]: x["verdict"] for x in S.judge(thesis, n_boot=300)["verdicts"]}
    assert v == {"(a) ": "reproduced", "(b1)": "reproduced", "(b2)": "reproduced"}
    opposite = _table(rng, lambda c, f: -2.0 - (4.0 if c == 0.3 else 0) - (3.0 if f == 0.5 else 0), sd=sd)
    v = {x["claim"][:4]: x["verdict"] for x in S.claim_verdicts(opposite, n_boot=300)}
    assert v == {"(a) ": "refuted", "(b1)": "refuted", "(b2)": "refuted"}
    one_seed = thesis[thesis["seed"] == 0]
    assert {x["verdict"] for x in S.claim_verdicts(one_seed)} == {"not testable"}


def test_holm_adjusts_and_applies_to_refutations_too():
    reject, adj = S.holm([0.01, 0.04, 0.03], alpha=0.05)
    assert list(reject) == [True, False, False] and np.allclose(adj, [0.03, 0.06, 0.06])
    # each p below alpha alone, but not after Holm over the two secondary claims
    v = S.secondary_verdicts({"b1": (0.02, 0.9), "b2": (0.03, 0.9)}, alpha=0.025)
    assert v["b1"]["verdict"] == v["b2"]["verdict"] == "inconclusive"
    assert math.isclose(v["b1"]["p_support_holm"], 0.04) and math.isclose(v["b2"]["p_support_holm"], 0.04)
    v = S.secondary_verdicts({"b1": (0.9, 0.02), "b2": (0.9, 0.03)}, alpha=0.025)
    assert v["b1"]["verdict"] == v["b2"]["verdict"] == "inconclusive"
    v = S.secondary_verdicts({"b1": (0.9, 0.01), "b2": (0.005, 0.99)}, alpha=0.025)
    assert v["b1"]["verdict"] == "refuted" and v["b2"]["verdict"] == "reproduced"
    v = S.secondary_verdicts({"b1": (math.nan, math.nan), "b2": (0.02, 0.99)}, alpha=0.025)
    assert v["b1"]["verdict"] == "not testable" and v["b2"]["verdict"] == "reproduced"  # a family of one


def test_b1_is_an_intersection_union_test():
    rng = np.random.default_rng(8)
    sd = {c: 0.3 for c in CORRS}
    # largest at 0.3 but tied with -0.02: one pairwise contrast fails, so b1 is not reproduced
    m = S.fit_effects(None, rows=_rows(rng, lambda c, f: 0.0 if c == 0.8 else 3.0, sd=sd))
    p_support, p_refute = S.b1_pvalues(m.b1())
    assert p_support == max(c.p_greater for c in m.b1()) and p_support > 0.025 and p_refute > 0.025


# --- power and seeds needed ----------------------------------------------------------------------------
def test_power_matches_the_two_sample_t_test_in_the_closed_form_case():
    # one cell, two archs, n seeds each with sample SD exactly sigma: the contrast is a two-sample t
    sigma, n = 2.0, 5
    z = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    z = z / z.std(ddof=1) * sigma
    rows = pd.DataFrame({"corr": 0.3, "fraction": 1.0, "seed": np.tile(range(n), 2), "rev": np.repeat([0, 1], n),
                         "y": np.concatenate([70 + z, 72 + z]), "n_test": np.nan})
    rows["arch"] = np.where(rows["rev"] == 1, S.REVERSIBLE, S.BASELINE)
    m = S.fit_effects(None, rows=rows)
    assert math.isclose(m.main.se, sigma * math.sqrt(2 / n)) and m.main.df == 2 * (n - 1)
    ref = TTestIndPower()
    for delta in (1.0, 2.0, 4.0):
        assert math.isclose(S.power_t(delta, m.main.se, m.main.df), ref.power(delta / sigma, n, 0.05), rel_tol=1e-6)
        need = math.ceil(ref.solve_power(delta / sigma, power=0.8, alpha=0.05))
        assert S.seeds_needed(m, "a", delta, test_noise="none") == max(need, 2)
    mde = S.claim_mde(m, "a", test_noise="none")
    assert math.isclose(mde / sigma, ref.solve_power(None, n, 0.05, 0.8), rel_tol=1e-4)
    assert math.isclose(S.min_detectable_effect(m.main.se, m.main.df), mde, rel_tol=1e-6)


def test_power_and_seeds_needed_are_monotone():
    m = S.fit_effects(None, rows=_rows(np.random.default_rng(9), lambda c, f: CELL_EFFECT[(c, f)]))
    powers = [S.power_t(e, 1.0, 10) for e in (0.5, 1, 2, 3)]
    assert all(a < b for a, b in zip(powers, powers[1:]))
    for claim in ("a", "b1", "b2"):
        seeds = [S.seeds_needed(m, claim, e, 0.05) for e in (1.0, 2.0, 4.0)]
        assert seeds[0] >= seeds[1] >= seeds[2]
        mdes = [S.claim_mde(m, claim, 0.05, n=n) for n in (3, 6, 12)]
        assert mdes[0] > mdes[1] > mdes[2]
    # the binomial variance of the test set only adds; with one shared test set it is a floor
    assert S.seeds_needed(m, "a", 2.0, test_noise="none") <= S.seeds_needed(m, "a", 2.0, test_noise="row")
    assert S.seeds_needed(m, "a", 0.1, test_noise="cell") == math.inf
    table = S.power_table(m)
    assert list(table["claim"]) == list(S.CLAIMS.values()) and (table["seeds_for_1"] >= table["seeds_for_2"]).all()


# --- group-sequential stopping -------------------------------------------------------------------------
def test_one_look_spends_alpha_at_the_fixed_sample_critical_value():
    for alpha in (0.025, 0.05):
        b = S.gs_boundaries([1.0], alpha)
        assert math.isclose(b["boundaries"][0], sps.norm.isf(alpha), rel_tol=1e-9)
        assert math.isclose(b["alpha_spent_cumulative"][0], alpha, rel_tol=1e-9)
    d = S.decide(1, 1.0, 1.97)
    assert d["decision"] == "reject" and d["final"]
    assert S.decide(1, 1.0, 1.95)["decision"] == "accept-futility"


def test_obrien_fleming_boundaries_match_published_values_and_a_direct_integral():
    # Lan-DeMets O'Brien-Fleming, one-sided 0.025, 3 equally spaced looks (as gsDesign's sfLDOF)
    b = S.gs_boundaries([1 / 3, 2 / 3, 1.0])["boundaries"]
    assert np.allclose(b, [3.7103, 2.5114, 1.9930], atol=2e-4)
    t = [0.4, 1.0]
    c1, c2 = S.gs_boundaries(t)["boundaries"]
    r = math.sqrt(t[0] / t[1])
    # P(Z1 < c1, Z2 >= c2), with Z2 | Z1 = z ~ N(r z, 1 - r^2), by direct quadrature
    inc = quad(lambda z: sps.norm.pdf(z) * sps.norm.sf((c2 - r * z) / math.sqrt(1 - r * r)), -12, c1,
               epsabs=1e-12)[0]
    assert math.isclose(inc, 0.025 - float(S.spending_obf(0.4)), abs_tol=1e-6)


def test_sequential_rule_keeps_type_one_error_under_the_null():
    t = np.array([0.25, 0.5, 0.75, 1.0])
    rng = np.random.default_rng(10)
    paths = 200_000
    s = np.cumsum(rng.normal(0, 1, (paths, len(t))) * np.sqrt(np.diff(np.concatenate([[0], t]))), axis=1)
    z = s / np.sqrt(t)
    bounds = np.array(S.gs_boundaries(t)["boundaries"])
    rejected = (z >= bounds).any(axis=1).mean()
    assert abs(rejected - 0.025) < 0.0025  # MC se ~0.00035
    # decide() walks the same boundaries look by look, recording the alpha spent
    seen = [S.decide(k + 1, t[: k + 1], float(z[0, k])) for k in range(len(t))]
    assert [d["boundary_z"] for d in seen] == pytest.approx(bounds)
    assert seen[-1]["alpha_spent_cumulative"] == pytest.approx(0.025)
    assert all(d["decision"] == "continue" for d in seen[:-1] if d["z"] < d["boundary_z"])
    # a non-binding futility rule stops early without touching the efficacy boundaries
    assert S.decide(1, 0.25, -1.0, futility_z=0.0)["decision"] == "accept-futility"


# --- the CPU study's committed rows --------------------------------------------------------------------
def test_the_cpu_study_rows_give_the_known_numbers():
    res = pd.read_csv(STUDY)
    res = res[res["seed"].isin([0, 1, 2])]  # the first look's 36 cells (the extension adds seeds 3 on)
    rows = S.study_rows(res)
    assert len(rows) == 36 and (rows["n_test"] == 2000).all()
    m = S.fit_effects(res)
    assert m.main.estimate == pytest.approx(2.58, abs=0.01)
    assert 0.0 < m.main.ci_low < 1.2 and 4.0 < m.main.ci_high < 5.0
    sd = np.sqrt(m.strata["var"])
    assert sd["0.8"] < 1.0 < sd["-0.02"] < sd["0.3"]
    matched = S.fit_effects(res, "probe_acc_matched")
    assert matched.main.estimate == pytest.approx(1.74, abs=0.01) and matched.main.ci_low < 0 < matched.main.ci_high
    pg = S.pair_gains(rows)
    assert len(pg) == 18 and S.sign_flip_test(pg["gain"], pg["weight"], "two-sided").p == pytest.approx(0.013, abs=1e-3)
    pgm = S.pair_gains(S.study_rows(res, "probe_acc_matched"))
    assert S.sign_flip_test(pgm["gain"], pgm["weight"], "two-sided").p == pytest.approx(0.126, abs=1e-3)
    # pairing buys nothing here: the two archs' within-cell deviations are slightly anticorrelated
    dev = rows.assign(dev=rows["y"] - rows.groupby(["corr", "fraction", "rev"])["y"].transform("mean"))
    wide = dev.pivot_table(index=["corr", "fraction", "seed"], columns="rev", values="dev")
    assert -0.3 < np.corrcoef(wide[0], wide[1])[0, 1] < 0
    p = S.plan(res)
    assert {"probe_acc", "probe_acc_matched"} <= set(p.claims["column"]) and len(p.cells) == 6
    assert p.cells["share_of_main_var"].sum() == pytest.approx(1.0)
    assert "corr 0.8" in p.text
