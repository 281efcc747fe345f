"""One benchmark record type: every bench JSON the toolkit has written reads into it, old layouts
included (``amp``, ``step_time_ms_median``, ``peak_mem_mb``, mode ``vanilla``, detection's
``frozen``/``unfrozen``), with one precision spelling and one summariser."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from revtransfer.bench.record import BenchRecord, precision_name, ratio_summary, read_bench_file, summarize
from revtransfer.report.tables import load_bench

REPORTS = Path(__file__).resolve().parents[1] / "reports" / "bench"


def test_precision_has_one_spelling():
    assert [precision_name(v) for v in (None, "none", "float32", "bfloat16", "fp16", "float64")] == \
        ["fp32", "fp32", "fp32", "bf16", "fp16", "fp64"]
    import torch

    assert precision_name(torch.bfloat16) == "bf16"
    with pytest.raises(ValueError, match="precision 'int8': choose one of fp32, bf16, fp16, fp64"):
        precision_name("int8")


def test_summaries_and_ratios_are_min_median_max_over_rounds():
    assert summarize([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}
    r = ratio_summary([2.0, 4.0, 9.0], [1.0, 2.0, 3.0], numerator="a", denominator="b")
    assert r["rounds"] == [2.0, 2.0, 3.0] and (r["min"], r["median"], r["max"]) == (2.0, 2.0, 3.0)
    assert r["numerator"] == "a"


@pytest.mark.parametrize("name", ["cpu_revvit_micro.json", "cpu_revswin_tiny.json",
                                  "reconstruction_revvit_base_fp32.json", "saved_bytes/saved_bytes_cpu.json",
                                  "pretrain_cpu/throughput.json", "detect_cpu/detect_step_cpu.json"])
def test_the_committed_bench_files_still_read(name):
    meta, records, _ = read_bench_file(REPORTS / name)
    assert records and all(r.precision in ("fp32", "bf16", "fp16", "fp64") for r in records)
    assert all(isinstance(r.to_dict(), dict) and "amp" not in r.to_dict() for r in records)


def test_an_old_layout_is_read_into_the_one_vocabulary(tmp_path):
    old = {"meta": {"amp": "bf16"}, "records": [
        {"model": "vit_micro", "mode": "vanilla", "batch_size": 8, "device": "cpu", "status": "ok",
         "samples_per_s": 10.0, "step_time_ms_median": 800.0, "peak_mem_mb": 2.0, "data_wait_frac": 0.1}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    _, [r], _ = read_bench_file(tmp_path / "old.json")
    assert (r.precision, r.mode, r.step_ms_median, r.peak_mem_bytes) == ("bf16", "backprop", 800.0, 2 * 2**20)
    assert r.measure == "pretrain_step" and r.extra["data_wait_frac"] == 0.1
    detect = {"config": "c", "arch": "vit_micro", "batch_size": 8, "device": "cpu", "amp_bf16": False,
              "image_size": 80, "frozen": {"total_s": 0.5, "backbone_forward_s": 0.1, "peak_memory_mb": 100.0}}
    (tmp_path / "detect.json").write_text(json.dumps(detect))
    _, [d], _ = read_bench_file(tmp_path / "detect.json")
    assert (d.measure, d.samples_per_s, d.extra["backbone"]) == ("detect_step", 16.0, "frozen")


def test_the_report_loads_old_and_new_bench_files_alike(tmp_path):
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"meta": {}, "records": [BenchRecord("train_step", "revvit_micro", "pareprop", "bf16", 4,
                                                                   samples_per_s=5.0).to_dict()]}))
    bench, recon, metas = load_bench([REPORTS / "cpu_revvit_micro.json", new,
                                      REPORTS / "reconstruction_revvit_base_fp32.json"])
    assert set(bench["precision"]) == {"fp32", "bf16"} and len(recon) and len(metas) == 3
