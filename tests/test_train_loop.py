"""The pretraining loop: it learns, it records, it resumes bit for bit, it fails clearly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from study_fixtures import TINY_VIT, write_dataset

from revtransfer.data import BatchLoader, holdout_split, subset_fraction
from revtransfer.train import CheckpointError, PretrainConfig, load_checkpoint, pretrain


@pytest.fixture(scope="module")
def easy(study_dataset):
    return study_dataset


def _cfg(dataset, out, **kw):
    base = dict(dataset=str(dataset), out=str(out), arch="vit_micro", model_kwargs=dict(TINY_VIT), epochs=3,
                batch_size=16, lr=2e-3, val_frac=0.2, prefetch=1)
    return PretrainConfig(**{**base, **kw})


def test_tiny_run_learns_and_records_everything(easy, tmp_path):
    result = pretrain(_cfg(easy, tmp_path / "run", epochs=4, lr=5e-3), progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.1, "the loss did not fall"
    assert result.val_acc >= 0.85, f"val acc {result.val_acc} on an easy set (chance 0.5)"
    for r in records:
        assert r["samples_per_s"] > 0 and r["peak_mem_mb"] > 0 and 0 <= r["data_wait_s"]
    assert result.n_train == 128 and result.n_val == 32 and result.feature_dim == 16
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["config"]["seed"] == 0 and saved["config"]["arch"] == "vit_micro"
    assert {"git_commit", "versions"} <= set(saved["provenance"]) and "torch" in saved["provenance"]["versions"]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert ckpt["epoch"] == 4 and {"model", "optimizer", "scheduler", "rng"} <= set(ckpt)
    assert (tmp_path / "run" / "checkpoint_best.pt").exists() and (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("arch", ["vit_micro", "revvit_micro"])
def test_bf16_on_cpu_learns_and_tracks_the_fp32_loss_curve(easy, tmp_path, arch):
    """bf16 autocast is a first-class CPU precision: same recipe, same seed, the loss falls and
    each epoch's loss stays within bf16's rounding of the fp32 run's."""
    curves = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        result = pretrain(_cfg(easy, out, arch=arch, epochs=4, lr=5e-3, precision=precision), progress=False)
        curves[precision] = [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert result.val_acc >= 0.85, f"{arch} {precision}: val acc {result.val_acc} on an easy set"
        assert yaml.safe_load((out / "config.yaml").read_text())["config"]["precision"] == precision
    fp32, bf16 = np.array(curves["fp32"]), np.array(curves["bf16"])
    assert bf16[-1] < bf16[0] - 0.1, f"the bf16 loss did not fall: {bf16}"
    assert np.abs(bf16 - fp32).max() < 0.03, f"bf16 {bf16} strays from fp32 {fp32}"


class _Crash(RuntimeError):
    pass


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(easy, tmp_path):
    # Reversible model with drop path, so RNG state restoration matters too.
    kw = dict(arch="revvit_micro", backprop="reprop", model_kwargs=dict(TINY_VIT, drop_path_rate=0.1))
    pretrain(_cfg(easy, tmp_path / "whole", **kw), progress=False)

    def crash_after_first_epoch(record):
        if record["epoch"] == 1:
            raise _Crash("simulated kill")

    with pytest.raises(_Crash):
        pretrain(_cfg(easy, tmp_path / "split", **kw), progress=False, callbacks=[crash_after_first_epoch])
    assert load_checkpoint(tmp_path / "split" / "checkpoint_last.pt")["epoch"] == 1
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(_cfg(easy, tmp_path / "split", **kw), progress=False)
    resumed = pretrain(_cfg(easy, tmp_path / "split", **kw), resume=True, progress=False)
    assert resumed.epochs == 3

    a = load_checkpoint(tmp_path / "whole" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint_last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after resume"
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_resume_refuses_a_changed_config(easy, tmp_path):
    pretrain(_cfg(easy, tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(ValueError, match="lr"):
        pretrain(_cfg(easy, tmp_path / "run", epochs=1, lr=1e-2), resume=True, progress=False)


def test_corrupt_or_missing_checkpoint_gives_an_error_naming_the_file(easy, tmp_path):
    missing = tmp_path / "nowhere" / "checkpoint_last.pt"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_checkpoint(missing)
    run = tmp_path / "run"
    pretrain(_cfg(easy, run, epochs=1), progress=False)
    path = run / "checkpoint_last.pt"
    path.write_bytes(path.read_bytes()[:200])  # truncated, as by a crash of a non-atomic writer
    with pytest.raises(CheckpointError, match=f"{path}.*corrupt"):
        pretrain(_cfg(easy, run, epochs=1), resume=True, progress=False)


@pytest.mark.parametrize("field,value", [("fraction", 1.5), ("epochs", 0), ("precision", "fp8"),
                                         ("backprop", "sideways"), ("lr", -1.0)])
def test_bad_config_values_are_named(field, value, tmp_path):
    with pytest.raises(ValueError, match=field):
        PretrainConfig(dataset="d", out="o", **{field: value})


def test_missing_dataset_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        pretrain(_cfg(tmp_path / "nope", tmp_path / "run"), progress=False)
    incomplete = write_dataset(tmp_path / "partial", n=20)
    (incomplete / "manifest.json").unlink()
    with pytest.raises(ValueError, match="not a complete clevr_gen dataset: manifest.json is missing"):
        pretrain(_cfg(incomplete, tmp_path / "run"), progress=False)


def test_splits_are_seeded_fixed_and_nested():
    train, held = holdout_split(1000, 0.1, seed=0)
    assert len(held) == 100 and not set(train) & set(held)
    assert np.array_equal(held, holdout_split(1000, 0.1, seed=0)[1])
    third, half = subset_fraction(train, 1 / 3, seed=5), subset_fraction(train, 1 / 2, seed=5)
    assert len(third) == 300 and len(half) == 450 and set(third) <= set(half)
    assert not np.array_equal(third, subset_fraction(train, 1 / 3, seed=6))


def test_distributed_shards_partition_each_global_batch():
    """Two ranks together see each global batch of one process; a final odd batch is cut to an
    even size so both ranks average equally many samples."""
    images, labels = np.zeros((51, 4, 4, 3), np.uint8), np.arange(51)
    kw = dict(shuffle=True, seed=3, prefetch=0)
    whole = [y.tolist() for _, y in BatchLoader(images, labels, np.arange(51), 8, **kw)]
    ranks = [[y.tolist() for _, y in BatchLoader(images, labels, np.arange(51), 8, rank=r, world=2, **kw)]
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole) == 7
    for r0, r1, w in zip(*ranks, whole):
        assert len(r0) == len(r1)
        assert set(r0 + r1) <= set(w) and len(r0 + r1) == len(w) - len(w) % 2


def test_benchmark_times_archs_and_precisions_in_one_interleaved_run(tmp_path):
    import json

    from click.testing import CliRunner

    from revtransfer.cli import main

    data = write_dataset(tmp_path / "d", n=64)
    r = CliRunner().invoke(main, [
        "pretrain", str(data), "--out", str(tmp_path / "b"), "--model-kw", "patch_size=4", "--model-kw", "embed_dim=16",
        "--model-kw", "depth=2", "--model-kw", "num_heads=2", "--batch-size", "16", "--device", "cpu",
        "--benchmark-steps", "2", "--benchmark-rounds", "2", "--benchmark-archs", "vit_micro,revvit_micro",
        "--benchmark-precisions", "fp32,bf16", "--no-progress"])
    assert r.exit_code == 0, r.output
    written = json.loads((tmp_path / "b" / "throughput.json").read_text())
    assert [(x["model"], x["precision"]) for x in written["records"]] == [
        ("vit_micro", "fp32"), ("vit_micro", "bf16"), ("revvit_micro", "fp32"), ("revvit_micro", "bf16")]
    assert all(len(x["samples_per_s_all"]) == 2 for x in written["records"])
    ratios = {(q["varies"], q["numerator"], q["denominator"]) for q in written["ratios"]}
    assert ratios == {("precision", "bf16", "fp32"), ("model", "revvit_micro/pareprop", "vit_micro/backprop")}
    assert len(written["ratios"]) == 4 and all(q["min"] <= q["median"] <= q["max"] for q in written["ratios"])
