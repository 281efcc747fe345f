"""timm layer imports in one place (Attention moved into timm.layers in timm 1.0)."""
from timm.layers import DropPath, Mlp, PatchEmbed, resample_abs_pos_embed, trunc_normal_

try:
    from timm.layers import Attention
except ImportError:  # older timm 1.0.x
    from timm.models.vision_transformer import Attention

__all__ = ["Attention", "DropPath", "Mlp", "PatchEmbed", "resample_abs_pos_embed", "trunc_normal_"]
