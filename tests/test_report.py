"""`revtransfer report` on synthetic inputs in the toolkit's on-disk formats."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from click.testing import CliRunner

from revtransfer.cli import main
from revtransfer.report import tables


def _results(tmp_path, seeds=(0, 1, 2)):
    rng = np.random.default_rng(0)
    rows = []
    for arch, base in (("vit_micro", 0.70), ("revvit_micro", 0.75)):
        for corr in (0.8, 0.3):
            for frac in (0.5, 1.0):
                for seed in seeds:
                    acc = base + 0.05 * frac + rng.normal(0, 0.01)
                    rows.append(dict(sweep="t", cell_id=f"{arch}-{corr}-{frac}-{seed}", status="ok", arch=arch,
                                     backprop="pareprop", corr=corr, fraction=frac, seed=seed, probe_acc=acc,
                                     probe_acc_ci_low=acc - 0.02, probe_acc_ci_high=acc + 0.02, probe_auroc=acc + 0.1,
                                     feature_dim=512 if arch.startswith("rev") else 256, git_commit="abc"))
    rows.append(dict(sweep="t", cell_id="broken", status="error", arch="vit_micro", corr=0.8, fraction=1.0, seed=9,
                     probe_acc=None, error="boom"))
    rows.append(dict(sweep="det", cell_id="d1", status="ok", arch="revvit_micro", box_AP=12.5, mask_AP=10.0))
    d = tmp_path / "results"
    d.mkdir()
    pd.DataFrame(rows).to_parquet(d / "results.parquet")
    return d


def test_improvement_pairs_seeds_and_gives_a_t_interval(tmp_path):
    res = pd.read_parquet(_results(tmp_path) / "results.parquet")
    imp = tables.improvement_table(res)
    assert len(imp) == 4 and (imp["n"] == 3).all()
    assert imp["improvement"].between(0.02, 0.08).all()
    assert (imp["ci_low"] < imp["improvement"]).all() and (imp["improvement"] < imp["ci_high"]).all()
    probe = tables.probe_table(res)
    assert len(probe) == 8 and (probe["n"] == 3).all()  # the failed cell is not averaged in


def test_single_seed_uses_the_bootstrap_cis(tmp_path):
    res = pd.read_parquet(_results(tmp_path, seeds=(0,)) / "results.parquet")
    imp = tables.improvement_table(res)
    half = (imp["ci_high"] - imp["ci_low"]) / 2
    assert np.allclose(half, np.sqrt(2) * 0.02) and (imp["ci_method"] == "bootstrap CIs, 1 seed").all()


def test_report_writes_tables_plots_and_index(tmp_path):
    results = _results(tmp_path)
    ds = tmp_path / "data" / "pre80"
    ds.mkdir(parents=True)
    (ds / "manifest.json").write_text(json.dumps({
        "n": 100, "seed": 1, "image_shape": [80, 80, 3], "spec": {"split": "pretrain"}, "git_commit": "abc",
        "targets": {"p_x": 0.51, "p_y": 0.51, "corr": 0.8},
        "measured": {"p_x": 0.51, "p_y": 0.51, "corr": 0.7997, "object_count_histogram": {"3": 50, "10": 50}}}))
    bench = tmp_path / "bench.json"
    recs = [dict(model=m, mode=mode, batch_size=b, status="ok", samples_per_s=s * b, step_ms_median=1.0,
                 activation_bytes_per_sample=a, peak_mem_bytes=None, device="cpu")
            for m, mode, s, a in (("revvit_micro", "reprop", 1.0, 1e5), ("revvit_micro", "pareprop", 1.1, 1e5),
                                  ("vit_micro", "vanilla", 1.4, 1e6)) for b in (2, 4)]  # an older file's vocabulary
    bench.write_text(json.dumps({"meta": {"command": "revtransfer bench", "machine": {}}, "records": recs}))
    out = tmp_path / "reports"
    r = CliRunner().invoke(main, ["report", "--results", str(results), "--bench", str(bench),
                                  "--datasets", str(tmp_path / "data"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    for name in ("datasets", "probe_accuracy", "improvement", "detection", "bench", "bench_summary"):
        for ext in ("md", "csv", "tex"):
            assert (out / f"{name}.{ext}").exists(), f"{name}.{ext}"
    for png in ("probe_accuracy", "improvement", "bench_throughput", "bench_memory"):
        assert (out / f"{png}.png").stat().st_size > 5000
    index = (out / "README.md").read_text()
    assert "![probe accuracy](probe_accuracy.png)" in index and "0.7997" in index and "| pre80 |" in index
    summary = pd.read_csv(out / "bench_summary.csv")
    assert np.isclose(summary["pareprop_over_reprop_min"].iloc[0], 1.1)
    assert np.isclose(summary["best_pareprop_over_reference"].iloc[0], 1.1 / 1.4)
    assert np.isclose(summary["reference_act_over_reprop"].iloc[0], 10.0)
    assert json.loads((out / "provenance.json").read_text())["command"].startswith("revtransfer report")


def test_width_matched_control_gets_its_own_improvement_table(tmp_path):
    d = _results(tmp_path)
    res = pd.read_parquet(d / "results.parquet")
    ok = res["probe_acc"].notna()
    # The matched probe: ViT keeps its accuracy, RevViT loses 0.03 + a seed-dependent 0.01 * seed.
    shift = np.where(res["arch"] == "revvit_micro", -0.03 - 0.01 * res["seed"].fillna(0), 0.0)
    res.loc[ok, "probe_acc_matched"] = res.loc[ok, "probe_acc"] + shift[ok.to_numpy()]
    res.loc[ok, "probe_acc_matched_ci_low"] = res.loc[ok, "probe_acc_matched"] - 0.02
    res.loc[ok, "probe_acc_matched_ci_high"] = res.loc[ok, "probe_acc_matched"] + 0.02
    res.loc[ok, "matched_dim"] = 256
    res.to_parquet(d / "results.parquet")
    out = tmp_path / "reports"
    r = CliRunner().invoke(main, ["report", "--results", str(d), "--out", str(out)])
    assert r.exit_code == 0, r.output
    for ext in ("md", "csv", "tex"):
        assert (out / f"improvement_matched.{ext}").exists()
    matched = pd.read_csv(out / "improvement_matched.csv")
    main_imp = pd.read_csv(out / "improvement.csv")
    assert len(matched) == 4 and (matched["n"] == 3).all()
    rows = res[ok]
    for m in matched.itertuples():
        cell = rows[(rows["corr"] == m.corr) & (rows["fraction"] == m.fraction)]
        rev = cell[cell["arch"] == "revvit_micro"].set_index("seed")["probe_acc_matched"]
        base = cell[cell["arch"] == "vit_micro"].set_index("seed")["probe_acc_matched"]
        assert np.isclose(m.improvement, (rev - base).mean())
    # The matched difference is the main one minus the RevViT shift (mean over seeds 0, 1, 2: 0.04).
    assert np.allclose(matched["improvement"], main_imp["improvement"] - 0.04)
    index = (out / "README.md").read_text()
    assert "### Width-matched control (top-k PCA components of each backbone's features)" in index
    assert "k = 256" in index
    # The main table does not depend on the matched columns.
    (tmp_path / "plain").mkdir()
    plain = tables.improvement_table(pd.read_parquet(_results(tmp_path / "plain") / "results.parquet"))
    assert np.allclose(plain["improvement"], main_imp["improvement"])


def test_no_matched_section_without_the_matched_column(tmp_path):
    out = tmp_path / "reports"
    r = CliRunner().invoke(main, ["report", "--results", str(_results(tmp_path)), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "improvement.csv").exists() and not (out / "improvement_matched.csv").exists()
    assert "Width-matched" not in (out / "README.md").read_text()
    # A table whose matched column is all null (the setting off) reads the same.
    (tmp_path / "off").mkdir()
    res = pd.read_parquet(_results(tmp_path / "off") / "results.parquet").assign(probe_acc_matched=None)
    assert tables.improvement_table(res, column="probe_acc_matched").empty


def test_claims_are_also_judged_without_cells_below_the_sanity_bar(tmp_path):
    d = _results(tmp_path)
    res = pd.read_parquet(d / "results.parquet")
    ok = res["probe_acc"].notna()
    res.loc[ok, "pretrain_val_acc"] = 0.93
    res.loc[ok, "sanity_x_acc"] = 0.92
    short = ok & (res["arch"] == "vit_micro") & (res["corr"] == 0.3) & (res["fraction"] == 1.0) & (res["seed"] == 1)
    res.loc[short, "pretrain_val_acc"] = 0.898
    res.to_parquet(d / "results.parquet")
    out = tmp_path / "reports"
    r = CliRunner().invoke(main, ["report", "--results", str(d), "--out", str(out)])
    assert r.exit_code == 0, r.output
    claims = pd.read_csv(out / "claims.csv")
    only = claims[claims["probe"] == "main probe, cells >= 0.90 on X only"]
    assert len(only) == 3 and only["role"].str.startswith("robustness: ").all()  # the declared (default) claims
    full = pd.read_csv(out / "claims_full.csv")
    robust = full[full["probe"] == "main probe, cells >= 0.90 on X only"]
    assert (robust["n_pairs"] == 11).all() and (full.loc[~full.index.isin(robust.index), "n_pairs"] == 12).all()
    index = (out / "README.md").read_text()
    assert "1 cell(s) stayed below 0.90 on X" in index and "1 of 24 cells stayed below the 0.90" in index
    assert "No declaration found next to the results" in index  # the default roles, said so
    # with every cell above the bar there is no such variant
    res.loc[short, "pretrain_val_acc"] = 0.91
    res.to_parquet(d / "results.parquet")
    r = CliRunner().invoke(main, ["report", "--results", str(d), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 0 and "only" not in " ".join(pd.read_csv(tmp_path / "r2" / "claims.csv")["probe"])
