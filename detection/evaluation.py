"""COCO evaluation through faster-coco-eval (a C++ COCOeval), or the official pycocotools one.

detectron2's own fast path (``COCOeval_opt``) lives in its compiled ``_C`` extension, which the
detectron2 wheel we use cannot load; ``COCOEvaluator`` then silently falls back to pycocotools.
:class:`FastCOCOEvaluator` swaps in faster-coco-eval's ``COCOeval_faster`` instead, which the test
suite checks gives the same numbers as pycocotools on the same detections.
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import os

import numpy as np
from detectron2.evaluation import COCOEvaluator

BACKENDS = ("faster_coco_eval", "pycocotools")


def coco_eval_backend(backend: str):
    """(COCO, COCOeval) classes of a backend."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise ValueError(f"unknown COCO eval backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


def evaluate_coco(gt, results: list[dict], iou_type: str, backend: str = "faster_coco_eval",
                  img_ids=None, max_dets=(1, 10, 100)):
    """Run COCO evaluation of ``results`` (COCO result dicts) against ``gt`` (a json path or dict);
    returns the summarised COCOeval object (``.stats``, ``.eval["precision"]``)."""
    COCO, COCOeval = coco_eval_backend(backend)
    if iou_type == "segm":
        # As detectron2 does: without "bbox", mask AP uses the mask area for small/medium/large.
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, dict):  # pycocotools' COCO() takes only a path: index a dict by hand
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(gt)
            coco_gt.createIndex()
        else:
            coco_gt = COCO(str(gt))
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if backend == "faster_coco_eval":
            ev.print_function = lambda *a, **k: None
        ev.params.maxDets = list(max_dets)
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


class FastCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` whose bbox/segm metrics come from ``backend`` (default faster-coco-eval).

    Same arguments as ``COCOEvaluator`` plus ``backend``; the results dict has the same keys. Only the
    images seen by ``process`` are scored.
    Keypoints and custom ``max_dets_per_image`` go through the parent's official path.
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                 backend: str = "faster_coco_eval", **kwargs):
        coco_eval_backend(backend)  # fail on a bad name at construction, not after inference
        self._backend = backend
        kwargs.setdefault("use_fast_impl", False)  # the parent's own fast path needs detectron2._C
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)

    def _eval_predictions(self, predictions, img_ids=None):
        # Score the images that were run (a dataset registered with max_images is a subset of its
        # json); the parent scores every image of the json.
        if img_ids is None:
            img_ids = sorted({p["image_id"] for p in predictions})
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        if "keypoints" in tasks or self._max_dets_per_image[2] != 100:
            return super()._eval_predictions(predictions, img_ids)
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            reverse = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
            for r in coco_results:
                r["category_id"] = reverse[r["category_id"]]
        if self._output_dir:
            with open(os.path.join(self._output_dir, "coco_instances_results.json"), "w") as f:
                json.dump(coco_results, f)
        if not self._do_evaluation:
            return
        self._logger.info(f"Evaluating predictions with {self._backend} ...")
        for task in sorted(tasks):
            ev = (evaluate_coco(self._metadata.json_file, coco_results, task, self._backend, img_ids,
                                self._max_dets_per_image)
                  if coco_results else None)  # COCO APIs do not handle empty results well
            if ev is not None:
                ev.stats = np.asarray(ev.stats)[:12]  # faster-coco-eval appends extra recalls
            self._results[task] = self._derive_coco_results(
                ev, task, class_names=self._metadata.get("thing_classes"))
