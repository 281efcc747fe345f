"""COCO-format datasets registered by path, including clevr_gen's ``coco.json`` + ``images.npy``.

``register_coco_by_path(name, json_file, images)`` registers a dataset in detectron2's catalogs:
``images`` is a folder of image files (COCO 2017's ``train2017/``, clevr_gen's PNGs), or an
``images.npy`` (uint8, N x H x W x 3, RGB) or a folder holding one. Rows of ``images.npy`` are
matched to the json's images by their ``index`` field when present, else by position in the json's
``images`` list. :class:`NpyDatasetMapper` reads those rows (memory-mapped) where
detectron2's ``DatasetMapper`` would read a file.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import os
from pathlib import Path

import detectron2.data.detection_utils as utils
import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image

from revtransfer.data import open_dataset
from revtransfer.errors import DatasetError

logger = logging.getLogger(__name__)

NPY_NAME = "images.npy"
_INDEX_KEYS = ("index", "npy_index")


def resolve_npy(images: str | os.PathLike) -> Path | None:
    """The ``images.npy`` that ``images`` names (the file or a folder holding it), else None."""
    p = Path(images)
    if p.suffix == ".npy":
        return p
    if p.is_dir() and (p / NPY_NAME).is_file():  # clevr_gen's dataset dir (its preview.png is no image)
        return p / NPY_NAME
    return None


def is_clevr_gen_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file()


@functools.lru_cache(maxsize=8)
def _open_npy(path: str) -> np.ndarray:
    """One read-only memory map per process (and per dataloader worker): rows are paged in on demand.
    A clevr_gen dataset's ``images.npy`` is opened through the one checked reader
    (``revtransfer.data.open_dataset``: manifest, file sizes and checksums, shape), any other
    ``.npy`` as it is."""
    p = Path(path)
    if p.name == NPY_NAME and is_clevr_gen_dir(p.parent):
        return open_dataset(p.parent).images
    return np.load(path, mmap_mode="r")


def _check_npy(json_file: Path, npy_file: Path) -> None:
    """Image count and sizes of the json against the array's shape, before any training starts."""
    arr = _open_npy(str(npy_file))
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise DatasetError(f"{npy_file}: expected uint8 images of shape (N, H, W, 3), "
                           f"got {arr.dtype} {tuple(arr.shape)}")
    with open(json_file) as f:
        images = json.load(f)["images"]
    n, h, w = arr.shape[:3]
    for pos, img in enumerate(images):
        idx = _npy_index(img, pos)
        if not 0 <= idx < n:
            raise DatasetError(f"{json_file}: image id {img['id']} refers to row {idx} but {npy_file} "
                               f"has {n} images")
        if (img.get("width", w), img.get("height", h)) != (w, h):
            raise DatasetError(f"{json_file}: image id {img['id']} is {img.get('width')}x{img.get('height')} "
                               f"(width x height) but the images in {npy_file} are {w}x{h}")


def _npy_index(img: dict, position: int) -> int:
    return int(next((img[k] for k in _INDEX_KEYS if k in img), position))


def load_coco_npy(json_file: str, npy_file: str, dataset_name: str | None = None) -> list[dict]:
    """detectron2 dataset dicts whose images are rows of ``npy_file``."""
    with open(json_file) as f:
        rows = {img["id"]: _npy_index(img, pos) for pos, img in enumerate(json.load(f)["images"])}
    dicts = load_coco_json(json_file, str(Path(npy_file).parent), dataset_name)
    for d in dicts:
        d["npy_file"] = str(npy_file)
        d["npy_index"] = rows[d["image_id"]]
    return dicts


def register_coco_by_path(name: str, json_file: str | os.PathLike, images: str | os.PathLike,
                          max_images: int | None = None) -> str:
    """Register a COCO-format dataset under ``name`` (replacing an earlier one of that name);
    ``max_images`` keeps the first images only (a quick evaluation or demo)."""
    json_file, images = Path(json_file), Path(images)
    if not json_file.is_file():
        raise DatasetError(f"dataset {name!r}: annotation file {str(json_file)!r} does not exist")
    if not images.exists():
        raise DatasetError(f"dataset {name!r}: images {str(images)!r} do not exist")
    npy = resolve_npy(images)
    if npy is not None:
        if not npy.is_file():
            raise DatasetError(f"dataset {name!r}: images file {str(npy)!r} does not exist")
        _check_npy(json_file, npy)
        loader = functools.partial(load_coco_npy, str(json_file), str(npy), name)
        image_root = str(npy.parent)
    else:
        if not images.is_dir():
            raise DatasetError(f"dataset {name!r}: images {str(images)!r} is neither a folder of images "
                               f"nor an .npy file")
        loader = functools.partial(load_coco_json, str(json_file), str(images), name)
        image_root = str(images)
    if max_images:
        loader = functools.partial(_first, loader, int(max_images))
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(json_file=str(json_file), image_root=image_root, evaluator_type="coco",
                                  thing_classes=category_names(json_file))
    return name


def _first(loader, n: int) -> list[dict]:
    return loader()[:n]


def category_names(json_file: str | os.PathLike) -> list[str]:
    """Category names sorted by id: detectron2's contiguous class order for a COCO json."""
    with open(json_file) as f:
        cats = json.load(f)["categories"]
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


def clevr_train_augmentations(size: int, scale_range: tuple[float, float] | None = (0.8, 1.25),
                              flip: bool = True) -> list:
    """The CPU configs' training augmentation for clevr_gen scenes: a horizontal flip, then (unless
    ``scale_range`` is None) ViTDet's large-scale jitter at small scale: a random rescaling by a
    factor in ``scale_range`` and a crop (or pad) back to ``size`` x ``size``. Without the rescaling
    an image has only two inputs (flipped or not), which a frozen backbone's feature cache
    (``model.backbone.net.feature_cache_mb``) reuses."""
    augs = [T.RandomFlip(horizontal=True)] if flip else []
    if scale_range is None:  # to the detection size as evaluation does (scenes made at it stay as they are)
        return augs + [T.ResizeShortestEdge(short_edge_length=size, max_size=size)]
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range={tuple(scale_range)}: give (min, max) with 0 < min <= max")
    return augs + [T.ResizeScale(min_scale=lo, max_scale=hi, target_height=size, target_width=size),
                   T.FixedSizeCrop(crop_size=(size, size), pad=False)]


class NpyDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that reads a dict's image from ``images.npy`` when the dict names one
    (``npy_file``/``npy_index``, as :func:`load_coco_npy` writes), and from its file otherwise."""

    def __call__(self, dataset_dict):
        if "npy_file" not in dataset_dict:
            return super().__call__(dataset_dict)
        dataset_dict = copy.deepcopy(dataset_dict)
        rgb = np.asarray(_open_npy(dataset_dict["npy_file"])[dataset_dict["npy_index"]])
        image = utils.convert_PIL_to_numpy(Image.fromarray(rgb), self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict
