"""End to end with the real generator and the real command: `revtransfer sweep` generates its
datasets with clevr_gen, is killed (SIGKILL) mid-cell, and resumes: finished cells are kept and
the interrupted cell continues from its checkpoint. Then `revtransfer probe` and
`revtransfer pretrain --benchmark-steps` on the results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

SWEEP = {
    "name": "e2e", "out": "out",
    "datasets": {"root": "data", "workers": 1,
                 "pretrain": {0.8: {"preset": "pretrain-corr0.80", "n": 120, "width": 24, "height": 24}},
                 "transfer": {"preset": "transfer", "n": 120, "width": 24, "height": 24}},
    "grid": {"arch": ["vit_micro", "revvit_micro"], "corr": [0.8], "fraction": [1], "seed": [0]},
    "model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2},
    # Enough (fast) epochs that the kill reliably lands mid-cell, however quick the machine is.
    "recipe": {"epochs": 30, "batch_size": 16, "val_frac": 0.25},
    "probe": {"n_boot": 50},
}
CLI = [sys.executable, "-m", "revtransfer.cli"]


def _wait_for(predicate, timeout, proc):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for the sweep"
        time.sleep(0.02)


def test_sweep_killed_mid_cell_resumes(tmp_path):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    cmd = CLI + ["sweep", "sweep.yaml", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "out" / "runs"
    second = runs / "revvit_micro-pareprop-corr0.8-frac1.0000-seed0"
    try:
        # Kill once the first cell has its row and the second has checkpointed an epoch.
        _wait_for(lambda: (second / "checkpoint_last.pt").exists(), 240, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    table = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert list(table["arch"]) == ["vit_micro"]
    first_finished = table["finished_at"].iloc[0]
    before = (second / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(before) < 30

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 ran (0 failed), 1 already finished" in done.stdout
    table = pd.read_parquet(tmp_path / "out" / "results.parquet").set_index("arch")
    assert table.loc["vit_micro", "finished_at"] == first_finished
    assert set(table["status"]) == {"ok"} and table.loc["revvit_micro", "feature_dim"] == 32
    after = (second / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in after] == list(range(1, 31))
    # The epochs done before the kill were continued, not redone: their records (with timings) stand.
    checkpointed = json.loads(before[-1])["epoch"] if len(before) else 0
    assert after[:checkpointed] == before[:checkpointed] and checkpointed >= 1
    manifest = json.loads((tmp_path / "data" / "pretrain-corr0.8" / "manifest.json").read_text())
    assert manifest["n"] == 120

    # The other two commands, in process (a fresh interpreter per command costs seconds).
    from click.testing import CliRunner

    from revtransfer.cli import main

    runner = CliRunner()
    probe = runner.invoke(main, ["probe", str(second), str(tmp_path / "data" / "transfer"), "--n-boot", "20",
                                 "--no-progress"])
    assert probe.exit_code == 0, probe.output
    assert "has_y@transfer" in probe.output and "dim=32" in probe.output
    bench = runner.invoke(main, ["pretrain", str(tmp_path / "data" / "pretrain-corr0.8"), "--out",
                                 str(tmp_path / "bench"), "--arch", "revvit_micro", "--model-kw", "patch_size=4",
                                 "--model-kw", "embed_dim=16", "--model-kw", "depth=2", "--model-kw", "num_heads=2",
                                 "--batch-size", "16", "--benchmark-steps", "3", "--no-progress"])
    assert bench.exit_code == 0, bench.output
    written = json.loads((tmp_path / "bench" / "throughput.json").read_text())
    record = written["records"][0]
    assert record["mode"] == "pareprop" and record["samples_per_s"] > 0 and written["meta"]["git_commit"] != ""
