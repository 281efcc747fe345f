"""`revtransfer ladder`: accuracy on X per rung and arch, from real (tiny) pretraining runs."""
from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from probes.ladder import Rung
from revtransfer.cli import main


def test_ladder_trains_each_rung_and_arch_and_resumes(tmp_path):
    args = ["ladder", "--out", str(tmp_path / "rep"), "--workdir", str(tmp_path / "w"), "--rung", "16:32:1",
            "--n", "200", "--epochs", "2", "--batch-size", "32", "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    per_epoch = pd.read_csv(tmp_path / "rep" / "ladder_epochs.csv")
    assert len(per_epoch) == 2 * 2 and set(per_epoch["arch"]) == {"vit_micro", "revvit_micro"}
    assert per_epoch.groupby("arch")["samples_seen"].max().eq(2 * 180).all()  # 90% of 200, twice
    summary = pd.read_csv(tmp_path / "rep" / "ladder.csv")
    assert len(summary) == 2 and summary["final_val_acc"].between(0, 1).all()
    assert (tmp_path / "rep" / "ladder.png").stat().st_size > 5000
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and again.stderr.count("done before") == 2


@pytest.mark.parametrize("bad", ["48:100:4", "48x128x4", "10:64:4"])
def test_bad_rungs_are_explained(bad):
    with pytest.raises(ValueError, match="SIZE:WIDTH:DEPTH|multiple"):
        Rung.parse(bad)
