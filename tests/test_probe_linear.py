"""The linear probe recovers a linearly separable signal, stays at chance without one, and its
bootstrap AUROC is exact; probing a run caches features and records the feature width."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from study_fixtures import TINY_VIT, write_dataset
from probes.linear import ProbeResult, fit_linear_probe, pca_basis, stratified_split, weighted_auroc
from probes.probe import ProbeSettings, run_probes
from probes.sweep import matched_columns
from revtransfer.train import CheckpointError, PretrainConfig, pretrain


def _features(n=600, d=24, seed=0):
    """Gaussian features whose label is the sign of one direction (plus a little label noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 5, d)  # unequal scales: standardisation matters
    w = rng.normal(size=d)
    y = (x / x.std(0) @ w + 0.3 * rng.normal(size=n) > 0).astype(int)
    return x, y


def test_probe_recovers_a_linearly_separable_signal():
    x, y = _features()
    r = fit_linear_probe(x, y, task="sep", n_boot=300)
    assert r.acc > 0.9 and r.auroc > 0.97
    assert r.acc_ci_low <= r.acc <= r.acc_ci_high and r.auroc_ci_low <= r.auroc <= r.auroc_ci_high
    assert r.acc_ci_high - r.acc_ci_low < 0.12
    assert r.n_train + r.n_val + r.n_test == len(y) and r.feature_dim == 24


def test_probe_is_at_chance_on_shuffled_labels():
    x, y = _features()
    y = np.random.default_rng(1).permutation(y)
    r = fit_linear_probe(x, y, task="shuffled", n_boot=300)
    assert abs(r.auroc - 0.5) < 0.1 and r.auroc_ci_low < 0.5 + 0.02
    assert r.acc < max(r.majority_acc, 0.5) + 0.1


def test_bootstrap_auroc_is_the_exact_auroc_of_the_resample():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # ties on purpose
    idx = rng.integers(0, 300, 300)
    w = np.bincount(idx, minlength=300)[None].astype(float)
    assert weighted_auroc(s, y, w)[0] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_probe_rejects_single_class_splits_and_nan_features():
    x, _ = _features(n=60)
    with pytest.raises(ValueError, match="one class"):
        fit_linear_probe(x, np.zeros(60, int))
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_linear_probe(x, np.arange(60) % 2)


@pytest.mark.parametrize("arch,width", [("vit_micro", 16), ("revvit_micro", 32)])  # RevViT: concat, 2C
def test_probing_a_run(tmp_path, monkeypatch, arch, width):
    pre = write_dataset(tmp_path / "pre", n=160, size=16)
    transfer = write_dataset(tmp_path / "tf", n=200, size=16, seed=1, transfer=True)
    run = tmp_path / "run"
    pretrain(PretrainConfig(dataset=str(pre), out=str(run), arch=arch, model_kwargs=dict(TINY_VIT), epochs=2,
                            batch_size=16, lr=5e-3, val_frac=0.25), progress=False)
    results = run_probes(run, transfer, ProbeSettings(n_boot=50), progress=False)
    assert set(results) == {"has_y@transfer", "has_x@pretrain_heldout"}
    assert all(r.feature_dim == width for r in results.values())
    saved = json.loads((run / "probe.json").read_text())
    assert saved["results"]["has_y@transfer"]["acc"] == results["has_y@transfer"].acc
    # A second probe reads the cached features instead of running the model again.
    import probes.features

    monkeypatch.setattr(probes.features, "extract_features", lambda *a, **k: pytest.fail("features recomputed"))
    again = run_probes(run, transfer, ProbeSettings(n_boot=50), progress=False)
    assert again["has_y@transfer"].acc == results["has_y@transfer"].acc
    # The width-matched control: the same cached features, the same split, k PCA components.
    matched = run_probes(run, transfer, ProbeSettings(n_boot=50, match_dim=8, sanity=False), progress=False)
    assert set(matched) == {"has_y@transfer", "has_y@transfer_pca8"}
    assert matched["has_y@transfer"].acc == results["has_y@transfer"].acc
    m = matched["has_y@transfer_pca8"]
    assert m.feature_dim == 8 and (m.n_train, m.n_test) == (results["has_y@transfer"].n_train,
                                                          results["has_y@transfer"].n_test)
    saved = json.loads((run / "probe.json").read_text())
    assert saved["settings"]["match_dim"] == 8 and saved["results"]["has_y@transfer_pca8"]["feature_dim"] == 8


def test_pca_probe_reports_k_dims_and_fits_the_pca_on_train_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 24)) * np.r_[np.linspace(10, 5, 6), np.ones(18)]  # 6 dominant directions
    y = (x[:, :6] @ rng.normal(size=6) + rng.normal(size=300) > 0).astype(int)  # the signal lies in them
    r = fit_linear_probe(x, y, n_boot=50, pca_dim=6)
    assert r.feature_dim == 6 and r.acc > 0.85
    tr, _, te = stratified_split(y, (0.6, 0.2, 0.2), 0)
    # Wild test features (huge variance along the first axes) would dominate a PCA that saw them:
    # the choice of C and the validation accuracy depend on train + val alone, so they stay put.
    wild = x.copy()
    wild[te] += np.random.default_rng(5).normal(0, 1e3, (len(te), 24)) * (np.arange(24) < 6)
    r2 = fit_linear_probe(wild, y, n_boot=50, pca_dim=6)
    assert (r2.C, r2.val_acc, r2.n_train) == (r.C, r.val_acc, r.n_train)
    # ...whereas a PCA fitted on all samples would have changed with them.
    _, comps_all = pca_basis(wild, 6)
    _, comps_tr = pca_basis(x[tr], 6)
    assert not np.allclose(np.abs(comps_all @ comps_tr.T), np.eye(6), atol=0.1)
    # The basis: orthonormal, deterministic signs (largest-|value| entry positive), train mean.
    mean, comps = pca_basis(x[tr], 6)
    assert np.allclose(comps @ comps.T, np.eye(6)) and np.allclose(mean, x[tr].mean(0))
    assert (comps[np.arange(6), np.abs(comps).argmax(1)] > 0).all()
    assert np.allclose(pca_basis(-x[tr], 6)[1], comps)  # flipping the data does not flip the basis


@pytest.mark.parametrize("k", [0, -3, 25, 181, 2.5, True])
def test_bad_pca_dim_is_refused_naming_the_value(k):
    x, y = _features(n=300, d=24)  # 182 training samples, 24 dims: 1..24 allowed
    with pytest.raises(ValueError, match=rf"pca_dim={k!r}"):
        fit_linear_probe(x, y, n_boot=10, pca_dim=k)


def test_pca_dim_is_bounded_by_the_width_and_the_training_split():
    x, y = _features(n=300, d=24)
    with pytest.raises(ValueError, match="pca_dim=25 is too large: at most 24"):
        fit_linear_probe(x, y, n_boot=10, pca_dim=25)
    assert fit_linear_probe(x, y, n_boot=10, pca_dim=24).feature_dim == 24
    x_small, y_small = _features(n=20, d=24)  # 14 training samples
    with pytest.raises(ValueError, match="pca_dim=15 is too large: at most 14"):
        fit_linear_probe(x_small, y_small, n_boot=10, pca_dim=15)


@pytest.mark.parametrize("m", [0, -1, "16", 2.0, True])
def test_bad_match_dim_setting_is_refused(m):
    with pytest.raises(ValueError, match="match_dim"):
        ProbeSettings.from_dict({"match_dim": m})
    assert ProbeSettings.from_dict({"match_dim": 16}).matched_task == "has_y@transfer_pca16"
    assert ProbeSettings.from_dict({}).matched_task is None


def test_sweep_row_carries_the_matched_probe_or_nulls():
    r = ProbeResult("has_y@transfer_pca16", 16, 60, 20, 20, 1.0, 0.8, 0.75, 0.7, 0.8, 0.8, 0.75, 0.85, 0.5)
    on = matched_columns({"has_y@transfer_pca16": r}, ProbeSettings(match_dim=16))
    assert on == {"probe_acc_matched": 0.75, "probe_acc_matched_ci_low": 0.7, "probe_acc_matched_ci_high": 0.8,
                  "matched_dim": 16}
    off = matched_columns({"has_y@transfer_pca16": r}, ProbeSettings())
    assert set(off) == set(on) and all(v is None for v in off.values())


def test_probing_a_run_without_checkpoint_names_the_file(tmp_path):
    transfer = write_dataset(tmp_path / "tf", n=40, size=16, transfer=True)
    with pytest.raises(CheckpointError, match=str(tmp_path / "empty_run" / "checkpoint_last.pt")):
        run_probes(tmp_path / "empty_run", transfer, progress=False)
