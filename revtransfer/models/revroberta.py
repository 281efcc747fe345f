"""Reversible RoBERTa (PaReprop, Zhu et al. 2023): a RoBERTa-shaped encoder for sequence
classification, rewired so the two residual streams carry no LayerNorm.

RoBERTa is post-norm (``x = LN(x + sublayer(x))``): the LayerNorm sits on the residual path, so a
layer's input cannot be recovered from its output. Here each layer is a reversible coupling with
pre-norm sublayers, F = LayerNorm -> self-attention -> dropout and G = LayerNorm -> FFN (4x, GELU)
-> dropout, and the streams are only ever added to:

    token ids -> word + position + token-type embeddings -> LN -> dropout -> I1 = I2
      -> one reversible stack of ``depth`` couplings
      -> termination fusion (concat + LN(2C) or avg + LN(C))
      -> first token (<s>) -> dropout -> dense -> tanh -> dropout -> linear (RoBERTa's classifier)

Sizes follow transformers' ``RobertaConfig`` (vocab 50265, 514 positions with padding index 1,
one token type, LayerNorm eps 1e-5, dropout 0.1): ``revroberta_base`` 768 wide, 12 layers,
12 heads; ``revroberta_large`` 1024 wide, 24 layers, 16 heads. No pretrained weights.

Inputs: ``input_ids`` (B, L) int64 with L <= 512, optional ``attention_mask`` (B, L) (1 = token,
0 = padding). Position ids are derived from the ids as RoBERTa does (padding tokens get the padding
position). The model sets ``input_kind = "tokens"``, ``vocab_size`` and ``max_seq_len`` so callers
(the benchmark) can build random token inputs.

Padding mask and reversible backward: F's attention needs the mask again when it is recomputed
in backward, so the mask is a side input of the reversible stack, saved with the stack's outputs
(not state on the model): any number of forwards with different masks may precede one backward.
The average pool takes the mask as an argument of ``forward_head`` for the same reason.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from revtransfer.reversible import ReversibleCoupling, ReversibleStack, check_mode

from ._layers import Attention, DropPath
from ._revparts import (
    MlpSublayer,
    ReversibleModelMixin,
    TerminationFusion,
    check_fusion,
    check_global_pool,
    init_weights,
    linspace,
)


class SelfAttentionSublayer(nn.Module):
    """F: LayerNorm -> multi-head self-attention (padding mask) -> dropout -> drop path."""

    def __init__(self, dim, num_heads, attn_drop=0.0, proj_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, attn_mask=None):
        """``attn_mask``: additive (B, 1, 1, L), the stack's side input (None: no padding)."""
        return self.drop_path(self.attn(self.norm(x), attn_mask=attn_mask))


class RevRobertaLayer(ReversibleCoupling):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, attn_drop=0.0, proj_drop=0.0, drop_path=0.0,
                 norm_layer=nn.LayerNorm):
        super().__init__(
            f=SelfAttentionSublayer(dim, num_heads, attn_drop, proj_drop, drop_path, norm_layer),
            g=MlpSublayer(dim, mlp_ratio, (0.0, proj_drop), drop_path, norm_layer),
        )


class RobertaEmbeddings(nn.Module):
    """Word + learned absolute position (RoBERTa's padding-offset ids) + token-type, LN, dropout."""

    def __init__(self, vocab_size, dim, max_position_embeddings, type_vocab_size, pad_token_id, dropout, norm_layer):
        super().__init__()
        self.pad_token_id = pad_token_id
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_position_embeddings, dim, padding_idx=pad_token_id)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim)
        self.norm = norm_layer(dim)
        self.dropout = nn.Dropout(dropout)

    def position_ids(self, input_ids):
        """As transformers' ``create_position_ids_from_input_ids``: tokens count from pad + 1,
        padding tokens sit at the padding position."""
        not_pad = input_ids.ne(self.pad_token_id).long()
        return torch.cumsum(not_pad, dim=1) * not_pad + self.pad_token_id

    def forward(self, input_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids(input_ids))
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.norm(x))


class RevRoberta(ReversibleModelMixin, nn.Module):
    input_kind = "tokens"
    global_pools = ("token", "avg", "")

    def __init__(
        self,
        vocab_size=50265,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        num_classes=2,
        global_pool="token",
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        fusion="concat",
        hidden_dropout=0.1,
        attn_dropout=0.1,
        classifier_dropout=None,
        drop_path_rate=0.0,
        layer_norm_eps=1e-5,
        backprop="pareprop",
        keep_last_activations=False,
    ):
        super().__init__()
        check_fusion(fusion)
        check_mode(backprop)
        check_global_pool(global_pool, self.global_pools)
        norm_layer = partial(nn.LayerNorm, eps=layer_norm_eps)
        classifier_dropout = hidden_dropout if classifier_dropout is None else classifier_dropout
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.max_seq_len = max_position_embeddings - pad_token_id - 1
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.fusion = fusion

        self.embeddings = RobertaEmbeddings(vocab_size, embed_dim, max_position_embeddings, type_vocab_size,
                                            pad_token_id, hidden_dropout, norm_layer)
        dpr = linspace(0.0, drop_path_rate, depth)
        self.blocks = ReversibleStack(
            [RevRobertaLayer(embed_dim, num_heads, mlp_ratio, attn_dropout, hidden_dropout, dpr[i],
                             norm_layer) for i in range(depth)],
            mode=backprop,
        )
        self.fuse = TerminationFusion(embed_dim, fusion, norm_layer)
        self.num_features = self.fuse.num_features
        self.head_hidden_size = embed_dim
        self.head_drop = nn.Dropout(classifier_dropout)
        self.pre_logits = nn.Sequential(nn.Linear(self.num_features, embed_dim), nn.Tanh())
        self.reset_classifier(num_classes)
        self.apply(init_weights)
        self.set_backprop(backprop, keep_last_activations)
        for m in self.modules():
            if isinstance(m, nn.Embedding):  # RoBERTa: normal(0, 0.02), padding row zero
                nn.init.normal_(m.weight, std=0.02)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()

    # --- timm conventions --------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self):
        return {n for n, p in self.named_parameters() if p.ndim <= 1}  # biases and LayerNorms, as RoBERTa

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return self._block_group_matcher(r"^embeddings", r"^blocks\.blocks", r"^fuse")

    def _additive_mask(self, attention_mask, dtype):
        if attention_mask is None:
            return None
        keep = attention_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, L): broadcast over heads, queries
        return torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device).masked_fill(
            ~keep, torch.finfo(dtype).min)

    def forward_features(self, input_ids, attention_mask=None, token_type_ids=None):
        """Token ids (B, L) -> fused, normalised token features (B, L, num_features)."""
        if input_ids.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {input_ids.shape[1]} > {self.max_seq_len} positions")
        x = self.embeddings(input_ids, token_type_ids)
        mask = self._additive_mask(attention_mask, x.dtype)
        x1, x2 = self.blocks(x, x) if mask is None else self.blocks(x, x, mask)
        return self.fuse(x1, x2)

    def forward_head(self, x, pre_logits: bool = False, attention_mask=None):
        """``attention_mask`` (B, L): the "avg" pool averages over real tokens only."""
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            if attention_mask is None:
                x = x.mean(dim=1)
            else:
                m = attention_mask.to(x.dtype).unsqueeze(-1)
                x = (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
        x = self.pre_logits(self.head_drop(x))
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        x = self.forward_features(input_ids, attention_mask, token_type_ids)
        return self.forward_head(x, attention_mask=attention_mask)


def _cfg(**kwargs):
    return {"url": "", "num_classes": 2, "classifier": "head", "license": "mit", **kwargs}


default_cfgs = generate_default_cfgs({
    "revroberta_base.untrained": _cfg(),
    "revroberta_large.untrained": _cfg(),
})


def _create_revroberta(variant: str, pretrained: bool = False, **kwargs) -> RevRoberta:
    # timm's pretrained cfg always carries an image input_size; a text model takes no in_chans.
    return build_model_with_cfg(RevRoberta, variant, pretrained, kwargs_filter=("in_chans", "img_size"), **kwargs)


@register_model
def revroberta_base(pretrained=False, **kwargs) -> RevRoberta:
    """Reversible RoBERTa-base: 768 wide, 12 layers, 12 heads, FFN 3072, vocab 50265, 512 tokens."""
    args = dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)
    return _create_revroberta("revroberta_base", pretrained, **dict(args, **kwargs))


@register_model
def revroberta_large(pretrained=False, **kwargs) -> RevRoberta:
    """Reversible RoBERTa-large: 1024 wide, 24 layers, 16 heads, FFN 4096, vocab 50265, 512 tokens."""
    args = dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0)
    return _create_revroberta("revroberta_large", pretrained, **dict(args, **kwargs))
