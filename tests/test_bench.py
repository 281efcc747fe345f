"""`revtransfer bench`: records, JSON output and errors (speed itself is never asserted)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from revtransfer.bench.reconstruction import reconstruction_errors
from revtransfer.cli import main

TINY_KW = ["--model-kw", "img_size=16", "--model-kw", "patch_size=4", "--model-kw", "embed_dim=16",
           "--model-kw", "depth=2", "--model-kw", "num_heads=2"]


def test_bench_writes_a_record_per_mode_and_batch_size(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--model", "revvit_micro", "--batch-sizes", "2,3", "--steps", "2",
                                       "--warmup", "1", "--device", "cpu", "--out", str(out), *TINY_KW])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    got = [(r["model"], r["mode"], r["batch_size"]) for r in data["records"]]
    assert got == [("revvit_micro", m, b) for m in ("backprop", "reprop", "pareprop") for b in (2, 3)] + [
        ("vit_micro", "vanilla", 2), ("vit_micro", "vanilla", 3)]
    for r in data["records"]:
        assert r["status"] == "ok" and r["samples_per_s"] > 0 and len(r["step_ms_all"]) == 2
        assert r["input_shape"] == [r["batch_size"], 3, 16, 16] and r["torch"] and "git_commit" in r
    by = {(r["mode"], r["batch_size"]): r["activation_bytes"] for r in data["records"]}
    assert by[("reprop", 3)] < by[("backprop", 3)]
    assert data["meta"]["command"].startswith("revtransfer bench") and data["meta"]["versions"]["torch"]


def test_bench_rejects_unknown_mode_and_bad_batch_sizes():
    r = CliRunner().invoke(main, ["bench", "--modes", "reprop,turbo", "--device", "cpu"])
    assert r.exit_code != 0 and "'turbo'" in r.output and "backprop, reprop, pareprop" in r.output
    r = CliRunner().invoke(main, ["bench", "--batch-sizes", "8,x", "--device", "cpu"])
    assert r.exit_code != 0 and "comma-separated list of integers" in r.output


def test_reconstruction_error_small_in_float32_and_tiny_in_float64():
    import torch

    kw = dict(img_size=16, patch_size=4, embed_dim=16, num_heads=2)
    f32 = reconstruction_errors("revvit_micro", [2, 16], model_kwargs=kw)
    f64 = reconstruction_errors("revvit_micro", [16], dtype=torch.float64, model_kwargs=kw)
    assert all(r["max_rel_error"] < 1e-5 for r in f32)
    assert f64[0]["max_rel_error"] < 1e-13 < f32[1]["max_rel_error"]


def test_gpu_plan_gradient_check_runs_the_device_independent_part():
    from revtransfer.bench.gpu_plan import PLAN, gradient_check

    errs = gradient_check("cpu")
    assert len(errs) == 8 and max(errs.values()) <= 1e-10
    assert {m for jobs in PLAN.values() for _, m, _, _ in jobs} >= {"revvit_base", "revswin_tiny", "revmvit_tiny",
                                                                   "revroberta_base"}


def test_gpu_plan_continues_where_an_earlier_call_stopped(tmp_path):
    from revtransfer.bench.gpu_plan import PLAN, jobs_to_run, should_start

    every = jobs_to_run(list(PLAN), "h100", [tmp_path])
    assert every[0][0] == "checks" and len(every) == sum(len(j) for j in PLAN.values())
    (tmp_path / "h100_checks.json").write_text("{}")
    (tmp_path / "h100_revvit_base.json").write_text("{}")
    (tmp_path / "h200_revvit_large.json").write_text("{}")  # another device's figures do not count
    left = [stem for stem, *_ in jobs_to_run(["check", "vit"], "h100", [tmp_path / "none", tmp_path])]
    assert left == ["revvit_large"]
    assert should_start(0.0, 0.0, 540) and should_start(300.0, 200.0, 540)
    assert not should_start(400.0, 200.0, 540)


def test_gpu_plan_writes_one_json_per_job_and_skips_it_next_time(tmp_path, monkeypatch, capsys):
    import json

    from revtransfer.bench import gpu_plan

    tiny = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)
    monkeypatch.setattr(gpu_plan, "PLAN", {"vit": [("tiny", "revvit_micro", [2], {"model_kwargs": tiny})]})
    argv = ["--group", "vit", "--out", str(tmp_path), "--device", "cpu", "--amp", "none", "--steps", "1", "--warmup", "0"]
    assert gpu_plan.main(argv) == 0
    written = json.loads((tmp_path / "cpu_tiny.json").read_text())
    assert {r["mode"] for r in written["records"]} >= {"backprop", "reprop", "pareprop"}
    assert written["meta"]["plan"] == "revtransfer.bench.gpu_plan"
    assert gpu_plan.main(argv) == 0
    assert "0 job(s) to run" in capsys.readouterr().out


def test_cpu_thread_recompute_variant_is_exact():
    # The measurement compares like with like only if the threaded variant computes the same grads.
    import torch

    from helpers import assert_same_grads, grads_of
    from revtransfer.bench.cpu_thread_recompute import _recompute_on_a_thread
    from revtransfer.models import create_model

    model = create_model("revvit_micro", img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2,
                         num_classes=2, proj_drop_rate=0.1, drop_path_rate=0.1).double().train()
    x = (torch.randn(2, 3, 16, 16, dtype=torch.float64),)
    loss = lambda out: out.square().sum()  # noqa: E731
    model.set_backprop("backprop")
    ref = grads_of(model, x, loss)
    model.set_backprop("pareprop")
    with _recompute_on_a_thread():
        got = grads_of(model, x, loss)
    assert_same_grads(got, ref, 1e-10, "pareprop, recompute on a thread")
