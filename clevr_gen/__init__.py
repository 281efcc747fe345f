"""clevr_gen: a Blender-free CLEVR-style dataset generator with exact control of the correlation
between two attribute-conjunction labels X and Y.

numpy, numba and Pillow only (no torch, nothing else of revtransfer): workers start fast. The
renderer's kernels are compiled by numba on first use and cached on disk (jit.py). The on-disk
format is documented in FORMAT.md beside this file.

    from clevr_gen import DatasetSpec, generate
    generate(DatasetSpec(n=1000, p_x=0.5, p_y=0.5, corr=0.8, seed=0), "data/demo", workers=2)

    from clevr_gen.render import render      # re-render a scene dict from scenes.json
    image, object_ids = render(scene, 80, 80)
"""
from __future__ import annotations

__version__ = "1.0.0"

from .labels import InfeasibleTargetError, joint_counts, phi_range  # noqa: E402
from .spec import DatasetSpec  # noqa: E402

__all__ = ["DatasetSpec", "InfeasibleTargetError", "generate", "joint_counts", "phi_range",
           "__version__"]


def generate(*args, **kwargs):
    """See clevr_gen.writer.generate (imported lazily: it pulls in Pillow, tqdm, filelock)."""
    from .writer import generate as _generate
    return _generate(*args, **kwargs)
