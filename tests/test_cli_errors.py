"""Bad input, as a new user gives it, gets one ``Error:`` line naming the thing and what is allowed,
exit status 1, no traceback (unless --debug), and no half-made output."""
from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch
from click.testing import CliRunner
from study_fixtures import write_dataset

from revtransfer.cli import main

TINY = ["--model-kw", "depth=1", "--model-kw", "embed_dim=16", "--model-kw", "num_heads=2", "--model-kw",
        "patch_size=4", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]


def fails_in_one_line(*args, needle: str) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.output and needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "d"
    r = CliRunner().invoke(main, ["gen", "--p-x", "0.5", "--p-y", "0.5", "--corr", "0.5", "--n", "40", "--size",
                                  "16x16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def copy_of(dataset, tmp_path):
    return shutil.copytree(dataset, tmp_path / "copy")


def test_truncated_images_are_caught_on_open(dataset, tmp_path):
    d = copy_of(dataset, tmp_path)
    with open(d / "images.npy", "r+b") as f:
        f.truncate(os.path.getsize(d / "images.npy") - 100)
    fails_in_one_line("pretrain", d, "--out", tmp_path / "run", *TINY, needle="images.npy has")
    assert not (tmp_path / "run").exists()


def test_edited_labels_are_caught_by_their_checksum(dataset, tmp_path):
    d = copy_of(dataset, tmp_path)
    text = (d / "labels.csv").read_text().splitlines()
    row = text[1].split(",")
    row[1] = str(1 - int(row[1]))  # flip has_x of image 0: same size, other bytes
    (d / "labels.csv").write_text("\n".join([text[0], ",".join(row), *text[2:]]) + "\n")
    fails_in_one_line("pretrain", d, "--out", tmp_path / "run", *TINY, needle="SHA-256")


@pytest.mark.parametrize("damage, needle", [
    (lambda text: text[: text.index("\n", len(text) // 2) - 2], "fields, the header has"),  # cut mid-row
    (lambda text: text + "7,x,1,3\n", "is not a row of integers"),
])
def test_malformed_labels_name_the_line(tmp_path, damage, needle):
    d = write_dataset(tmp_path / "d", n=40)  # an older manifest without sizes and hashes
    (d / "labels.csv").write_text(damage((d / "labels.csv").read_text()))
    message = fails_in_one_line("pretrain", d, "--out", tmp_path / "run", *TINY, needle=needle)
    assert "labels.csv:" in message


def test_a_dataset_without_manifest_is_incomplete(dataset, tmp_path):
    d = copy_of(dataset, tmp_path)
    (d / "manifest.json").unlink()
    fails_in_one_line("pretrain", d, "--out", tmp_path / "run", *TINY, needle="manifest.json is missing")


def test_unknown_arch_lists_the_known_ones(dataset, tmp_path):
    fails_in_one_line("pretrain", dataset, "--out", tmp_path / "run", "--arch", "revvit_nano", *TINY,
                      needle="unknown model 'revvit_nano'; ours are: vit_micro, revvit_micro")
    assert not (tmp_path / "run").exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would call open(marker, "w"): create the marker file
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_code_is_refused_and_nothing_runs(dataset, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": _Payload(marker)}, tmp_path / "evil.pt")
    fails_in_one_line("pretrain", dataset, "--out", tmp_path / "run", "--init", tmp_path / "evil.pt", *TINY,
                      needle="nothing was run")
    assert not marker.exists() and not (tmp_path / "run").exists()
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": _Payload(marker)}, f)
    fails_in_one_line("pretrain", dataset, "--out", tmp_path / "run", "--init", tmp_path / "evil.pkl", *TINY,
                      needle="evil.pkl")
    assert not marker.exists()


def test_a_file_that_is_no_checkpoint(dataset, tmp_path):
    (tmp_path / "notes.pt").write_text("these are my notes\n")
    fails_in_one_line("pretrain", dataset, "--out", tmp_path / "run", "--init", tmp_path / "notes.pt", *TINY,
                      needle="no PyTorch checkpoint")


def test_a_sweep_file_with_a_python_tag_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "s.yaml").write_text(f'name: x\ngrid: !!python/object/apply:os.system ["touch {marker}"]\n')
    fails_in_one_line("sweep", tmp_path / "s.yaml", needle="line 2, column 7")
    assert not marker.exists()


def test_unknown_detection_config_lists_ours(dataset):
    fails_in_one_line("detect", "train", "--config", "mask_rcnn_vit_huge", "--dataset", dataset,
                      needle="neither a file nor one of ours: clevr_mask_rcnn_")


def test_a_transfer_set_of_another_image_size_is_refused_naming_both(tmp_path):
    pre = write_dataset(tmp_path / "pre", n=40, size=16)
    r = CliRunner().invoke(main, ["pretrain", str(pre), "--out", str(tmp_path / "run"), *TINY])
    assert r.exit_code == 0, r.output
    transfer = write_dataset(tmp_path / "transfer", n=40, size=32, transfer=True)
    fails_in_one_line("probe", tmp_path / "run", transfer, "--no-progress", needle="has 32x32 images but the "
                      "backbone")
    assert not (tmp_path / "run" / "probe.json").exists()


def test_debug_shows_the_traceback(dataset, tmp_path):
    d = copy_of(dataset, tmp_path)
    (d / "manifest.json").unlink()
    r = CliRunner().invoke(main, ["--debug", "pretrain", str(d), "--out", str(tmp_path / "run"), *TINY])
    assert r.exit_code == 1 and type(r.exception).__name__ == "DatasetIncompleteError"
