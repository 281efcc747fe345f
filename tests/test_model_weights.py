"""Weight files into models (pretraining's --init; the detection backbone goes through the same
path, tests/test_detection_checkpoint.py): timm ViT and PySlowFast RevViT state dicts load by key
mapping; mismatches name the key; broken files name the path."""
from __future__ import annotations

import pytest
import timm
import torch

from revtransfer.models import create_model
from revtransfer.models.convert import IncompatibleCheckpointError
from revtransfer.models.weights import CheckpointError, load_weights

MICRO = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2)


def _timm_vit(**kw):
    torch.manual_seed(1)
    return timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, num_classes=10,
                             **{**MICRO, **kw})


@pytest.mark.parametrize("pool", ["token", "avg"])  # class-token ViT; avg-pooled ViT with fc_norm
def test_timm_vit_state_dict_loads_into_vit_micro(tmp_path, pool):
    src = _timm_vit(global_pool=pool)
    torch.save(src.state_dict(), tmp_path / "vit.pth")
    model = create_model("vit_micro", img_size=24, num_classes=2, **MICRO)  # other grid, other head
    report = load_weights(model, tmp_path / "vit.pth")
    assert report.format == "timm_vit"
    assert report.dropped == ["head.weight", "head.bias"] and report.missing == ["head.weight", "head.bias"]
    got, want = model.state_dict(), src.state_dict()
    assert torch.equal(got["blocks.1.mlp.fc2.weight"], want["blocks.1.mlp.fc2.weight"])
    assert torch.equal(got["patch_embed.proj.weight"], want["patch_embed.proj.weight"])
    norm = "fc_norm" if pool == "avg" else "norm"
    assert torch.equal(got["norm.weight"], want[f"{norm}.weight"])
    assert got["pos_embed"].shape == (1, 36, 32)  # class slot dropped, 8x8 grid resampled to 6x6


def test_shape_mismatch_names_the_key(tmp_path):
    torch.save(_timm_vit(embed_dim=48, num_heads=2).state_dict(), tmp_path / "wide.pth")
    model = create_model("vit_micro", img_size=32, num_classes=2, **MICRO)
    with pytest.raises(IncompatibleCheckpointError, match=r"blocks\.0\.attn\.qkv\.weight.*\(144, 48\).*\(96, 32\)"):
        load_weights(model, tmp_path / "wide.pth")


def _to_slowfast(state: dict) -> dict:
    """Our RevViT keys as PySlowFast names them (MViT with MVIT.REV.ENABLE, 3D patch embed)."""
    out = {}
    for k, v in state.items():
        if k.startswith("blocks.blocks."):
            i, fg, rest = k.removeprefix("blocks.blocks.").split(".", 2)
            k = f"rev_backbone.layers.{i}.{fg.upper()}.{rest}"
        elif k.startswith("head."):
            k = "head.projection." + k.removeprefix("head.")
        elif k == "patch_embed.proj.weight":
            v = v.unsqueeze(2)  # (C, 3, 1, p, p): temporal kernel 1
        out[k] = v
    return {"model_state": out, "epoch": 300}


def test_slowfast_revvit_checkpoint_loads_and_computes_the_same(tmp_path):
    torch.manual_seed(0)
    src = create_model("revvit_micro", img_size=32, num_classes=2, **MICRO).eval()
    torch.save(_to_slowfast(src.state_dict()), tmp_path / "slowfast.pyth")
    torch.manual_seed(1)
    model = create_model("revvit_micro", img_size=32, num_classes=2, **MICRO).eval()
    report = load_weights(model, tmp_path / "slowfast.pyth")
    assert report.format == "slowfast_revvit" and not report.missing and not report.dropped
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_slowfast_unknown_key_is_named(tmp_path):
    sd = _to_slowfast(create_model("revvit_micro", img_size=32, num_classes=2, **MICRO).state_dict())
    sd["model_state"]["rev_backbone.layers.0.F.attn.rel_pos_h"] = torch.zeros(3, 16)
    torch.save(sd, tmp_path / "x.pt")
    model = create_model("revvit_micro", img_size=32, num_classes=2, **MICRO)
    with pytest.raises(IncompatibleCheckpointError, match=r"x\.pt.*blocks\.blocks\.0\.f\.attn\.rel_pos_h"):
        load_weights(model, tmp_path / "x.pt")


def test_unreadable_files_are_named(tmp_path):
    model = create_model("vit_micro", img_size=32, num_classes=2, **MICRO)
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_weights(model, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth.*corrupt"):
        load_weights(model, tmp_path / "junk.pth")


def test_cli_offers_exactly_the_loader_formats():
    # The CLI spells the choices out so that `revtransfer pretrain --help` does not import timm.
    from revtransfer.models.weights import FORMATS
    from revtransfer.train.cli import pretrain as pretrain_cmd

    option = next(p for p in pretrain_cmd.params if p.name == "init_format")
    assert tuple(option.type.choices) == FORMATS
