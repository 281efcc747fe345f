"""Scenes are built to their label cell and follow CLEVR's placement rules."""
import itertools
import math

import numpy as np
import pytest

from clevr_gen import vocab
from clevr_gen.pipeline import make_scene
from clevr_gen.scene import MARGIN, MIN_DIST, relationships, sample_scene, scene_labels
from clevr_gen.spec import DatasetSpec

CELLS = [(1, 1), (1, 0), (0, 1), (0, 0)]


@pytest.mark.parametrize("x,y", [("rubber green sphere", "metal yellow cube"),
                                 ("sphere", "green"),  # overlapping conjunctions
                                 ("small", "red cylinder")])
def test_labels_equal_cell_and_zero_cells_never_completed(x, y):
    spec = DatasetSpec(n=100, p_x=0.4, p_y=0.4, corr=0.1, x=x, y=y)
    rng = np.random.default_rng(0)
    for trial, (hx, hy) in itertools.product(range(60), CELLS):
        scene = sample_scene(rng, hx, hy, spec, trial)
        assert scene_labels(scene, spec.x, spec.y) == (hx, hy)
        for obj in scene["objects"]:
            if not hx:
                assert not vocab.matches(obj, spec.x)
            if not hy:
                assert not vocab.matches(obj, spec.y)
            if obj["role"] == "x":
                assert vocab.matches(obj, spec.x)
            if obj["role"] == "y":
                assert vocab.matches(obj, spec.y)
        assert spec.min_objects <= len(scene["objects"]) <= spec.max_objects


def test_placement_follows_clevr_rules():
    spec = DatasetSpec(n=100, p_x=0.5, p_y=0.5, corr=0.0)
    rng = np.random.default_rng(1)
    for i in range(100):
        scene = sample_scene(rng, i % 2, 0, spec, i)
        objs = scene["objects"]
        left = np.array(scene["directions"]["left"][:2])
        behind = np.array(scene["directions"]["behind"][:2])
        for a, b in itertools.combinations(objs, 2):
            pa, pb = np.array(a["3d_coords"]), np.array(b["3d_coords"])
            # edge-to-edge, with CLEVR's radii (cube: the size's r for the newer object)
            assert np.hypot(*(pa[:2] - pb[:2])) - pa[2] - pb[2] >= MIN_DIST - 1e-4
            for axis in (left, behind):
                m = abs(float((pa[:2] - pb[:2]) @ axis))
                assert m >= MARGIN - 1e-4
        for o in objs:
            x, y, z = o["3d_coords"]
            assert -3 <= x <= 3 and -3 <= y <= 3
            r = vocab.SIZES[o["size"]]
            assert z == pytest.approx(r / math.sqrt(2) if o["shape"] == "cube" else r, abs=1e-5)
            assert 0 <= o["rotation"] < 360
        # camera/light jitter recorded within CLEVR's ranges
        assert all(abs(j) <= 0.5 for j in scene["camera"]["jitter"])
        assert all(abs(j) <= 1.0 for L in scene["lights"].values() for j in L["jitter"])


def test_transfer_scenes_never_have_x():
    spec = DatasetSpec(split="transfer", n=100, p_x=0.0, p_y=0.5, corr=None)
    rng = np.random.default_rng(2)
    for i in range(200):
        scene = sample_scene(rng, 0, i % 2, spec, i)
        assert not any(vocab.matches(o, spec.x) for o in scene["objects"])


def test_every_object_is_visible_and_scenes_are_seeded_by_index():
    spec = DatasetSpec(n=100, p_x=0.5, p_y=0.5, corr=0.0, width=48, height=48)
    a = make_scene(spec, 5, 1, 1)
    b = make_scene(spec, 5, 1, 1)
    c = make_scene(spec, 6, 1, 1)
    assert np.array_equal(a.image, b.image) and a.scene == b.scene
    assert not np.array_equal(a.image, c.image)
    for res in (a, c):
        counts = np.bincount(res.object_ids[res.object_ids >= 0], minlength=len(res.scene["objects"]))
        assert counts.min() >= spec.min_pixels
        assert [o["visible_pixels"] for o in res.scene["objects"]] == counts.tolist()


def test_relationships_helper():
    scene = {"objects": [{"3d_coords": [0, 0, 0.7]}, {"3d_coords": [2, 0, 0.7]}],
             "directions": {"left": [-1, 0, 0], "right": [1, 0, 0], "front": [0, -1, 0],
                            "behind": [0, 1, 0]}}
    rel = relationships(scene)
    assert rel["right"] == [[1], []] and rel["left"] == [[], [0]]
