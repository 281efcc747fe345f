"""Checkpoint filter functions for foreign checkpoints of our architectures (timm convention:
``filter_fn(state_dict, model) -> state_dict`` with the model's key names and shapes).

- :func:`timm_vit_to_vit` — a timm ``VisionTransformer`` state dict (ImageNet ViT-S/B/L, or any
  timm ViT) into our mean-pooled, class-token-free ViT (e.g. ``vit_micro``).
- :func:`slowfast_revvit_to_revvit` — a PySlowFast RevViT checkpoint (``MViT`` with
  ``MVIT.REV.ENABLE``, no pooling; fused or separate q/k/v) into
  :class:`~revtransfer.models.revvit.RevViT`.

Both unwrap trainer containers, drop what our models do not have (class token, its position
slot) and resample the position embedding to the model's grid. Shapes are checked afterwards by
:func:`check_compatible`, whose errors name the offending key.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from ._layers import resample_abs_pos_embed

# Trainer containers, outermost first; "model" before "model_ema" so the raw weights win.
_CONTAINER_KEYS = ("model_state", "model", "state_dict", "model_ema", "module")


class IncompatibleCheckpointError(ValueError):
    """A state dict that cannot be loaded into the model; the message names the key(s)."""


def unwrap_state_dict(state_dict: dict) -> dict:
    """Strip (nested) trainer containers ({"model_state": ...}, {"model": ...}) and DDP's
    ``module.`` prefixes; keep only tensors."""
    while True:
        inner = next((state_dict[k] for k in _CONTAINER_KEYS if isinstance(state_dict.get(k), dict)), None)
        if inner is None:
            break
        state_dict = inner
    return {k.removeprefix("module."): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def _grid_of(n_tokens: int, key: str) -> tuple[int, int]:
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise IncompatibleCheckpointError(f"{key}: {n_tokens} position tokens do not form a square grid")
    return side, side


def _pos_embed_for(v: torch.Tensor, model: nn.Module, n_prefix: int, key: str = "pos_embed") -> torch.Tensor:
    """Drop ``n_prefix`` class/register slots and resample the patch grid to the model's."""
    v = v[:, n_prefix:]
    target = tuple(model.patch_embed.grid_size)
    if v.shape[1] != target[0] * target[1]:
        v = resample_abs_pos_embed(v, new_size=target, old_size=_grid_of(v.shape[1], key), num_prefix_tokens=0)
    return v


def own_to_model(state_dict: dict, model: nn.Module) -> dict:
    """Our own checkpoints (any registered family): unwrap, and resample the position embedding
    when the model's patch grid differs (another image size)."""
    state_dict = unwrap_state_dict(state_dict)
    own_pos = getattr(model, "pos_embed", None)
    if "pos_embed" in state_dict and isinstance(own_pos, torch.Tensor) and state_dict["pos_embed"].shape != own_pos.shape:
        state_dict["pos_embed"] = _pos_embed_for(state_dict["pos_embed"], model, n_prefix=0)
    return state_dict


def timm_vit_to_vit(state_dict: dict, model: nn.Module) -> dict:
    """timm ViT (possibly with a class token and ``fc_norm``) -> our ViT without class token."""
    state_dict = unwrap_state_dict(state_dict)
    model_keys = model.state_dict().keys()
    n_prefix = 0
    if "cls_token" in state_dict and "cls_token" not in model_keys:
        n_prefix += 1
    if "reg_token" in state_dict and "reg_token" not in model_keys:
        n_prefix += state_dict["reg_token"].shape[1]
    out = {}
    for k, v in state_dict.items():
        if k in ("cls_token", "reg_token", "dist_token") and k not in model_keys:
            continue
        if k == "pos_embed":
            # timm's no_embed_class models keep the prefix tokens out of pos_embed; others hold
            # one slot per prefix token in front of the patch grid.
            n_slots = v.shape[1] - _square_part(v.shape[1])
            if n_slots not in (0, n_prefix):
                raise IncompatibleCheckpointError(
                    f"pos_embed: {v.shape[1]} tokens are neither a square grid nor a grid plus "
                    f"{n_prefix} prefix token(s)")
            v = _pos_embed_for(v, model, n_slots)
        elif k.startswith("fc_norm.") and "fc_norm.weight" not in model_keys:
            # timm's avg-pool ViTs norm after pooling (fc_norm); ours norm the tokens (norm).
            # LayerNorm then mean-pool vs mean-pool then LayerNorm differ, but the weights port.
            k = "norm." + k.split(".", 1)[1]
        elif k.startswith("norm.") and "fc_norm.weight" in state_dict and "norm.weight" not in model_keys:
            continue
        out[k] = v
    return out


def _square_part(n: int) -> int:
    return math.isqrt(n) ** 2


_SLOWFAST_BLOCK = re.compile(r"^rev_backbone\.layers\.(\d+)\.([FG])\.(.*)$")
_SLOWFAST_QKV = re.compile(r"^(rev_backbone\.layers\.\d+\.F\.attn\.)([qkv])\.(weight|bias)$")


def slowfast_revvit_to_revvit(state_dict: dict, model: nn.Module) -> dict:
    """PySlowFast RevViT keys -> ours.

    PySlowFast (``MViT`` with ``MVIT.REV.ENABLE``; ``slowfast/models/video_model_builder.py``,
    ``reversible_mvit.py``, ``attention.py``): ``rev_backbone.layers.{i}.F.{norm,attn.proj}`` and
    either ``F.attn.q``, ``F.attn.k``, ``F.attn.v`` (``MVIT.SEPARATE_QKV``, which its ImageNet
    REV_VIT_S/B configs and their published weights use) or one ``F.attn.qkv``;
    ``rev_backbone.layers.{i}.G.{norm,mlp.fc1,mlp.fc2}``; ``patch_embed.proj`` (Conv2d with
    ``MVIT.PATCH_2D``, else Conv3d with a temporal kernel of 1); ``pos_embed`` (1, HW, C): RevViT has
    no class token; ``norm`` (2C: LayerNorm after the concat of the streams); ``head.projection``.
    Ours: ``blocks.blocks.{i}.f.{norm,attn.qkv,attn.proj}``, ``blocks.blocks.{i}.g.{norm,mlp.fc1,
    mlp.fc2}``, ``head``. Separate q, k, v are stacked into ``qkv`` (rows [q; k; v], the order in
    which both split the fused output). The computation is the same: Y1 = X1 + F(X2),
    Y2 = X2 + G(Y1), then LayerNorm(concat(Y1, Y2)), mean over tokens, linear head (PySlowFast's
    default ``MVIT.USE_MEAN_POOLING: False``; with True it pools before the norm, which the weights
    cannot tell).

    One difference in the output: PySlowFast's head applies ``MODEL.HEAD_ACT`` (softmax by
    default) in eval, so its model returns class probabilities; ours returns logits, as timm's
    models do. softmax(our output) equals theirs; the argmax and ranking of classes are the same.
    """
    state_dict = _fuse_separate_qkv(unwrap_state_dict(state_dict))
    out = {}
    for k, v in state_dict.items():
        m = _SLOWFAST_BLOCK.match(k)
        if m:
            k = f"blocks.blocks.{m.group(1)}.{m.group(2).lower()}.{m.group(3)}"
        elif k.startswith("head.projection."):
            k = "head." + k.removeprefix("head.projection.")
        elif k == "patch_embed.proj.weight" and v.ndim == 5:
            if v.shape[2] != 1:
                raise IncompatibleCheckpointError(
                    f"{k}: a video patch embedding with temporal kernel {v.shape[2]} cannot be used "
                    f"for images (need 1)")
            v = v[:, :, 0]
        elif k == "pos_embed":
            v = _pos_embed_for(v, model, n_prefix=v.shape[1] - _square_part(v.shape[1]))
        elif k in ("cls_token", "pos_embed_class"):
            continue
        elif k.startswith(("pos_embed_spatial", "pos_embed_temporal")):
            raise IncompatibleCheckpointError(
                f"{k}: separate space-time position embeddings (MVIT.SEP_POS_EMBED) are not supported")
        out[k] = v
    return out


def _fuse_separate_qkv(state_dict: dict) -> dict:
    """``attn.q``, ``attn.k``, ``attn.v`` (weights and biases) -> one ``attn.qkv``.

    PySlowFast reshapes the fused output to (B, N, 3, heads, head_dim) and the separate ones each
    to (B, N, heads, head_dim), as timm's ``Attention`` does its ``qkv``: so concatenating the
    three along the output dimension, in the order q, k, v, computes the same attention.
    """
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    out = {}
    for k, v in state_dict.items():
        m = _SLOWFAST_QKV.match(k)
        if m:
            prefix, which, kind = m.groups()
            parts.setdefault((prefix, kind), {})[which] = v
        else:
            out[k] = v
    for (prefix, kind), got in parts.items():
        fused = f"{prefix}qkv.{kind}"
        if fused in state_dict:
            raise IncompatibleCheckpointError(
                f"{fused} and {prefix}{next(iter(got))}.{kind}: the checkpoint holds both a fused and a "
                f"separate q/k/v projection")
        missing = [w for w in "qkv" if w not in got]
        if missing:
            raise IncompatibleCheckpointError(
                f"{prefix}{missing[0]}.{kind} is missing: separate q/k/v projections (MVIT.SEPARATE_QKV) "
                f"need all three, the checkpoint has only {', '.join(prefix + w + '.' + kind for w in got)}")
        shapes = [tuple(got[w].shape) for w in "qkv"]
        if len(set(shapes)) != 1:
            raise IncompatibleCheckpointError(
                f"{prefix}{{q,k,v}}.{kind}: shapes {shapes[0]}, {shapes[1]}, {shapes[2]} differ, so they "
                f"cannot be stacked into {fused}")
        out[fused] = torch.cat([got["q"], got["k"], got["v"]], dim=0)
    return out


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The classifier's key prefixes, from the model's timm ``pretrained_cfg`` ("head" by default)."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(n + "." for n in names)


def check_compatible(state_dict: dict, model: nn.Module, *, drop_mismatched_head: bool = True,
                     source: str = "checkpoint") -> tuple[dict, list[str], list[str]]:
    """Compare a (filtered) state dict with ``model``. Returns ``(state_dict, missing, dropped)``.

    With ``drop_mismatched_head`` a classifier the model does not have (a headless backbone) or has
    at another shape (1000 ImageNet classes vs our 2: the usual transfer case) is dropped, and a
    missing one is left at its initial values. Any other unexpected key, missing key or shape
    mismatch raises :class:`IncompatibleCheckpointError` naming the key and both shapes.
    """
    target = model.state_dict()
    heads = classifier_prefixes(model) if drop_mismatched_head else ()
    dropped, problems = [], []
    out = {}
    for k, v in state_dict.items():
        if k in target and tuple(v.shape) == tuple(target[k].shape):
            out[k] = v
        elif k.startswith(heads):
            dropped.append(k)
        elif k not in target:
            problems.append(f"unexpected key {k!r} (shape {tuple(v.shape)}) not in the model")
        else:
            problems.append(f"key {k!r}: shape {tuple(v.shape)} in the {source} vs "
                            f"{tuple(target[k].shape)} in the model")
    missing = [k for k in target if k not in out]  # left at their initial values
    missing_body = [k for k in missing if not k.startswith(heads)]
    if missing_body:
        problems.append(f"missing keys {missing_body[:8]}{' ...' if len(missing_body) > 8 else ''}")
    if problems:
        raise IncompatibleCheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    return out, missing, dropped
