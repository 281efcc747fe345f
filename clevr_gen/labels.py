"""Exact 2x2 joint label counts for targets P(X)=p, P(Y)=q, Corr(X,Y)=phi, and their feasibility.

For two binary indicators the Pearson (phi) coefficient fixes the joint cell
    p11 = p*q + phi * sqrt(p(1-p) q(1-q)),
and the other cells follow from the marginals. A joint exists only inside the Frechet bounds
max(0, p+q-1) <= p11 <= min(p, q), which bounds phi to `phi_range(p, q)`.

Counts are rounded so the realised marginals are round(n p) and round(n q) and the realised
correlation is the closest one those marginals allow; every scene is then built to its cell.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class InfeasibleTargetError(ValueError):
    """The requested (p, q, phi) has no joint distribution (or the X/Y conjunctions forbid a cell)."""


@dataclass(frozen=True)
class CellCounts:
    """Number of scenes in each cell (has_x, has_y)."""
    n11: int
    n10: int
    n01: int
    n00: int

    @property
    def n(self) -> int:
        return self.n11 + self.n10 + self.n01 + self.n00

    def as_dict(self) -> dict[str, int]:
        return {"11": self.n11, "10": self.n10, "01": self.n01, "00": self.n00}


def _spread(p: float, q: float) -> float:
    return math.sqrt(p * (1 - p) * q * (1 - q))


def phi_range(p: float, q: float) -> tuple[float, float]:
    """Feasible interval of Corr(X, Y) for marginals p, q strictly inside (0, 1)."""
    _check_probability("p_x", p, open_interval=True)
    _check_probability("p_y", q, open_interval=True)
    s = _spread(p, q)
    return ((max(0.0, p + q - 1) - p * q) / s, (min(p, q) - p * q) / s)


def _check_probability(name: str, value: float, open_interval: bool = False) -> None:
    if value is None or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if open_interval and not 0 < value < 1:
        raise ValueError(f"{name}={value} must lie strictly between 0 and 1 for a correlation "
                         f"to be defined")
    if not 0 <= value <= 1:
        raise ValueError(f"{name}={value} must lie in [0, 1]")


def check_feasible(p: float, q: float, phi: float) -> None:
    """Raise InfeasibleTargetError, stating the feasible range of phi, if (p, q, phi) is impossible."""
    if not math.isfinite(phi) or not -1 <= phi <= 1:
        raise InfeasibleTargetError(f"corr={phi} must lie in [-1, 1]")
    lo, hi = phi_range(p, q)
    tol = 1e-9
    if not lo - tol <= phi <= hi + tol:
        raise InfeasibleTargetError(
            f"corr={phi} is infeasible for p_x={p}, p_y={q}: with these marginals Corr(X,Y) can "
            f"only lie in [{lo:.4f}, {hi:.4f}] (Frechet bounds max(0, p+q-1) <= P(X and Y) <= "
            f"min(p, q)); choose corr in that range or change p_x / p_y")


def joint_counts(n: int, p: float, q: float, phi: float | None) -> CellCounts:
    """Exact cell counts for n scenes. phi=None means X never occurs (p must be 0: transfer split)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} must be a positive integer")
    n = int(n)
    if phi is None:
        _check_probability("p_x", p)
        _check_probability("p_y", q)
        if p != 0:
            raise ValueError(f"corr is required when p_x={p} > 0")
        m1 = round(n * q)
        return CellCounts(n11=0, n10=0, n01=m1, n00=n - m1)
    check_feasible(p, q, phi)
    n1, m1 = round(n * p), round(n * q)
    if n1 in (0, n) or m1 in (0, n):
        raise InfeasibleTargetError(
            f"n={n} is too small for p_x={p}, p_y={q}: round(n*p)={n1} and round(n*q)={m1} must "
            f"both lie strictly between 0 and n for Corr(X,Y) to be defined; use a larger n")
    # Re-solve phi on the realised marginals and round the joint cell, kept inside the integer
    # Frechet bounds, so the realised correlation is the nearest achievable one.
    pr, qr = n1 / n, m1 / n
    n11 = round(n * (pr * qr + phi * _spread(pr, qr)))
    n11 = min(max(n11, max(0, n1 + m1 - n)), min(n1, m1))
    return CellCounts(n11=n11, n10=n1 - n11, n01=m1 - n11, n00=n - n1 - m1 + n11)


def assign_cells(counts: CellCounts, seed_sequence: np.random.SeedSequence) -> np.ndarray:
    """Shuffle the cells over scene indices: an (n, 2) uint8 array of (has_x, has_y)."""
    cells = np.repeat(np.array([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=np.uint8),
                      [counts.n11, counts.n10, counts.n01, counts.n00], axis=0)
    rng = np.random.default_rng(seed_sequence)
    return cells[rng.permutation(len(cells))]


def measure(has_x: np.ndarray, has_y: np.ndarray) -> dict:
    """Measured P(X), P(Y), Corr(X,Y) (None where a marginal is 0 or 1) and the cell counts."""
    x = np.asarray(has_x, dtype=np.int64)
    y = np.asarray(has_y, dtype=np.int64)
    n = len(x)
    n11 = int((x & y).sum())
    n1, m1 = int(x.sum()), int(y.sum())
    p, q = n1 / n, m1 / n
    denom = _spread(p, q)
    corr = (n11 / n - p * q) / denom if denom > 0 else None
    return {
        "n": n,
        "p_x": p,
        "p_y": q,
        "corr": corr,
        "cells": {"11": n11, "10": n1 - n11, "01": m1 - n11, "00": n - n1 - m1 + n11},
    }
