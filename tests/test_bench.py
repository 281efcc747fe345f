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
                                       "--warmup", "1", "--rounds", "2", "--device", "cpu", "--out", str(out),
                                       *TINY_KW])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    got = [(r["model"], r["mode"], r["batch_size"]) for r in data["records"]]
    assert got == [("revvit_micro", m, b) for m in ("backprop", "reprop", "pareprop") for b in (2, 3)] + [
        ("vit_micro", "backprop", 2), ("vit_micro", "backprop", 3)]  # the reference: plain backprop
    assert [r["reference_for"] for r in data["records"]] == [None] * 6 + ["revvit_micro"] * 2
    for r in data["records"]:
        assert r["status"] == "ok" and r["samples_per_s"] > 0 and len(r["step_ms_all"]) == 2 * 2
        assert len(r["samples_per_s_all"]) == 2 and r["samples_per_s_rounds"]["min"] <= r["samples_per_s"]
        assert r["input_shape"] == [r["batch_size"], 3, 16, 16] and r["torch"] and "git_commit" in r
    by = {(r["mode"], r["batch_size"]): r["activation_bytes"] for r in data["records"]}
    assert by[("reprop", 3)] < by[("backprop", 3)]
    assert data["meta"]["command"].startswith("revtransfer bench") and data["meta"]["versions"]["torch"]
    pairs = {(q["numerator"], q["denominator"], q["batch_size"]) for q in data["ratios"]}
    assert ("revvit_micro pareprop", "revvit_micro reprop", 3) in pairs
    assert ("revvit_micro reprop", "vit_micro backprop", 2) in pairs  # each mode over the reference
    assert all(len(q["rounds"]) == 2 for q in data["ratios"])


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


def test_gpu_plan_gradient_checks_run_the_device_independent_part():
    from revtransfer.bench.gpu_plan import BF16_RTOL, PLAN, gradient_check

    float64 = gradient_check("cpu")
    assert len(float64) == 8 and max(float64.values()) <= 1e-10
    bf16 = gradient_check("cpu", amp="bf16")  # dropout on, under autocast: the masks must match too
    assert len(bf16) == 8 and max(bf16.values()) <= BF16_RTOL
    assert {m for jobs in PLAN.values() for _, m, _, _ in jobs} >= {"revvit_base", "revswin_tiny", "revmvit_tiny",
                                                                   "revroberta_base"}


def test_gpu_plan_continues_where_an_earlier_call_stopped(tmp_path):
    import json

    from revtransfer.bench.gpu_plan import PLAN, jobs_to_run, load_done, should_start

    every = jobs_to_run(list(PLAN), load_done("h100", [tmp_path]))
    assert every[0][0] == "checks" and len(every) == sum(len(j) for j in PLAN.values())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rec = dict(model="revvit_large", mode="backprop", batch_size=8, status="ok")
    (tmp_path / "a" / "h100_gpu_plan.json").write_text(json.dumps({"jobs": {
        "checks": {"complete": True, "records": []},
        "revvit_base": {"complete": True, "records": []},
        "revvit_large": {"complete": False, "records": [rec]}}}))
    (tmp_path / "b" / "h200_gpu_plan.json").write_text(json.dumps({"jobs": {  # another device's do not count
        "revvit_large": {"complete": True, "records": []}}}))
    done = load_done("h100", [tmp_path / "none", tmp_path / "a", tmp_path / "b"])
    assert [job[0] for job in jobs_to_run(["check", "vit"], done)] == ["revvit_large"]
    assert done["revvit_large"]["records"] == [rec]  # a partial job resumes from its records
    assert should_start(0.0, 0.0, 540) and should_start(300.0, 200.0, 540)
    assert not should_start(400.0, 200.0, 540)


TINY_VIT = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)


def _tiny_plan(n_jobs):
    return {"check": [("checks", None, [], {})],
            "vit": [(f"tiny{i}", "revvit_micro", [2, 4], {"model_kwargs": TINY_VIT}) for i in range(n_jobs)]}


def _plan_argv(out, budget=1e6):
    return ["--out", str(out), "--device", "cpu", "--amp", "none", "--steps", "1", "--warmup", "0",
            "--time-budget-s", str(budget)]


def test_gpu_plan_writes_one_file_and_skips_what_it_measured(tmp_path, monkeypatch, capsys):
    """The device hands back at most 8 files: the whole plan (checks + 9 jobs) is one JSON, which
    reads as a bench JSON, and a second call measures nothing again."""
    import json

    from revtransfer.bench import gpu_plan
    from revtransfer.report.tables import load_bench

    monkeypatch.setattr(gpu_plan, "PLAN", _tiny_plan(9))
    monkeypatch.setattr(gpu_plan, "check_steps", lambda run: [])
    assert gpu_plan.main(_plan_argv(tmp_path)) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["cpu_gpu_plan.json"]
    written = json.loads((tmp_path / "cpu_gpu_plan.json").read_text())
    assert written["meta"]["plan"] == "revtransfer.bench.gpu_plan"
    assert all(job["complete"] for job in written["jobs"].values()) and len(written["jobs"]) == 10
    bench, _, _ = load_bench([tmp_path / "cpu_gpu_plan.json"])
    assert len(bench) == 9 * 4 * 2 and set(bench["mode"]) == {"backprop", "reprop", "pareprop"}
    assert set(bench[bench["reference_for"].notna()]["model"]) == {"vit_micro"}
    assert gpu_plan.main(_plan_argv(tmp_path)) == 0
    assert "0 job(s) to run" in capsys.readouterr().out


def test_gpu_plan_budget_is_required(capsys):
    import pytest

    from revtransfer.bench import gpu_plan

    with pytest.raises(SystemExit):
        gpu_plan.main(["--out", "x", "--device", "cpu"])
    assert "--time-budget-s" in capsys.readouterr().err


class _FakeClock:
    """Each measurement takes 10 fake seconds; nothing else takes time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_gpu_plan_stops_at_its_deadline_keeping_partial_records(tmp_path, monkeypatch):
    import json

    from revtransfer.bench import gpu_plan, throughput

    clock = _FakeClock()
    real_bench_one = throughput.bench_one
    measured = []

    def bench_one(model, name, mode, bs, *args, **kwargs):
        clock.now += 10
        measured.append((name, mode, bs))
        return real_bench_one(model, name, mode, bs, *args, **kwargs)

    monkeypatch.setattr(throughput, "bench_one", bench_one)
    monkeypatch.setattr(gpu_plan, "now", clock)
    monkeypatch.setattr(gpu_plan, "_STARTED", 0.0)
    monkeypatch.setattr(gpu_plan, "PLAN", {"vit": _tiny_plan(1)["vit"]})
    # 6 measurements of 10 s (3 modes x 2 batch sizes; revvit_micro's reference is vit_micro: 2 more)
    assert gpu_plan.main(_plan_argv(tmp_path, budget=45)) == 0
    job = json.loads((tmp_path / "cpu_gpu_plan.json").read_text())["jobs"]["tiny0"]
    assert not job["complete"] and 2 <= len(job["records"]) == len(measured) <= 4
    first = list(measured)
    clock.now = 0.0
    assert gpu_plan.main(_plan_argv(tmp_path)) == 0
    job = json.loads((tmp_path / "cpu_gpu_plan.json").read_text())["jobs"]["tiny0"]
    assert job["complete"] and len(job["records"]) == 8
    assert not set(measured[len(first):]) & set(first)  # nothing measured twice


def test_gpu_plan_survives_a_workspace_error(tmp_path, monkeypatch):
    """cuBLAS/cuDNN workspace failures are RuntimeErrors, not OutOfMemoryError: that batch size
    counts as out of memory, and the plan goes on."""
    import json

    from revtransfer.bench import gpu_plan
    from revtransfer.models.revvit import RevViT

    real = RevViT.forward_features

    def forward_features(self, x):
        if x.shape[0] >= 4 and self.backprop == "reprop":
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        return real(self, x)

    monkeypatch.setattr(RevViT, "forward_features", forward_features)
    monkeypatch.setattr(gpu_plan, "PLAN", {"vit": _tiny_plan(2)["vit"]})
    assert gpu_plan.main(_plan_argv(tmp_path)) == 0
    jobs = json.loads((tmp_path / "cpu_gpu_plan.json").read_text())["jobs"]
    assert all(job["complete"] for job in jobs.values())
    status = {(r["mode"], r["batch_size"]): r["status"] for r in jobs["tiny1"]["records"]}
    assert status[("reprop", 4)] == "oom" and status[("pareprop", 4)] == "ok"


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
