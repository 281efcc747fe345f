"""detectron2 plugin: frozen-backbone ViTDet with our ViT and RevViT (``revtransfer detect``).

Importing it registers :class:`TimmViT` (single-scale: ViT, RevViT) and :class:`TimmHierarchical`
(multi-scale, under an FPN: RevSwin, RevMViT) in detectron2's ``BACKBONE_REGISTRY``; the LazyConfigs
live in ``detection/configs/``.
"""
from .backbone import TimmHierarchical, TimmViT, add_timm_hierarchical_config, add_timm_vit_config
from .checkpoint import BackboneCheckpointError, load_backbone_checkpoint
from .config import CONFIG_DIR, ConfigError, build_config, config_names, prepare, resolve_config
from .data import DatasetError, NpyDatasetMapper, register_coco_by_path
from .evaluation import FastCOCOEvaluator, evaluate_coco

__all__ = [
    "CONFIG_DIR", "BackboneCheckpointError", "ConfigError", "DatasetError", "FastCOCOEvaluator",
    "NpyDatasetMapper", "TimmHierarchical", "TimmViT", "add_timm_hierarchical_config", "add_timm_vit_config",
    "build_config", "config_names", "evaluate_coco",
    "load_backbone_checkpoint", "prepare", "register_coco_by_path", "resolve_config",
]
