"""The linear probe recovers a linearly separable signal, stays at chance without one, and its
bootstrap AUROC is exact; probing a run caches features and records the feature width."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from study_fixtures import TINY_VIT, write_dataset
from probes.linear import fit_linear_probe, weighted_auroc
from probes.probe import ProbeSettings, run_probes
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


def test_probing_a_run_without_checkpoint_names_the_file(tmp_path):
    transfer = write_dataset(tmp_path / "tf", n=40, size=16, transfer=True)
    with pytest.raises(CheckpointError, match=str(tmp_path / "empty_run" / "checkpoint_last.pt")):
        run_probes(tmp_path / "empty_run", transfer, progress=False)
