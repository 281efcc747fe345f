"""Fixtures shared across test modules. Modules in tests/ (helpers, study_fixtures, stream_sim)
import each other by name: pytest puts this folder on sys.path (rootdir-relative)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def clevr_coco(tmp_path_factory):
    """A tiny complete clevr_gen dataset with COCO instance masks (images.npy, coco.json, manifest)."""
    from clevr_gen import DatasetSpec, generate

    out = tmp_path_factory.mktemp("clevr_coco") / "ds"
    generate(DatasetSpec(n=12, p_x=0.5, p_y=0.5, corr=0.0, width=32, height=32, coco=True, seed=7), out,
             workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def study_dataset(tmp_path_factory):
    """A small synthetic pretrain set in clevr_gen's format whose has_x is learnable in an epoch or two."""
    from study_fixtures import write_dataset

    return write_dataset(tmp_path_factory.mktemp("study") / "pretrain", n=160, size=16)
