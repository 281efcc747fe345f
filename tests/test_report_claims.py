"""The declared claims' verdicts (revtransfer.report.claims on revtransfer.report.stats): roles, the
primary rule, Holm over the secondary claims for "reproduced" and "refuted" alike, power and seeds
needed, and the report's claims section."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from statsmodels.stats.multitest import multipletests

from revtransfer.report.claims import (
    Declaration,
    DeclarationError,
    declaration_lines,
    judge_declared,
    parse_claim_id,
    power_rows,
    verdict_table,
)

CORRS, FRACS, SEEDS = (0.8, 0.3, -0.02), (0.5, 1.0), (0, 1, 2)


def _results(gain, matched_shift=0.0, noise=0.004, seed=0) -> pd.DataFrame:
    """Rows of both archs per cell; RevViT's accuracy is ViT's plus gain(corr, fraction, seed) and
    seeded noise; the width-matched column is the main one minus ``matched_shift`` for RevViT."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in CORRS:
        for f in FRACS:
            for s in SEEDS:
                base = 0.70 + rng.normal(0, noise)
                for arch, acc in (("vit_micro", base), ("revvit_micro", base + gain(c, f, s) + rng.normal(0, noise))):
                    rows.append(dict(sweep="t", arch=arch, corr=c, fraction=f, seed=s, probe_acc=acc, status="ok",
                                     probe_n_test=2000, pretrain_val_acc=0.93, probe_auroc=acc + 0.1,
                                     feature_dim=256 if arch == "revvit_micro" else 128,
                                     probe_acc_matched=acc - (matched_shift if arch == "revvit_micro" else 0)))
    return pd.DataFrame(rows)


def _verdicts(table) -> dict:
    return dict(zip(table["claim_id"], table["verdict"]))


THESIS = lambda c, f, s: 0.03 + (0.04 if c == 0.3 else 0) + (0.03 if f == 0.5 else 0)  # noqa: E731


def test_claim_ids_and_a_bad_declaration_are_explained():
    assert parse_claim_id("a") == ("a", "probe_acc") and parse_claim_id("b1_matched") == ("b1", "probe_acc_matched")
    assert parse_claim_id("a_k64") == ("a", "probe_acc_k64")
    for bad, match in (({"primary": "c"}, "claim 'c'"), ({"primary": "a", "secondary": ["a"]}, "more than one role"),
                       ({"alpha": 0.7}, "alpha"), ({"max_seeds": 1}, "max_seeds"), ({"spending": "x"}, "spending"),
                       ({"primay": "a"}, "unknown keys")):
        with pytest.raises(DeclarationError, match=match):
            Declaration.from_dict(bad)
    d = Declaration.from_dict({"primary": "a_matched", "secondary": ["a", "b1"], "note": "x"})
    assert d.roles() == [("a_matched", "primary"), ("a", "secondary"), ("b1", "secondary")]
    assert d.digest() == Declaration.from_dict({"primary": "a_matched", "secondary": ["a", "b1"]}).digest()  # text


def test_the_thesis_pattern_is_reproduced_and_its_mirror_refuted_holm_both_ways():
    decl = Declaration.from_dict({"primary": "a", "secondary": ["b1", "b2"]})
    t = judge_declared(_results(THESIS), decl, n_boot=500)
    v = _verdicts(t)
    assert (v["a"], v["b1"], v["b2"]) == ("reproduced", "reproduced", "reproduced")
    mirror = judge_declared(_results(lambda c, f, s: -THESIS(c, f, s)), decl, n_boot=500)
    v = _verdicts(mirror)
    assert (v["a"], v["b1"], v["b2"]) == ("refuted", "refuted", "refuted")
    # the secondary verdicts use Holm's adjusted p-values, for support and for refutation alike
    sec = mirror[mirror["role"] == "secondary"]
    for col, adj in (("p_support", "p_adj"), ("p_refute", "p_adj_refute")):
        expect = multipletests(sec[col].to_numpy(), method="holm")[1]
        assert np.allclose(sec[adj].to_numpy(), expect)
    assert (sec["p_adj_refute"] < 0.025).all()
    # the undeclared claims on the width-matched control are judged too, as exploratory
    assert set(t.loc[t["role"] == "exploratory (undeclared)", "claim_id"]) == {"a_matched", "b1_matched", "b2_matched"}


def test_roles_change_the_verdict_through_multiplicity():
    # a modest gain (seeded): reproduced as the primary claim alone, but its p-value fails Holm in a
    # secondary family of three (adjusted: 3 x p, the smallest p of the family)
    res = _results(lambda c, f, s: 0.005, noise=0.006, seed=3).drop(columns="probe_n_test")
    alone = judge_declared(res, Declaration.from_dict({"primary": "a", "secondary": []}), n_boot=500,
                           only_declared=True).iloc[0]
    fam = judge_declared(res, Declaration.from_dict({"primary": "b2_matched", "secondary": ["a", "b1", "b2"]}),
                         n_boot=500, only_declared=True).set_index("claim_id")
    a = fam.loc["a"]
    assert alone["role"] == "primary" and a["role"] == "secondary"
    assert alone["verdict"] == "reproduced" and alone["p_support"] < 0.025 and math.isnan(alone["p_adj"])
    assert a["p_support"] == pytest.approx(alone["p_support"]) and a["p_adj"] == pytest.approx(3 * a["p_support"])
    assert a["p_adj"] >= 0.025 and a["verdict"] == "inconclusive"
    # a secondary claim's power is computed at alpha over the family size (Holm's first step)
    assert a["alpha_power"] == pytest.approx(0.05 / 3) and alone["alpha_power"] == pytest.approx(0.05)
    assert a["mde"] > alone["mde"]


def test_power_and_seeds_needed_come_with_every_verdict():
    decl = Declaration.from_dict({"primary": "a_matched", "secondary": ["a", "b1", "b2"]})
    t = judge_declared(_results(THESIS, matched_shift=0.01, noise=0.02), decl, n_boot=300, only_declared=True)
    assert list(t["role"]) == ["primary", "secondary", "secondary", "secondary"]
    for r in t.itertuples():
        assert r.mde > 0 and r.seeds_for_1 >= r.seeds_for_2 >= 2 and 0 < r.power_at_1 <= r.power_at_2 <= 1
        assert r.ci_low < r.estimate < r.ci_high and r.boot_low < r.boot_high
    a = t.set_index("claim_id").loc["a"]
    assert not math.isnan(a["p_perm"]) and math.isnan(t.set_index("claim_id").loc["b2", "p_perm"])
    shown = verdict_table(t)
    assert list(shown.columns) == ["claim", "role", "probe", "gain (points)", "model 95% CI", "bootstrap 95% CI",
                                   "p model", "p sign-flip", "p Holm", "d", "verdict"]
    p = power_rows(t, decl.effects)
    assert len(p) == 4 and {"smallest effect detected (points)", "seeds for 1 pt", "seeds for 2 pt"} <= set(p.columns)


def test_one_seed_is_not_testable():
    one = _results(THESIS)
    one = one[one["seed"] == 0]
    t = judge_declared(one, Declaration(), n_boot=100)
    assert set(t["verdict"]) == {"not testable"}


def test_declaration_lines_say_when_how_many_rows_and_what_changed():
    rec = {"sweep": "t", "digest": "d2", "declared_at": "2026-12-07T00:00:00+00:00", "git_commit": "abc",
           "rows_at_declaration": 36, "seen_before": "all 36 cells had been analysed.",
           "history": [{"digest": "d1", "declared_at": "2026-12-06T00:00:00+00:00", "replaced_at": "2026-12-07",
                        "rows_then": 36, "changes": ['claims.primary: "a" -> "a_matched"']}]}
    res = _results(THESIS).assign(declaration=None)
    res.loc[res.index[:4], "declaration"] = "d2"
    text = " ".join(declaration_lines(rec, res))
    assert "when the table held 36 finished row(s)" in text and "seen before the claims were declared" in text
    assert 'claims.primary: "a" -> "a_matched"' in text and "after 36 row(s)" in text
    assert "4 made under this declaration, 32 without one" in text
    assert "not declared in advance" in " ".join(declaration_lines(None))


def test_the_report_shows_roles_intervals_p_d_and_power(tmp_path):
    from revtransfer.cli import main

    d = tmp_path / "results"
    d.mkdir()
    _results(THESIS, matched_shift=0.01, noise=0.02).assign(cell_id=lambda x: x.index.astype(str)).to_parquet(
        d / "results.parquet")
    decl = Declaration.from_dict({"primary": "a_matched", "secondary": ["a", "b1", "b2"]})
    (d / "declaration.json").write_text(json.dumps({
        "sweep": "t", "digest": "x", "claims": decl.hashed(), "declared_at": "2026-12-07T00:00:00+00:00",
        "git_commit": "abc", "rows_at_declaration": 0, "history": []}))
    out = tmp_path / "report"
    r = CliRunner().invoke(main, ["report", "--results", str(d), "--out", str(out)])
    assert r.exit_code == 0, r.output
    index = (out / "README.md").read_text()
    assert "Primary claim, declared in advance: **a_matched" in index and "#### Declaration" in index
    assert "#### Power and seeds needed" in index and "#### The gap against the width k" not in index
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims["role"][:4]) == ["primary", "secondary", "secondary", "secondary"]
    assert {"model 95% CI", "bootstrap 95% CI", "p model", "p sign-flip", "p Holm", "d"} <= set(claims.columns)
    power = pd.read_csv(out / "claims_power.csv")
    assert {"smallest effect detected (points)", "seeds for 1 pt", "seeds for 2 pt"} <= set(power.columns)
    full = pd.read_csv(out / "claims_full.csv")
    assert full.loc[full["claim_id"] == "a_matched", "estimate"].iloc[0] == pytest.approx(
        full.loc[full["claim_id"] == "a", "estimate"].iloc[0] - 1.0, abs=1e-6)


def test_a_multi_k_width_control_gets_the_gap_against_k(tmp_path):
    from revtransfer.report.build import build_report

    d = tmp_path / "results"
    d.mkdir()
    res = _results(THESIS, noise=0.01)
    rev = res["arch"] == "revvit_micro"
    for k, shift in ((16, 0.03), (64, 0.01)):  # the gain shrinks as k shrinks
        res[f"probe_acc_k{k}"] = res["probe_acc"] - np.where(rev, shift, 0.0)
    res.assign(cell_id=res.index.astype(str)).to_parquet(d / "results.parquet")
    out = tmp_path / "report"
    build_report(out, [d])
    gap = pd.read_csv(out / "gap_vs_k.csv")
    assert list(gap["k"]) == ["16", "64", "full width"]
    assert gap["gain (points)"].is_monotonic_increasing and (out / "gap_vs_k.png").stat().st_size > 5000
    assert "![gap against k](gap_vs_k.png)" in (out / "README.md").read_text()
