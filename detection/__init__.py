"""detectron2 plugin: frozen-backbone ViTDet with our ViT and RevViT (``revtransfer detect``).

:class:`TimmViT` (single-scale: ViT, RevViT) and :class:`TimmHierarchical` (multi-scale, under an
FPN: RevSwin, RevMViT) register in detectron2's ``BACKBONE_REGISTRY`` when ``detection.backbone`` is
imported (using either name from here imports it); the LazyConfigs live in ``detection/configs/``.
Names load on first use, so the ``revtransfer detect`` command group starts without detectron2.
"""
from __future__ import annotations

import warnings

# detectron2 (and fvcore) call torch.jit.script at import, which recent torch answers with a
# FutureWarning per call: noise about a dependency, not about the user's run. Every module of this
# package that imports detectron2 runs after this line.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
# detectron2's LazyConfig loader imports pkg_resources (setuptools' deprecation warning, same story).
warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)

_EXPORTS = {
    "TimmHierarchical": "backbone", "TimmViT": "backbone", "add_timm_hierarchical_config": "backbone",
    "add_timm_vit_config": "backbone",
    "BackboneCheckpointError": "checkpoint", "load_backbone_checkpoint": "checkpoint",
    "CONFIG_DIR": "config", "build_config": "config", "config_names": "config", "prepare": "config",
    "resolve_config": "config",
    "ConfigError": "errors",
    "NpyDatasetMapper": "data", "register_coco_by_path": "data",
    "FastCOCOEvaluator": "evaluation", "evaluate_coco": "evaluation",
    "DatasetError": "revtransfer.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        where = _EXPORTS[name]
        module = importlib.import_module(where if "." in where else f"detection.{where}")
        return getattr(module, name)
    raise AttributeError(f"module 'detection' has no attribute {name!r}")
