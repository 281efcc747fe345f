"""Weight files into models (pretraining's --init; the detection backbone goes through the same
path, tests/test_detection_checkpoint.py): timm ViT and PySlowFast RevViT state dicts load by key
mapping; mismatches name the key; broken files name the path."""
from __future__ import annotations

import pickle

import pytest
import timm
import torch
from slowfast_revvit import SlowFastRevViT, randomize_, slowfast_checkpoint

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


# --- PySlowFast's own layout (tests/slowfast_revvit.py mirrors its modules) ---------------------------

def _slowfast_file(tmp_path, **kw):
    src = randomize_(SlowFastRevViT(**{**MICRO, "img_size": 32, "num_classes": 10, **kw})).eval()
    path = tmp_path / "checkpoint_epoch_00300.pyth"
    torch.save(slowfast_checkpoint(src), path)
    return src, path


@pytest.mark.parametrize("separate_qkv", [True, False])  # REV_VIT_S/B.yaml set True; the default is False
@pytest.mark.parametrize("patch_2d", [True, False])
def test_slowfast_revvit_matches_their_forward(tmp_path, separate_qkv, patch_2d):
    src, path = _slowfast_file(tmp_path, separate_qkv=separate_qkv, patch_2d=patch_2d)
    model = create_model("revvit_micro", img_size=32, num_classes=10, **MICRO).eval()
    report = load_weights(model, path)
    assert report.format == "slowfast_revvit" and not report.missing and not report.dropped
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits, src.logits(x), rtol=1e-5, atol=1e-5)
        # Their eval head applies softmax (MODEL.HEAD_ACT); ours returns logits: same ranking.
        torch.testing.assert_close(logits.softmax(dim=1), src(x), rtol=1e-5, atol=1e-6)
        assert torch.equal(logits.argmax(1), src(x).argmax(1))


def test_slowfast_separate_qkv_land_in_qkv_rows(tmp_path):
    src, path = _slowfast_file(tmp_path, separate_qkv=True)
    model = create_model("revvit_micro", img_size=32, num_classes=10, **MICRO)
    load_weights(model, path)
    C = MICRO["embed_dim"]
    for i, layer in enumerate(src.rev_backbone.layers):
        qkv = model.blocks.blocks[i].f.attn.qkv
        for j, part in enumerate((layer.F.attn.q, layer.F.attn.k, layer.F.attn.v)):
            assert torch.equal(qkv.weight[j * C:(j + 1) * C], part.weight)
            assert torch.equal(qkv.bias[j * C:(j + 1) * C], part.bias)


def test_slowfast_imagenet_head_is_dropped_for_another_task(tmp_path):
    _, path = _slowfast_file(tmp_path)
    model = create_model("revvit_micro", img_size=32, num_classes=2, **MICRO)
    report = load_weights(model, path)
    assert report.dropped == ["head.weight", "head.bias"] and report.missing == ["head.weight", "head.bias"]


@pytest.mark.parametrize("breakage,match", [
    ("drop_k", r"rev_backbone\.layers\.1\.F\.attn\.k\.weight is missing"),
    ("short_v", r"rev_backbone\.layers\.1\.F\.attn\.\{q,k,v\}\.weight: shapes \(32, 32\), \(32, 32\), \(16, 32\)"),
    ("both", r"rev_backbone\.layers\.1\.F\.attn\.qkv\.weight and .*attn\.q\.weight"),
])
def test_slowfast_broken_qkv_is_named_in_one_line(tmp_path, breakage, match):
    src = randomize_(SlowFastRevViT(**MICRO, img_size=32, num_classes=10))
    ckpt = slowfast_checkpoint(src)
    sd, prefix = ckpt["model_state"], "rev_backbone.layers.1.F.attn."
    if breakage == "drop_k":
        del sd[prefix + "k.weight"]
    elif breakage == "short_v":
        sd[prefix + "v.weight"] = sd[prefix + "v.weight"][:16]
    else:
        sd[prefix + "qkv.weight"] = torch.zeros(96, 32)
    torch.save(ckpt, tmp_path / "broken.pyth")
    model = create_model("revvit_micro", img_size=32, num_classes=10, **MICRO)
    with pytest.raises(IncompatibleCheckpointError, match=r"broken\.pyth.*" + match) as e:
        load_weights(model, tmp_path / "broken.pyth")
    assert "\n" not in str(e.value)


# --- files that are not checkpoints -----------------------------------------------------------------

class _Payload:
    """Unpickling this calls open(marker, "w"): a stand-in for a pickle that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()  # the payload does run when unpickled unsafely

    marker = tmp_path / "ran"
    weights = create_model("vit_micro", img_size=32, num_classes=2, **MICRO).state_dict()
    torch.save({"model": weights, "extra": _Payload(marker)}, tmp_path / "evil.pth")  # torch's zip format
    with open(tmp_path / "evil.pkl", "wb") as f:  # a plain pickle (protocol 2, as torch's legacy format)
        pickle.dump({"epoch": 300, "cfg": _Payload(marker)}, f, protocol=2)
    model = create_model("vit_micro", img_size=32, num_classes=2, **MICRO)
    for name in ("evil.pth", "evil.pkl"):
        with pytest.raises(CheckpointError, match=rf"{name} is refused: it references \S*open") as e:
            load_weights(model, tmp_path / name)
        assert "\n" not in str(e.value)
    assert not marker.exists()


def test_files_that_are_not_checkpoints_are_named(tmp_path):
    model = create_model("vit_micro", img_size=32, num_classes=2, **MICRO)
    noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
    (tmp_path / "noise.pth").write_bytes(bytes(noise.tolist()))
    (tmp_path / "notes.pth").write_text("epoch: 300\nmodel_state: see the other file\n")
    (tmp_path / "notes.safetensors").write_text("not tensors\n")
    for name in ("noise.pth", "notes.pth", "notes.safetensors"):
        with pytest.raises(CheckpointError, match=rf"{name} is corrupt or truncated and cannot be read") as e:
            load_weights(model, tmp_path / name)
        assert "\n" not in str(e.value)
