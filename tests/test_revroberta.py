"""Reversible RoBERTa: exact gradients (embeddings included) in every backward mode with dropout and
padding masks, flat activation memory in depth, RoBERTa-shaped registered sizes."""
from __future__ import annotations

import pytest
import timm
import torch
from helpers import assert_modes_agree_in_forward, assert_train_forward_is_stochastic, compare_modes, count_saved_bytes
from torch import nn

import revtransfer  # noqa: F401  (registers the models)
from revtransfer.models.revroberta import RevRoberta
from revtransfer.reversible import BACKPROP_MODES

VOCAB = 97


def loss_fn(out):
    return (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).square().sum()


def tiny_roberta(depth, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    kwargs = {"hidden_dropout": 0.1, "attn_dropout": 0.1, "drop_path_rate": 0.2, **kwargs}
    model = RevRoberta(vocab_size=VOCAB, max_position_embeddings=40, embed_dim=32, depth=depth, num_heads=4,
                       num_classes=3, **kwargs)
    return model.to(dtype)


def token_batch(batch=3, length=12, pad_from=None):
    """Random ids; row 0 padded from ``pad_from`` on (ids = pad, mask = 0) when given."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    ids[:, 0] = 0  # <s>
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad_from is not None:
        ids[0, pad_from:] = 1
        mask[0, pad_from:] = 0
    return ids, mask


@pytest.mark.parametrize("depth, fusion, padded", [
    (1, "concat", False),
    (2, "concat", True),
    (3, "avg", True),
])
def test_float64_grads_equal_backprop_with_dropout(depth, fusion, padded):
    model = tiny_roberta(depth, fusion=fusion).train()
    ids, mask = token_batch(pad_from=8 if padded else None)
    inputs = (ids, mask) if padded else (ids,)
    ref = compare_modes(model, model.set_backprop, inputs, loss_fn, rtol=1e-10)
    # every parameter has a gradient, the token and position embeddings included (ids are integers)
    assert set(ref) == {n for n, _ in model.named_parameters()}
    assert ref["embeddings.word_embeddings.weight"].abs().sum() > 0


class TwoMaskedForwards(nn.Module):
    """Two forwards with different padding masks before one backward (gradient accumulation, two
    losses): the recomputation of the first must see the first mask, not the latest."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, mask_a, mask_b):
        return torch.cat([self.model(ids, mask_a), 2 * self.model(ids, mask_b)], -1)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_two_forwards_with_different_masks_then_one_backward(global_pool):
    model = TwoMaskedForwards(tiny_roberta(3, global_pool=global_pool).train())
    ids, mask_a = token_batch(pad_from=5)
    _, mask_b = token_batch(pad_from=9)
    mask_b[1, 7:] = 0
    compare_modes(model, model.model.set_backprop, (ids, mask_a, mask_b), loss_fn, rtol=1e-10)


def test_dropout_is_live_in_train_mode():
    ids, _ = token_batch()
    assert_train_forward_is_stochastic(tiny_roberta(2), ids)


@pytest.mark.parametrize("mode", BACKPROP_MODES)
def test_padding_does_not_leak_into_the_classification(mode):
    model = tiny_roberta(2, backprop=mode).eval()
    ids, mask = token_batch(pad_from=8)
    other = ids.clone()
    other[0, 8:] = torch.arange(8, 12) + 3  # different content at the padded positions ...
    with torch.no_grad():
        a = model(ids, mask)
        b = model(other, mask)  # ... with the same mask (and so the same position ids for the rest)
    assert torch.allclose(a[0], b[0], rtol=0, atol=1e-12)


def test_modes_agree_in_forward_eval_and_no_grad():
    ids, mask = token_batch(pad_from=5)
    assert_modes_agree_in_forward(tiny_roberta(3), ids, mask)


def test_saved_bytes_flat_in_depth():
    ids, mask = token_batch(batch=2, length=16, pad_from=12)

    def saved(depth, mode):
        model = tiny_roberta(depth, dtype=torch.float32, backprop=mode).train()
        with count_saved_bytes(list(model.parameters())) as total:
            out = model(ids, mask)
        out.sum().backward()
        return total[0]

    b = {(d, mode): saved(d, mode) for d in (2, 8) for mode in BACKPROP_MODES}
    for mode in ("reprop", "pareprop"):
        assert b[8, mode] <= 1.1 * b[2, mode], (mode, b)
        assert b[2, mode] < b[2, "backprop"], (mode, b)
    assert b[8, "backprop"] > 2 * b[2, "backprop"], b


def test_sequence_longer_than_positions_is_refused():
    model = tiny_roberta(1)
    assert model.max_seq_len == 40 - 2
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(1, 39, dtype=torch.long))


@pytest.mark.parametrize("size, width, depth, heads", [("base", 768, 12, 12), ("large", 1024, 24, 16)])
def test_registered_sizes_are_roberta_config_sizes(size, width, depth, heads):
    with torch.device("meta"):
        model = timm.create_model(f"revroberta_{size}")
    assert model.input_kind == "tokens" and model.vocab_size == 50265 and model.max_seq_len == 512
    assert model.embeddings.position_embeddings.num_embeddings == 514
    assert len(model.blocks.blocks) == depth
    block = model.blocks.blocks[0]
    assert block.f.attn.num_heads == heads and block.g.mlp.fc1.out_features == 4 * width
    # The encoder has exactly RoBERTa's parameters (embeddings, per layer 12 h^2 + 13 h): the rewiring
    # moves LayerNorms, it does not add any.
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    embeddings = (50265 + 514 + 1) * width + 2 * width
    assert count(model.embeddings) == embeddings
    assert count(model.blocks) == depth * (12 * width * width + 13 * width)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 2


def test_timm_conventions():
    model = tiny_roberta(2, dtype=torch.float32).eval()
    ids, mask = token_batch(pad_from=6)
    with torch.no_grad():
        feats = model.forward_features(ids, mask)
        assert feats.shape == (3, 12, model.num_features)
        assert model.forward_head(feats, pre_logits=True).shape == (3, model.head_hidden_size)
        assert model(ids, mask).shape == (3, 3)
        model.reset_classifier(0)
        assert model(ids).shape == (3, model.head_hidden_size)
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() and model.no_weight_decay() <= names
