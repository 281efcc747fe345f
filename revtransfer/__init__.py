"""revtransfer: reversible vision transformers and feature-transfer studies.

Importing the package registers our models in timm's registry, so that
``timm.create_model("revvit_micro")`` works after ``import revtransfer``.
"""
__version__ = "0.1.0"

from revtransfer.models import create_model, list_models  # noqa: E402,F401  (registers models)
