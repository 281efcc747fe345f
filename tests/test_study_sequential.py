"""Seeds until decided (probes.sequential) with a fake cell runner whose rows have a known effect:
a big effect stops "decided", a null one at "max seeds" or "budget spent"; the state is written
after every look and a re-run continues from it."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from probes.sequential import until_decided
from probes.sweep import SweepError, SweepSpec
from revtransfer.report import claims as C
from revtransfer.report import stats as S
from revtransfer.results import ResultsTable


def _spec(tmp_path, **claims) -> SweepSpec:
    d = {"name": "seq", "out": "out", "datasets": {"pretrain": {0.8: "pt8", 0.0: "pt0"}, "transfer": "tf"},
         "grid": {"arch": ["vit_micro", "revvit_micro"], "corr": [0.8, 0.0], "fraction": ["1/2", 1], "seed": [0, 1]},
         "model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2},
         "recipe": {"epochs": 1, "batch_size": 16},
         "claims": {"primary": "a", "secondary": [], "max_seeds": 5, "spending": "obf", **claims}}
    return SweepSpec.from_dict(d, workdir=tmp_path)


class Runner:
    """probe_acc = 70 + RevViT's ``effect`` + N(0, sd(corr)) points, seeded by the cell."""

    def __init__(self, effect, sd=None, wall=60.0):
        self.effect, self.sd, self.wall, self.calls = effect, sd or {0.8: 1.0, 0.0: 1.0}, wall, []

    def __call__(self, spec, cell, progress):
        self.calls.append(cell.cell_id)
        rng = np.random.default_rng(zlib.crc32(cell.cell_id.encode()))
        acc = 70 + (self.effect if cell.arch == "revvit_micro" else 0) + rng.normal(0, self.sd[cell.corr])
        return {"probe_acc": acc / 100, "probe_n_test": 2000, "wall_time_s": self.wall}


def _state(spec):
    return json.loads((spec.out / "sequential.json").read_text())


def test_a_big_effect_is_decided_and_a_rerun_does_nothing(tmp_path):
    spec = _spec(tmp_path)
    run = Runner(effect=1.6)  # 1.6 SDs: not decided on the 2 grid seeds, decided a few blocks on
    rep = until_decided(spec, cell_runner=run, progress=False)
    assert rep.stop == "decided" and "reproduced" in rep.message
    st = _state(spec)
    assert st["status"] == "decided" and st["looks"][-1]["decision"] == "reject" and len(st["looks"]) >= 2
    assert all(lk["decision"] == "continue" and lk["z"] < lk["boundary_z"] for lk in st["looks"][:-1])
    assert st["looks"][-1]["z"] >= st["looks"][-1]["boundary_z"] and not st["looks"][-1]["final"]
    lk = st["looks"][0]  # look 1: the grid's own 2 seeds, t = 2 / 5 (equal allocation)
    assert lk["info_fraction"] == pytest.approx(2 / 5) and lk["seeds_min"] == lk["seeds_max"] == 2
    assert lk["boundary_z"] == pytest.approx(S.gs_boundaries([0.4], 0.025, "obf")["boundaries"][0])
    for prev, nxt in zip(st["looks"], st["looks"][1:]):
        assert nxt["info_fraction"] > prev["info_fraction"] and nxt["seeds_min"] == prev["seeds_min"] + 1
    n = len(run.calls)
    assert n == 8 * (2 + len(st["looks"]) - 1)  # 8 runs per seed: one more seed per cell and block
    again = until_decided(spec, cell_runner=run, progress=False)
    assert again.stop == "decided" and again.message.startswith("already decided") and len(run.calls) == n


def test_a_null_effect_stops_at_max_seeds_with_the_final_look_spending_the_rest(tmp_path):
    spec = _spec(tmp_path, max_seeds=4)
    rep = until_decided(spec, cell_runner=Runner(effect=0.0), progress=False)
    assert rep.stop == "max seeds" and "not established" in rep.message
    st = _state(spec)
    assert [lk["look"] for lk in st["looks"]] == [1, 2, 3] and st["looks"][-1]["final"]
    assert [lk["decision"] for lk in st["looks"]] == ["continue", "continue", "accept-futility"]
    assert st["looks"][-1]["info_fraction"] == pytest.approx(1.0)
    assert st["looks"][-1]["alpha_spent_cumulative"] == pytest.approx(0.025)
    t = ResultsTable(spec.out).read()
    assert len(t) == 8 * 4 and sorted(set(t["seed"])) == [0, 1, 2, 3]


def test_the_budget_stops_before_a_block_it_cannot_finish_and_a_rerun_continues(tmp_path):
    spec = _spec(tmp_path)
    run = Runner(effect=0.0, wall=3600.0)  # every cell "takes" an hour by its measured time
    rep = until_decided(spec, 5.0, cell_runner=run, progress=False)  # the grid runs, then 8 h do not fit in 5
    assert rep.stop == "budget spent" and "does not fit in the 5 h budget" in rep.message
    assert len(run.calls) == 16 and [lk["look"] for lk in _state(spec)["looks"]] == [1]
    rep = until_decided(spec, 8.5, cell_runner=run, progress=False)  # one block fits, the next does not
    assert rep.stop == "budget spent" and len(run.calls) == 24 and len(_state(spec)["looks"]) == 2
    # the budget is the extension's: the 8 h already added count, so 16.5 h buys one more block, not two
    rep = until_decided(spec, 16.5, cell_runner=run, progress=False)
    assert rep.stop == "budget spent" and len(run.calls) == 32 and "(16.0 h used)" in rep.message
    rep = until_decided(spec, cell_runner=run, progress=False)  # no budget: to the end
    assert rep.stop == "max seeds" and [lk["look"] for lk in _state(spec)["looks"]] == [1, 2, 3, 4]
    assert len(run.calls) == 40


def test_neyman_allocation_puts_the_seeds_where_the_variance_is(tmp_path):
    spec = _spec(tmp_path, allocation="neyman", max_seeds=6)
    run = Runner(effect=0.0, sd={0.8: 0.2, 0.0: 3.0})  # the corr-0.8 cells are nearly noiseless
    rep = until_decided(spec, cell_runner=run, progress=False)
    assert rep.stop in ("max seeds", "decided")
    st = _state(spec)
    final = {(c, f): n for c, f, n in st["design"]["final_seeds"]}
    # n_c ~ sqrt(sum over archs of c^2 v): the quiet cells' v is mostly the test set's binomial (~1.1 points^2)
    v = {(c, f): sum(x[4] for x in st["design"]["groups"] if (x[0], x[1]) == (c, f)) for c, f in final}
    for f in (0.5, 1.0):
        assert final[(0.0, f)] == 6
        assert final[(0.8, f)] == int(np.ceil(6 * np.sqrt(v[(0.8, f)] / max(v.values())))) == 3
    t = ResultsTable(spec.out).read()
    per = t.groupby("corr")["seed"].nunique()
    assert per[0.8] == 3 and per[0.0] == (6 if rep.stop == "max seeds" else per[0.0])
    # the information fraction is the primary contrast's variance at the end over now (look 1's variances)
    g = st["design"]["groups"]
    w, v = np.array([x[3] for x in g]), np.array([x[4] for x in g])
    n_end = np.array([final[(x[0], x[1])] for x in g])
    assert st["looks"][0]["info_fraction"] == pytest.approx(C.info_fraction(w, v, np.full(len(g), 2), n_end))


def test_until_decided_needs_a_declared_max_seeds_and_a_stable_declaration(tmp_path):
    with pytest.raises(SweepError, match="needs claims.max_seeds"):
        until_decided(_spec(tmp_path, max_seeds=None), cell_runner=Runner(0.0), progress=False)
    spec = _spec(tmp_path, max_seeds=3)
    until_decided(spec, 0.0001, cell_runner=Runner(0.0, wall=3600.0), progress=False)  # look 1, then no budget
    with pytest.raises(Exception, match="refused"):  # the declaration changed after rows: refused
        until_decided(_spec(tmp_path, max_seeds=4), cell_runner=Runner(0.0), progress=False)


def test_the_cli_runs_the_loop_and_the_report_shows_the_looks(tmp_path, monkeypatch):
    import probes.sequential
    from revtransfer.cli import main

    spec = _spec(tmp_path)
    (tmp_path / "s.yaml").write_text(json.dumps({
        "name": "seq", "out": "out", "datasets": {"pretrain": {0.8: "pt8", 0.0: "pt0"}, "transfer": "tf"},
        "grid": {"arch": ["vit_micro", "revvit_micro"], "corr": [0.8, 0.0], "fraction": ["1/2", 1], "seed": [0, 1]},
        "model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2},
        "recipe": {"epochs": 1, "batch_size": 16},
        "claims": {"primary": "a", "secondary": [], "max_seeds": 5, "spending": "obf"}}).replace('"0.8"', "0.8"))
    real = probes.sequential.until_decided
    monkeypatch.setattr(probes.sequential, "until_decided",
                        lambda s, b, **kw: real(s, b, **{**kw, "cell_runner": Runner(effect=4.0)}))
    r = CliRunner().invoke(main, ["sweep", str(tmp_path / "s.yaml"), "--workdir", str(tmp_path), "--until-decided",
                                  "--budget-hours", "100"])
    assert r.exit_code == 0, r.output
    assert "sweep seq: decided:" in r.output and "look 1: t = 0.40" in r.output
    rows = ResultsTable(spec.out).read().assign(probe_auroc=0.8, feature_dim=16)
    rows.to_parquet(spec.out / "results.parquet")
    out = tmp_path / "report"
    r = CliRunner().invoke(main, ["report", "--results", str(spec.out), "--out", str(out)])
    assert r.exit_code == 0, r.output
    index = (out / "README.md").read_text()
    assert "#### Seeds until decided: the group-sequential looks" in index and "Status: **decided**" in index
    seq = pd.read_csv(out / "sequential.csv")
    assert list(seq["decision"])[-1] == "reject" and seq["information fraction"].is_monotonic_increasing
