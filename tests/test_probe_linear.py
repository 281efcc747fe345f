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
    assert saved["settings_digest"] == ProbeSettings(n_boot=50, match_dim=8, sanity=False).digest()
    # several k at once: one probe per k, on the same features and split
    multi = run_probes(run, transfer, ProbeSettings(n_boot=20, match_dim=[4, 8], sanity=False), progress=False)
    assert set(multi) == {"has_y@transfer", "has_y@transfer_pca4", "has_y@transfer_pca8"}
    assert multi["has_y@transfer_pca4"].feature_dim == 4


def test_pca_probe_reports_k_dims_and_fits_the_pca_on_train_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 24)) * np.r_[np.linspace(10, 5, 6), np.ones(18)]  # 6 dominant directions
    y = (x[:, :6] @ rng.normal(size=6) + rng.normal(size=300) > 0).astype(int)  # the signal lies in them
    raw = dict(standardize_before_pca=False)  # the signal lies in the large-scale directions: PCA on raw features
    r = fit_linear_probe(x, y, n_boot=50, pca_dim=6, **raw)
    assert r.feature_dim == 6 and r.acc > 0.85
    tr, _, te = stratified_split(y, (0.6, 0.2, 0.2), 0)
    # Wild test features (huge variance along the first axes) would dominate a PCA that saw them:
    # the choice of C and the validation accuracy depend on train + val alone, so they stay put.
    wild = x.copy()
    wild[te] += np.random.default_rng(5).normal(0, 1e3, (len(te), 24)) * (np.arange(24) < 6)
    r2 = fit_linear_probe(wild, y, n_boot=50, pca_dim=6, **raw)
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
        fit_linear_probe(x, y, n_boot=10, pca_dim=k, rank_cap=False)  # without the rank cap 25, 181 are refused


def test_pca_dim_is_bounded_by_the_width_and_the_training_split():
    x, y = _features(n=300, d=24)
    old = dict(rank_cap=False)  # the old rule: refused
    with pytest.raises(ValueError, match="pca_dim=25 is too large: at most 24"):
        fit_linear_probe(x, y, n_boot=10, pca_dim=25, **old)
    assert fit_linear_probe(x, y, n_boot=10, pca_dim=24, **old).feature_dim == 24
    x_small, y_small = _features(n=20, d=24)  # 14 training samples
    with pytest.raises(ValueError, match="pca_dim=15 is too large: at most 14"):
        fit_linear_probe(x_small, y_small, n_boot=10, pca_dim=15, **old)
    # the rank cap (the default) caps instead, and records what it did
    r = fit_linear_probe(x, y, n_boot=10, pca_dim=25)
    assert (r.feature_dim, r.pca_requested, r.feature_rank) == (24, 25, 24)
    r = fit_linear_probe(x_small, y_small, n_boot=10, pca_dim=15)
    assert r.feature_dim == r.feature_rank <= 13  # 14 centred training samples have rank <= 13


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
                  "matched_dim": 16, "matched_k_requested": None, "matched_rank": None}
    off = matched_columns({"has_y@transfer_pca16": r}, ProbeSettings())
    assert set(off) == set(on) and all(v is None for v in off.values())


def test_probing_a_run_without_checkpoint_names_the_file(tmp_path):
    transfer = write_dataset(tmp_path / "tf", n=40, size=16, transfer=True)
    with pytest.raises(CheckpointError, match=str(tmp_path / "empty_run" / "checkpoint_last.pt")):
        run_probes(tmp_path / "empty_run", transfer, progress=False)


# --- probe hygiene (issue 26) -----------------------------------------------------------------------
def _noiseless_correlated(n=400, d=10, seed=0):
    """Strongly correlated features, a noiseless label: the more C, the better (up to a point)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    w = np.zeros(d)
    w[:2] = (1, -1)
    return z @ (np.eye(d) + 0.9 * np.ones((d, d))), (z @ w > 0).astype(int)


def test_c_grid_widens_when_the_best_c_is_on_the_top_edge():
    x, y = _noiseless_correlated()
    narrow = [1e-3, 1e-2, 1e-1]
    fixed = fit_linear_probe(x, y, n_boot=20, Cs=narrow, widen_grid=False)
    assert fixed.C == 0.1 and fixed.C_at_edge and fixed.C_grid_high == 0.1  # recorded: the best C is on the edge
    wide = fit_linear_probe(x, y, n_boot=20, Cs=narrow)  # the default widens
    assert wide.C > 0.1 and wide.val_acc > fixed.val_acc and not wide.C_at_edge
    assert wide.C_grid_low == 1e-3 and wide.C_grid_high == pytest.approx(10 * wide.C)  # one step past the best
    capped = fit_linear_probe(x, y, n_boot=20, Cs=narrow, c_limit=(1e-8, 1.0))
    assert capped.C == capped.C_grid_high == pytest.approx(1.0) and capped.C_at_edge  # the limit holds


def test_widening_rule_on_a_known_validation_curve():
    from probes.linear import _widen

    peak = lambda c: -(np.log10(c) - 3) ** 2  # noqa: E731  (best C = 1e3)
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    best, g = _widen((100.0, peak(100.0)), grid, peak, (1e-8, 1e6))
    assert best[0] == pytest.approx(1e3) and g[-1] == pytest.approx(1e4) and g[0] == 1e-4
    low = lambda c: -(np.log10(c) + 6) ** 2  # noqa: E731  (best C = 1e-6), stopped by the limit at 1e-5
    best, g = _widen((1e-4, low(1e-4)), grid, low, (1e-5, 1e6))
    assert best[0] == pytest.approx(1e-5) and g[0] == pytest.approx(1e-5)
    flat = lambda c: 0.5  # noqa: E731  a tie at the bottom edge (chance everywhere) does not drag the grid down
    assert _widen((1e-4, 0.5), grid, flat, (1e-8, 1e6)) == ((1e-4, 0.5), grid)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_match_dim_is_capped_at_the_numerical_rank(dtype):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 5))
    x = (z @ rng.normal(size=(5, 20))).astype(dtype)  # 20 wide, rank 5 (float32: rounding noise elsewhere)
    y = (z[:, 0] > 0).astype(int)
    r = fit_linear_probe(x, y, n_boot=10, pca_dim=12)
    assert (r.feature_dim, r.pca_requested, r.feature_rank) == (5, 12, 5) and r.acc > 0.9
    off = fit_linear_probe(x, y, n_boot=10, pca_dim=12, rank_cap=False)  # the old probe keeps the noise dims
    assert off.feature_dim == 12 and off.feature_rank is None


def test_features_are_standardised_before_the_pca():
    rng = np.random.default_rng(1)
    n = 400
    f = rng.normal(size=n)  # the label's factor, shared by 8 unit-scale dims
    signal = f[:, None] + 0.3 * rng.normal(size=(n, 8))
    loud = 100 * rng.normal(size=(n, 2))  # two large-scale noise dims take the raw PCA's top components
    x, y = np.hstack([loud, signal]), (f > 0).astype(int)
    raw = fit_linear_probe(x, y, n_boot=10, pca_dim=2, standardize_before_pca=False)
    std = fit_linear_probe(x, y, n_boot=10, pca_dim=2)
    assert raw.acc < 0.65 and std.acc > 0.9
    # the standardisation is the train split's: wild test features change nothing chosen on train + val
    _, _, te = stratified_split(y, (0.6, 0.2, 0.2), 0)
    wild = x.copy()
    wild[te] *= 1e3
    again = fit_linear_probe(wild, y, n_boot=10, pca_dim=2)
    assert (again.C, again.val_acc) == (std.C, std.val_acc)


def test_match_dim_may_list_several_k():
    s = ProbeSettings.from_dict({"match_dim": [64, 16, 32]})
    assert s.match_dims == [16, 32, 64] and s.multi_k and s.matched_task == "has_y@transfer_pca64"
    for bad in ([16, 16], [0, 8], [], [8, "16"]):
        with pytest.raises(ValueError, match="match_dim"):
            ProbeSettings.from_dict({"match_dim": bad})
    res = {f"has_y@transfer_pca{k}": ProbeResult(f"has_y@transfer_pca{k}", min(k, 40), 60, 20, 20, 1.0, 0.8,
                                                  0.6 + k / 1000, 0.5, 0.7, 0.8, 0.75, 0.85, 0.5, pca_requested=k,
                                                  feature_rank=40) for k in (16, 32, 64)}
    cols = matched_columns(res, s)
    assert cols["probe_acc_k16"] == pytest.approx(0.616) and cols["dim_k64"] == 40
    assert cols["probe_acc_matched"] == pytest.approx(0.664)
    assert (cols["matched_dim"], cols["matched_k_requested"], cols["matched_rank"]) == (40, 64, 40)


def test_presets_keep_their_probe_and_new_ones_get_the_hygienic_one(tmp_path):
    from probes.sweep import SweepSpec

    cpu = SweepSpec.load("cpu", tmp_path).probe  # the committed cells' probe, written out
    assert (cpu.c_grid_widen, cpu.standardize_before_pca, cpu.rank_cap) == (False, False, False)
    assert list(cpu.Cs) == [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0] and cpu.match_dim == 128
    new = ProbeSettings()
    assert (new.c_grid_widen, new.standardize_before_pca, new.rank_cap) == (True, True, True)
    assert SweepSpec.load("paper", tmp_path).probe.rank_cap and cpu.digest() != new.digest()
    # with the cpu settings the probe neither widens nor caps (the old probe): C stays on the grid's top
    x, y = _noiseless_correlated()
    r = fit_linear_probe(x, y, pca_dim=10, **{**cpu.fit_kwargs(), "n_boot": 10})
    assert r.C_grid_high == 100.0 and r.feature_dim == 10 and r.feature_rank is None
