"""Every shipped sweep preset (demo, cpu, paper) parses, and runs one correlation at tiny size with
its own recipe, precision, probe settings and fraction rule; only sizes shrink."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from probes.presets import preset_names, resolve_sweep_file
from probes.sweep import SweepError, SweepSpec, run_sweep

TINY_MODEL = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}


def _tiny(d: dict) -> dict:
    d = yaml.safe_load(yaml.safe_dump(d))  # a deep copy
    first = next(iter(d["datasets"]["pretrain"]))
    d["datasets"]["pretrain"] = {first: d["datasets"]["pretrain"][first]}
    for entry in (d["datasets"]["pretrain"][first], d["datasets"]["transfer"]):
        entry.update(n=160, width=16, height=16)
    d["datasets"]["workers"] = 1
    d["grid"].update(corr=[first], seed=[0])
    d["model_kwargs"] = dict(TINY_MODEL)
    d["recipe"].update(epochs=1, batch_size=32)
    d["probe"].update(n_boot=20, batch_size=64)
    if d["probe"].get("match_dim"):
        d["probe"]["match_dim"] = 8
    return d


def _preset(name: str) -> dict:
    return yaml.safe_load(resolve_sweep_file(name).read_text())


def test_presets_are_shipped_and_parse(tmp_path):
    assert {"demo", "cpu", "paper"} <= set(preset_names())
    for name in preset_names():
        spec = SweepSpec.load(name, tmp_path)
        # the demo spans the correlation axis with its two ends (its 15 minutes); the studies with three
        assert len(spec.corrs) == (2 if name == "demo" else 3) and set(spec.archs) == {"vit_micro", "revvit_micro"}, name
    cpu = SweepSpec.load("cpu", tmp_path)
    assert len(cpu.fractions) >= 2 and len(cpu.seeds) >= 3 and cpu.equal_samples
    assert cpu.probe.match_dim == cpu.model_kwargs["embed_dim"]  # width-matched control at the ViT width
    assert cpu.recipe["precision"] == "bf16"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo", "cpu", "paper"])
def test_preset_runs_at_tiny_size(tmp_path, name):
    d = _tiny(_preset(name))
    spec = SweepSpec.from_dict(d, tmp_path)
    report = run_sweep(spec, progress=False)
    assert not report.failed, report.summary()
    table = pd.read_parquet(spec.out / "results.parquet")
    assert len(table) == len(spec.cells()) and (table["status"] == "ok").all()
    assert table["pretrain_val_acc"].between(0, 1).all() and table["probe_acc"].between(0, 1).all()
    if spec.equal_samples:  # a fraction-f cell trains 1/f the epochs: the same samples for every cell
        epochs = table.set_index("fraction")["epochs"].groupby(level=0).first()
        assert {f: e for f, e in epochs.items()} == {f: max(1, round(1 / f)) for f in spec.fractions}
    if spec.probe.match_dim:
        assert (table["matched_dim"] == 8).all() and table["probe_acc_matched"].between(0, 1).all()


def test_equal_samples_scales_epochs_and_is_checked(tmp_path):
    d = _tiny(_preset("demo"))
    d["grid"]["fraction"] = ["1/3", "2/3", 1]
    d["recipe"]["epochs"] = 4
    plain = SweepSpec.from_dict(d, tmp_path)
    assert {c.fraction: plain.pretrain_config(c).epochs for c in plain.cells()} == {1 / 3: 4, 2 / 3: 4, 1.0: 4}
    equal = SweepSpec.from_dict(d | {"equal_samples": True}, tmp_path)
    assert {c.fraction: equal.pretrain_config(c).epochs for c in equal.cells()} == {1 / 3: 12, 2 / 3: 6, 1.0: 4}
    with pytest.raises(SweepError, match="equal_samples: 'yes' is not true or false"):
        SweepSpec.from_dict(d | {"equal_samples": "yes"}, tmp_path)


def test_estimate_projects_training_time_from_measured_throughput(tmp_path):
    import json

    from click.testing import CliRunner

    from probes.estimate import cell_samples, estimate
    from revtransfer.cli import main

    spec = SweepSpec.load("paper", tmp_path)
    samples = cell_samples(spec)
    # 150k images, 10% held out, fractions 1/3 .. 1 of the 135k train part, 40 epochs each
    assert samples["vit_micro-backprop-corr0.8-frac1.0000-seed0"] == ("vit_micro", 135_000 * 40)
    assert samples["vit_micro-backprop-corr0.8-frac0.3333-seed0"] == ("vit_micro", 45_000 * 40)
    rec = dict(mode="backprop", precision="bf16", batch_size=256, model_kwargs={}, image_size=[80, 80])
    bench = {"records": [rec | dict(model="vit_micro", samples_per_s_rounds={"median": 10_000.0}),
                         rec | dict(model="revvit_micro", mode="pareprop", samples_per_s_rounds={"median": 7_500.0}),
                         rec | dict(model="revvit_micro", mode="pareprop", batch_size=64, samples_per_s=100.0)]}
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps(bench))
    rows = {r["arch"]: r for r in estimate(spec, [path])}
    total = sum(s for a, s in samples.values() if a == "vit_micro")
    assert rows["vit_micro"]["hours"] == pytest.approx(total / 10_000 / 3600)
    assert rows["revvit_micro"]["samples_per_s"] == 7_500 and rows["revvit_micro"]["same_shape"]
    out = CliRunner().invoke(main, ["sweep", "paper", "--workdir", str(tmp_path), "--estimate", str(path)])
    assert out.exit_code == 0 and "total:" in out.output and "warning" not in out.output
    # measured at another shape: still a figure, with a warning; a missing arch: one clear error
    path.write_text(json.dumps({"records": [r | {"image_size": [48, 48]} for r in bench["records"]]}))
    out = CliRunner().invoke(main, ["sweep", "paper", "--workdir", str(tmp_path), "--estimate", str(path)])
    assert out.exit_code == 0 and "no record at the sweep's model kwargs and image size" in out.output
    path.write_text(json.dumps({"records": bench["records"][:1]}))
    out = CliRunner().invoke(main, ["sweep", "paper", "--workdir", str(tmp_path), "--estimate", str(path)])
    assert out.exit_code != 0
    assert out.output.strip().splitlines()[-1].startswith("Error: --estimate: no throughput for revvit_micro/pareprop")
