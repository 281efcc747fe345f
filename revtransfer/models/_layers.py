"""timm layer imports in one place (Attention moved into timm.layers in timm 1.0), and the one
layer we change: attention whose core runs in float32 on a CPU under bf16 autocast."""
import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from torch.overrides import TorchFunctionMode

try:
    from timm.layers import Attention as TimmAttention
except ImportError:  # older timm 1.0.x
    from timm.models.vision_transformer import Attention as TimmAttention


class _Float32AttentionCore(TorchFunctionMode):
    """Runs ``scaled_dot_product_attention`` in float32 (autocast off); every other op as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            args = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
            kwargs = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                      for k, v in kwargs.items()}
            with torch.autocast("cpu", enabled=False):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


class Attention(TimmAttention):
    """timm's multi-head self-attention. On a CPU under bf16 autocast, its fused core (queries,
    keys, values -> softmax-weighted values) runs in float32: there the CPU's fused bf16 kernel is
    the slow one (forward + backward at 64 x 8 heads x 256 tokens x 32: 318 ms in bf16, 107 ms in
    float32, on an AMX CPU with torch 2.14), while the projections around it stay in bf16 on AMX.
    Anywhere else (float32, float64, CUDA) it is timm's Attention unchanged."""

    def forward(self, x, *args, **kwargs):
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with _Float32AttentionCore():
                return super().forward(x, *args, **kwargs)
        return super().forward(x, *args, **kwargs)


__all__ = ["Attention", "DropPath", "Mlp", "PatchEmbed", "resample_abs_pos_embed", "trunc_normal_"]
