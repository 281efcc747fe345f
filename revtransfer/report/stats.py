"""The statistics that judge a study's claims: a model over all pairs, a sign-flip permutation test,
a bootstrap that includes the test set's sampling error, Holm over the secondary claims, verdicts,
power and seeds needed, a group-sequential stopping rule, and a plan for the next seeds.

Pure functions on a results table (one row per finished (arch, corr, fraction, seed) cell); imports
only numpy, pandas, scipy, statsmodels and the standard library. Every effect is in accuracy points
(100 x the 0-1 accuracy in the table).

Vocabulary
----------
- cell: a (corr, fraction) combination; group: a (cell, arch); pair: a (corr, fraction, seed) with
  both archs, whose gain is RevViT - ViT.
- stratum: the rows that share one residual variance (by default one per correlation, see
  ``fit_effects``).

The model (``fit_effects``)
---------------------------
Accuracy y of a row is modelled as y = mu(cell, arch) + e, e ~ N(0, sigma^2(stratum)): fixed effects
for every (cell, arch) group (the saturated "cell x arch" model), residual variance pooled within
groups and separately per stratum (by default per correlation: the seed-to-seed spread is 1-4 points
at corr -0.02 and 0.3 but 0.3-0.7 at 0.8 in the CPU study, so one pooled variance would understate
the noise of one half of the design and overstate it in the other). It is fitted as feasible GLS
with ``statsmodels`` WLS, weights 1 / sigma^2(stratum) estimated from the within-group residuals and
the scale fixed at 1 (with a saturated mean model the weighted residual scale is exactly 1, so this
is the same estimate; the weights set the covariance of the group means, diag(sigma^2_k / n_g)).

Why this model and not another:
- Seeds are not paired: in the CPU study the within-cell deviations of the two archs correlate
  -0.17 (-0.27 width-matched), so a paired model buys nothing and costs half the residual df. The
  arch samples of a cell are treated as independent; the sign-flip test keeps the pairing (it is
  valid either way).
- Saturated rather than additive (cell + arch): the secondary claims are exactly cell x arch
  interactions; an additive model would push them into the residual and inflate it.
- Each claim is a linear contrast of the group means, with equal weight per cell. The primary
  effect is the RevViT - ViT gain averaged over the cells (the claim is "across correlations and
  fractions"), not an inverse-variance weighted common effect, which would let the quiet corr-0.8
  cells decide the answer and assume the homogeneity that the secondary claims question.
- MixedLM (random seed or cell effects) is not used: with one row per (group, seed) a seed random
  effect is not identifiable apart from the residual, cells are fixed design points, and MixedLM
  has no per-stratum residual variance.
- Degrees of freedom: Welch-Satterthwaite over the strata (each stratum variance has its own df),
  not the residual df of the WLS fit, which would treat the estimated weights as known.

Cohen's d of a contrast is its estimate over the pooled within-group SD (all strata, df-weighted).

Verdicts (``primary_verdict``, ``secondary_verdicts``)
------------------------------------------------------
``alpha`` is one-sided (default 0.025, so a verdict agrees with the 95% two-sided intervals shown and
with power computed for two-sided 0.05). ``sesoi`` is the smallest effect of interest, declared
before the data (default 0).
- reproduced: the effect is > 0 at one-sided alpha (for the primary claim, the model's t test, the
  sign-flip test and the bootstrap's (1 - 2 alpha) percentile interval must all agree);
- refuted: the effect is < sesoi at one-sided alpha (the model, the sign-flip test of the gains
  minus sesoi, and the bootstrap's upper bound all agree). With sesoi = 0 this is "RevViT is
  worse"; with sesoi > 0 it also covers "no gain of the size that matters" (an equivalence-type
  refutation). A gain significantly above 0 but significantly below sesoi stays "reproduced", with
  ``below_sesoi`` set;
- inconclusive: neither.
Secondary claims are judged on the model's contrasts, with Holm's step-down over the secondary
claims at alpha, separately for the "reproduced" p-values and for the "refuted" p-values.
(b1) "largest gain near corr 0.3" is an intersection-union test: gain(0.3) - gain(c) > 0 for every
other correlation c, so its p-value is the largest of the one-sided pairwise p-values (no
correction needed within an IUT); it is refuted when some other correlation's gain is
significantly larger (union of the pairwise reverse tests, Bonferroni within: m x the smallest
p). gain(c) is the RevViT - ViT gain at correlation c averaged over its fractions.
(b2) "larger gain with less data": gain(smallest fraction) - gain(largest fraction), each averaged
over the correlations.

Test-set sampling error (``test_noise``)
----------------------------------------
Every probe in a study is scored on the same test split (the probe's seed is fixed), so the
seed-to-seed spread does not contain the error of having sampled those n_test images. Its size is
bounded by the binomial variance p(1 - p) / n_test per group. Two ways to add it:
- "row" (the default, as issue 26 asks): each row's accuracy is redrawn as Binomial(n_test, acc) /
  n_test on top of the resampled seeds; in the power formulas the per-seed variance becomes
  sigma^2 + p(1 - p) / n_test. This shrinks with seeds.
- "cell": one binomial draw per (cell, arch) mean: the error of the shared test set, which more
  seeds do not shrink (a floor under every standard error).
Both treat the two archs' errors as independent, which overstates the error of a difference scored
on the same images (it is really the McNemar variance, which needs per-image agreement the results
table does not hold). "none" leaves it out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats
from statsmodels.regression.linear_model import WLS
from statsmodels.stats.multitest import multipletests

POINTS = 100.0
REVERSIBLE, BASELINE = "revvit_micro", "vit_micro"
CLAIM_CORR = 0.3
CLAIMS = {"a": "(a) RevViT >= ViT (Fig 4.2)", "b1": "(b1) largest gain near corr 0.3 (Fig 4.3)",
          "b2": "(b2) larger gain with less data (Fig 4.3)"}
TEST_NOISE = ("row", "cell", "none")
_VAR_FLOOR = 1e-12  # points^2: a stratum without spread still gets a finite weight


# --- the rows --------------------------------------------------------------------------------------
def study_rows(results: pd.DataFrame, column: str = "probe_acc", reversible: str = REVERSIBLE,
               baseline: str = BASELINE, n_test: int | None = None, min_x_acc: float | None = None,
               x_column: str = "pretrain_val_acc") -> pd.DataFrame:
    """The rows the statistics use: corr, fraction, seed, arch, rev (1 RevViT, 0 ViT), y (``column``
    in points), n_test; finished rows of the two archs only, and only complete pairs (both archs at
    the same corr, fraction, seed), so every analysis sees the same data.

    ``n_test``: the test-set size when the table has no ``probe_n_test`` column (or to override it).
    ``min_x_acc``: drop the rows whose ``x_column`` (pretraining accuracy on X) is below it, and so
    their pairs: the robustness check for cells that did not learn their task."""
    keys = ["corr", "fraction", "seed"]
    if results is None or results.empty or column not in results:
        return pd.DataFrame(columns=[*keys, "arch", "rev", "y", "n_test"])
    r = results[results["arch"].isin([reversible, baseline])].copy()
    if "status" in r:
        r = r[r["status"].eq("ok")]
    r["y"] = pd.to_numeric(r[column], errors="coerce") * POINTS
    r = r[r["y"].notna()]
    if min_x_acc is not None and x_column in r:
        r = r[~(pd.to_numeric(r[x_column], errors="coerce") < min_x_acc)]
    if n_test is not None:
        r["n_test"] = int(n_test)
    elif "probe_n_test" in r and r["probe_n_test"].notna().all():
        r["n_test"] = pd.to_numeric(r["probe_n_test"]).astype(int)
    else:
        r["n_test"] = np.nan
    for k in keys:
        r[k] = pd.to_numeric(r[k])
    r = r.drop_duplicates([*keys, "arch"], keep="last")
    both = r.groupby(keys)["arch"].transform("nunique") == 2
    r = r[both].assign(rev=lambda d: (d["arch"] == reversible).astype(int))
    return r[[*keys, "arch", "rev", "y", "n_test"]].sort_values([*keys, "rev"]).reset_index(drop=True)


def pair_gains(rows: pd.DataFrame) -> pd.DataFrame:
    """corr, fraction, seed, gain (RevViT - ViT, points) and weight per pair, from ``study_rows``.
    weight = 1 / (cells x pairs in the cell), so sum(weight * gain) is the gain averaged over cells
    with equal weight per cell, the primary contrast."""
    keys = ["corr", "fraction", "seed"]
    if rows.empty:
        return pd.DataFrame(columns=[*keys, "gain", "weight"])
    r = rows.sort_values([*keys, "rev"])  # complete pairs: (ViT, RevViT) alternate
    y = r["y"].to_numpy(dtype=float).reshape(-1, 2)
    g = r.iloc[::2][keys].reset_index(drop=True).assign(gain=y[:, 1] - y[:, 0])
    cell = g["corr"].astype(str) + "|" + g["fraction"].astype(str)
    per_cell = cell.map(cell.value_counts()).to_numpy(dtype=float)
    return g.assign(weight=1.0 / (cell.nunique() * per_cell))


# --- the model ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Contrast:
    """One linear contrast of the group means, in points, with its 95% (``level``) t interval."""
    name: str
    estimate: float
    se: float
    df: float
    ci_low: float
    ci_high: float
    level: float
    t: float
    p_two_sided: float
    p_greater: float  # H0: effect <= 0
    p_less: float     # H0: effect >= 0
    d: float          # Cohen's d: estimate / pooled within-group SD

    def p_below(self, margin: float) -> float:
        """One-sided p of H0: effect >= margin (small when the effect is credibly below margin)."""
        if not self.se > 0:
            return float(self.estimate >= margin)
        return float(stats.t.cdf((self.estimate - margin) / self.se, self.df))

    def bound(self, alpha: float, side: str) -> float:
        """One-sided (1 - alpha) confidence bound: side "lower" or "upper"."""
        q = stats.t.ppf(1 - alpha, self.df) * self.se
        return self.estimate - q if side == "lower" else self.estimate + q

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class EffectModel:
    """The fitted fixed-effects model (see the module docstring). ``groups``: one row per (cell,
    arch): corr, fraction, rev, stratum, n, mean, var (raw, ddof 1), var_model (the stratum's pooled
    variance), n_test, tau2 (binomial test-set variance of one accuracy, points^2). ``strata``: var,
    df per stratum. ``wls``: the statsmodels results (params are the group means)."""
    column: str
    groups: pd.DataFrame
    strata: pd.DataFrame
    wls: object
    sd_pooled: float
    level: float = 0.95
    claim_corr: float = CLAIM_CORR
    notes: list[str] = field(default_factory=list)
    _sidx: np.ndarray | None = field(default=None, repr=False)  # stratum index of each group
    _key_cache: np.ndarray | None = field(default=None, repr=False)
    _col_cache: dict = field(default_factory=dict, repr=False)

    def stratum_index(self) -> np.ndarray:
        if self._sidx is None:
            self._sidx = pd.factorize(self.groups["stratum"], sort=True)[0]
        return self._sidx

    # contrast vectors over the groups -----------------------------------------------------------
    def _keys(self) -> np.ndarray:
        """(corr, fraction, rev) of each group as a float array (cached: pandas selection is slow)."""
        if self._key_cache is None:
            self._key_cache = np.column_stack([self.groups[k].to_numpy(dtype=float)
                                               for k in ("corr", "fraction", "rev")])
        return self._key_cache

    def _sign(self) -> np.ndarray:
        return np.where(self._keys()[:, 2] == 1, 1.0, -1.0)

    def _cells(self) -> np.ndarray:
        return self._keys()[:, :2]

    def n_cells(self) -> int:
        return len(np.unique(self._cells(), axis=0))

    def weights_main(self) -> np.ndarray:
        return self._sign() / self.n_cells()

    def weights_gain_at(self, by: str, value: float) -> np.ndarray:
        """The gain at ``by`` == value (corr or fraction), averaged over the other factor's cells."""
        at = np.isclose(self._keys()[:, {"corr": 0, "fraction": 1}[by]], value)
        n = len(np.unique(self._cells()[at], axis=0))
        return np.where(at, self._sign() / max(n, 1), 0.0)

    def corrs(self) -> list[float]:
        return sorted(set(self._keys()[:, 0].tolist()))

    def fractions(self) -> list[float]:
        return sorted(set(self._keys()[:, 1].tolist()))

    def b1_weights(self) -> dict[str, np.ndarray]:
        """gain(claim_corr) - gain(c) for each other correlation c (empty when not testable)."""
        corrs = self.corrs()
        if not any(np.isclose(corrs, self.claim_corr)) or len(corrs) < 2:
            return {}
        w0 = self.weights_gain_at("corr", self.claim_corr)
        return {f"gain({self.claim_corr:g}) - gain({c:g})": w0 - self.weights_gain_at("corr", c)
                for c in corrs if not np.isclose(c, self.claim_corr)}

    def b2_weights(self) -> np.ndarray | None:
        fr = self.fractions()
        if len(fr) < 2:
            return None
        return self.weights_gain_at("fraction", fr[0]) - self.weights_gain_at("fraction", fr[-1])

    def claim_weights(self) -> dict[str, np.ndarray]:
        """Every contrast the claims use, by name: "a", "b1: ..." (one per other corr), "b2"."""
        out = {"a": self.weights_main()}
        out.update({f"b1: {k}": w for k, w in self.b1_weights().items()})
        b2 = self.b2_weights()
        if b2 is not None:
            out["b2"] = b2
        return out

    # inference ------------------------------------------------------------------------------------
    def contrast(self, weights: np.ndarray, name: str = "contrast") -> Contrast:
        """The contrast sum(weights * group means), with Satterthwaite df."""
        c = np.asarray(weights, dtype=float)
        est = float(c @ np.asarray(self.wls.params))
        var = float(c @ np.asarray(self.wls.cov_params()) @ c)
        se = math.sqrt(max(var, 0.0))
        df = self._satterthwaite(c)
        return _make_contrast(name, est, se, df, self.level, self.sd_pooled)

    def col(self, name: str) -> np.ndarray:
        """A column of ``groups`` as a float array (cached)."""
        if name not in self._col_cache:
            self._col_cache[name] = self.groups[name].to_numpy(dtype=float)
        return self._col_cache[name]

    def _satterthwaite(self, c: np.ndarray) -> float:
        k = len(self.strata)
        part = np.bincount(self.stratum_index(), c ** 2 / self.col("n") * self.col("var_model"), k)
        dfs = self.strata["df"].to_numpy(dtype=float)
        num, den = part.sum() ** 2, float(np.sum(np.where(part > 0, part ** 2 / dfs, 0.0)))
        return float(num / den) if den > 0 else float(dfs.sum())

    @property
    def main(self) -> Contrast:
        return self.contrast(self.weights_main(), "a: mean gain over cells")

    def b1(self) -> list[Contrast]:
        return [self.contrast(w, k) for k, w in self.b1_weights().items()]

    def b2(self) -> Contrast | None:
        w = self.b2_weights()
        if w is None:
            return None
        fr = self.fractions()
        return self.contrast(w, f"gain({fr[0]:g}) - gain({fr[-1]:g})")

    def cell_gains(self) -> pd.DataFrame:
        """corr, fraction, gain, se, ci_low, ci_high, df per cell (the model's cell contrasts)."""
        out = []
        for (corr, frac), _ in self.groups.groupby(["corr", "fraction"], sort=True):
            at = (self.groups["corr"].to_numpy() == corr) & (self.groups["fraction"].to_numpy() == frac)
            c = self.contrast(np.where(at, self._sign(), 0.0), f"corr {corr:g} fraction {frac:g}")
            out.append({"corr": corr, "fraction": frac, "gain": c.estimate, "se": c.se, "ci_low": c.ci_low,
                        "ci_high": c.ci_high, "df": c.df})
        return pd.DataFrame(out)


def _make_contrast(name, est, se, df, level, sd) -> Contrast:
    if se > 0 and df > 0:
        t = est / se
        q = stats.t.ppf(0.5 + level / 2, df)
        return Contrast(name, est, se, df, est - q * se, est + q * se, level, t,
                        float(2 * stats.t.sf(abs(t), df)), float(stats.t.sf(t, df)), float(stats.t.cdf(t, df)),
                        est / sd if sd > 0 else math.nan)
    nan = math.nan
    return Contrast(name, est, se, df, nan, nan, level, nan, nan, nan, nan, est / sd if sd > 0 else nan)


def fit_effects(results: pd.DataFrame, column: str = "probe_acc", variance_by: Sequence[str] | None = ("corr",),
                level: float = 0.95, claim_corr: float = CLAIM_CORR, rows: pd.DataFrame | None = None,
                **row_kwargs) -> EffectModel:
    """Fit the fixed-effects model of ``column`` (see the module docstring) over every complete pair.

    ``variance_by``: the columns whose values each get their own residual variance (default per
    correlation; ``None``: one pooled variance; ("corr", "fraction"): one per cell). A stratum whose
    groups have one seed each (no df) borrows the variance pooled over the other strata.
    ``rows``: already prepared ``study_rows`` (else they are made from ``results`` with
    ``row_kwargs``: reversible, baseline, n_test, min_x_acc, x_column)."""
    rows = study_rows(results, column, **row_kwargs) if rows is None else rows
    if rows.empty:
        raise ValueError(f"no complete (RevViT, ViT) pairs with a value in {column!r}")
    by = list(variance_by or [])
    gid, first, keys = _group_index(rows)
    y = rows["y"].to_numpy(dtype=float)
    n = np.bincount(gid).astype(float)
    mean = np.bincount(gid, y) / n
    ss = np.bincount(gid, (y - mean[gid]) ** 2)
    labels = ["|".join(f"{v:g}" if isinstance(v, (float, np.floating)) else str(v) for v in t)
              for t in rows[by].to_numpy()[first]] if by else ["all"] * len(first)
    strata_names, sidx = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    k = len(strata_names)
    s_ss, s_df = np.bincount(sidx, ss, k), np.bincount(sidx, n - 1, k)
    total_df = float(s_df.sum())
    if total_df <= 0:
        raise ValueError("no residual df: every (cell, arch) has one seed; the claims need >= 2 seeds")
    notes = []
    pooled = float(s_ss.sum() / total_df)
    s_var = np.where(s_df > 0, s_ss / np.maximum(s_df, 1), pooled)
    if (s_df <= 0).any():
        notes.append(f"strata without df borrow the pooled variance: {', '.join(strata_names[s_df <= 0])}")
        s_df = np.where(s_df > 0, s_df, total_df)
    s_var = np.maximum(s_var, _VAR_FLOOR)
    n_test = rows["n_test"].to_numpy(dtype=float)
    groups = pd.DataFrame({
        "corr": keys[:, 0], "fraction": keys[:, 1], "rev": keys[:, 2].astype(int), "stratum": strata_names[sidx],
        "n": n.astype(int), "mean": mean, "var": np.where(n > 1, ss / np.maximum(n - 1, 1), np.nan),
        "var_model": s_var[sidx], "n_test": [float(np.median(n_test[gid == j])) for j in range(len(n))]})
    p = np.clip(groups["mean"].to_numpy() / POINTS, 0, 1)
    groups["tau2"] = POINTS ** 2 * p * (1 - p) / groups["n_test"].to_numpy()  # nan when n_test is unknown

    # the WLS fit: one dummy per group, weights 1 / stratum variance, scale fixed at 1
    X = np.zeros((len(rows), len(groups)))
    X[np.arange(len(rows)), gid] = 1.0
    wls = WLS(y, X, weights=1.0 / s_var[sidx][gid]).fit(cov_type="fixed scale", cov_kwds={"scale": 1.0})
    strata = pd.DataFrame({"var": s_var, "df": s_df}, index=pd.Index(strata_names, name="stratum"))
    sd = math.sqrt(float((s_var * s_df).sum() / s_df.sum()))
    return EffectModel(column=column, groups=groups, strata=strata, wls=wls, sd_pooled=sd, level=level,
                       claim_corr=claim_corr, notes=notes, _sidx=sidx)


def _group_index(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group id per row, first row of each group, the groups' (corr, fraction, rev)), groups sorted
    by corr, fraction, rev."""
    keys = rows[["corr", "fraction", "rev"]].to_numpy(dtype=float)
    uniq, first, gid = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return gid.ravel(), first, uniq


# --- the sign-flip permutation test --------------------------------------------------------------
@dataclass(frozen=True)
class SignFlip:
    statistic: float  # sum(weight * (gain - null)): the weighted mean gain minus ``null``, points
    p: float
    alternative: str
    n_pairs: int
    exact: bool
    n_resamples: int  # sign vectors evaluated (2^n_pairs when exact)


def sign_flip_test(gains: Iterable[float], weights: Iterable[float] | None = None, alternative: str = "greater",
                   null: float = 0.0, max_exact_pairs: int = 20, n_resamples: int = 20_000,
                   seed: int = 0) -> SignFlip:
    """Sign-flip (randomisation) test that the pairs' gains are symmetric about ``null``.

    Statistic: sum(w_i (d_i - null)), with ``weights`` w (default 1 / n; ``pair_gains`` gives equal
    weight per cell). Exact over all 2^n sign vectors when n <= ``max_exact_pairs`` (2^20 ~ 1e6
    vectors, evaluated in chunks; cheap, so the 18 pairs of the CPU study get an exact p rather than
    a Monte Carlo one), else ``n_resamples`` seeded random sign vectors with p = (1 + hits) / (1 +
    n_resamples). ``alternative``: "greater", "less" or "two-sided"."""
    d = np.asarray(list(gains), dtype=float) - null
    n = len(d)
    w = np.full(n, 1.0 / max(n, 1)) if weights is None else np.asarray(list(weights), dtype=float)
    if n == 0:
        return SignFlip(math.nan, math.nan, alternative, 0, True, 0)
    v = w * d
    obs = float(v.sum())
    tol = 1e-9 * max(1.0, float(np.abs(v).sum()))

    def hits(stat):
        if alternative == "greater":
            return int(np.count_nonzero(stat >= obs - tol))
        if alternative == "less":
            return int(np.count_nonzero(stat <= obs + tol))
        if alternative == "two-sided":
            return int(np.count_nonzero(np.abs(stat) >= abs(obs) - tol))
        raise ValueError(f"alternative must be greater, less or two-sided, not {alternative!r}")

    if n <= max_exact_pairs:
        total, count, chunk = 1 << n, 0, 1 << 16
        bits = np.arange(n, dtype=np.int64)
        for start in range(0, total, chunk):
            k = np.arange(start, min(start + chunk, total), dtype=np.int64)
            signs = 1.0 - 2.0 * ((k[:, None] >> bits) & 1)
            count += hits(signs @ v)
        return SignFlip(obs, count / total, alternative, n, True, total)
    rng = np.random.default_rng(seed)
    count, done = 0, 0
    while done < n_resamples:
        m = min(1 << 14, n_resamples - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(m, n))
        count += hits(signs @ v)
        done += m
    return SignFlip(obs, (1 + count) / (1 + n_resamples), alternative, n, False, n_resamples)


# --- the bootstrap over seeds and test images ----------------------------------------------------
@dataclass(frozen=True)
class Bootstrap:
    level: float
    test_noise: str
    n_boot: int
    estimates: dict  # contrast name -> point estimate (points)
    ci: dict         # contrast name -> (low, high) percentile interval (points)
    se: dict         # contrast name -> bootstrap SD (points)


def bootstrap_contrasts(model: EffectModel, rows: pd.DataFrame, weights: dict[str, np.ndarray] | None = None,
                        n_boot: int = 4000, level: float = 0.95, test_noise: str = "row", seed: int = 0,
                        inflate: bool = True) -> Bootstrap:
    """Percentile intervals of the model's contrasts (default: every claim's, ``claim_weights``) from a
    two-level bootstrap: seeds resampled with replacement within each (cell, arch), then the test
    images, parametrically (``test_noise``, see the module docstring: "row" redraws each resampled
    accuracy as Binomial(n_test, acc) / n_test; "cell" redraws each group mean; "none").

    ``inflate``: scale resampled deviations from the group mean by sqrt(n / (n - 1)), so a group's
    bootstrap variance matches its unbiased sample variance (with 3 seeds the plain bootstrap
    understates the variance by a third; Davison & Hinkley 1997, sec. 3.3)."""
    if test_noise not in TEST_NOISE:
        raise ValueError(f"test_noise must be one of {TEST_NOISE}")
    weights = model.claim_weights() if weights is None else weights
    g = model.groups
    rng = np.random.default_rng(seed)
    means = np.empty((n_boot, len(g)))
    gid, _, keys = _group_index(rows)
    if len(keys) != len(g) or not np.allclose(keys, model._keys()):
        raise ValueError("rows do not match the model's groups")
    y = rows["y"].to_numpy(dtype=float)
    for j, n_test in enumerate(g["n_test"].to_numpy(dtype=float)):
        vals = y[gid == j]
        n, m = len(vals), vals.mean()
        x = vals[rng.integers(0, n, size=(n_boot, n))]
        if inflate and n > 1:
            x = m + (x - m) * math.sqrt(n / (n - 1))
        if test_noise != "none" and not np.isfinite(n_test):
            raise ValueError("test_noise needs n_test: a probe_n_test column or the n_test argument")
        if test_noise == "row":
            x = rng.binomial(int(n_test), np.clip(x / POINTS, 0, 1)) / n_test * POINTS
        mb = x.mean(axis=1)
        if test_noise == "cell":
            mb = rng.binomial(int(n_test), np.clip(mb / POINTS, 0, 1)) / n_test * POINTS
        means[:, j] = mb
    names = list(weights)
    C = np.array([weights[k] for k in names])
    boot = means @ C.T
    est = C @ g["mean"].to_numpy(dtype=float)
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return Bootstrap(level, test_noise, n_boot, dict(zip(names, map(float, est))),
                     {k: (float(a), float(b)) for k, a, b in zip(names, lo, hi)},
                     dict(zip(names, map(float, boot.std(axis=0, ddof=1)))))


# --- multiplicity and verdicts -------------------------------------------------------------------
def holm(pvalues: Sequence[float], alpha: float = 0.025) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down over a family: (reject, adjusted p). nan p-values are left out (never rejected)."""
    p = np.asarray(pvalues, dtype=float)
    reject, adj = np.zeros(len(p), bool), np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        r, a, _, _ = multipletests(p[ok], alpha=alpha, method="holm")
        reject[ok], adj[ok] = r, a
    return reject, adj


def primary_verdict(contrast: Contrast, alpha: float = 0.025, sesoi: float = 0.0,
                    sign_flip_greater: float | None = None, sign_flip_below: float | None = None,
                    boot_ci: tuple[float, float] | None = None) -> dict:
    """reproduced / refuted / inconclusive for the primary claim (rules in the module docstring).

    ``sign_flip_greater``: the sign-flip p of H0 "gain <= 0"; ``sign_flip_below``: of "gain >= sesoi"
    (the test of the gains minus sesoi, alternative "less"); ``boot_ci``: the bootstrap percentile
    interval at level 1 - 2 alpha. Each one given must agree for a verdict."""
    if not math.isfinite(contrast.p_greater):
        return {"verdict": "not testable", "p_support": math.nan, "p_refute": math.nan, "below_sesoi": False}
    p_support, p_refute = contrast.p_greater, contrast.p_below(sesoi)
    support = [p_support < alpha]
    refute = [p_refute < alpha]
    if sign_flip_greater is not None:
        support.append(sign_flip_greater < alpha)
    if sign_flip_below is not None:
        refute.append(sign_flip_below < alpha)
    if boot_ci is not None:
        support.append(boot_ci[0] > 0)
        refute.append(boot_ci[1] < sesoi)
    reproduced, refuted = all(support), all(refute)
    verdict = "reproduced" if reproduced else "refuted" if refuted else "inconclusive"
    return {"verdict": verdict, "p_support": p_support, "p_refute": p_refute,
            "below_sesoi": bool(reproduced and refuted and sesoi > 0),
            "lower_bound": contrast.bound(alpha, "lower"), "upper_bound": contrast.bound(alpha, "upper")}


def b1_pvalues(pairwise: Sequence[Contrast], sesoi: float = 0.0) -> tuple[float, float]:
    """(p_support, p_refute) of "the largest gain at the claimed corr": intersection-union over the
    pairwise contrasts gain(0.3) - gain(c) (p = the largest one-sided p), refuted by a union of the
    reverse tests (Bonferroni: m x the smallest p of H0 "gain(0.3) - gain(c) >= sesoi")."""
    if not pairwise:
        return math.nan, math.nan
    p_support = max(c.p_greater for c in pairwise)
    p_refute = min(1.0, len(pairwise) * min(c.p_below(sesoi) for c in pairwise))
    return float(p_support), float(p_refute)


def secondary_verdicts(pvalues: dict[str, tuple[float, float]], alpha: float = 0.025) -> dict[str, dict]:
    """Verdicts for the secondary claims from their (p_support, p_refute), Holm-adjusted over the
    claims, separately for the support and the refute p-values; nan p: "not testable"."""
    names = list(pvalues)
    sup = [pvalues[k][0] for k in names]
    ref = [pvalues[k][1] for k in names]
    r_sup, a_sup = holm(sup, alpha)
    r_ref, a_ref = holm(ref, alpha)
    out = {}
    for i, k in enumerate(names):
        if not math.isfinite(sup[i]):
            out[k] = {"verdict": "not testable", "p_support": math.nan, "p_refute": math.nan,
                      "p_support_holm": math.nan, "p_refute_holm": math.nan}
            continue
        v = "reproduced" if r_sup[i] else "refuted" if r_ref[i] else "inconclusive"
        out[k] = {"verdict": v, "p_support": sup[i], "p_refute": ref[i], "p_support_holm": float(a_sup[i]),
                  "p_refute_holm": float(a_ref[i]), "below_sesoi": bool(r_sup[i] and r_ref[i])}
    return out


# --- power and seeds needed ----------------------------------------------------------------------
def _contrast_var(model: EffectModel, c: np.ndarray, n: np.ndarray | float, test_noise: str) -> tuple[float, float]:
    """(variance, Satterthwaite df) of contrast ``c`` with n seeds per group (array or scalar),
    from the model's stratum variances plus the binomial test-set variance per ``test_noise``."""
    g = model.groups
    n = np.broadcast_to(np.asarray(n, dtype=float), (len(g),))
    s2 = model.col("var_model")
    tau2 = np.nan_to_num(model.col("tau2")) if test_noise != "none" else np.zeros(len(g))
    if test_noise != "none" and not np.isfinite(model.col("tau2")).all():
        raise ValueError("test_noise needs n_test: a probe_n_test column or the n_test argument")
    c2 = c ** 2
    sidx, k = model.stratum_index(), len(model.strata)
    part = np.bincount(sidx, c2 * s2 / n, k)
    df_k = np.bincount(sidx, n - 1, k)  # the stratum variance is pooled over all its groups
    if test_noise == "row":
        known = float(np.sum(c2 * tau2 / n))
    elif test_noise == "cell":
        known = float(np.sum(c2 * tau2))
    else:
        known = 0.0
    v = float(part.sum()) + known
    den = float(np.sum(np.where((part > 0) & (df_k > 0), part ** 2 / np.maximum(df_k, 1e-12), 0.0)))
    df = v ** 2 / den if den > 0 else math.inf
    return v, df


def _contrast_var_now(model: EffectModel, c: np.ndarray, test_noise: str) -> tuple[float, float]:
    """``_contrast_var`` at the present seeds of each group."""
    return _contrast_var(model, c, model.groups["n"].to_numpy(dtype=float), test_noise)


def contrast_se(model: EffectModel, weights: np.ndarray, test_noise: str = "row", n=None) -> tuple[float, float]:
    """(standard error, Satterthwaite df) of a contrast as the power formulas see it: the stratum
    variances plus the test-set variance per ``test_noise``, at ``n`` seeds per group (None: now)."""
    c = np.asarray(weights, dtype=float)
    v, df = _contrast_var_now(model, c, test_noise) if n is None else _contrast_var(model, c, n, test_noise)
    return math.sqrt(v), df


def power_t(effect: float, se: float, df: float, alpha: float = 0.05) -> float:
    """Power of a two-sided level-alpha t test of a contrast with standard error ``se`` and ``df``
    when its true value is ``effect`` (noncentral t)."""
    if not se > 0:
        return 1.0 if effect != 0 else alpha
    q = stats.t.ppf(1 - alpha / 2, df) if df < 1e6 else stats.norm.isf(alpha / 2)
    nc = effect / se
    power = stats.nct.sf(q, df, nc) + stats.nct.cdf(-q, df, nc) if df < 1e6 and abs(nc) < 30 else math.nan
    if not math.isfinite(power):  # nct loses precision far in the tail: the normal approximation is exact enough
        power = stats.norm.sf(q - nc) + stats.norm.cdf(-q - nc)
    return float(power)


def power_iut(effect: float, cov: np.ndarray, df: float, alpha: float = 0.05) -> float:
    """Power of an intersection-union test (every component > 0, each one-sided at alpha / 2) when
    every component's true value is ``effect``; normal approximation with t critical values, the
    components' correlation from ``cov``."""
    cov = np.atleast_2d(cov)
    se = np.sqrt(np.diag(cov))
    if len(se) == 1:
        return power_t(effect, float(se[0]), df, alpha)
    q = stats.t.ppf(1 - alpha / 2, min(df, 1e7))
    corr = cov / np.outer(se, se)
    # P(all Z_j > q - effect / se_j) = P(all -Z_j < effect / se_j - q)
    mvn = stats.multivariate_normal(mean=np.zeros(len(se)), cov=corr, allow_singular=True)
    try:
        return float(mvn.cdf(effect / se - q, rng=np.random.default_rng(0)))  # seeded: reproducible
    except TypeError:  # scipy < 1.15 has no rng argument here
        return float(mvn.cdf(effect / se - q))


def min_detectable_effect(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true effect a two-sided level-alpha t test (se, df) detects with ``power``."""
    if not (se > 0 and df > 0):
        return math.nan
    return float(optimize.brentq(lambda e: power_t(e, se, df, alpha) - power, 0.0, 50 * se + 1e-9, xtol=1e-10))


def _claim_power(model: EffectModel, claim: str, effect: float, n, alpha: float, test_noise: str) -> float:
    """Power for ``claim`` ("a", "b1", "b2") at ``effect`` points with n seeds per group (None: now)."""
    if claim == "b1":
        ws = list(model.b1_weights().values())
        if not ws:
            return math.nan
        W = np.array(ws)
        nn = model.groups["n"].to_numpy(dtype=float) if n is None else np.full(len(model.groups), float(n))
        cov, dfs = _cov_matrix(model, W, nn, test_noise)
        return power_iut(effect, cov, min(dfs), alpha)
    w = model.weights_main() if claim == "a" else model.b2_weights()
    if w is None:
        return math.nan
    v, df = _contrast_var_now(model, w, test_noise) if n is None else _contrast_var(model, w, n, test_noise)
    return power_t(effect, math.sqrt(v), df, alpha)


def claim_power(model: EffectModel, claim: str, effect: float, alpha: float = 0.05, test_noise: str = "row",
                n: float | None = None) -> float:
    """Power of ``claim`` ("a", "b1", "b2") at a true effect of ``effect`` points (two-sided ``alpha``)
    with ``n`` seeds per group (None: the present seeds)."""
    return _claim_power(model, claim, effect, n, alpha, test_noise)


def _cov_matrix(model, W, n, test_noise):
    g = model.groups
    s2 = g["var_model"].to_numpy(dtype=float)
    tau2 = np.nan_to_num(g["tau2"].to_numpy(dtype=float))
    per = s2 / n + (tau2 / n if test_noise == "row" else tau2 if test_noise == "cell" else 0.0)
    cov = (W * per) @ W.T
    dfs = [(_contrast_var(model, w, n, test_noise)[1]) for w in W]
    return cov, dfs


def claim_alpha(claim: str, alpha: float, n_secondary: int) -> float:
    """The two-sided alpha a claim's power is computed at: alpha for the primary, alpha / m for the
    m secondary claims (Holm's first step, the worst case)."""
    return alpha if claim == "a" else alpha / max(n_secondary, 1)


def seeds_needed(model: EffectModel, claim: str, effect: float, alpha: float = 0.05, power: float = 0.8,
                 test_noise: str = "row", n_max: int = 2000) -> float:
    """Seeds per (cell, arch) for ``claim`` to reach ``power`` at a true effect of ``effect`` points
    (two-sided ``alpha``), from the model's variances; inf when ``n_max`` seeds do not (e.g. the
    test-set floor with test_noise "cell")."""
    lo, hi = 2, n_max
    f = lambda n: _claim_power(model, claim, effect, n, alpha, test_noise)  # noqa: E731
    if not f(hi) >= power:
        return math.inf
    if f(lo) >= power:
        return float(lo)
    while hi - lo > 1:  # power is monotone in n
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if f(mid) >= power else (mid, hi)
    return float(hi)


def claim_mde(model: EffectModel, claim: str, alpha: float = 0.05, power: float = 0.8, test_noise: str = "row",
              n: float | None = None) -> float:
    """The smallest true effect (points) ``claim`` detects with ``power`` at the present seeds (or
    ``n`` seeds per group)."""
    if claim == "b1" and not model.b1_weights():
        return math.nan
    if claim == "b2" and model.b2_weights() is None:
        return math.nan
    f = lambda e: _claim_power(model, claim, e, n, alpha, test_noise) - power  # noqa: E731
    hi = 1.0
    while f(hi) < 0 and hi < 1e4:
        hi *= 2
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-6)) if hi < 1e4 else math.inf


def power_table(model: EffectModel, effects: Sequence[float] = (1.0, 2.0), alpha: float = 0.05,
                power: float = 0.8, test_noise: str = "row") -> pd.DataFrame:
    """One row per claim: estimate, se and df now (incl. the test-set variance), the alpha its power
    uses, mde (smallest effect detected with ``power`` at the present seeds), power now at each of
    ``effects`` and the seeds per (cell, arch) needed to detect each of ``effects`` points."""
    n_sec = int(bool(model.b1_weights())) + int(model.b2_weights() is not None)
    rows = []
    for claim in ("a", "b1", "b2"):
        a = claim_alpha(claim, alpha, n_sec)
        if claim == "b1":
            cs = model.b1()
            if not cs:
                continue
            worst = max(cs, key=lambda c: c.p_greater)
            est = worst.estimate
            v, df = _contrast_var_now(model, model.b1_weights()[worst.name], test_noise)
        else:
            w = model.weights_main() if claim == "a" else model.b2_weights()
            if w is None:
                continue
            est = float(w @ model.groups["mean"].to_numpy())
            v, df = _contrast_var_now(model, w, test_noise)
        row = {"claim": CLAIMS[claim], "estimate": est, "se": math.sqrt(v), "df": df, "alpha": a,
               "seeds_now": float(model.groups["n"].median()),
               "mde": claim_mde(model, claim, a, power, test_noise)}
        for e in effects:
            row[f"power_at_{e:g}"] = _claim_power(model, claim, e, None, a, test_noise)
            row[f"seeds_for_{e:g}"] = seeds_needed(model, claim, e, a, power, test_noise)
        rows.append(row)
    return pd.DataFrame(rows)


# --- group-sequential stopping rule --------------------------------------------------------------
def spending_obf(t, alpha: float = 0.025):
    """Lan-DeMets O'Brien-Fleming-type alpha spending (one-sided): 2 - 2 Phi(z_{1-alpha/2} / sqrt(t))."""
    t = np.clip(np.asarray(t, dtype=float), 1e-12, 1.0)
    return 2 * stats.norm.sf(stats.norm.isf(alpha / 2) / np.sqrt(t))


def spending_pocock(t, alpha: float = 0.025):
    """Lan-DeMets Pocock-type alpha spending: alpha ln(1 + (e - 1) t)."""
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    return alpha * np.log1p((math.e - 1) * t)


SPENDING = {"obf": spending_obf, "pocock": spending_pocock}


def gs_power(info_fractions: Sequence[float], boundaries: Sequence[float], drift: float, n_paths: int = 40_000,
             seed: int = 0) -> float:
    """Probability that a group-sequential z crosses one of ``boundaries`` at the given information
    fractions when the z at full information is N(``drift``, 1) (Brownian motion with drift; seeded
    Monte Carlo)."""
    t = np.asarray(info_fractions, dtype=float)
    rng = np.random.default_rng(seed)
    inc = rng.normal(size=(n_paths, len(t))) * np.sqrt(np.diff(np.concatenate([[0.0], t])))
    w = np.cumsum(inc, axis=1) + drift * t
    z = w / np.sqrt(t)
    return float(np.mean((z >= np.asarray(boundaries, dtype=float)).any(axis=1)))


def gs_boundaries(info_fractions: Sequence[float], alpha: float = 0.025, spending: str = "obf",
                  final: bool = False, grid: int = 801) -> dict:
    """One-sided efficacy boundaries (z) for looks at the given information fractions (increasing).

    The z statistics at information fractions t_1 < ... < t_k are those of a Brownian motion, corr
    sqrt(t_i / t_j); boundary c_k spends alpha(t_k) - alpha(t_{k-1}):
    P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) = that increment, by the recursive numerical
    integration of Armitage, McPherson & Rowe (1969) on the score scale S = Z sqrt(t) (a grid of
    ``grid`` points; Simpson's rule). ``final``: the last look is the final one, so it spends all
    that is left (alpha(1)) even when its fraction is below 1. Returns boundaries, cumulative
    alpha spent and the increments."""
    t = np.asarray(info_fractions, dtype=float)
    if t.ndim != 1 or len(t) == 0 or (t <= 0).any() or (np.diff(t) <= 0).any():
        raise ValueError("information fractions must be positive and increasing")
    f_spend = SPENDING[spending]
    cum = np.array([f_spend(min(x, 1.0), alpha) for x in t], dtype=float)
    if final:
        cum[-1] = alpha
    inc = np.diff(np.concatenate([[0.0], cum]))
    bounds = []
    # look 1
    c1 = stats.norm.isf(inc[0]) if inc[0] > 0 else np.inf
    bounds.append(float(c1))
    n = grid if grid % 2 else grid + 1
    s = np.linspace(-10 * math.sqrt(t[0]), c1 * math.sqrt(t[0]), n) if np.isfinite(c1) else \
        np.linspace(-10 * math.sqrt(t[0]), 10 * math.sqrt(t[0]), n)
    dens = stats.norm.pdf(s, scale=math.sqrt(t[0]))  # sub-density of S_1 on the continuation region
    for k in range(1, len(t)):
        dt = t[k] - t[k - 1]
        wts = _simpson_weights(s) * dens

        def cross(c, wts=wts, s=s, tk=t[k], dt=dt):
            return float(wts @ stats.norm.sf((c * math.sqrt(tk) - s) / math.sqrt(dt)))

        if inc[k] <= 0:
            ck = np.inf
        else:
            lo, hi, target = -10.0, 40.0, inc[k]
            ck = (optimize.brentq(lambda c, a=target: cross(c) - a, lo, hi, xtol=1e-10) if cross(lo) > target
                  else -np.inf)
        bounds.append(float(ck))
        top = ck * math.sqrt(t[k]) if np.isfinite(ck) else 10 * math.sqrt(t[k])
        s_new = np.linspace(-10 * math.sqrt(t[k]), top, n)
        dens = (stats.norm.pdf((s_new[:, None] - s[None, :]) / math.sqrt(dt)) / math.sqrt(dt)) @ wts
        s = s_new
    return {"info_fractions": t.tolist(), "boundaries": bounds, "alpha_spent_cumulative": cum.tolist(),
            "alpha_spent": inc.tolist(), "alpha": alpha, "spending": spending}


def _simpson_weights(x: np.ndarray) -> np.ndarray:
    n = len(x)
    h = (x[-1] - x[0]) / (n - 1)
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return w * h / 3


def z_from_t(t_stat: float, df: float) -> float:
    """The z with the same one-sided p as a t statistic with df (for a group-sequential look)."""
    return float(stats.norm.isf(stats.t.sf(t_stat, df)))


def decide(look_index: int, info_fraction_so_far: Sequence[float] | float, z_stat: float, alpha: float = 0.025,
           spending: str = "obf", final: bool | None = None, futility_z: float | None = None) -> dict:
    """The group-sequential decision at look ``look_index`` (1-based).

    ``info_fraction_so_far``: the information fractions of looks 1..look_index (a float for look 1),
    each the look's information over the planned maximum (with a balanced design, seeds per cell now
    over seeds planned). ``z_stat``: the look's one-sided z for the primary effect (``z_from_t``).
    "reject" when z >= the look's efficacy boundary; otherwise "accept-futility" at the final look
    (``final``, default: the fraction reached 1) or, when ``futility_z`` is given, as soon as z <
    futility_z (non-binding: the efficacy boundaries ignore it, so the type-I error stays <= alpha);
    else "continue". The record carries the boundaries, the alpha spent so far and at this look, the
    look's nominal p threshold and the conditional power under the current trend."""
    ts = ([float(info_fraction_so_far)] if np.isscalar(info_fraction_so_far)
          else [float(x) for x in info_fraction_so_far])
    if len(ts) != look_index:
        raise ValueError(f"look {look_index} needs {look_index} information fractions, got {len(ts)}")
    final = ts[-1] >= 1.0 - 1e-12 if final is None else final
    b = gs_boundaries(ts, alpha, spending, final=final)
    c = b["boundaries"][-1]
    if z_stat >= c:
        decision = "reject"
    elif final or (futility_z is not None and z_stat < futility_z):
        decision = "accept-futility"
    else:
        decision = "continue"
    cp = math.nan
    if not final and ts[-1] < 1:
        c_fin = gs_boundaries([*ts, 1.0], alpha, spending)["boundaries"][-1]
        tk = ts[-1]
        drift = z_stat / math.sqrt(tk)
        cp = float(stats.norm.sf((c_fin - z_stat * math.sqrt(tk) - drift * (1 - tk)) / math.sqrt(1 - tk)))
    return {"look": look_index, "decision": decision, "z": float(z_stat), "boundary_z": c,
            "nominal_p": float(stats.norm.sf(c)), "alpha_spent": b["alpha_spent"][-1],
            "alpha_spent_cumulative": b["alpha_spent_cumulative"][-1], "boundaries": b["boundaries"],
            "info_fractions": ts, "final": bool(final), "conditional_power": cp, "spending": spending,
            "alpha": alpha}


def sequential_look(model: EffectModel, seeds_planned: int, previous_fractions: Sequence[float] = (),
                    alpha: float = 0.025, **kwargs) -> dict:
    """``decide`` for the model's primary effect: information fraction = seeds per (cell, arch) now
    (median) over ``seeds_planned``; the earlier looks' fractions in ``previous_fractions`` (the
    committed 36 cells of the CPU study are look 1)."""
    m = model.main
    t_now = float(model.groups["n"].median()) / seeds_planned
    ts = [*previous_fractions, min(t_now, 1.0)]
    return decide(len(ts), ts, z_from_t(m.t, m.df), alpha, **kwargs)


# --- judging a study -----------------------------------------------------------------------------
def _fmt(c: Contrast) -> str:
    return f"{c.estimate:+.1f} points [{c.ci_low:+.1f}, {c.ci_high:+.1f}] (df {c.df:.1f}, d {c.d:+.2f})"


def judge(results: pd.DataFrame, column: str = "probe_acc", alpha: float = 0.025, sesoi: float = 0.0,
          variance_by: Sequence[str] | None = ("corr",), test_noise: str = "row", n_boot: int = 4000,
          seed: int = 0, claim_corr: float = CLAIM_CORR, effects: Sequence[float] = (1.0, 2.0),
          power: float = 0.8, **row_kwargs) -> dict:
    """Every claim judged on ``column``: {"model", "sign_flip", "sign_flip_two_sided", "bootstrap",
    "verdicts" (a list of dicts: claim, verdict, evidence, p-values; the format of
    ``claims.claim_verdicts``), "power" (``power_table`` at two-sided 2 alpha)}.
    ``row_kwargs``: reversible, baseline, n_test, min_x_acc, x_column (``study_rows``)."""
    rows = study_rows(results, column, **row_kwargs)
    if rows.empty or rows.groupby(["corr", "fraction", "rev"]).size().max() < 2:
        return {"verdicts": [{"claim": c, "verdict": "not testable", "evidence": "needs >= 2 seeds with both archs"}
                             for c in CLAIMS.values()]}
    model = fit_effects(None, column, variance_by, 1 - 2 * alpha, claim_corr, rows=rows)
    main = model.main
    pg = pair_gains(rows)
    sf = sign_flip_test(pg["gain"], pg["weight"], "greater", seed=seed)
    sf_below = sign_flip_test(pg["gain"], pg["weight"], "less", null=sesoi, seed=seed)
    sf2 = sign_flip_test(pg["gain"], pg["weight"], "two-sided", seed=seed)
    noise = test_noise if rows["n_test"].notna().all() else "none"
    boot = bootstrap_contrasts(model, rows, n_boot=n_boot, level=1 - 2 * alpha, test_noise=noise, seed=seed)
    pv = primary_verdict(main, alpha, sesoi, sf.p, sf_below.p, boot.ci["a"])
    verdicts = [{"claim": CLAIMS["a"], **pv, "estimate": main.estimate, "ci_low": main.ci_low,
                 "ci_high": main.ci_high, "evidence":
                 f"model: mean gain over {model.n_cells()} cells {_fmt(main)}, "
                 f"one-sided p {main.p_greater:.3g}; sign-flip over {sf.n_pairs} pairs p {sf.p:.3g} one-sided "
                 f"({sf2.p:.3g} two-sided{', exact' if sf.exact else ''}); bootstrap (seeds + test images, "
                 f"{noise}) [{boot.ci['a'][0]:+.1f}, {boot.ci['a'][1]:+.1f}]"}]
    b1, b2 = model.b1(), model.b2()
    sec = {"b1": b1_pvalues(b1, sesoi), "b2": (b2.p_greater, b2.p_below(sesoi)) if b2 else (math.nan, math.nan)}
    sv = secondary_verdicts(sec, alpha)
    gains_by_corr = ", ".join(f"{c:g}: {model.contrast(model.weights_gain_at('corr', c)).estimate:+.1f}"
                              for c in model.corrs())
    verdicts.append({"claim": CLAIMS["b1"], **sv["b1"], "evidence":
                     (f"mean gain by corr {gains_by_corr}; " + "; ".join(f"{c.name} = {_fmt(c)}" for c in b1)
                      + f"; Holm p {sv['b1']['p_support_holm']:.3g} (refute {sv['b1']['p_refute_holm']:.3g})")
                     if b1 else "needs corr %g and another correlation" % claim_corr})
    verdicts.append({"claim": CLAIMS["b2"], **sv["b2"], "evidence":
                     (f"{b2.name} = {_fmt(b2)}; Holm p {sv['b2']['p_support_holm']:.3g} "
                      f"(refute {sv['b2']['p_refute_holm']:.3g})") if b2 else "needs two or more fractions"})
    table = power_table(model, effects, 2 * alpha, power, noise)
    for v in verdicts:  # every verdict carries its power: the smallest effect it could see, the seeds needed
        row = table[table["claim"] == v["claim"]]
        if not row.empty:
            v["mde"] = float(row["mde"].iloc[0])
            v.update({f"seeds_for_{e:g}": float(row[f"seeds_for_{e:g}"].iloc[0]) for e in effects})
            v["evidence"] += (f"; detects >= {v['mde']:.1f} points at {power:.0%} power; seeds per cell and arch for "
                              + ", ".join(f"{e:g} point(s): {_seeds_text(v[f'seeds_for_{e:g}'])}" for e in effects))
    return {"model": model, "main": main, "b1": b1, "b2": b2, "sign_flip": sf, "sign_flip_two_sided": sf2,
            "sign_flip_below_sesoi": sf_below, "bootstrap": boot, "verdicts": verdicts, "power": table,
            "rows": rows}


def claim_verdicts(results: pd.DataFrame, column: str = "probe_acc", **kwargs) -> list[dict]:
    """claim, verdict, evidence (and the p-values) per claim: ``judge(...)["verdicts"]``."""
    return judge(results, column, **kwargs)["verdicts"]


# --- planning the next seeds ---------------------------------------------------------------------
@dataclass
class Plan:
    claims: pd.DataFrame  # per column and claim: estimate, se, mde now, seeds needed per effect
    cells: pd.DataFrame   # per (corr, fraction) of the first column: where the variance is
    text: str


def neyman_seeds(model: EffectModel, weights: np.ndarray, effect: float, alpha: float = 0.05, power: float = 0.8,
                 test_noise: str = "row") -> np.ndarray:
    """Seeds per group that reach ``power`` for a contrast at ``effect`` with the fewest runs: n_g
    proportional to |c_g| sigma_g (Neyman allocation; sigma_g^2 the stratum variance plus, for
    "row", the binomial one), normal approximation, at least 2 each; inf when the "cell" floor
    alone exceeds the variance allowed."""
    g = model.groups
    s2 = g["var_model"].to_numpy(dtype=float)
    tau2 = np.nan_to_num(g["tau2"].to_numpy(dtype=float))
    c = np.abs(np.asarray(weights, dtype=float))
    v_target = (effect / (stats.norm.isf(alpha / 2) + stats.norm.ppf(power))) ** 2
    per = s2 + (tau2 if test_noise == "row" else 0.0)
    if test_noise == "cell":
        v_target -= float(np.sum(c ** 2 * tau2))
    if v_target <= 0:
        return np.full(len(g), np.inf)
    sig = np.sqrt(per)
    n = c * sig * float(np.sum(c * sig)) / v_target
    return np.where(c > 0, np.maximum(np.ceil(n), 2), 0)


def plan(results: pd.DataFrame, columns: Sequence[str] = ("probe_acc", "probe_acc_matched"),
         effects: Sequence[float] = (1.0, 2.0), alpha: float = 0.05, power: float = 0.8, test_noise: str = "row",
         variance_by: Sequence[str] | None = ("corr",), **row_kwargs) -> Plan:
    """Seeds needed per claim (``power_table`` for each of ``columns`` present) and, for the first
    column, where the variance is: per (corr, fraction) each arch's seed SD, the stratum SD, the
    binomial SD, the cell's share of the primary contrast's variance, and the seeds per arch the
    cheapest (Neyman) allocation gives each cell for each of ``effects``. ``alpha``: two-sided."""
    tables, cells, lines = [], pd.DataFrame(), []
    for column in columns:
        rows = study_rows(results, column, **row_kwargs)
        if rows.empty or rows.groupby(["corr", "fraction", "rev"]).size().max() < 2:
            continue
        model = fit_effects(None, column, variance_by, rows=rows)
        noise = test_noise if rows["n_test"].notna().all() else "none"
        pt = power_table(model, effects, alpha, power, noise).assign(column=column)
        tables.append(pt)
        if cells.empty:
            cells = _variance_cells(model, effects, alpha, power, noise)
    claims = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    for _, r in claims.iterrows():
        need = ", ".join(f"{e:g} point(s): {_seeds_text(r[f'seeds_for_{e:g}'])}" for e in effects)
        lines.append(f"{r['column']:<18} {r['claim']:<45} now {r['estimate']:+.1f} (se {r['se']:.2f}, "
                     f"{r['seeds_now']:g} seeds): detects >= {r['mde']:.1f} points at {power:.0%} power "
                     f"(two-sided alpha {r['alpha']:.3g}); seeds per cell and arch for {need}")
    if not cells.empty:
        lines.append("where the variance is (first column; share of the primary contrast's variance):")
        for _, r in cells.iterrows():
            alloc = ", ".join(f"{e:g} pt: {_seeds_text(r[f'neyman_seeds_for_{e:g}'])}" for e in effects)
            lines.append(f"  corr {r['corr']:g} fraction {r['fraction']:g}: seed SD ViT {r['sd_vit']:.2f}, RevViT "
                         f"{r['sd_rev']:.2f} (stratum {r['sd_model']:.2f}, test set "
                         f"{'n/a' if not np.isfinite(r['sd_test']) else format(r['sd_test'], '.2f')}) points; "
                         f"{r['share_of_main_var']:.0%} of the variance; cheapest seeds per arch for {alloc}")
    return Plan(claims, cells, "\n".join(lines) if lines else "no complete pairs with >= 2 seeds to plan from")


def _seeds_text(n) -> str:
    return "unreachable by seeds alone" if not np.isfinite(n) else f"{int(n)}"


def _variance_cells(model, effects, alpha, power, test_noise) -> pd.DataFrame:
    g = model.groups.copy()
    w = model.weights_main()
    tau2 = np.nan_to_num(g["tau2"].to_numpy(dtype=float))
    add = tau2 / g["n"] if test_noise == "row" else tau2 if test_noise == "cell" else 0.0
    g["contrib"] = w ** 2 * (g["var_model"] / g["n"] + add)
    for e in effects:
        g[f"neyman_seeds_for_{e:g}"] = neyman_seeds(model, w, e, alpha, power, test_noise)
    out = []
    total = g["contrib"].sum()
    for (corr, frac), c in g.groupby(["corr", "fraction"], sort=True):
        rev, base = c[c["rev"] == 1].iloc[0], c[c["rev"] == 0].iloc[0]
        row = {"corr": corr, "fraction": frac, "sd_vit": math.sqrt(base["var"]), "sd_rev": math.sqrt(rev["var"]),
               "sd_model": math.sqrt(rev["var_model"]), "sd_test": math.sqrt(c["tau2"].mean()),
               "seeds_now": int(c["n"].min()), "share_of_main_var": float(c["contrib"].sum() / total)}
        for e in effects:
            row[f"neyman_seeds_for_{e:g}"] = float(c[f"neyman_seeds_for_{e:g}"].max())
        out.append(row)
    return pd.DataFrame(out)


def format_plan(p: Plan) -> str:
    """The plan as the text ``revtransfer sweep FILE --plan`` prints."""
    return p.text


__all__ = [
    "study_rows", "pair_gains", "Contrast", "EffectModel", "fit_effects", "SignFlip", "sign_flip_test", "Bootstrap",
    "bootstrap_contrasts", "holm", "primary_verdict", "b1_pvalues", "secondary_verdicts", "power_t", "power_iut",
    "min_detectable_effect", "claim_alpha", "claim_power", "contrast_se", "seeds_needed", "claim_mde", "power_table",
    "spending_obf", "spending_pocock", "gs_boundaries", "gs_power", "z_from_t", "decide", "sequential_look", "judge",
    "claim_verdicts", "Plan", "neyman_seeds", "plan", "format_plan"]
