"""Sweep presets shipped with the package: ``paper`` (the study's scale, for a GPU) and ``demo``
(a few minutes on a 2-core CPU, same grid shape)."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("probes.presets").iterdir()
                  if p.name.endswith(".yaml"))


def resolve_sweep_file(name_or_path: str | os.PathLike) -> Path:
    """A path to a sweep file, or the name of a shipped preset."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if path.suffix == "" and str(name_or_path) in preset_names():
        return Path(str(resources.files("probes.presets") / f"{name_or_path}.yaml"))
    raise FileNotFoundError(f"sweep file {name_or_path} does not exist and is not a preset "
                            f"(presets: {', '.join(preset_names())})")
