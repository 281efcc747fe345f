"""The one reader of a clevr_gen dataset directory (format: clevr_gen/FORMAT.md).

Every consumer (the pretraining loop, probes, sweeps, :class:`~revtransfer.data.ClevrDataset`)
opens a dataset through :func:`open_dataset`, which checks cheaply what a crash, a copy or an edit
could have broken, and says which file is wrong:

- the directory is complete (``manifest.json`` is written last);
- every file has the size the manifest records, and ``labels.csv`` the recorded SHA-256;
- ``labels.csv`` parses as integers, one row per image, in index order;
- ``images.npy`` is uint8 (N, H, W, 3) as the manifest says.

Datasets written before the manifest recorded sizes and hashes are read without those two checks.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from revtransfer.errors import DatasetError


class DatasetIncompleteError(DatasetError):
    """The directory has no manifest.json: generation has not finished (or it is not a dataset)."""


def read_manifest(root: str | Path) -> dict:
    root = Path(root)
    path = root / "manifest.json"
    if not root.is_dir():
        raise DatasetError(f"dataset dir {root} does not exist; make one with `revtransfer gen`")
    if not path.exists():
        hint = (" (an unfinished run: re-run the same `revtransfer gen` command to finish it)"
                if (root / ".partial").exists() else "")
        raise DatasetIncompleteError(f"{root} is not a complete clevr_gen dataset: {path.name} is missing{hint}")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise DatasetError(f"{path} is unreadable: {e}") from e
    if not isinstance(manifest, dict) or "n" not in manifest or "image_shape" not in manifest:
        raise DatasetError(f"{path} is not a clevr_gen manifest (no n / image_shape)")
    return manifest


def check_files(root: Path, manifest: dict) -> None:
    """Sizes of every recorded file (a truncated or replaced file changes its size)."""
    for name, info in manifest.get("integrity", {}).items():
        path = root / name
        if not path.exists():
            raise DatasetError(f"{path} is missing (the manifest records it)")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise DatasetError(f"{path} has {size} bytes, the manifest records {info['bytes']}: the file is "
                               "truncated or was changed; regenerate the dataset")


def read_labels(root: str | Path, manifest: dict | None = None) -> dict[str, np.ndarray]:
    """labels.csv as {column: int64 array}, rows in index order; checked against the manifest's
    hash when it records one."""
    path = Path(root) / "labels.csv"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path} is unreadable: {e}") from e
    want = ((manifest or {}).get("integrity", {}).get("labels.csv") or {}).get("sha256")
    if want and hashlib.sha256(data).hexdigest() != want:
        raise DatasetError(f"{path} does not match the SHA-256 its manifest records: it was changed; regenerate the dataset")
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace")))
    header = next(reader, None)
    if not header:
        raise DatasetError(f"{path} is empty")
    rows = []
    for line, row in enumerate(reader, start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        try:
            rows.append([int(v) for v in row])
        except ValueError:
            raise DatasetError(f"{path}:{line}: {','.join(row)!r} is not a row of integers") from None
    table = np.array(rows, dtype=np.int64).reshape(-1, len(header))
    labels = {name: table[:, j] for j, name in enumerate(header)}
    if "index" in labels and not np.array_equal(labels["index"], np.arange(len(table))):
        raise DatasetError(f"{path}: column 'index' is not 0..N-1 in order")
    return labels


class ClevrArrays:
    """A clevr_gen dataset dir opened read-only: the manifest, the label table, and the images
    (``images.npy`` memory-mapped, opened lazily in each process; or the PNG folder)."""

    def __init__(self, path: Path, manifest: dict, labels: dict[str, np.ndarray]):
        self.path, self.manifest, self.labels = path, manifest, labels
        self.image_format = manifest.get("spec", {}).get("image_format", "npy")
        self.n = int(manifest["n"])
        self._images = None

    def __len__(self) -> int:
        return self.n

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.manifest["image_shape"][0]), int(self.manifest["image_shape"][1])

    @property
    def images(self) -> np.ndarray:
        """uint8 (N, H, W, 3), memory-mapped: a batch is one fancy-indexed read."""
        if self.image_format != "npy":
            raise DatasetError(f"{self.path} stores PNG images; this reads images.npy: regenerate the dataset with "
                               "the npy format")
        if self._images is None:
            self._images = _map_images(self.path / "images.npy", self.n, self.image_size)
        return self._images

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 (H, W, 3), whatever the format."""
        if self.image_format == "npy":
            return self.images[i]
        from PIL import Image

        with Image.open(self.path / "images" / f"{i:06d}.png") as im:
            return np.asarray(im.convert("RGB"))

    def column(self, name: str) -> np.ndarray:
        if name not in self.labels:
            raise DatasetError(f"{self.path}/labels.csv has no column {name!r}; it has {', '.join(self.labels)}")
        return self.labels[name]

    def binary_labels(self, name: str) -> np.ndarray:
        y = self.column(name).astype(np.int64)
        bad = set(np.unique(y).tolist()) - {0, 1}
        if bad:
            raise DatasetError(f"{self.path}/labels.csv column {name!r} is not binary (values {sorted(bad)})")
        return y

    @property
    def fingerprint(self) -> str:
        """Identifies the dataset's content: from its manifest (seed, spec, stats), not its path."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def __getstate__(self):  # never pickle an open memory map (DataLoader workers map their own)
        state = dict(self.__dict__)
        state["_images"] = None
        return state


def _map_images(path: Path, n: int, size: tuple[int, int]) -> np.ndarray:
    if not path.exists():
        raise DatasetError(f"{path} is missing")
    try:
        images = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise DatasetError(f"{path} is unreadable (truncated?): {e}") from e
    if images.dtype != np.uint8 or images.shape != (n, *size, 3):
        raise DatasetError(f"{path} must be uint8 {(n, *size, 3)} as the manifest says; it is {images.dtype} "
                           f"{images.shape}")
    return images


def open_dataset(path: str | Path) -> ClevrArrays:
    """Open a complete clevr_gen dataset dir, checked as the module docstring says."""
    path = Path(path)
    manifest = read_manifest(path)
    check_files(path, manifest)
    labels = read_labels(path, manifest)
    data = ClevrArrays(path, manifest, labels)
    n_rows = len(next(iter(labels.values()))) if labels else 0
    if n_rows != data.n:
        raise DatasetError(f"{path}: labels.csv has {n_rows} rows but the manifest says {data.n} images")
    if data.image_format == "npy":
        data.images  # noqa: B018  (map it now: a wrong shape or a torn file fails here, naming the file)
    return data
