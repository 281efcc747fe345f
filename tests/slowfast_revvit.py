"""A small stand-in for PySlowFast's RevViT, to test our loader against its real key names, shapes
and computation without installing PySlowFast (detectron2, fvcore, ...).

It mirrors, for the ImageNet REV_VIT configs (``configs/ImageNet/REV_VIT_{S,B}.yaml``: MODEL_NAME
MViT, MVIT.REV.ENABLE, CLS_EMBED_ON False, PATCH_2D True, no pooling strides, QKV_BIAS True,
SEPARATE_QKV True, REV.RESPATH_FUSE concat; defaults USE_ABS_POS True, USE_MEAN_POOLING False,
REL_POS_* False, HEAD_ACT softmax), the modules of facebookresearch/SlowFast:

* ``slowfast/models/video_model_builder.py`` ``MViT``: ``patch_embed`` (``stem_helper.PatchEmbed``:
  ``proj``, Conv2d with PATCH_2D else Conv3d), ``pos_embed`` (1, T*H*W, C) without a class slot
  (the reversible model asserts no class token), ``rev_backbone``, ``fuse`` (``TwoStreamFusion``
  "concat": no parameters, the identity), ``norm`` LayerNorm(2C), ``head``
  (``head_helper.TransformerBasicHead``: ``projection``, softmax over classes in eval).
  ``_forward_reversible`` without mean pooling: norm -> fuse -> mean over tokens -> head.
* ``slowfast/models/reversible_mvit.py``: ``ReversibleMViT.layers`` of ``ReversibleBlock`` with
  ``F`` = ``AttentionSubBlock`` (``norm``, ``attn``) and ``G`` = ``MLPSubblock`` (``norm``,
  ``mlp``: ``common.Mlp`` ``fc1``/GELU/``fc2``), LayerNorm eps 1e-6. In eval the stack runs
  ``vanilla_backward``: ``x = cat([x, x])``, ``h, a = chunk(x)``, ``a, h = layer(a, h)`` with
  Y1 = X1 + F(X2), Y2 = X2 + G(Y1), then ``cat([a, h])``.
* ``slowfast/models/attention.py`` ``MultiScaleAttention`` without pooling: ``q``/``k``/``v``
  (``separate_qkv``) or ``qkv`` (reshaped to (B, N, 3, heads, -1)), ``(q * scale) @ k^T``, softmax,
  ``@ v``, ``proj``.

:func:`slowfast_checkpoint` wraps the weights as ``slowfast/utils/checkpoint.py``
``save_checkpoint`` does: ``{"epoch", "model_state", "optimizer_state", "cfg"}`` (cfg as YAML text).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class MultiScaleAttention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True, separate_qkv=True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.separate_qkv = separate_qkv
        if separate_qkv:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.k = nn.Linear(dim, dim, bias=qkv_bias)
            self.v = nn.Linear(dim, dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        if self.separate_qkv:
            q, k, v = (lin(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3) for lin in (self.q, self.k, self.v))
        else:
            q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, -1, C))


class AttentionSubBlock(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias, separate_qkv):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.attn = MultiScaleAttention(dim, num_heads, qkv_bias, separate_qkv)

    def forward(self, x):
        return self.attn(self.norm(x))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class MLPSubblock(nn.Module):
    def __init__(self, dim, mlp_ratio):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        return self.mlp(self.norm(x))


class ReversibleBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, separate_qkv):
        super().__init__()
        self.F = AttentionSubBlock(dim, num_heads, qkv_bias, separate_qkv)
        self.G = MLPSubblock(dim, mlp_ratio)

    def forward(self, x1, x2):
        y1 = x1 + self.F(x2)
        return y1, x2 + self.G(y1)


class ReversibleMViT(nn.Module):
    def __init__(self, dim, depth, num_heads, mlp_ratio, qkv_bias, separate_qkv):
        super().__init__()
        self.layers = nn.ModuleList(ReversibleBlock(dim, num_heads, mlp_ratio, qkv_bias, separate_qkv)
                                    for _ in range(depth))

    def forward(self, x):  # the eval path (vanilla_backward)
        h, a = torch.chunk(torch.cat([x, x], dim=-1), 2, dim=-1)
        for layer in self.layers:
            a, h = layer(a, h)
        return torch.cat([a, h], dim=-1)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans, dim, patch, conv_2d):
        super().__init__()
        if conv_2d:
            self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        else:  # a video stem with a temporal kernel of 1
            self.proj = nn.Conv3d(in_chans, dim, kernel_size=(1, patch, patch), stride=(1, patch, patch))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TransformerBasicHead(nn.Module):
    def __init__(self, dim_in, num_classes):
        super().__init__()
        self.projection = nn.Linear(dim_in, num_classes)
        self.act = nn.Softmax(dim=1)

    def forward(self, x):
        x = self.projection(x)
        return x if self.training else self.act(x)


class SlowFastRevViT(nn.Module):
    """PySlowFast's ``MViT`` with ``MVIT.REV.ENABLE`` for images; ``forward`` takes (B, 3, H, W)."""

    def __init__(self, img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0,
                 num_classes=10, qkv_bias=True, separate_qkv=True, patch_2d=True):
        super().__init__()
        self.patch_2d = patch_2d
        self.patch_embed = PatchEmbed(3, embed_dim, patch_size, patch_2d)
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch_size) ** 2, embed_dim))
        self.rev_backbone = ReversibleMViT(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, separate_qkv)
        self.norm = LayerNorm(2 * embed_dim)
        self.head = TransformerBasicHead(2 * embed_dim, num_classes)

    def features(self, x):
        x = self.patch_embed(x if self.patch_2d else x.unsqueeze(2)) + self.pos_embed
        return self.norm(self.rev_backbone(x)).mean(1)  # norm -> fuse ("concat": identity) -> mean

    def logits(self, x):
        return self.head.projection(self.features(x))

    def forward(self, x):
        return self.head(self.features(x))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Known, distinct values in every parameter (no zero biases, no unit norms), so that a weight
    loaded into the wrong place changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


CFG_YAML = """MODEL:
  ARCH: mvit
  MODEL_NAME: MViT
  NUM_CLASSES: 10
MVIT:
  PATCH_2D: true
  CLS_EMBED_ON: false
  SEPARATE_QKV: true
  REV:
    ENABLE: true
    RESPATH_FUSE: concat
"""


def slowfast_checkpoint(model: nn.Module, epoch: int = 300) -> dict:
    """What PySlowFast's ``save_checkpoint`` writes: the weights next to a real AdamW state (tensors
    in nested dicts) and the config as YAML text."""
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # fills exp_avg / exp_avg_sq / step; lr 0 leaves the weights as they are
    model.zero_grad(set_to_none=True)
    return {"epoch": epoch, "model_state": model.state_dict(), "optimizer_state": opt.state_dict(), "cfg": CFG_YAML}
