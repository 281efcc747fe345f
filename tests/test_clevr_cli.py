"""`revtransfer gen`: options, error messages, presets, and no torch import."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clevr_gen.cli import gen


def run(*args):
    return CliRunner().invoke(gen, list(args), catch_exceptions=False)


def test_infeasible_corr_states_range(tmp_path):
    r = run("--p-x", "0.5", "--p-y", "0.64", "--corr", "0.8", "--n", "100", "--out", str(tmp_path / "d"))
    assert r.exit_code == 2
    assert "corr=0.8 is infeasible" in r.output and "[-0.7500, 0.7500]" in r.output
    assert not (tmp_path / "d").exists()  # rejected before any work


@pytest.mark.parametrize("args,needle", [
    (["--x", "rubber pink sphere"], "'pink'"),
    (["--size", "80x"], "size '80x'"),
    (["--size", "2x2"], "width=2"),
    (["--preset", "transfer", "--p-x", "0.3"], "drop --p-x"),
    (["--split", "transfer", "--corr", "0.2"], "drop --p-x and --corr"),
    (["--min-pixels", "0"], "min_pixels=0"),
])
def test_bad_values_are_named(tmp_path, args, needle):
    base = ["--p-x", "0.5", "--p-y", "0.5", "--corr", "0.1", "--n", "20"]
    if "--preset" in args or "--split" in args:
        base = ["--p-y", "0.5", "--n", "20"]
    r = run(*base, *args, "--out", str(tmp_path / "d"))
    assert r.exit_code != 0 and needle in r.output, r.output


def test_list_presets():
    r = run("--list-presets")
    assert r.exit_code == 0
    for name in ("pretrain-corr0.80", "pretrain-corr0.30", "pretrain-corr-0.02", "transfer"):
        assert name in r.output


def test_preset_scaled_down_non_square_with_options(tmp_path):
    out = tmp_path / "p"
    r = run("--preset", "pretrain-corr0.30", "--n", "24", "--size", "48x32", "--x", "small metal",
            "--y", "cylinder", "--coco", "--coco-categories", "shape", "--quiet", "--out", str(out))
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["preset"] == "pretrain-corr0.30" and m["seed"] == 2
    assert m["spec"]["width"] == 48 and m["spec"]["height"] == 32 and m["spec"]["n"] == 24
    assert m["spec"]["x"] == {"material": "metal", "size": "small"} and m["x"] == "small metal"
    assert (out / "coco.json").exists()
    assert "measured P(X)=" in r.output
    r2 = run("--preset", "pretrain-corr0.30", "--n", "24", "--size", "48x32", "--x", "small metal",
             "--y", "cylinder", "--coco", "--quiet", "--out", str(out))
    assert r2.exit_code == 0 and "nothing to do" in r2.output
    r3 = run("--preset", "pretrain-corr0.30", "--n", "25", "--quiet", "--out", str(out))
    assert r3.exit_code == 1 and "different spec" in r3.output


def _torch_imported_by(command_module: str, command: str, out_dir) -> bool:
    code = f"""
import sys
from click.testing import CliRunner
from {command_module} import {command}
args = ["--split", "transfer", "--p-y", "0.5", "--n", "6", "--size", "32", "--quiet",
        "--out", {str(out_dir)!r}]
r = CliRunner().invoke({command}, (["gen"] if {command!r} == "main" else []) + args)
assert r.exit_code == 0, r.output
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"


def test_clevr_gen_does_not_import_torch(tmp_path):
    assert not _torch_imported_by("clevr_gen.cli", "gen", tmp_path / "d")


def test_revtransfer_gen_does_not_import_torch(tmp_path):
    # The whole `revtransfer gen` path, including the revtransfer package's own __init__.
    assert not _torch_imported_by("revtransfer.cli", "main", tmp_path / "d")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pretrain-corr0.80", "pretrain-corr0.30", "pretrain-corr-0.02",
                                  "transfer"])
def test_scaled_presets_end_to_end(tmp_path, name):
    """Each study preset scaled to 400 images at 80x80 with COCO, two workers: targets met."""
    from clevr_gen.presets import PRESETS
    out = tmp_path / name
    r = run("--preset", name, "--n", "400", "--workers", "2", "--coco", "--quiet", "--out", str(out))
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())["measured"]
    p = PRESETS[name]
    assert abs(m["p_x"] - p["p_x"]) <= 0.01 and abs(m["p_y"] - p["p_y"]) <= 0.01
    if p["corr"] is None:
        assert m["corr"] is None and m["cells"]["11"] == m["cells"]["10"] == 0
    else:
        assert abs(m["corr"] - p["corr"]) <= 0.01
    assert m["min_visible_pixels"] >= 17 and sum(m["object_count_histogram"].values()) == 400
