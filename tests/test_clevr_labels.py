"""Exact joint counts, feasibility (Frechet bounds) and conjunction/size parsing."""
import math

import numpy as np
import pytest

from clevr_gen import labels, vocab
from clevr_gen.presets import PRESETS
from clevr_gen.spec import DatasetSpec, parse_size


def corr_of(c: labels.CellCounts) -> float:
    x = np.repeat([1, 1, 0, 0], [c.n11, c.n10, c.n01, c.n00])
    y = np.repeat([1, 0, 1, 0], [c.n11, c.n10, c.n01, c.n00])
    return labels.measure(x, y)["corr"]


@pytest.mark.parametrize("name", [k for k, v in PRESETS.items() if v["split"] == "pretrain"])
def test_preset_counts_hit_targets(name):
    p = PRESETS[name]
    c = labels.joint_counts(p["n"], p["p_x"], p["p_y"], p["corr"])
    assert c.n == p["n"]
    assert (c.n11 + c.n10) == round(p["n"] * p["p_x"])
    assert (c.n11 + c.n01) == round(p["n"] * p["p_y"])
    assert abs(corr_of(c) - p["corr"]) < 1e-3
    # and a scaled-down preset stays within 0.01
    small = labels.joint_counts(2000, p["p_x"], p["p_y"], p["corr"])
    assert abs(corr_of(small) - p["corr"]) < 0.01


def test_counts_match_formula_on_a_grid():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p, q = rng.uniform(0.05, 0.95, 2)
        lo, hi = labels.phi_range(p, q)
        phi = rng.uniform(lo, hi)
        c = labels.joint_counts(10_000, p, q, phi)
        assert min(c.n11, c.n10, c.n01, c.n00) >= 0 and c.n == 10_000
        expected_p11 = p * q + phi * math.sqrt(p * (1 - p) * q * (1 - q))
        assert abs(c.n11 / 10_000 - expected_p11) < 2e-4
        assert abs(corr_of(c) - phi) < 0.01


def test_phi_range_and_infeasible_error_states_range():
    lo, hi = labels.phi_range(0.5, 0.64)
    assert hi == pytest.approx(0.75) and lo == pytest.approx(-0.75)
    with pytest.raises(labels.InfeasibleTargetError) as e:
        labels.joint_counts(1000, 0.5, 0.64, 0.8)
    assert "-0.7500, 0.7500" in str(e.value) and "corr=0.8" in str(e.value)
    with pytest.raises(labels.InfeasibleTargetError):  # also before any work, via the spec
        DatasetSpec(n=100, p_x=0.5, p_y=0.64, corr=0.8)
    with pytest.raises(ValueError, match="between 0 and 1"):
        labels.joint_counts(100, 1.0, 0.5, 0.0)


def test_extreme_feasible_corr_is_exact():
    c = labels.joint_counts(1000, 0.5, 0.64, 0.75)
    assert c.n10 == 0 and corr_of(c) == pytest.approx(0.75, abs=1e-9)


def test_transfer_counts_have_no_x():
    c = labels.joint_counts(50_000, 0.0, 0.56, None)
    assert c.n11 == c.n10 == 0 and c.n01 == 28_000


def test_assign_cells_is_a_seeded_shuffle_of_the_counts():
    c = labels.joint_counts(1000, 0.51, 0.51, 0.8)
    a = labels.assign_cells(c, np.random.SeedSequence(7))
    b = labels.assign_cells(c, np.random.SeedSequence(7))
    other = labels.assign_cells(c, np.random.SeedSequence(8))
    assert np.array_equal(a, b) and not np.array_equal(a, other)
    m = labels.measure(a[:, 0], a[:, 1])
    assert m["cells"] == c.as_dict()


def test_cells_the_conjunctions_forbid_are_rejected():
    # every green sphere is a sphere: "X without Y" cannot be built
    with pytest.raises(labels.InfeasibleTargetError, match="also a 'sphere'"):
        DatasetSpec(n=100, p_x=0.3, p_y=0.5, corr=0.1, x="green sphere", y="sphere")
    # compatible conjunctions are fine when the cell exists: a non-green sphere
    DatasetSpec(n=100, p_x=0.3, p_y=0.5, corr=0.1, x="sphere", y="green")


def test_parse_conjunction():
    assert vocab.parse_conjunction("rubber green sphere") == {
        "shape": "sphere", "color": "green", "material": "rubber"}
    assert vocab.parse_conjunction("Big METALLIC cube") == {
        "shape": "cube", "material": "metal", "size": "large"}
    with pytest.raises(ValueError, match="'pink'.*allowed values"):
        vocab.parse_conjunction("rubber pink sphere")
    with pytest.raises(ValueError, match="two values for color"):
        vocab.parse_conjunction("red green sphere")
    with pytest.raises(ValueError, match="empty"):
        vocab.parse_conjunction("  ")


def test_parse_size():
    assert parse_size("80") == (80, 80)
    assert parse_size("320x240") == (320, 240)
    for bad in ("80x", "abc", "0", "5000x80", "-3"):
        with pytest.raises(ValueError, match="size|width|height"):
            parse_size(bad)


def test_spec_validation_messages():
    with pytest.raises(ValueError, match="transfer.*p_x must be 0"):
        DatasetSpec(split="transfer", n=10, p_x=0.5, p_y=0.5, corr=None)
    with pytest.raises(ValueError, match="min_pixels"):
        DatasetSpec(n=10, p_x=0.5, p_y=0.5, corr=0.0, width=16, height=16, min_pixels=100)
    with pytest.raises(ValueError, match="too small"):
        DatasetSpec(n=1, p_x=0.5, p_y=0.5, corr=0.0)
    spec = DatasetSpec(n=10, p_x=0.5, p_y=0.5, corr=0.0, width=320, height=240)
    assert spec.min_pixels == 200  # CLEVR's at CLEVR's size
    assert DatasetSpec(n=10, p_x=0.5, p_y=0.5, corr=0.0).min_pixels == 17  # scaled to 80x80
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
