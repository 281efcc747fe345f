"""Command-line values that several commands take, parsed in one place."""
from __future__ import annotations

import click
import yaml


def parse_model_kwargs(items, param_hint: str = "--model-kw") -> dict:
    """("depth=2", "embed_dim=64") -> {"depth": 2, "embed_dim": 64}; values parsed as YAML."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. depth=2)", param_hint=param_hint)
        out[key.strip()] = yaml.safe_load(value)
    return out


def parse_positive_ints(value: str, param_hint: str | None = None) -> list[int]:
    """"8,16,32" -> [8, 16, 32]."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint=param_hint) from None
    if not out or any(v <= 0 for v in out):
        raise click.BadParameter(f"{value!r}: give positive integers, e.g. 8,16,32", param_hint=param_hint)
    return out
