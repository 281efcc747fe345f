"""Datasets by path: images.npy and PNG layouts, the mapper, and clear errors."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from detection import DatasetError, NpyDatasetMapper, build_config, prepare, register_coco_by_path
from detection.synthetic import make_shapes_coco


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_coco(root / "npy", n=6, seed=3), make_shapes_coco(root / "png", n=6, seed=3, png=True)


def _mapped(name, image_format="RGB"):
    mapper = NpyDatasetMapper(is_train=False, augmentations=[], image_format=image_format)
    return [mapper(d)["image"] for d in DatasetCatalog.get(name)]


def test_npy_and_png_layouts_give_the_same_images(shapes):
    npy_dir, png_dir = shapes
    register_coco_by_path("t_npy", npy_dir / "coco.json", npy_dir)
    register_coco_by_path("t_png", png_dir / "coco.json", png_dir)
    rows = np.load(npy_dir / "images.npy")
    a, b = _mapped("t_npy"), _mapped("t_png")
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x, y)
        assert torch.equal(x, torch.from_numpy(rows[i]).permute(2, 0, 1))  # RGB, row i = image i
    bgr = _mapped("t_npy", "BGR")[0]
    assert torch.equal(bgr, a[0].flip(0))
    assert MetadataCatalog.get("t_npy").thing_classes == ["square", "disc"]


def test_training_dicts_carry_instances(shapes):
    register_coco_by_path("t_npy_train", shapes[0] / "coco.json", shapes[0] / "images.npy")
    mapper = NpyDatasetMapper(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True,
                              instance_mask_format="bitmask")
    d = mapper(DatasetCatalog.get("t_npy_train")[0])
    inst = d["instances"]
    assert len(inst) >= 1 and inst.gt_masks.tensor.shape[-2:] == (80, 80)
    # every mask lies inside its box
    for box, mask in zip(inst.gt_boxes.tensor, inst.gt_masks.tensor):
        ys, xs = mask.nonzero(as_tuple=True)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1 and ys.max() <= box[3]


def test_max_images_keeps_the_first(shapes):
    register_coco_by_path("t_first", shapes[0] / "coco.json", shapes[0], max_images=2)
    assert [d["image_id"] for d in DatasetCatalog.get("t_first")] == [1, 2]


def test_wrong_image_size_is_named(tmp_path, shapes):
    coco = json.loads((shapes[0] / "coco.json").read_text())
    coco["images"][1]["width"] = coco["images"][1]["height"] = 64
    bad = tmp_path / "coco.json"
    bad.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=r"image id 2 is 64x64.*are 80x80"):
        register_coco_by_path("t_bad", bad, shapes[0] / "images.npy")


def test_missing_files_are_named(tmp_path, shapes):
    with pytest.raises(DatasetError, match="nothere.json"):
        register_coco_by_path("t_missing", tmp_path / "nothere.json", shapes[0])
    with pytest.raises(DatasetError, match="noimages"):
        register_coco_by_path("t_missing", shapes[0] / "coco.json", tmp_path / "noimages")
    with pytest.raises(ValueError, match="give both the json and the images"):
        build_config("clevr_mask_rcnn_vit_micro_frozen", train_json=str(shapes[0] / "coco.json"))


def test_prepare_registers_and_sizes_the_head(shapes):
    cfg = build_config("clevr_mask_rcnn_revvit_micro_frozen", train_json=str(shapes[0] / "coco.json"),
                       train_images=str(shapes[0]), val_json=str(shapes[1] / "coco.json"),
                       val_images=str(shapes[1]))
    prepare(cfg)
    assert cfg.model.roi_heads.num_classes == 2  # from the json, not the config's 3
    assert len(DatasetCatalog.get("clevr_train")) == 6


def test_padding_that_does_not_fit_the_patch_grid_is_named():
    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen", overrides=["model.backbone.square_pad=84"])
    with pytest.raises(DatasetError, match=r"square_pad=84 is not a multiple of 80"):
        prepare(cfg)


def test_a_clevr_gen_dataset_is_read_through_the_checked_reader(clevr_coco, tmp_path):
    import shutil

    register_coco_by_path("t_clevr", clevr_coco / "coco.json", clevr_coco)
    assert len(_mapped("t_clevr")) == 12
    broken = tmp_path / "broken"
    shutil.copytree(clevr_coco, broken)
    with open(broken / "images.npy", "r+b") as f:  # truncated: the manifest records another size
        f.truncate(f.seek(0, 2) - 100)
    with pytest.raises(DatasetError, match="images.npy has .* bytes, the manifest records"):
        register_coco_by_path("t_broken", broken / "coco.json", broken)
