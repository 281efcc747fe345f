"""The GPU plan's mechanics on CPU: every check and measurement on disk the moment it finishes, a
failing one recorded while the next runs, the two calls' files; and the overlap evidence's pure
parts (kernel concurrency from synthetic intervals, profiler output parsing, batch choice, the
pareprop/reprop verdict). The CUDA parts run only on the GPU machine."""
from __future__ import annotations

import json
import random
from collections import namedtuple

import pytest
import torch

from revtransfer.bench import gpu_plan, overlap

TINY_VIT = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)


def _argv(out, call, budget=1e6):
    return ["--call", call, "--out", str(out), "--device", "cpu", "--precision", "fp32", "--steps", "1", "--warmup", "0",
            "--time-budget-s", str(budget)]


# ---------------------------------------------------------------- overlap: pure parts

def test_overlap_stats_counts_time_with_two_streams_busy():
    s = overlap.overlap_stats([("a", 0, 10), ("b", 5, 15)])
    assert (s["busy"], s["concurrent"], s["span"], s["streams"]) == (15, 5, 15, 2)
    assert s["overlap_fraction"] == pytest.approx(1 / 3) and s["stream_busy"] == {"a": 10, "b": 10}
    # kernels overlapping on one stream are not concurrency; touching ones on two are not either
    assert overlap.overlap_stats([("a", 0, 10), ("a", 5, 12)])["concurrent"] == 0
    assert overlap.overlap_stats([("a", 0, 5), ("b", 5, 10)])["overlap_fraction"] == 0
    # idle gaps are not busy time; three streams at once count once
    s = overlap.overlap_stats([("a", 0, 4), ("b", 2, 4), ("c", 3, 4), ("a", 10, 12), ("b", 11, 11)])
    assert (s["busy"], s["concurrent"], s["span"], s["kernels"]) == (6, 2, 12, 4)
    assert overlap.overlap_stats([])["overlap_fraction"] is None


def test_overlap_stats_matches_a_brute_force_count():
    rng = random.Random(0)
    for _ in range(50):
        intervals = []
        for _ in range(rng.randint(1, 12)):
            start = rng.randint(0, 40)
            intervals.append((rng.choice("xyz"), start, start + rng.randint(0, 8)))
        busy = concurrent = 0
        for t in range(60):  # unit cells [t, t+1): integer endpoints make this exact
            streams = {s for s, a, b in intervals if a <= t < b}
            busy += bool(streams)
            concurrent += len(streams) >= 2
        got = overlap.overlap_stats(intervals)
        assert (got["busy"], got["concurrent"]) == (busy, concurrent)


def test_combine_stats_weights_passes_by_busy_time():
    a = overlap.overlap_stats([(1, 0, 10), (2, 0, 10)])   # fully overlapped, busy 10
    b = overlap.overlap_stats([(1, 0, 30)])               # one stream, busy 30
    c = overlap.combine_stats([a, b])
    assert c["overlap_fraction"] == pytest.approx(10 / 40) and c["overlap_fraction_per_pass"] == [1.0, 0.0]
    assert c["passes"] == 2 and c["streams"] == 2


def test_kernel_intervals_from_a_chrome_trace():
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": 100.0, "dur": 5.0,
         "args": {"device": 0, "stream": 7}},
        {"ph": "X", "cat": "Kernel", "name": "softmax", "pid": 0, "tid": 13, "ts": 102, "dur": 4},  # no args
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD", "pid": 0, "tid": 7, "ts": 90, "dur": 3},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "x", "pid": 0, "tid": 7, "ts": 0, "dur": 500},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 99, "dur": 2},
        {"ph": "f", "cat": "ac2g", "id": 3, "ts": 100},
    ]}
    got = overlap.intervals_from_trace(trace)
    assert got == [((0, 7), 100.0, 105.0), ((0, 13), 102.0, 106.0)]
    assert overlap.overlap_stats(got)["concurrent"] == pytest.approx(3.0)


def test_kernel_intervals_from_profiler_events():
    Range = namedtuple("Range", "start end")

    class Event:
        def __init__(self, device_type, stream, start, end, name="k", activity_type="kernel", annotation=False):
            self.device_type, self.device_resource_id, self.device_index = device_type, stream, 0
            self.time_range, self.name = Range(start, end), name
            self.activity_type, self.is_user_annotation = activity_type, annotation

    events = [Event("DeviceType.CUDA", 7, 0, 10), Event("DeviceType.CUDA", 21, 4, 12),
              Event("DeviceType.CPU", 1, 0, 50, "aten::mm", "cpu_op"),
              Event("DeviceType.CUDA", 7, 0, 100, "ann", "gpu_user_annotation", annotation=True),
              Event("DeviceType.CUDA", 7, 20, 30, "Memcpy DtoD", "gpu_memcpy")]
    assert overlap.intervals_from_events(events) == [((0, 7), 0.0, 10.0), ((0, 21), 4.0, 12.0)]
    old = Event("DeviceType.CUDA", 7, 20, 30, "Memset (Device)")  # a torch without activity_type
    del old.activity_type, old.is_user_annotation
    assert overlap.intervals_from_events([old]) == []


def test_the_installed_profiler_has_what_the_overlap_figure_reads(tmp_path):
    """CPU-only here, so no kernels, but the event attributes and the trace format are the ones read."""
    from torch.profiler import ProfilerActivity, profile

    def profiled():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            torch.mm(torch.randn(8, 8), torch.randn(8, 8))
        return prof

    prof = profiled()
    events = list(prof.events())
    assert events and all(hasattr(e, a) for e in events for a in ("device_type", "device_resource_id", "time_range"))
    assert all(e.time_range.end >= e.time_range.start for e in events)
    assert overlap.intervals_from_events(events) == []
    intervals, source = overlap.kernel_intervals(prof)  # none from the events: the trace file is read too
    assert intervals == [] and source in ("function_events", "chrome_trace")
    profiled().export_chrome_trace(str(tmp_path / "t.json"))  # a trace is saved once per profile
    assert "traceEvents" in json.loads((tmp_path / "t.json").read_text())


def test_kernel_intervals_prefer_the_source_that_sees_both_streams():
    Range = namedtuple("Range", "start end")

    def event(stream, start, end):
        return namedtuple("E", "device_type device_resource_id device_index time_range name")(
            "DeviceType.CUDA", stream, 0, Range(start, end), "gemm")

    def kernel(stream, ts, dur):
        return {"ph": "X", "cat": "kernel", "ts": ts, "dur": dur, "args": {"device": 0, "stream": stream}}

    class Prof:
        def __init__(self, events, trace):
            self._events, self._trace, self.exported = events, trace, 0

        def events(self):
            return self._events

        def export_chrome_trace(self, path):
            self.exported += 1
            if self._trace is None:
                raise RuntimeError("Trace is already saved.")
            with open(path, "w") as f:
                json.dump({"traceEvents": self._trace}, f)

    two = Prof([event(7, 0, 10), event(21, 5, 12)], [kernel(7, 0, 10)])
    assert overlap.kernel_intervals(two) == ([((0, 7), 0.0, 10.0), ((0, 21), 5.0, 12.0)], "function_events")
    assert two.exported == 0
    # the events put every kernel on one "stream" (a torch that fills device_resource_id otherwise)
    one = Prof([event(1, 0, 10), event(1, 5, 12)], [kernel(7, 0, 10), kernel(21, 5, 7)])
    assert overlap.kernel_intervals(one) == ([((0, 7), 0.0, 10.0), ((0, 21), 5.0, 12.0)], "chrome_trace")
    single = Prof([event(7, 0, 10)], None)  # reprop: one stream; a failing export keeps the events
    assert overlap.kernel_intervals(single) == ([((0, 7), 0.0, 10.0)], "function_events")
    with pytest.raises(RuntimeError, match="already saved"):
        overlap.kernel_intervals(Prof([], None))


def test_batch_choice_from_the_memory_probe():
    # 1 MB per sample plus 10 MB fixed; 1000 MB free -> 990 samples
    assert overlap.estimate_max_batch([(16, 26e6), (32, 42e6)], 1000e6) == 990
    assert overlap.estimate_max_batch([(16, 26e6), (32, 26e6)], 1000e6) is None  # no growth: no estimate
    c = overlap.choose_batch(990, None, n_steps=10)
    assert c["batch_size"] == 392 and c["fraction_of_max"] == pytest.approx(392 / 990)  # 0.4 x 990, a multiple of 8
    c = overlap.choose_batch(990, 0.001, n_steps=100, allowance_s=20)  # 200 samples fit in the time
    assert c["batch_size"] == 200 and "capped" in c["why"]
    assert overlap.choose_batch(990, None, n_steps=10, avoid={392, 400})["batch_size"] == 408
    assert overlap.choose_batch(None, None, fallback=32)["batch_size"] == 32
    assert overlap.choose_batch(None, None, fallback=4)["batch_size"] == 4  # small: not rounded up


def _rec(mode, rounds, bs=64, model="m"):
    return {"model": model, "mode": mode, "batch_size": bs, "status": "ok", "samples_per_s": sorted(rounds)[1],
            "samples_per_s_all": rounds}


def test_throughput_verdict_reports_a_slower_pareprop():
    v = overlap.throughput_verdict([_rec("reprop", [100, 110, 90]), _rec("pareprop", [95, 99, 90])], "m", 64)
    assert v["pareprop_slower_than_reprop"] and v["line"].startswith("PAREPROP SLOWER THAN REPROP")
    assert v["pareprop_over_reprop"]["rounds"] == pytest.approx([0.95, 0.9, 1.0])
    v = overlap.throughput_verdict([_rec("reprop", [100, 100, 100]), _rec("pareprop", [120, 110, 130])], "m", 64)
    assert not v["pareprop_slower_than_reprop"] and v["pareprop_over_reprop"]["median"] == pytest.approx(1.2)
    assert overlap.throughput_verdict([_rec("reprop", [1, 1, 1])], "m", 64) is None


# ---------------------------------------------------------------- the check call

SMALL_FAMILIES = {
    "revvit": dict(gpu_plan.GRAD_FAMILIES["revvit"], configs=[{"depth": 1}, {"depth": 2}]),
    "revroberta": dict(gpu_plan.GRAD_FAMILIES["revroberta"], configs=[{"depth": 1}, {"depth": 2}]),
}


@pytest.fixture
def small_checks(monkeypatch):
    """Two families at depths 1 and 2, a two-depth micro reconstruction, a fake cuda-tests step."""
    monkeypatch.setattr(gpu_plan, "GRAD_FAMILIES", SMALL_FAMILIES)
    monkeypatch.setattr(gpu_plan, "RECONSTRUCTION", ("revvit_micro", (2, 3), dict(TINY_VIT, depth=None)))
    calls = []

    def cuda_tests(junit, timeout_s):
        calls.append(timeout_s)
        return {"n_tests": 9, "n_failures": 0, "n_errors": 0, "n_skipped": 0, "returncode": 0, "passed": True}

    monkeypatch.setattr(gpu_plan, "cuda_tests_check", cuda_tests)
    return calls


def test_check_call_keeps_each_result_and_goes_on_after_a_failure(tmp_path, monkeypatch, small_checks, capsys):
    """A bf16 check that raises (a fake device failure): the float64 results are already on disk
    when it runs, it is recorded with its error, the later checks run, and the next call reruns
    only what raised."""
    real = gpu_plan.gradient_check
    ran = []

    def gradient_check(device="cuda", amp="none", family="revvit", detail=None):
        ran.append((amp, family))
        if amp == "bf16":
            on_disk = json.loads((tmp_path / "cpu_gpu_plan_check.json").read_text())["jobs"]["checks"]["checks"]
            assert {"gradients_float64_revvit", "gradients_float64_revroberta"} <= set(on_disk)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(device, amp, family, detail)

    monkeypatch.setattr(gpu_plan, "gradient_check", gradient_check)
    assert gpu_plan.main(_argv(tmp_path, "check")) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["cpu_gpu_plan_check.json"]
    data = json.loads((tmp_path / "cpu_gpu_plan_check.json").read_text())
    assert set(data["jobs"]) == {"checks"} and data["meta"]["call"] == "check"
    job = data["jobs"]["checks"]
    checks = job["checks"]
    for family in SMALL_FAMILIES:
        ok = checks[f"gradients_float64_{family}"]
        assert ok["status"] == "passed" and ok["result"]["max_rel_error"] <= 1e-10
        assert ok["stream_mismatch_warnings"] == 0 and ok["result"]["rtol"] == gpu_plan.FLOAT64_RTOL
        bad = checks[f"gradients_bf16_autocast_{family}"]
        assert bad["status"] == "error" and bad["error"]["type"] == "RuntimeError"
        assert "illegal memory access" in bad["error"]["message"] and "gradient_check" in bad["error"]["traceback"]
    assert checks["activation_memory_flat"]["status"] == "skipped"  # CUDA only
    recon = checks["reconstruction_fp32"]
    assert recon["status"] == "measured" and set(recon["result"]["max_rel_error_by_depth"]) == {"2", "3"}
    assert [r["depth"] for r in data["records"]] == [2, 3] and all(r["check"] == "reconstruction_fp32" for r in data["records"])
    assert checks["cuda_tests"]["status"] == "passed" and len(small_checks) == 1
    assert not job["complete"] and not job["passed"] and job["stream_mismatch_warnings"] == 0
    assert job["status_by_check"]["gradients_bf16_autocast_revvit"] == "error"
    out = capsys.readouterr().out
    assert "check gradients_bf16_autocast_revvit: ERROR RuntimeError: CUDA error" in out
    assert "checks: NOT ALL PASSED" in out

    # the next call reruns only the checks that raised, and keeps the rest
    ran.clear()
    monkeypatch.setattr(gpu_plan, "gradient_check", real)
    monkeypatch.setattr(gpu_plan, "family_check", lambda device, amp, family: (
        ran.append((amp, family)), {"passed": True, "max_rel_error": 0.0, "rtol": 0.05})[1])
    assert gpu_plan.main(_argv(tmp_path, "check")) == 0
    assert ran == [("bf16", "revvit"), ("bf16", "revroberta")] and len(small_checks) == 1
    job = json.loads((tmp_path / "cpu_gpu_plan_check.json").read_text())["jobs"]["checks"]
    assert job["complete"] and job["passed"]
    assert job["checks"]["gradients_float64_revvit"]["result"]["max_rel_error"] <= 1e-10  # kept from the first call
    assert gpu_plan.main(_argv(tmp_path, "check")) == 0
    assert "0 job(s) to run" in capsys.readouterr().out


@pytest.mark.parametrize("kill", [KeyboardInterrupt, SystemExit])
def test_a_killed_check_call_leaves_what_finished_on_disk(tmp_path, monkeypatch, small_checks, kill):
    def family_check(device, amp, family):
        if (amp, family) != ("none", "revvit"):
            raise kill()
        return {"passed": True, "max_rel_error": 1e-16, "rtol": 1e-10}

    monkeypatch.setattr(gpu_plan, "family_check", family_check)
    with pytest.raises(kill):
        gpu_plan.main(_argv(tmp_path, "check"))
    job = json.loads((tmp_path / "cpu_gpu_plan_check.json").read_text())["jobs"]["checks"]
    assert list(job["checks"]) == ["gradients_float64_revvit"] and job["checks"]["gradients_float64_revvit"]["status"] == "passed"
    assert not job["complete"] and job["status_by_check"]["gradients_float64_revroberta"] == "not run"


def test_a_stream_mismatch_warning_fails_the_check(tmp_path, monkeypatch, small_checks):
    import warnings

    def family_check(device, amp, family):
        if family == "revroberta":
            warnings.warn("The AccumulateGrad node's stream does not match the stream of the node that produced "
                          "the incoming gradient.", UserWarning, stacklevel=1)
            warnings.warn("The AccumulateGrad node's stream does not match the stream of the node that produced "
                          "the incoming gradient.", UserWarning, stacklevel=1)  # counted each time, not once
        warnings.warn("something else", UserWarning, stacklevel=1)
        return {"passed": True, "max_rel_error": 0.0, "rtol": 1e-10}

    monkeypatch.setattr(gpu_plan, "family_check", family_check)
    assert gpu_plan.main(_argv(tmp_path, "check")) == 0
    job = json.loads((tmp_path / "cpu_gpu_plan_check.json").read_text())["jobs"]["checks"]
    bad = job["checks"]["gradients_float64_revroberta"]
    assert bad["status"] == "failed" and bad["stream_mismatch_warnings"] == 2 and bad["other_warnings"] == ["something else"]
    assert job["checks"]["gradients_float64_revvit"]["status"] == "passed"
    assert job["stream_mismatch_warnings"] == 4 and job["complete"] and not job["passed"]
    assert not torch.is_warn_always_enabled()  # restored


def test_check_stops_at_the_budget_and_gives_the_cuda_tests_what_is_left(tmp_path, monkeypatch, small_checks):
    clock = [0.0]
    monkeypatch.setattr(gpu_plan, "now", lambda: clock[0])
    monkeypatch.setattr(gpu_plan, "_STARTED", 0.0)

    def family_check(device, amp, family):
        clock[0] += 10
        return {"passed": True, "max_rel_error": 0.0, "rtol": 1e-10}

    monkeypatch.setattr(gpu_plan, "family_check", family_check)
    monkeypatch.setattr(gpu_plan, "reconstruction_check", lambda device: {"passed": None, "max_rel_error_by_depth": {}})
    # 4 gradient checks of 10 s, memory and reconstruction take no time; the cuda tests need 45 s
    assert gpu_plan.main(_argv(tmp_path, "check", budget=80)) == 0
    job = json.loads((tmp_path / "cpu_gpu_plan_check.json").read_text())["jobs"]["checks"]
    assert "cuda_tests" not in job["checks"] and len(job["checks"]) == 6 and not job["complete"]
    assert gpu_plan.main(_argv(tmp_path, "check", budget=200)) == 0
    assert small_checks == [pytest.approx(200 - 40)]  # what is left of the budget (nothing else reran)
    job = json.loads((tmp_path / "cpu_gpu_plan_check.json").read_text())["jobs"]["checks"]
    assert job["complete"] and job["passed"]


def test_the_cuda_tests_run_in_a_subprocess_with_a_junit_summary(tmp_path):
    """On CPU every test marked cuda skips: the step says so (the junit file next to the plan)."""
    r = gpu_plan.cuda_tests_check(tmp_path / "cpu_cuda_tests.xml", 120)
    assert "tests/test_reversible_cuda.py" in r["files"] and r["returncode"] == 0
    assert r["n_tests"] > 0 and r["n_skipped"] == r["n_tests"] and r["skipped"].startswith(f"all {r['n_tests']} tests skipped")
    assert (tmp_path / "cpu_cuda_tests.xml").exists() and r["stream_mismatch_mentions"] == 0


def test_junit_summary_lists_failures(tmp_path):
    (tmp_path / "j.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_reversible_cuda" name="test_a"/>'
        '<testcase classname="tests.test_reversible_cuda" name="test_b">'
        '<failure message="UserWarning: The AccumulateGrad node\'s stream does not match the stream">tb</failure></testcase>'
        '<testcase classname="tests.test_reversible_cuda" name="test_c"><skipped message="needs a CUDA device"/></testcase>'
        '</testsuite></testsuites>')
    s = gpu_plan.junit_summary(tmp_path / "j.xml")
    assert (s["n_tests"], s["n_failures"], s["n_skipped"], s["stream_mismatch_mentions"]) == (3, 1, 1, 1)
    assert s["problems"][0]["test"] == "tests.test_reversible_cuda::test_b" and s["skip_reasons"] == ["needs a CUDA device"]


def test_every_family_has_a_gradient_check():
    assert set(gpu_plan.GRAD_FAMILIES) == {"revvit", "revswin", "revmvit", "revroberta"}
    for spec in gpu_plan.GRAD_FAMILIES.values():  # odd and even depths, stochastic layers on
        depths = [c.get("depth") or max(c["depths"]) for c in spec["configs"]]
        assert {d % 2 for d in depths} == {0, 1}
        assert any(k.endswith(("drop_rate", "dropout")) and v > 0 for k, v in spec["kwargs"].items())


def test_grad_error_never_passes_a_nan_or_a_missing_grad():
    ref = {"w": torch.ones(3), "b": torch.zeros(2) + 1e-20}
    assert gpu_plan._grad_error({"w": torch.ones(3), "b": ref["b"]}, ref)[0] == 0.0
    assert gpu_plan._grad_error({"w": torch.tensor([1.0, float("nan"), 1.0]), "b": ref["b"]}, ref) == (float("inf"), "w")
    assert gpu_plan._grad_error({"w": torch.ones(3), "b": None}, ref) == (float("inf"), "b")
    # a zero-by-symmetry grad is compared with the largest grad of all, not its own (noise) scale
    assert gpu_plan._grad_error({"w": ref["w"], "b": torch.zeros(2) + 2e-20}, ref, ("b",))[0] == pytest.approx(1e-20)


def test_gradient_check_of_a_hierarchical_family_on_cpu(monkeypatch):
    monkeypatch.setitem(gpu_plan.GRAD_FAMILIES, "revswin",
                        dict(gpu_plan.GRAD_FAMILIES["revswin"], configs=gpu_plan.GRAD_FAMILIES["revswin"]["configs"][:1]))
    r = gpu_plan.family_check("cpu", "none", "revswin")
    assert r["passed"] and set(r["max_rel_errors"]) == {"depth1-2_reprop_max_rel_error", "depth1-2_pareprop_max_rel_error"}


# ---------------------------------------------------------------- the figures call

def test_figures_call_measures_overlap_and_goes_on_after_a_failing_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_plan, "PLAN", {
        "check": [("checks", None, [], {})],
        "overlap": [("overlap_tiny", "revvit_micro", [2, 4], {"overlap": True, "model_kwargs": TINY_VIT})],
        "vit": [("broken", "no_such_model", [2], {}),
                ("tiny", "revvit_micro", [2], {"model_kwargs": TINY_VIT})],
    })
    monkeypatch.setattr(overlap, "ROUNDS", 2)
    monkeypatch.setattr(overlap, "STEPS", 1)
    monkeypatch.setattr(overlap, "WARMUP", 0)
    monkeypatch.setattr(overlap, "PROFILE_PASSES", 1)
    monkeypatch.setattr(overlap, "PROFILE_WARMUP", 1)
    monkeypatch.setattr(gpu_plan, "check_steps", lambda run: pytest.fail("the figures call ran a check"))
    assert gpu_plan.main(_argv(tmp_path, "figures")) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["cpu_gpu_plan_figures.json"]
    data = json.loads((tmp_path / "cpu_gpu_plan_figures.json").read_text())
    jobs = data["jobs"]
    assert set(jobs) == {"overlap_tiny", "broken", "tiny"}
    ov = jobs["overlap_tiny"]
    assert ov["complete"] and ov["probe"]["batch_size"] == 4 and ov["probe"]["why"].startswith("off CUDA")
    assert ov["probe"]["points"][0][0] == 2 and ov["probe"]["seconds_per_sample"] > 0  # the probe ran
    prof = ov["profile"]  # so did the profiler, on CPU: no kernels, no figure
    assert prof["pareprop"]["passes"] == 1 and prof["pareprop"]["overlap_fraction"] is None and "note" in prof
    assert prof["stream_mismatch_warnings"] == 0
    assert sorted((r["mode"], r["batch_size"], r["plan_job"]) for r in ov["records"]) == [
        ("pareprop", 4, "overlap_tiny"), ("reprop", 4, "overlap_tiny")]
    assert all(len(r["samples_per_s_all"]) == 2 for r in ov["records"])
    t = ov["throughput"]
    assert len(t["pareprop_over_reprop"]["rounds"]) == 2 and isinstance(t["pareprop_slower_than_reprop"], bool)
    assert not jobs["broken"]["complete"] and jobs["broken"]["error"]["type"]
    assert jobs["tiny"]["complete"] and len(jobs["tiny"]["records"]) == 4  # 3 modes + the reference
    out = capsys.readouterr().out
    assert t["line"] in out and "broken: FAILED" in out and "overlap revvit_micro: pareprop/reprop" in out
    # the next call retries the failed job only
    assert gpu_plan.main(_argv(tmp_path, "figures")) == 0
    assert "1 job(s) to run: broken" in capsys.readouterr().out


def test_the_calls_split_the_plan_and_read_each_others_files(tmp_path, capsys):
    assert gpu_plan.call_groups("check") == ["check"]
    assert gpu_plan.call_groups("figures") == [g for g in gpu_plan.PLAN if g != "check"]
    assert gpu_plan.call_groups("figures")[:2] == ["study", "overlap"]
    with pytest.raises(SystemExit):
        gpu_plan.main(_argv(tmp_path, "check") + ["--group", "vit"])
    assert "not part of --call check" in capsys.readouterr().err
    err = {"status": "error", "error": {"type": "RuntimeError"}}
    (tmp_path / "h100_gpu_plan_check.json").write_text(json.dumps({"jobs": {"checks": {
        "complete": False, "records": [], "checks": {"a": {"status": "passed"}, "b": err}}}}))
    (tmp_path / "h100_gpu_plan_figures.json").write_text(json.dumps({"jobs": {
        "overlap_revswin_tiny": {"complete": True, "records": [], "probe": {"batch_size": 96}}}}))
    (tmp_path / "h100_gpu_plan.json").write_text(json.dumps({"jobs": {"checks": {
        "complete": False, "records": [], "checks": {"b": {"status": "failed"}, "c": err}}}}))
    done = gpu_plan.load_done("h100", [tmp_path])
    assert done["checks"]["checks"] == {"a": {"status": "passed"}, "b": {"status": "failed"}, "c": err}
    assert done["overlap_revswin_tiny"]["complete"] and done["overlap_revswin_tiny"]["probe"]["batch_size"] == 96
    assert [j[0] for j in gpu_plan.jobs_to_run(["check", "overlap"], done)] == [
        "checks", "overlap_revmvit_tiny", "overlap_revvit_base"]


def test_failure_records_type_message_and_a_short_traceback():
    def deep(n):
        if n == 0:
            raise ValueError("boom")
        deep(n - 1)

    try:
        deep(30)
    except ValueError as e:
        f = gpu_plan.failure(e)
    assert f["type"] == "ValueError" and f["message"] == "boom"
    assert f["traceback"].startswith("Traceback") and f["traceback"].rstrip().endswith("ValueError: boom")
    assert f["traceback"].count("in deep") <= 6


def test_a_failing_probe_is_recorded_and_the_throughput_still_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_plan, "PLAN", {"overlap": [
        ("overlap_tiny", "revvit_micro", [2, 4], {"overlap": True, "model_kwargs": TINY_VIT})]})
    monkeypatch.setattr(overlap, "ROUNDS", 1)
    monkeypatch.setattr(overlap, "STEPS", 1)
    monkeypatch.setattr(overlap, "WARMUP", 0)

    def probe_and_profile(*args, **kwargs):
        raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")

    monkeypatch.setattr(overlap, "probe_and_profile", probe_and_profile)
    assert gpu_plan.main(_argv(tmp_path, "figures")) == 0
    job = json.loads((tmp_path / "cpu_gpu_plan_figures.json").read_text())["jobs"]["overlap_tiny"]
    assert job["profile"]["error"]["message"] == "CUPTI_ERROR_NOT_INITIALIZED" and "error" in job["probe"]
    assert job["probe"]["batch_size"] == 4 and len(job["records"]) == 2 and "throughput" in job
    assert not job["complete"]  # the next call tries the probe and profile again
    assert "probe/profile FAILED" in capsys.readouterr().out


def test_the_cuda_tests_step_records_a_timeout_and_a_missing_pytest(tmp_path, monkeypatch):
    import subprocess

    def run(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], 5, output=b"collected 9 items", stderr=None)

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(TimeoutError, match="did not finish in 5 s; output tail:\ncollected 9 items"):
        gpu_plan.cuda_tests_check(tmp_path / "j.xml", 5)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert gpu_plan.cuda_tests_check(tmp_path / "j.xml", 5) == {"skipped": "pytest is not installed for this python"}
