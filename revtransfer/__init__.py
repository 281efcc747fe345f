"""revtransfer: reversible vision transformers and feature-transfer studies.

After ``import revtransfer``, ``timm.create_model("revvit_micro")`` works: our models register in
timm's registry when timm is imported (see ``_timm_hook``), so importing this package alone stays
light (no torch) and the CLI starts fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

from revtransfer import _timm_hook

_timm_hook.install()


def __getattr__(name):
    if name in ("create_model", "list_models"):
        from revtransfer import models

        return getattr(models, name)
    raise AttributeError(f"module 'revtransfer' has no attribute {name!r}")
