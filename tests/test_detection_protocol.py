"""The detection protocol's contracts: held-out evaluation (training-set evaluation refused unless
asked for), the fused LayerNorm is detectron2's LN, bf16 autocast training on a CPU, what a run
records about its backbone checkpoint and its convergence, and the rules of claim (c) on synthetic
rows whose true difference is known."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from detection import ConfigError, build_config, prepare
from detection.layers import LayerNorm2d
from detection.train_net import change_over_last_fifth, training_precision
from revtransfer.cli import main
from revtransfer.report.detection_claim import judge_detection

TINY = "model.backbone.net.model_kwargs={patch_size:4,embed_dim:32,depth:1,num_heads:2,img_size:32}"


def _cfg(train, val, *extra):
    return build_config("clevr_mask_rcnn_vit_micro_frozen", train_json=str(train / "coco.json"),
                        train_images=str(train), val_json=str(val / "coco.json"), val_images=str(val), device="cpu",
                        overrides=[TINY, "model.backbone.square_pad=32", *extra])


def test_evaluating_on_the_training_set_is_refused_unless_asked_for(clevr_coco, tmp_path):
    import shutil

    with pytest.raises(ConfigError, match="the evaluation set is the training set"):
        prepare(_cfg(clevr_coco, clevr_coco))
    copy = tmp_path / "copy"  # the same clevr_gen dataset under another path: still the training set
    shutil.copytree(clevr_coco, copy)
    with pytest.raises(ConfigError, match="same clevr_gen dataset"):
        prepare(_cfg(clevr_coco, copy))
    prepare(_cfg(clevr_coco, clevr_coco, "datasets.allow_train_eval=True"))  # on purpose: allowed


def test_the_cli_refuses_training_set_evaluation_with_one_line(clevr_coco, tmp_path):
    res = CliRunner().invoke(main, ["detect", "train", "--config", "clevr_mask_rcnn_vit_micro_frozen", "--dataset",
                                    str(clevr_coco), "--output-dir", str(tmp_path / "o"), "--device", "cpu",
                                    "--max-iter", "1", "--results-dir", "", TINY, "model.backbone.square_pad=32"])
    assert res.exit_code == 1
    assert res.output.startswith("Error: the evaluation set is the training set") and "--allow-train-eval" in res.output


def test_fused_layernorm_is_detectron2s_channels_first_layernorm():
    from detectron2.layers.batch_norm import LayerNorm

    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64, requires_grad=True)
    ref, ours = LayerNorm(8).double(), LayerNorm2d(8).double()
    with torch.no_grad():
        ref.weight.normal_(), ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())  # the same parameter names: checkpoints load either way
    y_ref, y = ref(x), ours(x)
    assert torch.allclose(y, y_ref, atol=1e-12)
    g = torch.randn_like(y)
    grads_ref = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), g)
    grads = torch.autograd.grad(y, (x, ours.weight, ours.bias), g)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, grads_ref))


def test_training_precision_follows_the_config(clevr_coco, tmp_path):
    val = tmp_path / "val"
    import shutil

    shutil.copytree(clevr_coco, val)
    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen", device="cpu")
    assert training_precision(cfg) == "bf16"  # the CPU micro configs train under bf16 autocast
    assert training_precision(build_config("clevr_mask_rcnn_vit_micro_frozen", device="cpu",
                                           overrides=["train.precision=fp32"])) == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        training_precision(build_config("clevr_mask_rcnn_vit_micro_frozen", device="cpu",
                                        overrides=["train.precision=fp16"]))
    coco = build_config("coco_mask_rcnn_vit_small_frozen", device="cpu")
    assert training_precision(coco) == "fp32"  # paper-scale configs: detectron2's AMP, on CUDA only


def test_change_over_the_last_fifth():
    hist = [{"iteration": i, "bbox_AP": ap} for i, ap in ((200, 10.0), (400, 20.0), (800, 30.0), (1000, 30.5))]
    assert change_over_last_fifth(hist, 1000) == 0.5
    assert change_over_last_fifth(hist[:2], 1000) is None  # the run did not finish
    assert change_over_last_fifth([{"iteration": 1000, "bbox_AP": 3.0}], 1000) is None  # one evaluation only


def _rows(effect_box: float, effect_mask: float, n: int = 6, sd: float = 1.0, seed: int = 0, tag: str = ""):
    rng = np.random.default_rng(seed)
    rows = []
    for arch, (eb, em) in (("vit_micro", (0.0, 0.0)), ("revvit_micro", (effect_box, effect_mask))):
        for s in range(n):
            rows.append({"arch": arch, "seed": s, "backbone_role": "frozen", "tag": tag,
                         "box_AP": 40 + eb + rng.normal(0, sd), "mask_AP": 35 + em + rng.normal(0, sd),
                         "box_AP_change_last_fifth": 0.2})
    rows.append({"arch": "vit_micro", "seed": 0, "backbone_role": "floor", "tag": tag, "box_AP": 90.0,
                 "mask_AP": 90.0})  # a floor row is no evidence for (c)
    return pd.DataFrame(rows)


def test_claim_c_rules_on_synthetic_rows():
    assert judge_detection(_rows(5, 5))["verdict"] == "reproduced"
    assert judge_detection(_rows(5, -5))["verdict"] == "refuted"  # worse in mask AP: not >= in both
    assert judge_detection(_rows(5, 0.0))["verdict"] == "inconclusive"
    one = judge_detection(_rows(5, 5, n=1))
    assert one["verdict"] == "inconclusive" and "fewer than 2" in one["evidence"]
    assert judge_detection(_rows(5, 5), tag="width-control")["n_reversible"] == 0  # tags are separate studies
    # the width control changes only RevViT's side: its rows are judged against ViT's main rows
    main, control = _rows(5, 5), _rows(0.0, 0.0, n=3, seed=1, tag="width-control")
    width = judge_detection(pd.concat([main, control[control["arch"] == "revvit_micro"]]), tag="width-control")
    assert (width["n_reversible"], width["n_baseline"], width["baseline_rows"]) == (3, 6, "main")
    assert width["verdict"] != "reproduced" and judge_detection(main)["n_reversible"] == 6
    assert judge_detection(_rows(5, 5))["converged"] == "all"


def test_claim_c_rarely_reproduces_a_null_difference():
    verdicts = [judge_detection(_rows(0.0, 0.0, n=5, seed=s))["verdict"] for s in range(40)]
    assert verdicts.count("reproduced") <= 2  # both one-sided tests at 0.025: ~0.1% expected


def test_the_report_shows_floor_ceiling_curves_and_the_verdict(tmp_path):
    import json

    from revtransfer.report.build import build_report
    from revtransfer.results import ResultsTable

    rows = _rows(5, 5, n=5)
    rows = pd.concat([rows, pd.DataFrame([{"arch": "revvit_micro", "seed": 0, "backbone_role": "ceiling", "tag": "",
                                            "box_AP": 60.0, "mask_AP": 55.0}])], ignore_index=True)
    records = []
    for i, r in enumerate(rows.to_dict("records")):
        run = tmp_path / "runs" / f"r{i}"
        run.mkdir(parents=True)
        (run / "eval_history.json").write_text(json.dumps(
            [{"iteration": it, "bbox_AP": r["box_AP"] * it / 1000, "segm_AP": r["mask_AP"] * it / 1000}
             for it in (200, 600, 1000)]))
        records.append({**r, "sweep": "detection", "cell_id": f"c{i}", "status": "ok", "iterations": 1000,
                        "run_dir": str(run)})
    ResultsTable(tmp_path / "res").upsert(records)
    readme = build_report(tmp_path / "report", results=[tmp_path / "res"]).read_text()
    assert "Claim (c)" in readme and "| reproduced |" in readme
    assert "floor" in readme and "ceiling" in readme
    assert (tmp_path / "report" / "detection_ap.png").stat().st_size > 0
    summary = pd.read_csv(tmp_path / "report" / "detection_summary.csv")
    assert set(summary["backbone_role"]) == {"frozen", "floor", "ceiling"}
    frozen = summary[summary["backbone_role"] == "frozen"]
    assert (frozen["last_fifth_max"] == 0.2).all()  # convergence shown per group: the largest |change|
    assert "box_AP_change_last_fifth" in pd.read_csv(tmp_path / "report" / "detection.csv")
    gaps = pd.read_csv(tmp_path / "report" / "detection_references.csv").set_index(["arch", "comparison"])
    vit = rows[rows["arch"] == "vit_micro"]
    floor_gap = vit.loc[vit["backbone_role"] == "frozen", "box_AP"].mean() - 90.0
    assert gaps.loc[("vit_micro", "frozen − floor"), "box_AP"] == pytest.approx(floor_gap)
    assert gaps.loc[("vit_micro", "frozen − floor"), "box_AP_ci"] == "– (1 run on a side)"  # one floor run
    assert gaps.loc[("revvit_micro", "ceiling − frozen"), "runs"] == "1/5"
    assert "Against the floor and the ceiling" in readme
    claim = pd.read_csv(tmp_path / "report" / "detection_claim.csv")
    assert claim["frozen − floor, box AP (main)"].iloc[0] == f"vit_micro {floor_gap:+.1f}"  # no RevViT floor here



def test_a_runs_ap_curve_travels_in_its_row(tmp_path):
    """The AP-against-iterations plot of a committed report needs only the results table."""
    from detection.results import detection_row
    from revtransfer.report.tables import detection_curves

    run = tmp_path / "run"
    run.mkdir()
    history = [{"iteration": it, "bbox_AP": it / 10, "segm_AP": it / 20, "wall_s": it / 2} for it in (600, 1200)]
    (run / "eval_history.json").write_text(json.dumps(history))
    info = {"mode": "train", "output_dir": str(run), "arch": "vit_micro", "seed": 3, "dataset": "tr.json",
            "config": "c", "iterations": 1200, "backbone_checkpoint": "b.pt", "frozen": True, "val_dataset": "va.json",
            "batch_size": 8, "wall_time_s": 1.0, "device": "cpu", "world_size": 1, "git_commit": "x",
            "finished_at": "now"}
    row = detection_row(info, {"bbox": {"AP": 12.0}, "segm": {"AP": 6.0}})
    (run / "eval_history.json").unlink()  # the run dir is gone (not in git); the row still has the curve
    curves = detection_curves(pd.DataFrame([row]))
    assert list(curves["iteration"]) == [600, 1200] and list(curves["bbox_AP"]) == [60.0, 120.0]
    assert set(curves["backbone_role"]) == {"frozen"} and set(curves["tag"]) == {""}


@pytest.mark.slow
def test_the_detection_ladder_runs_frozen_floor_and_ceiling_and_resumes(tmp_path, study_dataset):
    from revtransfer.train import PretrainConfig, pretrain

    run = tmp_path / "pre"
    pretrain(PretrainConfig(dataset=str(study_dataset), out=str(run), arch="vit_micro", epochs=1, batch_size=32,
                            val_frac=0.25, device="cpu", model_kwargs=dict(patch_size=4, embed_dim=32, depth=1,
                                                                           num_heads=2)), progress=False)
    args = ["detect-ladder", "--backbone", f"vit_micro={run}", "--iters", "2", "--eval-period", "1",
            "--ceiling-iters", "1", "--train-n", "12", "--val-n", "6", "--size", "32", "--batch-size", "2",
            "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--no-progress",
            "dataloader.train.num_workers=0", "dataloader.test.num_workers=0"]
    first = CliRunner().invoke(main, [*args, "--roles", "frozen"], catch_exceptions=False)  # a first look
    assert first.exit_code == 0, first.output
    assert set(pd.read_csv(tmp_path / "out" / "ladder_detection.csv")["role"]) == {"frozen"}
    res = CliRunner().invoke(main, args, catch_exceptions=False)  # the references, beside it
    assert res.exit_code == 0, res.output
    assert res.output.count("done before") == 1
    table = pd.read_csv(tmp_path / "out" / "ladder_detection.csv")
    assert set(table["role"]) == {"frozen", "floor", "ceiling"}
    assert table.set_index("role").loc["frozen", "iterations"] == 2
    assert table.set_index("role").loc["ceiling", "iterations"] == 1
    assert table["box_AP_over_floor"].notna().all()
    run_json = json.loads((tmp_path / "w" / "runs" / "default" / "vit_micro-frozen" / "run.json").read_text())
    assert run_json["backbone_load"]["keys_matched"] == run_json["backbone_load"]["keys_in_model"]
    assert run_json["val_dataset"] != run_json["dataset"]  # held out
    floor = json.loads((tmp_path / "w" / "runs" / "default" / "vit_micro-floor" / "run.json").read_text())
    assert floor["backbone_load"]["keys_matched"] == 0 and "random" in floor["backbone_load"]["note"]
    again = CliRunner().invoke(main, args, catch_exceptions=False)  # every run is done: nothing trains
    assert again.exit_code == 0 and again.output.count("done before") == 3


def test_the_detection_ladder_refuses_an_unknown_role(tmp_path):
    run = tmp_path / "pre"
    run.mkdir()
    (run / "checkpoint_best.pt").write_bytes(b"")
    res = CliRunner().invoke(main, ["detect-ladder", "--backbone", f"vit_micro={run}", "--roles", "frozen,celing"])
    assert res.exit_code == 2 and "'frozen,celing': give one or more of frozen, floor, ceiling" in res.output


def test_the_width_control_hands_the_pyramid_c_channels_from_revvit():
    from detection import TimmViT

    kw = dict(patch_size=4, embed_dim=16, depth=1, num_heads=2, img_size=32)
    full = TimmViT("revvit_micro", model_kwargs=kw)
    half = TimmViT("revvit_micro", model_kwargs=kw, out_channels=16)
    half.load_state_dict(full.state_dict())
    assert full.output_shape()["last_feat"].channels == 32 and half.output_shape()["last_feat"].channels == 16
    x = torch.randn(2, 3, 32, 32)
    a, b = full(x)["last_feat"], half(x)["last_feat"]
    assert b.shape == (2, 16, 8, 8) and torch.allclose(b, 0.5 * (a[:, :16] + a[:, 16:]), atol=1e-6)
    vit = TimmViT("vit_micro", model_kwargs=kw, out_channels=16)  # a ViT's own width: unchanged
    assert vit.output_shape()["last_feat"].channels == 16 and not vit.halve_channels
    with pytest.raises(ValueError, match="out_channels=12"):
        TimmViT("revvit_micro", model_kwargs=kw, out_channels=12)


def test_a_run_records_the_commit_it_started_with():
    """A run that outlives a commit (a study cell takes half an hour) names the code it trained with."""
    from detection.train_net import RunArgs, run_info

    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen")
    info = run_info(cfg, RunArgs(config="clevr_mask_rcnn_vit_micro_frozen"), commit="0123abc")
    assert info["git_commit"] == "0123abc"
    assert info["threads"] == torch.get_num_threads()  # runs may share a machine's cores, one each
