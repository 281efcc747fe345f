"""Dataset directories: exact measured stats, determinism across workers, atomic/resumable writes."""
import json
from pathlib import Path

import numpy as np
import pytest

from clevr_gen import vocab, writer
from clevr_gen.spec import DatasetSpec
from clevr_gen.writer import DatasetDirError, generate

SPEC = dict(n=40, p_x=0.5, p_y=0.5, corr=0.6, width=40, height=32, seed=11)
FILES = ["images.npy", "labels.csv", "scenes.json", "coco.json", "preview.png"]


def quiet(spec, out, **kw):
    kw.setdefault("shard_size", 8)
    return generate(spec, out, progress=False, log=lambda *a: None, **kw)


def read_bytes(out: Path) -> dict[str, bytes]:
    return {f: (out / f).read_bytes() for f in FILES if (out / f).exists()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The dataset made in one go with one worker: what every other way must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    spec = DatasetSpec(**SPEC, coco=True)
    manifest = quiet(spec, out)
    return out, spec, manifest


def test_measured_stats_equal_exact_cells(reference):
    out, spec, m = reference
    planned = spec.cell_counts().as_dict()
    assert m["targets"]["cells"] == planned == m["measured"]["cells"]
    assert m["measured"]["p_x"] == pytest.approx(0.5) and m["measured"]["p_y"] == pytest.approx(0.5)
    assert m["measured"]["corr"] == pytest.approx(0.6)  # n=40 allows it exactly
    lab = np.genfromtxt(out / "labels.csv", delimiter=",", names=True, dtype=int)
    assert lab["index"].tolist() == list(range(spec.n))
    assert {"11": int(((lab["has_x"] == 1) & (lab["has_y"] == 1)).sum()),
            "10": int(((lab["has_x"] == 1) & (lab["has_y"] == 0)).sum()),
            "01": int(((lab["has_x"] == 0) & (lab["has_y"] == 1)).sum()),
            "00": int(((lab["has_x"] == 0) & (lab["has_y"] == 0)).sum())} == planned
    hist = m["measured"]["object_count_histogram"]
    assert sum(hist.values()) == spec.n and set(map(int, hist)) <= set(range(3, 11))
    assert m["spec"] == spec.to_dict() and m["seed"] == 11
    assert {"python", "numpy", "pillow", "numba", "renderer"} <= set(m["versions"])
    assert "git_commit" in m  # a hash, or None outside a git checkout with commits


def test_scenes_and_labels_agree(reference):
    out, spec, _ = reference
    scenes = json.loads((out / "scenes.json").read_text())["scenes"]
    lab = np.genfromtxt(out / "labels.csv", delimiter=",", names=True, dtype=int)
    images = np.load(out / "images.npy", mmap_mode="r")
    assert images.shape == (spec.n, 32, 40, 3) and images.dtype == np.uint8
    for s, row in zip(scenes, lab):
        objs = s["objects"]
        assert s["has_x"] == row["has_x"] == any(vocab.matches(o, spec.x) for o in objs)
        assert s["has_y"] == row["has_y"] == any(vocab.matches(o, spec.y) for o in objs)
        assert row["n_objects"] == len(objs) and row["n_x"] == sum(vocab.matches(o, spec.x) for o in objs)
        assert row["n_metal"] == sum(o["material"] == "metal" for o in objs)
        assert min(o["visible_pixels"] for o in objs) >= spec.min_pixels
        assert {"shape", "size", "material", "color", "3d_coords", "rotation",
                "pixel_coords"} <= set(objs[0])


def test_same_bytes_with_two_workers(reference, tmp_path):
    out, spec, m1 = reference
    m2 = quiet(spec, tmp_path / "w2", workers=2, shard_size=5)  # other workers and shards too
    assert read_bytes(tmp_path / "w2") == read_bytes(out)
    strip = lambda m: {k: v for k, v in m.items() if k != "run"}  # noqa: E731
    assert strip(m1) == strip(m2)


def test_crash_leaves_no_manifest_and_rerun_redoes_only_missing_shards(reference, tmp_path,
                                                                       monkeypatch):
    out_ref, spec, _ = reference
    out = tmp_path / "crash"
    real = writer.build_shard
    built = []

    def dies_on_shard_2(*args):
        if args[2] == 2:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the run
        built.append(args[2])
        return real(*args)

    monkeypatch.setattr(writer, "build_shard", dies_on_shard_2)
    with pytest.raises(KeyboardInterrupt):
        quiet(spec, out)
    assert not (out / "manifest.json").exists()
    assert built == [0, 1]
    from revtransfer.data import ClevrDataset, DatasetIncompleteError
    with pytest.raises(DatasetIncompleteError, match="unfinished"):
        ClevrDataset(out)

    built.clear()
    monkeypatch.setattr(writer, "build_shard", lambda *a: (built.append(a[2]), real(*a))[1])
    quiet(spec, out, shard_size=3)  # a different shard size is ignored: the run's is kept
    assert built == [2, 3, 4]
    assert read_bytes(out) == read_bytes(out_ref)
    assert not (out / ".partial").exists()


def test_crash_while_finalizing_then_resume(reference, tmp_path, monkeypatch):
    out_ref, spec, _ = reference
    out = tmp_path / "fin"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "_write_preview", boom)
    with pytest.raises(RuntimeError):
        quiet(spec, out)
    assert not (out / "manifest.json").exists() and (out / "images.npy").exists()
    monkeypatch.undo()
    built = []
    real = writer.build_shard
    monkeypatch.setattr(writer, "build_shard", lambda *a: (built.append(a[2]), real(*a))[1])
    quiet(spec, out)
    assert built == [] and read_bytes(out) == read_bytes(out_ref)


def test_rerun_complete_is_noop_and_other_spec_is_an_error(reference, monkeypatch):
    out, spec, m = reference
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setattr(writer, "build_shard", lambda *a: pytest.fail("rebuilt a shard"))
    assert quiet(spec, out) == m
    assert (out / "manifest.json").read_bytes() == before
    other = DatasetSpec(**{**SPEC, "corr": 0.3}, coco=True)
    with pytest.raises(DatasetDirError, match="different spec.*corr"):
        quiet(other, out)


def test_unfinished_run_with_other_spec_and_foreign_dirs_are_refused(tmp_path, monkeypatch):
    spec = DatasetSpec(**SPEC)
    real = writer.build_shard
    monkeypatch.setattr(writer, "build_shard",
                        lambda *a: (_ for _ in ()).throw(KeyboardInterrupt) if a[2] else real(*a))
    with pytest.raises(KeyboardInterrupt):
        quiet(spec, tmp_path / "u")
    monkeypatch.undo()
    with pytest.raises(DatasetDirError, match="unfinished run with a different spec.*seed"):
        quiet(DatasetSpec(**{**SPEC, "seed": 12}), tmp_path / "u")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetDirError, match="notes.txt"):
        quiet(spec, tmp_path / "foreign")


def test_png_output_matches_npy(reference, tmp_path):
    from PIL import Image
    out_ref, spec, _ = reference
    png_spec = DatasetSpec(**SPEC, coco=True, image_format="png")
    m = quiet(png_spec, tmp_path / "png")
    ref = np.load(out_ref / "images.npy")
    assert m["files"]["images"] == "images/" and not (tmp_path / "png" / "images.npy").exists()
    for i in range(spec.n):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / "images" / f"{i:06d}.png")), ref[i])


def test_transfer_split(tmp_path):
    spec = DatasetSpec(split="transfer", n=30, p_x=0.0, p_y=0.56, corr=None, width=40, height=32)
    m = quiet(spec, tmp_path / "t")
    assert m["measured"]["p_x"] == 0 and m["measured"]["corr"] is None
    assert m["measured"]["cells"]["01"] == round(30 * 0.56)
    scenes = json.loads((tmp_path / "t" / "scenes.json").read_text())["scenes"]
    assert not any(vocab.matches(o, spec.x) for s in scenes for o in s["objects"])
    assert all(s["split"] == "transfer" for s in scenes)
