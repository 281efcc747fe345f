"""The linear probe: standardise features, fit an L2 logistic regression, choose C on a validation
split from a log grid, report test accuracy and AUROC with bootstrap 95% confidence intervals.

Optionally (``pca_dim``) the probe first reduces the features to their top principal components,
fitted on the training split alone: the width-matched control. RevViT's concat fusion gives 2C
features against ViT's C, so a probe on raw features also compares feature widths; probing every
backbone on the same number of components separates the architecture from the width.

Hygiene (issue 26; each one a switch, so a study keeps the probe its first rows were made with):

- ``widen_grid``: when the best C sits on an edge of the grid (the top, or the bottom while it is
  strictly better than its neighbour), the grid is extended by factors of 10 on that side until the
  best C is inside it or ``c_limit`` is reached; the grid used and whether the best C is still on
  its edge are recorded (``C_grid_low``, ``C_grid_high``, ``C_at_edge``).
- ``standardize_before_pca``: the PCA sees features standardised with the training split's mean and
  SD, so a few large-scale dimensions do not take the components.
- ``rank_cap``: ``pca_dim`` is capped at the training features' numerical rank (singular values
  above s_max x max(n, d) x eps of the features' own dtype), so a component that is rounding noise
  is never probed; the k used and the rank are recorded (``feature_dim``, ``pca_requested``,
  ``feature_rank``). Without it a ``pca_dim`` above the width or the training split is refused.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from revtransfer.data import split_indices

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 7))  # 1e-4 ... 1e2
DEFAULT_SPLIT = (0.6, 0.2, 0.2)
DEFAULT_C_LIMIT = (1e-8, 1e6)  # how far widen_grid may extend the C grid


@dataclass
class ProbeResult:
    task: str             # e.g. "has_y@transfer"
    feature_dim: int
    n_train: int
    n_val: int
    n_test: int
    C: float              # chosen on the validation split
    val_acc: float
    acc: float            # test
    acc_ci_low: float
    acc_ci_high: float
    auroc: float          # test
    auroc_ci_low: float
    auroc_ci_high: float
    majority_acc: float   # test accuracy of always predicting the training majority class
    C_grid_low: float = math.nan   # the C grid searched (after any widening)
    C_grid_high: float = math.nan
    C_at_edge: bool = False        # the chosen C is still on an edge of the grid searched
    pca_requested: int | None = None  # pca_dim asked for (feature_dim is the k used)
    feature_rank: int | None = None   # numerical rank of the training features (when it was computed)

    def as_dict(self) -> dict:
        return asdict(self)


def _fit(x: np.ndarray, y: np.ndarray, C: float, max_iter: int, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tiny C on separable data; harmless
        clf.fit(x, y)
    return clf


def weighted_auroc(score: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (ties count one half) of each row of ``weights`` (B, n) as sample multiplicities:
    the Mann-Whitney statistic, computed from per-unique-score class weights in O(B n)."""
    uniq, inv = np.unique(score, return_inverse=True)  # ascending scores
    k = len(uniq)
    out = np.empty(len(weights))
    pos_mask = y == 1
    for b, w in enumerate(weights):
        pos = np.bincount(inv[pos_mask], weights=w[pos_mask], minlength=k)
        neg = np.bincount(inv[~pos_mask], weights=w[~pos_mask], minlength=k)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            out[b] = np.nan
            continue
        below = np.cumsum(neg) - neg  # negatives with a strictly lower score
        out[b] = (pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg)
    return out


def bootstrap_ci(y: np.ndarray, score: np.ndarray, pred: np.ndarray, n_boot: int, seed: int,
                 level: float = 0.95) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile bootstrap CIs of (accuracy, AUROC) over test sets resampled with replacement."""
    if n_boot < 1:
        return (math.nan, math.nan), (math.nan, math.nan)
    rng = np.random.default_rng([seed, 0xB007])
    n = len(y)
    correct = (pred == y).astype(np.float64)
    accs, aucs = [], []
    for start in range(0, n_boot, 100):  # chunks keep the (resamples, n) count matrix small
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                           for _ in range(min(100, n_boot - start))]).astype(np.float64)
        accs.append(counts @ correct / n)
        aucs.append(weighted_auroc(score, y, counts))
    accs, aucs = np.concatenate(accs), np.concatenate(aucs)
    aucs = aucs[np.isfinite(aucs)]  # resamples holding one class only have no AUROC
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def pct(v):
        return tuple(float(x) for x in np.percentile(v, q)) if len(v) else (math.nan, math.nan)

    return pct(accs), pct(aucs)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (train, val, test) split keeping the class balance in each part (split per class
    with ``revtransfer.data.split_indices``), so small probe sets do not lose a class."""
    parts = {"train": [], "val": [], "test": []}
    for k, cls in enumerate(np.unique(labels)):
        members = np.flatnonzero(labels == cls)
        for name, idx in split_indices(len(members), fractions, seed + 1000 * k).items():
            parts[name].append(members[idx])
    return tuple(np.sort(np.concatenate(parts[name])) for name in ("train", "val", "test"))


def pca_basis(x_train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), components (k, D)) of the top-``k`` principal components of ``x_train``: the
    right singular vectors of the centred matrix, each signed so that its largest-|value| entry is
    positive (SVD's sign is arbitrary; this makes the projection deterministic)."""
    mean, comps, _ = _pca(x_train, k)
    return mean, comps


def _pca(x_train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pca_basis`` plus the singular values of the centred matrix."""
    mean = x_train.mean(axis=0)
    _, s, vt = np.linalg.svd(x_train - mean, full_matrices=False)
    comps = vt[:k]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    return mean, comps * np.where(signs == 0, 1.0, signs)[:, None], s


def numerical_rank(singular_values: np.ndarray, shape: tuple[int, int], eps: float) -> int:
    """Singular values above s_max x max(shape) x eps (numpy's matrix_rank rule, with the eps of the
    features' own dtype: float32 features carry float32 rounding noise in every direction)."""
    s = np.asarray(singular_values, dtype=np.float64)
    if not len(s) or s.max() <= 0:
        return 0
    return int(np.count_nonzero(s > s.max() * max(shape) * eps))


def standardizer(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of the training split; a constant feature keeps scale 1."""
    mean, sd = x_train.mean(axis=0), x_train.std(axis=0)
    return mean, np.where(sd > 0, sd, 1.0)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, *, task: str = "probe",
                     split: Sequence[float] = DEFAULT_SPLIT, Cs: Sequence[float] = DEFAULT_CS,
                     seed: int = 0, n_boot: int = 1000, max_iter: int = 2000,
                     indices: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                     pca_dim: int | None = None, widen_grid: bool = True,
                     c_limit: tuple[float, float] = DEFAULT_C_LIMIT, standardize_before_pca: bool = True,
                     rank_cap: bool = True) -> ProbeResult:
    """Fit the probe on a seeded, stratified (train, val, test) split of ``features`` / binary ``labels``.

    C is the grid value with the best validation accuracy (ties: the smaller C, i.e. the stronger
    regularisation); the final probe is refit on train + val with that C and scored on test.
    ``widen_grid``: extend the grid past an edge the best C sits on (module docstring).

    ``pca_dim``: first project every sample onto the top-``pca_dim`` principal components of the
    TRAIN split's features (val and test never inform the projection; with
    ``standardize_before_pca`` the features are first standardised with the train split's mean and
    SD); ``feature_dim`` is then the k used: ``pca_dim``, or with ``rank_cap`` at most the train
    features' numerical rank. The width-matched control: the same ``pca_dim`` for every backbone.
    """
    from sklearn.metrics import roc_auc_score

    raw = np.asarray(features)
    eps = float(np.finfo(raw.dtype).eps) if np.issubdtype(raw.dtype, np.floating) else float(np.finfo(np.float64).eps)
    features = raw.astype(np.float64, copy=False)
    labels = np.asarray(labels).astype(np.int64)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not match")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or inf (did pretraining diverge?)")
    if not Cs:
        raise ValueError("the C grid is empty")
    if pca_dim is not None and (isinstance(pca_dim, bool) or not isinstance(pca_dim, (int, np.integer))
                                or pca_dim < 1):
        raise ValueError(f"probe {task}: pca_dim={pca_dim!r} must be a positive integer (or None: no PCA)")
    tr, va, te = indices if indices is not None else stratified_split(labels, split, seed)
    for name, idx in (("train", tr), ("val", va), ("test", te)):
        if len(np.unique(labels[idx])) < 2:
            raise ValueError(f"probe {task}: the {name} split ({len(idx)} samples) holds one class only; "
                             f"need more data")
    rank = None
    if pca_dim is not None:
        allowed = min(features.shape[1], len(tr))
        if pca_dim > allowed and not rank_cap:
            raise ValueError(f"probe {task}: pca_dim={pca_dim} is too large: at most {allowed} (the smaller of the "
                             f"feature width {features.shape[1]} and the training split's {len(tr)} samples)")
        if standardize_before_pca:
            mu, scale = standardizer(features[tr])
            features = (features - mu) / scale
        mean, comps, sv = _pca(features[tr], pca_dim)
        if rank_cap:
            rank = numerical_rank(sv, features[tr].shape, eps)
            comps = comps[:max(1, min(pca_dim, rank))]
        features = (features - mean) @ comps.T
    scores = {}

    def val_acc(C):
        if C not in scores:
            scores[C] = _fit(features[tr], labels[tr], C, max_iter, seed).score(features[va], labels[va])
        return scores[C]

    best = None
    for C in sorted(Cs):
        acc = val_acc(C)
        if best is None or acc > best[1]:
            best = (C, acc)
    grid = sorted(Cs)
    if widen_grid:
        best, grid = _widen(best, grid, val_acc, c_limit)
    C, val_acc_best = best
    at_edge = len(grid) > 1 and (C == grid[-1] or (C == grid[0] and scores[grid[0]] > scores[grid[1]]))
    trva = np.concatenate([tr, va])
    clf = _fit(features[trva], labels[trva], C, max_iter, seed)
    score = clf.predict_proba(features[te])[:, 1]
    pred = (score >= 0.5).astype(np.int64)
    y = labels[te]
    (acc_lo, acc_hi), (auc_lo, auc_hi) = bootstrap_ci(y, score, pred, n_boot, seed)
    majority = int(np.bincount(labels[trva], minlength=2).argmax())
    return ProbeResult(
        task=task, feature_dim=features.shape[1], n_train=len(tr), n_val=len(va), n_test=len(te), C=float(C),
        val_acc=float(val_acc_best), acc=float((pred == y).mean()), acc_ci_low=acc_lo, acc_ci_high=acc_hi,
        auroc=float(roc_auc_score(y, score)), auroc_ci_low=auc_lo, auroc_ci_high=auc_hi,
        majority_acc=float((y == majority).mean()), C_grid_low=float(grid[0]), C_grid_high=float(grid[-1]),
        C_at_edge=bool(at_edge), pca_requested=None if pca_dim is None else int(pca_dim), feature_rank=rank)


def _widen(best: tuple[float, float], grid: list[float], val_acc, limit: tuple[float, float]):
    """Extend ``grid`` by factors of 10 past the edge the best C sits on, while the new C is strictly
    better and within ``limit``: the top edge whenever the best C is there (ties go to the smaller
    C, so it is strictly better than every smaller one), the bottom edge only when its C is
    strictly better than the next (else every tie at chance would drag the grid down)."""
    lo, hi = limit
    grid = list(grid)
    if best[0] == grid[-1]:
        while grid[-1] * 10 <= hi * (1 + 1e-9):
            c = grid[-1] * 10
            grid.append(c)
            acc = val_acc(c)
            if acc > best[1]:
                best = (c, acc)
            else:
                break
    elif best[0] == grid[0] and (len(grid) < 2 or best[1] > val_acc(grid[1])):
        while grid[0] / 10 >= lo * (1 - 1e-9):
            c = grid[0] / 10
            grid.insert(0, c)
            acc = val_acc(c)
            if acc > best[1]:
                best = (c, acc)
            else:
                break
    return best, grid
