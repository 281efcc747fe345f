"""faster-coco-eval gives pycocotools' numbers on the same detections, in detectron2's evaluator too."""
import json

import numpy as np
import pytest
import torch
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util

from detection import FastCOCOEvaluator, evaluate_coco, register_coco_by_path
from detection.synthetic import make_shapes_coco


@pytest.fixture(scope="module")
def gt_and_detections(tmp_path_factory):
    root = make_shapes_coco(tmp_path_factory.mktemp("eval"), n=20, seed=5)
    gt = json.loads((root / "coco.json").read_text())
    rng = np.random.default_rng(0)
    dets = []
    for a in gt["annotations"]:  # jittered true positives, some with the wrong class ...
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 2, 4)
        m = mask_util.decode(a["segmentation"])
        m = np.roll(m, int(rng.integers(-2, 3)), axis=1)
        rle = mask_util.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        cat = a["category_id"] if rng.random() > 0.2 else 3 - a["category_id"]
        dets.append({"image_id": a["image_id"], "category_id": cat, "score": float(rng.random()),
                     "bbox": [x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3])], "segmentation": rle})
    for _ in range(40):  # ... and false positives
        img = int(rng.integers(1, 21))
        m = np.zeros((80, 80), np.uint8)
        x, y = (int(v) for v in rng.integers(0, 60, 2))
        m[y:y + 15, x:x + 15] = 1
        rle = mask_util.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        dets.append({"image_id": img, "category_id": int(rng.integers(1, 3)), "score": float(rng.random()),
                     "bbox": [x, y, 15, 15], "segmentation": rle})
    return root, gt, dets


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_coco_eval_matches_pycocotools(gt_and_detections, iou_type):
    _, gt, dets = gt_and_detections
    fast = evaluate_coco(gt, dets, iou_type, backend="faster_coco_eval")
    ref = evaluate_coco(gt, dets, iou_type, backend="pycocotools")
    assert ref.stats[0] > 0.05  # a meaningful AP, not two zeros agreeing
    np.testing.assert_allclose(np.asarray(fast.stats)[:12], ref.stats, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.eval["precision"], ref.eval["precision"], rtol=0, atol=1e-9)


def test_evaluator_matches_detectron2_official_path(gt_and_detections):
    root, gt, dets = gt_and_detections
    register_coco_by_path("t_eval", root / "coco.json", root)
    outputs = {}
    for d in dets:
        outputs.setdefault(d["image_id"], []).append(d)
    inputs, results = [], []
    for img in gt["images"]:
        ds = outputs.get(img["id"], [])
        inst = Instances((80, 80))
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in ds)]).reshape(-1, 4)
        inst.pred_boxes = Boxes(boxes.float())
        inst.scores = torch.tensor([d["score"] for d in ds])
        inst.pred_classes = torch.tensor([d["category_id"] - 1 for d in ds], dtype=torch.long)
        inst.pred_masks = torch.from_numpy(np.stack([mask_util.decode(d["segmentation"]) for d in ds])).bool() \
            if ds else torch.zeros(0, 80, 80, dtype=torch.bool)
        inputs.append({"image_id": img["id"]})
        results.append({"instances": inst})
    got = {}
    for name, ev in (("fast", FastCOCOEvaluator("t_eval", distributed=False)),
                     ("official", COCOEvaluator("t_eval", distributed=False, use_fast_impl=False))):
        ev.reset()
        ev.process(inputs, results)
        got[name] = ev.evaluate()
    for task in ("bbox", "segm"):
        for k, v in got["official"][task].items():
            assert got["fast"][task][k] == pytest.approx(v, abs=1e-7, nan_ok=True), (task, k)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'cocoapi'"):
        evaluate_coco({}, [], "bbox", backend="cocoapi")
