"""The study's datasets (its table): three pretrain correlations and the transfer set.

Each preset has its own default seed so the datasets never share scene random streams; `--n`
scales any of them down and `--seed` replaces the seed.
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    "pretrain-corr0.80": dict(split="pretrain", n=150_000, p_x=0.51, p_y=0.51, corr=0.80, seed=1),
    "pretrain-corr0.30": dict(split="pretrain", n=150_000, p_x=0.49, p_y=0.64, corr=0.30, seed=2),
    "pretrain-corr-0.02": dict(split="pretrain", n=150_000, p_x=0.56, p_y=0.56, corr=-0.02,
                               seed=3),
    "transfer": dict(split="transfer", n=50_000, p_x=0.0, p_y=0.56, corr=None, seed=4),
}


def preset(name: str) -> dict:
    """The spec fields of a preset (a copy); ValueError listing the names if unknown."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None


def describe_presets() -> str:
    lines = []
    for name, p in PRESETS.items():
        corr = "-" if p["corr"] is None else f"{p['corr']:+.2f}"
        lines.append(f"{name:20s} split={p['split']:8s} n={p['n']:>7,d} P(X)={p['p_x']:.2f} "
                     f"P(Y)={p['p_y']:.2f} Corr={corr} seed={p['seed']}")
    return "\n".join(lines)
