"""revtransfer.data: the torch Dataset over clevr_gen's format and the split helpers."""
import numpy as np
import pytest
import torch

from clevr_gen.spec import DatasetSpec
from clevr_gen.writer import generate
from revtransfer.data import ClevrDataset, DatasetIncompleteError, split_indices, subset_fraction


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"
    generate(DatasetSpec(n=30, p_x=0.4, p_y=0.6, corr=0.3, width=32, height=24, seed=5), out,
             progress=False, log=lambda *a: None)
    return out


def test_items_are_uint8_chw_with_labels(dataset_dir):
    images = np.load(dataset_dir / "images.npy")
    lab = np.genfromtxt(dataset_dir / "labels.csv", delimiter=",", names=True, dtype=int)
    for target in ("has_x", "has_y"):
        ds = ClevrDataset(dataset_dir, target=target)
        assert len(ds) == 30
        for i in (0, 7, 29):
            img, y = ds[i]
            assert img.dtype == torch.uint8 and img.shape == (3, 24, 32)
            assert torch.equal(img, torch.from_numpy(images[i]).permute(2, 0, 1))
            assert y.dtype == torch.int64 and int(y) == lab[target][i]
        assert np.array_equal(ds.targets(), lab[target])
    both = ClevrDataset(dataset_dir, target=("has_x", "has_y"))
    assert both[3][1].tolist() == [lab["has_x"][3], lab["has_y"][3]]


def test_split_selection_and_indices(dataset_dir):
    parts = {s: ClevrDataset(dataset_dir, split=s, split_seed=1) for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [24, 3, 3]
    all_idx = np.concatenate([p.indices for p in parts.values()])
    assert sorted(all_idx.tolist()) == list(range(30))
    sub = ClevrDataset(dataset_dir, split="train", split_seed=1, indices=[0, 5])
    assert sub.indices.tolist() == parts["train"].indices[[0, 5]].tolist()
    frac = ClevrDataset(dataset_dir, split="train", split_seed=1, fraction=0.5, fraction_seed=2)
    assert len(frac) == 12 and set(frac.indices) <= set(parts["train"].indices)
    with pytest.raises(ValueError, match="target='has_z'"):
        ClevrDataset(dataset_dir, target="has_z")
    with pytest.raises(ValueError, match="split='dev'"):
        ClevrDataset(dataset_dir, split="dev")


def test_dataloader_batches_with_workers(dataset_dir):
    ds = ClevrDataset(dataset_dir, target="has_y")
    ds[0]  # an open memory map must not be pickled into workers
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
    batches = list(loader)
    assert batches[0][0].shape == (8, 3, 24, 32) and batches[0][0].dtype == torch.uint8
    assert torch.cat([b[1] for b in batches]).tolist() == ds.targets().tolist()


def test_incomplete_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetIncompleteError, match="manifest.json is missing"):
        ClevrDataset(tmp_path)


def test_split_indices_deterministic_partition():
    a = split_indices(1000, (0.8, 0.1, 0.1), seed=0)
    b = split_indices(1000, (0.8, 0.1, 0.1), seed=0)
    c = split_indices(1000, (0.8, 0.1, 0.1), seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], c["val"])
    assert [len(a[k]) for k in ("train", "val", "test")] == [800, 100, 100]
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(1000))
    with pytest.raises(ValueError, match="summing to 1"):
        split_indices(10, (0.5, 0.1, 0.1))


def test_subset_fraction_is_nested_and_sized():
    idx = np.arange(100, 1100)
    small = subset_fraction(idx, 0.1, seed=3)
    large = subset_fraction(idx, 0.5, seed=3)
    assert len(small) == 100 and len(large) == 500
    assert set(small) <= set(large) <= set(idx)
    assert not np.array_equal(small, subset_fraction(idx, 0.1, seed=4))
    assert np.array_equal(subset_fraction(idx, 1.0, seed=3), idx)
    with pytest.raises(ValueError, match="fraction=0"):
        subset_fraction(idx, 0)
