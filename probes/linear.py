"""The linear probe: standardise features, fit an L2 logistic regression, choose C on a validation
split from a log grid, report test accuracy and AUROC with bootstrap 95% confidence intervals.

Optionally (``pca_dim``) the probe first reduces the features to their top principal components,
fitted on the training split alone: the width-matched control. RevViT's concat fusion gives 2C
features against ViT's C, so a probe on raw features also compares feature widths; probing every
backbone on the same number of components separates the architecture from the width."""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from revtransfer.data import split_indices

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 7))  # 1e-4 ... 1e2
DEFAULT_SPLIT = (0.6, 0.2, 0.2)


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
    mean = x_train.mean(axis=0)
    _, _, vt = np.linalg.svd(x_train - mean, full_matrices=False)
    comps = vt[:k]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    return mean, comps * np.where(signs == 0, 1.0, signs)[:, None]


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, *, task: str = "probe",
                     split: Sequence[float] = DEFAULT_SPLIT, Cs: Sequence[float] = DEFAULT_CS,
                     seed: int = 0, n_boot: int = 1000, max_iter: int = 2000,
                     indices: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                     pca_dim: int | None = None) -> ProbeResult:
    """Fit the probe on a seeded, stratified (train, val, test) split of ``features`` / binary ``labels``.

    C is the grid value with the best validation accuracy (ties: the smaller C, i.e. the stronger
    regularisation); the final probe is refit on train + val with that C and scored on test.

    ``pca_dim``: first project every sample onto the top-``pca_dim`` principal components of the
    TRAIN split's features (val and test never inform the projection); ``feature_dim`` is then
    ``pca_dim``. The width-matched control: the same ``pca_dim`` for every backbone.
    """
    from sklearn.metrics import roc_auc_score

    features = np.asarray(features, dtype=np.float64)
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
    if pca_dim is not None:
        allowed = min(features.shape[1], len(tr))
        if pca_dim > allowed:
            raise ValueError(f"probe {task}: pca_dim={pca_dim} is too large: at most {allowed} (the smaller of the "
                             f"feature width {features.shape[1]} and the training split's {len(tr)} samples)")
        mean, comps = pca_basis(features[tr], pca_dim)
        features = (features - mean) @ comps.T
    best = None
    for C in sorted(Cs):
        acc = _fit(features[tr], labels[tr], C, max_iter, seed).score(features[va], labels[va])
        if best is None or acc > best[1]:
            best = (C, acc)
    C, val_acc = best
    trva = np.concatenate([tr, va])
    clf = _fit(features[trva], labels[trva], C, max_iter, seed)
    score = clf.predict_proba(features[te])[:, 1]
    pred = (score >= 0.5).astype(np.int64)
    y = labels[te]
    (acc_lo, acc_hi), (auc_lo, auc_hi) = bootstrap_ci(y, score, pred, n_boot, seed)
    majority = int(np.bincount(labels[trva], minlength=2).argmax())
    return ProbeResult(
        task=task, feature_dim=features.shape[1], n_train=len(tr), n_val=len(va), n_test=len(te), C=float(C),
        val_acc=float(val_acc), acc=float((pred == y).mean()), acc_ci_low=acc_lo, acc_ci_high=acc_hi,
        auroc=float(roc_auc_score(y, score)), auroc_ci_low=auc_lo, auroc_ci_high=auc_hi,
        majority_acc=float((y == majority).mean()))
