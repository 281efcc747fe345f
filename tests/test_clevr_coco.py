"""COCO output: RLE matches pycocotools, masks match renders, GT-vs-GT evaluation gives AP 1."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from clevr_gen import coco
from clevr_gen.render import render
from clevr_gen.spec import DatasetSpec
from clevr_gen.writer import generate

# pycocotools' numpy-2 copy-keyword deprecation, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_rle_matches_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    masks = [np.zeros((7, 5), bool), np.ones((7, 5), bool)]
    masks += [rng.random((h, w)) < p for h, w, p in [(13, 17, 0.3), (80, 80, 0.05), (24, 32, 0.9)]]
    first = np.zeros((6, 6), bool)
    first[0, 0] = True  # mask starting with a 1: the first run of zeros is empty
    last = np.zeros((6, 6), bool)
    last[-1, -1] = True  # ending with a 1: no last run of zeros
    column = np.zeros((9, 4), bool)
    column[:, 2] = True  # runs that span a whole column
    masks += [first, last, column]
    for m in masks:
        ours = coco.encode_mask(m)
        theirs = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ours["counts"] == theirs["counts"].decode()
        decoded = mask_utils.decode({"size": ours["size"], "counts": ours["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), m)


def test_annotations_of_an_object_map_match_pycocotools():
    rng = np.random.default_rng(1)
    ids = rng.integers(-1, 4, size=(23, 31)).astype(np.int16)  # objects 0..3; 4 has no pixel
    ids[:, :5] = -1
    scene = {"objects": [{"shape": s} for s in ("cube", "sphere", "cylinder", "cube", "sphere")]}
    anns = coco.annotations(ids, scene, 7, "shape")
    assert [a["object_index"] for a in anns] == [0, 1, 2, 3]
    for a in anns:
        mask = ids == a["object_index"]
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert a["segmentation"] == {"size": [23, 31], "counts": rle["counts"].decode()}
        assert a["area"] == mask.sum() and a["bbox"] == mask_utils.toBbox(rle).tolist()
        assert a["image_id"] == 7 and a["category_id"] == coco.category_id(
            scene["objects"][a["object_index"]], "shape")


def test_category_modes():
    assert [c["name"] for c in coco.categories("shape")] == ["cube", "sphere", "cylinder"]
    full = coco.categories("shape_color_material")
    assert len(full) == 48 and len({c["id"] for c in full}) == 48
    obj = {"shape": "cylinder", "color": "cyan", "material": "metal"}
    assert full[coco.category_id(obj, "shape_color_material") - 1]["name"] == "cyan metal cylinder"


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("coco") / "ds"
    spec = DatasetSpec(n=24, p_x=0.5, p_y=0.5, corr=0.5, width=64, height=48, seed=3,
                       coco=True, coco_categories="shape_color_material")
    generate(spec, out, progress=False, shard_size=10, log=lambda *a: None)
    return out, spec


def _quiet_coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_coco_masks_are_the_objects_visible_pixels(coco_dataset):
    out, spec = coco_dataset
    gt = _quiet_coco(out / "coco.json")
    scenes = json.loads((out / "scenes.json").read_text())["scenes"]
    images = np.load(out / "images.npy")
    assert len(gt.getImgIds()) == spec.n
    n_anns = 0
    for scene in scenes:
        i = scene["image_index"]
        img, ids = render(scene, spec.width, spec.height, spec.supersample)
        assert np.array_equal(img, images[i])  # scenes.json re-renders to the stored image
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[i]))
        assert len(anns) == len(scene["objects"])  # every object is visible, so annotated
        for ann in anns:
            k = ann["object_index"]
            mask = gt.annToMask(ann).astype(bool)
            assert np.array_equal(mask, ids == k)
            assert ann["area"] == mask.sum() >= spec.min_pixels
            assert ann["area"] == scene["objects"][k]["visible_pixels"]
            assert ann["bbox"] == mask_utils.toBbox(ann["segmentation"]
                                                    | {"counts": ann["segmentation"]["counts"].encode()}).tolist()
            o = scene["objects"][k]
            assert gt.loadCats(ann["category_id"])[0]["name"] == f"{o['color']} {o['material']} {o['shape']}"
            assert ann["iscrowd"] == 0
            n_anns += 1
    assert n_anns == sum(len(s["objects"]) for s in scenes)


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_ground_truth_against_itself_gives_ap_1(coco_dataset, iou_type):
    out, _ = coco_dataset
    gt = _quiet_coco(out / "coco.json")
    dets = [dict(a, score=1.0) for a in gt.loadAnns(gt.getAnnIds())]
    for d in dets:
        d.pop("id")
        if iou_type == "bbox":
            d.pop("segmentation")
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # AP @ IoU 0.50:0.95
