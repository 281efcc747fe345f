"""End to end on CPU: `revtransfer detect train|eval` on a tiny COCO set, both backbones."""
import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from detectron2.config import LazyConfig
from detectron2.utils.events import EventStorage

from detection import TimmViT, build_config, prepare
from detection.cli import detect
from detection.synthetic import make_shapes_coco
from detection.train_net import build_model

FAST = ["dataloader.train.num_workers=0", "dataloader.test.num_workers=0", "train.eval_period=0",
        "dataloader.train.total_batch_size=2", "datasets.test.max_images=4", "train.log_period=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    return make_shapes_coco(root / "train", n=16, seed=0), make_shapes_coco(root / "val", n=8, seed=1)


def _train(tmp_path, data, arch, *extra, iters=2):
    out = tmp_path / f"run_{arch}"
    ckpt = tmp_path / f"{arch}_backbone.pt"
    torch.save({"model": TimmViT(f"{arch}_micro").encoder.state_dict()}, ckpt)  # a "pretrained" backbone
    args = ["train", "--config", f"clevr_mask_rcnn_{arch}_micro_frozen", "--backbone-checkpoint", str(ckpt),
            "--dataset", str(data[0]), "--val-json", str(data[1] / "coco.json"), "--val-images", str(data[1]),
            "--output-dir", str(out), "--max-iter", str(iters), "--results-dir", str(tmp_path / "results"),
            *extra, *FAST]
    res = CliRunner().invoke(detect, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, ckpt, json.loads(res.output[res.output.index("{\n"):])


@pytest.mark.parametrize("arch", ["vit", "revvit"])
def test_train_then_eval_end_to_end(tmp_path, data, arch):
    out, ckpt, metrics = _train(tmp_path, data, arch)
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(metrics[task])
    # The backbone left training bit for bit as it came in.
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    start = torch.load(ckpt)["model"]
    for k, v in start.items():
        assert torch.equal(final[f"backbone.net.encoder.{k}"], v), k
    # Provenance and the results row.
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0 and run["arch"] == f"{arch}_micro" and "torch" in run["versions"]
    assert "git_commit" in run and run["iterations"] == 2
    table = pd.read_parquet(tmp_path / "results" / "results.parquet")
    assert len(table) == 1 and table.loc[0, "arch"] == f"{arch}_micro"
    assert table.loc[0, "box_AP"] == pytest.approx(metrics["bbox"]["AP"], nan_ok=True)
    assert (tmp_path / "results" / "results.csv").exists()
    cfg = LazyConfig.load(str(out / "config.yaml"))  # the saved config reloads
    assert cfg.model.backbone.net.checkpoint == str(ckpt)
    # Evaluating the saved detector reproduces the training run's final evaluation.
    res = CliRunner().invoke(detect, [
        "eval", "--config", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
        "--output-dir", str(tmp_path / "eval"), "--results-dir", str(tmp_path / "results"), *FAST],
        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    again = json.loads(res.output[res.output.index("{\n"):])
    assert again["bbox"]["AP"] == pytest.approx(metrics["bbox"]["AP"], nan_ok=True)
    assert len(pd.read_parquet(tmp_path / "results" / "results.parquet")) == 2


def test_resume_continues_from_the_last_checkpoint(tmp_path, data):
    out, _, _ = _train(tmp_path, data, "vit", "train.checkpointer.period=1", iters=2)
    _train(tmp_path, data, "vit", "--resume", "train.checkpointer.period=1", iters=3)
    iters = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()
             if '"total_loss"' in line]
    assert iters == [0, 1, 2]  # the resumed run did only iteration 2


def test_no_gradient_reaches_the_backbone(data):
    cfg = build_config("clevr_mask_rcnn_revvit_micro_frozen", train_json=str(data[0] / "coco.json"),
                       train_images=str(data[0]), val_json=str(data[1] / "coco.json"), val_images=str(data[1]),
                       overrides=FAST)
    prepare(cfg)
    from detectron2.config import instantiate

    model = build_model(cfg).train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    with EventStorage(0):
        sum(model(batch).values()).backward()
    assert all(p.grad is None for p in model.backbone.net.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("backbone.simfp_2"))


@pytest.mark.slow
def test_ap_rises_well_above_zero(tmp_path, data):
    big = make_shapes_coco(tmp_path / "train64", n=64, seed=0)
    res = CliRunner().invoke(detect, [
        "train", "--config", "clevr_mask_rcnn_vit_micro_frozen", "--dataset", str(big),
        "--val-json", str(data[1] / "coco.json"), "--val-images", str(data[1]), "--output-dir", str(tmp_path / "ap"),
        "--max-iter", "150", "--results-dir", "", "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
        "train.eval_period=0", "dataloader.train.total_batch_size=4", "train.log_period=50"],
        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output[res.output.index("{\n"):])
    assert metrics["bbox"]["AP"] > 10 and metrics["segm"]["AP"] > 5, metrics


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit", "revvit"])
def test_demo_on_clevr_gen_output(tmp_path, arch):
    from clevr_gen.spec import DatasetSpec
    from clevr_gen.writer import generate

    ds, held_out = tmp_path / "clevr", tmp_path / "clevr_val"
    for out, seed, n in ((ds, 0, 12), (held_out, 1, 6)):  # held-out evaluation: another seed
        generate(DatasetSpec(split="transfer", n=n, p_x=0, p_y=0.5, corr=None, seed=seed, coco=True), out,
                 progress=False, log=lambda *a: None)
    res = CliRunner().invoke(detect, [
        "train", "--config", f"clevr_mask_rcnn_{arch}_micro_frozen", "--dataset", str(ds),
        "--val-dataset", str(held_out), "--demo",
        "--max-iter", "3", "--output-dir", str(tmp_path / "run"), "--results-dir", str(tmp_path / "results")],
        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output[res.output.index("{\n"):])
    assert set(metrics) == {"bbox", "segm"}
    row = pd.read_parquet(tmp_path / "results" / "results.parquet").iloc[0]
    assert row["arch"] == f"{arch}_micro" and row["dataset"] == str(ds / "coco.json")
    assert row["val_dataset"] == str(held_out / "coco.json")
