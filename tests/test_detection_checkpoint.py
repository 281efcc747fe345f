"""Backbone checkpoints load strictly, through the shared filter functions, and fail by name."""
import pytest
import torch

from detection import BackboneCheckpointError, TimmViT, build_config


def _save(tmp_path, state, name="ckpt.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name", ["vit_micro", "revvit_micro"])
def test_pretrain_checkpoint_round_trip(tmp_path, name):
    src = TimmViT(name, freeze=False).encoder
    state = {f"module.{k}": v for k, v in src.state_dict().items()}  # as DDP saves it
    state["head.weight"], state["head.bias"] = torch.randn(2, src.num_features), torch.randn(2)
    path = _save(tmp_path, {"model": state, "epoch": 3, "config": {"arch": name}})  # our pretrain layout
    bb = TimmViT(name, checkpoint=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(bb.encoder.state_dict()[k], v), k


def test_position_embedding_is_resampled_from_another_grid(tmp_path):
    src = TimmViT("revvit_micro", model_kwargs={"img_size": 40}).encoder  # 8x8 grid
    bb = TimmViT("revvit_micro", checkpoint=str(_save(tmp_path, {"model": src.state_dict()})))
    assert bb.encoder.pos_embed.shape == (1, 16 * 16, 256)


def test_missing_checkpoint_is_named(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(BackboneCheckpointError, match="nope.pt.*does not exist"):
        TimmViT("vit_micro", checkpoint=str(missing))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_config("clevr_mask_rcnn_vit_micro_frozen", backbone_checkpoint=str(missing))


def test_key_mismatch_names_the_keys(tmp_path):
    state = TimmViT("vit_micro").encoder.state_dict()
    del state["blocks.0.attn.qkv.weight"]
    state["blocks.9.mystery"] = torch.zeros(3)
    with pytest.raises(BackboneCheckpointError) as e:
        TimmViT("vit_micro", checkpoint=str(_save(tmp_path, state)))
    assert "blocks.0.attn.qkv.weight" in str(e.value) and "blocks.9.mystery" in str(e.value)


def test_shape_mismatch_names_the_key(tmp_path):
    # A RevViT checkpoint with avg fusion (norm over C) into the default concat fusion (norm over 2C).
    state = TimmViT("revvit_micro", model_kwargs={"fusion": "avg"}).encoder.state_dict()
    with pytest.raises(BackboneCheckpointError, match=r"norm\.weight.*\(256,\).*\(512,\)"):
        TimmViT("revvit_micro", checkpoint=str(_save(tmp_path, state)))


def test_garbage_file_is_named(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneCheckpointError, match="bad.pt.*cannot be read"):
        TimmViT("vit_micro", checkpoint=str(path))


def test_slowfast_revvit_layout(tmp_path):
    src = TimmViT("revvit_micro").encoder
    state = {}
    for k, v in src.state_dict().items():
        if k.startswith("blocks.blocks."):
            i, fg, rest = k.removeprefix("blocks.blocks.").split(".", 2)
            k = f"rev_backbone.layers.{i}.{fg.upper()}.{rest}"
        state[k] = v
    state["head.projection.weight"] = torch.randn(1000, 512)
    bb = TimmViT("revvit_micro", checkpoint=str(_save(tmp_path, {"model_state": state})))
    assert torch.equal(bb.encoder.blocks.blocks[2].g.mlp.fc1.weight, src.blocks.blocks[2].g.mlp.fc1.weight)


def test_timm_vit_layout_with_class_token_into_vit_micro(tmp_path):
    src = TimmViT("vit_micro").encoder
    state = dict(src.state_dict())
    state["cls_token"] = torch.zeros(1, 1, 256)
    state["pos_embed"] = torch.cat([torch.zeros(1, 1, 256), state["pos_embed"]], dim=1)  # + class slot
    bb = TimmViT("vit_micro", checkpoint=str(_save(tmp_path, state)))
    assert torch.equal(bb.encoder.pos_embed, src.pos_embed)
